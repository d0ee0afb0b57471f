"""Partner payloads: golden tests from every seed tab, and hand-written cases."""
import json

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from schemas.build_from_seeds import build_mappings, parse_spec
from schemas.catalogue import read_json_resource
from transforms import FormatForPartner, PartnerFormatter
from transforms.testing import make_record, payload_leaves as leaves, payload_problems

PARTNERS = ("amplitude", "mixpanel", "mparticle", "segment")
CONFIG = {"mixpanel_token": "tok-123", "mparticle_environment": "development"}
TEMPLATES = read_json_resource("partner_templates.json")["event_types"]
AD_TYPES = ("ios_idfa", "google_ad_id", "windows_ad_id", "roku_ad_id")
FORMATTERS = {p: PartnerFormatter(p, CONFIG) for p in PARTNERS}
MAPPINGS = {p: read_json_resource(f"partners/{p}.json") for p in PARTNERS}
CLICK = "users.messages.email.Click"
DOCUMENTED = [(t, p) for t, tabs in TEMPLATES.items() for p in tabs]
BASE = read_json_resource("partners/base.json")["partners"]


def tab_leaves(etype, partner):
    """The seed tab's keys, with the partner's reserved names (``renames``) applied."""
    renames = BASE[partner].get("renames", {})
    return {renames.get(k, k): v for k, v in leaves(TEMPLATES[etype][partner]["template"])}


def complete_record(etype, partner, **overrides):
    """Every catalogue field set, plus the fields a tab reads that the storage block omits."""
    rec = make_record(etype, seed=7, complete=True, **overrides)
    for entry in MAPPINGS[partner]["events"][etype]["fields"]:
        src = entry.get("from", "@").replace("@identity.device_id", "device_id")
        if not src.startswith("@") and src not in rec:
            rec[src] = f"value-of-{src}"
    rec["event_type"] = etype
    return rec


def payload(partner, rec):
    out, reason = FORMATTERS[partner].format(rec)
    assert reason is None, reason
    return out


def test_every_documented_pair_is_covered():
    assert len(DOCUMENTED) == 66 + 66 + 58 + 59


@pytest.mark.parametrize("etype,partner", DOCUMENTED, ids=[f"{p}:{t}" for t, p in DOCUMENTED])
def test_golden_payload_has_exactly_the_documented_keys(etype, partner):
    documented = tab_leaves(etype, partner)
    spec = MAPPINGS[partner]["events"][etype]
    expand = spec.get("expand_properties")
    seen = set()
    for ad_type in AD_TYPES:
        rec = complete_record(etype, partner, ad_id_type=ad_type) if "ad_id_type" in \
            make_record(etype, complete=True) else complete_record(etype, partner)
        got = payload(partner, rec)
        keys = {k for k, _ in leaves(got)}
        if expand is not None:  # expanded custom properties are checked by hand below
            keys = {k for k in keys if not any(
                k.endswith("." + expand["prefix"] + p) for p in json.loads(rec["properties"]))}
        assert keys <= set(documented), sorted(keys - set(documented))
        bag = MAPPINGS[partner]["property_bag"] + "."
        assert payload_problems(partner, etype, got, extra_ok=[bag + (expand or {}).get(
            "prefix", "\0")] if expand is not None else []) == []
        seen |= keys
        # each value traced to its source
        flat = dict(leaves(got))
        for entry in spec["fields"]:
            to = entry["to"]
            if "const" in entry:
                assert flat[to] == entry["const"] or to not in flat and entry["const"] == {}
            elif entry["from"].startswith("@config."):
                assert flat[to] == CONFIG[entry["from"][8:]]
            elif not entry["from"].startswith("@") and to in flat:
                value = rec[entry["from"]]
                conv = entry.get("convert")
                expected = {"seconds_to_millis": lambda v: v * 1000, "not": lambda v: not v,
                            "seconds_to_iso8601": lambda v: flat[to]}.get(conv, lambda v: v)
                assert flat[to] == expected(value), to
    assert seen == set(documented), sorted(set(documented) - seen)


@pytest.mark.parametrize("etype,partner", DOCUMENTED, ids=[f"{p}:{t}" for t, p in DOCUMENTED])
def test_each_mapped_field_is_traced_to_the_seed(etype, partner, catalogue):
    """Source = the destination's own name, or the catalogue field the seed describes."""
    fields = catalogue.get(etype).fields
    documented = tab_leaves(etype, partner)
    roles = BASE[partner]["roles"]
    for entry in MAPPINGS[partner]["events"][etype]["fields"]:
        src, to = entry.get("from"), entry["to"]
        if to in roles or src is None:
            continue
        key = to.rsplit(".", 1)[-1]
        desc = parse_spec(documented[to])["description"]
        assert src == key or (src in fields and fields[src].description == desc) or any(
            f.description == desc for t in catalogue.event_types.values()
            for n, f in t.fields.items() if n == src), (to, src)


