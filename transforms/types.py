"""Element types that flow between the transforms (batches: Beam pays per element)."""
from __future__ import annotations

import pickle
from typing import Any, Dict, List, Optional, Tuple, TypedDict

from apache_beam import coders
from apache_beam.typehints import typehints
from apache_beam.typehints.native_type_compatibility import convert_to_beam_type

# Output tags
FILE_REPORTS = "files"
DEAD_LETTER = "dead_letter"
DUPLICATES = "duplicates"
STATS = "stats"
SKIPPED = "skipped"


class _BatchHint(typehints.TupleHint.TupleConstraint):
    """A tuple type hint, checked like any ``Tuple[...]`` when the pipeline is built, whose
    elements travel with ``BatchCoder``.

    Beam derives a structured coder from a plain ``Tuple[..., List[Dict[str, Any]]]`` and,
    to size the PCollection, walks every value of every sampled element: with thousands of
    rows per element that cost more than validating them. ``BatchCoder`` pickles the batch
    in one call and estimates its size from one row.
    """

    def _consistent_with_check_(self, sub):
        return (isinstance(sub, typehints.TupleHint.TupleConstraint)
                and len(sub.tuple_types) == len(self.tuple_types)
                and all(typehints.is_consistent_with(s, t)
                        for s, t in zip(sub.tuple_types, self.tuple_types)))


def batch_hint(hint: Any) -> Any:
    """``Tuple[...]`` -> the same type hint, coded by ``BatchCoder``."""
    return _BatchHint(convert_to_beam_type(hint).tuple_types)


class BatchCoder(coders.Coder):
    """Pickles a whole batch at once (our own data between our own steps)."""

    def encode(self, value: Any) -> bytes:
        return pickle.dumps(value, protocol=5)

    def decode(self, encoded: bytes) -> Any:
        return pickle.loads(encoded)

    def is_deterministic(self) -> bool:
        return False

    def estimate_size(self, value: Any) -> int:
        return _estimate(value)


def _estimate(value: Any) -> int:
    """Rough encoded size for Beam's metrics: a list counts as its length times its first item."""
    if isinstance(value, (str, bytes)):
        return len(value) + 1
    if isinstance(value, list):
        return 1 + len(value) * _estimate(value[0]) if value else 1
    if isinstance(value, tuple):
        return sum(_estimate(v) for v in value)
    if isinstance(value, dict):
        return sum(_estimate(k) + _estimate(v) for k, v in value.items()) + 1
    return 8


coders.registry.register_coder(_BatchHint, BatchCoder)

Record = Dict[str, Any]
# (event_type, source path, index of the first row in the file, rows, problems,
#  allowed_nulls)
# problems is None, or {index in rows: (reason, message)} for rows found bad while reading
# (bytes that are not UTF-8; a path and writer schema naming different event types).
# rows: a list of dicts, or a polars DataFrame of the same rows (ReadCurrentsExport's
# as_frames; such a batch has no problems).
# allowed_nulls: None (not from an Avro file: the catalogue decides), or the fields whose
# nulls the file's writer schema allows (``field[]``: the items of an array field).
RowBatch = batch_hint(Tuple[str, str, int, Any, Optional[Dict[int, Tuple[str, str]]],
                            Optional[Tuple[str, ...]]])
# (source path, [(row index, event_type, event id, canonical JSON of the event)])
ValidBatch = batch_hint(Tuple[str, List[Tuple[int, str, str, bytes]]])
# (output shard, [canonical JSON of one event per item]) - one element per shard
ShardLines = batch_hint(Tuple[int, List[bytes]])
# (output shard, [(event dict, {partner: identity dict, or the reason it cannot be sent})])
IdentifiedBatch = batch_hint(Tuple[int, List[Tuple[Record, Dict[str, Any]]]])
# Flat counters, e.g. {"rows_read": 10, "by_event_type/users.messages.email.Click": 3}
Stats = Dict[str, int]


class FileReport(TypedDict):
    source: str
    rows: int
    event_type: Optional[str]
    schema_id: Optional[str]
    reason: Optional[str]
    error: Optional[str]


class DeadLetter(TypedDict):
    reason: str
    event_type: str
    source: str
    row: int
    error: str
    record: Any
