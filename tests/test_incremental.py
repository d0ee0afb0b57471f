"""Incremental runs (--state): new files only, duplicates across runs, a lock, and the
union of many runs equal to one run over everything. Real Avro files in tmp folders."""
import json
import os
import shutil
import threading
from pathlib import Path

import pytest

from pipelines.currents_to_partners import run
from pipelines.state import Lock, LockHeld, State, iso_time
from tests.conftest import read_ndjson
from transforms.testing import BASE_TIME, make_record, write_export

# runs real emulators or whole exports: excluded from the quick `pytest -m "not slow"`
pytestmark = pytest.mark.slow

CLICK = "users.messages.email.Click"
OPEN = "users.messages.email.Open"
EVENTS_ONLY = ["--partners", "", "--shards", "2"]


def clicks(seeds, **overrides):
    return [make_record(CLICK, seed=s, **overrides) for s in seeds]


def add_file(root: Path, offset: int, rows: list, event_type: str = CLICK) -> None:
    write_export(root, [{"event_type": event_type, "rows": rows, "offset": offset}])


def incremental(tmp_path: Path, *extra: str) -> int:
    return run(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                "--state", str(tmp_path / "state"), *EVENTS_ONLY, *extra])


def latest(tmp_path: Path) -> Path:
    runs = tmp_path / "out" / "runs"
    return runs / (runs / "_latest").read_text().strip()


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_a_later_run_reads_only_new_files_and_drops_redelivered_copies(tmp_path, capsys):
    first = clicks(range(5))
    add_file(tmp_path / "in", 0, first)
    assert incremental(tmp_path) == 0
    run1 = latest(tmp_path)
    s1 = summary(run1)
    assert (s1["rows_read"], s1["valid"], s1["duplicates_across_runs"]) == (5, 5, 0)
    assert s1["run_id"] == run1.name and s1["seen_store"]["entries"] == 5

    # an hour later: a copy of an event run 1 kept, and a new event
    add_file(tmp_path / "in", 100, [first[3], make_record(CLICK, seed=99)])
    assert incremental(tmp_path) == 0
    run2 = latest(tmp_path)
    assert run2.name > run1.name  # sortable by start time
    s2 = summary(run2)
    assert (s2["rows_read"], s2["valid"], s2["duplicates_dropped"],
            s2["duplicates_across_runs"], s2["conservation_ok"]) == (2, 1, 1, 1, True)
    assert s2["by_event_type"] == {CLICK: 1}
    [dup] = read_ndjson(run2 / "duplicates")
    assert (dup["id"], dup["kept_run"], dup["conflicting"]) == (first[3]["id"], run1.name,
                                                                 False)
    assert dup["source"].endswith("+100.avro") and dup["row"] == 0
    assert [e["id"] for e in read_ndjson(run2 / "events")] == [
        make_record(CLICK, seed=99)["id"]]
    assert s2["seen_store"]["entries"] == 6
    # run 1's outputs are untouched
    assert len(read_ndjson(run1 / "events")) == 5

    # nothing new: an empty run, exit 0, one line saying so
    capsys.readouterr()
    assert incremental(tmp_path) == 0
    out = capsys.readouterr().out
    assert sum("Nothing new under" in line for line in out.splitlines()) == 1
    run3 = latest(tmp_path)
    assert run3.name > run2.name
    s3 = summary(run3)
    assert (s3["rows_read"], s3["valid"], s3["conservation_ok"]) == (0, 0, True)
    assert s3["seen_store"]["entries"] == 6  # carried over


def test_a_changed_file_is_reported_and_not_read_twice(tmp_path):
    root = tmp_path / "in"
    add_file(root, 0, clicks(range(3)))
    assert incremental(tmp_path) == 0
    # the same file rewritten with more rows
    add_file(root, 0, clicks(range(4)))
    assert incremental(tmp_path) == 0
    s = summary(latest(tmp_path))
    assert s["rows_read"] == 0
    assert s["files"]["error_reasons"] == {"changed_after_processing": 1}
    [err] = read_ndjson(latest(tmp_path) / "file_errors")
    assert err["reason"] == "changed_after_processing" and err["source"].endswith("+0.avro")
    # reported again on the next run (still changed), never read
    assert incremental(tmp_path) == 0
    assert summary(latest(tmp_path))["files"]["error_reasons"] == {
        "changed_after_processing": 1}


