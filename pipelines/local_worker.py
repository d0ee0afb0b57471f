"""How the local runner's worker processes start, run Beam's harness and exit.

Beam's FnApiRunner starts each local worker (``--direct_running_mode=multi_processing``)
as ``python -m apache_beam.runners.worker.sdk_worker_main`` and, at the end of a run,
stops them one after the other, waiting for each process to exit. A worker's work is
over when its harness returns: every bundle was answered and its logs were sent. What
follows is the interpreter tearing down Beam's modules, gRPC and the pipeline's objects,
~0.45 s per worker at 500k events, paid once per worker in a row on the critical path.

Our workers run the same harness (same environment variables, same code), flush
stdout/stderr, and exit with the same exit code without that teardown
(``exit_after_harness``). They come two ways:

- forked from the command's template process (``pipelines.worker_template``), which has
  imported Beam and our modules already: the environment ``FORKED_URN``, handled by
  ``_ForkedWorkerHandler``; what the command uses when it started a template;
- started as ``COMMAND`` (this module), which imports Beam with the garbage collector
  off and then freezes what the import made (~150k long-lived objects, no garbage to
  speak of): the collector no longer walks them again and again, 0.34 -> 0.1 s of
  collections per worker at 500k events.

``pipelines.currents_to_partners.local_runner`` chooses between them.
"""
from __future__ import annotations

import gc
import os
import sys
import traceback
from typing import Any

COMMAND = f"{sys.executable} -m pipelines.local_worker"
FORKED_URN = "beam:env:currents:forked_worker:v1"


def exit_after_harness() -> None:
    """Run Beam's SDK harness in this process, then exit with its exit code; never returns."""
    code = 0
    try:
        from apache_beam.runners.worker import sdk_worker_main
        sdk_worker_main.main(sys.argv)
    except SystemExit as exc:  # keep what an exit would have printed and returned
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except BaseException:  # what the interpreter would print, and its exit code
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


_TEMPLATE: Any = None  # the WorkerTemplate that FORKED_URN workers are forked from


def use_template(template: Any) -> None:
    """Fork the workers of ``FORKED_URN`` environments from ``template`` (a started
    ``worker_template.WorkerTemplate``); registers the environment with Beam once."""
    global _TEMPLATE
    if _TEMPLATE is None:
        _register_forked_environment()
    _TEMPLATE = template


def _register_forked_environment() -> None:
    import grpc
    from apache_beam.portability.api import beam_fn_api_pb2_grpc, endpoints_pb2
    from apache_beam.runners.portability import local_job_service
    from apache_beam.runners.portability.fn_api_runner import worker_handlers
    from apache_beam.utils import thread_pool_executor
    from google.protobuf import json_format, text_format

    class _ForkedSdkWorker(local_job_service.SubprocessSdkWorker):
        """Beam's SubprocessSdkWorker (same environment, log relay and failure), with the
        process forked from the template; started from ``COMMAND`` if that fails."""

        def run(self):
            logging_server = grpc.server(
                thread_pool_executor.shared_unbounded_instance(),
                options=[("grpc.http2.max_pings_without_data", 0),
                         ("grpc.http2.max_ping_strikes", 0)])
            logging_port = logging_server.add_insecure_port("[::]:0")
            logging_server.start()
            beam_fn_api_pb2_grpc.add_BeamFnLoggingServicer_to_server(
                local_job_service.BeamFnLoggingServicer(), logging_server)
            env = dict(
                os.environ,
                CONTROL_API_SERVICE_DESCRIPTOR=text_format.MessageToString(
                    endpoints_pb2.ApiServiceDescriptor(url=self._control_address)),
                LOGGING_API_SERVICE_DESCRIPTOR=text_format.MessageToString(
                    endpoints_pb2.ApiServiceDescriptor(url=f"localhost:{logging_port}")),
                PIPELINE_OPTIONS=json_format.MessageToJson(
                    self._provision_info.provision_info.pipeline_options))
            if self._worker_id:
                env["WORKER_ID"] = self._worker_id
            try:
                process = _TEMPLATE.fork_worker(env)
            except (OSError, RuntimeError):
                logging_server.stop(0)
                return super().run()
            try:
                if process.wait():
                    raise RuntimeError(
                        f"Worker subprocess exited with return code {process.returncode}")
            finally:
                process.kill()
                logging_server.stop(0)

    @worker_handlers.WorkerHandler.register_environment(FORKED_URN, bytes)
    class _ForkedWorkerHandler(worker_handlers.SubprocessSdkWorkerHandler):
        def start_worker(self):
            import threading
            self.worker = _ForkedSdkWorker(COMMAND.encode(), self.control_address,
                                           self.provision_info, self.worker_id)
            self.worker_thread = threading.Thread(name="run_worker", target=self.worker.run)
            self.worker_thread.start()


def main() -> None:
    gc.disable()  # see the module's docstring
    from apache_beam.runners.worker import sdk_worker_main  # noqa: F401
    gc.freeze()
    gc.enable()
    exit_after_harness()


if __name__ == "__main__":
    main()
