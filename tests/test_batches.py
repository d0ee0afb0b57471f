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
