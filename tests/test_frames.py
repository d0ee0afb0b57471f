"""Columnar reading and validation give exactly what the row path gives.

ReadCurrentsExport(as_frames=True) hands ValidateEvents polars frames instead of lists of
dicts; every verdict, dead-letter record and canonical byte must stay the same.
"""
import io

import fastavro
import polars as pl
import pytest
from apache_beam.pvalue import TaggedOutput
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.catalogue import load_catalogue
from tests.test_properties import corrupt
from transforms.read import float32_shortest, frame_readable, read_frame, writer_facts
from transforms.testing import avro_bytes, avro_schema, make_record
from transforms.validate import MAX_PAYLOAD_BYTES, _ValidateBatch

CATALOGUE = load_catalogue()
TYPES = sorted(CATALOGUE.event_types)
EXTRA = {"x_double": "double", "x_float": "float", "x_int": "int", "x_text": "string",
         "x_flag": "boolean", "x_tags": {"type": "array", "items": "string"}}


def _validated(batch) -> tuple[list, list, dict]:
    fn = _ValidateBatch(None)
    fn.setup()
    valid, dead, stats = [], [], {}
    for out in fn.process(batch):
        if isinstance(out, TaggedOutput):
            if out.tag == "dead_letter":
                dead.append(out.value)
            else:
                stats = out.value
        else:
            valid += out[1]
    return sorted(valid), sorted(dead, key=lambda d: d["row"]), dict(sorted(stats.items()))


def _decoded(data: bytes) -> list[dict]:
    """fastavro's rows, 32-bit floats as the row reader gives them (float32_shortest)."""
    reader = fastavro.reader(io.BytesIO(data))
    rows = list(reader)
    for name in writer_facts(reader.writer_schema)[0]:
        for row, value in zip(rows, float32_shortest([r[name] for r in rows])):
            row[name] = value
    return rows


