"""Bytes the dedup shuffle moves per event (README "Scaling").

    python -m tools.measure_shuffle [EXPORT] [--rows-per-file N] [--shards N]

Without EXPORT, generates one under /tmp/currents-shuffle (6 event types, N rows per file
plus 2% duplicates; a few minutes for the default 5000, then reused). Runs Read and
Validate on the DirectRunner and sums what DeduplicateEvents' scatter step emits: one
pickled+zstd value per (batch, shard), which is exactly what its GroupByKey shuffles.
"""
from __future__ import annotations

import argparse
import os

import apache_beam as beam
import fastavro
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter

from transforms import ReadCurrentsExport, ValidateEvents, codec
from transforms.dedup import _ScatterToShards
from transforms.testing import make_record, write_export

TYPES = ("users.messages.email.Click", "users.messages.email.Delivery",
         "users.messages.pushnotification.Send", "users.behaviors.CustomEvent",
         "users.behaviors.app.SessionStart", "users.messages.inappmessage.Impression")


def generate(root: str, rows_per_file: int) -> None:
    files = []
    for i, etype in enumerate(TYPES):
        rows = [make_record(etype, seed=f"{etype}-{n}") for n in range(rows_per_file)]
        files.append({"event_type": etype, "rows": rows + rows[:rows_per_file // 50],
                      "offset": i})
    write_export(root, files)


def _avro_files(root: str) -> list[str]:
    return [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.endswith(".avro")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("export", nargs="?", default="/tmp/currents-shuffle")
    ap.add_argument("--rows-per-file", type=int, default=5000)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=2000)
    args = ap.parse_args()
    if not os.path.exists(args.export):
        generate(args.export, args.rows_per_file)
    shuffled, values, json_bytes = (Metrics.counter("shuffle", n)
                                    for n in ("bytes", "values", "json_bytes"))

    def measure(kv):
        shuffled.inc(len(kv[1]) + 8)  # value + a small int key
        values.inc(1)
        json_bytes.inc(sum(len(e[2]) for e in codec.unpack(kv[1])[1]))

    p = beam.Pipeline()
    checked = (p | ReadCurrentsExport(args.export, args.batch_size)).rows | ValidateEvents()
    _ = checked.valid | beam.ParDo(_ScatterToShards(args.shards)) | beam.Map(measure)
    result = p.run()
    result.wait_until_finish()
    m = {r.key.metric.name: r.committed
         for r in result.metrics().query(MetricsFilter())["counters"]}
    files = _avro_files(args.export)
    rows = sum(sum(1 for _ in fastavro.reader(open(f, "rb"))) for f in files)
    avro = sum(os.path.getsize(f) for f in files)
    print(f"{rows} rows in {len(files)} files; Avro {avro / rows:.0f} B/row; canonical JSON "
          f"{m['json_bytes'] / rows:.0f} B/row; dedup shuffle {m['bytes'] / rows:.1f} B/row "
          f"({m['bytes']} bytes in {m['values']} values)")


if __name__ == "__main__":
    main()
