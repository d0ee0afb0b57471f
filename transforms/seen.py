"""The seen store: events kept by earlier runs, so a copy re-delivered hours later is a
duplicate, not a new event.

One entry per kept event, ``(event_type, id, time, run_id, crc32 of its canonical JSON)``,
in ``seen_shards`` files (``part-SSSSS.zst``, a zstd-compressed pickle of the shard's
sorted entries) sharded by the same CRC32 of ``(event_type, id)`` as dedup. No worker
holds the store whole: each file is read by one worker and its entries travel through
dedup's own GroupByKey to the dedup shard of their key, where they meet this run's
copies (``DeduplicateEvents(seen=...)``). The next generation (old entries and this
run's survivors) is regrouped by seen shard and written to a new folder, pruned to
``window`` seconds of event time before the latest event time in it.
"""
from __future__ import annotations

import dataclasses
import zlib
from collections import defaultdict
from typing import Any, Iterable, Iterator

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms import codec

SEEN_NEW = "seen_new"
_MARK = "seen"  # dedup's shuffle value holding seen entries: (_MARK, packed entries)

Entry = tuple  # (event_type, id, time, run_id, crc)


def shard_file(folder: str, shard: int) -> str:
    return FileSystems.join(folder, f"part-{shard:05d}.zst")


def payload_crc(payload: bytes) -> int:
    return zlib.crc32(payload)


def event_time(payload: bytes) -> int:
    """The ``time`` of an event's canonical JSON (seconds since the epoch; 0 if absent)."""
    value = codec.loads(payload).get("time")
    return int(value) if isinstance(value, (int, float)) else 0


def is_seen_value(blob: Any) -> bool:
    return isinstance(blob, tuple) and len(blob) == 2 and blob[0] == _MARK


def seen_entries(blob: tuple) -> list[Entry]:
    return codec.unpack(blob[1])


@dataclasses.dataclass(frozen=True)
class SeenStore:
    """Where the store is read from (``old``, None for the first run) and written to
    (``new``), and how: this run's id, the window in seconds, the number of shards."""

    old: str | None
    new: str
    run_id: str
    window: int
    shards: int

    def read(self, num_shards: int) -> beam.PTransform:
        """The old store as dedup shuffle values ``(dedup shard, (_MARK, packed))``."""
        return _ReadSeen(self.old, num_shards)

    def write(self) -> beam.PTransform:
        """Entries ``(seen shard, [Entry])`` -> the new store; outputs per-shard stats."""
        return _WriteSeen(self.new, self.window)


class _ReadSeen(beam.PTransform):
    def __init__(self, folder: str | None, num_shards: int):
        super().__init__()
        self._folder, self._num_shards = folder, num_shards

    def expand(self, pbegin):
        from transforms.dedup import shard_of
        folder, n = self._folder, self._num_shards

        def files(_: Any) -> list[str]:
            if folder is None:
                return []
            found = FileSystems.match([FileSystems.join(folder, "part-*.zst")])
            return sorted(m.path for m in found[0].metadata_list)

        def by_dedup_shard(path: str) -> Iterator[tuple[int, tuple]]:
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as fo:
                entries = codec.unpack(fo.read())
            out: dict[int, list] = defaultdict(list)
            for entry in entries:
                out[shard_of(entry[0], entry[1], n)].append(entry)
            for shard, group in sorted(out.items()):
                yield shard, (_MARK, codec.pack(group))

        return (pbegin
                | "Folder" >> beam.Create([None])
                | "ListShards" >> beam.FlatMap(files)
                | "Spread" >> beam.Reshuffle()
                | "ByDedupShard" >> beam.FlatMap(by_dedup_shard))


def split_across_runs(best: dict, seen: dict, run_id: str, shards: int
                      ) -> tuple[dict, dict, list[tuple[int, list]]]:
    """This dedup shard's survivors ``{key: (payload, source, row, ...)}`` against the seen
    entries ``{key: Entry}`` of the same keys.

    Returns (survivors kept, ``{key: (payload, source, row, kept Entry)}`` of survivors
    an earlier run kept, the next store's entries grouped by seen shard: every old entry
    and one per survivor kept)."""
    from transforms.dedup import shard_of
    kept, earlier = {}, {}
    for key, copy in best.items():
        previous = seen.get(key)
        if previous is None:
            kept[key] = copy
        else:
            earlier[key] = (*copy[:3], previous)
    out: dict[int, list] = defaultdict(list)
    for key, entry in seen.items():
        out[shard_of(key[0], key[1], shards)].append(entry)
    for key, (payload, *_) in kept.items():
        out[shard_of(key[0], key[1], shards)].append(
            (key[0], key[1], event_time(payload), run_id, payload_crc(payload)))
    return kept, earlier, sorted(out.items())


class _WriteShard(beam.DoFn):
    def __init__(self, folder: str, window: int):
        self._folder, self._window = folder, window

    def process(self, element: tuple[int, Iterable[list]], latest: int) -> Iterator[dict]:
        shard, groups = element
        horizon = latest - self._window
        entries = sorted({(e[0], e[1]): e for group in groups for e in group
                          if e[2] >= horizon}.values())
        blob = codec.pack(entries)
        with FileSystems.create(shard_file(self._folder, shard),
                                compression_type=CompressionTypes.UNCOMPRESSED) as fo:
            fo.write(blob)
        yield {"seen_store_entries": len(entries), "seen_store_bytes": len(blob)}


class _WriteSeen(beam.PTransform):
    def __init__(self, folder: str, window: int):
        super().__init__()
        self._folder, self._window = folder, window

    def expand(self, entries):
        latest = (entries
                  | "LatestTime" >> beam.Map(lambda e: max((x[2] for x in e[1]), default=0))
                  | "Max" >> beam.CombineGlobally(
                      lambda times: max(times, default=0)).without_defaults())
        return (entries
                | "GroupBySeenShard" >> beam.GroupByKey()
                | "WriteShard" >> beam.ParDo(_WriteShard(self._folder, self._window),
                                             latest=beam.pvalue.AsSingleton(
                                                 latest, default_value=0)))
