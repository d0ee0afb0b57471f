"""s3:// on moto's S3 server: an export laid out as Braze writes it to S3, read and written
through Beam's own S3 filesystem, gives the bytes a local copy of it gives.

Credentials are dummies (see tests/fixtures_storage.py); nothing can reach AWS.
"""
import json
import os
import subprocess
import sys
import time

import pytest

from pipelines.currents_to_partners import run
from tests.conftest import REPO
from tests.storage_export import connector_folder, output_files, write_braze_export
from tests.test_dataflow import offline  # noqa: F401  (a fixture)

# runs real emulators or whole exports: excluded from the quick `pytest -m "not slow"`
pytestmark = pytest.mark.slow

# Two shards: Beam makes a new S3 client (~0.1-0.4 s here) for every file it opens,
# writes or renames, so fewer output files keep the runs short; same bytes either way.
TOKEN = ["--mixpanel-token", "mp-placeholder", "--shards", "2"]
INPUT = "s3://braze-currents/exports/currents"


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return write_braze_export(tmp_path_factory.mktemp("s3-export") / "currents", "S3")


@pytest.fixture(scope="module")
def local_run(export, tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("s3-local") / "out"
    assert run(["--input", str(export), "--output", str(out), *TOKEN]) == 0
    return output_files(out, str(export))


@pytest.fixture(scope="module")
def uploaded(moto_s3, export) -> list[str]:
    moto_s3.bucket("braze-currents")
    moto_s3.bucket("currents-out")
    return moto_s3.upload_tree(export, "braze-currents", "exports/currents")


@pytest.fixture(scope="module")
def s3_run(moto_s3, uploaded):
    args = ["--input", INPUT, "--output", "s3://currents-out/run", *TOKEN,
            *moto_s3.beam_args()]
    return args, run(args)


def test_the_export_is_laid_out_as_braze_writes_it_to_s3(moto_s3, uploaded):
    conn = connector_folder("S3")
    assert ".S3.integration." in conn
    keys = moto_s3.keys("braze-currents", "exports/currents")
    assert keys == uploaded and len(keys) > 15
    click = [k for k in keys if "event_type=users.messages.email.Click/date=" in k]
    assert (f"exports/currents/{conn}/event_type=users.messages.email.Click/"
            f"date=2026-11-24-08/1/0/{conn}+0+0.avro") in click  # '+' and '=' in keys


def test_s3_run_gives_the_bytes_of_a_local_copy(moto_s3, s3_run, local_run, tmp_path):
    assert s3_run[1] == 0
    names = moto_s3.download_tree("currents-out", "run", tmp_path)
    assert "summary.json" in names
    assert not [n for n in names if n.startswith("_temporary")]  # committed, then cleaned
    assert output_files(tmp_path, INPUT) == local_run
    summary = json.loads(local_run["summary.json"])
    assert summary["conservation_ok"] and summary["invalid"] and summary["duplicates_dropped"]


def test_file_errors_name_the_truncated_object_and_the_non_avro_one(moto_s3, s3_run,
                                                                   tmp_path):
    moto_s3.download_tree("currents-out", "run", tmp_path)
    errors = [json.loads(line) for p in sorted((tmp_path / "file_errors").glob("part-*"))
              for line in p.read_text().splitlines()]
    reasons = {e["source"].rsplit("+", 1)[-1]: e["reason"] for e in errors}
    assert reasons == {"5.avro": "truncated_file", "6.avro": "not_avro"}
    assert all(e["source"].startswith(f"{INPUT}/") for e in errors)
    dups = [json.loads(line) for p in sorted((tmp_path / "duplicates").glob("part-*"))
            for line in p.read_text().splitlines()]
    recovered = [d for d in dups if d["source"].startswith(f"{INPUT}/recovered/")]
    # outside any event_type= folder, the writer schema names the type: its rows are
    # copies of the Click file's
    assert len(recovered) == 5 and {d["event_type"] for d in recovered} == {
        "users.messages.email.Click"}


def test_s3_rerun_from_the_cli_with_aws_environment_credentials(moto_s3, s3_run, local_run,
                                                                tmp_path):
    """The command a user types, again into the same s3:// output (replaced in place),
    with the keys from the standard AWS variables (no key options) and two worker
    processes, which get the endpoint through Beam's pipeline options."""
    env = {**os.environ, "MIXPANEL_TOKEN": "mp-placeholder",
           "AWS_ACCESS_KEY_ID": "rerun-key", "AWS_SECRET_ACCESS_KEY": "rerun-secret"}
    args = s3_run[0]
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.currents_to_partners", *args[:4], "--shards", "2",
         "--s3_endpoint_url", moto_s3.endpoint,
         "--direct_running_mode=multi_processing", "--direct_num_workers=2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Done in" in proc.stdout
    moto_s3.download_tree("currents-out", "run", tmp_path)
    assert output_files(tmp_path, INPUT) == local_run


def test_s3_prefix_without_avro_files_is_one_clear_line(moto_s3, uploaded, capsys):
    moto_s3.client.put_object(Bucket="braze-currents", Key="notes/readme.txt", Body=b"hi")
    code = run(["--input", "s3://braze-currents/notes", "--output",
                "s3://currents-out/empty", *TOKEN, *moto_s3.beam_args()])
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        "error: no .avro files found under s3://braze-currents/notes")


