"""Property-based: records generated from the catalogue, corrupted at random."""
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.currents_to_partners import run
from pydantic import ValidationError

from schemas.catalogue import event_model, load_catalogue
from transforms.testing import make_record, write_export
from transforms.validate import _Validator

# runs real emulators or whole exports: excluded from the quick `pytest -m "not slow"`
pytestmark = pytest.mark.slow

CATALOGUE = load_catalogue()
TYPES = sorted(CATALOGUE.event_types)
VALIDATOR = _Validator(CATALOGUE)


def corrupt(record: dict, etype: str, kind: str, pick: int, avro_safe: bool = False) -> str:
    """Break ``record`` in place; returns the reason the validator must give."""
    spec = CATALOGUE.get(etype)
    required = [f for f in spec.required if f not in ("time", "id")]
    if kind == "drop_required":
        record.pop(required[pick % len(required)])
        return "missing_required_field"
    if kind == "null_required":
        record[required[pick % len(required)]] = None
        return "null_required_field"
    if kind == "wrong_type":
        fields = sorted(n for n in spec.fields if n not in ("time", "properties", "id"))
        name = fields[pick % len(fields)]
        kind_of = spec.fields[name].type
        record[name] = {"string": 12, "int": "12", "long": "12", "float": "1.5",
                        "boolean": "yes", "array<string>": "not-a-list"}[kind_of]
        return "wrong_type"
    if kind == "bad_time":
        # milliseconds do not fit an Avro int: only for the in-memory checks
        record["time"] = [0, -5, record["time"] * 1000][pick % (2 if avro_safe else 3)]
        return "implausible_time"
    raise AssertionError(kind)


KINDS = ["drop_required", "null_required", "wrong_type", "bad_time"]


@settings(max_examples=300, deadline=None)
@given(etype=st.sampled_from(TYPES), seed=st.integers(0, 10_000),
       anonymous=st.booleans(), kind=st.sampled_from([None, *KINDS]),
       pick=st.integers(0, 1000), extra=st.dictionaries(
           st.text("abcdefghijklmnopqrstuvwxyz_", min_size=3, max_size=12).map(lambda s: "x_" + s),
           st.one_of(st.none(), st.integers(), st.text(max_size=20), st.booleans()),
           max_size=3))
def test_nothing_valid_is_rejected_and_every_corruption_is_caught(etype, seed, anonymous,
                                                                  kind, pick, extra):
    record = {**make_record(etype, seed=seed, anonymous=anonymous), **extra}
    if kind is None:
        assert VALIDATOR.check(etype, record) is None
        return
    if kind in ("drop_required", "null_required") and len(
            [f for f in CATALOGUE.get(etype).required if f not in ("time", "id")]) == 0:
        return
    expected = corrupt(record, etype, kind, pick)
    verdict = VALIDATOR.check(etype, record)
    assert verdict is not None and verdict[0] == expected, (verdict, expected)


# corruptions an Avro file can carry (a wrong type cannot be written with the right schema;
# test_bad_input.py covers wrong writer types)
AVRO_KINDS = ["null_required", "bad_time"]
row = st.tuples(st.sampled_from(TYPES), st.integers(0, 50), st.sampled_from([None, *AVRO_KINDS]),
                st.integers(1, 3), st.integers(0, 3), st.integers(0, 1000))


@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rows=st.lists(row, min_size=1, max_size=25), strict=st.booleans())
def test_conservation_end_to_end(tmp_path_factory, rows, strict):
    """Every file's writer schema allows nulls: a null required field is dead letter with
    --strict, else a valid row counted under warnings."""
    root = tmp_path_factory.mktemp("prop")
    files: dict[tuple[str, int], list] = {}
    valid_keys, invalid_rows, copies_of_valid, warned = set(), 0, 0, 0
    for etype, seed, kind, copies, file_no, pick in rows:
        record = make_record(etype, seed=seed)
        broken = kind is not None and not (kind == "null_required" and not [
            f for f in CATALOGUE.get(etype).required if f not in ("time", "id")])
        if broken:
            corrupt(record, etype, kind, pick, avro_safe=True)
        if broken and (strict or kind != "null_required"):
            invalid_rows += copies
        else:
            warned += copies if broken else 0
            valid_keys.add((etype, record["id"]))
            copies_of_valid += copies
        for c in range(copies):
            files.setdefault((etype, (file_no + c) % 4), []).append(record)
    written = []
    for (etype, file_no), recs in files.items():  # nullable: how a null required gets written
        write_export(root / "in", [{"event_type": etype, "rows": recs, "offset": file_no,
                                    "nullable": list(CATALOGUE.get(etype).fields)}])
        written += recs
    out = root / "out"
    assert run(["--input", str(root / "in"), "--output", str(out), "--partners", "segment",
                "--shards", "3", *(["--strict"] if strict else [])]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert sum(w["count"] for w in s["warnings"]) == warned
    assert s["rows_read"] == len(written) == s["valid"] + s["invalid"] + s["duplicates_dropped"]
    assert s["valid"] == len(valid_keys)
    assert s["invalid"] == invalid_rows
    assert s["duplicates_dropped"] == copies_of_valid - len(valid_keys)


@settings(max_examples=400, deadline=None)
@given(etype=st.sampled_from(TYPES), seed=st.integers(0, 10_000), kind=st.sampled_from(
    [None, *KINDS]), pick=st.integers(0, 1000), value=st.one_of(
    st.none(), st.integers(-2**40, 2**40), st.floats(), st.text(max_size=8), st.booleans(),
    st.lists(st.one_of(st.text(max_size=3), st.integers()), max_size=2),
    st.sampled_from(['{"a": 1}', "[1]", "{", "", "null"])))
def test_compiled_check_agrees_with_the_pydantic_model(etype, seed, kind, pick, value):
    """The fast path accepts exactly the rows the model accepts (same verdicts, faster)."""
    spec = CATALOGUE.get(etype)
    record = make_record(etype, seed=seed)
    if kind is not None and (kind not in ("drop_required", "null_required") or [
            f for f in spec.required if f not in ("time", "id")]):
        corrupt(record, etype, kind, pick)
    names = sorted(spec.fields)
    record[names[pick % len(names)]] = value  # any value in any field
    fast = VALIDATOR.fast_check(etype)(record)
    model = event_model(etype, spec)
    try:
        model.model_validate(record)
        accepted = True
    except ValidationError:
        accepted = False
    assert fast == accepted, (names[pick % len(names)], value)
