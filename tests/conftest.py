"""Shared fixtures. Nothing in the tests may reach a Google host or metadata server."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("NO_GCE_CHECK", "True")
os.environ.setdefault("GCE_METADATA_HOST", "127.0.0.1:1")  # fail fast, never hang
os.environ.setdefault("GCE_METADATA_IP", "127.0.0.1:1")

import pytest  # noqa: E402

from schemas.catalogue import load_catalogue  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SEEDS = REPO.parent / "shared" / "seeds"


@pytest.fixture(scope="session")
def catalogue():
    return load_catalogue()


@pytest.fixture(scope="session")
def seeds() -> Path:
    if not SEEDS.is_dir():
        pytest.skip(f"seed pages not found at {SEEDS}")
    return SEEDS


def read_ndjson(folder: Path) -> list[dict]:
    import json
    rows = []
    for path in sorted(folder.glob("part-*.ndjson")):
        rows += [json.loads(line) for line in path.read_text().splitlines()]
    return rows


class Collector:
    """Gets a PCollection's elements out of a pipeline run, through a file (any runner)."""

    def __init__(self, tmp_path: Path):
        self._dir = tmp_path / "collected"
        self._dir.mkdir(exist_ok=True)
        self._n = 0

    def __call__(self, pcoll, name: str):
        import pickle
        import apache_beam as beam
        path = self._dir / f"{name}.pickle"
        self._n += 1
        (pcoll | f"ToList{name}{self._n}" >> beam.combiners.ToList()
         | f"Save{name}{self._n}" >> beam.Map(lambda xs: path.write_bytes(pickle.dumps(xs))))
        return lambda: pickle.loads(path.read_bytes())


@pytest.fixture
def collect(tmp_path):
    return Collector(tmp_path)
