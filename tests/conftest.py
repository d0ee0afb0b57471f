"""Shared fixtures. Nothing in the tests may reach a Google host or metadata server."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("NO_GCE_CHECK", "True")
os.environ.setdefault("GCE_METADATA_HOST", "127.0.0.1:1")  # fail fast, never hang
os.environ.setdefault("GCE_METADATA_IP", "127.0.0.1:1")    # (the ping google-auth tries)

import pytest  # noqa: E402

from schemas.catalogue import load_catalogue  # noqa: E402

# S3, Azure and BigQuery emulators; imitations of the partner APIs
pytest_plugins = ["tests.fixtures_storage", "tests.fake_partners", "tests.fixtures_bigquery"]

REPO = Path(__file__).resolve().parents[1]
SEEDS = REPO.parent / "shared" / "seeds"


@pytest.fixture(scope="session", autouse=True)
def loopback_only():
    """Name resolution of any host but this machine fails at once, in this process: a
    stray call to a Google host (or the metadata server) is an error, never a hang."""
    import socket
    real = socket.getaddrinfo
    local = {None, "localhost", "::1", socket.gethostname()}

    def guarded(host, *args, **kwargs):
        name = host.decode() if isinstance(host, bytes) else host
        if name not in local and not str(name).startswith("127."):
            raise OSError(f"tests may only reach this machine, not {name!r}")
        return real(host, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket, "getaddrinfo", guarded)
        yield


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


class GcsEmulator:
    """A gcp-storage-emulator process on 127.0.0.1 and an anonymous client for it."""

    def __init__(self, endpoint: str, root: Path):
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage
        self.endpoint = endpoint
        self.root = root  # objects are files here: <root>/<bucket>/<name>
        self.client = storage.Client(project="test", credentials=AnonymousCredentials())

    def bucket(self, name: str):
        """A new, empty bucket (names are unique per test)."""
        return self.client.create_bucket(name)

    def upload_tree(self, local: Path, bucket: str, prefix: str) -> int:
        b = self.client.bucket(bucket)
        files = sorted(p for p in Path(local).rglob("*") if p.is_file())
        for path in files:
            b.blob(f"{prefix}/{path.relative_to(local).as_posix()}").upload_from_filename(
                str(path), timeout=30)
        return len(files)

    def download_tree(self, bucket: str, prefix: str, local: Path) -> list[str]:
        names = []
        for blob in self.client.list_blobs(bucket, prefix=f"{prefix}/", timeout=30):
            rel = blob.name[len(prefix) + 1:]
            target = Path(local) / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(blob.download_as_bytes(timeout=30))
            names.append(rel)
        return sorted(names)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for an emulator."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc) -> None:
    """Stop an emulator process: terminate, then kill if it lingers; always reaped."""
    import subprocess
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory):
    """A real Cloud Storage emulator for the session, on a free port of 127.0.0.1.

    Sets STORAGE_EMULATOR_HOST for this process and the processes it starts (the
    pipeline's GCS client and google-cloud-storage both honour it), and kills the
    emulator at the end.
    """
    import subprocess
    import sys
    import time
    import urllib.request
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    folder = tmp_path_factory.mktemp("gcs-emulator")
    log = folder / "emulator.log"
    with open(log, "wb") as out:  # on disk: the BigQuery emulator reads load files there
        proc = subprocess.Popen(
            [sys.executable, "-m", "gcp_storage_emulator", "--data-dir", str(folder / "data"),
             "start", "--host", "127.0.0.1", "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{endpoint}/storage/v1/b", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"GCS emulator did not start: {log.read_text()}")
                time.sleep(0.2)
        from tests.gcs_credentials import LoopbackCredentials
        credentials = LoopbackCredentials(log.parent)  # see tests/gcs_credentials.py
        saved = {k: os.environ.get(k) for k in ("STORAGE_EMULATOR_HOST", "NO_GCE_CHECK",
                                                "GOOGLE_APPLICATION_CREDENTIALS",
                                                "GOOGLE_CLOUD_PROJECT")}
        os.environ.update(STORAGE_EMULATOR_HOST=endpoint, NO_GCE_CHECK="True",
                          GOOGLE_APPLICATION_CREDENTIALS=str(credentials.path),
                          GOOGLE_CLOUD_PROJECT="emulator")
        try:
            yield GcsEmulator(endpoint, folder / "data" / ".cloudstorage")
        finally:
            credentials.close()
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    finally:
        stop_process(proc)
