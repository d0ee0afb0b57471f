"""Warehouse columns of clean events: the catalogue's, plus the fields Braze added since.

Both warehouse sinks (``transforms.parquet``, ``transforms.bigquery``) take their columns
from ``schemas/bigquery/`` (generated from the catalogue). Validation keeps fields the
catalogue does not know; ``ObserveColumns`` finds them, with a type inferred from their
values, so each sink can add them as NULLABLE columns instead of failing or dropping them.
"""
from __future__ import annotations

import datetime
import functools
from typing import Any, Iterable, Iterator

import apache_beam as beam

from schemas import warehouse
from transforms import codec
from transforms.types import ShardLines

UNKNOWN_DATE = "__HIVE_DEFAULT_PARTITION__"  # an event with no `time` (unknown type)


@functools.lru_cache(maxsize=1)
def tables() -> dict[str, Any]:
    """``schemas/bigquery/tables.json`` with every table's columns (read once)."""
    return warehouse.load_tables()


def known_columns(event_type: str) -> list[dict[str, str]]:
    """The generated columns of a type; a type not in the catalogue gets the common ones."""
    spec = tables()["event_types"].get(event_type)
    return list(spec["columns"]) if spec else warehouse.unknown_type_schema()


def table_of(event_type: str) -> str:
    spec = tables()["event_types"].get(event_type)
    return spec["table"] if spec else warehouse.table_name(event_type)


def columns_for(event_type: str, extras: dict[str, list[dict]]) -> list[dict[str, str]]:
    """Known columns of ``event_type`` then, sorted, the new fields seen in this run."""
    return known_columns(event_type) + extras.get(event_type, [])


def _kind(value: Any) -> tuple[str, str] | None:
    """(BigQuery type, mode) of one JSON value; None for null (says nothing)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "BOOL", "NULLABLE"
    if isinstance(value, int):
        return "INT64", "NULLABLE"
    if isinstance(value, float):
        return "FLOAT64", "NULLABLE"
    if isinstance(value, str):
        return "STRING", "NULLABLE"
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "STRING", "REPEATED"
    return "JSON", "NULLABLE"


def _merge_kinds(a: tuple[str, str] | None, b: tuple[str, str] | None):
    if a is None or a == b:
        return b if a is None else a
    if b is None:
        return a
    if {a, b} == {("INT64", "NULLABLE"), ("FLOAT64", "NULLABLE")}:
        return "FLOAT64", "NULLABLE"
    return "JSON", "NULLABLE"  # values of several kinds: kept as they are, as JSON


def event_time(event: dict) -> datetime.datetime | None:
    t = event.get("time")
    if isinstance(t, int) and not isinstance(t, bool):
        return datetime.datetime.fromtimestamp(t, tz=datetime.timezone.utc)
    return None


def event_date(event: dict) -> str:
    """The partition day of an event (UTC ``YYYY-MM-DD`` of ``time``)."""
    t = event_time(event)
    return t.strftime("%Y-%m-%d") if t else UNKNOWN_DATE


class _NewFields(beam.CombineFn):
    """Events -> {event_type: {field: (type, mode)}} for fields no known column has."""

    def create_accumulator(self) -> dict:
        return {}

    def add_input(self, acc: dict, shard_lines) -> dict:
        _, lines = shard_lines
        known: dict[str, set[str]] = {}
        for line in lines:
            event = codec.loads(line)
            etype = event.get("event_type", "")
            names = known.get(etype)
            if names is None:
                names = known[etype] = {c["name"] for c in known_columns(etype)}
                acc.setdefault(etype, {})
            for name, value in event.items():
                if name not in names:
                    fields = acc.setdefault(etype, {})
                    fields[name] = _merge_kinds(fields.get(name), _kind(value))
        return acc

    def merge_accumulators(self, accs: Iterable[dict]) -> dict:
        out: dict = {}
        for acc in accs:
            for etype, fields in acc.items():
                mine = out.setdefault(etype, {})
                for name, kind in fields.items():
                    mine[name] = _merge_kinds(mine.get(name), kind)
        return out

    def extract_output(self, acc: dict) -> dict[str, list[dict]]:
        return {etype: [{"name": name, "type": (kind or ("STRING", "NULLABLE"))[0],
                         "mode": (kind or ("STRING", "NULLABLE"))[1],
                         "description": "Not in the catalogue: added by the pipeline"}
                        for name, kind in sorted(fields.items())]
                for etype, fields in sorted(acc.items())}


@beam.typehints.with_input_types(ShardLines)
class ObserveColumns(beam.PTransform):
    """ShardLines of events -> one dict ``{event_type: [new column, ...]}``, every type
    seen, with the fields the generated schemas lack (BigQuery column dicts, NULLABLE or
    REPEATED).
    Use it as a singleton side input."""

    def expand(self, events):
        return events | "NewFields" >> beam.CombineGlobally(_NewFields())


def warehouse_rows(lines: Iterable[bytes]) -> Iterator[dict]:
    """Canonical JSON events -> rows: the event plus ``event_timestamp`` (from ``time``)."""
    for line in lines:
        event = codec.loads(line)
        event[warehouse.TIMESTAMP_COLUMN] = event_time(event)
        yield event