def test_email_click_on_all_four_partners():
    rec = complete_record(CLICK, "segment", url="https://shop.test/x", time=1_795_600_800)
    amp, mix = payload("amplitude", rec), payload("mixpanel", rec)
    mpa, seg = payload("mparticle", rec), payload("segment", rec)
    assert amp["event_type"] == "[Appboy] Email Click" and amp["library"] == "Braze"
    assert amp["insert_id"] == rec["id"] and amp["user_id"] == rec["external_user_id"]
    assert amp["time"] == 1_795_600_800_000 and amp["event_properties"]["url"] == rec["url"]
    assert mix["event"] == "Email Click"
    assert mix["properties"]["distinct_id"] == rec["external_user_id"]
    assert mix["properties"]["$insert_id"] == rec["id"]
    assert mix["properties"]["token"] == "tok-123" and mix["properties"]["$partner_id"] == "braze"
    assert mix["properties"]["time"] == 1_795_600_800
    assert mpa["schema_version"] == 2 and mpa["environment"] == "development"
    assert mpa["user_identities"] == {"customerid": rec["external_user_id"],
                                      "email": rec["email_address"]}
    event = mpa["events"][0]
    assert event["event_type"] == "custom_event" and event["data"]["event_name"] == "Email Clicks"
    assert event["data"]["custom_event_type"] == "other"
    assert event["data"]["source_message_id"] == rec["id"]
    assert event["data"]["timestamp_unixtime_ms"] == 1_795_600_800_000
    assert event["data"]["custom_attributes"]["url"] == rec["url"]
    assert seg["type"] == "track" and seg["event"] == "Email Link Clicked"
    assert seg["messageId"] == rec["id"] and seg["anonymousId"] == rec["user_id"]
    assert seg["userId"] == rec["external_user_id"]
    assert seg["timestamp"] == "2026-11-25T10:00:00Z"
    assert seg["properties"]["link_url"] == "https://shop.test/x" and "url" not in seg[
        "properties"]
    assert seg["context"]["traits"]["email"] == rec["email_address"]
    assert seg["context"]["device"]["model"] == rec["device_model"]


def test_custom_event_and_purchase_properties_are_expanded():
    custom = complete_record("users.behaviors.CustomEvent", "amplitude", name="Added To Cart",
                             properties='{"sku": "A-1", "qty": 2}')
    amp, mix = payload("amplitude", custom), payload("mixpanel", custom)
    seg, mpa = payload("segment", custom), payload("mparticle", custom)
    assert amp["event_type"] == "[Appboy] [Custom Event] Added To Cart"
    assert amp["event_properties"]["[Custom event property] sku"] == "A-1"
    assert mix["event"] == "[Braze Custom Event] Added To Cart"
    assert mix["properties"]["[Custom event property] qty"] == 2
    assert seg["event"] == "Added To Cart" and seg["properties"]["sku"] == "A-1"
    assert mpa["events"][0]["data"]["event_name"] == "Added To Cart"
    assert mpa["events"][0]["data"]["custom_attributes"]["qty"] == 2
    for out in (amp["event_properties"], mix["properties"], seg["properties"]):
        assert "properties" not in out and "name" not in out
    purchase = complete_record("users.behaviors.Purchase", "amplitude",
                               properties='{"coupon": "X"}', price=9.5, product_id="p-1")
    amp, mix = payload("amplitude", purchase), payload("mixpanel", purchase)
    assert amp["event_type"] == "[Appboy] Purchase" and amp["productId"] == "p-1"
    assert amp["price"] == 9.5 and amp["event_properties"]["[Purchase property] coupon"] == "X"
    assert mix["event"] == "Purchase" and mix["properties"]["[Purchase property] coupon"] == "X"
    assert mix["properties"]["product_id"] == "p-1"


def test_uninstall_on_mparticle():
    rec = complete_record("users.behaviors.Uninstall", "mparticle")
    out = payload("mparticle", rec)
    assert out["events"][0]["event_type"] == "uninstall"
    assert "event_name" not in out["events"][0]["data"]  # the seed's tab has none
    assert out["device_info"]["ios_idfv"] == rec["device_id"]


@pytest.mark.parametrize("partner,expected", [
    ("amplitude", None), ("mixpanel", "no_external_id"), ("mparticle", "no_external_id"),
    ("segment", None)])
