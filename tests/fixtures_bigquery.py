"""A real local BigQuery emulator (PyPI ``bqemulator``) for the tests, on 127.0.0.1.

Started as its own process on free ports, in-memory. Load jobs read ``gs://`` files
from the disk folder of the session's Cloud Storage emulator (``BQEMU_GCS_LOCAL_ROOT``),
so Beam's FILE_LOADS write their temporary files to the GCS emulator and the BigQuery
emulator loads them from there, as BigQuery loads from Cloud Storage.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request

import pytest

PROJECT = "currents-test"


class BigQueryEmulator:
    def __init__(self, endpoint: str):
        from transforms.bigquery import bigquery_client
        self.endpoint = endpoint
        self.client = bigquery_client(PROJECT, endpoint)

    def rows(self, table: str) -> list[dict]:
        return [dict(r) for r in self.client.list_rows(f"{PROJECT}.{table}")]

    def query(self, sql: str) -> list[dict]:
        return [dict(r) for r in self.client.query(sql).result()]


@pytest.fixture(scope="session")
def bq_emulator(gcs_emulator, tmp_path_factory):
    from tests.conftest import free_port, stop_process
    from tests.install_duckdb_spatial import install
    install()  # no-op when `make` already did it
    rest, grpc = free_port(), free_port()
    log = tmp_path_factory.mktemp("bq-emulator") / "emulator.log"
    env = {**os.environ, "BQEMU_GCS_LOCAL_ROOT": str(gcs_emulator.root),
           "BQEMU_LOG_LEVEL": "warning"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bqemulator", "start", "--rest-host", "127.0.0.1",
             "--rest-port", str(rest), "--grpc-host", "127.0.0.1", "--grpc-port", str(grpc),
             "--ephemeral", "--project", PROJECT],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    endpoint = f"http://127.0.0.1:{rest}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{endpoint}/healthz", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"BigQuery emulator did not start: {log.read_text()}")
                time.sleep(0.3)
        yield BigQueryEmulator(endpoint)
    finally:
        stop_process(proc)
