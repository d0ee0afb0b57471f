"""Bytes the identity map adds to a run's shuffles, measured on a run's events/.

Runs the identity step's own scan (``transforms.identity_map._Scan``) over the facts
DeduplicateEvents would hand it for the events of a finished run (each event back to
its own identity, as ValidateEvents writes it) and encodes what it emits with the coder
Beam uses for them (FastPrimitivesCoder over packed batches); also the events parked for
the local runner (zstd).

    python -m bench.identity_bytes OUTPUT_FOLDER [--shards N]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from apache_beam.coders import FastPrimitivesCoder

from transforms import codec
from transforms.identity_map import EVENT, EVIDENCE, NEEDS, NONE, RESOLVED, SOURCE, _Scan


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("output")
    ap.add_argument("--shards", type=int, default=8)
    args = ap.parse_args()
    coder = FastPrimitivesCoder()
    shards, facts = [], []
    for n, f in enumerate(sorted(Path(args.output, "events").glob("part-*.ndjson"))):
        lines, uids, exts, times = [], [], [], []
        for line in f.read_bytes().splitlines():
            r = codec.loads(line)
            r.pop("user_deleted", None)
            ext = r.get("external_user_id") or None
            r[SOURCE], r[RESOLVED] = (EVENT, ext) if ext else (NONE, None)
            lines.append(codec.dumps(r))
            uids.append(r.get("user_id") or None)
            exts.append(ext)
            times.append(r.get("time", -1))
        shards.append((n, lines))
        facts.append((n, (uids, exts, times, {})))  # as DeduplicateEvents' facts
    events = sum(len(lines) for _, lines in shards)
    event_bytes = sum(len(x) for _, lines in shards for x in lines)
    scan = _Scan(True, args.shards)
    sizes = {EVIDENCE: 0, NEEDS: 0, "other": 0}
    elements = 0
    started = time.process_time()
    for shard in facts:
        for out in scan.process(shard):
            value = getattr(out, "value", out)
            batch = isinstance(value, tuple) and isinstance(value[1], tuple)
            kind = value[1][0] if batch else "other"
            sizes[kind if kind in sizes else "other"] += len(coder.encode(value))
            elements += 1
    scan_cpu = time.process_time() - started
    entries = [codec.loads(line) for f in sorted(Path(args.output, "identity", "map").glob(
        "part-*.ndjson")) for line in f.read_bytes().splitlines()]
    second = len(coder.encode(codec.pack([  # packed tuples, as _Known sends them
        (e["braze_id"], e["external_id"], e["source"], e["first_seen"] or -1,
         e["last_seen"] or -1) for e in entries])))
    parked = sum(len(codec.compress(b"\n".join(lines))) for _, lines in shards)  # as _park
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
