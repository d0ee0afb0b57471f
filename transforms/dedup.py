"""DeduplicateEvents: exactly one event per (event_type, id), chosen deterministically.

Currents delivers at least once, so the same event can appear twice in a file, in two
files, or in two hours. Events are hashed (a stable CRC32, not Python's per-process
hash) into ``num_shards`` shards; the events of each file go through a single
GroupByKey as one compressed value per shard, so the shuffle pays per file, not per
event. Within
a shard the survivor of a key is the copy with the smallest canonical JSON (then the
smallest source path and row): the same rows in any order, split into any files, give
the same survivor. Survivors come out sorted by key, so each shard's output is
byte-identical from run to run and runner to runner.
"""
from __future__ import annotations

import functools
import uuid
import zlib
from collections import Counter, defaultdict
from operator import itemgetter
from typing import Any, Iterable, Iterator

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.utils.windowed_value import WindowedValue

from transforms import codec
from transforms import seen as seen_store
from transforms.checks import optional_str, positive_int
from transforms.identity_map import DELETE_REQUEST, ORPHAN, RESOLVED, SOURCE
from transforms.types import DUPLICATES, STATS, ShardLines, ValidBatch, ValidBatchIn

# written by ValidateEvents, completed by ResolveIdentityMap: not part of a dropped copy
OWN_IDENTITY = (SOURCE, RESOLVED)
FACTS = "facts"  # output tag: per shard, what ResolveIdentityMap needs of each event
_PARSED = frozenset((ORPHAN, DELETE_REQUEST))  # the identity step reads these itself


def shard_of(event_type: str, event_id: str, num_shards: int) -> int:
    """CRC32 of ``"<event_type>\\x00<id>"``: stable across processes, machines and Python
    versions. The CRC of the event type's part is computed once per type."""
    return zlib.crc32(event_id.encode("utf-8", "surrogatepass"),
                      _type_crc(event_type)) % num_shards


@functools.lru_cache(maxsize=None)
def _type_crc(event_type: str) -> int:
    return zlib.crc32(f"{event_type}\x00".encode("utf-8", "surrogatepass"))


class _ScatterToShards(beam.DoFn):
    """Validated batches -> one packed value per (file, window, shard).

    A file's batches arrive one after the other: their entries are gathered per shard
    and packed when the next file (or window) starts, or the bundle ends, so the shuffle
    holds few, well-compressed values whatever ``--batch-size`` is, and a worker holds at
    most one file's canonical JSON. Each value goes out in the window its batches came
    in (at the window's end, where the GroupByKey puts it anyway), so windowed input is
    deduplicated per window.
    """

    def __init__(self, num_shards: int, spill_dir: str | None = None):
        self._num_shards = num_shards
        self._spill_dir = spill_dir

    def start_bundle(self):
        self._key: tuple[str, Any] | None = None  # (source, window) being gathered
        self._by_shard: dict[int, list] = defaultdict(list)

    def process(self, batch: ValidBatch,
                window=beam.DoFn.WindowParam) -> Iterator[WindowedValue]:
        source, items = batch
        if (source, window) != self._key:
            yield from self._packed()
            self._key = (source, window)
        # shard_of, inlined (a call per event was ~4% of this step); the item tuple
        # itself is what is packed: no new object per event
        by_shard, n, crc, type_crcs = self._by_shard, self._num_shards, zlib.crc32, {}
        for item in items:
            event_type = item[1]
            type_crc = type_crcs.get(event_type)
            if type_crc is None:
                type_crc = type_crcs[event_type] = _type_crc(event_type)
            by_shard[crc(item[2].encode("utf-8", "surrogatepass"), type_crc) % n].append(item)

    def finish_bundle(self):
        yield from self._packed()

    def _packed(self) -> list[WindowedValue]:
        if self._key is None or not self._by_shard:
            return []
        (source, window), by_shard = self._key, self._by_shard
        packed = [(shard, codec.pack((source, entries)))
                  for shard, entries in sorted(by_shard.items())]
        by_shard.clear()
        if self._spill_dir is not None:
            packed = _spill(self._spill_dir, packed)
        at, windows = window.max_timestamp(), (window,)
        return [WindowedValue(value, at, windows) for value in packed]


