"""Element types that flow between the transforms (batches: Beam pays per element)."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple, TypedDict

# Output tags
FILE_REPORTS = "files"
DEAD_LETTER = "dead_letter"
DUPLICATES = "duplicates"
STATS = "stats"
SKIPPED = "skipped"

Record = Dict[str, Any]
# (event_type, source path, index of the first row in the file, rows, problems)
# problems is None, or {index in rows: (reason, message)} for rows found bad while reading
# (bytes that are not UTF-8; a path and writer schema naming different event types).
RowBatch = Tuple[str, str, int, List[Record], Optional[Dict[int, Tuple[str, str]]]]
# (source path, [(row index, event_type, event id, canonical JSON of the event)])
ValidBatch = Tuple[str, List[Tuple[int, str, str, bytes]]]
# (output shard, [canonical JSON of one event per item]) - one element per shard
ShardLines = Tuple[int, List[bytes]]
# (output shard, [(event dict, {partner: identity dict, or the reason it cannot be sent})])
IdentifiedBatch = Tuple[int, List[Tuple[Record, Dict[str, Any]]]]
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
