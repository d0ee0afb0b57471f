"""PII controls: with drop and with hash, no raw value of a personal field of the input
is anywhere under --output (dead letter and duplicates included); hashes agree across
outputs; a missing salt fails before any data is read."""
from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest

from pipelines.currents_to_partners import run
from schemas.catalogue import load_catalogue
from transforms.pii import PiiFields, looks_personal, rules
from transforms.testing import make_record, write_export

TOKEN = ["--mixpanel-token", "tok-pii"]
SALT = "test-salt-not-a-secret"
TYPES = ("users.messages.email.Send", "users.behaviors.Location",
         "users.messages.banner.Click", "users.behaviors.subscriptiongroup.StateChange",
         "users.behaviors.CustomEvent")
CLICK = "users.messages.email.Click"
EXTRA = {"contact_email": "string", "promo_campaign_name": "string"}


def rows_of(etype: str) -> list[dict]:
    return [make_record(etype, n, complete=True, id=f"{etype}-{n}") for n in range(6)]


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    root = tmp_path_factory.mktemp("pii") / "in"
    files = [{"event_type": t, "rows": rows_of(t)} for t in TYPES]
    files[0]["rows"].append(dict(files[0]["rows"][0]))  # a duplicate, with its email
    files[0]["rows"].append(make_record(TYPES[0], 99, complete=True, id="late",
                                        email_address="dead-letter@example.net", time=5))
    clicks = [make_record(CLICK, n, complete=True, id=f"click-{n}",
                          contact_email=f"contact-{n}@example.org",
                          promo_campaign_name=f"Promo {n}") for n in range(3)]
    files.append({"event_type": CLICK, "rows": clicks, "extra_fields": EXTRA})
    write_export(root, files)
    records = [(f["event_type"], r) for f in files for r in f["rows"]]
    return root, records


def personal_values(records: list[tuple[str, dict]], identities: bool) -> set[str]:
    """Every raw value of a personal field of the input, as text."""
    fields = PiiFields(identities)
    found = set()
    for etype, r in records:
        for f in fields.of(etype, tuple(r)):
            if r[f] is not None:
                found.add(r[f] if isinstance(r[f], str) else json.dumps(r[f]))
    return found


def all_output_text(out: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(out.rglob("*")) if p.is_file())


def digest(value: str) -> str:
    return hmac.new(SALT.encode(), value.encode(), hashlib.sha256).hexdigest()


def test_drop_leaves_no_personal_value_anywhere(export, tmp_path):
    root, records = export
    out = tmp_path / "out"
    assert run(["--input", str(root), "--output", str(out), "--pii", "drop", *TOKEN]) == 0
    values = personal_values(records, identities=False)
    assert "dead-letter@example.net" in values and "contact-0@example.org" in values
    text = all_output_text(out)
    assert [v for v in values if v in text] == []
    summary = json.loads((out / "summary.json").read_text())
    assert summary["invalid"] == 1 and summary["duplicates_dropped"] == 1
    events = [json.loads(line) for f in (out / "events").glob("part-*")
              for line in f.read_text().splitlines()]
    clicks = [e for e in events if e["event_type"] == CLICK]
    # the name rule: an unknown *email* field is personal, a *campaign*_name is not
    assert all("contact_email" not in e and e["promo_campaign_name"].startswith("Promo")
               for e in clicks)
    # identity fields stay without --pii-identities
    assert all(e["external_user_id"] is None or e["external_user_id"].startswith("user-")
               for e in events)


def test_hash_with_identities_same_value_in_every_output(export, tmp_path, monkeypatch):
    root, records = export
    monkeypatch.setenv("CURRENTS_PII_SALT", SALT)
    out = tmp_path / "out"
    assert run(["--input", str(root), "--output", str(out), "--pii", "hash",
                "--pii-identities", *TOKEN]) == 0
    values = personal_values(records, identities=True)
    text = all_output_text(out)
    assert [v for v in values if v in text] == []
    assert SALT not in text
    # the same hash in events/, the dead letter, and each partner's payloads
    sent = next(r for _, r in records if r["id"] == f"{TYPES[0]}-1")
    for folder in ("events", "partners/mixpanel", "partners/mparticle", "partners/segment",
                   "partners/amplitude"):
        folder_text = all_output_text(out / folder)
        assert digest(sent["external_user_id"]) in folder_text, folder
    assert digest(sent["email_address"]) in all_output_text(out / "events")
    assert digest("dead-letter@example.net") in all_output_text(out / "dead_letter")
    mixpanel = [json.loads(line) for f in (out / "partners/mixpanel").glob("part-*")
                for line in f.read_text().splitlines()]
    assert {p["properties"]["distinct_id"] for p in mixpanel} <= {
        digest(r["external_user_id"]) for _, r in records if r.get("external_user_id")}