def test_a_failed_run_leaves_the_state_as_it_was(tmp_path, monkeypatch, capsys):
    from transforms import validate
    root = tmp_path / "in"
    add_file(root, 0, clicks(range(3)))
    assert incremental(tmp_path) == 0
    state = tmp_path / "state"
    before = {p: p.read_bytes() for p in state.rglob("*") if p.is_file()}
    add_file(root, 1, clicks(range(3, 6)))

    real = validate.ValidateEvents.expand

    def broken(self, batches):
        import apache_beam as beam

        def boom(batch):
            raise RuntimeError("worker lost")
        return real(self, batches | "Boom" >> beam.Map(boom))

    monkeypatch.setattr(validate.ValidateEvents, "expand", broken)
    assert incremental(tmp_path) == 1
    assert "run failed" in capsys.readouterr().err
    after = {p: p.read_bytes() for p in state.rglob("*") if p.is_file()}
    # every file of the state as it was; at most an unreferenced seen store of the
    # failed run besides (removed by the next commit)
    assert {p: after.get(p) for p in before} == before
    assert all(p.relative_to(state).parts[0] == "seen" for p in set(after) - set(before))
    assert not (state / "lock.json").exists()  # released
    monkeypatch.undo()
    # the next run processes the same new file again
    assert incremental(tmp_path) == 0
    s = summary(latest(tmp_path))
    assert (s["rows_read"], s["valid"], s["files"]["read"]) == (3, 3, 1)
    assert [p.name for p in (state / "seen").iterdir()] == [latest(tmp_path).name]


def test_a_second_run_on_a_locked_state_refuses_and_changes_nothing(tmp_path, capsys):
    add_file(tmp_path / "in", 0, clicks(range(2)))
    (tmp_path / "state").mkdir()
    holder = Lock(str(tmp_path / "state" / "lock.json"), settle=0)
    holder.acquire()
    assert incremental(tmp_path) == 3
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: refusing to start: another run") and "\n" not in err
    assert "lock.json" in err
    assert not (tmp_path / "out").exists()
    assert [p.name for p in (tmp_path / "state").iterdir()] == ["lock.json"]
    holder.release()
    assert incremental(tmp_path) == 0


def test_of_two_locks_taken_at_once_exactly_one_wins(tmp_path):
    path = str(tmp_path / "lock.json")
    results = []

    def take():
        try:
            Lock(path, settle=0.3).acquire()
            results.append("won")
        except LockHeld:
            results.append("refused")

    threads = [threading.Thread(target=take) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["refused", "won"]


def test_an_expired_lock_is_taken_over(tmp_path):
    path = str(tmp_path / "lock.json")
    Lock(path, settle=0).acquire(ttl=-1)  # a run that died: its lock has expired
    mine = Lock(path, settle=0)
    mine.acquire()
    with pytest.raises(LockHeld):
        Lock(path, settle=0).acquire()
    mine.release()
    assert not Path(path).exists()


def _export(root: Path) -> list[tuple[int, str, list]]:
    """Five files over two event types; later files re-deliver copies of earlier ones."""
    a = clicks(range(0, 6))
    b = clicks(range(6, 10))
    o = [make_record(OPEN, seed=s) for s in range(20, 24)]
    files = [(0, CLICK, a), (1, CLICK, b + [a[0], a[1]]), (2, OPEN, o),
             (3, CLICK, [a[2], b[0], a[2]]), (4, OPEN, [o[1], make_record(OPEN, seed=30)])]
    for offset, etype, rows in files:
        add_file(root, offset, rows, etype)
    return files


def _events(folder: Path) -> set[tuple]:
    return {(e["event_type"], e["id"], json.dumps(e, sort_keys=True))
            for e in read_ndjson(folder)}


@pytest.mark.parametrize("split", [
    [[0, 1, 2, 3, 4]],
    [[0], [1], [2], [3], [4]],          # every copy lands in a later run
    [[0, 2], [1, 3, 4]],
    [[4, 3], [0, 1, 2]],                # copies first, originals later
], ids=["one", "each", "two", "reversed"])
def test_the_union_of_incremental_runs_equals_one_run(tmp_path, split):
    full = tmp_path / "full"
    files = _export(full)
    assert run(["--input", str(full), "--output", str(tmp_path / "once"), *EVENTS_ONLY]) == 0
    expected = _events(tmp_path / "once" / "events")
    once = json.loads((tmp_path / "once" / "summary.json").read_text())

    src = {offset: p for p in full.rglob("*.avro")
           for offset in [int(p.stem.rsplit("+", 1)[1])]}
    union, total = set(), {"rows_read": 0, "valid": 0, "duplicates_dropped": 0}
    for batch in split:
        for offset in batch:
            dest = tmp_path / "in" / src[offset].relative_to(full)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src[offset], dest)
        assert incremental(tmp_path) == 0
        s = summary(latest(tmp_path))
        assert s["conservation_ok"]
        for key in total:
            total[key] += s[key]
        got = _events(latest(tmp_path) / "events")
        assert not {k[:2] for k in got} & {k[:2] for k in union}  # never sent twice
        union |= got
    assert union == expected
    assert total == {k: once[k] for k in total}
    assert sum(len(rows) for _, _, rows in files) == total["rows_read"]


