"""DeduplicateEvents: one survivor per (event_type, id), the same whatever the order."""
import random

import apache_beam as beam
import orjson
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms import DeduplicateEvents
from transforms.codec import dumps
from transforms.dedup import shard_of


def _item(row, etype, eid, **fields):
    return (row, etype, eid, dumps({"id": eid, "event_type": etype, **fields}))


def _run(collect, batches, shards=4, spill_dir=None):
    """Survivor events and duplicate lines of one run, as dicts."""
    with TestPipeline() as p:
        out = p | beam.Create(batches) | DeduplicateEvents(shards, spill_dir)
        events = collect(out.events | "E" >> beam.FlatMap(
            lambda s: [orjson.loads(x) for x in s[1]]), "events")
        dups = collect(out.duplicates | "D" >> beam.FlatMap(
            lambda s: [orjson.loads(x) for x in s[1]]), "dups")
    return events(), dups()


def test_within_file_across_files_and_hours(collect):
    a1 = _item(0, "t.A", "1", v=1)
    batches = [
        ("hour8.avro", [a1, _item(1, "t.A", "2", v=2), _item(2, "t.A", "1", v=1)]),
        ("hour9.avro", [_item(0, "t.A", "1", v=1), _item(1, "t.B", "1", v=9)]),
    ]
    events, dups = _run(collect, batches)
    assert sorted((e["event_type"], e["id"]) for e in events) == [
        ("t.A", "1"), ("t.A", "2"), ("t.B", "1")]  # same id, other type: not a duplicate
    assert sorted((d["source"], d["row"]) for d in dups) == [("hour8.avro", 2),
                                                             ("hour9.avro", 0)]
    assert all(d["kept_source"] == "hour8.avro" and d["kept_row"] == 0 for d in dups)
    assert not any(d["conflicting"] for d in dups)


def test_survivor_is_deterministic_under_any_order_and_split(collect):
    items = [_item(i, "t.A", str(i % 7), v=i % 3, n=i) for i in range(60)]
    outputs = set()
    for seed in range(4):
        rng = random.Random(seed)
        shuffled = items[:]
        rng.shuffle(shuffled)
        cut = rng.randrange(1, 59)
        batches = [("f1", shuffled[:cut]), ("f2", shuffled[cut:])]
        events, dups = _run(collect, batches, shards=rng.choice([1, 3, 8]))
        outputs.add(tuple(sorted(orjson.dumps(e, option=orjson.OPT_SORT_KEYS) for e in events)))
        assert len(events) == 7 and len(dups) == 53
        assert sum(d["conflicting"] for d in dups) == 53  # every copy differs (n=i)
    assert len(outputs) == 1


def test_spilling_the_shuffle_to_files_changes_no_output(collect, tmp_path):
    items = [_item(i, "t.A", str(i % 7), v=i % 3, n=i) for i in range(40)]
    batches = [("f1", items[:25]), ("f2", items[25:]), ("f3", [_item(0, "t.B", "1")])]
    spill = tmp_path / "spill"
    in_memory = _run(collect, batches, shards=3)
    spilled = _run(collect, batches, shards=3, spill_dir=str(spill))
    key = lambda d: orjson.dumps(d, option=orjson.OPT_SORT_KEYS)  # noqa: E731
    assert [sorted(map(key, part)) for part in spilled] == [
        sorted(map(key, part)) for part in in_memory]
    assert len(in_memory[0]) == 8 and len(in_memory[1]) == 33
    assert len(list(spill.iterdir())) == len(batches)  # one file per source file


def test_survivors_come_out_sorted_within_a_shard():
    items = [_item(i, "t.A", f"id-{i:03d}") for i in range(50)]
    with TestPipeline() as p:
        out = p | beam.Create([("f", list(reversed(items)))]) | DeduplicateEvents(2)
        ordered = out.events | beam.Map(
            lambda s: [orjson.loads(x)["id"] for x in s[1]] == sorted(
                orjson.loads(x)["id"] for x in s[1]))
        assert_that(ordered, equal_to([True, True]))


def test_shard_of_is_stable():
    assert shard_of("users.messages.email.Click", "abc", 1000) == shard_of(
        "users.messages.email.Click", "abc", 1000)
    assert shard_of("users.messages.email.Click", "abc", 1000) == 362


def test_windowed_input_is_deduplicated_per_window_and_keeps_its_windows(tmp_path):
    """Batches in two hourly windows: copies within a window collapse, the same event in
    the other window survives there; every output is in its input's window, at its end
    (the runner keeps the end of the window to the millisecond)."""
    from apache_beam.transforms.window import FixedWindows, IntervalWindow, TimestampedValue

    hour = 3600
    batches = [  # (batch, event time)
        (("a.avro", [_item(0, "t.A", "1", v=1), _item(1, "t.A", "1", v=1)]), 10),
        (("b.avro", [_item(0, "t.A", "1", v=1), _item(1, "t.A", "2", v=2)]), hour + 10),
        (("c.avro", [_item(0, "t.A", "2", v=2)]), hour + 20),
    ]
    for spill_dir in (None, str(tmp_path)):
        with TestPipeline() as p:
            out = (p | beam.Create(batches) | beam.Map(lambda bt: TimestampedValue(*bt))
                   | beam.WindowInto(FixedWindows(hour)) | DeduplicateEvents(2, spill_dir))

            def ids(shard_lines, window=beam.DoFn.WindowParam,
                    timestamp=beam.DoFn.TimestampParam):
                for line in shard_lines[1]:
                    event = orjson.loads(line)
                    at_end = 0 < window.end.micros - timestamp.micros <= 1000  # (ms)
                    yield (window, at_end, event["id"])

            first, second = IntervalWindow(0, hour), IntervalWindow(hour, 2 * hour)
            assert_that(out.events | "Events" >> beam.FlatMap(ids), equal_to([
                (first, True, "1"), (second, True, "1"), (second, True, "2")]),
                label="events")
            assert_that(out.duplicates | "Dups" >> beam.FlatMap(ids), equal_to([
                (first, True, "1"), (second, True, "2")]), label="duplicates")


def test_constructor_arguments_are_checked_where_the_pipeline_is_built():
    import pytest
    for bad in (0, -1, 1.5, "8", True):
        with pytest.raises(ValueError, match="num_shards"):
            DeduplicateEvents(bad)
    with pytest.raises(ValueError, match="spill_dir"):
        DeduplicateEvents(4, spill_dir="")
