"""Identity map, backfill and deletion requests, end to end on an export written from
writer schemas (the catalogue's for CustomEvent, Braze's for UserOrphan and
UserDeleteRequest: tests/braze_schemas.py)."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import orjson
import pytest

from pipelines.currents_to_partners import run
from tests.braze_schemas import newer_record, write_newer
from transforms.identity_map import (_park, _unparked, choose, deletion_needles,
                                     follow_merges)
from transforms.testing import export_path, make_record, write_export

CUSTOM = "users.behaviors.CustomEvent"
TOKEN = ["--mixpanel-token", "tok-test"]
T0 = 1_795_507_200  # 2026-11-24: times below are seconds after it


def custom(n: int, braze_id: str, ext: str | None, t: int, device: str | None = None):
    return make_record(CUSTOM, n, id=f"ev-{n}", user_id=braze_id, external_user_id=ext,
                       time=T0 + t, device_id=device, name="opened")


def orphan(n: int, orphan_id: str, survivor: str, t: int):
    return newer_record("users.UserOrphan", n, id=f"orphan-{n}", user_id=orphan_id,
                        orphaned_by_id=survivor, external_user_id=None, time=T0 + t)


def read_folder(out: Path, folder: str) -> list[dict]:
    return [json.loads(line) for f in sorted((out / folder).glob("part-*.ndjson"))
            for line in f.read_text().splitlines()]


@pytest.fixture(scope="module")
def identity_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("identity")
    events = [
        custom(1, "b-anon", None, 100, device="dev-1"),     # anonymous, then identifies
        custom(2, "b-anon", "alice", 200, device="dev-1"),
        custom(3, "b-o1", None, 50),                        # orphan -> b-o2 -> b-s
        custom(4, "b-o2", None, 60),
        custom(5, "b-s", "sam", 70),
        custom(6, "b-map", None, 80),                       # resolved by the user's map
        custom(7, "b-two", "x1", 400),                      # two external_ids
        custom(8, "b-two", "x2", 500),
        custom(9, "b-two", "x1", 450),
        custom(10, "b-two", None, 460),
        custom(11, "b-del", "dora", 90, device="dev-d"),    # deleted: every partner
        custom(12, "b-del", None, 91, device="dev-d"),
        custom(13, "b-none", None, 92),                     # nothing resolves it
    ]
    write_export(root / "in", {CUSTOM: events})
    write_newer(export_path(root / "in", "users.UserOrphan"), "users.UserOrphan",
                [orphan(1, "b-o1", "b-o2", 300), orphan(2, "b-o2", "b-s", 310),
                 orphan(3, "b-c1", "b-c2", 320), orphan(4, "b-c2", "b-c1", 330)])
    write_newer(export_path(root / "in", "users.UserDeleteRequest"),
                "users.UserDeleteRequest",
                [newer_record("users.UserDeleteRequest", 1, id="del-1", user_id="b-del",
                              time=T0 + 95)])
    user_map = root / "map.csv"
    user_map.write_text("braze_id,external_id\nb-map,maya\nnot,a,valid,row\n"
                        "b-anon,alicia\n")  # the export's evidence (alice) wins
    out = root / "out"
    assert run(["--input", str(root / "in"), "--output", str(out), "--shards", "2",
                "--identity-map", str(user_map), *TOKEN]) == 0
    return out


def test_identity_source_and_resolved_id_on_every_event(identity_run):
    events = {e["id"]: e for e in read_folder(identity_run, "events")}
    got = {i: (e["identity_source"], e["resolved_external_user_id"])
           for i, e in events.items() if i.startswith("ev-")}
    assert got == {
        "ev-1": ("export", "alice"), "ev-2": ("event", "alice"),
        "ev-3": ("merge", "sam"), "ev-4": ("merge", "sam"), "ev-5": ("event", "sam"),
        "ev-6": ("user_map", "maya"),
        "ev-7": ("event", "x1"), "ev-8": ("event", "x2"), "ev-9": ("event", "x1"),
        "ev-10": ("export", "x2"),
        "ev-11": ("event", "dora"), "ev-12": ("export", "dora"),
        "ev-13": ("none", None)}
    # the Currents fields stay as Braze wrote them
    assert events["ev-1"]["external_user_id"] is None
    assert events["ev-3"]["user_id"] == "b-o1"
    assert {i for i, e in events.items() if e.get("user_deleted")} == {
        "ev-11", "ev-12", "del-1"}


def test_partners_receive_backfilled_ids(identity_run):
    mixpanel = {p["properties"]["$insert_id"] if "$insert_id" in p.get("properties", {})
                else None: p for p in read_folder(identity_run, "partners/mixpanel")}
    distinct = sorted(p["properties"]["distinct_id"] for p in mixpanel.values())
    # ev-13 (unresolved) and the deleted user's events are not sent
    assert distinct == sorted(["alice", "alice", "sam", "sam", "sam", "maya",
                               "x1", "x2", "x1", "x2"])
    mparticle = read_folder(identity_run, "partners/mparticle")
    assert sorted(b["user_identities"]["customerid"] for b in mparticle) == distinct
    segment = read_folder(identity_run, "partners/segment")
    assert {s["anonymousId"]: s.get("userId") for s in segment
            if s["anonymousId"] in ("b-o1", "b-map", "b-none")} == {
        "b-o1": "sam", "b-map": "maya", "b-none": None}


def test_deleted_user_reaches_no_partner(identity_run):
    for partner in ("amplitude", "mixpanel", "mparticle", "segment"):
        text = "".join(f.read_text() for f in (identity_run / "partners" / partner)
                       .glob("part-*.ndjson"))
        assert "dora" not in text and "b-del" not in text and "dev-d" not in text, partner
        skipped = read_folder(identity_run, f"partners/{partner}/_skipped")
        assert sorted(s["id"] for s in skipped if s["reason"] == "user_deleted") == [
            "ev-11", "ev-12"], partner  # the request itself: storage_only_event
    assert read_folder(identity_run, "identity/deletions") == [
        {"braze_id": "b-del", "external_id": "dora", "sources": ["export"],
         "requested_at": T0 + 95}]
    summary = json.loads((identity_run / "summary.json").read_text())
    for partner in ("amplitude", "mixpanel", "mparticle", "segment"):
        assert summary["partners"][partner]["skipped_reasons"]["user_deleted"] == 2


def test_map_conflicts_and_errors_outputs(identity_run):
    entries = {e["braze_id"]: e for e in read_folder(identity_run, "identity/map")}
    assert {b: (e["external_id"], e["source"]) for b, e in entries.items()} == {
        "b-anon": ("alice", "export"), "b-s": ("sam", "export"),
        "b-o1": ("sam", "merge"), "b-o2": ("sam", "merge"), "b-map": ("maya", "user_map"),
        "b-two": ("x2", "export"), "b-del": ("dora", "export")}
    assert (entries["b-two"]["first_seen"], entries["b-two"]["last_seen"]) == (
        T0 + 500, T0 + 500)
    assert entries["b-o1"]["merge_hops"] == 2
    conflicts = read_folder(identity_run, "identity/conflicts")
    assert conflicts == [  # in the order of their canonical JSON: by braze_id
        {"kind": "user_map_disagrees", "braze_id": "b-anon", "source": "export",
         "chosen": "alice", "candidates": [{"external_id": "alice", "source": "export"},
                                           {"external_id": "alicia", "source": "user_map"}]},
        {"kind": "merge_cycle", "braze_id": "b-c1", "members": ["b-c1", "b-c2"],
         "chosen": "b-c1"},
        {"kind": "external_ids", "braze_id": "b-two", "source": "export", "chosen": "x2",
         "candidates": [
             {"external_id": "x1", "events": 2, "first_seen": T0 + 400,
              "last_seen": T0 + 450},
             {"external_id": "x2", "events": 1, "first_seen": T0 + 500,
              "last_seen": T0 + 500}]}]
    errors = read_folder(identity_run, "identity/errors")
    assert [(Path(e["source"]).name, e["line"]) for e in errors] == [("map.csv", 3)]


def test_summary_identity_counts(identity_run):
    summary = json.loads((identity_run / "summary.json").read_text())
    ident = summary["identity"]
    # own external_id: ev-2,5,7,8,9,11; backfilled: ev-1,10,12 and the UserDeleteRequest
    # of b-del (export), ev-3,4 and the UserOrphan rows of b-o1, b-o2 (merge), ev-6
    # (map); unresolved: ev-13 and the UserOrphan rows of the cycle b-c1 <-> b-c2
    assert {k: ident[k] for k in ("from_event", "backfilled_export", "backfilled_merge",
                                  "backfilled_user_map", "unresolved", "conflicts",
                                  "orphan_chains")} == {
        "from_event": 6, "backfilled_export": 4, "backfilled_merge": 4,
        "backfilled_user_map": 1, "unresolved": 3, "conflicts": 3, "orphan_chains": 1}
    assert ident["deletion_requests"] == 1 and ident["input_errors"] == 1
    assert sum(ident[k] for k in ("from_event", "backfilled_export", "backfilled_merge",
                                  "backfilled_user_map", "unresolved")) == summary["valid"]
    assert summary["conservation_ok"]
    # eligibility reflects backfill: of the custom events only ev-13 has no external_id
    for partner in ("mixpanel", "mparticle"):
        assert summary["partners"][partner]["not_eligible_reasons"] == {
            "no_external_id": 1}, partner


def test_the_map_is_readable_as_identity_map_and_backfill_can_be_off(identity_run,
                                                                     tmp_path):
    """A later run starts from identity/map/ of this one; --no-backfill-identities gives
    partners only the events' own ids."""
    write_export(tmp_path / "in", {CUSTOM: [custom(20, "b-o1", None, 700),
                                            custom(21, "b-map", None, 701)]})
    out = tmp_path / "out"
    assert run(["--input", str(tmp_path / "in"), "--output", str(out), "--shards", "1",
                "--partners", "mixpanel", "--identity-map",
                str(identity_run / "identity" / "map"), *TOKEN]) == 0
    assert sorted(p["properties"]["distinct_id"]
                  for p in read_folder(out, "partners/mixpanel")) == ["maya", "sam"]
    assert {e["identity_source"] for e in read_folder(out, "events")} == {"user_map"}
    off = tmp_path / "off"
    assert run(["--input", str(tmp_path / "in"), "--output", str(off), "--shards", "1",
                "--partners", "mixpanel", "--no-backfill-identities", "--identity-map",
                str(identity_run / "identity" / "map"), *TOKEN]) == 0
    assert read_folder(off, "partners/mixpanel") == []
    assert {e["identity_source"] for e in read_folder(off, "events")} == {"none"}


