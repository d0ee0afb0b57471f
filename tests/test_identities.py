"""ResolveIdentities: who each partner would receive, per seeds 001/003/004."""
import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms import ResolveIdentities, resolve_identity
from transforms.codec import dumps

KNOWN = {"user_id": "braze-1", "external_user_id": "ext-1", "device_id": "dev-1"}
ANON_DEVICE = {"user_id": "braze-2", "external_user_id": None, "device_id": "dev-2"}
ANON = {"user_id": "braze-3", "external_user_id": None, "device_id": None}


def test_amplitude_external_id_else_device_id_else_not_sendable():
    assert resolve_identity("amplitude", KNOWN) == {"user_id": "ext-1", "device_id": "dev-1"}
    assert resolve_identity("amplitude", ANON_DEVICE) == {"user_id": None, "device_id": "dev-2"}
    assert resolve_identity("amplitude", ANON) == "no_external_id_or_device_id"


def test_mixpanel_and_mparticle_need_the_external_id():
    assert resolve_identity("mixpanel", KNOWN) == {"distinct_id": "ext-1"}
    assert resolve_identity("mparticle", KNOWN) == {"customerid": "ext-1"}
    for anon in (ANON_DEVICE, ANON, {**ANON, "external_user_id": ""}):
        assert resolve_identity("mixpanel", anon) == "no_external_id"
        assert resolve_identity("mparticle", anon) == "no_external_id"


def test_segment_anonymous_id_is_the_braze_id():
    assert resolve_identity("segment", KNOWN) == {"anonymousId": "braze-1", "userId": "ext-1"}
    assert resolve_identity("segment", ANON) == {"anonymousId": "braze-3", "userId": None}
    assert resolve_identity("segment", {"user_id": None}) == "no_braze_id_or_external_id"
    # Segment takes userId alone: an external_id without a braze_id is sent
    assert resolve_identity("segment", {"user_id": "", "external_user_id": "ext-9"}) == {
        "anonymousId": None, "userId": "ext-9"}


def test_transform_counts_eligibility_per_partner():
    lines = [dumps(r) for r in (KNOWN, ANON_DEVICE, ANON)]
    with TestPipeline() as p:
        out = p | beam.Create([(0, lines)]) | ResolveIdentities(("amplitude", "mixpanel"))
        assert_that(out.stats, equal_to([{
            "partners/amplitude/eligible": 2,
            "partners/amplitude/not_eligible/no_external_id_or_device_id": 1,
            "partners/mixpanel/eligible": 1,
            "partners/mixpanel/not_eligible/no_external_id": 2}]), label="stats")
        assert_that(out.identified | beam.Map(lambda s: [ids for _, ids in s[1]]),
                    equal_to([[{"amplitude": {"user_id": "ext-1", "device_id": "dev-1"},
                                "mixpanel": {"distinct_id": "ext-1"}},
                               {"amplitude": {"user_id": None, "device_id": "dev-2"},
                                "mixpanel": "no_external_id"},
                               {"amplitude": "no_external_id_or_device_id",
                                "mixpanel": "no_external_id"}]]), label="ids")
