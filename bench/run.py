"""Time the four jobs of the benchmark on one generated export, in one invocation.

(a) naive Beam job with default options (bench/naive.py)
(b) floor: fastavro decoding every file in one process (bench/floor.py)
(c) this pipeline, events only (``--partners ''``)
(d) this pipeline, everything: events, dead letter, duplicates and four partner outputs

Each job runs in its own process (as a user runs it); wall time, CPU time (user+sys of
the job and every worker process it started), rows/s and peak RSS (of the whole process
tree, sampled every 50 ms) are printed as a table, with the ratios a/c and a/d.

    python -m bench.run --events 500000            # generates bench/data/500k if missing
    python -m bench.run --events 500000 --only c,d  # a subset
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from bench.generate import generate

REPO = Path(__file__).resolve().parent.parent
JOBS = {
    "a": ("naive Beam job (defaults)", ["-m", "bench.naive", "{input}", "{output}"]),
    "b": ("floor: fastavro decode, 1 process", ["-m", "bench.floor", "{input}"]),
    "c": ("this pipeline, events only",
          ["-m", "pipelines.currents_to_partners", "--input", "{input}", "--output",
           "{output}", "--partners", ""]),
    "d": ("this pipeline, all outputs",
          ["-m", "pipelines.currents_to_partners", "--input", "{input}", "--output",
           "{output}", "--mixpanel-token", "bench-token"]),
}


class _PeakRss(threading.Thread):
    """Samples the RSS of a process and all its descendants; keeps the peak."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self._root = psutil.Process(pid)
        self._finished = threading.Event()
        self.peak = 0

    def run(self) -> None:
        while not self._finished.is_set():
            try:
                procs = [self._root] + self._root.children(recursive=True)
                total = 0
                for proc in procs:
                    try:
                        total += proc.memory_info().rss
                    except psutil.Error:
                        pass
                self.peak = max(self.peak, total)
            except psutil.Error:
                pass
            self._finished.wait(0.05)

    def finish(self) -> None:
        self._finished.set()
        self.join()


def measure(args: list[str], extra: list[str]) -> dict:
    env = dict(os.environ, NO_GCE_CHECK="True", PYTHONPATH=str(REPO))
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, *args, *extra], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    sampler = _PeakRss(proc.pid)
    sampler.start()
    output = proc.stdout.read()
    # wait4 gives the CPU time of the job and of every descendant it waited for
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - started
    sampler.finish()
    if proc.returncode != 0:
        raise SystemExit(f"job failed ({proc.returncode}): {' '.join(args)}\n"
                         + output.decode(errors="replace")[-3000:])
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
            "peak_rss_mb": sampler.peak / 2**20, "log": output.decode(errors="replace")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=500_000,
                    help="unique events in the generated export (default 500000)")
    ap.add_argument("--data", type=Path, default=None,
                    help="export folder (default bench/data/<events>; generated if missing)")
    ap.add_argument("--only", default="a,b,c,d", help="jobs to run, e.g. c,d")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--pipeline-args", default="",
                    help="extra arguments for jobs c and d, e.g. '--direct_num_workers=1'")
    args = ap.parse_args(argv)
    data = args.data or REPO / "bench" / "data" / f"{args.events // 1000}k"
    if not data.exists():
        print(f"generating {args.events} events under {data} ...", flush=True)
        generate(args.events, data)
    rows = 0  # from the pipeline summary, else counted by decoding
    results: dict[str, dict] = {}
    work = Path(tempfile.mkdtemp(prefix="currents-bench-"))
    try:
        for key in args.only.split(","):
            title, template = JOBS[key]
            out = work / key
            job = [a.format(input=data, output=out) for a in template]
            extra = args.pipeline_args.split() if key in "cd" else []
            print(f"({key}) {title} ...", flush=True)
            results[key] = measure(job, extra)
            results[key]["title"] = title
            if key in "cd":
                summary = json.loads((out / "summary.json").read_text())
                rows = summary["rows_read"]
                results[key]["rows"] = rows
            shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = rows or _count_rows(data)
    print(f"\n{rows} rows ({args.events} unique events) from {data}; "
          f"{os.cpu_count()} cores, Python {sys.version.split()[0]}")
    print(f"{'job':<40} {'wall s':>8} {'CPU s':>8} {'rows/s':>10} {'peak RSS MB':>12}")
    for key, r in results.items():
        print(f"({key}) {r['title']:<36} {r['wall_s']:8.1f} {r['cpu_s']:8.1f} "
              f"{rows / r['wall_s']:10.0f} {r['peak_rss_mb']:12.0f}")
    ratios = {}
    for num, den in (("a", "c"), ("a", "d"), ("d", "b")):
        if num in results and den in results:
            ratios[f"{num}/{den} wall"] = results[num]["wall_s"] / results[den]["wall_s"]
    if "d" in results and "b" in results:
        ratios["d/b CPU"] = results["d"]["cpu_s"] / results["b"]["cpu_s"]
    for name, value in ratios.items():
        print(f"{name}: {value:.2f}")
    targets = check_targets(results, ratios)
    if targets:
        print("targets (issue 6, set for 500k events on 2 cores):")
        for name, (value, met) in targets.items():
            print(f"  {name:<22} {value:8.2f}  {'met' if met else 'NOT met'}")
    if args.json:
        for r in results.values():
            r.pop("log", None)
        args.json.write_text(json.dumps({
            "rows": rows, "events": args.events, "results": results, "ratios": ratios,
            "targets": {k: {"value": v, "met": m} for k, (v, m) in targets.items()}},
            indent=2))
    return 0


# name -> (what is compared, the bound, True if the value must be at least the bound)
TARGETS = {
    "a/c wall >= 3": ("a/c wall", 3.0, True),
    "a/d wall >= 2.5": ("a/d wall", 2.5, True),
    "d/b CPU <= 3": ("d/b CPU", 3.0, False),
    "d peak RSS MB <= 1024": ("d rss", 1024.0, False),
}


def check_targets(results: dict, ratios: dict) -> dict[str, tuple[float, bool]]:
    """Each target whose jobs ran: (measured value, met?)."""
    values = dict(ratios)
    if "d" in results:
        values["d rss"] = results["d"]["peak_rss_mb"]
    out = {}
    for name, (key, bound, at_least) in TARGETS.items():
        if key in values:
            value = values[key]
            out[name] = (value, value >= bound if at_least else value <= bound)
    return out


def _count_rows(data: Path) -> int:
    from bench.floor import decode_all
    return decode_all(str(data))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