def test_events_are_byte_identical_on_rerun(identity_run, tmp_path):
    src = identity_run.parent
    out = tmp_path / "again"
    assert run(["--input", str(src / "in"), "--output", str(out), "--shards", "2",
                "--identity-map", str(src / "map.csv"), *TOKEN]) == 0
    for folder in ("events", "identity/map", "identity/conflicts", "partners/segment"):
        for f in sorted((identity_run / folder).glob("part-*")):
            assert f.read_bytes() == (out / folder / f.name).read_bytes(), f


def test_choose_latest_then_smallest():
    assert choose({"b": [1, 5, 9], "a": [3, 1, 9], "c": [9, 1, 8]}) == "a"


def test_chains_and_cycles():
    merges = [("o1", "o2", 1, "m1"), ("o2", "s", 2, "m2"), ("c1", "c2", 3, "m3"),
              ("c2", "c3", 4, "m4"), ("c3", "c1", 5, "m5"), ("x", "c3", 6, "m6")]
    out = list(follow_merges(merges))
    pairs = sorted((o, s, h) for s, (o, h, _) in (e for e in out if isinstance(e, tuple)))
    assert pairs == [("c2", "c1", 2), ("c3", "c1", 1), ("o1", "s", 2), ("o2", "s", 1),
                     ("x", "c1", 2)]
    cycles = [e.value for e in out if not isinstance(e, tuple)]
    assert cycles == [{"kind": "merge_cycle", "braze_id": "c1",
                       "members": ["c1", "c2", "c3"], "chosen": "c1"}]


