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


def run_with_counters(src, out, dataset, method, bq_emulator, temp_bucket):
    """The same run through ``build`` on the local runner: (summary, its Beam counters)."""
    import uuid

    import apache_beam as beam
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines.currents_to_partners import build
    from pipelines.local import local_runner
    from pipelines.options import parse
    from transforms.summary import METRICS_NAMESPACE
    cfg, beam_args = parse(["--input", str(src), "--output", str(out), "--partners", "",
                            "--bigquery-dataset", f"{PROJECT}:{dataset}",
                            "--bigquery-method", method, "--bigquery-endpoint",
                            bq_emulator.endpoint, "--temp_location", temp_bucket])
    options = PipelineOptions(beam_args)
    p = beam.Pipeline(runner=local_runner(options), options=options)
    build(p, cfg, str(out / "_temporary" / uuid.uuid4().hex))
    result = p.run()
    result.wait_until_finish()
    counters = {c.key.metric.name: c.committed for c in result.metrics().query(
        MetricsFilter().with_namespace(METRICS_NAMESPACE))["counters"]}
    return json.loads((out / "summary.json").read_text()), counters


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
                                                           temp_bucket, gcs_emulator):
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

    # a later export sends text in that column: BigQuery refuses those rows; the rest
    # load (file loads: checked against the live columns before the load job)
    second = export(tmp_path / "in2", seed=1000, extra={"name": "bot_score",
                                                        "avro": "string",
                                                        "values": ["high", "low"]})
    out = tmp_path / "out2"
    summary, counters = run_with_counters(second, out, dataset, method, bq_emulator,
                                          temp_bucket)
    assert counters["bigquery_rows_rejected"] == counters["bigquery/rows_rejected"] == 2
    events = read_ndjson(out / "events")
    assert summary["bigquery"] == {"tables": 4, "rows_written": len(events) - 2,
                                   "rows_rejected": 2}
    # still valid events: in events/, not invalid; every row in exactly one place
    assert {"high", "low"} <= {e.get("bot_score") for e in events}
    assert summary["conservation_ok"] and summary["rows_read"] == summary["valid"] + summary[
        "invalid"] + summary["duplicates_dropped"] and summary["valid"] == len(events)
    sends = sum(1 for e in events if e["event_type"] == SEND)
    assert _count(bq_emulator, dataset, SEND) == before + sends - 2
    dead = [d for d in read_ndjson(out / "dead_letter") if d["reason"] == "bigquery_rejected"]
    assert sorted(d["record"]["bot_score"] for d in dead) == ["high", "low"]
    for d in dead:  # BigQuery's error shape (the emulator names the wrong column in it)
        assert d["event_type"] == SEND
        assert d["source"].startswith(f"{PROJECT}:{dataset}.{warehouse.table_name(SEND)}__run_")
        first = json.loads(d["error"])[0]
        assert first["reason"] == "invalid"
        if method == "file_loads":
            assert first["location"] == "bot_score" and "to double" in first["message"]
    table_dead = bq_emulator.query(
        f"SELECT reason, event_type, error, TO_JSON_STRING(record) AS record "
        f"FROM `{PROJECT}.{dataset}.currents_dead_letter`")
    assert sorted(json.loads(d["record"])["id"] for d in table_dead) == sorted(
        d["record"]["id"] for d in dead)
    assert {d["reason"] for d in table_dead} == {"bigquery_rejected"}
    if method == "file_loads":
        # the check is right: the same row in a load job is refused by the emulator
        row = dict(dead[0]["record"])
        blob = f"direct/{dataset}.json"
        temp_bucket_name = temp_bucket.removeprefix("gs://").split("/", 1)[0]
        gcs_emulator.client.bucket(temp_bucket_name).blob(blob).upload_from_string(
            json.dumps(row) + "\n")
        from google.cloud import bigquery
        job = bq_emulator.client.load_table_from_uri(
            f"gs://{temp_bucket_name}/{blob}", table, job_config=bigquery.LoadJobConfig(
                source_format="NEWLINE_DELIMITED_JSON"))
        with pytest.raises(Exception, match=f"numerical: \"{row['bot_score']}\""):
            job.result()
        assert _count(bq_emulator, dataset, SEND) == before + sends - 2
    # a rerun adds no rows (and rejects the same two again)
    again = run_to_bigquery(second, tmp_path / "out3", dataset, method, bq_emulator,
                            temp_bucket)
    assert again["bigquery"] == {"tables": 4, "rows_written": 0, "rows_rejected": 2}
    assert _count(bq_emulator, dataset, SEND) == before + sends - 2


