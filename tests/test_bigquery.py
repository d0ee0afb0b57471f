"""--bigquery-dataset against a real local BigQuery emulator (and the GCS emulator for the
load files): tables from the generated schemas, rows equal events/, reruns add nothing,
a newer field adds a column, a rejected row reaches both dead letters."""
import json

import pytest

from pipelines.currents_to_partners import run
from schemas import warehouse
from tests.conftest import read_ndjson
from tests.fixtures_bigquery import PROJECT
from transforms.testing import BASE_TIME, make_record, write_export

# runs real emulators or whole exports: excluded from the quick `pytest -m "not slow"`
pytestmark = pytest.mark.slow

SEND, CLICK, CUSTOM = ("users.messages.email.Send", "users.messages.email.Click",
                       "users.behaviors.CustomEvent")
DAY = 86_400
NEW_TYPE = "users.messages.rcs.Send"  # a type Braze added after the catalogue


def export(root, seed: int = 0, extra: dict | None = None):
    sends = [make_record(SEND, seed=seed + i, time=BASE_TIME + (i % 2) * DAY)
             for i in range(12)]
    files = [{"event_type": SEND, "rows": sends},
             {"event_type": CLICK, "rows": [make_record(CLICK, seed=seed + i) for i in range(6)]},
             {"event_type": CUSTOM, "rows": [make_record(CUSTOM, seed=seed + i, complete=True)
                                             for i in range(4)]}]
    files.append({"event_type": NEW_TYPE, "extra_fields": {
        "id": "string", "time": "long", "user_id": "string", "external_user_id": "string",
        "identity_source": "string", "resolved_external_user_id": "string"},
        "rows": [{"id": f"rcs-{seed + i}", "time": BASE_TIME + i, "user_id": f"u{i}",
                  "external_user_id": None if i % 2 else f"x{i}",
                  "identity_source": "external_user_id" if i % 2 == 0 else None,
                  "resolved_external_user_id": None if i % 2 else f"x{i}"}
                 for i in range(3)]})
    if extra:
        rows = [dict(make_record(SEND, seed=seed + 500 + i), **{extra["name"]: v})
                for i, v in enumerate(extra["values"])]
        files.append({"event_type": SEND, "rows": rows, "schema_id": 2, "offset": 1,
                      "extra_fields": {extra["name"]: extra["avro"]}})
    return write_export(root, files)


@pytest.fixture(scope="module")
def temp_bucket(gcs_emulator):
    from google.api_core.exceptions import Conflict
    try:
        gcs_emulator.bucket("bq-load-temp")
    except Conflict:
        pass
    return "gs://bq-load-temp/tmp"


def run_to_bigquery(src, out, dataset, method, bq_emulator, temp_bucket):
    code = run(["--input", str(src), "--output", str(out), "--partners", "",
                "--bigquery-dataset", f"{PROJECT}:{dataset}", "--bigquery-method", method,
                "--bigquery-endpoint", bq_emulator.endpoint, "--temp_location", temp_bucket])
    assert code == 0
    return json.loads((out / "summary.json").read_text())


def _normal(value):
    if hasattr(value, "timestamp"):
        return int(value.timestamp())
    return value


@pytest.mark.parametrize("method", ["file_loads", "streaming_inserts"])
def test_tables_rows_and_rerun(method, tmp_path, bq_emulator, temp_bucket):
    dataset = f"currents_{method}"
    src = export(tmp_path / "in")
    summary = run_to_bigquery(src, tmp_path / "out", dataset, method, bq_emulator,
                              temp_bucket)
    events = read_ndjson(tmp_path / "out" / "events")
    assert summary["bigquery"] == {"tables": 4, "rows_written": len(events),
                                   "rows_rejected": 0}
    client = bq_emulator.client
    new_table = client.get_table(f"{PROJECT}.{dataset}.users_messages_rcs_Send")
    assert [(f.name, f.mode) for f in new_table.schema][:3] == [
        ("event_type", "REQUIRED"), ("event_timestamp", "NULLABLE"), ("id", "REQUIRED")]
    assert {"identity_source", "resolved_external_user_id", "time"} <= {
        f.name for f in new_table.schema}
    for etype in (SEND, CLICK, CUSTOM, NEW_TYPE):
        name = warehouse.table_name(etype)
        table = client.get_table(f"{PROJECT}.{dataset}.{name}")
        generated = (json.loads((warehouse.BIGQUERY_DIR / f"{name}.json").read_text())
                     if etype != NEW_TYPE else warehouse.unknown_type_schema())
        assert [(f.name, f.mode) for f in table.schema][:len(generated)] == [
            (c["name"], c["mode"]) for c in generated]
        assert table.time_partitioning.field == "event_timestamp"
        assert table.clustering_fields == ["external_user_id", "user_id"]
        got = {r["id"]: r for r in bq_emulator.query(
            f"SELECT *, TO_JSON_STRING(properties) AS properties_text "
            f"FROM `{PROJECT}.{dataset}.{name}`" if etype == CUSTOM else
            f"SELECT * FROM `{PROJECT}.{dataset}.{name}`")}
        mine = [e for e in events if e["event_type"] == etype]
        assert sorted(got) == sorted(e["id"] for e in mine)
        for e in mine:
            row = got[e["id"]]
            assert _normal(row["event_timestamp"]) == e["time"]
            for key, value in e.items():
                if key == "properties":
                    assert json.loads(row["properties_text"]) == json.loads(value)
                else:
                    assert _normal(row[key]) == value, (etype, key)
    # staging tables are gone; a rerun of the same input adds no row
    names = {t.table_id for t in client.list_tables(f"{PROJECT}.{dataset}")}
    assert names == {warehouse.table_name(t) for t in (SEND, CLICK, CUSTOM, NEW_TYPE)} | {
        "currents_dead_letter"}
    again = run_to_bigquery(src, tmp_path / "out2", dataset, method, bq_emulator,
                            temp_bucket)
    assert again["bigquery"] == {"tables": 4, "rows_written": 0, "rows_rejected": 0}
    count = bq_emulator.query(f"SELECT COUNT(*) AS n FROM `{PROJECT}.{dataset}."
                              f"{warehouse.table_name(SEND)}`")[0]["n"]
    assert count == sum(1 for e in events if e["event_type"] == SEND)