def test_the_store_keeps_only_the_window(tmp_path):
    hour = 3600
    old = make_record(CLICK, seed=1, time=BASE_TIME)
    add_file(tmp_path / "in", 0, [old])
    assert incremental(tmp_path, "--dedup-window", "2h") == 0
    # three hours later in event time: the first event falls out of the window
    add_file(tmp_path / "in", 1, [make_record(CLICK, seed=2, time=BASE_TIME + 3 * hour)])
    assert incremental(tmp_path, "--dedup-window", "2h") == 0
    assert summary(latest(tmp_path))["seen_store"]["entries"] == 1
    # a copy of the first event now is beyond the window: it cannot be recognised
    add_file(tmp_path / "in", 2, [old])
    assert incremental(tmp_path, "--dedup-window", "2h") == 0
    s = summary(latest(tmp_path))
    assert (s["valid"], s["duplicates_across_runs"]) == (1, 0)
    # inside the window it is: the event at +3h, re-delivered
    add_file(tmp_path / "in", 3, [make_record(CLICK, seed=2, time=BASE_TIME + 3 * hour)])
    assert incremental(tmp_path, "--dedup-window", "2h") == 0
    assert summary(latest(tmp_path))["duplicates_across_runs"] == 1


def test_a_conflicting_copy_across_runs_is_flagged(tmp_path):
    first = make_record(CLICK, seed=1)
    add_file(tmp_path / "in", 0, [first])
    assert incremental(tmp_path) == 0
    add_file(tmp_path / "in", 1, [{**first, "url": "https://changed.example/"}])
    assert incremental(tmp_path) == 0
    s = summary(latest(tmp_path))
    assert (s["duplicates_across_runs"], s["conflicting_duplicates"]) == (1, 1)
    [dup] = read_ndjson(latest(tmp_path) / "duplicates")
    assert dup["conflicting"] and dup["record"]["url"] == "https://changed.example/"


def test_dedup_window_takes_durations_and_refuses_nonsense(capsys):
    from pipelines.options import duration, parse
    assert [duration(t) for t in ("72h", "90m", "3d", "45s", "600")] == [
        259200, 5400, 259200, 45, 600]
    cfg, _ = parse(["--input", "x", "--output", "y", "--partners", "",
                    "--state", "gs://b/state", "--dedup_window", "1d"])
    assert (cfg.state, cfg.dedup_window) == ("gs://b/state", 86400)
    assert type(cfg).model_fields["dedup_window"].default == 72 * 3600
    with pytest.raises(SystemExit) as exc:  # argparse's one-line error, exit 2
        parse(["--input", "x", "--output", "y", "--dedup-window", "soon"])
    assert exc.value.code == 2
    assert "expected a duration such as 72h" in capsys.readouterr().err


def _at(path: Path, epoch: int) -> Path:
    os.utime(path, (epoch, epoch))
    return path


def test_ledger_retention_forgets_old_files_and_never_reads_them_again(tmp_path, capsys):
    root, t0, hour = tmp_path / "in", 1_790_000_000, 3600
    keep = "--ledger-retention", "1h"

    def avro(offset: int) -> Path:
        return next(root.rglob(f"*+{offset}.avro"))

    add_file(root, 0, clicks(range(3)))
    old = _at(avro(0), t0)
    assert incremental(tmp_path, *keep) == 0
    assert summary(latest(tmp_path))["ledger"] == {
        "entries": 1, "pruned": 0, "before_horizon": 0,
        "horizon": iso_time(t0 - hour)}

    # two hours later, a new file: the first one is older than the newest by more than
    # the retention, so the ledger forgets it
    add_file(root, 100, clicks(range(10, 12)))
    new = _at(avro(100), t0 + 2 * hour)
    assert incremental(tmp_path, *keep) == 0
    s2 = summary(latest(tmp_path))
    assert (s2["rows_read"], s2["valid"]) == (2, 2)
    assert s2["ledger"] == {"entries": 1, "pruned": 1, "before_horizon": 0,
                            "horizon": iso_time(t0 + hour)}
    assert list(State(str(tmp_path / "state")).ledger) == [str(new)]

    # the forgotten file is still listed, and a file arrives with an old update time:
    # neither is read (the horizon), both are counted and named in one line
    add_file(root, 200, clicks(range(20, 22)))
    _at(avro(200), t0)
    capsys.readouterr()
    assert incremental(tmp_path, *keep) == 0
    s3 = summary(latest(tmp_path))
    assert (s3["rows_read"], s3["ledger"]["before_horizon"]) == (0, 2)
    assert "2 files under" in capsys.readouterr().out
    assert old.exists()