FIELDS = [{"name": "event_type", "type": "STRING", "mode": "REQUIRED"},
          {"name": "event_timestamp", "type": "TIMESTAMP", "mode": "REQUIRED"},
          {"name": "n", "type": "INTEGER", "mode": "NULLABLE"},
          {"name": "score", "type": "FLOAT", "mode": "NULLABLE"},
          {"name": "ok", "type": "BOOLEAN", "mode": "NULLABLE"},
          {"name": "tags", "type": "STRING", "mode": "REPEATED"},
          {"name": "properties", "type": "JSON", "mode": "NULLABLE"}]
GOOD = {"event_type": SEND, "event_timestamp": "2024-05-01 10:00:00 UTC", "n": 3,
        "score": 0.5, "ok": True, "tags": ["a"], "properties": '{"k": 1}'}


@pytest.mark.parametrize("change, column, words", [
    ({}, None, None),
    ({"n": "12", "score": "1.5", "ok": "false", "tags": None}, None, None),  # BigQuery
    # converts these in a JSON load
    ({"score": "high"}, "score", "Could not convert value 'string_value: \"high\"' to double"),
    ({"score": True}, "score", "to double"),
    ({"n": 2**63}, "n", "to integer"),
    ({"n": 1.5}, "n", "to integer"),
    ({"ok": "yes"}, "ok", "to boolean"),
    ({"event_timestamp": "yesterday"}, "event_timestamp", "to timestamp"),
    ({"event_timestamp": None}, "event_timestamp", "Missing required field"),
    ({"tags": "a"}, "tags", "repeated field"),
    ({"tags": ["a", None]}, "tags", "null element"),
    ({"n": [1]}, "n", "Array specified for non-repeated field"),
    ({"n": {"a": 1}}, "n", "JSON object specified for non-record field"),
    ({"properties": "{not json"}, "properties", "Invalid JSON"),
    ({"other": 1}, "other", "No such field"),
    ({"event_type": "x" * (100 * 2**20)}, "", "Row size"),
])
def test_row_check_follows_bigquery_load_rules(change, column, words):
    from transforms.bigquery_rows import check_row
    errors = check_row({**GOOD, **change}, FIELDS, json_as_text=True)
    if words is None:
        assert errors == []
        return
    assert len(errors) == 1 and errors[0]["reason"] == "invalid"
    assert errors[0]["location"] == column and words in errors[0]["message"]


def test_storage_write_rows_encode_as_beam_rows_of_the_generated_schemas():
    """Beam's Python side of STORAGE_WRITE_API, which runs here (the Java write needs the
    expansion service): a complete row of every catalogue type, checked, through
    ToBeamTypes, then Beam's own dict -> Row conversion with the type's static schema and
    the Row coder of that schema's type hints (JSON as text, as WriteToWarehouse asks)."""
    import apache_beam as beam
    from apache_beam.io.gcp import bigquery_tools
    from apache_beam.typehints.row_type import RowTypeConstraint

    from transforms.bigquery import _text_row, _ToBeamTypes
    from transforms.bigquery_rows import check_row
    from transforms.columns import tables
    types = tables()["event_types"]
    assert len(types) == 68
    for etype, spec in sorted(types.items()):
        schema = {"fields": [{k: c[k] for k in ("name", "type", "mode")}
                             for c in spec["columns"]]}
        event = {**make_record(etype, seed=7, complete=True), "event_type": etype}
        json_columns = [c["name"] for c in spec["columns"] if c["type"] == "JSON"]
        row = _text_row(event, {"json": json_columns, "json_text": json_columns})
        assert check_row(row, schema["fields"], json_as_text=True, limit="storage") == []
        [typed] = _ToBeamTypes({}).process(row)
        beam_row = bigquery_tools.beam_row_from_dict(dict(typed), schema)
        hints = RowTypeConstraint.from_fields(
            bigquery_tools.get_beam_typehints_from_tableschema(schema, {"JSON": str}))
        coder = beam.coders.registry.get_coder(hints)
        back = coder.decode(coder.encode(beam_row))
        assert back.event_timestamp.micros == event["time"] * 1_000_000, etype
        assert back.id == event["id"], etype
