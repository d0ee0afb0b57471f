"""azfs:// on Azurite: an export laid out as Braze writes it to Azure Blob Storage
(``AzureBlob`` connector), read and written through Beam's own Azure filesystem, gives
the bytes a local copy of it gives.

Azurite runs in memory with --skipApiVersionCheck and no telemetry (see
tests/fixtures_storage.py); its account key is the documented development one.
"""
import base64
import json
import os
import subprocess
import sys
import time

import pytest

from pipelines.currents_to_partners import run
from tests.conftest import REPO
from tests.fixtures_storage import AZURITE_KEY, free_port
from tests.storage_export import connector_folder, output_files, write_braze_export

# runs real emulators or whole exports: excluded from the quick `pytest -m "not slow"`
pytestmark = pytest.mark.slow

# Two shards: fewer output files keep the runs short; same bytes either way.
TOKEN = ["--mixpanel-token", "mp-placeholder", "--shards", "2"]
INPUT = "azfs://devstoreaccount1/braze-currents/exports/currents"
OUTPUT = "azfs://devstoreaccount1/currents-out/run"


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return write_braze_export(tmp_path_factory.mktemp("az-export") / "currents", "AzureBlob")


@pytest.fixture(scope="module")
def local_run(export, tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("az-local") / "out"
    assert run(["--input", str(export), "--output", str(out), *TOKEN]) == 0
    return output_files(out, str(export))


@pytest.fixture(scope="module")
def uploaded(azurite, export) -> list[str]:
    azurite.container("braze-currents")
    azurite.container("currents-out")
    return azurite.upload_tree(export, "braze-currents", "exports/currents")


@pytest.fixture(scope="module")
def azure_run(azurite, uploaded):
    args = ["--input", INPUT, "--output", OUTPUT, *TOKEN, *azurite.beam_args()]
    return args, run(args)


def test_the_export_is_laid_out_as_braze_writes_it_to_azure(azurite, uploaded):
    conn = connector_folder("AzureBlob")
    assert ".AzureBlob.integration." in conn
    names = azurite.names("braze-currents", "exports/currents")
    assert names == uploaded and len(names) > 15
    assert f"exports/currents/{conn}/event_type=users.messages.email.Click/" \
           f"date=2026-11-24-08/1/0/{conn}+0+0.avro" in names


def test_azure_run_gives_the_bytes_of_a_local_copy(azurite, azure_run, local_run, tmp_path):
    assert azure_run[1] == 0
    names = azurite.download_tree("currents-out", "run", tmp_path)
    assert "summary.json" in names
    assert not [n for n in names if n.startswith("_temporary")]  # committed, then cleaned
    assert output_files(tmp_path, INPUT) == local_run
    summary = json.loads(local_run["summary.json"])
    assert summary["conservation_ok"] and summary["invalid"] and summary["duplicates_dropped"]


def test_file_errors_name_the_truncated_blob_and_the_non_avro_one(azurite, azure_run,
                                                                 tmp_path):
    azurite.download_tree("currents-out", "run", tmp_path)
    errors = [json.loads(line) for p in sorted((tmp_path / "file_errors").glob("part-*"))
              for line in p.read_text().splitlines()]
    reasons = {e["source"].rsplit("+", 1)[-1]: e["reason"] for e in errors}
    assert reasons == {"5.avro": "truncated_file", "6.avro": "not_avro"}
    assert all(e["source"].startswith(f"{INPUT}/") for e in errors)
    dups = [json.loads(line) for p in sorted((tmp_path / "duplicates").glob("part-*"))
            for line in p.read_text().splitlines()]
    recovered = [d for d in dups if d["source"].startswith(f"{INPUT}/recovered/")]
    assert len(recovered) == 5 and {d["event_type"] for d in recovered} == {
        "users.messages.email.Click"}  # the type from the writer schema


def test_azure_rerun_from_the_cli_with_the_environment_connection_string(
        azurite, azure_run, local_run, tmp_path):
    """The command a user types, again into the same azfs:// output (replaced in place),
    the connection string from AZURE_STORAGE_CONNECTION_STRING (not an option), with two
    worker processes (they inherit the variable)."""
    env = {**os.environ, "MIXPANEL_TOKEN": "mp-placeholder",
           "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string}
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.currents_to_partners", *azure_run[0][:4],
         "--shards", "2", "--direct_running_mode=multi_processing",
         "--direct_num_workers=2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Done in" in proc.stdout
    azurite.download_tree("currents-out", "run", tmp_path)
    assert output_files(tmp_path, INPUT) == local_run


def test_azure_prefix_without_avro_files_is_one_clear_line(azurite, uploaded, capsys):
    azurite.client.get_blob_client("braze-currents", "notes/readme.txt").upload_blob(b"hi")
    code = run(["--input", "azfs://devstoreaccount1/braze-currents/notes", "--output",
                "azfs://devstoreaccount1/currents-out/empty", *TOKEN, *azurite.beam_args()])
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        "error: no .avro files found under azfs://devstoreaccount1/braze-currents/notes")


def fails_fast(argv, capsys, limit=15.0) -> str:
    started = time.monotonic()
    code = run(argv)
    took = time.monotonic() - started
    err = capsys.readouterr().err.strip()
    assert code == 2 and took < limit, (code, took, err)
    assert len(err.splitlines()) == 1, err
    return err


def test_missing_azure_credentials_fail_fast(uploaded, capsys):
    err = fails_fast(["--input", INPUT, "--output", OUTPUT, *TOKEN], capsys)
    assert err.startswith(f"error: no Azure credentials for {INPUT}: ")
    assert "--azure_connection_string" in err and "AZURE_STORAGE_CONNECTION_STRING" in err


def test_wrong_azure_key_fails_fast_without_showing_it(azurite, uploaded, capsys):
    wrong_key = base64.b64encode(b"not the account key, 64 bytes long........................"
                                 ).decode()
    conn = azurite.connection_string.replace(AZURITE_KEY, wrong_key)
    err = fails_fast(["--input", INPUT, "--output", OUTPUT, *TOKEN,
                      "--azure_connection_string", conn], capsys)
    assert err.startswith(f"error: Azure refused the credentials for {INPUT} (")
    assert wrong_key not in err and AZURITE_KEY not in err


def test_unreachable_azure_endpoint_fails_fast(azurite, capsys):
    conn = azurite.connection_string.replace(azurite.endpoint,
                                             f"http://127.0.0.1:{free_port()}")
    err = fails_fast(["--input", INPUT, "--output", OUTPUT, *TOKEN,
                      "--azure_connection_string", conn], capsys)
    assert err.startswith(f"error: cannot reach Azure Blob Storage for {INPUT}: ")
    assert AZURITE_KEY not in err


def test_a_path_of_another_account_is_refused(azurite, capsys):
    err = fails_fast(["--input", "azfs://otheraccount/braze-currents/x", "--output", OUTPUT,
                      *TOKEN, *azurite.beam_args()], capsys)
    assert err == ("error: azfs://otheraccount/braze-currents/x names storage account "
                   "'otheraccount', but the credentials are for 'devstoreaccount1'")


def test_unknown_container_is_one_clear_line(azurite, capsys):
    err = fails_fast(["--input", "azfs://devstoreaccount1/no-such-container/x", "--output",
                      OUTPUT, *TOKEN, *azurite.beam_args()], capsys)
    assert err == ("error: cannot use azfs://devstoreaccount1/no-such-container/x: "
                   "ContainerNotFound ('no-such-container')")


def test_malformed_connection_string_is_one_clear_line(uploaded, capsys):
    err = fails_fast(["--input", INPUT, "--output", OUTPUT, *TOKEN,
                      "--azure_connection_string", "AccountKey=not-a-connection-string"],
                     capsys)
    assert err == ("error: the Azure connection string is malformed "
                   "(--azure_connection_string or AZURE_STORAGE_CONNECTION_STRING)")
