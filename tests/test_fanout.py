"""FormatForPartners: one pass gives what ResolveIdentities then FormatForPartner give,
computed here the straightforward way (one event, one partner at a time)."""
from collections import Counter

import apache_beam as beam
import orjson
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from schemas.catalogue import load_catalogue
from transforms import FormatForPartners, PartnerFormatter, resolve_identity
from transforms.codec import dumps
from transforms.fanout import skipped_tag
from transforms.summary import MergeStats
from transforms.testing import make_record

PARTNERS = ("amplitude", "mixpanel", "mparticle", "segment")
CONFIG = {"mixpanel_token": "tok", "mparticle_environment": "development"}
CHUNK = 7


def shards() -> list[tuple[int, list[bytes]]]:
    """Every catalogue type as known users, an anonymous one with and without a device,
    one without a braze id, and an event type no mapping knows, over three shards."""
    lines = []
    for etype in sorted(load_catalogue().event_types):
        for variant in range(6):
            rec = make_record(etype, seed=variant, anonymous=variant > 2)
            if variant == 4:
                rec["device_id"] = None
            if variant == 5:
                rec["user_id"] = ""
            lines.append(dumps({**rec, "event_type": etype}))
    lines.append(dumps({"id": "x-1", "event_type": "users.future.Thing", "user_id": "b"}))
    return [(s, lines[s::3]) for s in range(3)]


def expected(data, partner):
    """(payload elements, skipped elements, counters) for one partner, event by event,
    with the identity rule applied here (resolve_identity) to count eligibility."""
    fmt = PartnerFormatter(partner, CONFIG)
    payloads, skipped, stats = [], [], Counter()
    for shard, lines in data:
        for start in range(0, len(lines), CHUNK):
            sent, dropped = [], []
            for line in lines[start:start + CHUNK]:
                record = orjson.loads(line)
                payload, reason = fmt.format(record)
                identity = resolve_identity(partner, record)
                type_skipped = reason in ("storage_only_event", "no_mapping_for_event_type")
                if isinstance(identity, str) and not type_skipped:
                    assert reason == identity  # the identity rule, before any key check
                    stats[f"partners/{partner}/not_eligible/{identity}"] += 1
                else:
                    stats[f"partners/{partner}/eligible"] += 1
                if payload is None:
                    dropped.append(dumps({"event_type": record["event_type"],
                                          "id": record["id"], "reason": reason}))
                    stats[f"partners/{partner}/skipped/{reason}"] += 1
                else:
                    sent.append(orjson.dumps(payload))
            stats[f"partners/{partner}/written"] += len(sent)
            payloads.append((shard, sent))
            if dropped:
                skipped.append((shard, dropped))
    stats.update({k: n for k, n in fmt.counters.items()  # collisions, held-back fields
                  if "/not_eligible/" not in k})
    return payloads, skipped, stats


def test_same_outputs_and_counters_as_event_by_event():
    data = shards()
    counters = Counter()
    with TestPipeline() as p:
        out = p | beam.Create(data) | FormatForPartners(PARTNERS, CONFIG, chunk=CHUNK)
        for partner in PARTNERS:
            payloads, skipped, stats = expected(data, partner)
            assert len(skipped) > 1 and sum(len(x) for _, x in payloads) > 100
            counters.update(stats)
            assert_that(out[partner], equal_to(payloads), label=f"{partner}-payloads")
            assert_that(out[skipped_tag(partner)], equal_to(skipped), label=f"{partner}-skipped")
        assert_that(out.stats | beam.CombineGlobally(MergeStats()), equal_to([dict(counters)]),
                    label="stats")
    assert counters["partners/mixpanel/not_eligible/no_external_id"] > 100
    assert counters["partners/segment/not_eligible/no_braze_id_or_external_id"] > 10
    for partner in PARTNERS:  # one definition per counter
        skipped = {k.rsplit("/", 1)[1]: n for k, n in counters.items()
                   if k.startswith(f"partners/{partner}/skipped/")}
        not_eligible = {k.rsplit("/", 1)[1]: n for k, n in counters.items()
                        if k.startswith(f"partners/{partner}/not_eligible/")}
        assert not_eligible and all(skipped[r] == n for r, n in not_eligible.items())
        assert (counters[f"partners/{partner}/written"] + sum(skipped.values())
                == sum(len(x) for _, x in data))


@pytest.mark.parametrize("args", [((),), (("amplitude", "hubspot"),), (PARTNERS, None, 0)])
def test_rejects_bad_arguments(args):
    with pytest.raises(ValueError):
        FormatForPartners(*args)
