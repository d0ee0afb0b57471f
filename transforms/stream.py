"""Streaming mode: new files as they land, deduplicated with keyed state, written per window.

Elements carry the time their file was matched (its arrival), not the event's own time:
Currents files bring events of past hours, which a streaming runner would otherwise
drop as late. So the dedup TTL and the output windows count from arrival: a copy that
arrives within ``ttl`` seconds of the first is a duplicate, and each window's outputs
hold the files that arrived in it (a file's rows stay in one window, so each window's
summary balances on its own).
"""
from __future__ import annotations

import uuid
import zlib
from collections import Counter
from typing import Any, Iterable, Iterator, Tuple

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import (ReadModifyWriteStateSpec, TimerSpec,
                                              on_timer)
from apache_beam.utils.timestamp import Duration

from transforms import codec
from transforms.types import DUPLICATES

STREAM = "stream"


# typed keys: Beam then encodes them with a deterministic coder, as keyed state
# requires (and does not warn that it may not be)
@beam.typehints.with_output_types(Iterable[Tuple[str, Tuple[bytes, str, int]]])
def keyed_copies(batch: tuple[str, list]) -> Iterator[tuple[str, tuple]]:
    """ValidBatch -> one ``("<event_type>\\x00<id>", (payload, source, row))`` per event."""
    source, items = batch
    for item in items:
        row, event_type, event_id, payload = item[:4]
        yield f"{event_type}\x00{event_id}", (payload, source, row)


class _FirstCopyWithTTL(beam.DoFn):
    """The first copy of a key goes on; later ones, until ``ttl`` seconds after the
    first, are duplicates. A watermark timer clears the key's state then."""

    KEPT = ReadModifyWriteStateSpec("kept", PickleCoder())
    EXPIRY = TimerSpec("expiry", TimeDomain.WATERMARK)

    def __init__(self, ttl: int):
        self._ttl = ttl

    def process(self, element: tuple[str, tuple], timestamp=beam.DoFn.TimestampParam,
                kept=beam.DoFn.StateParam(KEPT),
                expiry=beam.DoFn.TimerParam(EXPIRY)) -> Iterator[Any]:
        key, (payload, source, row) = element
        first = kept.read()
        if first is None:
            kept.write((source, row, zlib.crc32(payload)))
            expiry.set(timestamp + Duration(seconds=self._ttl))
            yield payload
            return
        kept_source, kept_row, crc = first
        event_type, event_id = key.split("\x00", 1)
        yield beam.pvalue.TaggedOutput(DUPLICATES, codec.dumps({
            "event_type": event_type, "id": event_id, "source": source, "row": row,
            "kept_source": kept_source, "kept_row": kept_row,
            "conflicting": zlib.crc32(payload) != crc, "record": codec.loads(payload)}))

    @on_timer(EXPIRY)
    def expire(self, kept=beam.DoFn.StateParam(KEPT)):
        kept.clear()


class DeduplicateStream(beam.PTransform):
    """Keyed copies (``keyed_copies``) -> the first copy's canonical JSON (main,
    ``events``) and duplicate lines (tagged ``duplicates``, as DeduplicateEvents writes
    them). State per key lives ``ttl`` seconds (of element time) after its first copy."""

    def __init__(self, ttl: int):
        super().__init__()
        self._ttl = ttl

    def expand(self, keyed):
        return keyed | "FirstCopyWithTTL" >> beam.ParDo(
            _FirstCopyWithTTL(self._ttl)).with_outputs(DUPLICATES, main="events")


class _WriteWindow(beam.DoFn):
    """All lines of one window -> ``<output>/stream/<start>_<end>/<folder>/part-00000-of-
    00001.ndjson`` and ``summary.json``, written under ``stream/_temporary`` and moved
    into place together, the summary last."""

    def __init__(self, output: str, deliver: tuple[str, ...] = ()):
        self._output, self._deliver = output, deliver

    def process(self, element: tuple[Any, Iterable[tuple[str, bytes]]],
                window=beam.DoFn.WindowParam) -> Iterator[dict]:
        from transforms.sinks import SUMMARY, shard_name, summary_bytes, write_bytes
        by_folder: dict[str, list[bytes]] = {}
        rows_read = 0
        for folder, line in element[1]:
            if folder == "_rows":
                rows_read += int(line)
                continue
            by_folder.setdefault(folder, []).append(line)
        name = f"{window.start.to_utc_datetime():%Y%m%dT%H%M%SZ}_" \
               f"{window.end.to_utc_datetime():%Y%m%dT%H%M%SZ}"
        final = FileSystems.join(self._output, STREAM, name)
        temp = FileSystems.join(self._output, STREAM, "_temporary", uuid.uuid4().hex)
        moved = []
        for folder, lines in sorted(by_folder.items()):
            relative = f"{folder}/{shard_name(0, 1)}"
            write_bytes(FileSystems.join(temp, relative), b"".join(
                line + b"\n" for line in sorted(lines)))
            moved.append(relative)
        for relative in moved:
            try:
                FileSystems.mkdirs(FileSystems.join(final, relative.rsplit("/", 1)[0]))
            except OSError:
                pass
        if moved:
            FileSystems.rename([FileSystems.join(temp, r) for r in moved],
                               [FileSystems.join(final, r) for r in moved])
            try:  # local folders stay behind their files; object stores have none
                FileSystems.delete([temp])
            except Exception:
                pass
        counts = Counter({folder: len(lines) for folder, lines in by_folder.items()})
        summary = {"window": {"start": window.start.to_utc_datetime().isoformat() + "Z",
                              "end": window.end.to_utc_datetime().isoformat() + "Z"},
                   "rows_read": rows_read, "valid": counts["events"],
                   "invalid": counts["dead_letter"],
                   "duplicates_dropped": counts["duplicates"],
                   "file_errors": counts["file_errors"],
                   "conservation_ok": rows_read == counts["events"] + counts[
                       "dead_letter"] + counts["duplicates"]}
        if self._deliver:
            summary["delivery_failed"] = {p: dict(Counter(
                codec.loads(line)["reason"] for line in by_folder.get(
                    f"delivery_failed/{p}", []))) for p in self._deliver}
        write_bytes(FileSystems.join(final, SUMMARY), summary_bytes(summary))
        yield summary


class WriteWindows(beam.PTransform):
    """``(folder, line)`` pairs (and ``("_rows", n)`` counts) -> one folder per fixed
    window of ``minutes`` under ``<output>/stream/``; outputs each window's summary.
    ``deliver``: partners delivered to (their ``delivery_failed/`` reasons are counted)."""

    def __init__(self, output: str, minutes: float, deliver: tuple[str, ...] = ()):
        super().__init__()
        self._output, self._minutes, self._deliver = output, minutes, tuple(deliver)

    def expand(self, lines):
        return (lines
                | "Window" >> beam.WindowInto(beam.window.FixedWindows(
                    int(self._minutes * 60)))
                | "OneKey" >> beam.Map(lambda x: (None, x))
                | "PerWindow" >> beam.GroupByKey()
                | "Write" >> beam.ParDo(_WriteWindow(self._output, self._deliver)))