def _count(bq_emulator, dataset, etype) -> int:
    return bq_emulator.query(f"SELECT COUNT(*) AS n FROM `{PROJECT}.{dataset}."
                             f"{warehouse.table_name(etype)}`")[0]["n"]


@pytest.mark.parametrize("method", ["file_loads", "streaming_inserts"])
def test_newer_field_adds_a_column_and_a_misfit_is_rejected(method, tmp_path, bq_emulator,
                                                           temp_bucket):
    dataset = f"evolving_{method}"
    table = f"{PROJECT}.{dataset}.{warehouse.table_name(SEND)}"
    first = export(tmp_path / "in1", extra={"name": "bot_score", "avro": "double",
                                            "values": [0.25, 0.5, 0.75]})
    summary = run_to_bigquery(first, tmp_path / "out1", dataset, method, bq_emulator,
                              temp_bucket)
    assert summary["bigquery"]["rows_rejected"] == 0
    column = next(f for f in bq_emulator.client.get_table(table).schema
                  if f.name == "bot_score")
    assert (column.field_type, column.mode) in (("FLOAT", "NULLABLE"),
                                                ("FLOAT64", "NULLABLE"))
    scores = sorted(r["bot_score"] for r in bq_emulator.query(
        f"SELECT bot_score FROM `{table}` WHERE bot_score IS NOT NULL"))
    assert scores == [0.25, 0.5, 0.75]
    before = _count(bq_emulator, dataset, SEND)

    # a later export sends text in that column: BigQuery refuses those rows
    second = export(tmp_path / "in2", seed=1000, extra={"name": "bot_score",
                                                        "avro": "string",
                                                        "values": ["high", "low"]})
    args = ["--input", str(second), "--output", str(tmp_path / "out2"), "--partners", "",
            "--bigquery-dataset", f"{PROJECT}:{dataset}", "--bigquery-method", method,
            "--bigquery-endpoint", bq_emulator.endpoint, "--temp_location", temp_bucket]
    if method == "file_loads":
        # a load job is all or nothing: the run fails and no table changes
        assert run(args) == 1
        assert _count(bq_emulator, dataset, SEND) == before
        return
    assert run(args) == 0
    out = tmp_path / "out2"
    summary = json.loads((out / "summary.json").read_text())
    events = read_ndjson(out / "events")
    assert summary["bigquery"] == {"tables": 4, "rows_written": len(events) - 2,
                                   "rows_rejected": 2}
    assert _count(bq_emulator, dataset, SEND) == before + sum(
        1 for e in events if e["event_type"] == SEND) - 2
    dead = [d for d in read_ndjson(out / "dead_letter") if d["reason"] == "bigquery_rejected"]
    assert sorted(d["record"]["bot_score"] for d in dead) == ["high", "low"]
    for d in dead:  # BigQuery's own error (the emulator names the wrong column in it)
        assert d["event_type"] == SEND
        assert json.loads(d["error"])[0]["reason"] == "invalid"
    table_dead = bq_emulator.query(
        f"SELECT reason, event_type, error, TO_JSON_STRING(record) AS record "
        f"FROM `{PROJECT}.{dataset}.currents_dead_letter`")
    assert sorted(json.loads(d["record"])["id"] for d in table_dead) == sorted(
        d["record"]["id"] for d in dead)
    assert {d["reason"] for d in table_dead} == {"bigquery_rejected"}
