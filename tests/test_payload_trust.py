"""Payloads users can trust: Braze fields win over user properties, 32-bit floats as
written, every event a partner's identity rule allows, newer Braze types mapped by rule,
mapping overrides, new fields held back, writer-schema nulls, one definition per counter.

Every case goes through the command on a real export: Avro files written with fastavro
with the writer schemas Braze uses (``float`` prices, ``["null", T]`` optional fields,
``tests/braze_schemas.py`` for the types the seeds do not document).
"""
import json
import traceback

import pytest

from pipelines.currents_to_partners import run
from tests.braze_schemas import NEWER_TYPES, newer_record, write_newer
from tests.conftest import read_ndjson
from transforms import FormatForPartners, PartnerFormatter, explain_mapping
from transforms.testing import export_path, make_record, write_export

PARTNERS = ("amplitude", "mixpanel", "mparticle", "segment")
PURCHASE, CUSTOM = "users.behaviors.Purchase", "users.behaviors.CustomEvent"
LOCATION, SMS = "users.behaviors.Location", "users.messages.sms.Delivery"
WA_IN = "users.messages.whatsapp.InboundReceive"
CONFIG = {"mixpanel_token": "tok", "mparticle_environment": "production"}
BAG = {"amplitude": lambda o: o["event_properties"], "mixpanel": lambda o: o["properties"],
       "segment": lambda o: o["properties"],
       "mparticle": lambda o: o["events"][0]["data"]["custom_attributes"]}


def run_export(tmp_path, files, *extra):
    root = write_export(tmp_path / "export", files)
    out = tmp_path / "out"
    code = run(["--input", str(root), "--output", str(out), "--mixpanel-token", "tok",
                "--direct_num_workers=1", *extra])
    return code, out


def payloads(out, partner):
    return {_event_id(partner, p): p for p in read_ndjson(out / "partners" / partner)}


def _event_id(partner, payload):
    return {"amplitude": lambda: payload["insert_id"],
            "mixpanel": lambda: payload["properties"]["$insert_id"],
            "mparticle": lambda: payload["events"][0]["data"]["source_message_id"],
            "segment": lambda: payload["messageId"]}[partner]()


def summary(out):
    return json.loads((out / "summary.json").read_text())


def test_braze_fields_win_over_user_properties(tmp_path):
    purchase = make_record(PURCHASE, seed=1, complete=True, price=9.99, currency="USD",
                           product_id="sku-1", app_id="app-real", external_user_id="u-1",
                           properties=json.dumps({"price": 0, "currency": "EUR",
                                                  "product_id": "other", "app_id": "x"}))
    custom = make_record(CUSTOM, seed=2, complete=True, app_id="app-real", name="Added",
                         device_id="dev-real", external_user_id="u-2",
                         properties=json.dumps({"app_id": "x", "device_id": "d", "id": "i",
                                                "source_request_id": "s", "plan": "gold"}))
    code, out = run_export(tmp_path, {PURCHASE: [purchase], CUSTOM: [custom]})
    assert code == 0
    counts = summary(out)["partners"]
    for partner in PARTNERS:
        got = payloads(out, partner)
        bag_p, bag_c = BAG[partner](got[purchase["id"]]), BAG[partner](got[custom["id"]])
        flat = json.dumps(got[purchase["id"]])
        assert '"EUR"' in flat and '"other"' in flat  # kept, under another name
        if partner in ("segment", "mparticle"):
            assert bag_p["price"] == 9.99 and bag_p["currency"] == "USD"
            assert bag_p["product_id"] == "sku-1" and bag_p["app_id"] == "app-real"
            assert bag_p["[Purchase property] price"] == 0
            assert bag_p["[Purchase property] app_id"] == "x"
            assert bag_c["app_id"] == "app-real"
            assert bag_c["[Custom event property] app_id"] == "x"
            assert bag_c["plan"] == "gold" and bag_c["id"] == "i"  # no collision: own name
            if partner == "segment":
                assert bag_c["device_id"] == "dev-real"
                assert bag_c["[Custom event property] device_id"] == "d"
            else:  # mParticle keeps the device id in device_info, the event id in data
                assert got[custom["id"]]["device_info"]["ios_idfv"] == "dev-real"
                assert bag_c["device_id"] == "d"
            # purchase: price, currency, product_id, app_id; custom: app_id, and
            # device_id (Segment) or source_request_id (mParticle)
            assert counts[partner]["property_collisions"] == 6
        else:  # their prefixes already keep properties apart
            assert bag_p["[Purchase property] price"] == 0
            assert counts[partner]["property_collisions"] == 0
    mpa = payloads(out, "mparticle")[custom["id"]]["events"][0]["data"]
    assert mpa["source_message_id"] == custom["id"]
    assert mpa["custom_attributes"]["source_request_id"] == custom["id"]
    assert mpa["custom_attributes"]["[Custom event property] source_request_id"] == "s"


