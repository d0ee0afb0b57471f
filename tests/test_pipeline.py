"""The whole pipeline and its command line, on the bundled sample and on small exports."""
import json
import subprocess
import sys
from collections import Counter

import pytest

from pipelines.currents_to_partners import run
from pipelines.options import bundled_sample
from tests.conftest import REPO, read_ndjson
from transforms.testing import make_record, write_export

CLICK = "users.messages.email.Click"
TOKEN = "mp-secret-4f2a"  # a stand-in secret: it must never reach logs or the summary
WITH_TOKEN = ["--mixpanel-token", TOKEN]


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample") / "output"
    assert run(["--output", str(out), *WITH_TOKEN]) == 0
    return out


def test_sample_run_outputs_and_summary(sample_run, catalogue):
    summary = json.loads((sample_run / "summary.json").read_text())
    events = read_ndjson(sample_run / "events")
    dead = read_ndjson(sample_run / "dead_letter")
    dups = read_ndjson(sample_run / "duplicates")
    # conservation, proven by the outputs themselves
    assert summary["rows_read"] == summary["valid"] + summary["invalid"] + summary[
        "duplicates_dropped"]
    assert summary["conservation_ok"]
    assert (len(events), len(dead), len(dups)) == (
        summary["valid"], summary["invalid"], summary["duplicates_dropped"])
    # every documented type is in the sample, plus one type Braze added later
    assert set(catalogue.event_types) < set(summary["by_event_type"])
    assert summary["unknown_event_types"] == {"users.UserOrphan": 3}
    assert Counter(e["event_type"] for e in events) == summary["by_event_type"]
    keys = [(e["event_type"], e["id"]) for e in events]
    assert len(keys) == len(set(keys))
    assert summary["dead_letter_reasons"] == {
        "implausible_time": 1, "invalid_properties_json": 1, "null_required_field": 1,
        "properties_not_object": 1}
    for d in dead:
        assert set(d) == {"reason", "event_type", "source", "row", "error", "record"}
        assert d["source"].endswith(".avro") and d["record"]["id"]
    # anonymous users are there and counted per partner
    anonymous = sum(1 for e in events if e.get("external_user_id") is None)
    assert anonymous > 0.2 * len(events)
    not_sent = ("users.RandomBucketNumberUpdate", "users.UserOrphan")  # their type's reason
    # partners take the external_id the identity map resolved (docs/identity.md)
    assert summary["partners"]["mixpanel"]["not_eligible"] == sum(
        1 for e in events if e["resolved_external_user_id"] is None
        and e["event_type"] not in not_sent)
    assert summary["identity"]["backfilled_export"] > 0
    for p in summary["partners"].values():
        assert p["eligible"] + p["not_eligible"] == summary["valid"]
    # the newer schema's extra field is kept
    assert any(e.get("bot_score") == 0.93 for e in events)
    assert not (sample_run / "_temporary").exists()


def test_rerun_is_byte_identical(sample_run, tmp_path):
    again = tmp_path / "again"
    assert run(["--output", str(again), *WITH_TOKEN]) == 0
    files = sorted(p.relative_to(sample_run) for p in sample_run.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        assert (sample_run / rel).read_bytes() == (again / rel).read_bytes(), rel


def test_conservation_with_duplicates_everywhere(tmp_path):
    rows = [make_record(CLICK, seed=i) for i in range(30)]
    write_export(tmp_path / "in", [
        {"event_type": CLICK, "rows": rows + rows[:5], "offset": 1},
        {"event_type": CLICK, "rows": rows[10:20], "hour": "2026-11-24-09", "offset": 2},
        {"event_type": CLICK, "rows": [{**rows[0], "time": 0}], "hour": "2026-11-24-10"},
    ])
    assert run(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                "--shards", "3", "--partners", "segment"]) == 0
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (s["rows_read"], s["valid"], s["invalid"], s["duplicates_dropped"]) == (46, 30, 1, 15)