def _spill(folder: str, packed: list[tuple[int, bytes]]) -> list[tuple[int, tuple]]:
    """Write a file's shuffle values to one file of their own; the shuffle then carries
    ``(path, offset, length)`` per shard. One file per source file (creating a file costs
    ~0.5 ms on a VM disk: one per value was 5% of the CPU). A random name: a retried
    bundle writes a new file, and the old one is never read."""
    path = FileSystems.join(folder, f"{uuid.uuid4().hex}.zst")
    refs, offset = [], 0
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as fo:
        for shard, blob in packed:
            fo.write(blob)
            refs.append((shard, (path, offset, len(blob))))
            offset += len(blob)
    return refs


def _facts(entries: list[tuple]) -> tuple[list, list, list, dict]:
    """What the identity step needs of a shard's survivors, column by column (no
    container per event: fewer objects for the collector to walk, cheaper to pickle if
    a runner encodes them): ``(user_ids, external_user_ids, times, parse)`` from the
    validated items (ValidateEvents'); ``parse``: ``{index: canonical JSON}`` of the events
    the step must read itself (UserOrphan and UserDeleteRequest events, whose other fields
    it needs, and items of 4 made without ValidateEvents), their user_id given as None."""
    if all(len(e) >= 7 for e in entries):
        parse = {i: e[3] for i, e in enumerate(entries) if e[1] in _PARSED}
    else:  # items made without ValidateEvents: their facts come from their JSON
        parse = {i: e[3] for i, e in enumerate(entries) if len(e) < 7 or e[1] in _PARSED}
        entries = [e if len(e) >= 7 else (*e[:4], None, None, -1) for e in entries]
    uids, exts, times = ([e[k] for e in entries] for k in (4, 5, 6))
    for i in parse:
        uids[i] = None
    return uids, exts, times, parse


def _unspilled(value: bytes | tuple) -> bytes:
    if isinstance(value, bytes):
        return value
    path, offset, length = value
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as fo:
        fo.seek(offset)
        return fo.read(length)


class _KeepOnePerKey(beam.DoFn):
    """All copies of a shard's keys -> sorted survivors, plus one line per dropped copy."""

    def __init__(self, seen: Any = None, facts: bool = True):
        self._seen = seen  # transforms.seen.SeenStore, or None
        self._facts = facts

    def process(self, element: tuple[int, Iterable[bytes]]) -> Iterator[Any]:
        yield from self._keep_one(*element)

    def _keep_one(self, shard: int, blobs: Iterable[bytes]) -> Iterator[Any]:
        best: dict[tuple[str, str], tuple[bytes, str, int]] = {}
        dropped: list[tuple[tuple[str, str], bytes, str, int]] = []
        seen: dict = {}  # entries of the seen store (earlier runs), by key
        for blob in blobs:
            if seen_store.is_seen_value(blob):
                seen.update(((e[0], e[1]), e) for e in seen_store.seen_entries(blob))
                continue
            source, entries = codec.unpack(_unspilled(blob))
            for entry in entries:
                row, event_type, event_id, payload = entry[:4]
                key = (event_type, event_id)
                copy = (payload, source, row, entry)
                kept = best.get(key)
                if kept is None:
                    best[key] = copy
                elif copy < kept:
                    best[key] = copy
                    dropped.append((key, *kept))
                else:
                    dropped.append((key, *copy))
        earlier: dict = {}  # survivors an earlier run kept: dropped as copies of those
        if self._seen is not None:
            best, earlier, store = seen_store.split_across_runs(
                best, seen, self._seen.run_id, self._seen.shards)
            for seen_shard, group in store:
                yield beam.pvalue.TaggedOutput(seen_store.SEEN_NEW, (seen_shard, group))
        stats: Counter = Counter(valid=len(best), duplicates_dropped=len(dropped) + len(
            earlier), duplicates_across_runs=len(earlier))
        for event_type, n in Counter(map(itemgetter(0), best)).items():
            stats[f"by_event_type/{event_type}"] = n
        keys = sorted(best)
        yield ShardLines(shard, [best[k][0] for k in keys])
        if self._facts:
            yield beam.pvalue.TaggedOutput(FACTS, (shard, _facts([best[k][3] for k in keys])))
        dropped += [(key, *e[:3]) for key, e in earlier.items()]
        if dropped:
            lines = []
            for key, payload, source, row, *_ in sorted(dropped,
                                                       key=lambda d: (d[0], d[2], d[3])):
                if key in earlier:  # kept by an earlier run: compared by checksum
                    entry = earlier[key][3]  # (event_type, id, time, run_id, crc)
                    line = {"kept_source": None, "kept_row": None, "kept_run": entry[3],
                            "conflicting": seen_store.payload_crc(payload) != entry[4]}
                else:
                    kept_payload, kept_source, kept_row = best[key][:3]
                    line = {"kept_source": kept_source, "kept_row": kept_row,
                            "conflicting": payload != kept_payload}
                stats["conflicting_duplicates"] += line["conflicting"]
                record = codec.loads(payload)
                for name in OWN_IDENTITY:  # the kept copy's, in events/, is the resolved one
                    record.pop(name, None)
                lines.append(codec.dumps({
                    "event_type": key[0], "id": key[1], "source": source, "row": row,
                    **line, "record": record}))
            yield beam.pvalue.TaggedOutput(DUPLICATES, ShardLines(shard, lines))
        yield beam.pvalue.TaggedOutput(STATS, dict(stats))