def test_32_bit_floats_are_written_as_braze_wrote_them(tmp_path):
    values = (9.99, 3.14, 0.1)
    rows = [make_record(PURCHASE, seed=i, complete=True, price=v, external_user_id=f"u{i}")
            for i, v in enumerate(values)]
    bad = make_record(PURCHASE, seed=9, complete=True, price=3.14, properties="not json")
    places = [make_record(LOCATION, seed=i, complete=True, latitude=v, longitude=-v,
                          external_user_id=f"l{i}") for i, v in enumerate(values)]
    code, out = run_export(tmp_path, {PURCHASE: rows + [bad], LOCATION: places})
    assert code == 0
    texts = [p.read_text() for p in (out / "events").glob("part-*")]
    texts += [p.read_text() for p in (out / "dead_letter").glob("part-*")]
    for partner in PARTNERS:
        texts += [p.read_text() for p in (out / "partners" / partner).glob("part-*")]
    everything = "".join(texts)
    assert "9.99" in everything and "0.1" in everything
    assert "9.98999" not in everything and "3.1400001" not in everything
    assert "0.100000001" not in everything
    events = {e["id"]: e for e in read_ndjson(out / "events")}
    assert [events[r["id"]]["price"] for r in rows] == list(values)
    assert [events[r["id"]]["longitude"] for r in places] == [-v for v in values]
    assert read_ndjson(out / "dead_letter")[0]["record"]["price"] == 3.14
    for partner in PARTNERS:
        got = payloads(out, partner)
        dumped = json.dumps(got[rows[0]["id"]])
        assert "9.99" in dumped and "9.98999" not in dumped, partner


def test_sms_without_phone_reaches_mparticle_and_segment_takes_user_id_alone(tmp_path):
    no_phone = make_record(SMS, seed=1, complete=True, to_phone_number=None,
                           external_user_id="u-1")
    phone = make_record(SMS, seed=2, complete=True, to_phone_number="+14155550100",
                        external_user_id="u-2")
    no_braze = make_record(SMS, seed=3, complete=True, user_id="", external_user_id="u-3")
    code, out = run_export(tmp_path, {SMS: [no_phone, phone, no_braze]})
    assert code == 0
    mpa = payloads(out, "mparticle")
    assert set(mpa) == {no_phone["id"], phone["id"], no_braze["id"]}
    assert mpa[no_phone["id"]]["user_attributes"] == {}
    assert mpa[phone["id"]]["user_attributes"] == {"$Mobile": "+14155550100"}
    seg = payloads(out, "segment")[no_braze["id"]]
    assert seg["userId"] == "u-3" and "anonymousId" not in seg
    s = summary(out)
    assert s["partners"]["mparticle"]["skipped"] == 0 and s["partners"]["segment"]["skipped"] == 0
    assert s["warnings"] == []  # optional in the catalogue: only mParticle's tab said required


@pytest.fixture(scope="module")
def newer_run(tmp_path_factory):
    """An export with every newer type (two rows each, one anonymous) and one known type."""
    tmp = tmp_path_factory.mktemp("newer")
    root = tmp / "export"
    for event_type in NEWER_TYPES:
        rows = [newer_record(event_type, 1),
                newer_record(event_type, 2, external_user_id=None)]
        if event_type == "users.UserDeleteRequest":  # not the users of the other rows
            rows = [newer_record(event_type, n, user_id=f"deleted-{n}") for n in (1, 2)]
        write_newer(export_path(root, event_type), event_type, rows)
    out = tmp / "out"
    assert run(["--input", str(root), "--output", str(out), "--mixpanel-token", "tok",
                "--direct_num_workers=1"]) == 0
    return out


SENT = [t for t in NEWER_TYPES if t.startswith("users.") and t.split(".")[1] in (
    "messages", "canvas", "behaviors")]
NOT_SENT = sorted(set(NEWER_TYPES) - set(SENT))


