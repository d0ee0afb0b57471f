"""Generate a realistic Currents export for the benchmark.

N unique events over every catalogue event type, weighted like a real export (email and
push engagement most frequent), ~4% of them delivered twice (spread across files and
hours), ~30% anonymous users, ~15,000 rows per file, deflate codec, the Currents layout.
Deterministic for a given (N, seed).

    python -m bench.generate --events 500000 --out bench/data/500k
"""
from __future__ import annotations

import argparse
import random
import shutil
import sys
import time
from pathlib import Path

import fastavro

from schemas.catalogue import load_catalogue
from transforms.testing import BASE_TIME, _uuid, avro_schema, export_path, make_record

ROWS_PER_FILE = 15_000
DUPLICATE_RATE = 0.04
ANONYMOUS_RATE = 0.30
USERS = 200_000
HOURS = 24
TEMPLATES_PER_TYPE = 64


def weight(event_type: str) -> float:
    """Relative frequency: what a real export looks like (engagement dominates)."""
    channel = event_type.split(".")
    if event_type.startswith("users.messages.email."):
        return {"Send": 30, "Delivery": 28, "Open": 20, "Click": 8}.get(channel[-1], 2)
    if event_type.startswith("users.messages.pushnotification."):
        return {"Send": 25, "Open": 6}.get(channel[-1], 2)
    if event_type.startswith("users.messages.inappmessage."):
        return 6
    if event_type.startswith("users.behaviors."):
        return {"CustomEvent": 12, "Purchase": 3, "app.SessionStart": 10,
                "app.SessionEnd": 10}.get(event_type[len("users.behaviors."):], 2)
    return 1


def plan(n_events: int, seed: int) -> dict[str, int]:
    """Events per type: weighted, every type at least once."""
    types = load_catalogue().event_types
    weights = [weight(t) for t in types]
    total = sum(weights)
    counts = {t: max(1, int(n_events * w / total)) for t, w in zip(types, weights)}
    heaviest = max(counts, key=counts.get)
    counts[heaviest] += n_events - sum(counts.values())
    return counts


def generate(n_events: int, out: Path, seed: int = 7) -> dict:
    catalogue = load_catalogue()
    rng = random.Random(seed)
    if out.exists():
        shutil.rmtree(out)
    files = rows = dups = 0
    for etype, count in plan(n_events, seed).items():
        spec = catalogue.get(etype)
        schema = fastavro.parse_schema(avro_schema(etype, spec))
        templates = [make_record(etype, seed=f"bench:{i}") for i in range(TEMPLATES_PER_TYPE)]
        events = []
        for _ in range(count):
            rec = dict(rng.choice(templates))
            user = rng.randrange(USERS)
            rec["id"] = _uuid(rng)
            rec["time"] = BASE_TIME + rng.randrange(HOURS * 3600)
            if "user_id" in rec:
                rec["user_id"] = f"{0x5f0000000000000000000000 + user:024x}"
            if "external_user_id" in rec:
                anonymous = rng.random() < ANONYMOUS_RATE
                rec["external_user_id"] = None if anonymous else f"user-{user:06d}"
            events.append(rec)
        # at-least-once: some events are written again, into another file when there is one
        n_files = max(1, -(-len(events) // ROWS_PER_FILE))
        chunks = [events[i::n_files] for i in range(n_files)]
        for i, event in enumerate(events):
            if rng.random() < DUPLICATE_RATE:
                chunks[(i % n_files + 1 + rng.randrange(max(1, n_files - 1))) % n_files].append(
                    event)
                dups += 1
        for index, chunk in enumerate(chunks):
            rng.shuffle(chunk)
            hour = time.strftime("%Y-%m-%d-%H", time.gmtime(BASE_TIME + 3600 * (index % HOURS)))
            path = export_path(out, etype, hour, schema_id=1, partition=index % 4, offset=index)
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as fo:
                fastavro.writer(fo, schema, chunk, codec="deflate")
            files += 1
            rows += len(chunk)
    return {"unique_events": n_events, "rows": rows, "duplicates": dups, "files": files}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.generate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=500_000, help="unique events (default 500000)")
    ap.add_argument("--out", type=Path, required=True, help="folder to (re)create")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    started = time.monotonic()
    info = generate(args.events, args.out, args.seed)
    print(f"{info['rows']} rows ({info['unique_events']} unique, {info['duplicates']} "
          f"duplicates) in {info['files']} files under {args.out} "
          f"[{time.monotonic() - started:.1f}s]")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
