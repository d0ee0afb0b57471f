"""WriteParquet: clean events as a Parquet lake, ``event_type=<type>/date=<YYYY-MM-DD>/``.

Columns and types come from ``schemas/bigquery/`` (the catalogue) through the one mapping
in ``schemas.warehouse.arrow_type``, plus the new fields seen in the run
(``transforms.columns``). Events are grouped by (type, day), so a partition holds few,
large files: rows are gathered into row groups of up to ``ROW_GROUP_ROWS`` and files roll
over at ``FILE_ROWS``; zstd compression.

Atomic and rerunnable like the other outputs: files are written under
``<root>/_temporary/<run>/`` and moved into place by one commit step at the end, which
first deletes the files an earlier run of the same input wrote (their names carry a key
of the input, ``part-<key>-NNNNN.parquet``). So a rerun replaces its own files, and runs
of other inputs (other hours of the export) add theirs beside them.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections import defaultdict
from typing import Any, Iterator

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from schemas import warehouse
from transforms import codec
from transforms.columns import ObserveColumns, columns_for, event_date, warehouse_rows
from transforms.types import ShardLines

# 250k email.Send rows (docs/bigquery.md, measured): a row group of 15.8 MiB encoded,
# 10.4 MiB with zstd, from ~100 MiB of Arrow held while it fills: large enough for whole-
# column scans with few footers, small enough for a worker writing a partition.
ROW_GROUP_ROWS = 250_000
FILE_ROWS = 1_000_000
CONVERT_ROWS = 10_000     # Python dicts turned into Arrow this many at a time
COMPRESSION = "zstd"
TEMPORARY = "_temporary"


def input_key(input_root: str) -> str:
    """A short, stable key of the input: the prefix of this input's file names."""
    return hashlib.sha256(input_root.encode()).hexdigest()[:12]


def partition_path(event_type: str, date: str) -> str:
    return f"event_type={event_type}/date={date}"


class _ToPartitions(beam.DoFn):
    """A shard's events -> one packed value per (event type, day)."""

    def process(self, element: ShardLines) -> Iterator[tuple[tuple[str, str], bytes]]:
        _, lines = element
        parts: dict[tuple[str, str], list[bytes]] = defaultdict(list)
        for line in lines:
            event = codec.loads(line)
            parts[(event.get("event_type", ""), event_date(event))].append(line)
        for key, part in sorted(parts.items()):
            yield key, codec.pack(part)


class _WritePartition(beam.DoFn):
    """(type, day), packed events -> Parquet files; outputs (relative path, rows)."""

    def __init__(self, temp_dir: str, key: str):
        self._temp_dir, self._key = temp_dir, key
        self._rows = Metrics.counter("currents", "parquet_rows_written")

    def process(self, element, extras: dict) -> Iterator[tuple[str, int]]:
        import pyarrow as pa
        (event_type, date), blobs = element
        columns = columns_for(event_type, extras)
        schema = warehouse.arrow_schema(columns)
        as_json = {c["name"] for c in extras.get(event_type, []) if c["type"] == "JSON"}
        files = _Files(self._temp_dir, partition_path(event_type, date), self._key, schema)
        rows: list[dict] = []
        try:
            for blob in blobs:
                for row in warehouse_rows(codec.unpack(blob)):
                    for name in as_json.intersection(row):
                        row[name] = codec.dumps(row[name]).decode()
                    rows.append(row)
                    if len(rows) >= CONVERT_ROWS:
                        files.add(pa.Table.from_pylist(rows, schema=schema))
                        rows = []
            if rows:
                files.add(pa.Table.from_pylist(rows, schema=schema))
            written = files.close()
        finally:
            files.discard()
        for path, n in written:
            self._rows.inc(n)
            yield path, n