@pytest.mark.parametrize("partner", PARTNERS)
def test_newer_types_reach_every_partner_by_rule(newer_run, partner):
    got = payloads(newer_run, partner)
    skipped = {(s["event_type"], s["id"]): s["reason"]
               for s in read_ndjson(newer_run / "partners" / partner / "_skipped")}
    for event_type in SENT:
        known = newer_record(event_type, 1)
        assert known["id"] in got, (partner, event_type)
    for event_type in NOT_SENT:
        for n in (1, 2):
            assert skipped[event_type, newer_record(event_type, n)["id"]] == \
                "storage_only_event", event_type
    names = {"amplitude": ("event_type", "[Appboy] RCS Delivery"),
             "mixpanel": ("event", "RCS Delivery"), "segment": ("event", "RCS Delivered")}
    rcs = got[newer_record("users.messages.rcs.Delivery", 1)["id"]]
    if partner in names:
        key, name = names[partner]
        assert rcs[key] == name
    else:
        assert rcs["events"][0]["data"]["event_name"] == "RCS Deliveries"
    phone = newer_record("users.messages.rcs.Delivery", 1)["to_phone_number"]
    where = {"segment": lambda p: p["context"]["traits"]["phone"],
             "mparticle": lambda p: p["user_attributes"]["$Mobile"],
             "amplitude": lambda p: p["event_properties"]["to_phone_number"],
             "mixpanel": lambda p: p["properties"]["to_phone_number"]}
    assert where[partner](rcs) == phone  # as the documented SMS types map it
    banner = got[newer_record("users.messages.banner.Dismiss", 1)["id"]]
    if partner == "segment":
        assert banner["event"] == "Banner Dismissed"
    retry = got[newer_record("users.messages.sms.Retry", 1)["id"]]
    assert "SMS Retry" in json.dumps(retry)
    s = json.loads((newer_run / "summary.json").read_text())["partners"][partner]
    assert s["written"] + s["skipped"] == 2 * len(NEWER_TYPES)


def test_mapping_overrides_rename_add_and_disable(tmp_path):
    overrides = {
        "segment": {"events": {
            "users.messages.email.Click": {
                "name": "Email Clicked",
                "fields": [{"to": "properties.source", "const": "braze-currents"}],
                "drop_fields": ["properties.user_agent"]},
            "users.messages.email.Open": {"sendable": False, "reason": "not_wanted"}}},
        "amplitude": {"events": {"users.messages.rcs.Delivery": {"name": "RCS Delivered"}}},
    }
    path = tmp_path / "overrides.json"
    path.write_text(json.dumps(overrides))
    click = make_record("users.messages.email.Click", seed=1, complete=True)
    opened = make_record("users.messages.email.Open", seed=1, complete=True)
    code, out = run_export(tmp_path, {"users.messages.email.Click": [click],
                                      "users.messages.email.Open": [opened]},
                           "--mapping-overrides", str(path))
    assert code == 0
    seg = payloads(out, "segment")
    assert seg[click["id"]]["event"] == "Email Clicked"
    assert seg[click["id"]]["properties"]["source"] == "braze-currents"
    assert "user_agent" not in seg[click["id"]]["properties"]
    assert opened["id"] not in seg
    assert summary(out)["partners"]["segment"]["skipped_reasons"]["not_wanted"] == 1
    assert payloads(out, "mixpanel")[click["id"]]["event"] == "Email Click"  # untouched
    rcs = {**newer_record("users.messages.rcs.Delivery", 1), "event_type":
           "users.messages.rcs.Delivery"}
    fmt = PartnerFormatter("amplitude", CONFIG,
                           overrides={"amplitude": overrides["amplitude"]["events"]})
    assert fmt.format(rcs)[0]["event_type"] == "[Appboy] RCS Delivered"


