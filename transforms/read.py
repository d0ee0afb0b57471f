"""ReadCurrentsExport: every ``.avro`` under a prefix -> batches of raw Currents rows.

Files are matched recursively through Beam's ``FileSystems`` (local, gs://, s3://, azfs://)
and decoded with each file's own writer schema, so files written with different schema
ids read side by side: by polars into a frame when asked and the schema allows (decoding
was most of the CPU a row cost), else, and always for a file polars refuses, by fastavro.
Rows travel in batches: Beam pays per element, so one element carries up to
``batch_size`` rows of one file.
"""
from __future__ import annotations

import io
import re
from typing import Any, Iterator

import apache_beam as beam
import fastavro
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms.checks import non_empty_str, positive_int
from transforms.types import FILE_REPORTS, FileReport, RowBatch

# Rows per element: Beam pays per element, and a worker holds about one batch of
# decoded rows (dedup packs its shuffle values per file, whatever the batch size).
BATCH_SIZE = 2000

_EVENT_TYPE_SEGMENT = re.compile(r"(?:^|/)event_type=([^/]+)/")
_SCHEMA_ID_SEGMENT = re.compile(r"/date=[^/]+/([^/]+)/")


def export_pattern(path: str) -> str:
    """The glob that matches every Avro file under ``path`` (or ``path`` itself)."""
    if path.endswith(".avro") or any(c in path for c in "*?["):
        return path
    return path.rstrip("/") + "/**.avro"


def export_size(path: str) -> tuple[int, int]:
    """(number of Avro files, their total bytes) under ``path``."""
    found = FileSystems.match([export_pattern(path)])[0].metadata_list
    return len(found), sum(m.size_in_bytes for m in found)


def event_type_from_path(path: str) -> str | None:
    m = _EVENT_TYPE_SEGMENT.search(path)
    return m.group(1) if m else None


def event_type_from_schema(schema: Any) -> str | None:
    """``dataexport.S3.inner.users.messages.email.Click`` -> ``users.messages.email.Click``
    (and ``dataexport.S3.inner.agentconsole.AgentExecuted`` -> ``agentconsole.AgentExecuted``)."""
    if not isinstance(schema, dict):
        return None
    name, namespace = schema.get("name") or "", schema.get("namespace") or ""
    full = name if "." in name or not namespace else f"{namespace}.{name}"
    if full.startswith("users."):
        return full
    idx = full.find(".users.")
    if idx >= 0:
        return full[idx + 1:]
    idx = full.find(".inner.")
    return full[idx + 7:] or None if idx >= 0 else None


def _nullable(t: Any) -> bool:
    return isinstance(t, list) and "null" in t


def _branch(t: Any) -> Any:
    """The non-null type of a field (``["null", T]`` -> ``T``)."""
    if isinstance(t, list):
        kinds = [k for k in t if k != "null"]
        return kinds[0] if len(kinds) == 1 else None
    return t


