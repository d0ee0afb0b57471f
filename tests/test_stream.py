"""Streaming mode's dedup and windows, with TestStream (arrival times under our control)."""
import json

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_stream import TestStream as Stream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from transforms.stream import DeduplicateStream, WriteWindows, keyed_copies

CLICK = "users.messages.email.Click"


def batch(source, *ids):
    return (source, [(row, CLICK, i, json.dumps({"id": i, "event_type": CLICK}).encode())
                     for row, i in enumerate(ids)])


def streaming():
    # Beam's Python streaming direct runner: TestStream, state and timers, no download
    return PipelineOptions(["--runner=BundleBasedDirectRunner", "--streaming"])


def test_copies_within_the_ttl_are_dropped_once_across_windows_and_later_ones_kept(
        caplog):
    stream = (Stream()
              .add_elements([TimestampedValue(batch("f1", "a", "b", "a"), 0)])
              .advance_watermark_to(30)
              # 70 s later, in the next minute's window: a late copy of a, a new c
              .add_elements([TimestampedValue(batch("f2", "a", "c"), 70)])
              .advance_watermark_to(500)
              # beyond the TTL of a (100 s): a is new again
              .add_elements([TimestampedValue(batch("f3", "a"), 600)])
              .advance_watermark_to_infinity())
    with beam.Pipeline(options=streaming()) as p:
        copies = p | stream | beam.FlatMap(keyed_copies)
        out = copies | DeduplicateStream(ttl=100)
        ids = out.events | beam.Map(lambda e: json.loads(e)["id"])
        dups = out.duplicates | beam.Map(
            lambda d: (json.loads(d)["source"], json.loads(d)["row"],
                       json.loads(d)["kept_source"], json.loads(d)["kept_row"]))
        assert_that(ids, equal_to(["a", "b", "c", "a"]), label="events")
        assert_that(dups, equal_to([("f1", 2, "f1", 0), ("f2", 0, "f1", 0)]),
                    label="duplicates")
        per_window = (ids | "Win" >> beam.WindowInto(beam.window.FixedWindows(60))
                      | beam.combiners.ToList().without_defaults()
                      | beam.Map(sorted))
        assert_that(per_window, equal_to([["a", "b"], ["c"], ["a"]]), label="windows")
    assert "may not be deterministic" not in caplog.text  # keyed state, typed keys


def test_each_window_is_written_with_its_summary(tmp_path):
    stream = (Stream()
              .add_elements([TimestampedValue(x, 5) for x in [
                  ("events", b'{"id":"a"}'), ("events", b'{"id":"b"}'),
                  ("duplicates", b'{"id":"a"}'), ("_rows", 3)]])
              .advance_watermark_to(61)
              .add_elements([TimestampedValue(x, 65) for x in [
                  ("dead_letter", b'{"reason":"x"}'), ("_rows", 1)]])
              .advance_watermark_to_infinity())
    with beam.Pipeline(options=streaming()) as p:
        summaries = p | stream | WriteWindows(str(tmp_path), minutes=1)
        assert_that(summaries | beam.Map(lambda s: (s["rows_read"], s["valid"],
                                                    s["conservation_ok"])),
                    equal_to([(3, 2, True), (1, 0, True)]))
    windows = sorted(d.name for d in (tmp_path / "stream").iterdir() if d.name[0] != "_")
    assert windows == ["19700101T000000Z_19700101T000100Z",
                       "19700101T000100Z_19700101T000200Z"]
    assert not list((tmp_path / "stream").glob("_temporary/*"))  # nothing left behind
    first = tmp_path / "stream" / windows[0]
    assert (first / "events" / "part-00000-of-00001.ndjson").read_bytes() == (
        b'{"id":"a"}\n{"id":"b"}\n')
    assert json.loads((first / "summary.json").read_text())["duplicates_dropped"] == 1


