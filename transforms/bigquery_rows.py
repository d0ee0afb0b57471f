"""Would BigQuery take this row? A check of one row against a table's live columns.

Load jobs are all or nothing (one bad row fails the job, so the run) and the Storage
Write API path converts each row to a typed Beam Row before the write (a value of the
wrong type stops the pipeline there). So rows for those methods are checked first, here,
against the columns the table has after ``PrepareTables`` (the generated schema plus the
fields it added): a row that would not load goes to the dead letter with an error in
BigQuery's shape (``{reason, location, debugInfo, message}``) and load-job wording, the
rest load. Streaming inserts need no check: BigQuery answers for each row itself.

The rules are BigQuery's for newline-delimited JSON loads (docs/bigquery.md), not the
local emulator's, which is laxer (it takes a NULL in a REQUIRED column, ``true`` in a
FLOAT64 column).
"""
from __future__ import annotations

import json
import math
import re
from typing import Any, NamedTuple

import orjson

from transforms import codec

INT64_MIN, INT64_MAX = -2**63, 2**63 - 1
# TIMESTAMP's range, 0001-01-01 00:00:00 to 9999-12-31 23:59:59.999999 UTC, in epoch seconds
TIMESTAMP_MIN, TIMESTAMP_MAX = -62_135_596_800, 253_402_300_800
# largest row BigQuery takes: 100 MB in a JSON load job; 10 MB for the Storage Write API
# (its AppendRows request limit) and streaming inserts
MAX_ROW_BYTES = {"load": 100 * 2**20, "storage": 10 * 2**20}
LEGACY = {"INTEGER": "INT64", "FLOAT": "FLOAT64", "BOOLEAN": "BOOL"}
KIND = {"INT64": "integer", "FLOAT64": "double", "BOOL": "boolean", "TIMESTAMP": "timestamp",
        "STRING": "string", "JSON": "json"}
_INT = re.compile(r"[+-]?\d+")
_TIMESTAMP = re.compile(
    r"(\d{4})-(\d{1,2})-(\d{1,2})(?:[ T](\d{1,2}):(\d{2})(?::(\d{2})(?:\.\d{1,6})?)?)?"
    r"(?: ?(?:UTC|Z|[+-]\d{1,2}(?::?\d{2})?))?")


def error(column: str | None, message: str) -> dict:
    """One error as BigQuery reports it (``ErrorProto``)."""
    return {"reason": "invalid", "location": column or "", "debugInfo": "",
            "message": message}


def _proto(value: Any) -> str:
    """How BigQuery's load errors quote a JSON value: ``string_value: "high"``."""
    if isinstance(value, bool):
        return f"bool_value: {str(value).lower()}"
    if isinstance(value, str):
        return f"string_value: {json.dumps(value, ensure_ascii=False)}"
    if isinstance(value, (int, float)):
        return f"number_value: {value}"
    return f"{type(value).__name__}_value"


def _scalar_ok(kind: str, value: Any) -> bool:
    """``value`` (not None, not a list) is one BigQuery converts to ``kind``."""
    if isinstance(value, dict):
        return kind == "JSON"
    if kind in ("STRING", "JSON"):  # JSON loads turn numbers and booleans into text
        return True
    if kind == "INT64":
        if isinstance(value, bool):
            return False
        if isinstance(value, float):
            if not value.is_integer():
                return False
            value = int(value)
        if isinstance(value, str):
            if not _INT.fullmatch(value.strip()):
                return False
            value = int(value)
        return isinstance(value, int) and INT64_MIN <= value <= INT64_MAX
    if kind == "FLOAT64":
        if isinstance(value, bool):
            return False
        if isinstance(value, str):
            try:
                float(value)
            except ValueError:
                return False
            return True
        return isinstance(value, (int, float)) and (
            not isinstance(value, float) or math.isfinite(value))
    if kind == "BOOL":
        return isinstance(value, bool) or (
            isinstance(value, str) and value.strip().lower() in ("true", "false"))
    if kind == "TIMESTAMP":
        if isinstance(value, bool):
            return False
        if isinstance(value, (int, float)):
            return TIMESTAMP_MIN <= value < TIMESTAMP_MAX
        if isinstance(value, str):
            return _TIMESTAMP.fullmatch(value.strip()) is not None
        return hasattr(value, "timestamp")  # a Beam Timestamp (Storage Write API rows)
    return True  # RECORD and other types this pipeline never makes


class Columns(NamedTuple):
    """A table's columns as ``check_row`` reads them: ``(name, type, mode)`` each, types
    in standard SQL names, modes upper case; derived once per table, not per row."""
    names: frozenset
    fields: tuple


def columns_of(fields: list[dict]) -> Columns:
    """``Columns`` of a schema's fields ({name, type, mode})."""
    out = []
    for field in fields:
        kind = field["type"].upper()
        out.append((field["name"], LEGACY.get(kind, kind),
                    (field.get("mode") or "NULLABLE").upper()))
    return Columns(frozenset(name for name, _, _ in out), tuple(out))


def check_row(row: dict, fields: list[dict] | Columns, json_as_text: bool,
              limit: str = "load") -> list[dict]:
    """BigQuery's errors for ``row`` against ``fields`` ({name, type, mode}, or their
    ``columns_of``): [] if it would load. ``json_as_text``: JSON columns hold JSON text
    (else JSON values)."""
    columns = fields if isinstance(fields, Columns) else columns_of(fields)
    errors = []
    for name in row:
        if name not in columns.names and row[name] is not None:
            errors.append(error(name, f"No such field: {name}."))
    for name, kind, mode in columns.fields:
        value = row.get(name)
        if value is None:
            if mode == "REQUIRED":
                errors.append(error(name, f"Missing required field: {name}."))
            continue
        if mode == "REPEATED":
            if not isinstance(value, list):
                errors.append(error(name, f"Expected an array for repeated field: {name}; "
                                          f"Value: {_proto(value)}"))
                continue
            items = value
        elif isinstance(value, list) and kind != "JSON":
            errors.append(error(name, f"Array specified for non-repeated field: {name}."))
            continue
        else:
            items = [value]
        for item in items:
            if item is None:
                errors.append(error(name, "Array cannot have a null element; error in "
                                          f"writing field {name}"))
                break
            if kind == "JSON" and json_as_text and isinstance(item, str):
                try:
                    codec.loads(item)
                except ValueError:
                    errors.append(error(name, f"Invalid JSON for field: {name}; "
                                              f"Value: {item[:100]}"))
                    break
                continue
            if not _scalar_ok(kind, item):
                if isinstance(item, dict):
                    message = f"JSON object specified for non-record field: {name}"
                else:
                    message = (f"Could not convert value '{_proto(item)}' to "
                               f"{KIND.get(kind, kind.lower())}. Field: {name}; "
                               f"Value: {str(item)[:100]}")
                errors.append(error(name, message))
                break
    if not errors:
        size = len(orjson.dumps(row, default=str))
        if size > MAX_ROW_BYTES[limit]:
            errors.append(error(None, f"Row size {size} bytes is larger than the maximum "
                                      f"of {MAX_ROW_BYTES[limit]} bytes"))
    return errors