@pytest.mark.parametrize("content,message", [
    ('{"hubspot": {"events": {}}}', "hubspot: unknown key"),
    ('{"segment": {"events": {"users.messages.email.Click": {"nmae": "x"}}}}',
     "segment.events.users.messages.email.Click.nmae: unknown key"),
    ('{"segment": {"events": {"users.messages.email.Click": {"fields": '
     '[{"to": "timestamp", "from": "time", "convert": "millis"}]}}}}',
     "fields.0.convert"),
    ('{"segment": ', "is not JSON"),
])
def test_bad_mapping_overrides_fail_before_reading(tmp_path, capsys, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    code = run(["--input", str(tmp_path / "nowhere"), "--output", str(tmp_path / "out"),
                "--mixpanel-token", "tok", "--mapping-overrides", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("forward", [False, True])
def test_new_fields_are_held_back_unless_forwarded(tmp_path, forward):
    rec = make_record("users.messages.whatsapp.Send", seed=1, complete=True,
                      external_user_id="u-1", bsuid="bs-1", flow_id="f-1")
    files = [{"event_type": "users.messages.whatsapp.Send", "rows": [rec],
              "extra_fields": {"bsuid": "string", "flow_id": "string"}}]
    code, out = run_export(tmp_path, files, *(["--forward-new-fields"] if forward else []))
    assert code == 0
    event = read_ndjson(out / "events")[0]
    assert event["bsuid"] == "bs-1"  # always kept in events/
    for partner in PARTNERS:
        bag = BAG[partner](payloads(out, partner)[rec["id"]])
        held = summary(out)["partners"][partner]["new_fields_held_back"]
        if forward:
            assert bag["bsuid"] == "bs-1" and bag["flow_id"] == "f-1" and held == {}
        else:
            assert "bsuid" not in bag and "flow_id" not in bag
            assert held == {"bsuid": 1, "flow_id": 1}


@pytest.mark.parametrize("strict", [False, True])
def test_nulls_the_writer_schema_allows(tmp_path, strict):
    rec = make_record(WA_IN, seed=1, complete=True, user_phone_number=None,
                      media_urls=["https://x.test/a.png", None], external_user_id="u-1")
    files = [{"event_type": WA_IN, "rows": [rec], "nullable": ["user_phone_number"],
              "nullable_items": ["media_urls"]}]
    code, out = run_export(tmp_path, files, *(["--strict"] if strict else []))
    assert code == 0
    s = summary(out)
    if strict:
        assert s["invalid"] == 1 and s["dead_letter_reasons"] == {"null_required_field": 1}
        assert s["warnings"] == []
    else:
        assert s["valid"] == 1 and s["invalid"] == 0
        assert read_ndjson(out / "events")[0]["media_urls"] == ["https://x.test/a.png", None]
        assert s["warnings"] == [{"event_type": WA_IN, "field": "user_phone_number",
                                  "reason": "null_allowed_by_writer_schema", "count": 1}]


def test_counters_have_one_definition(tmp_path):
    """not_eligible equals the identity reasons in _skipped/, and written + skipped ==
    valid for each partner, on the bundled sample (unknown types, storage-only types,
    anonymous users)."""
    out = tmp_path / "out"
    assert run(["--output", str(out), "--mixpanel-token", "tok",
                "--direct_num_workers=1"]) == 0
    s = summary(out)
    identity = {"no_external_id", "no_external_id_or_device_id", "no_braze_id_or_external_id"}
    for partner in PARTNERS:
        p = s["partners"][partner]
        lines = read_ndjson(out / "partners" / partner / "_skipped")
        by_reason = {}
        for line in lines:
            by_reason[line["reason"]] = by_reason.get(line["reason"], 0) + 1
        assert p["not_eligible_reasons"] == {r: n for r, n in by_reason.items() if r in identity}
        assert p["written"] + p["skipped"] == s["valid"]
        assert p["eligible"] + p["not_eligible"] == s["valid"]
        assert p["skipped_reasons"] == by_reason


@pytest.mark.parametrize("kwargs,message", [
    ({"partners": ("mixpanel",), "config": {}}, "mixpanel needs 'mixpanel_token'"),
    ({"config": {"mixpanel_token": "t", "mparticle_env": "x"}}, "unknown option 'mparticle_env'"),
    ({"config": {"mixpanel_token": "t", "mparticle_environment": "staging"}},
     "mparticle_environment"),
    ({"config": CONFIG,
      "overrides": {"segment": {"events": {"users.UserOrphan": {"sendable": True}}}}},
     "needs its 'name' and 'fields'"),
])
def test_formatters_check_their_options_when_built(kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        FormatForPartners(**kwargs)
    assert "secret" not in str(info.value)
    if "partners" not in kwargs:  # the one-partner view checks the same way
        with pytest.raises(ValueError, match=message):
            from transforms import FormatForPartner
            FormatForPartner("segment", **kwargs)


def test_explain_mapping_and_tracebacks_show_the_generated_code(capsys):
    source = explain_mapping(SMS, ["mparticle"])
    assert "def build(r, C):" in source and "'$Mobile'" in source
    assert run(["--explain-mapping", SMS, "--partners", "segment"]) == 0
    printed = capsys.readouterr().out
    assert "# segment" in printed and "'phone'" in printed and "tok" not in printed
    fmt = PartnerFormatter("segment", CONFIG)
    broken = {**make_record(CUSTOM, seed=1, complete=True), "event_type": CUSTOM,
              "properties": "{not json"}
    with pytest.raises(ValueError):
        try:
            fmt.format(broken)
        except ValueError:
            assert "loads(props).items()" in traceback.format_exc()
            raise