# plain ids (the lines are searched for them), and ids no line is searched for
@pytest.mark.parametrize("braze_id,external_id", [("b-x", "xavier"), ("b-é/x", 'xa"vïer')])
def test_deletions_file_covers_braze_id_and_its_external_id(tmp_path, braze_id,
                                                            external_id):
    """--deletions: the listed braze_id's events and the events of other braze_ids with
    the external_id it resolves to reach no partner; a bad line is reported."""
    write_export(tmp_path / "in", {CUSTOM: [
        custom(30, braze_id, external_id, 100), custom(31, braze_id, None, 101),
        custom(32, "b-x2", external_id, 102), custom(33, "b-keep", "kim", 103),
        custom(34, "b-anon", None, 104)]})  # never identified: nothing to backfill
    deletions = tmp_path / "deletions.csv"
    deletions.write_text(
        f'braze_id,note\n{braze_id},asked by email\n"",empty\nb-anon,asked in app\n')
    out = tmp_path / "out"
    assert run(["--input", str(tmp_path / "in"), "--output", str(out), "--shards", "1",
                "--partners", "segment", "--deletions", str(deletions)]) == 0
    assert [p["userId"] for p in read_folder(out, "partners/segment")] == ["kim"]
    assert sorted(s["id"] for s in read_folder(out, "partners/segment/_skipped")) == [
        "ev-30", "ev-31", "ev-32", "ev-34"]
    assert sorted(read_folder(out, "identity/deletions"), key=lambda d: d["braze_id"]) == [
        {"braze_id": "b-anon", "external_id": None, "sources": ["deletions_file"],
         "requested_at": None},
        {"braze_id": braze_id, "external_id": external_id, "sources": ["deletions_file"],
         "requested_at": None}]
    assert [e["line"] for e in read_folder(out, "identity/errors")] == [3]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["identity"]["deleted_events"] == 4
    assert summary["partners"]["segment"]["skipped_reasons"] == {"user_deleted": 4}


