"""The catalogue holds every documented event type with the seeds' required fields."""
import re

import pytest
from pydantic import ValidationError

from schemas import build_from_seeds
from schemas.catalogue import event_model
from transforms.testing import make_record

# Independent of the builder: scan raw seed text for storage blocks, line by line.
_STORAGE_HEADER = re.compile(r"^// (users\.[A-Za-z0-9_.]+)\s*$")
_FIELD = re.compile(r'^\s*"([^"]+)"\s*:\s*"\((required|optional), ')


def storage_required_fields(text: str) -> dict[str, set[str]]:
    found, current = {}, None
    for line in text.splitlines():
        m = _STORAGE_HEADER.match(line.strip())
        if m:
            current = found.setdefault(m.group(1), set())
            continue
        if current is not None:
            if line.strip() == "}":
                current = None
                continue
            f = _FIELD.match(line)
            if f and f.group(2) == "required":
                current.add(f.group(1))
    return found


def test_all_68_documented_event_types(catalogue):
    assert len(catalogue.event_types) == 68
    categories = [s.category for s in catalogue.event_types.values()]
    assert categories.count("message_engagement") == 59
    assert categories.count("customer_behavior") == 9


def test_required_fields_match_the_seeds(catalogue, seeds):
    expected = {}
    for name in ("004", "000"):
        text = next(seeds.glob(f"{name}_*.txt")).read_text(encoding="utf-8")
        for etype, required in storage_required_fields(text).items():
            expected.setdefault(etype, required)
    assert len(expected) == 67  # + NewsFeedImpression from the old-format 002
    for etype, required in expected.items():
        assert set(catalogue.get(etype).required) == required, etype
    assert set(catalogue.get("users.behaviors.app.NewsFeedImpression").required) == {
        "id", "user_id", "time"}


def test_pii_marks_and_types(catalogue):
    click = catalogue.get("users.messages.email.Click")
    assert click.fields["email_address"].pii and click.fields["email_address"].required
    assert click.fields["user_agent"].type == "string"
    assert catalogue.get("users.behaviors.Purchase").fields["price"].type == "float"
    assert catalogue.get("users.messages.whatsapp.Read").fields["time"].type == "long"
    assert catalogue.get("users.behaviors.app.NewsFeedImpression").fields[
        "external_user_id"].pii  # carried over from the newer seeds by field name


def test_committed_schemas_are_what_the_seeds_give(seeds):
    assert build_from_seeds.main(["--seeds", str(seeds), "--check"]) == 0


@pytest.mark.parametrize("etype", ["users.messages.email.Click", "users.behaviors.Purchase",
                                   "users.behaviors.Location", "users.RandomBucketNumberUpdate"])
def test_derived_pydantic_model(catalogue, etype):
    model = event_model(etype, catalogue.get(etype))
    ok = make_record(etype, complete=True, braze_added_later="kept")
    assert model.model_validate(ok).model_extra == {"braze_added_later": "kept"}
    for field in catalogue.get(etype).required:
        broken = dict(ok)
        del broken[field]
        with pytest.raises(ValidationError):
            model.model_validate(broken)


def test_every_type_has_a_model_accepting_its_own_records(catalogue):
    for etype, spec in catalogue.event_types.items():
        event_model(etype, spec).model_validate(make_record(etype, seed=3, complete=True))
        event_model(etype, spec).model_validate(make_record(etype, seed=4, anonymous=True))


def test_bundled_sample_is_what_the_script_makes(tmp_path):
    from pipelines import make_sample
    from pipelines.options import bundled_sample
    from pathlib import Path
    assert make_sample.main([str(tmp_path / "s")]) == 0
    made = {p.relative_to(tmp_path / "s"): p.read_bytes() for p in (tmp_path / "s").rglob("*.avro")}
    shipped = {p.relative_to(bundled_sample()): p.read_bytes()
               for p in Path(bundled_sample()).rglob("*.avro")}
    assert made == shipped and len(made) == 142
