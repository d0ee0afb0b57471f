"""Nothing lost, nothing crashes: every kind of bad input on one real export and run.

Each case writes its own file(s) into one Currents export; the pipeline runs once; each
test then finds its rows (by source file) in exactly one output, with its reason.
"""
import io
import json
from collections import Counter

import fastavro
import pytest

from pipelines.currents_to_partners import run
from tests.conftest import read_ndjson
from transforms.testing import avro_bytes, avro_schema, export_path, make_record, write_export

CLICK, CUSTOM = "users.messages.email.Click", "users.behaviors.CustomEvent"
PURCHASE, WA_READ = "users.behaviors.Purchase", "users.messages.whatsapp.Read"
MARKER = b"currents-sample!"


def _file(root, etype, offset, rows, **kw):
    write_export(root, [{"event_type": etype, "rows": rows, "offset": offset, **kw}])
    return str(export_path(root, etype, kw.get("hour", "2026-11-24-08"),
                           kw.get("schema_id", 1), offset=offset))


def _raw(root, etype, offset, data):
    path = export_path(root, etype, offset=offset)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


def _rows(etype, n, seed, **override):
    return [make_record(etype, seed=f"{seed}:{i}", **override) for i in range(n)]


def _complete_blocks(data: bytes) -> int:
    n = 0
    try:
        for block in fastavro.block_reader(io.BytesIO(data)):
            n += block.num_records
    except Exception:
        pass
    return n


# name -> (builder(root) -> source path, expectation)
# expectation: ("dead", reason) every row of the file is dead-lettered with that reason;
# ("file", reason) a file-level entry, and the rows of complete blocks are kept;
# ("events",) every row is a valid event; ("ignored",) never read.
CASES = {}


def case(name, expect):
    def register(builder):
        CASES[name] = (builder, expect)
        return builder
    return register


def _null(root, etype, offset, n=300):
    return avro_bytes(avro_schema(etype), _rows(etype, n, offset), codec="null")