def _both_ways(etype: str, schema: dict, records: list[dict]):
    data = avro_bytes(schema, records)
    rows = _decoded(data)
    frame = read_frame(data)
    assert frame is not None and repr(frame.to_dicts()) == repr(rows)  # repr: NaN != NaN
    nulls = writer_facts(schema)[1]
    return (_validated((etype, "src.avro", 7, rows, None, nulls)),
            _validated((etype, "src.avro", 7, frame, None, nulls)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(etype=st.sampled_from(  # types with float fields and no properties: more often
    TYPES + ["users.behaviors.Location", "users.behaviors.app.SessionEnd"] * 8), rows=st.lists(st.tuples(
    st.integers(0, 5000), st.sampled_from([None, None, "null_required", "bad_time", "empty_id",
                                           "null_optional", "bad_properties", "odd_text",
                                           "non_finite", "no_external"]),
    st.integers(0, 1000)), min_size=1, max_size=12),
    extras=st.lists(st.sampled_from(sorted(EXTRA)), unique=True, max_size=3),
    values=st.lists(st.one_of(st.none(), st.floats(width=32), st.floats(allow_nan=False),
                              st.integers(-2**31, 2**31 - 1), st.text(max_size=6),
                              st.booleans()), min_size=3, max_size=3))
def test_frame_validation_matches_the_row_path(etype, rows, extras, values):
    spec = CATALOGUE.get(etype)
    schema = avro_schema(etype, spec, {e: EXTRA[e] for e in extras}, nullable=list(spec.fields))
    records = []
    for seed, kind, pick in rows:
        record = make_record(etype, seed=seed)
        optional = sorted(set(spec.fields) - set(spec.required))
        if kind in ("null_required", "bad_time") and (kind == "bad_time" or [
                f for f in spec.required if f not in ("time", "id")]):
            corrupt(record, etype, kind, pick, avro_safe=True)
        elif kind == "empty_id":
            record["id"] = ""
        elif kind == "null_optional" and optional:
            record[optional[pick % len(optional)]] = None
        elif kind == "bad_properties" and "properties" in spec.fields:
            record["properties"] = ["{", "[1]", "", '{"a": 1}', "null"][pick % 5]
        elif kind == "non_finite" and [n for n, f in spec.fields.items() if f.type == "float"]:
            name = [n for n, f in spec.fields.items() if f.type == "float"][0]
            record[name] = [float("inf"), float("-inf"), float("nan")][pick % 3]
        elif kind == "no_external" and "external_user_id" in record:  # identity "none"
            record["external_user_id"] = ["", None][pick % 2]
        elif kind == "odd_text":
            record["id"] = 'q"\\\n\x01é😀' + record["id"]
            if record.get("external_user_id"):  # copied into resolved_external_user_id
                record["external_user_id"] = 'x"\\é' + record["external_user_id"]
        for name, value in zip(extras, values):
            kind_of = EXTRA[name]
            ok = {"double": (float,), "float": (float,), "int": (int,), "string": (str,),
                  "boolean": (bool,)}.get(kind_of if isinstance(kind_of, str) else "", ())
            if value is None or (type(value) in ok and not (
                    kind_of == "int" and isinstance(value, bool))):
                record[name] = value
            elif kind_of == "int" and type(value) is bool:
                record[name] = int(value)
            elif not isinstance(kind_of, str):
                record[name] = [] if value is None else [str(value)]
        records.append(record)
    by_rows, by_frame = _both_ways(etype, schema, records)
    assert repr(by_frame) == repr(by_rows)


def test_a_field_of_another_type_than_the_catalogue_says_goes_row_by_row():
    etype = "users.messages.email.Click"
    spec = CATALOGUE.get(etype)
    schema = avro_schema(etype, spec)
    name = next(n for n, f in spec.fields.items() if f.type == "string" and n != "id")
    for field in schema["fields"]:
        if field["name"] == name:
            field["type"] = ["null", "long"]
    records = [{**make_record(etype, seed=i), name: i if i % 2 else None} for i in range(6)]
    by_rows, by_frame = _both_ways(etype, schema, records)
    assert repr(by_frame) == repr(by_rows)
    assert [d["reason"] for d in by_rows[1]] == ["wrong_type"] * 3


def test_an_oversized_row_is_dead_letter_either_way():
    etype = "users.behaviors.CustomEvent"
    spec = CATALOGUE.get(etype)
    big = make_record(etype, seed=1)
    big["name"] = "x" * MAX_PAYLOAD_BYTES
    by_rows, by_frame = _both_ways(etype, avro_schema(etype, spec),
                                   [make_record(etype, seed=2), big])
    assert by_frame == by_rows
    assert [d["reason"] for d in by_rows[1]] == ["payload_too_large"]


def test_unknown_event_types_are_checked_row_by_row():
    schema = avro_schema("users.UserOrphan", None, {"id": "string", "note": "string"})
    records = [{"id": "a", "note": "x"}, {"id": "", "note": None}, {"id": None, "note": "y"}]
    by_rows, by_frame = _both_ways("users.UserOrphan", schema, records)
    assert by_frame == by_rows
    assert [d["reason"] for d in by_rows[1]] == ["empty_id", "missing_required_field"]


@pytest.mark.parametrize("field_type, readable", [
    ("string", True), (["null", "long"], True), (["double", "null"], True),
    ({"type": "array", "items": "string"}, True), ("float", True),
    ("bytes", False), (["null", "string", "long"], False), ({"type": "map", "values": "string"},
                                                            False),
    ({"type": "long", "logicalType": "timestamp-millis"}, False),
    ({"type": "enum", "name": "E", "symbols": ["A"]}, False),
    ({"type": "record", "name": "R", "fields": []}, False),
    ({"type": "array", "items": "long"}, False),
])
def test_frames_only_for_schemas_polars_reads_exactly(field_type, readable):
    schema = {"type": "record", "name": "X", "fields": [{"name": "f", "type": field_type}]}
    assert frame_readable(schema) is readable


def test_a_file_polars_refuses_is_not_a_frame():
    etype = "users.messages.email.Click"
    data = avro_bytes(avro_schema(etype), [make_record(etype, seed=i) for i in range(20)],
                      codec="null")
    assert read_frame(data[:-40]) is None  # truncated
    rec = make_record(etype, seed=1)
    data = avro_bytes(avro_schema(etype), [rec], codec="null")
    assert read_frame(data.replace(rec["id"].encode(), b"\xff" * len(rec["id"]))) is None
    assert read_frame(avro_bytes(avro_schema(etype), [rec])).dtypes  # sanity: it reads
    assert isinstance(read_frame(avro_bytes(avro_schema(etype), [rec])), pl.DataFrame)


def test_read_as_frames_gives_the_same_rows_and_falls_back_per_file(tmp_path):
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    from transforms import ReadCurrentsExport
    from transforms.testing import export_path, write_export

    click = "users.messages.email.Click"
    rows = [make_record(click, seed=i) for i in range(5)]
    newer = [{**make_record(click, seed=9), "x_float": 1.1, "x_tags": ["a", "é"]}]
    write_export(tmp_path, [
        {"event_type": click, "rows": rows, "offset": 1},
        {"event_type": click, "rows": newer, "offset": 2, "schema_id": 2,
         "extra_fields": {"x_float": "float", "x_tags": {"type": "array", "items": "string"}}}])
    bad = make_record(click, seed=20)
    path = export_path(tmp_path, click, offset=3)
    path.write_bytes(avro_bytes(avro_schema(click), [bad], codec="null").replace(
        bad["id"].encode(), b"\xff" * len(bad["id"])))

    def as_lists(batch):
        etype, source, first, batch_rows, problems, _ = batch
        kind = "list" if isinstance(batch_rows, list) else "frame"
        records = batch_rows if kind == "list" else batch_rows.to_dicts()
        return [(kind, source.rsplit("+", 1)[1], first + i, repr(r), problems is not None)
                for i, r in enumerate(records)]

    def expected(offset, records, kind, problems=False):
        data = avro_bytes(avro_schema(click, extra_fields={"x_float": "float", "x_tags": {
            "type": "array", "items": "string"}} if offset == 2 else None), records)
        return [(kind, f"{offset}.avro", i, repr(r), problems)
                for i, r in enumerate(_decoded(data))]

    with TestPipeline() as p:
        out = p | ReadCurrentsExport(str(tmp_path), batch_size=2, as_frames=True)
        got = out.rows | beam.FlatMap(as_lists) | beam.Filter(lambda r: r[1] != "3.avro")
        assert_that(got, equal_to(expected(1, rows, "frame") + expected(2, newer, "frame")))
        fallback = (out.rows | "Bad" >> beam.FlatMap(as_lists)
                    | "Only3" >> beam.Filter(lambda r: r[1] == "3.avro")
                    | beam.Map(lambda r: (r[0], r[2], r[4])))
        assert_that(fallback, equal_to([("list", 0, True)]), label="fallback")
