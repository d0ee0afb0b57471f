"""Sinks: shard files written to a temporary folder, committed together at the end.

Every output is NDJSON in ``part-SSSSS-of-NNNNN.ndjson`` files whose names and contents
depend only on the input, so reruns are byte-identical on every runner. Files are
written under ``<output>/_temporary/<run>/`` and moved into place only when the whole
run has succeeded; ``summary.json`` is written last and is the completion marker. A run
that dies part-way leaves no summary and no half-written output folders.
"""
from __future__ import annotations

import zlib
from typing import Any, Callable, Iterable, Iterator

import apache_beam as beam
from apache_beam.io.filesystem import BeamIOError, CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms import codec
from transforms.checks import non_empty_str, positive_int
from transforms.types import ShardLines, ShardLinesIn

SUMMARY = "summary.json"
TEMPORARY = "_temporary"


def shard_name(shard: int, num_shards: int) -> str:
    return f"part-{shard:05d}-of-{num_shards:05d}.ndjson"


def create_ndjson(path: str) -> Any:
    """A new NDJSON file (any FileSystems path), written as is."""
    return FileSystems.create(path, mime_type="application/x-ndjson",
                              compression_type=CompressionTypes.UNCOMPRESSED)


def write_bytes(path: str, data: bytes) -> None:
    with create_ndjson(path) as fo:
        fo.write(data)


def _mkdirs(path: str) -> None:
    try:
        FileSystems.mkdirs(path)
    except OSError:
        pass  # already there; object stores have no folders


class _WriteShard(beam.DoFn):
    """Appends each element's lines to its shard's file; a shard's elements come one
    after the other (a shard is processed by one call upstream, in chunks)."""

    def __init__(self, temp_dir: str, folder: str, num_shards: int):
        self._temp_dir, self._folder, self._num_shards = temp_dir, folder, num_shards

    def start_bundle(self):
        self._shard, self._file, self._done = None, None, set()

    def process(self, element: ShardLines) -> Iterator[str]:
        shard, lines = element
        if not lines:
            return
        if shard != self._shard:
            self._close()
            if shard in self._done:  # would truncate what this bundle already wrote
                raise ValueError(f"{self._folder}: shard {shard} arrived in two runs of "
                                 "elements; a shard's elements must be consecutive")
            relative = f"{self._folder}/{shard_name(shard, self._num_shards)}"
            self._file = create_ndjson(FileSystems.join(self._temp_dir, relative))
            self._shard = shard
            yield relative
        self._file.write(b"\n".join(lines))  # no joined copy with the last newline
        self._file.write(b"\n")

    def finish_bundle(self):
        self._close()

    def teardown(self):  # a failed bundle left its file open: the retry rewrites it
        if getattr(self, "_file", None) is not None:
            self._close()

    def _close(self):
        if self._file is not None:
            self._file.close()
            self._done.add(self._shard)
        self._shard, self._file = None, None


@beam.typehints.with_input_types(ShardLinesIn)
class WriteShards(beam.PTransform):
    """ShardLines -> one file per shard under ``<temp_dir>/<folder>/``; outputs relative paths.

    A shard may come in several consecutive elements (chunks): they are appended in order.
    """

    def __init__(self, temp_dir: str, folder: str, num_shards: int):
        super().__init__()
        self._args = (non_empty_str("temp_dir", temp_dir), non_empty_str("folder", folder),
                      positive_int("num_shards", num_shards))

    def expand(self, shard_lines):
        return shard_lines | "Write" >> beam.ParDo(_WriteShard(*self._args))


class ShardRecords(beam.PTransform):
    """Loose records -> ShardLines, sorted within each shard, for a deterministic file.

    ``shard_key`` gives the stable text that picks the shard; ``sort_key`` orders lines.
    """

    def __init__(self, num_shards: int, shard_key: Callable[[Any], str],
                 sort_key: Callable[[Any], Any]):
        super().__init__()
        self._num_shards, self._shard_key, self._sort_key = num_shards, shard_key, sort_key

    def expand(self, records):
        n, shard_key, sort_key = self._num_shards, self._shard_key, self._sort_key

        def to_lines(element: tuple[int, Iterable[Any]]) -> ShardLines:
            shard, items = element
            return ShardLines(shard, [codec.dumps(r) for r in sorted(items, key=sort_key)])

        return (
            records
            | "KeyByShard" >> beam.Map(
                lambda r: (zlib.crc32(shard_key(r).encode("utf-8", "surrogatepass")) % n, r))
            | "GroupByShard" >> beam.GroupByKey()
            | "SortLines" >> beam.Map(to_lines))


class _Commit(beam.DoFn):
    def __init__(self, output: str, temp_dir: str, folders: tuple[str, ...],
                 make_summary: Callable[[dict], dict]):
        self._output, self._temp_dir = output, temp_dir
        self._folders, self._make_summary = folders, make_summary

    def process(self, _: Any, written: list[str], stats: dict) -> Iterator[dict]:
        summary = self._make_summary(stats)
        out = self._output
        final_summary = FileSystems.join(out, SUMMARY)
        if _exists(final_summary):  # no longer complete from here on
            FileSystems.delete([final_summary])
        for folder in self._folders:  # outputs of an earlier run into the same place
            old = FileSystems.match([FileSystems.join(out, folder, "part-*")])[0].metadata_list
            if old:
                FileSystems.delete([m.path for m in old])
            _mkdirs(FileSystems.join(out, folder))
        if written:
            FileSystems.rename([FileSystems.join(self._temp_dir, p) for p in sorted(written)],
                               [FileSystems.join(out, p) for p in sorted(written)])
        write_bytes(final_summary, summary_bytes(summary))
        _remove_temporary(self._temp_dir, FileSystems.join(out, TEMPORARY))
        yield summary


def _exists(path: str) -> bool:
    """``FileSystems.exists``, which Beam's Azure filesystem (2.77) makes raise for a
    blob that does not exist (so does ``match`` of a path without wildcards): then the
    answer comes from a listing."""
    try:
        return FileSystems.exists(path)
    except BeamIOError:
        return any(m.path == path for m in FileSystems.match([path + "*"])[0].metadata_list)


def _remove_temporary(temp_dir: str, parent: str) -> None:
    """Delete ``_temporary``: this run's files, and leftovers of runs that failed earlier.

    One run at a time per output folder (a second concurrent run would lose its files).
    """
    try:
        leftovers = FileSystems.match([FileSystems.join(parent, "**")])[0].metadata_list
        if leftovers:
            FileSystems.delete([m.path for m in leftovers])
        FileSystems.delete([parent])
    except Exception:  # leftovers in _temporary are harmless: the run is complete
        pass


def summary_bytes(summary: dict) -> bytes:
    import json
    return (json.dumps(summary, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


class CommitOutputs(beam.PTransform):
    """Move every written shard into ``output`` and write ``summary.json`` last.

    Input: the pipeline root. ``written``: PCollection of paths relative to ``temp_dir``;
    ``stats``: single-element PCollection of merged counters; ``make_summary`` turns the
    counters into the summary dict. Output: the summary dict.
    """

    def __init__(self, output: str, temp_dir: str, folders: tuple[str, ...], written, stats,
                 make_summary: Callable[[dict], dict]):
        super().__init__()
        self._args = (output, temp_dir, tuple(folders), make_summary)
        self._written, self._stats = written, stats

    def expand(self, pbegin):
        return (
            pbegin
            | "Once" >> beam.Create([None])
            | "Commit" >> beam.ParDo(_Commit(*self._args),
                                     written=beam.pvalue.AsList(self._written),
                                     stats=beam.pvalue.AsSingleton(self._stats)))
