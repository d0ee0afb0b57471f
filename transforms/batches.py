"""Between our batches and plain per-event PCollections, for users' own steps.

Our transforms move batches (Beam pays per element). ``ParseEvents`` turns the events
of DeduplicateEvents back into one dict per event for a user's own ``Map``/``Filter``;
``ToRowBatches`` does the opposite for rows that come from elsewhere than Avro files.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, Iterator, Tuple

import apache_beam as beam

from transforms import codec
from transforms.checks import non_empty_str, positive_int
from transforms.types import RowBatch, ShardLinesIn


@beam.typehints.with_input_types(ShardLinesIn)
@beam.typehints.with_output_types(Dict[str, Any])
class ParseEvents(beam.PTransform):
    """ShardLines ``(shard, [canonical_json])`` -> one event dict per element."""

    def expand(self, shard_lines):
        return shard_lines | "Parse" >> beam.FlatMap(
            lambda element: [codec.loads(line) for line in element[1]])


def _to_batches(element: Tuple[str, Iterable[Dict[str, Any]]], source: str,
                batch_size: int) -> Iterator[RowBatch]:
    event_type, rows = element
    batch, first = [], 0
    for row in rows:
        batch.append(row)
        if len(batch) >= batch_size:
            yield RowBatch(event_type, source, first, batch, None, None)
            first, batch = first + len(batch), []
    if batch:
        yield RowBatch(event_type, source, first, batch, None, None)


@beam.typehints.with_input_types(Dict[str, Any])
@beam.typehints.with_output_types(RowBatch)
class ToRowBatches(beam.PTransform):
    """Raw Currents rows (dicts with an ``event_type`` key) -> RowBatch for ValidateEvents.

    ``source`` names where the rows came from in the dead letter; rows are numbered in
    the order each event type's group is iterated.
    """

    def __init__(self, source: str = "pcollection", batch_size: int = 2000):
        super().__init__()
        self._source = non_empty_str("source", source)
        self._batch_size = positive_int("batch_size", batch_size)

    def expand(self, rows):
        return (rows
                | "ByEventType" >> beam.Map(lambda r: (r["event_type"], {
                    k: v for k, v in r.items() if k != "event_type"}))
                | "Group" >> beam.GroupByKey()
                | "Batch" >> beam.FlatMap(_to_batches, self._source, self._batch_size))