class _Files:
    """Row groups of ``ROW_GROUP_ROWS`` into files of ``FILE_ROWS``, each made in a local
    temporary file and copied to its place under ``temp_dir`` (local or gs://) when full."""

    def __init__(self, temp_dir: str, folder: str, key: str, schema: Any):
        self._temp_dir, self._folder, self._key, self._schema = temp_dir, folder, key, schema
        self._local = tempfile.mkdtemp(prefix="currents-parquet-")
        self._pending: list = []
        self._pending_rows = 0
        self._writer = None
        self._file_rows = 0
        self._done: list[tuple[str, int]] = []

    def add(self, table) -> None:
        self._pending.append(table)
        self._pending_rows += table.num_rows
        if self._pending_rows >= ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq
        if not self._pending_rows:
            return
        if self._writer is None:
            self._writer = pq.ParquetWriter(
                os.path.join(self._local, "part.parquet"), self._schema,
                compression=COMPRESSION)
        self._writer.write_table(pa.concat_tables(self._pending), row_group_size=ROW_GROUP_ROWS)
        self._file_rows += self._pending_rows
        self._pending, self._pending_rows = [], 0
        if self._file_rows >= FILE_ROWS:
            self._finish_file()

    def _finish_file(self) -> None:
        self._writer.close()
        self._writer = None
        relative = f"{self._folder}/part-{self._key}-{len(self._done):05d}.parquet"
        with open(os.path.join(self._local, "part.parquet"), "rb") as src, \
                FileSystems.create(FileSystems.join(self._temp_dir, relative),
                                   mime_type="application/vnd.apache.parquet",
                                   compression_type=CompressionTypes.UNCOMPRESSED) as dst:
            shutil.copyfileobj(src, dst, 8 << 20)
        self._done.append((relative, self._file_rows))
        self._file_rows = 0

    def close(self) -> list[tuple[str, int]]:
        self._flush()
        if self._writer is not None:
            self._finish_file()
        return self._done

    def discard(self) -> None:
        if self._writer is not None:
            self._writer.close()
        shutil.rmtree(self._local, ignore_errors=True)


class _CommitParquet(beam.DoFn):
    """Delete this input's earlier files, move the new ones in, drop the temporary folder;
    outputs the counters for the summary (so the summary waits for this commit)."""

    def __init__(self, root: str, temp_dir: str, key: str):
        self._root, self._temp_dir, self._key = root, temp_dir, key

    def process(self, _: Any, written: list[tuple[str, int]]) -> Iterator[dict]:
        root = self._root
        pattern = FileSystems.join(root, "event_type=*", "date=*", f"part-{self._key}-*.parquet")
        old = FileSystems.match([pattern])[0].metadata_list
        if old:
            FileSystems.delete([m.path for m in old])
        paths = sorted(p for p, _ in written)
        for path in paths:
            try:
                FileSystems.mkdirs(FileSystems.join(root, path.rsplit("/", 1)[0]))
            except OSError:
                pass  # already there; object stores have no folders
        if paths:
            FileSystems.rename([FileSystems.join(self._temp_dir, p) for p in paths],
                               [FileSystems.join(root, p) for p in paths])
        try:
            leftovers = FileSystems.match([FileSystems.join(self._temp_dir, "**")])[0]
            if leftovers.metadata_list:
                FileSystems.delete([m.path for m in leftovers.metadata_list])
            FileSystems.delete([FileSystems.join(root, TEMPORARY)])
        except Exception:  # leftovers in _temporary are harmless: the run is complete
            pass
        yield {"parquet/files": len(paths), "parquet/rows_written": sum(n for _, n in written)}


@beam.typehints.with_input_types(ShardLines)
class WriteParquet(beam.PTransform):
    """ShardLines of clean events -> Parquet files under ``root`` (local or gs://),
    ``event_type=<type>/date=<YYYY-MM-DD>/part-<key>-NNNNN.parquet``.

    ``input_root``: names this input's files (see the module doc); ``columns``: the
    ``ObserveColumns`` output if already made. Output: one counters dict
    ``{"parquet/files", "parquet/rows_written"}``, emitted after the commit.
    """

    def __init__(self, root: str, input_root: str, run_id: str, columns=None):
        super().__init__()
        self._columns = columns
        self._root = root.rstrip("/")
        self._temp_dir = FileSystems.join(self._root, TEMPORARY, run_id)
        self._key = input_key(input_root)

    def expand(self, events):
        extras = beam.pvalue.AsSingleton(
            self._columns or events | "ObserveColumns" >> ObserveColumns())
        files = (events
                 | "ByPartition" >> beam.ParDo(_ToPartitions())
                 | "GroupByPartition" >> beam.GroupByKey()
                 | "WriteFiles" >> beam.ParDo(_WritePartition(self._temp_dir, self._key),
                                              extras=extras))
        return (events.pipeline
                | "Once" >> beam.Create([None])
                | "Commit" >> beam.ParDo(_CommitParquet(self._root, self._temp_dir, self._key),
                                         written=beam.pvalue.AsList(files)))