@beam.typehints.with_input_types(ValidBatchIn)
class DeduplicateEvents(beam.PTransform):
    """Keep one event per (event_type, id).

    Input: ValidBatch ``(source, [(row, event_type, id, canonical_json)])``.
    Output (main, ``events``): ShardLines ``(shard, [canonical_json, ...])`` sorted by key,
    one element per non-empty shard; tagged ``duplicates``: ShardLines of JSON lines
    ``{event_type, id, source, row, kept_source, kept_row, conflicting, record}``; tagged
    ``stats``: counters (valid, duplicates_dropped, conflicting_duplicates, by_event_type).
    ``spill_dir``: a folder (local or gs://) for the shuffle values; the GroupByKey then
    moves only their paths. For the local runner, which keeps everything it shuffles in
    its own memory, several copies of it; leave it None on Dataflow, whose shuffle
    service is built for this. Nothing there is deleted: use a temporary folder.
    Windowed input is deduplicated within each window; outputs keep the input's windows
    and, as after any GroupByKey, are timestamped at the end of their window.
    ``seen``: a ``transforms.seen.SeenStore`` (incremental runs): survivors an earlier
    run kept become duplicates (``kept_run``, counted as ``duplicates_across_runs``),
    and the tagged ``seen_new`` output carries the store's next generation.
    Tagged ``facts``: ``(shard, (user_ids, external_user_ids, times, {index: JSON}))``,
    per event of that shard's events in order (see ``_facts``), for ResolveIdentityMap,
    which then reads no event again to build the map (``facts=False``: not made).
    """

    def __init__(self, num_shards: int = 8, spill_dir: str | None = None,
                 seen: Any = None, facts: bool = True):
        super().__init__()
        self._facts = bool(facts)
        self._num_shards = positive_int("num_shards", num_shards)
        self._spill_dir = optional_str("spill_dir", spill_dir)
        self._seen = seen

    def expand(self, valid):
        scattered = valid | "ScatterToShards" >> beam.ParDo(
            _ScatterToShards(self._num_shards, self._spill_dir))
        tags = [DUPLICATES, STATS, FACTS]
        if self._seen is not None:  # the seen store joins the copies of its keys
            tags.append(seen_store.SEEN_NEW)
            scattered = (scattered, valid.pipeline | "ReadSeen" >> self._seen.read(
                self._num_shards)) | "WithSeen" >> beam.Flatten()
        return (
            scattered
            | "GroupByShard" >> beam.GroupByKey()
            | "KeepOnePerKey" >> beam.ParDo(_KeepOnePerKey(self._seen, self._facts)
                                            ).with_output_types(
                ShardLines).with_outputs(*tags, main="events"))
