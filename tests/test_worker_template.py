"""Local workers forked from the command's template process (pipelines.worker_template).

Each test runs a small script in its own interpreter: the template is a fork of the
process that starts it, which must have one Python thread (pytest's has run Beam).
"""
import json
import os
import subprocess
import sys
import textwrap

import psutil

from pipelines.options import bundled_sample
from tests.conftest import REPO

PIPELINE = """
    import gc, json, os, resource, sys, time
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.testing.util import assert_that, equal_to
    from pipelines.currents_to_partners import local_runner
    from pipelines.worker_template import WorkerTemplate

    template = WorkerTemplate.start()
    assert template is not None
    {before}
    options = PipelineOptions(["--direct_num_workers=2",
                               "--direct_running_mode=multi_processing"])

    def work(_, template_pid=template.pid):
        end = time.process_time() + 0.4  # CPU the command must be charged for
        while time.process_time() < end:
            pass
        return (os.getppid() == template_pid, sys.modules["__main__"].__spec__ is None
                or sys.modules["__main__"].__spec__.name, gc.isenabled())

    with beam.Pipeline(runner=local_runner(options, template), options=options) as p:
        seen = p | beam.Create(range(4)) | beam.Map(work)
        assert_that(seen, equal_to([{expected}] * 4))
    template.close()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps(usage.ru_utime + usage.ru_stime))
"""


def _script(code: str, timeout: int = 180) -> subprocess.CompletedProcess:
    # numpy's BLAS thread pool (numpy comes with Beam) would make forking unsafe: the
    # command sets this before importing Beam (see test_forking_needs_a_thread_safe_process)
    env = dict(os.environ, NO_GCE_CHECK="True", PYTHONPATH=str(REPO), OPENBLAS_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_workers_are_forked_from_the_template_and_their_cpu_is_counted():
    """Every element runs in a child of the template, with the collector on and the
    partner builders compiled; the workers' CPU reaches the command's children's usage
    (what bench/run.py measures)."""
    done = _script(PIPELINE.format(before="", expected="(True, True, True)"))
    assert done.returncode == 0, done.stderr[-3000:]
    # __main__ of a fork of `python -c` has no spec: `True` in the expected tuple
    assert json.loads(done.stdout.splitlines()[-1]) >= 4 * 0.4 * 0.9


def test_a_dead_template_falls_back_to_started_workers():
    """If the template is gone, workers start as new processes (pipelines.local_worker)."""
    kill = "import signal; os.kill(template.pid, signal.SIGKILL); os.waitpid(template.pid, 0)"
    done = _script(PIPELINE.format(before=kill,
                                   expected="(False, 'pipelines.local_worker', True)"))
    assert done.returncode == 0, done.stderr[-3000:]


def test_closing_the_template_kills_its_running_workers():
    """A worker whose runner never answers (a listener that accepts and stays silent) is
    killed and reaped when the command closes the template, which exits."""
    done = _script("""
        import os, socket, time
        import pipelines.currents_to_partners
        from pipelines.worker_template import WorkerTemplate
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        template = WorkerTemplate.start()
        address = f'url: "127.0.0.1:{silent.getsockname()[1]}"'
        worker = template.fork_worker(dict(os.environ, CONTROL_API_SERVICE_DESCRIPTOR=address))
        time.sleep(2)
        print("running", worker.poll() is None)
        template.close()
        print("code", worker.wait())
        try:
            os.kill(worker.pid, 0)
            print("still there")
        except ProcessLookupError:
            print("gone")
        try:
            os.kill(template.pid, 0)
            print("template still there")
        except ProcessLookupError:
            print("template gone")
    """, timeout=60)
    assert done.stdout.splitlines() == ["running True", "code -9", "gone", "template gone"], (
        done.stdout + done.stderr[-2000:])


def test_a_worker_s_exit_code_comes_back_through_the_template():
    """Beam's harness without a runner address fails: exit code 1 reaches the command."""
    done = _script("""
        import os
        import pipelines.currents_to_partners
        from pipelines.worker_template import WorkerTemplate
        template = WorkerTemplate.start()
        env = {k: v for k, v in os.environ.items() if k != "CONTROL_API_SERVICE_DESCRIPTOR"}
        print("code", template.fork_worker(env).wait())
        template.close()
    """, timeout=60)
    assert done.stdout.splitlines() == ["code 1"], done.stderr[-2000:]
    assert "KeyError: 'CONTROL_API_SERVICE_DESCRIPTOR'" in done.stderr


def test_the_command_forks_its_workers_and_leaves_no_process_behind(tmp_path):
    """The command with two local workers: same outputs as one process, every worker a
    child of the template, and nothing of the run left once it has exited."""
    out = {}
    for name, extra in (("forked", ["--direct_num_workers=2",
                                     "--direct_running_mode=multi_processing"]),
                        ("one", [])):
        out[name] = tmp_path / name
        cmd = [sys.executable, "-m", "pipelines.currents_to_partners", "--input",
               str(bundled_sample()), "--output", str(out[name]), "--mixpanel-token", "t",
               *extra]
        env = dict(os.environ, NO_GCE_CHECK="True", CURRENTS_DEBUG="1")
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert ("Using 2 local worker processes, forked from this one" in done.stdout) == (
            name == "forked")
    left = [p.info for p in psutil.process_iter(["pid", "cmdline"])
            if str(out["forked"]) in " ".join(p.info["cmdline"] or [])]
    assert left == []
    for folder in ("events", "dead_letter", "duplicates", "partners/amplitude"):
        for shard in (out["one"] / folder).glob("*"):
            if shard.is_file():
                assert shard.read_bytes() == (out["forked"] / folder / shard.name).read_bytes()
    summaries = [json.loads((out[n] / "summary.json").read_text()) for n in out]
    assert summaries[0]["rows_read"] == summaries[1]["rows_read"] > 0


def test_forking_needs_a_thread_safe_process():
    """No template from a process running threads a fork could leave holding a lock: a
    Python thread, numpy's BLAS pool; jemalloc's purging thread (pyarrow) is fine."""
    done = _script("""
        import os, threading
        os.environ.pop("OPENBLAS_NUM_THREADS")
        import apache_beam  # numpy's BLAS threads start
        from pipelines.worker_template import WorkerTemplate, fork_safe
        print("blas", fork_safe(), WorkerTemplate.start())
    """, timeout=60)
    assert done.stdout.splitlines() == ["blas False None"], done.stderr[-2000:]
    done = _script("""
        import threading, time
        import apache_beam
        from pipelines.worker_template import WorkerTemplate, fork_safe
        names = sorted({open(f"/proc/self/task/{t}/comm").read().strip()
                        for t in __import__("os").listdir("/proc/self/task")})
        print("beam", fork_safe(), names)
        stop = threading.Event()
        thread = threading.Thread(target=stop.wait)
        thread.start()
        print("thread", fork_safe(), WorkerTemplate.start())
        stop.set()
        thread.join()
        template = WorkerTemplate.start()
        print("alone again", template is not None)
        template.close()
    """, timeout=60)
    assert done.stdout.splitlines() == [
        "beam True ['jemalloc_bg_thd', 'python']", "thread False None", "alone again True"], (
        done.stdout + done.stderr[-2000:])
