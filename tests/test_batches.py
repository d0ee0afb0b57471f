"""ParseEvents and ToRowBatches: between our batches and one dict per event."""
import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms import ParseEvents, ToRowBatches, ValidateEvents
from transforms.codec import dumps
from transforms.testing import make_record

CLICK = "users.messages.email.Click"


def test_rows_from_elsewhere_validate_like_rows_from_files():
    rows = [{**make_record(CLICK, seed=i), "event_type": CLICK} for i in range(5)]
    rows[3]["time"] = 0
    with TestPipeline() as p:
        checked = p | beam.Create(rows) | ToRowBatches("bigquery", batch_size=2) | \
            ValidateEvents()
        assert_that(checked.valid | "V" >> beam.FlatMap(lambda b: [x[2] for x in b[1]]),
                    equal_to([r["id"] for i, r in enumerate(rows) if i != 3]), label="valid")
        assert_that(checked.dead_letter | beam.Map(lambda d: (d["source"], d["reason"])),
                    equal_to([("bigquery", "implausible_time")]), label="dead")


def test_parse_events_gives_one_dict_per_event():
    events = [{"id": str(i), "event_type": CLICK} for i in range(3)]
    with TestPipeline() as p:
        out = p | beam.Create([(0, [dumps(e) for e in events[:2]]), (1, [dumps(events[2])])]) \
            | ParseEvents()
        assert_that(out, equal_to(events))


def test_batch_coder_round_trips_and_estimates_without_walking_every_row():
    from apache_beam.coders import registry
    from transforms.types import BatchCoder, RowBatch
    coder = registry.get_coder(RowBatch)
    assert isinstance(coder, BatchCoder)
    rows = [{"id": str(i), "time": 1_795_507_200, "x": None} for i in range(1000)]
    batch = ("users.messages.email.Click", "f.avro", 0, rows, {3: ("invalid_utf8", "bad")})
    assert coder.decode(coder.encode(batch)) == batch
    estimate = coder.estimate_size(batch)
    assert 0.2 < estimate / len(coder.encode(batch)) < 5


def test_batch_types_are_checked_when_the_pipeline_is_built():
    """Plain tuples of the same fields compose; a batch of the wrong kind fails at
    construction, before anything runs."""
    import pytest
    from apache_beam.typehints.decorators import TypeCheckError

    from transforms import DeduplicateEvents
    with TestPipeline() as p:
        shards = p | beam.Create([(0, [dumps({"id": "1", "event_type": CLICK})])])
        assert_that(shards | ParseEvents(), equal_to([{"id": "1", "event_type": CLICK}]))
        rows = [{**make_record(CLICK, seed=1), "event_type": CLICK}]
        valid = (p | "Rows" >> beam.Create(rows) | ToRowBatches() | ValidateEvents()).valid
        events = (valid | DeduplicateEvents()).events
        with pytest.raises(TypeCheckError, match="Again"):
            # events (ShardLines) are not validated batches (ValidBatch)
            events | "Again" >> DeduplicateEvents()