def test_deletion_needles_only_for_a_few_plain_ids():
    assert deletion_needles(set(), set()) == ()
    assert deletion_needles({"5f00ab"}, {"user-1"}) == (
        b'"user_id":"5f00ab"', b'"external_user_id":"user-1"')
    for odd in ("é", 'a"b', "a\\b", "a/b", "tab\there"):  # encoders differ, or escape
        assert deletion_needles({"5f00ab"}, {odd}) is None
    assert deletion_needles({f"b{i}" for i in range(9)}, set()) is None  # many: parse


def test_missing_identity_map_is_a_clear_error(tmp_path, capsys):
    write_export(tmp_path / "in", {CUSTOM: [custom(40, "b-y", None, 100)]})
    assert run(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                "--partners", "segment", "--identity-map", str(tmp_path / "nope.csv")]) == 2
    assert "--identity-map" in capsys.readouterr().err


def test_identity_map_from_gs(gcs_emulator, tmp_path):
    """--identity-map on gs:// (a real emulator): NDJSON, a bad line reported by number."""
    write_export(tmp_path / "in", {CUSTOM: [custom(50, "b-gs", None, 100)]})
    (tmp_path / "map").mkdir()
    (tmp_path / "map" / "part-0.ndjson").write_text(
        '{"braze_id": "b-gs", "external_id": "gina"}\n{"braze_id": 7}\n')
    gcs_emulator.bucket("identity-maps")
    gcs_emulator.upload_tree(tmp_path / "map", "identity-maps", "run1/map")
    out = tmp_path / "out"
    assert run(["--input", str(tmp_path / "in"), "--output", str(out), "--partners",
                "mixpanel", "--identity-map", "gs://identity-maps/run1/map", *TOKEN]) == 0
    assert [p["properties"]["distinct_id"] for p in read_folder(out, "partners/mixpanel")] == [
        "gina"]
    assert [(e["source"], e["line"]) for e in read_folder(out, "identity/errors")] == [
        ("gs://identity-maps/run1/map/part-0.ndjson", 2)]


