"""The local runner: which runner, how many worker processes, and what they inherit.

Beam's own runner and options only (see docs/local-runner.md): the command picks Beam's
``FnApiRunner`` through its constructor, adds worker processes for big exports through
Beam's documented DirectOptions, and tells the dedup step whether its workers share this
machine's disk.
"""
from __future__ import annotations

import apache_beam as beam
from apache_beam.options.pipeline_options import (DirectOptions, PipelineOptions,
                                                  PortableOptions, StandardOptions)

# Local runs of exports at least this big use both cores: each worker process is a new
# interpreter that imports Beam and our modules (~1 s of CPU and ~200 MB), not worth it
# for a small export.
PARALLEL_BYTES = 8 * 2**20
LOCAL_WORKERS = 2


# Runners that run a pipeline in this process (and its local worker processes)
DIRECT_RUNNERS = (None, "DirectRunner", "direct", "FnApiRunner")


def runs_locally(options: PipelineOptions) -> bool:
    """True for Beam's local runners (the default one included) with workers that share
    this machine's files (not in Docker containers or an external service)."""
    environment = (options.view_as(PortableOptions).environment_type or "").upper()
    runner = options.view_as(StandardOptions).runner
    return (runner in DIRECT_RUNNERS + ("BundleBasedDirectRunner", "SwitchingDirectRunner",
                                        "PrismRunner")
            and environment in ("", "LOOPBACK", "PROCESS"))


def local_parallelism(beam_args: list[str], avro_bytes: int) -> list[str]:
    """Beam arguments with local worker processes added for a big export on a local
    runner, unless the user chose a runner mode or worker count. A worker count above 1
    without a mode gets worker processes too (Beam would run them all in one process,
    with a warning saying so)."""
    chosen = " ".join(beam_args)
    options = PipelineOptions(beam_args)
    if options.view_as(StandardOptions).runner not in DIRECT_RUNNERS:
        return beam_args
    if "--direct_running_mode" in chosen:
        return beam_args
    if "--direct_num_workers" in chosen:
        workers = options.view_as(DirectOptions).direct_num_workers
        return ([*beam_args, "--direct_running_mode=multi_processing"]
                if workers and workers > 1 else beam_args)
    if avro_bytes < PARALLEL_BYTES or LOCAL_WORKERS < 2:
        return beam_args
    return [*beam_args, f"--direct_num_workers={LOCAL_WORKERS}",
            "--direct_running_mode=multi_processing"]


def local_runner(options: PipelineOptions) -> beam.runners.PipelineRunner | None:
    """The runner for a run that chose none: Beam's portable Python runner
    (``FnApiRunner``, the one Beam's DirectRunner runs batch jobs on), built through its
    constructor as the DirectRunner builds it, with the pipeline options its worker
    processes need. Beam's DirectRunner itself first tries Prism, which downloads a Go
    binary from GitHub on every run: a hang behind a firewall, and a different runner
    from the one tested and measured here (``--runner=DirectRunner`` or
    ``--runner=PrismRunner`` choose them). ``--runner=FnApiRunner`` gets the same one
    (Beam would build it without the options); None when another runner was chosen.
    See docs/local-runner.md."""
    if options.view_as(StandardOptions).runner not in (None, "FnApiRunner"):
        return None
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner, fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    return FnApiRunner(provision_info=fn_runner.ExtendedProvisionInfo(
        beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)))


def local_worker_env(env: dict) -> None:
    """Settings for the local worker processes Beam starts (they inherit ``env``), unless
    the user chose:

    - two glibc malloc arenas: glibc gives each thread its own arena (up to 8 per core),
      a worker's gRPC and bundle threads spread its heap over them; the peak RSS of the
      500k benchmark drops by ~60 MB for the same speed;
    - one polars thread: there is already one worker process per core, and each polars
      thread keeps its own allocator caches (~60 MB less at peak in one comparison)."""
    env.setdefault("MALLOC_ARENA_MAX", "2")
    env.setdefault("POLARS_MAX_THREADS", "1")
