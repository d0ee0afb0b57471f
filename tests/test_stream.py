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


def test_copies_within_the_ttl_are_dropped_once_across_windows_and_later_ones_kept():
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
    first = tmp_path / "stream" / windows[0]
    assert (first / "events" / "part-00000-of-00001.ndjson").read_bytes() == (
        b'{"id":"a"}\n{"id":"b"}\n')
    assert json.loads((first / "summary.json").read_text())["duplicates_dropped"] == 1