def test_per_partner_override(export, tmp_path, monkeypatch):
    root, records = export
    monkeypatch.setenv("CURRENTS_PII_SALT", SALT)
    out = tmp_path / "out"
    assert run(["--input", str(root), "--output", str(out), "--partners",
                "segment,amplitude", "--pii-segment", "hash", "--pii-events", "drop"]) == 0
    values = personal_values(records, identities=False)
    amplitude = all_output_text(out / "partners" / "amplitude")
    assert any(v in amplitude for v in values)  # --pii defaults to keep
    for folder in ("partners/segment", "events", "dead_letter", "duplicates"):
        folder_text = all_output_text(out / folder)
        assert [v for v in values if v in folder_text] == [], folder


def test_missing_salt_fails_before_reading(export, tmp_path, monkeypatch, capsys):
    root, _ = export
    monkeypatch.delenv("CURRENTS_PII_SALT", raising=False)
    out = tmp_path / "out"
    assert run(["--input", str(root), "--output", str(out), "--pii-mixpanel", "hash",
                *TOKEN]) == 2
    assert "CURRENTS_PII_SALT" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("policy", ["drop", "hash"])
def test_personal_keys_inside_properties(tmp_path, monkeypatch, policy):
    monkeypatch.setenv("CURRENTS_PII_SALT", SALT)
    custom = "users.behaviors.CustomEvent"
    bags = [{"email": f"prop-{n}@example.com", "First_Name": f"Ann{n}", "plan": "gold",
             "winter_campaign_name": "Winter", "count": n} for n in range(4)]
    rows = [make_record(custom, n, complete=True, id=f"ce-{n}", external_user_id=f"u-{n}",
                        properties=json.dumps(bag)) for n, bag in enumerate(bags)]
    write_export(tmp_path / "in", [{"event_type": custom, "rows": rows}])
    out = tmp_path / "out"
    assert run(["--input", str(tmp_path / "in"), "--output", str(out), "--pii", policy,
                *TOKEN]) == 0
    text = all_output_text(out)
    assert [v for b in bags for v in (b["email"], b["First_Name"]) if v in text] == []
    events = {e["id"]: json.loads(e["properties"])
              for f in (out / "events").glob("part-*")
              for e in map(json.loads, f.read_text().splitlines())}
    segment = {p["messageId"]: p["properties"] for f in (out / "partners/segment").glob(
        "part-*") for p in map(json.loads, f.read_text().splitlines())}
    for n, bag in enumerate(bags):
        want = {"plan": "gold", "winter_campaign_name": "Winter", "count": n}
        if policy == "hash":
            want.update(email=digest(bag["email"]), First_Name=digest(bag["First_Name"]))
        assert events[f"ce-{n}"] == want
        got = {k.removeprefix("[Custom event property] "): v
               for k, v in segment[f"ce-{n}"].items()}
        assert {k: got.get(k) for k in want} == want


def test_name_rule_is_data():
    assert looks_personal("contact_email") and looks_personal("first_name")
    assert looks_personal("bsuid") and looks_personal("push_token")
    assert not looks_personal("canvas_step_name") and not looks_personal("campaign_name")
    assert "*email*" in rules()["name_patterns"]
    # a catalogue field follows the catalogue, whatever its name
    spec = load_catalogue().get("users.behaviors.CustomEvent")
    assert "name" in spec.fields and not spec.fields["name"].pii
    assert "name" not in PiiFields(False).of("users.behaviors.CustomEvent", ("name",))
