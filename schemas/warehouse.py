"""Warehouse schemas derived from the catalogue: BigQuery tables and their Arrow twin.

One BigQuery table per event type, named by ``table_name`` (the type with ``.`` -> ``_``:
``users.messages.email.Send`` -> ``users_messages_email_Send``). ``files(catalogue)``
gives the files written under ``schemas/bigquery/`` by ``schemas/build_from_seeds.py``:

- ``<table>.json``: the table's columns in ``bq mk --schema`` form;
- ``tables.json``: for each event type its table, schema file, partitioning and
  clustering (what the pipeline reads, and what a ``bq mk`` user passes);
- ``currents_dead_letter.json``: the dead-letter table's columns (same shape as
  ``dead_letter/``).

Columns: every catalogue field with its type (``TYPES``), ``time`` as Braze wrote it
(epoch seconds), ``event_type``, ``event_timestamp`` (``TIMESTAMP`` of ``time``, the
partitioning column), ``properties`` as ``JSON``, and the nullable identity columns a
later step adds (``IDENTITY_COLUMNS``). Partitioned by the day of ``event_timestamp``,
clustered by the user ids. ``arrow_schema`` maps the same columns to Arrow for Parquet,
so both sinks share one type mapping.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BIGQUERY_DIR = HERE / "bigquery"
TABLES = "tables.json"
DEAD_LETTER_TABLE = "currents_dead_letter"

# catalogue type -> (BigQuery type, mode for an optional field)
TYPES: dict[str, tuple[str, str]] = {
    "string": ("STRING", "NULLABLE"),
    "int": ("INT64", "NULLABLE"),
    "long": ("INT64", "NULLABLE"),
    "float": ("FLOAT64", "NULLABLE"),
    "boolean": ("BOOL", "NULLABLE"),
    "array<string>": ("STRING", "REPEATED"),
}
TIMESTAMP_COLUMN = "event_timestamp"
PARTITIONING = {"type": "DAY", "field": TIMESTAMP_COLUMN}
CLUSTERING = ["external_user_id", "user_id"]
# Added to events by identity resolution where it ran; absent otherwise.
IDENTITY_COLUMNS = {
    "identity_source": "How the external user id was resolved (absent when not resolved)",
    "resolved_external_user_id": "The external user id identity resolution chose",
}


def table_name(event_type: str) -> str:
    """The BigQuery table of an event type: ``users.messages.email.Send`` ->
    ``users_messages_email_Send`` (BigQuery table names take letters, digits and ``_``)."""
    return event_type.replace(".", "_")


def _column(name: str, kind: str, mode: str, description: str) -> dict[str, str]:
    return {"name": name, "type": kind, "mode": mode, "description": description}


def table_schema(fields: dict[str, dict[str, Any]]) -> list[dict[str, str]]:
    """BigQuery columns of one event type, from its catalogue ``fields``.

    Catalogue-required fields are ``REQUIRED`` (validation already refused rows without
    them); PII fields say so in their description.
    """
    columns = [
        _column("event_type", "STRING", "REQUIRED", "Braze Currents event type"),
        _column(TIMESTAMP_COLUMN, "TIMESTAMP", "REQUIRED",
                "`time` as a TIMESTAMP (UTC): the partitioning column"),
    ]
    for name, field in sorted(fields.items()):
        kind, mode = TYPES[field["type"]]
        if name == "properties" and field["type"] == "string":
            kind = "JSON"  # validation guarantees a JSON object
        if field["required"] and mode == "NULLABLE":
            mode = "REQUIRED"
        description = ("[PII] " if field["pii"] else "") + field["description"]
        columns.append(_column(name, kind, mode, description[:1024]))
    for name, description in IDENTITY_COLUMNS.items():
        if name not in fields:
            columns.append(_column(name, "STRING", "NULLABLE", description))
    return columns


DEAD_LETTER_SCHEMA = [
    _column("reason", "STRING", "REQUIRED", "Why the row was rejected"),
    _column("event_type", "STRING", "NULLABLE", "Event type of the row"),
    _column("source", "STRING", "NULLABLE", "File (or table) the row came from"),
    _column("row", "INT64", "NULLABLE", "Row number within source"),
    _column("error", "STRING", "NULLABLE", "Every problem found, as text"),
    _column("record", "JSON", "NULLABLE", "The row itself, ready to fix and replay"),
]


def tables(catalogue: dict[str, Any]) -> dict[str, Any]:
    """The ``tables.json`` document: every event type's table and layout."""
    return {
        "generated_by": "python -m schemas.build_from_seeds",
        "time_partitioning": PARTITIONING,
        "clustering": CLUSTERING,
        "dead_letter": {"table": DEAD_LETTER_TABLE, "schema": f"{DEAD_LETTER_TABLE}.json"},
        "event_types": {
            etype: {"table": table_name(etype), "schema": f"{table_name(etype)}.json"}
            for etype in sorted(catalogue["event_types"])},
    }


def _dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, ensure_ascii=False) + "\n"


def files(catalogue: dict[str, Any], folder: Path = BIGQUERY_DIR) -> dict[Path, str]:
    """Every file of ``schemas/bigquery/`` with its text, from the catalogue document."""
    out = {folder / TABLES: _dump(tables(catalogue)),
           folder / f"{DEAD_LETTER_TABLE}.json": _dump(DEAD_LETTER_SCHEMA)}
    for etype, spec in catalogue["event_types"].items():
        out[folder / f"{table_name(etype)}.json"] = _dump(table_schema(spec["fields"]))
    return out


def stale(folder: Path, expected: dict[Path, str]) -> list[str]:
    """Files under ``folder`` that the catalogue no longer gives (a removed type)."""
    return sorted(p.name for p in folder.glob("*.json") if p not in expected) if \
        folder.is_dir() else []


# --- reading the generated files (pipeline side) --------------------------------------

def load_tables() -> dict[str, Any]:
    """``tables.json`` with each schema file's columns under ``"columns"`` (packaged data,
    so it works from a wheel or on a Dataflow worker)."""
    from importlib import resources
    folder = resources.files("schemas").joinpath("bigquery")
    index = json.loads(folder.joinpath(TABLES).read_text(encoding="utf-8"))
    for spec in (index["dead_letter"], *index["event_types"].values()):
        spec["columns"] = json.loads(folder.joinpath(spec["schema"]).read_text(
            encoding="utf-8"))
    return index


def unknown_type_schema() -> list[dict[str, str]]:
    """Columns of an event type not in the catalogue (such a row needs only an ``id``):
    its other fields become NULLABLE columns as they are seen."""
    columns = table_schema({"id": {"type": "string", "required": True, "pii": False,
                                   "description": "Globally unique ID for this event"}})
    columns[1] = {**columns[1], "mode": "NULLABLE"}  # no `time` is promised
    return columns


def arrow_type(column: dict[str, str]) -> Any:
    """The Arrow type of one BigQuery column (the one mapping both sinks use)."""
    import pyarrow as pa
    base = {"STRING": pa.string(), "INT64": pa.int64(), "FLOAT64": pa.float64(),
            "BOOL": pa.bool_(), "TIMESTAMP": pa.timestamp("us", tz="UTC"),
            "JSON": pa.json_(pa.string())}[column["type"]]
    return pa.list_(base) if column["mode"] == "REPEATED" else base


def arrow_schema(columns: list[dict[str, str]]) -> Any:
    """An Arrow schema of BigQuery columns: same names, types and nullability."""
    import pyarrow as pa
    return pa.schema([pa.field(c["name"], arrow_type(c), nullable=c["mode"] != "REQUIRED",
                               metadata={"description": c["description"]})
                      for c in columns])