def test_without_ledger_retention_every_path_is_kept(tmp_path, capsys):
    root = tmp_path / "in"
    add_file(root, 0, clicks(range(2)))
    _at(next(root.rglob("*+0.avro")), 1_000_000_000)  # years older than the next one
    assert incremental(tmp_path) == 0
    add_file(root, 100, clicks(range(5, 7)))
    assert incremental(tmp_path) == 0
    assert summary(latest(tmp_path))["ledger"] == {
        "entries": 2, "pruned": 0, "before_horizon": 0, "horizon": None}
    assert len(State(str(tmp_path / "state")).ledger) == 2
    capsys.readouterr()  # meaningless without --state: an error before any reading
    assert run(["--input", str(root), "--output", str(tmp_path / "o2"), *EVENTS_ONLY,
                "--ledger-retention", "30d"]) == 2
    assert "--ledger-retention prunes the ledger of --state" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()


def test_state_and_input_on_gs(gcs_emulator, tmp_path, capsys):
    """The same code on gs:// (a real GCS emulator): ledger, seen store and lock."""
    gcs_emulator.bucket("inc-in")
    gcs_emulator.bucket("inc-state")
    local = tmp_path / "local"
    first = clicks(range(4))
    add_file(local, 0, first)
    gcs_emulator.upload_tree(local, "inc-in", "export")
    args = ["--input", "gs://inc-in/export", "--output", str(tmp_path / "out"),
            "--state", "gs://inc-state/s", *EVENTS_ONLY]
    assert run(args) == 0
    assert summary(latest(tmp_path))["valid"] == 4
    add_file(local, 1, [first[0], make_record(CLICK, seed=50)])
    gcs_emulator.upload_tree(local, "inc-in", "export")  # file 0 again: a new generation
    assert run(args) == 0
    s = summary(latest(tmp_path))
    assert (s["rows_read"], s["valid"], s["duplicates_across_runs"]) == (2, 1, 1)
    # the object re-uploaded (same bytes, new generation and update time) is reported
    assert s["files"]["error_reasons"] == {"changed_after_processing": 1}
    # a run holding the lock on gs:// makes the next one refuse
    Lock("gs://inc-state/s/lock.json", settle=0).acquire()
    capsys.readouterr()
    assert run(args) == 3
    assert "refusing to start" in capsys.readouterr().err


def test_dedup_shards_grow_with_the_seen_store(tmp_path, capsys):
    """A big store and a small new hour: shards are sized for the store, not the hour."""
    import pipelines.currents_to_partners as ctp
    add_file(tmp_path / "in", 0, clicks(range(30)))
    args = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
            "--state", str(tmp_path / "state"), "--partners", ""]
    assert run(args) == 0
    assert json.loads((tmp_path / "state" / "state.json").read_text())["seen_entries"] == 30
    add_file(tmp_path / "in", 1, clicks(range(30, 32)))
    old = ctp.SEEN_PER_SHARD
    ctp.SEEN_PER_SHARD = 3
    try:
        assert run(args) == 0
    finally:
        ctp.SEEN_PER_SHARD = old
    assert summary(latest(tmp_path))["shards"] == 10


def test_a_run_whose_lock_was_taken_over_does_not_commit(tmp_path, monkeypatch, capsys):
    """A run that outlived its lock, which another run then took: it must not overwrite
    the state that other run is working from."""
    import pipelines.currents_to_partners as ctp
    add_file(tmp_path / "in", 0, clicks(range(2)))
    real = ctp._execute

    def slow_run(*args, **kwargs):
        code = real(*args, **kwargs)
        # meanwhile this run's lock expired and another run took it over
        (tmp_path / "state" / "lock.json").write_text(json.dumps(
            {"token": "other", "owner": "elsewhere:1", "expires": 4e9}))
        return code

    monkeypatch.setattr(ctp, "_execute", slow_run)
    assert incremental(tmp_path) == 1
    assert "expired during the run" in capsys.readouterr().err
    assert not (tmp_path / "state" / "state.json").exists()
    assert json.loads((tmp_path / "state" / "lock.json").read_text())["token"] == "other"