def writer_facts(schema: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(fields the writer schema declares ``float``, fields whose nulls it allows).

    Avro ``float`` is 32-bit: its values are written as the shortest decimal that reads
    back as the same 32-bit float (9.99, not 9.989999771118164). Allowed nulls name the
    field, or ``field[]`` for an array whose items may be null (Braze's ``media_urls``):
    validation does not dead-letter a null the file's own schema allows.
    """
    floats, nulls = [], []
    for field in (schema.get("fields", []) if isinstance(schema, dict) else []):
        t, name = field.get("type"), field.get("name")
        if _nullable(t):
            nulls.append(name)
        base = _branch(t)
        if base == "float" or (isinstance(base, dict) and base.get("type") == "float"):
            floats.append(name)
        if isinstance(base, dict) and base.get("type") == "array" and _nullable(
                base.get("items")):
            nulls.append(f"{name}[]")
    return tuple(floats), tuple(sorted(nulls))


def float32_shortest(values: list) -> list:
    """32-bit floats read as doubles -> the shortest decimal that reads back as the same
    32-bit float (9.99, 0.1), as doubles; None stays None. The same conversion as the
    frame reader's (polars formats a 32-bit float as its shortest decimal)."""
    import polars as pl
    return pl.Series(values, dtype=pl.Float32).cast(pl.String).cast(pl.Float64).to_list()


# Avro types polars decodes to exactly the values fastavro gives (float widened to double)
_FRAME_TYPES = {"string", "int", "long", "boolean", "double", "float"}


def frame_readable(schema: Any) -> bool:
    """True for a writer schema polars reads into a frame with the same values fastavro
    gives: a record of primitive (or ``["null", primitive]``) and string-array fields,
    no logical types, maps, bytes or nested records."""
    def simple(t: Any) -> bool:
        if isinstance(t, str):
            return t in _FRAME_TYPES
        if isinstance(t, dict):
            return (t.get("type") == "array" and t.get("items") == "string"
                    and set(t) <= {"type", "items"}) or (set(t) == {"type"}
                                                           and simple(t["type"]))
        return False

    if not isinstance(schema, dict) or schema.get("type") != "record":
        return False
    for field in schema.get("fields", []):
        t = field.get("type")
        if isinstance(t, list):
            kinds = [k for k in t if k != "null"]
            if len(kinds) != 1 or len(t) > 2 or not simple(kinds[0]):
                return False
        elif not simple(t):
            return False
    return True


def read_frame(data: bytes) -> Any:
    """An Avro file as a polars frame (floats as doubles), or None if polars refuses it
    (bytes that are not UTF-8, a truncated or corrupt file): the row reader then reads
    it and says what is wrong."""
    import polars as pl  # workers only: the launching process never needs it
    try:
        frame = pl.read_avro(io.BytesIO(data))
    except Exception:
        return None
    floats = [name for name, dtype in frame.schema.items() if dtype == pl.Float32]
    # as float32_shortest: the value Braze wrote (9.99), not the 32-bit float's binary
    # expansion (9.98999977...)
    return frame.with_columns(pl.col(floats).cast(pl.String).cast(pl.Float64)) \
        if floats else frame


def largest_first(pattern: str) -> list[str]:
    """The files matching ``pattern``, largest first (then by path).

    Spread over workers in this order, big files start first and the local runner, which
    deals a stage's elements to its workers in turn, gives each a similar share of bytes
    (the 500k benchmark's 84 files: 54/46% of the bytes in listing order, 51/49% so)."""
    found = FileSystems.match([pattern])[0].metadata_list
    return [m.path for m in sorted(found, key=lambda m: (-m.size_in_bytes, m.path))]


class _ReadAvroFile(beam.DoFn):
    """One file -> RowBatch elements, and one FileReport on the ``files`` output."""

    def __init__(self, batch_size: int, as_frames: bool = False):
        self._batch_size = batch_size
        self._as_frames = as_frames

    def process(self, path: str) -> Iterator[Any]:
        report: FileReport = {"source": path, "rows": 0, "event_type": None,
                              "schema_id": None, "reason": None, "error": None}
        m = _SCHEMA_ID_SEGMENT.search(path)
        report["schema_id"] = m.group(1) if m else None
        try:
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as fo:
                yield from self._read(fo, path, report)
        except Exception as exc:  # a broken file is reported, never fatal
            reason = report["reason"] or _classify(exc)
            report.update(reason=reason, error=f"{type(exc).__name__}: {exc}")
        yield beam.pvalue.TaggedOutput(FILE_REPORTS, report)

    def _read(self, fo, path: str, report: FileReport) -> Iterator[RowBatch]:
        head = fo.read(4)
        if not head:
            report["reason"], report["error"] = "empty_file", "zero-byte file"
            return
        if head != b"Obj\x01":
            report["reason"], report["error"] = "not_avro", "no Avro header (magic bytes)"
            return
        fo.seek(0)
        reader = fastavro.block_reader(fo)
        from_path = event_type_from_path(path)
        from_schema = event_type_from_schema(reader.writer_schema)
        event_type = from_path or from_schema or "unknown"
        report["event_type"] = event_type
        floats, nulls = writer_facts(reader.writer_schema)
        mismatch = None
        if from_path and from_schema and from_path != from_schema:
            mismatch = ("event_type_mismatch",
                        f"path says {from_path}, writer schema says {from_schema}")
        elif self._as_frames and frame_readable(reader.writer_schema):
            fo.seek(0)
            data = fo.read()
            frame = read_frame(data)
            if frame is not None and frame.height:
                report["rows"] = frame.height
                for first in range(0, frame.height, self._batch_size):
                    yield RowBatch(event_type, path, first,
                                   frame.slice(first, self._batch_size), None, nulls)
                return
            fo.seek(0)  # the same stream as always: fastavro's errors depend on it
            reader = fastavro.block_reader(fo)
        batch: list[dict] = []
        problems: dict[int, tuple[str, str]] = {}
        first = 0
        blocks = iter(reader)
        while True:
            try:
                block = next(blocks)
            except StopIteration:
                break
            except Exception as exc:  # keep the rows of every complete block read so far
                report["reason"] = _classify(exc)
                report["error"] = f"{type(exc).__name__}: {exc} (after {report['rows']} rows)"
                break
            try:
                records = list(block)
            except UnicodeDecodeError:
                records, bad = _decode_leniently(block, reader.writer_schema)
                for i, fields in bad.items():
                    problems[len(batch) + i] = (
                        "invalid_utf8", f"{', '.join(fields)}: bytes that are not UTF-8")
            for name in floats:
                for record, value in zip(records, float32_shortest(
                        [record.get(name) for record in records])):
                    record[name] = value
            batch += records
            report["rows"] += len(records)
            if len(batch) >= self._batch_size:
                yield self._batch(event_type, path, first, batch, problems, mismatch, nulls)
                first += len(batch)
                batch, problems = [], {}
        if batch:
            yield self._batch(event_type, path, first, batch, problems, mismatch, nulls)
        if report["rows"] == 0 and not report["reason"]:
            report["reason"], report["error"] = "no_rows", "Avro header but no data blocks"

    @staticmethod
    def _batch(event_type, path, first, batch, problems, mismatch, nulls) -> RowBatch:
        if mismatch:
            problems = {i: mismatch for i in range(len(batch))}
        return RowBatch(event_type, path, first, batch, problems or None, nulls)


def _strings_as_bytes(schema: Any) -> Any:
    """The same schema with every ``string`` read as ``bytes`` (same binary encoding)."""
    if schema == "string":
        return "bytes"
    if isinstance(schema, list):
        return [_strings_as_bytes(s) for s in schema]
    if isinstance(schema, dict):
        out = dict(schema)
        for key in ("type", "items", "values"):
            if key in out and not (key == "type" and out[key] in ("record", "enum", "fixed")):
                out[key] = _strings_as_bytes(out[key])
        if "fields" in out:
            out["fields"] = [{**f, "type": _strings_as_bytes(f["type"])} for f in out["fields"]]
        return out
    return schema


def _decode_leniently(block, writer_schema) -> tuple[list[dict], dict[int, list[str]]]:
    """Re-read a block whose strings are not all UTF-8: keep every row, flag the bad ones.

    Bad strings are kept with their bytes escaped (``\\xff``) so the dead letter shows them.
    """
    schema = fastavro.parse_schema(_strings_as_bytes(writer_schema), named_schemas={})
    data = block.bytes_
    data.seek(0)
    records, bad = [], {}
    for i in range(block.num_records):
        raw = fastavro.schemaless_reader(data, schema, None)
        fields: list[str] = []
        records.append({k: _to_text(v, k, fields) for k, v in raw.items()})
        if fields:
            bad[i] = fields
    return records, bad


def _to_text(value: Any, name: str, bad: list[str]) -> Any:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            bad.append(name)
            return value.decode("utf-8", "backslashreplace")
    if isinstance(value, list):
        return [_to_text(v, name, bad) for v in value]
    if isinstance(value, dict):
        return {k: _to_text(v, f"{name}.{k}", bad) for k, v in value.items()}
    return value


def _classify(exc: Exception) -> str:
    """A machine-readable reason for a file that could not be read to its end."""
    text = str(exc)
    if isinstance(exc, EOFError) or "cannot read" in text:
        return "truncated_file"
    if "sync marker" in text or "read length" in text:
        return "corrupt_block"
    if "codec" in text.lower():
        return "unsupported_codec"
    return "unreadable_file"


class ReadAvroFiles(beam.PTransform):
    """Paths of Avro files -> RowBatch (main ``rows``) and FileReports (tagged ``files``),
    as ReadCurrentsExport gives them: for paths found while the pipeline runs
    (streaming's ``fileio.MatchContinuously``)."""

    def __init__(self, batch_size: int = BATCH_SIZE, as_frames: bool = False):
        super().__init__()
        self._batch_size, self._as_frames = batch_size, as_frames

    def expand(self, paths):
        return paths | "Decode" >> beam.ParDo(_ReadAvroFile(
            self._batch_size, self._as_frames)).with_output_types(RowBatch).with_outputs(
            FILE_REPORTS, main="rows")


@beam.typehints.with_input_types(beam.pvalue.PBegin)
class ReadCurrentsExport(beam.PTransform):
    """Read a Currents export.

    Input: the pipeline root. ``path`` is a folder or prefix (any FileSystems path), a single
    ``.avro`` file, or a glob.
    Output (main): RowBatch = ``(event_type, source, first_row, rows, problems,
    allowed_nulls)`` (``writer_facts``: the fields whose nulls the file's writer schema
    allows); 32-bit floats as the shortest decimal that reads back the same; tagged
    ``files``: one FileReport per file (rows read, or why the file could not be read).
    ``as_frames``: ``rows`` is a polars DataFrame (same values, ~4x faster to decode)
    for files whose schema polars reads exactly (see ``frame_readable``), a list of dicts
    otherwise; ValidateEvents takes both. ``files``: read exactly these paths (as listed,
    largest first) instead of listing ``path``.
    """

    def __init__(self, path: str, batch_size: int = BATCH_SIZE, as_frames: bool = False,
                 files: list[str] | None = None):
        super().__init__()
        self._files = files  # these files only (incremental runs), not all under path
        self._pattern = export_pattern(non_empty_str("path", path))
        self._batch_size = positive_int("batch_size", batch_size)
        self._as_frames = as_frames

    def expand(self, pbegin):
        if self._files is not None:
            paths = pbegin | "GivenFiles" >> beam.Create(self._files, reshuffle=False)
        else:
            paths = (pbegin
                     | "MatchFiles" >> beam.Create([self._pattern])
                     | "LargestFirst" >> beam.FlatMap(largest_first))
        return (
            paths
            | "Spread" >> beam.Reshuffle()
            | "Decode" >> beam.ParDo(_ReadAvroFile(
                self._batch_size, self._as_frames)).with_output_types(
                RowBatch).with_outputs(
                FILE_REPORTS, main="rows"))
