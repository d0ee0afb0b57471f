"""ReadCurrentsExport: layout, writer schemas, event types and broken files."""
import os

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms import ReadCurrentsExport
from transforms.read import event_type_from_path, event_type_from_schema, export_size
from transforms.testing import avro_bytes, avro_schema, export_path, make_record, write_export

CLICK = "users.messages.email.Click"


def test_reads_every_file_recursively_with_its_own_schema(tmp_path):
    old = [make_record(CLICK, seed=i) for i in range(3)]
    new = [make_record(CLICK, seed=10 + i, braze_added_later=0.5) for i in range(2)]
    write_export(tmp_path, [
        {"event_type": CLICK, "rows": old, "schema_id": 1, "offset": 1},
        {"event_type": CLICK, "rows": new, "schema_id": 2, "offset": 2,
         "extra_fields": {"braze_added_later": "double"}},
    ])
    with TestPipeline() as p:
        out = p | ReadCurrentsExport(str(tmp_path), batch_size=2)
        rows = out.rows | beam.FlatMap(lambda b: [(b[0], b[2] + i, r["id"], r.get("braze_added_later"))
                                                  for i, r in enumerate(b[3])])
        assert_that(rows, equal_to(
            [(CLICK, i, r["id"], None) for i, r in enumerate(old)]
            + [(CLICK, i, r["id"], 0.5) for i, r in enumerate(new)]), label="rows")
        files = out.files | beam.Map(lambda f: (f["source"].endswith(".avro"), f["rows"],
                                                f["reason"], f["schema_id"]))
        assert_that(files, equal_to([(True, 3, None, "1"), (True, 2, None, "2")]),
                    label="files")


def test_event_type_from_schema_name_when_the_path_has_none(tmp_path):
    rec = make_record(CLICK, seed=1)
    (tmp_path / "renamed").mkdir()
    (tmp_path / "renamed" / "x.avro").write_bytes(avro_bytes(avro_schema(CLICK), [rec]))
    with TestPipeline() as p:
        out = p | ReadCurrentsExport(str(tmp_path))
        assert_that(out.rows | beam.Map(lambda b: (b[0], len(b[3]), b[4])),
                    equal_to([(CLICK, 1, None)]))


def test_path_and_writer_schema_disagreeing_rejects_the_rows(tmp_path):
    path = export_path(tmp_path, "users.messages.email.Open")
    path.parent.mkdir(parents=True)
    path.write_bytes(avro_bytes(avro_schema(CLICK), [make_record(CLICK)]))
    with TestPipeline() as p:
        out = p | ReadCurrentsExport(str(tmp_path))
        assert_that(out.rows | beam.Map(lambda b: (b[0], b[4][0][0])),
                    equal_to([("users.messages.email.Open", "event_type_mismatch")]))


def test_broken_files_are_reported_not_fatal(tmp_path):
    good = export_path(tmp_path, CLICK, offset=1)
    good.parent.mkdir(parents=True)
    data = avro_bytes(avro_schema(CLICK), [make_record(CLICK, seed=i) for i in range(500)],
                      codec="null")
    good.write_bytes(data)
    export_path(tmp_path, CLICK, offset=2).write_bytes(b"")
    export_path(tmp_path, CLICK, offset=3).write_bytes(b"this is not avro at all")
    export_path(tmp_path, CLICK, offset=4).write_bytes(data[: len(data) // 2])
    export_path(tmp_path, CLICK, offset=5).write_bytes(avro_bytes(avro_schema(CLICK), []))
    with TestPipeline() as p:
        out = p | ReadCurrentsExport(str(tmp_path))
        reports = out.files | beam.Map(
            lambda f: (f["source"].rsplit("+", 1)[-1], f["reason"], f["rows"] > 0))
        assert_that(reports, equal_to([
            ("1.avro", None, True), ("2.avro", "empty_file", False),
            ("3.avro", "not_avro", False), ("4.avro", "truncated_file", True),
            ("5.avro", "no_rows", False)]))


def test_helpers():
    assert event_type_from_path("/x/event_type=users.canvas.Entry/date=2026-01-01-00/1/a.avro") \
        == "users.canvas.Entry"
    assert event_type_from_path("/x/y.avro") is None
    assert event_type_from_schema(
        {"name": "Click", "namespace": "dataexport.S3.inner.users.messages.email"}) == CLICK
    assert event_type_from_schema({"name": "dataexport.S3.inner." + CLICK}) == CLICK
    assert event_type_from_schema({"name": "Other"}) is None


def test_export_size_counts_files_and_bytes(tmp_path):
    assert export_size(str(tmp_path)) == (0, 0)
    root = write_export(tmp_path, {CLICK: [make_record(CLICK)]})
    (avro,) = root.rglob("*.avro")
    assert export_size(str(tmp_path)) == (1, avro.stat().st_size)


def test_files_are_spread_largest_first(tmp_path):
    from transforms.read import export_pattern, largest_first
    write_export(tmp_path, {
        CLICK: [make_record(CLICK, seed=i) for i in range(50)],
        "users.canvas.Entry": [make_record("users.canvas.Entry")],
        "users.messages.sms.Send": [make_record("users.messages.sms.Send", seed=i)
                                    for i in range(5)]})
    files = largest_first(export_pattern(str(tmp_path)))
    sizes = [(-os.path.getsize(f), f) for f in files]
    assert len(files) == 3 and sizes == sorted(sizes)
    assert "email.Click" in files[0] and "canvas.Entry" in files[-1]
    assert largest_first(export_pattern(str(tmp_path / "nothing"))) == []
