"""Delivery benchmark: the full job without and with ``--deliver`` to loopback servers.

(d) this pipeline, all outputs (as bench.run's job d)
(e) the same, delivering to all four partners: one local HTTP sink per partner on
    127.0.0.1 that answers at once, then decompresses every request body and counts its
    events by dedup key

Prints wall and CPU time of both jobs, delivered events per second (over job e's wall
time, and over the time delivery added), the overhead ``e/d - 1`` against the goal of
issue 18 (<= 0.5), and checks that every payload written arrived exactly once. The sinks
run in this process, on the same 2 cores as the job: their parsing is in the wall time.

    python -m bench.deliver --events 500000            # generates bench/data/500k if missing
    python -m bench.deliver --events 500000 --amplitude-api http

Amplitude's default here is its Batch API (``--amplitude-api batch``), the one its docs
recommend for historical data: the generated export reuses 64 device ids per event type,
so HTTP V2's 30 events/s per device would dominate (a property of the data, not of the
code).
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import queue
import re
import resource
import shutil
import sys
import tempfile
import threading
from collections import Counter
from typing import Any
from pathlib import Path

from bench.generate import generate
from bench.run import REPO, measure
from transforms.testing import serve_posts

PARTNERS = ("amplitude", "mixpanel", "mparticle", "segment")
# each payload's dedup key, found in a request body without building its objects (6x
# less CPU than parsing it: the sinks share the job's cores); the tests parse and check
# every body fully (tests/fake_partners.py)
KEY = {p: re.compile(rb'"%s":"([^"]*)"' % field) for p, field in (
    ("amplitude", rb"insert_id"), ("mixpanel", rb"\$insert_id"),
    ("segment", rb"messageId"), ("mparticle", rb"source_message_id"))}


class Sink:
    """A loopback HTTP server taking any request body as one partner's API would: it
    answers at once and checks the body afterwards, in its own thread (a real API's
    parsing is not on the job's machine; here it shares the cores, not the latency)."""

    def __init__(self, partner: str):
        self.partner, self.keys, self.requests = partner, Counter(), 0
        self._bodies: queue.Queue = queue.Queue()

        def answer(path: str, headers: Any, raw: bytes) -> tuple[int, bytes, dict]:
            self._bodies.put((headers.get("Content-Encoding"), raw))  # checked off-thread
            return 200, b'{"code":200}', {}

        self.server = serve_posts(answer)
        threading.Thread(target=self._check, daemon=True).start()

    def _check(self) -> None:
        find = KEY[self.partner].findall
        while True:
            encoding, raw = self._bodies.get()
            if encoding == "gzip":
                raw = gzip.decompress(raw)
            self.keys.update(find(raw))
            self.requests += 1
            self._bodies.task_done()

    def drain(self) -> None:
        """Wait until every body received has been checked."""
        self._bodies.join()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.deliver", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=500_000)
    ap.add_argument("--data", type=Path, default=None,
                    help="export folder (default bench/data/<events>k; generated if missing)")
    ap.add_argument("--amplitude-api", default="batch", choices=("http", "batch"))
    ap.add_argument("--skip-baseline", action="store_true",
                    help="run job e only (no overhead ratio)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    data = args.data or REPO / "bench" / "data" / f"{args.events // 1000}k"
    if not data.exists():
        print(f"generating {args.events} events under {data} ...", flush=True)
        generate(args.events, data)
    sinks = {p: Sink(p) for p in PARTNERS}
    work = Path(tempfile.mkdtemp(prefix="currents-bench-deliver-"))
    base = ["-m", "pipelines.currents_to_partners", "--input", str(data),
            "--mixpanel-token", "bench-token"]
    deliver = ["--deliver", ",".join(PARTNERS), "--amplitude-api", args.amplitude_api]
    for p, sink in sinks.items():
        deliver += [f"--{p}-endpoint", sink.url, f"--{p}-max-rps", "0"]
    os.environ.update(AMPLITUDE_API_KEY="bench", MIXPANEL_API_SECRET="bench",
                      MPARTICLE_API_KEY="bench", MPARTICLE_API_SECRET="bench",
                      SEGMENT_WRITE_KEY="bench")
    results = {}
    try:
        if not args.skip_baseline:
            print("(d) this pipeline, all outputs ...", flush=True)
            results["d"] = measure([*base, "--output", str(work / "d")], [])
            shutil.rmtree(work / "d", ignore_errors=True)
        print("(e) the same, delivering to four loopback partners ...", flush=True)
        before = resource.getrusage(resource.RUSAGE_SELF)
        results["e"] = measure([*base, "--output", str(work / "e"), *deliver], [])
        for sink in sinks.values():
            sink.drain()
        after = resource.getrusage(resource.RUSAGE_SELF)
        sinks_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        summary = json.loads((work / "e" / "summary.json").read_text())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    delivered = 0
    for p, sink in sinks.items():
        d, written = summary["delivery"][p], summary["partners"][p]["written"]
        once = all(n == 1 for n in sink.keys.values())
        print(f"{p:<10} written {written:>7}  delivered {d['delivered']:>7}  failed "
              f"{d['failed']:>3}  requests {d['requests']:>5}  MB sent "
              f"{d['bytes_sent'] / 1e6:7.1f}  received {len(sink.keys):>7} keys"
              f"{'' if once else ' (SOME TWICE)'}")
        assert d["delivered"] == written == len(sink.keys) and once, p
        delivered += d["delivered"]
    e = results["e"]
    print(f"\n{summary['rows_read']} rows; {os.cpu_count()} cores, Python "
          f"{sys.version.split()[0]}")
    print(f"{'job':<44} {'wall s':>8} {'CPU s':>8} {'peak RSS MB':>12}")
    titles = {"d": "(d) all outputs", "e": "(e) all outputs + delivery"}
    for key, r in results.items():
        print(f"{titles[key]:<44} {r['wall_s']:8.1f} {r['cpu_s']:8.1f} "
              f"{r['peak_rss_mb']:12.0f}")
    print(f"{'the four sinks (this process, same cores)':<44} {'':>8} {sinks_cpu:8.1f}")
    report = {"rows": summary["rows_read"], "delivered": delivered,
              "delivered_per_s": delivered / e["wall_s"], "sinks_cpu_s": sinks_cpu}
    print(f"delivered {delivered} events: {report['delivered_per_s']:.0f}/s over job e")
    if "d" in results:
        added = e["wall_s"] - results["d"]["wall_s"]
        report["overhead"] = added / results["d"]["wall_s"]
        report["delivered_per_added_s"] = delivered / added if added > 0 else None
        print(f"delivery added {added:.1f} s = {report['overhead']:.0%} of job d "
              f"(goal <= 50%: {'met' if report['overhead'] <= 0.5 else 'NOT met'}); "
              + (f"{report['delivered_per_added_s']:.0f} events per added second"
                 if added > 0 else ""))
    if args.json:
        for r in results.values():
            r.pop("log", None)
        args.json.write_text(json.dumps({**report, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