def test_cli_help_explains_the_options():
    out = subprocess.run([sys.executable, "-m", "pipelines.currents_to_partners", "--help"],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0
    for option in ("--input", "--output", "--partners", "--shards", "--runner",
                   "--direct_num_workers", "summary.json", "dead_letter/"):
        assert option in out.stdout


def test_no_avro_files_is_one_clear_line(tmp_path, capsys):
    assert run(["--input", str(tmp_path), "--output", str(tmp_path / "o"), *WITH_TOKEN]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no .avro files") and "\n" not in err


def test_unwritable_output_is_one_clear_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert run(["--input", bundled_sample(), "--output", str(blocker / "out"),
                *WITH_TOKEN]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot write to") and "\n" not in err


def test_bad_options_are_one_clear_line(capsys):
    assert run(["--partners", "amplitude,tiktok", *WITH_TOKEN]) == 2
    err = capsys.readouterr().err.strip()
    assert "tiktok" in err and "\n" not in err


def test_summary_table_is_printed_and_the_token_is_nowhere(tmp_path, capfd, caplog):
    caplog.set_level("DEBUG")
    assert run(["--output", str(tmp_path / "o"), *WITH_TOKEN]) == 0
    printed = capfd.readouterr()
    assert "Run summary" in printed.out and "duplicates dropped" in printed.out
    assert TOKEN not in printed.out + printed.err + caplog.text
    assert TOKEN not in (tmp_path / "o" / "summary.json").read_text()


def test_partner_outputs_account_for_every_event(sample_run):
    summary = json.loads((sample_run / "summary.json").read_text())
    for partner in ("amplitude", "mixpanel", "mparticle", "segment"):
        p = summary["partners"][partner]
        payloads = read_ndjson(sample_run / "partners" / partner)
        skipped = read_ndjson(sample_run / "partners" / partner / "_skipped")
        assert (len(payloads), len(skipped)) == (p["written"], p["skipped"])
        assert p["written"] + p["skipped"] == summary["valid"]
        assert Counter(s["reason"] for s in skipped) == p["skipped_reasons"]
        assert p["written"] > 0
    mixpanel = read_ndjson(sample_run / "partners" / "mixpanel")
    assert all(m["properties"]["token"] == TOKEN for m in mixpanel)


def test_a_selected_partner_without_its_setting_stops_at_start(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MIXPANEL_TOKEN", raising=False)
    assert run(["--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: Mixpanel needs a project token") and "\n" not in err
    assert not (tmp_path / "o").exists()
    assert run(["--output", str(tmp_path / "o"), "--partners", "amplitude,segment"]) == 0
    assert not (tmp_path / "o" / "partners" / "mixpanel").exists() or not any(
        (tmp_path / "o" / "partners" / "mixpanel").glob("part-*"))


def test_a_run_that_fails_part_way_leaves_nothing_that_looks_complete(tmp_path, capsys,
                                                                     monkeypatch):
    """A crash mid-run (injected: a formatter that dies) -> exit 1, no summary, no shards."""
    from transforms import fanout

    def crash(record, not_eligible):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(fanout, "compile_partners", lambda *args: crash)
    out = tmp_path / "o"
    assert run(["--output", str(out), *WITH_TOKEN]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: run failed:") and "\n" not in err
    assert not (out / "summary.json").exists()
    assert not list(out.glob("events/part-*")) and not list(out.glob("partners/*/part-*"))


def test_a_failed_rerun_keeps_the_previous_complete_output(sample_run, tmp_path, monkeypatch):
    import shutil
    from transforms import fanout
    out = tmp_path / "copy"
    shutil.copytree(sample_run, out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    monkeypatch.setattr(fanout, "compile_partners", lambda *args: lambda *a: 1 / 0)
    assert run(["--output", str(out), *WITH_TOKEN]) == 1
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and "_temporary" not in
             str(p)}
    assert after == before


def test_max_invalid_ratio_fails_after_writing_everything(tmp_path, capsys):
    out = tmp_path / "o"
    assert run(["--output", str(out), "--max-invalid-ratio", "0.001", *WITH_TOKEN]) == 1
    assert (out / "summary.json").exists()
    assert "exceeds --max-invalid-ratio" in capsys.readouterr().err
    assert run(["--output", str(out), "--max-invalid-ratio", "0.5", *WITH_TOKEN]) == 0


def test_shards_and_local_workers_follow_the_input_size():
    from pipelines.currents_to_partners import MIN_SHARDS, SHARD_BYTES, auto_shards
    from pipelines.local import PARALLEL_BYTES, local_parallelism
    assert auto_shards(0) == MIN_SHARDS
    assert auto_shards(100 * SHARD_BYTES) == 100
    assert auto_shards(100 * SHARD_BYTES + 1) == 101
    assert local_parallelism([], PARALLEL_BYTES - 1) == []  # small: one process
    assert local_parallelism([], PARALLEL_BYTES) == [
        "--direct_num_workers=2", "--direct_running_mode=multi_processing"]
    assert local_parallelism(["--runner=FnApiRunner"], PARALLEL_BYTES)[-1] == (
        "--direct_running_mode=multi_processing")
    for chosen in (["--direct_num_workers=1"], ["--direct_running_mode", "in_memory"],
                   ["--runner", "DataflowRunner"],
                   ["--direct_num_workers=4", "--direct_running_mode=multi_threading"]):
        assert local_parallelism(chosen, PARALLEL_BYTES) == chosen
    # a worker count alone: processes, at any size (Beam would keep one process)
    for size in (0, PARALLEL_BYTES):
        assert local_parallelism(["--direct_num_workers", "3"], size) == [
            "--direct_num_workers", "3", "--direct_running_mode=multi_processing"]


def test_the_shuffle_goes_through_files_only_on_local_runners():
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines.local import runs_locally
    assert runs_locally(PipelineOptions([]))
    assert runs_locally(PipelineOptions(["--runner", "DirectRunner"]))
    assert not runs_locally(PipelineOptions(["--runner", "DataflowRunner"]))
    assert not runs_locally(PipelineOptions(["--environment_type", "DOCKER"]))  # own disk


def test_a_local_run_shuffles_through_files_it_removes(tmp_path, monkeypatch):
    import tempfile

    import transforms.dedup as dedup
    spilled = []
    spill = dedup._spill
    monkeypatch.setattr(dedup, "_spill", lambda *a: spilled.append(spill(*a)) or spilled[-1])
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    out = tmp_path / "out"
    assert run(["--input", str(bundled_sample()), "--output", str(out), *WITH_TOKEN]) == 0
    paths = {path for refs in spilled for _, (path, _, _) in refs}
    assert paths and all(p.startswith(str(tmp_path / "tmp")) for p in paths)
    assert not list((tmp_path / "tmp").glob("currents-shuffle-*"))  # removed with the run
    assert json.loads((out / "summary.json").read_text())["conservation_ok"]


def test_local_workers_get_capped_arenas_and_one_polars_thread_unless_the_user_chose():
    from pipelines.local import local_worker_env
    env = {}
    local_worker_env(env)
    assert env == {"MALLOC_ARENA_MAX": "2", "POLARS_MAX_THREADS": "1"}
    env = {"MALLOC_ARENA_MAX": "8", "POLARS_MAX_THREADS": "2"}
    local_worker_env(env)
    assert env == {"MALLOC_ARENA_MAX": "8", "POLARS_MAX_THREADS": "2"}


def test_a_run_without_a_runner_never_tries_prism(tmp_path, monkeypatch):
    """The DirectRunner would first try Prism, downloading it from GitHub on every run."""
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.direct import direct_runner
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    from pipelines.local import local_runner

    def no(*args, **kwargs):
        raise AssertionError("the DirectRunner (and its Prism attempt) was used")

    monkeypatch.setattr(direct_runner.SwitchingDirectRunner, "run_pipeline", no)
    out = tmp_path / "out"
    assert run(["--input", str(bundled_sample()), "--output", str(out), *WITH_TOKEN]) == 0
    assert json.loads((out / "summary.json").read_text())["conservation_ok"]
    assert type(local_runner(PipelineOptions([]))) is FnApiRunner  # Beam's own class
    assert type(local_runner(PipelineOptions(["--runner=FnApiRunner"]))) is FnApiRunner
    assert local_runner(PipelineOptions(["--runner", "DirectRunner"])) is None  # chosen


def test_local_worker_processes_are_beams_own_and_get_the_pipeline_options():
    """Beam's harness (its own entry point) in each worker, and the options it runs with
    (e.g. for gs:// clients in the workers) are the run's."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.testing.util import assert_that, equal_to

    from pipelines.local import local_runner

    class _Seen(beam.DoFn):
        def process(self, _):
            import os as o
            import sys as s
            yield (s.modules["__main__"].__spec__.name,
                   "seen-by-workers" in o.environ.get("PIPELINE_OPTIONS", ""))

    options = PipelineOptions(["--direct_num_workers=2", "--job_name=seen-by-workers",
                               "--direct_running_mode=multi_processing"])
    with beam.Pipeline(runner=local_runner(options), options=options) as p:
        seen = p | beam.Create(range(4)) | beam.ParDo(_Seen())
        assert_that(seen, equal_to([("apache_beam.runners.worker.sdk_worker_main",
                                     True)] * 4))


def test_the_command_exits_with_the_run_s_code_and_prints_everything(tmp_path):
    import subprocess
    import sys
    cmd = [sys.executable, "-m", "pipelines.currents_to_partners", "--input",
           str(bundled_sample()), "--output", str(tmp_path / "out"), *WITH_TOKEN]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "Run summary" in done.stdout and done.stdout.rstrip().endswith(
        f"Outputs in {tmp_path / 'out'}")
    bad = subprocess.run([*cmd[:3], "--input", str(tmp_path / "nothing-here"), "--output",
                          str(tmp_path / "o2")], capture_output=True, text=True, timeout=300,
                         cwd=REPO)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ")


@pytest.mark.parametrize("typo, hint", [
    (["--partner", "amplitude"], "--partners"),  # an abbreviation of ours
    (["--batch-siz", "10"], "--batch-size"),
    (["--mixpanel-tokn", "x"], "--mixpanel-token"),
    (["--direct_num_worker=1"], "--direct_num_workers"),  # a misspelt Beam option
    (["--runer", "FnApiRunner"], "--runner"),
])
def test_a_typo_in_an_option_exits_2_naming_the_closest_option(typo, hint, tmp_path,
                                                               capsys):
    assert run(["--output", str(tmp_path / "out"), *WITH_TOKEN, *typo]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: unknown option {typo[0].split('=')[0]}; ")
    assert err.rstrip().endswith(f"did you mean {hint}?")
    assert not (tmp_path / "out").exists()  # nothing ran


def test_beam_options_pass_by_their_full_names_and_stray_words_are_errors(capsys):
    from pipelines.options import parse
    beam_args = ["--direct_num_workers=1", "--runner", "FnApiRunner",
                 "--experiment=use_runner_v2", "--no_auth"]
    _, passed = parse(["--partners", "", *beam_args])
    assert passed == beam_args
    assert run(["--partners", "", "stray"]) == 2
    assert "unexpected argument 'stray'" in capsys.readouterr().err


def test_our_transforms_leave_the_garbage_collector_alone():
    """No process-wide switch: a user's step fused after ours sees the collector as the
    user left it, on or off."""
    import gc

    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.testing.util import assert_that, equal_to

    from transforms import DeduplicateEvents, ValidateEvents
    from transforms.types import RowBatch

    rows = [make_record(CLICK, seed=i) for i in range(20)]
    was = gc.isenabled()
    try:
        for enabled in (True, False):
            (gc.enable if enabled else gc.disable)()
            with beam.Pipeline("FnApiRunner", options=PipelineOptions([])) as p:
                valid = (p | beam.Create([RowBatch(CLICK, "f.avro", 0, rows, None)])
                         | ValidateEvents()).valid
                seen = (valid | "After validate" >> beam.Map(lambda _: gc.isenabled()),
                        (valid | DeduplicateEvents(2)).events | beam.Map(lambda _: gc.isenabled()))
                assert_that(seen[0] | "One" >> beam.Distinct(), equal_to([enabled]),
                            label="validate")
                assert_that(seen[1] | "Two" >> beam.Distinct(), equal_to([enabled]),
                            label="dedup")
            assert gc.isenabled() == enabled
    finally:
        (gc.enable if was else gc.disable)()


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys):
    import pipelines.currents_to_partners as cli

    def interrupted(argv):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "run", interrupted)
    monkeypatch.setattr(sys, "argv", ["currents_to_partners"])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 130
    err = capsys.readouterr().err
    assert err.startswith("error: interrupted: nothing was committed") and "Traceback" not in err
