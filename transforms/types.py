"""Element types that flow between the transforms (batches: Beam pays per element).

Each batch is a small ``NamedTuple`` class with ``BatchCoder`` registered for it in Beam's
coder registry (``coders.registry.register_coder``, public API). Our transforms declare
them as their output types, so:

- the pipeline is type-checked when it is built (``ValidateEvents`` after
  ``DeduplicateEvents`` fails at construction, not at run time);
- the batch travels with ``BatchCoder``: one pickle per batch, and a size estimate from
  one row. Beam's structured coder for a plain ``Tuple[..., List[Dict[str, Any]]]``
  walks every value of every sampled element to size the PCollection: with thousands of
  rows per element that cost more than validating them.

Inputs accept the batch class or the same plain ``Tuple[...]`` (``...In`` aliases), so
``beam.Create([(shard, lines)])`` in a user's test still composes.

Why not Beam's batched DoFns (``process_batch``)? They would show users one event per
element, but everything between fused steps and across the dedup shuffle would then be
encoded per event (Beam explodes batches at stage boundaries), the per-element cost the
batches exist to avoid; and their batch types are numpy/pandas/pyarrow/lists of
elements, not our (source, first row, rows, problems) context. ``ParseEvents`` and
``ToRowBatches`` convert to and from one dict per event where a user wants that.
"""
from __future__ import annotations

import pickle
from typing import (Any, Dict, List, NamedTuple, Optional, Tuple, TypedDict,
                    Union)

from apache_beam import coders

# Output tags
FILE_REPORTS = "files"
DEAD_LETTER = "dead_letter"
DUPLICATES = "duplicates"
STATS = "stats"
SKIPPED = "skipped"


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


Record = Dict[str, Any]


class RowBatch(NamedTuple):
    """Rows of one file. ``rows``: a list of dicts, or a polars DataFrame of the same rows
    (ReadCurrentsExport's ``as_frames``; such a batch has no problems). ``problems``:
    None, or {index in rows: (reason, message)} for rows found bad while reading (bytes
    that are not UTF-8; a path and writer schema naming different event types).
    ``allowed_nulls``: None (not from an Avro file: the catalogue decides), or the fields
    whose nulls the file's writer schema allows (``field[]``: an array field's items)."""
    event_type: str
    source: str
    first_row: int
    rows: Any
    problems: Optional[Dict[int, Tuple[str, str]]]
    allowed_nulls: Optional[Tuple[str, ...]] = None


class ValidBatch(NamedTuple):
    """Valid rows of one file: [(row index, event_type, event id, canonical JSON,
    user_id, external_user_id, time)]. The last three (ValidateEvents reads them from its
    frames at no cost per event) spare the identity step parsing every event again; an
    item may stop after the JSON (then they are read from it)."""
    source: str
    items: List[Tuple[Any, ...]]


class ShardLines(NamedTuple):
    """One output shard's lines (canonical JSON of one event, or one payload, per item)."""
    shard: int
    lines: List[bytes]


class IdentifiedBatch(NamedTuple):
    """[(event dict, {partner: identity dict, or the reason it cannot be sent})]."""
    shard: int
    items: List[Tuple[Record, Dict[str, Any]]]


for _batch in (RowBatch, ValidBatch, ShardLines, IdentifiedBatch):  # noqa: B007
    coders.registry.register_coder(_batch, BatchCoder)

# What our transforms accept: the batch, or the same fields as a plain tuple
RowBatchIn = Union[RowBatch, Tuple[str, str, int, Any, Optional[Dict[int, Tuple[str, str]]],
                                    Optional[Tuple[str, ...]]]]
ValidBatchIn = Union[ValidBatch, Tuple[str, List[Tuple[Any, ...]]]]
ShardLinesIn = Union[ShardLines, Tuple[int, List[bytes]]]
IdentifiedBatchIn = Union[IdentifiedBatch, Tuple[int, List[Tuple[Record, Dict[str, Any]]]]]
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