def test_a_dataflow_dry_run_with_state_builds_and_leaves_the_state(tmp_path, monkeypatch,
                                                                    capsys):
    from apache_beam.internal.gcp import auth
    from apache_beam.runners.dataflow.internal import apiclient

    from tests.test_dataflow import DATAFLOW

    def refuse(*_, **__):
        raise AssertionError("a dry run must not authenticate nor contact Dataflow")
    monkeypatch.setattr(auth._Credentials, "_get_service_credentials", staticmethod(refuse))
    monkeypatch.setattr(apiclient, "DataflowApplicationClient", refuse)
    add_file(tmp_path / "in", 0, clicks(range(2)))
    assert incremental(tmp_path, *DATAFLOW) == 0
    out = capsys.readouterr().out
    assert "Dataflow job built" in out and "left as it was" in out
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == []


def test_state_on_s3(moto_s3, tmp_path):
    """The same state code on s3:// (a real moto server), with the S3 options."""
    moto_s3.bucket("inc-state-s3")
    first = clicks(range(3))
    add_file(tmp_path / "in", 0, first)
    args = ["--state", "s3://inc-state-s3/s", *moto_s3.beam_args()]
    assert run(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                *EVENTS_ONLY, *args]) == 0
    add_file(tmp_path / "in", 1, [first[2]])
    assert run(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                *EVENTS_ONLY, *args]) == 0
    s = summary(latest(tmp_path))
    assert (s["rows_read"], s["valid"], s["duplicates_across_runs"]) == (1, 0, 1)
    keys = moto_s3.keys("inc-state-s3", "s")
    assert "s/state.json" in keys and "s/lock.json" not in keys  # committed, released
    assert any(k.startswith(f"s/seen/{latest(tmp_path).name}/part-") for k in keys)


def test_state_on_azure(azurite, tmp_path):
    """The same state code on azfs:// (Azurite), whose Beam filesystem raises where the
    others answer (a blob that does not exist): two commits, the first one's ledger and
    seen store removed by the second."""
    azurite.container("inc-state-az")
    first = clicks(range(3))
    add_file(tmp_path / "in", 0, first)
    args = ["--state", "azfs://devstoreaccount1/inc-state-az/s", *azurite.beam_args()]
    assert run(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                *EVENTS_ONLY, *args]) == 0
    run1 = latest(tmp_path).name
    add_file(tmp_path / "in", 1, [first[2]])
    assert run(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                *EVENTS_ONLY, *args]) == 0
    s = summary(latest(tmp_path))
    assert (s["rows_read"], s["valid"], s["duplicates_across_runs"]) == (1, 0, 1)
    names = azurite.names("inc-state-az", "s")
    run2 = latest(tmp_path).name
    assert "s/state.json" in names and "s/lock.json" not in names  # committed, released
    assert f"s/ledger/{run2}.zst" in names and f"s/ledger/{run1}.zst" not in names
    assert any(n.startswith(f"s/seen/{run2}/part-") for n in names)
    assert not any(n.startswith(f"s/seen/{run1}/") for n in names)



def test_the_ledger_counts_are_metrics_counters_too(tmp_path):
    """As every count of summary.json: the Dataflow console shows them while it runs."""
    import apache_beam as beam
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines.currents_to_partners import build
    from pipelines.local import local_runner
    from pipelines.options import parse
    from transforms.summary import METRICS_NAMESPACE
    add_file(tmp_path / "in", 0, clicks(range(2)))
    add_file(tmp_path / "in", 1, clicks(range(2, 4)))
    cfg, beam_args = parse(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                            "--state", str(tmp_path / "state"), *EVENTS_ONLY])
    plan = State(str(tmp_path / "state")).plan(cfg.input, "run-1")
    options = PipelineOptions(beam_args)
    p = beam.Pipeline(runner=local_runner(options), options=options)
    build(p, cfg, str(tmp_path / "out" / "_temporary" / "run"), plan=plan)
    result = p.run()
    result.wait_until_finish()
    counters = {c.key.metric.name: c.committed for c in result.metrics().query(
        MetricsFilter().with_namespace(METRICS_NAMESPACE))["counters"]}
    assert counters["ledger/entries"] == 2 and counters["valid"] == 4
