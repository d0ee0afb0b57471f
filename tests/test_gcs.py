"""Real storage and real scale: gs:// on a GCS emulator, several worker processes.

One export (the bundled sample plus a broken file, so every output folder has lines) is
run three ways through the real CLI entry point ``run()``: one process on local paths,
two worker processes (``--direct_running_mode=multi_processing``) on local paths, and one
process on ``gs://`` paths of a real emulator process. All outputs must be identical,
byte for byte (for gs://, after writing the input root the same way: the ``source`` of a
row is its full path).
"""
import json
import shutil
from pathlib import Path

import pytest

from pipelines.currents_to_partners import run
from pipelines.options import bundled_sample
from tests.conftest import REPO

# runs real emulators or whole exports: excluded from the quick `pytest -m "not slow"`
pytestmark = pytest.mark.slow

TOKEN = ["--mixpanel-token", "mp-placeholder"]
ROOT = "<INPUT>"


def output_files(folder: Path, input_root: str) -> dict[str, bytes]:
    """Every output file, relative path -> bytes with the input root written as <INPUT>."""
    return {p.relative_to(folder).as_posix(): p.read_bytes().replace(input_root.encode(),
                                                                       ROOT.encode())
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("export") / "currents"
    shutil.copytree(bundled_sample(), root)
    broken = next(root.rglob("event_type=users.messages.email.Click")) / "broken.avro"
    broken.write_bytes(b"this is not an Avro file")
    return root


@pytest.fixture(scope="module")
def single_process(export, tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("single") / "out"
    assert run(["--input", str(export), "--output", str(out), *TOKEN]) == 0
    return output_files(out, str(export))


def test_the_reference_run_fills_every_output_folder(single_process):
    folders = {name.rsplit("/", 1)[0] for name in single_process if "/" in name}
    assert folders == {"events", "dead_letter", "duplicates", "file_errors", "identity/map",
                       *(f"partners/{p}{sub}" for p in ("amplitude", "mixpanel", "mparticle",
                                                        "segment") for sub in ("", "/_skipped"))}
    summary = json.loads(single_process["summary.json"])
    assert summary["conservation_ok"] and summary["invalid"] and summary["duplicates_dropped"]


def test_multi_process_run_gives_the_same_bytes(export, single_process, tmp_path):
    out = tmp_path / "out"
    assert run(["--input", str(export), "--output", str(out), *TOKEN,
                "--direct_running_mode=multi_processing", "--direct_num_workers=2"]) == 0
    assert output_files(out, str(export)) == single_process


@pytest.fixture(scope="module")
def gcs_run(gcs_emulator, export):
    """The same export uploaded to the emulator and run from gs:// to gs://."""
    gcs_emulator.bucket("currents-in")
    gcs_emulator.bucket("currents-out")
    assert gcs_emulator.upload_tree(export, "currents-in", "export/2026") > 100
    args = ["--input", "gs://currents-in/export/2026", "--output", "gs://currents-out/run",
            *TOKEN]
    return args, run(args)


def test_gs_run_gives_the_same_bytes(gcs_emulator, gcs_run, single_process, tmp_path):
    _, code = gcs_run
    assert code == 0
    names = gcs_emulator.download_tree("currents-out", "run", tmp_path)
    assert "summary.json" in names
    assert not [n for n in names if n.startswith("_temporary")]
    assert output_files(tmp_path, "gs://currents-in/export/2026") == single_process


def test_gs_input_without_avro_files_is_one_clear_line(gcs_emulator, gcs_run, capsys):
    code = run(["--input", "gs://currents-in/nothing-here", "--output",
                "gs://currents-out/empty", *TOKEN])
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        "error: no .avro files found under gs://currents-in/nothing-here")


def test_gs_rerun_from_the_cli_with_two_worker_processes(gcs_emulator, gcs_run,
                                                         single_process, tmp_path):
    """The command a user types, again into the same gs:// output (replaced in place), with
    worker processes that must also reach the emulator: they get STORAGE_EMULATOR_HOST
    and the loopback credentials (tests/gcs_credentials.py) from the environment."""
    import os
    import subprocess
    import sys
    env = {**os.environ, "MIXPANEL_TOKEN": "mp-placeholder"}
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.currents_to_partners",
         *gcs_run[0][:4],
         "--direct_running_mode=multi_processing", "--direct_num_workers=2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Done in" in proc.stdout
    assert "credentials" not in proc.stderr.lower()  # ADC found at once, no fallback
    assert "WARN" not in proc.stderr  # Beam's relayed worker start-up warnings are muted
    gcs_emulator.download_tree("currents-out", "run", tmp_path)
    assert output_files(tmp_path, "gs://currents-in/export/2026") == single_process
