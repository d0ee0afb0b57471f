"""Bytes the identity map adds to a run's shuffles, measured on a run's events/.

Runs the identity step's own scan (``transforms.identity_map._Scan``) over the events of
a finished run (their added identity fields removed first) and encodes what it emits
with the coder Beam uses for them (FastPrimitivesCoder); also the events parked for the
local runner (zstd) and the resolutions side input.

    python -m bench.identity_bytes OUTPUT_FOLDER [--shards N]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from apache_beam.coders import FastPrimitivesCoder

from transforms import codec
from transforms.identity_map import ADDED_FIELDS, EVIDENCE, NEEDS, _Scan


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("output")
    ap.add_argument("--shards", type=int, default=8)
    args = ap.parse_args()
    coder = FastPrimitivesCoder()
    shards = []
    for n, f in enumerate(sorted(Path(args.output, "events").glob("part-*.ndjson"))):
        lines = []
        for line in f.read_bytes().splitlines():
            r = codec.loads(line)
            for k in ADDED_FIELDS:
                r.pop(k, None)
            lines.append(codec.dumps(r))
        shards.append((n, lines))
    events = sum(len(lines) for _, lines in shards)
    event_bytes = sum(len(x) for _, lines in shards for x in lines)
    scan = _Scan(True, args.shards)
    sizes = {EVIDENCE: 0, NEEDS: 0, "other": 0}
    elements = 0
    started = time.process_time()
    for shard in shards:
        for out in scan.process(shard):
            value = getattr(out, "value", out)
            batch = isinstance(value, tuple) and isinstance(value[1], tuple)
            kind = value[1][0] if batch else "other"
            sizes[kind if kind in sizes else "other"] += len(coder.encode(value))
            elements += 1
    scan_cpu = time.process_time() - started
    entries = [codec.loads(line) for f in sorted(Path(args.output, "identity", "map").glob(
        "part-*.ndjson")) for line in f.read_bytes().splitlines()]
    second = len(coder.encode(entries))
    parked = sum(len(codec.pack(lines)) for _, lines in shards)
    print(f"{events} events, {event_bytes / events:.0f} B of canonical JSON each")
    print(f"scan: {elements} shuffled elements, evidence {sizes[EVIDENCE] / 2**20:.2f} MiB, "
          f"needs {sizes[NEEDS] / 2**20:.2f} MiB, other {sizes['other'] / 2**20:.3f} MiB "
          f"({(sum(sizes.values())) / events:.1f} B/event); scan CPU {scan_cpu:.2f} s")
    print(f"second shuffle, map entries: {len(entries)}, {second / 2**20:.2f} MiB "
          f"({second / events:.1f} B/event)")
    print(f"parked events (local runner): {parked / 2**20:.2f} MiB "
          f"({parked / events:.0f} B/event)")


if __name__ == "__main__":
    main()