def test_the_map_is_the_same_with_or_without_dedup_facts():
    """ResolveIdentityMap reads what it needs from DeduplicateEvents' facts (the pipeline)
    or, given only the events (a user's pipeline), from the events themselves: the same
    events, map and counts either way, for events with and without their own identity."""
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    from transforms import DeduplicateEvents, ValidateEvents
    from transforms.codec import dumps
    from transforms.identity_map import ResolveIdentityMap

    rows = [custom(1, "b-anon", None, 100), custom(2, "b-anon", "alice", 200),
            custom(3, "b-two", "x1", 400), custom(4, "b-two", "x2", 500),
            custom(5, "b-none", None, 92), custom(6, "b-anon", "", 300),
            custom(7, "b-\"odd\\", None, 1), custom(8, "b-\"odd\\", "o\u00e9", 2)]
    plain = [dumps({**r, "event_type": CUSTOM}) for r in rows[:3]]  # no identity fields

    def outputs(p, with_facts: bool):
        batches = p | f"Rows{with_facts}" >> beam.Create([(CUSTOM, "f.avro", 0, rows, None,
                                                          None)])
        unique = (batches | f"Validate{with_facts}" >> ValidateEvents()).valid | \
            f"Dedup{with_facts}" >> DeduplicateEvents(3)
        ids = unique.events | f"Resolve{with_facts}" >> ResolveIdentityMap(
            buckets=2, facts=unique.facts if with_facts else None)
        events = ids.events | f"Lines{with_facts}" >> beam.FlatMap(lambda sl: sl[1])
        entries = ids.map | f"Map{with_facts}" >> beam.FlatMap(lambda sl: sl[1])
        return events, entries, ids.stats

    with TestPipeline() as p:
        with_facts, without = outputs(p, True), outputs(p, False)
        for i, (a, b) in enumerate(zip(with_facts[:2], without[:2])):
            both = ((a | f"A{i}" >> beam.Map(lambda x: ("a", x)),
                     b | f"B{i}" >> beam.Map(lambda x: ("b", x)))
                    | f"Both{i}" >> beam.Flatten()
                    | f"ByLine{i}" >> beam.Map(lambda kv: (kv[1], kv[0]))
                    | f"Group{i}" >> beam.GroupByKey()
                    | f"Sides{i}" >> beam.Map(lambda kv: sorted(kv[1])))
            assert_that(both, equal_to([["a", "b"]] * (8 if i == 0 else 3)),
                        label=f"same{i}")
        for name, out in (("facts", with_facts), ("events", without)):
            totals = out[2] | f"Sum{name}" >> beam.CombineGlobally(
                lambda ds: dict(sum((Counter(d) for d in ds), Counter())))
            assert_that(totals | f"Identity{name}" >> beam.Map(lambda d: {
                k: v for k, v in d.items() if k in ("identity/from_event",
                                                     "identity/backfilled_export",
                                                     "identity/unresolved")}),
                        equal_to([{"identity/from_event": 4, "identity/backfilled_export": 3,
                                   "identity/unresolved": 1}]), label=f"counts-{name}")
        # events made without ValidateEvents (no identity fields) are annotated as well
        lone = (p | beam.Create([(0, plain)]) | "Plain" >> ResolveIdentityMap(buckets=1))
        assert_that(lone.events | beam.FlatMap(lambda sl: [
            (orjson.loads(x)["identity_source"], orjson.loads(x)["resolved_external_user_id"])
            for x in sl[1]]), equal_to([("export", "alice"), ("event", "alice"),
                                       ("event", "x1")]), label="plain")


def test_parked_events_come_back_as_they_were(tmp_path):
    """Parking (local runner) keeps lines byte for byte: newline-joined when no line has
    a newline of its own, pickled otherwise; an empty shard stays empty."""
    for lines in ([b'{"a":1}', b'{"b":"x\\ny"}', b"{}"], [b'{"a":"raw\nnewline"}', b"x"],
                  [b""], []):
        _, path = _park((3, lines), str(tmp_path))
        assert _unparked(path) == lines
