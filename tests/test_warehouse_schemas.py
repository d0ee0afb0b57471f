"""schemas/bigquery/ follows the catalogue: names, types, modes, PII, layout."""
import json

import pyarrow as pa

from schemas import warehouse

BQ = {"string": "STRING", "int": "INT64", "long": "INT64", "float": "FLOAT64",
      "boolean": "BOOL", "array<string>": "STRING"}


def test_every_catalogue_type_has_its_table_file(catalogue):
    index = json.loads((warehouse.BIGQUERY_DIR / "tables.json").read_text())
    assert set(index["event_types"]) == set(catalogue.event_types)
    assert index["event_types"]["users.messages.email.Send"]["table"] == \
        "users_messages_email_Send"
    for etype, spec in catalogue.event_types.items():
        entry = index["event_types"][etype]
        assert entry["table"] == etype.replace(".", "_")
        columns = json.loads((warehouse.BIGQUERY_DIR / entry["schema"]).read_text())
        by_name = {c["name"]: c for c in columns}
        assert len(by_name) == len(columns)
        assert columns[0]["name"] == "event_type" and columns[1] == {
            "name": "event_timestamp", "type": "TIMESTAMP", "mode": "REQUIRED",
            "description": columns[1]["description"]}
        for name, field in spec.fields.items():
            col = by_name[name]
            expected = "JSON" if name == "properties" else BQ[field.type]
            assert col["type"] == expected, (etype, name)
            mode = ("REPEATED" if field.type == "array<string>" else
                    "REQUIRED" if field.required else "NULLABLE")
            assert col["mode"] == mode, (etype, name)
            assert col["description"].startswith("[PII]") == field.pii, (etype, name)
        for name in ("identity_source", "resolved_external_user_id"):
            assert by_name[name] == {**by_name[name], "type": "STRING", "mode": "NULLABLE"}
        schema = warehouse.arrow_schema(columns)
        assert schema.field("event_timestamp").type == pa.timestamp("us", tz="UTC")
        assert not schema.field("id").nullable


def test_a_file_left_over_from_a_removed_type_is_stale(tmp_path, catalogue):
    doc = {"event_types": {"users.messages.email.Send": {
        "fields": {k: v.model_dump() for k, v in
                   catalogue.get("users.messages.email.Send").fields.items()}}}}
    files = warehouse.files(doc, tmp_path)
    for path, text in files.items():
        path.write_text(text)
    assert warehouse.stale(tmp_path, files) == []
    (tmp_path / "users_messages_gone_Send.json").write_text("[]")
    assert warehouse.stale(tmp_path, files) == ["users_messages_gone_Send.json"]