def fails_fast(argv, capsys, limit=15.0) -> str:
    started = time.monotonic()
    code = run(argv)
    took = time.monotonic() - started
    err = capsys.readouterr().err.strip()
    assert code == 2 and took < limit, (code, took, err)
    assert len(err.splitlines()) == 1, err
    return err


def test_missing_aws_credentials_fail_fast(moto_s3, uploaded, capsys, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    err = fails_fast(["--input", INPUT, "--output", "s3://currents-out/x", *TOKEN,
                      "--s3_endpoint_url", moto_s3.endpoint], capsys)
    assert err.startswith(f"error: no usable AWS credentials for {INPUT} ")
    assert "--s3_access_key_id" in err and "AWS_ACCESS_KEY_ID" in err


def test_wrong_aws_credentials_fail_fast_without_showing_the_secret(moto_s3, uploaded,
                                                                    capsys):
    moto_s3.require_credentials(True)
    try:
        err = fails_fast(["--input", INPUT, "--output", "s3://currents-out/x", *TOKEN,
                          *moto_s3.beam_args("AKIAWRONGKEY", "wrong-secret-value")], capsys)
    finally:
        moto_s3.require_credentials(False)
    assert err.startswith(f"error: S3 refused {INPUT} (InvalidAccessKeyId: ")
    assert "wrong-secret-value" not in err


def test_unreachable_s3_endpoint_fails_fast(uploaded, capsys):
    from tests.fixtures_storage import free_port
    err = fails_fast(["--input", INPUT, "--output", "s3://currents-out/x", *TOKEN,
                      "--s3_endpoint_url", f"http://127.0.0.1:{free_port()}"], capsys)
    assert err.startswith(f"error: cannot reach S3 for {INPUT}: ")


def test_unknown_bucket_is_one_clear_line(moto_s3, capsys):
    err = fails_fast(["--input", "s3://no-such-bucket/x", "--output", "s3://currents-out/x",
                      *TOKEN, *moto_s3.beam_args()], capsys)
    assert err == "error: cannot use s3://no-such-bucket/x: no such bucket 'no-such-bucket'"


@pytest.mark.parametrize("module, path, extra", [
    ("boto3", "s3://braze-currents/x", "aws"),
    ("azure.storage.blob", "azfs://devstoreaccount1/braze-currents/x", "azure")])
def test_without_the_extra_installed_is_one_clear_line(module, path, extra, monkeypatch,
                                                       capsys):
    """What a GCP-only install sees: the module cannot be imported (None in sys.modules
    makes ``import`` fail, as if it were not installed)."""
    monkeypatch.setitem(sys.modules, module, None)
    err = fails_fast(["--input", path, "--output", "/tmp/unused", *TOKEN], capsys, 5.0)
    assert err == (f"error: {path.split(':')[0]}:// paths need the [{extra}] extra: "
                   f"pip install 'braze-currents-beam[{extra}]'")


def test_s3_on_dataflow_without_the_extra_for_the_workers_is_refused(capsys):
    from tests.test_dataflow import DATAFLOW
    err = fails_fast(["--input", INPUT, "--output", "s3://currents-out/df", *TOKEN,
                      *DATAFLOW], capsys, 5.0)
    assert err == ("error: s3:// on Dataflow: the workers need the [aws] extra too; pass "
                   "--requirements_file dataflow/requirements-aws.txt (or an "
                   "--sdk_container_image that has it), see docs/storage.md")


def test_s3_dataflow_dry_run_lists_the_input_and_probes_the_output(offline, moto_s3,
                                                                   uploaded, capsys):
    """The job is built (nothing runs) with the launcher's checks done on moto; the
    image named for the workers is taken to have boto3."""
    from tests.test_dataflow import DATAFLOW
    code = run(["--input", INPUT, "--output", "s3://currents-out/df", *TOKEN,
                *moto_s3.beam_args(), *DATAFLOW,
                "--sdk_container_image", "europe-docker.pkg.dev/p/r/currents-aws:1"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "Dataflow job built" in out and f"files (0.0 MiB) under {INPUT}" in out
    assert moto_s3.keys("currents-out", "df") == []  # the probe was removed


def test_dataflow_requirement_files_pin_what_constraints_pin():
    pins = {line.strip().lower() for line in (REPO / "constraints.txt").read_text().splitlines()}
    for extra in ("aws", "azure"):
        lines = [line.strip() for line in
                 (REPO / "dataflow" / f"requirements-{extra}.txt").read_text().splitlines()
                 if line.strip() and not line.startswith("#")]
        assert lines and all(line.lower() in pins for line in lines), extra