def test_anonymous_user_on_each_partner(partner, expected):
    rec = complete_record(CLICK, partner, anonymous=True)
    out, reason = FORMATTERS[partner].format(rec)
    assert reason == expected
    if partner == "amplitude":  # sent on its device id, no user id
        assert "user_id" not in out and out["device_id"] == rec["device_id"]
    if partner == "segment":
        assert out["anonymousId"] == rec["user_id"] and "userId" not in out
    no_device = {**rec, "device_id": None}
    assert FORMATTERS["amplitude"].format(no_device) == (None, "no_external_id_or_device_id")


def test_fields_braze_adds_later_go_to_partners_only_when_forwarded():
    rec = complete_record(CLICK, "amplitude", machine_open="apple", push_token=None)
    bags = {"amplitude": lambda o: o["event_properties"], "mixpanel": lambda o: o["properties"],
            "segment": lambda o: o["properties"],
            "mparticle": lambda o: o["events"][0]["data"]["custom_attributes"]}
    for partner, bag in bags.items():
        held = PartnerFormatter(partner, CONFIG)
        out, _ = held.format(rec)
        assert "machine_open" not in bag(out)
        assert held.counters == {f"partners/{partner}/new_fields_held_back/machine_open": 1}
        forwarded = PartnerFormatter(partner, CONFIG, forward_new_fields=True)
        out, _ = forwarded.format(rec)
        assert bag(out)["machine_open"] == "apple" and "push_token" not in bag(out)
        assert not forwarded.counters


def test_storage_only_and_unknown_types_are_skipped_with_a_reason():
    bucket = {**make_record("users.RandomBucketNumberUpdate"),
              "event_type": "users.RandomBucketNumberUpdate"}
    orphan = {"id": "o", "user_id": "u", "external_user_id": "e", "event_type": "users.X"}
    for partner, fmt in FORMATTERS.items():
        assert fmt.format(bucket) == (
            None, "storage_only_event")
        assert fmt.format(orphan) == (
            None, "no_mapping_for_event_type")


def test_a_new_catalogue_event_formats_with_no_code_change(catalogue):
    cat = json.loads(catalogue.model_dump_json())
    new = "users.messages.rcs.Send"
    cat["event_types"][new] = {**cat["event_types"]["users.messages.sms.Send"]}
    base = read_json_resource("partners/base.json")
    mappings = build_mappings(cat, TEMPLATES, base)
    rec = {**make_record("users.messages.sms.Send", complete=True), "event_type": new}
    for partner, mapping in mappings.items():
        fmt = PartnerFormatter(partner, CONFIG, mapping=mapping)
        out, reason = fmt.format(rec)
        assert reason is None and json.dumps(out).count(rec["id"]) >= 1, partner
    assert mappings["segment"]["events"][new]["name"] == "Send"


def test_transform_writes_payloads_and_skips():
    known = complete_record(CLICK, "mixpanel")
    anon = complete_record(CLICK, "mixpanel", anonymous=True)
    lines = [json.dumps(r).encode() for r in (known, anon)]
    with TestPipeline() as p:
        out = p | beam.Create([(3, lines)]) | FormatForPartner("mixpanel", CONFIG)
        assert_that(out.payloads | "P" >> beam.Map(lambda s: (s[0], len(s[1]))),
                    equal_to([(3, 1)]), label="payloads")
        assert_that(out.skipped | "S" >> beam.Map(lambda s: [json.loads(x) for x in s[1]]),
                    equal_to([[{"event_type": CLICK, "id": anon["id"],
                                "reason": "no_external_id"}]]), label="skipped")
        assert_that(out.stats, equal_to([{"partners/mixpanel/written": 1,
                                          "partners/mixpanel/eligible": 1,
                                          "partners/mixpanel/not_eligible/no_external_id": 1,
                                          "partners/mixpanel/skipped/no_external_id": 1}]),
                    label="stats")


@pytest.mark.parametrize("seconds", [0, 59, 60, 86_399, 86_400, 951_782_400, 1_795_507_226,
                                     2_147_483_648, 4_102_444_799])
def test_iso8601_is_utc_to_the_second(seconds):
    from datetime import datetime, timezone

    from transforms.partners import _iso8601
    expected = datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert _iso8601(seconds) == _iso8601(seconds) == expected  # computed, then remembered


def test_iso8601_forgets_past_its_bound(monkeypatch):
    import transforms.partners as partners
    monkeypatch.setattr(partners, "_ISO_MAX", 3)
    partners._ISO.clear()
    assert [partners._iso8601(s) for s in (0, 1, 2, 3)][3] == "1970-01-01T00:00:03Z"
    assert list(partners._ISO) == [3]