def test_a_bounded_watch_reads_files_dropped_while_it_runs(tmp_path, capsys):
    """--streaming on a local folder: files dropped while the watch runs (one with a copy
    of an earlier event) are read once each; every event once across windows."""
    import threading
    import time

    from pipelines.currents_to_partners import run
    from tests.conftest import read_ndjson
    from transforms.testing import avro_bytes, avro_schema, export_path, make_record

    root = tmp_path / "in"
    recs = [make_record(CLICK, seed=i) for i in range(4)]

    def drop(offset, rows):  # written aside, then renamed: the watcher sees whole files
        path = export_path(root, CLICK, offset=offset)
        path.parent.mkdir(parents=True, exist_ok=True)
        aside = tmp_path / f"{offset}.part"
        aside.write_bytes(avro_bytes(avro_schema(CLICK), rows))
        aside.rename(path)

    drop(0, recs[:2])

    def later():
        time.sleep(1.5)
        drop(1, [recs[2], recs[0]])  # recs[0]: a copy delivered again
        time.sleep(1.5)
        drop(2, [recs[3]])

    dropper = threading.Thread(target=later)
    dropper.start()
    started = time.monotonic()
    code = run(["--streaming", "--input", str(root), "--output", str(tmp_path / "out"),
                "--partners", "segment", "--poll-interval", "0.5", "--stop-after", "5",
                "--window", "60"])
    dropper.join()
    assert code == 0, capsys.readouterr().err
    assert time.monotonic() - started >= 5  # it watched for the whole time
    windows = [d for d in sorted((tmp_path / "out" / "stream").iterdir())
               if not d.name.startswith("_")]
    assert 1 <= len(windows) <= 2  # two if the run crossed the hour
    events = [e["id"] for w in windows for e in read_ndjson(w / "events")]
    assert sorted(events) == sorted(r["id"] for r in recs)
    dups = [d for w in windows for d in read_ndjson(w / "duplicates")]
    assert [(d["id"], d["kept_source"].endswith("+0.avro")) for d in dups] == [
        (recs[0]["id"], True)]
    segment = [x for w in windows for x in read_ndjson(w / "partners" / "segment")]
    assert len(segment) == 4
    totals = [json.loads((w / "summary.json").read_text()) for w in windows]
    assert sum(s["rows_read"] for s in totals) == 5 and all(
        s["conservation_ok"] for s in totals)
    assert "window " in capsys.readouterr().out


def test_a_local_watch_without_an_end_is_refused(tmp_path, capsys):
    from pipelines.currents_to_partners import run
    (tmp_path / "in").mkdir()
    assert run(["--streaming", "--input", str(tmp_path / "in"), "--output",
                str(tmp_path / "out"), "--partners", ""]) == 2
    assert "needs --stop-after" in capsys.readouterr().err
    assert run(["--streaming", "--state", str(tmp_path / "s"), "--input", str(tmp_path),
                "--output", str(tmp_path / "out"), "--partners", ""]) == 2
    assert "--state is for scheduled batch runs" in capsys.readouterr().err


def test_streaming_delivers_each_event_once(tmp_path, fake_partners, monkeypatch):
    """--deliver works in streaming too: every event of the watched folder reaches the
    (fake, local) partner API once, a re-delivered copy not at all."""
    from pipelines.currents_to_partners import run
    from tests.conftest import read_ndjson
    from tests.fake_partners import dedup_key, delivery_args
    from transforms.testing import make_record, write_export

    from tests.fake_partners import CREDENTIALS
    monkeypatch.setenv("SEGMENT_WRITE_KEY", CREDENTIALS["SEGMENT_WRITE_KEY"])
    recs = [make_record(CLICK, seed=i) for i in range(5)]
    write_export(tmp_path / "in", [{"event_type": CLICK, "rows": recs + [recs[1]]}])
    assert run(["--streaming", "--input", str(tmp_path / "in"), "--output",
                str(tmp_path / "out"), "--partners", "segment", "--stop-after", "0",
                *delivery_args(fake_partners, ["segment"])]) == 0
    [window] = [d for d in (tmp_path / "out" / "stream").iterdir() if d.name[0] != "_"]
    keys = [dedup_key("segment", x) for x in read_ndjson(window / "partners" / "segment")]
    assert len(keys) == 5
    assert not read_ndjson(window / "delivery_failed" / "segment")
    assert fake_partners["segment"].received == {k: 1 for k in keys}

    summary = json.loads((window / "summary.json").read_text())
    assert summary["delivery_failed"] == {"segment": {}}

    # refused credentials: the events are in delivery_failed/, and the run fails
    monkeypatch.setenv("SEGMENT_WRITE_KEY", "wrong")
    assert run(["--streaming", "--input", str(tmp_path / "in"), "--output",
                str(tmp_path / "again"), "--partners", "segment", "--stop-after", "0",
                *delivery_args(fake_partners, ["segment"])]) == 1
    [window] = [d for d in (tmp_path / "again" / "stream").iterdir() if d.name[0] != "_"]
    assert len(read_ndjson(window / "delivery_failed" / "segment")) == 5
