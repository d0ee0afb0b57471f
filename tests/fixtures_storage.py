"""Real S3 and Azure Blob Storage emulators on 127.0.0.1, and clean filesystem options.

- ``moto_s3``: moto's S3 server (``ThreadedMotoServer``, in this process) on a free port,
  with dummy AWS credentials in the environment and no profile files, so nothing can
  reach AWS.
- ``azurite``: the Azurite blob service (npm package, installed by the Makefile into
  ``.azurite/``) on a free port, in memory, ``--skipApiVersionCheck`` (the Azure SDK
  sends an API version newer than Azurite knows).
- every test starts and ends with Beam's ``FileSystems`` options unset, so one backend's
  settings (an S3 endpoint, an Azure connection string) never leak into another test.
"""
from __future__ import annotations

import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
AZURITE = REPO / ".azurite" / "node_modules" / ".bin" / "azurite-blob"
# Azurite's documented development account (public, not a secret)
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/"
               "KBHBeksoGMGw==")


from tests.conftest import free_port, stop_process  # noqa: E402,F401 (tests import free_port here)


@pytest.fixture(autouse=True)
def fresh_filesystem_options():
    """Beam's FileSystems keep one set of options per process: none before and after
    each test."""
    from apache_beam.io.filesystems import FileSystems
    FileSystems.set_options(None)
    yield
    FileSystems.set_options(None)


class MotoS3:
    """A moto S3 server and a boto3 client for it."""

    def __init__(self, endpoint: str):
        import boto3
        self.endpoint = endpoint
        self.client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")

    def beam_args(self, key: str = "testing", secret: str = "testing") -> list[str]:
        """Beam's documented S3 options for this server."""
        return ["--s3_endpoint_url", self.endpoint, "--s3_region_name", "us-east-1",
                "--s3_access_key_id", key, "--s3_secret_access_key", secret]

    def bucket(self, name: str) -> None:
        self.client.create_bucket(Bucket=name)

    def upload_tree(self, local: Path, bucket: str, prefix: str) -> list[str]:
        keys = []
        for path in sorted(p for p in Path(local).rglob("*") if p.is_file()):
            key = f"{prefix}/{path.relative_to(local).as_posix()}"
            self.client.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
            keys.append(key)
        return keys

    def keys(self, bucket: str, prefix: str) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=f"{prefix}/")
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def download_tree(self, bucket: str, prefix: str, local: Path) -> list[str]:
        names = []
        for key in self.keys(bucket, prefix):
            rel = key[len(prefix) + 1:]
            target = Path(local) / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self.client.get_object(Bucket=bucket, Key=key)["Body"].read())
            names.append(rel)
        return names

    def require_credentials(self, on: bool) -> None:
        """Make moto check credentials (unknown keys get InvalidAccessKeyId) or not."""
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset-auth",
                                         data=b"0" if on else b"inf", method="POST",
                                         headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(request, timeout=10):
            pass


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory):
    """moto's S3 server for the session; dummy AWS credentials and no profile files in
    this process's environment (and so in the processes it starts)."""
    import logging
    from moto.server import ThreadedMotoServer
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    nowhere = str(tmp_path_factory.mktemp("aws") / "none")
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
           "AWS_SHARED_CREDENTIALS_FILE": nowhere, "AWS_CONFIG_FILE": nowhere}
    saved = {k: os.environ.get(k) for k in [*env, "AWS_PROFILE", "AWS_SESSION_TOKEN"]}
    os.environ.update(env)
    os.environ.pop("AWS_PROFILE", None)
    os.environ.pop("AWS_SESSION_TOKEN", None)
    try:
        yield MotoS3(f"http://127.0.0.1:{port}")
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


class Azurite:
    """An Azurite blob service and an Azure SDK client for it."""

    def __init__(self, endpoint: str):
        from azure.storage.blob import BlobServiceClient
        self.endpoint = endpoint
        self.connection_string = (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
            f"AccountKey={AZURITE_KEY};BlobEndpoint={endpoint}/{AZURITE_ACCOUNT};")
        self.client = BlobServiceClient.from_connection_string(self.connection_string)

    def beam_args(self) -> list[str]:
        return ["--azure_connection_string", self.connection_string]

    def container(self, name: str) -> None:
        self.client.create_container(name)

    def upload_tree(self, local: Path, container: str, prefix: str) -> list[str]:
        names = []
        for path in sorted(p for p in Path(local).rglob("*") if p.is_file()):
            name = f"{prefix}/{path.relative_to(local).as_posix()}"
            self.client.get_blob_client(container, name).upload_blob(path.read_bytes())
            names.append(name)
        return names

    def names(self, container: str, prefix: str) -> list[str]:
        return sorted(b.name for b in self.client.get_container_client(container).list_blobs(
            name_starts_with=f"{prefix}/"))

    def download_tree(self, container: str, prefix: str, local: Path) -> list[str]:
        names = []
        for name in self.names(container, prefix):
            rel = name[len(prefix) + 1:]
            target = Path(local) / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(
                self.client.get_blob_client(container, name).download_blob().readall())
            names.append(rel)
        return names


@pytest.fixture(scope="session")
def azurite(tmp_path_factory):
    """Azurite's blob service for the session on a free port of 127.0.0.1: in memory,
    any API version, no telemetry (it would call an Azure host)."""
    if not AZURITE.exists():
        pytest.fail(f"Azurite is not installed at {AZURITE}: `make test` installs it "
                    "(make .azurite/node_modules/.bin/azurite-blob)", pytrace=False)
    port = free_port()
    workspace = tmp_path_factory.mktemp("azurite")
    log = workspace / "azurite.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(port),
             "--inMemoryPersistence", "--extentMemoryLimit", "256", "--skipApiVersionCheck",
             "--disableTelemetry", "--silent"],
            cwd=workspace, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{endpoint}/{AZURITE_ACCOUNT}?comp=list",
                                            timeout=2):
                    break
            except urllib.error.HTTPError:
                break  # it answers (without credentials: 403)
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Azurite did not start: {log.read_text()}")
                time.sleep(0.2)
        saved = os.environ.pop("AZURE_STORAGE_CONNECTION_STRING", None)
        try:
            yield Azurite(endpoint)
        finally:
            if saved is not None:
                os.environ["AZURE_STORAGE_CONNECTION_STRING"] = saved
    finally:
        stop_process(proc)
