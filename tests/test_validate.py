"""ValidateEvents: every dead-letter reason, unknown fields and unknown types."""
import apache_beam as beam
import orjson
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms import ValidateEvents
from transforms.validate import MAX_PAYLOAD_BYTES, REASONS
from transforms.testing import make_record

CLICK, CUSTOM = "users.messages.email.Click", "users.behaviors.CustomEvent"


BAD_ROWS = [
    ("missing_required_field", CLICK, lambda r: r.pop("email_address")),
    ("null_required_field", CLICK, lambda r: r.update(user_id=None)),
    ("wrong_type", CLICK, lambda r: r.update(time="1795600800")),
    ("wrong_type", CLICK, lambda r: r.update(time=1795600800.5)),
    ("wrong_type", CLICK, lambda r: r.update(is_amp="yes")),
    ("wrong_type", CLICK, lambda r: r.update(time=True)),
    ("implausible_time", CLICK, lambda r: r.update(time=0)),
    ("implausible_time", CLICK, lambda r: r.update(time=-5)),
    ("implausible_time", CLICK, lambda r: r.update(time=1_795_600_800_000)),
    ("invalid_properties_json", CUSTOM, lambda r: r.update(properties="{'a': 1}")),
    ("properties_not_object", CUSTOM, lambda r: r.update(properties='"text"')),
    ("properties_not_object", CUSTOM, lambda r: r.update(properties="[1]")),
    ("payload_too_large", CLICK, lambda r: r.update(user_agent="x" * MAX_PAYLOAD_BYTES)),
    ("empty_id", CLICK, lambda r: r.update(id="")),
    ("wrong_type", "users.behaviors.Purchase", lambda r: r.update(price=float("nan"))),
    ("wrong_type", "users.behaviors.Purchase", lambda r: r.update(price="9.99")),
    ("wrong_type", CLICK, lambda r: r.update(suspected_bot_click_reason=["ok", 3])),
]


@pytest.mark.parametrize("reason,etype,corrupt", BAD_ROWS,
                         ids=[f"{r}-{i}" for i, (r, _, _) in enumerate(BAD_ROWS)])
def test_each_dead_letter_reason(reason, etype, corrupt):
    good = make_record(etype, seed=1, complete=True)
    bad = make_record(etype, seed=2, complete=True)
    corrupt(bad)
    with TestPipeline() as p:
        out = p | beam.Create([(etype, "src.avro", 10, [good, bad], None, None)]) | ValidateEvents()
        assert_that(out.valid | "V" >> beam.FlatMap(lambda b: [(x[0], x[2]) for x in b[1]]),
                    equal_to([(10, good["id"])]), label="valid")
        assert_that(out.dead_letter | "D" >> beam.Map(
            lambda d: (d["row"], d["reason"], d["source"], d["event_type"], d["record"]["id"],
                       bool(d["error"]))),
            equal_to([(11, reason, "src.avro", etype, bad["id"], True)]), label="dead")
    assert reason in REASONS


def test_valid_rows_keep_unknown_fields_and_gain_event_type_and_own_identity():
    rec = make_record(CLICK, seed=3, braze_added_later={"nested": [1, 2]},
                      external_user_id=None)
    known = make_record(CLICK, seed=4, external_user_id="ext-4")
    blank = make_record(CLICK, seed=5, external_user_id="")
    with TestPipeline() as p:
        out = p | beam.Create([(CLICK, "s", 0, [rec, known, blank], None, None)]
                              ) | ValidateEvents()
        payloads = out.valid | beam.FlatMap(lambda b: [orjson.loads(x[3]) for x in b[1]])
        none = {"identity_source": "none", "resolved_external_user_id": None}
        assert_that(payloads, equal_to([
            {**rec, "event_type": CLICK, **none},
            {**known, "event_type": CLICK, "identity_source": "event",
             "resolved_external_user_id": "ext-4"},
            {**blank, "event_type": CLICK, **none}]))


def test_unknown_event_types_pass_unvalidated_and_are_counted():
    rows = [{"id": "o-1", "user_id": "u", "time": "not even an int"}, {"user_id": "no id"}]
    with TestPipeline() as p:
        out = p | beam.Create([("users.UserOrphan", "s", 0, rows, None, None)]) | ValidateEvents()
        assert_that(out.valid | "V" >> beam.FlatMap(lambda b: [x[2] for x in b[1]]),
                    equal_to(["o-1"]), label="valid")
        assert_that(out.dead_letter | "D" >> beam.Map(lambda d: d["reason"]),
                    equal_to(["missing_required_field"]), label="dead")
        assert_that(out.stats, equal_to([{"rows_read": 2, "invalid": 1,
                                          "dead_letter_reasons/missing_required_field": 1,
                                          "unknown_rows/users.UserOrphan": 2}]), label="stats")


def test_problems_found_while_reading_reject_their_rows():
    rows = [make_record(CLICK, seed=i) for i in range(3)]
    problems = {0: ("event_type_mismatch", "path says A, writer schema says B"),
                2: ("invalid_utf8", "url: bytes that are not UTF-8")}
    with TestPipeline() as p:
        out = p | beam.Create([(CLICK, "s", 5, rows, problems, None)]) | ValidateEvents()
        assert_that(out.dead_letter | "D" >> beam.Map(
            lambda d: (d["row"], d["reason"], d["error"])),
            equal_to([(5 + i, *problem) for i, problem in problems.items()]), label="dead")
        assert_that(out.valid | "V" >> beam.FlatMap(lambda b: [x[0] for x in b[1]]),
                    equal_to([6]), label="valid")
