"""The wheel is all a worker needs: built from setup.py, installed into a clean
virtualenv with the pinned versions, run from a folder outside the repository.

Slow-ish (~1-2 min, most of it pip installing apache-beam[gcp] from pip's cache) but part
of the normal suite: a missing data file would otherwise show up only on Dataflow.
"""
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow  # pip installs into a new virtualenv


def _run(cmd, timeout, **kwargs):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, **kwargs)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_wheel_installs_into_a_clean_venv_and_runs_the_bundled_sample(tmp_path):
    # built from a copy: an in-tree build/ could carry files deleted since into the wheel
    src, dist = tmp_path / "src", tmp_path / "dist"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("pipelines", "transforms", "schemas"):
        shutil.copytree(REPO / folder, src / folder, ignore=ignore)
    for name in ("setup.py", "constraints.txt", "README.md"):
        shutil.copy(REPO / name, src / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", dist, src],
         timeout=150)
    (wheel,) = dist.glob("braze_currents_beam-*.whl")

    names = set(zipfile.ZipFile(wheel).namelist())
    sample = sorted(p.relative_to(REPO).as_posix()
                    for p in (REPO / "pipelines" / "sample_export").rglob("*") if p.is_file())
    schemas = sorted(p.relative_to(REPO).as_posix()
                     for p in [*(REPO / "schemas").glob("*.json"),
                               *(REPO / "schemas" / "partners").glob("*.json")])
    assert sample and set(sample) <= names
    assert "schemas/catalogue.json" in schemas and "schemas/partners/segment.json" in schemas
    assert set(schemas) <= names
    assert {"pipelines/currents_to_partners.py", "pipelines/options.py",
            "transforms/read.py", "schemas/catalogue.py"} <= names

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], timeout=120)
    python = venv / "bin" / "python"
    _run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
          "-c", REPO / "constraints.txt", wheel], timeout=170)

    elsewhere = tmp_path / "elsewhere"  # not the repository: only the wheel can be imported
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["MIXPANEL_TOKEN"] = "mp-placeholder"
    where = _run([python, "-c", "import pipelines, schemas, transforms; "
                  "print(pipelines.__file__, schemas.__file__, transforms.__file__)"],
                 timeout=60, cwd=elsewhere, env=env).stdout.split()
    assert all(Path(w).is_relative_to(venv) for w in where), where
    _run([python, "-m", "pipelines.currents_to_partners", "--output", "out"],
         timeout=180, cwd=elsewhere, env=env)
    summary = json.loads((elsewhere / "out" / "summary.json").read_text())
    assert summary["conservation_ok"]
    assert (summary["rows_read"], summary["valid"], summary["invalid"],
            summary["duplicates_dropped"]) == (790, 684, 4, 102)
    assert summary["partners"]["segment"]["written"] == 669
    # the console script: the same run, in Beam's own worker processes
    script = _run([venv / "bin" / "currents-to-partners", "--output", "out2",
                   "--direct_num_workers=2", "--direct_running_mode=multi_processing"],
                  timeout=180, cwd=elsewhere, env=env)
    assert "Done in" in script.stdout
    again = json.loads((elsewhere / "out2" / "summary.json").read_text())
    assert again["partners"] == summary["partners"] and again["valid"] == 684
