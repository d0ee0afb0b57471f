"""Bytes the dedup shuffle moves per event (README "Scaling").

    python -m bench.shuffle [EXPORT] [--events N] [--shards N] [--batch-size N]

Without EXPORT, uses the benchmark's export of N unique events (bench/data/<N>k, made by
bench/generate.py when missing; default 500000). Runs Read and Validate on the
DirectRunner and sums what DeduplicateEvents' scatter step emits: one pickled+zstd value
per (batch, shard), which is exactly what its GroupByKey shuffles. ``--shards`` defaults
to what the pipeline would choose for that export.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter

from bench.generate import generate
from bench.run import REPO
from pipelines.currents_to_partners import auto_shards
from transforms import ReadCurrentsExport, ValidateEvents, codec
from transforms.dedup import _ScatterToShards
from transforms.read import BATCH_SIZE, export_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("export", nargs="?", default=None)
    ap.add_argument("--events", type=int, default=500_000)
    ap.add_argument("--shards", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                    help=f"rows per batch, as the pipeline's --batch-size (default {BATCH_SIZE})")
    args = ap.parse_args()
    export = Path(args.export or REPO / "bench" / "data" / f"{args.events // 1000}k")
    if not export.exists():
        generate(args.events, export)
    files, avro = export_size(str(export))
    shards = args.shards or auto_shards(avro)
    shuffled, values, json_bytes, rows_read = (
        Metrics.counter("shuffle", n) for n in ("bytes", "values", "json_bytes", "rows_read"))

    def measure(kv):
        shuffled.inc(len(kv[1]) + 8)  # value + a small int key
        values.inc(1)
        json_bytes.inc(sum(len(e[3]) for e in codec.unpack(kv[1])[1]))  # (row, type, id, json, ...)

    p = beam.Pipeline()
    checked = (p | ReadCurrentsExport(str(export), args.batch_size)).rows | ValidateEvents()
    _ = checked.valid | beam.ParDo(_ScatterToShards(shards)) | beam.Map(measure)
    _ = checked.stats | "Rows" >> beam.Map(lambda s: rows_read.inc(s.get("rows_read", 0)))
    result = p.run()
    result.wait_until_finish()
    m = {r.key.metric.name: r.committed
         for r in result.metrics().query(MetricsFilter())["counters"]}
    rows = m["rows_read"]  # ValidateEvents' stats
    print(f"{rows} rows in {files} files, {shards} shards; Avro {avro / rows:.0f} B/row; "
          f"canonical JSON {m['json_bytes'] / rows:.0f} B/row; dedup shuffle "
          f"{m['bytes'] / rows:.1f} B/row ({m['bytes']} bytes in {m['values']} values)")


if __name__ == "__main__":
    main()