@case("truncated_file", ("file", "truncated_file"))
def _(root):
    data = _null(root, CLICK, 1)
    return _raw(root, CLICK, 1, data[: len(data) // 2])


@case("not_avro", ("file", "not_avro"))
def _(root):
    return _raw(root, CLICK, 2, b"PK\x03\x04 this is a zip, not avro")


@case("zero_byte_file", ("file", "empty_file"))
def _(root):
    return _raw(root, CLICK, 3, b"")


@case("header_only_file", ("file", "no_rows"))
def _(root):
    return _raw(root, CLICK, 4, avro_bytes(avro_schema(CLICK), []))


@case("corrupt_block", ("file", "corrupt_block"))
def _(root):
    data = _null(root, CLICK, 5)
    third = data.index(MARKER, data.index(MARKER, data.index(MARKER) + 16) + 16)
    return _raw(root, CLICK, 5, data[:third] + b"X" * 16 + data[third + 16:])


@case("trailing_garbage", ("file", "corrupt_block"))
def _(root):
    return _raw(root, CLICK, 6, _null(root, CLICK, 6, n=20) + b"\x07garbage")


@case("unsupported_codec", ("file", "unsupported_codec"))
def _(root):
    data = avro_bytes(avro_schema(CLICK), _rows(CLICK, 3, 7), codec="deflate")
    return _raw(root, CLICK, 7, data.replace(b"deflate", b"zzzzzzz"))


@case("non_avro_file_name", ("ignored",))
def _(root):
    path = export_path(root, CLICK, offset=8).with_suffix(".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{}")
    return str(path)


def _dead(name, reason, etype, override=None, nullable=(), extra=None, n=3):
    offset = 100 + len(CASES)  # one file per case

    @case(name, ("dead", reason))
    def _(root):
        rows = _rows(etype, n, name, complete=True, **(override or {}))
        return _file(root, etype, offset, rows, nullable=nullable, extra_fields=extra)




@case("missing_required_field", ("dead", "missing_required_field"))
def _(root):
    """An (older or broken) writer schema without a field the catalogue requires."""
    schema = avro_schema(CLICK)
    schema["fields"] = [f for f in schema["fields"] if f["name"] != "email_address"]
    rows = _rows(CLICK, 2, "mrf", complete=True)
    return _raw(root, CLICK, 51, avro_bytes(schema, rows))


_dead("null_required_field", "null_required_field", CLICK, {"time": None},
      nullable=["time"])
_dead("empty_id", "empty_id", CLICK, {"id": ""})
_dead("time_zero", "implausible_time", CLICK, {"time": 0})
_dead("time_negative", "implausible_time", CLICK, {"time": -1_700_000_000})
_dead("time_in_milliseconds", "implausible_time", WA_READ, {"time": 1_795_507_200_000})
_dead("properties_not_json", "invalid_properties_json", CUSTOM, {"properties": "{oops"})
_dead("properties_json_array", "properties_not_object", CUSTOM, {"properties": "[1, 2]"})
_dead("properties_json_string", "properties_not_object", PURCHASE, {"properties": '"x"'})
_dead("payload_too_large", "payload_too_large", CLICK, {"user_agent": "u" * 950_000}, n=1)
_dead("nan_price", "wrong_type", PURCHASE, {"price": float("nan")})


def _retyped(name, etype, field, avro_type, value, offset):
    """A writer schema that declares a documented field with another type."""
    @case(name, ("dead", "wrong_type"))
    def _(root):
        schema = avro_schema(etype)
        for f in schema["fields"]:
            if f["name"] == field:
                f["type"] = avro_type
        rows = [{**r, field: value} for r in _rows(etype, 2, name, complete=True)]
        return _raw(root, etype, offset, avro_bytes(schema, rows))


_retyped("string_where_int", "users.RandomBucketNumberUpdate", "random_bucket_number",
         "string", "12", 40)
_retyped("float_where_int", CLICK, "time", "double", 1795507200.5, 41)
_retyped("boolean_where_string", CLICK, "url", ["null", "boolean"], True, 42)
_retyped("int_where_boolean", CLICK, "is_amp", ["null", "int"], 1, 49)
_retyped("string_array_with_ints", CLICK, "suspected_bot_click_reason",
         ["null", {"type": "array", "items": "int"}], [1, 2], 50)


@case("non_utf8_strings", ("dead", "invalid_utf8"))
def _(root):
    rows = _rows(CLICK, 3, "utf", complete=True, url="https://x.test/\u00e9\u00e9")
    data = avro_bytes(avro_schema(CLICK), rows, codec="null")
    return _raw(root, CLICK, 43, data.replace("\u00e9\u00e9".encode(), b"\xff\xfe\xff\xfe"))


@case("path_and_writer_schema_disagree", ("dead", "event_type_mismatch"))
def _(root):
    data = avro_bytes(avro_schema(CLICK), _rows(CLICK, 2, "mm"))
    return _raw(root, "users.messages.email.Open", 44, data)


@case("unknown_event_type_without_id", ("dead", "missing_required_field"))
def _(root):
    return _file(root, "users.NewThing", 45, [{"user_id": "u1", "time": 1_795_507_300}],
                 extra_fields={"user_id": "string", "time": "int"})


@case("unknown_event_type", ("events",))
def _(root):
    return _file(root, "users.UserOrphan", 46,
                 [{"id": f"o{i}", "user_id": "u", "orphaned_by_id": "v"} for i in range(2)],
                 extra_fields={"id": "string", "user_id": "string",
                               "orphaned_by_id": "string"})


@case("newer_schema_extra_fields_missing_optionals", ("events",))
def _(root):
    schema = avro_schema(CLICK, extra_fields={"ai_summary": "string"})
    schema["fields"] = [f for f in schema["fields"]
                        if f["name"] not in ("browser", "ip_pool", "link_alias")]
    rows = []
    for r in _rows(CLICK, 3, "newer", complete=True, ai_summary="nice"):
        rows.append({k: v for k, v in r.items() if k not in ("browser", "ip_pool",
                                                             "link_alias")})
    path = export_path(root, CLICK, schema_id=9, offset=47)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(avro_bytes(schema, rows))
    return str(path)


@case("second_schema_id_of_the_same_type", ("events",))
def _(root):
    return _file(root, CLICK, 48, _rows(CLICK, 3, "v2"), schema_id=2)


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad") / "export"
    sources = {name: builder(root) for name, (builder, _) in CASES.items()}
    # conflicting and identical duplicates, across hours
    base = _rows(CLICK, 4, "dup", complete=True)
    sources["dups_a"] = _file(root, CLICK, 60, base)
    sources["dups_b"] = _file(root, CLICK, 61, [base[0], {**base[1], "url": "https://other"}],
                              hour="2026-11-24-09")
    out = root.parent / "out"
    assert run(["--input", str(root), "--output", str(out), "--shards", "4",
                "--mixpanel-token", "t"]) == 0
    outputs = {name: read_ndjson(out / name) for name in
               ("events", "dead_letter", "duplicates", "file_errors")}
    outputs["summary"] = json.loads((out / "summary.json").read_text())
    return sources, outputs, root


def _rows_from(outputs, source):
    return {name: [r for r in outputs[name] if r.get("source") == source
                   or r.get("_source") == source]
            for name in ("dead_letter", "duplicates", "file_errors")}


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_kind_of_bad_input_is_accounted_for(outcome, name):
    sources, outputs, root = outcome
    source, expect = sources[name], CASES[name][1]
    dead = [d for d in outputs["dead_letter"] if d["source"] == source]
    files = [f for f in outputs["file_errors"] if f["source"] == source]
    if expect[0] == "dead":
        assert dead and {d["reason"] for d in dead} == {expect[1]}, dead[:1]
        assert all(d["error"] and d["record"] is not None for d in dead)
        assert not files
    elif expect[0] == "file":
        assert [f["reason"] for f in files] == [expect[1]]
        data = open(source, "rb").read()
        assert files[0]["rows"] == _complete_blocks(data)
    elif expect[0] == "events":
        assert not dead and not files
    else:
        assert not dead and not files and source.endswith(".json")


def test_truncated_file_keeps_the_rows_of_complete_blocks(outcome):
    sources, outputs, _ = outcome
    source = sources["truncated_file"]
    kept = outputs["summary"]["rows_read"]
    report = [f for f in outputs["file_errors"] if f["source"] == source][0]
    assert 0 < report["rows"] < 300 and kept > report["rows"]


def test_non_utf8_rows_show_the_bad_bytes(outcome):
    sources, outputs, _ = outcome
    dead = [d for d in outputs["dead_letter"] if d["source"] == sources["non_utf8_strings"]]
    assert len(dead) == 3 and all(d["record"]["url"].endswith("\\xff\\xfe\\xff\\xfe")
                                  for d in dead)
    assert all(d["error"].startswith("url") for d in dead)


def test_new_fields_are_kept_and_missing_optionals_are_fine(outcome):
    _, outputs, _ = outcome
    newer = [e for e in outputs["events"] if e.get("ai_summary") == "nice"]
    assert len(newer) == 3 and all("browser" not in e for e in newer)


def test_conflicting_duplicates_are_counted_and_kept_traceable(outcome):
    sources, outputs, _ = outcome
    dups = [d for d in outputs["duplicates"] if d["source"] in (sources["dups_a"],
                                                               sources["dups_b"])]
    assert len(dups) == 2
    assert sorted(d["conflicting"] for d in dups) == [False, True]
    assert outputs["summary"]["conflicting_duplicates"] == 1


def test_conservation_over_every_kind(outcome):
    _, outputs, _ = outcome
    s = outputs["summary"]
    assert s["rows_read"] == s["valid"] + s["invalid"] + s["duplicates_dropped"]
    assert (len(outputs["events"]), len(outputs["dead_letter"]), len(outputs["duplicates"])) \
        == (s["valid"], s["invalid"], s["duplicates_dropped"])
    assert sum(f["rows"] for f in outputs["file_errors"]) <= s["rows_read"]
    assert Counter(d["reason"] for d in outputs["dead_letter"]) == s["dead_letter_reasons"]
    assert s["files"]["with_errors"] == len(outputs["file_errors"]) == 7
