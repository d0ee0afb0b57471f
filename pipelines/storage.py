"""s3:// and azfs:// paths: Beam's own filesystems, set up and checked before a run.

Beam reads and writes ``s3://`` (``apache-beam[aws]``, boto3) and ``azfs://``
(``apache-beam[azure]``) through the same ``FileSystems`` calls as local paths and
gs://, configured by its documented options (``--s3_endpoint_url``,
``--s3_access_key_id``, ``--s3_secret_access_key``, ``--s3_region_name``,
``--azure_connection_string``, ``--blob_service_endpoint``, ...) or the clients' standard
environment (``AWS_*`` variables and profiles, ``AZURE_STORAGE_CONNECTION_STRING``).

Beam's clients retry a failed call with exponential backoff for minutes (a missing AWS
key is a "server error" to it), so before the first listing each bucket or container is
asked once, with no retries and short timeouts, whether these credentials may list it:
a refusal is one clear line (``StorageError``), not minutes of retries. Secrets never
appear in a message.
"""
from __future__ import annotations

import importlib
import logging
import os
from typing import Any

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import (AzureOptions, PipelineOptions, S3Options,
                                                  SetupOptions, StandardOptions,
                                                  WorkerOptions)

# Seconds for the checks: long enough for a slow link, short enough to be "fail fast"
CONNECT_TIMEOUT = 5
READ_TIMEOUT = 20

_EXTRAS = {"s3": ("boto3", "aws"), "azfs": ("azure.storage.blob", "azure")}


class StorageError(Exception):
    """A path that cannot be used with these options: the message is the one line shown."""


def scheme(path: str) -> str | None:
    return FileSystems.get_scheme(path)


def prepare_storage(inputs: list[str], outputs: list[str], beam_args: list[str]) -> None:
    """Give Beam's filesystems this run's options, then check every s3:// and azfs://
    path once (credentials, bucket or container); raises StorageError.

    ``FileSystems`` keeps one set of options per process: set here, before the input is
    listed (the pipeline sets the same ones again when it is built), so a run never uses
    the settings of a run before it.
    """
    options = PipelineOptions(beam_args)
    FileSystems.set_options(options)
    for path in [*inputs, *outputs]:
        kind = scheme(path)
        if kind not in _EXTRAS:
            continue
        module, extra = _EXTRAS[kind]
        if not _importable(module):
            raise StorageError(f"{kind}:// paths need the [{extra}] extra: "
                               f"pip install 'braze-currents-beam[{extra}]'")
        check_workers_get_the_extra(kind, extra, options)
        if kind == "s3":
            check_s3(path, options)
        else:
            check_azure(path, options)


def check_workers_get_the_extra(kind: str, extra: str, options: PipelineOptions) -> None:
    """On Dataflow, workers install this package from ``--setup_file`` without its
    extras (and Beam's worker image has neither boto3 nor the Azure SDK): without a
    requirements file or an image of their own, the job would fail on its workers."""
    runner = str(options.view_as(StandardOptions).runner or "")
    if "dataflow" not in runner.lower():
        return
    setup, workers = options.view_as(SetupOptions), options.view_as(WorkerOptions)
    if (setup.requirements_file or setup.extra_packages or workers.sdk_container_image
            or workers.worker_harness_container_image):
        return
    raise StorageError(
        f"{kind}:// on Dataflow: the workers need the [{extra}] extra too; pass "
        f"--requirements_file dataflow/requirements-{extra}.txt (or an "
        "--sdk_container_image that has it), see docs/storage.md")


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def _split(path: str, kind: str) -> tuple[str, str]:
    rest = path[len(kind) + 3:]
    bucket, _, key = rest.partition("/")
    return bucket, key


def s3_client(options: PipelineOptions) -> Any:
    """A boto3 S3 client made from Beam's S3 options as Beam makes its own, but with no
    retries and short timeouts."""
    import boto3
    from botocore.config import Config
    s3 = options.view_as(S3Options)
    config = Config(connect_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT,
                    retries={"total_max_attempts": 1, "mode": "standard"})
    return boto3.session.Session().client(
        "s3", region_name=s3.s3_region_name, api_version=s3.s3_api_version,
        use_ssl=not s3.s3_disable_ssl, verify=s3.s3_verify, endpoint_url=s3.s3_endpoint_url,
        aws_access_key_id=s3.s3_access_key_id, aws_secret_access_key=s3.s3_secret_access_key,
        aws_session_token=s3.s3_session_token, config=config)


def check_s3(path: str, options: PipelineOptions) -> None:
    """One listing of ``path``'s bucket under its prefix; StorageError if refused."""
    from botocore import exceptions as bx
    bucket, key = _split(path, "s3")
    if not bucket:
        raise StorageError(f"{path}: no bucket (s3://bucket/prefix)")
    try:
        s3_client(options).list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
    except (bx.NoCredentialsError, bx.PartialCredentialsError) as exc:
        raise StorageError(
            f"no usable AWS credentials for {path} ({exc}): pass --s3_access_key_id and "
            "--s3_secret_access_key, or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "or AWS_PROFILE (see docs/storage.md)") from None
    except bx.ClientError as exc:
        error = exc.response.get("Error", {})
        code = error.get("Code") or str(
            exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?"))
        message = (error.get("Message") or "").strip().splitlines()
        detail = f"{code}: {message[0]}" if message else code
        if code == "NoSuchBucket":
            raise StorageError(f"cannot use {path}: no such bucket {bucket!r}") from None
        raise StorageError(f"S3 refused {path} ({detail}); check the credentials "
                           "(--s3_access_key_id, AWS_* variables or profile), "
                           "--s3_region_name and the bucket's permissions") from None
    except bx.BotoCoreError as exc:  # endpoint unreachable, timeouts, bad config
        raise StorageError(f"cannot reach S3 for {path}: {exc}") from None


def azure_client(options: PipelineOptions) -> Any:
    """A BlobServiceClient from Beam's Azure options, as Beam makes its own (connection
    string first, then ``AZURE_STORAGE_CONNECTION_STRING``, then endpoint + Azure
    identity), with no retries and short timeouts; None without any of them."""
    from azure.storage.blob import BlobServiceClient
    az = options.view_as(AzureOptions)
    settings = {"retry_total": 0, "connection_timeout": CONNECT_TIMEOUT,
                "read_timeout": READ_TIMEOUT}
    conn = az.azure_connection_string or os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
    if conn:
        try:
            return BlobServiceClient.from_connection_string(conn, **settings)
        except ValueError:
            raise StorageError("the Azure connection string is malformed "
                               "(--azure_connection_string or "
                               "AZURE_STORAGE_CONNECTION_STRING)") from None
    if az.blob_service_endpoint:
        from azure.identity import DefaultAzureCredential
        credential = DefaultAzureCredential(
            managed_identity_client_id=az.azure_managed_identity_client_id)
        try:
            return BlobServiceClient(account_url=az.blob_service_endpoint,
                                     credential=credential, **settings)
        except ValueError as exc:  # e.g. an http:// endpoint with a token credential
            raise StorageError(f"--blob_service_endpoint: {exc}") from None
    return None


def check_azure(path: str, options: PipelineOptions) -> None:
    """One listing of ``path``'s container under its prefix; StorageError if refused.

    The account in the path must be the credentials' account: Beam lists and reads
    through the credentials' account whatever the path says, but renames (the commit of
    the outputs) by a server-side copy from ``https://<path's account>.blob.core...``.
    """
    from azure.core import exceptions as ax
    account, rest = _split(path, "azfs")
    container, _, prefix = rest.partition("/")
    if not account or not container:
        raise StorageError(f"{path}: an Azure path is azfs://<account>/<container>/<prefix>")
    client = azure_client(options)
    if client is None:
        raise StorageError(
            f"no Azure credentials for {path}: pass --azure_connection_string or set "
            "AZURE_STORAGE_CONNECTION_STRING, or pass --blob_service_endpoint with an "
            "Azure identity (see docs/storage.md)")
    if client.account_name and client.account_name != account:
        raise StorageError(f"{path} names storage account {account!r}, but the "
                           f"credentials are for {client.account_name!r}")
    identity_log = logging.getLogger("azure.identity")  # its failure: many lines
    level = identity_log.level
    identity_log.setLevel(logging.ERROR)
    try:
        blobs = client.get_container_client(container).list_blobs(
            name_starts_with=prefix, results_per_page=1)
        next(iter(blobs.by_page()), None)
    except ax.HttpResponseError as exc:  # also: no Azure identity could give a token
        code = _azure_reason(exc)
        if isinstance(exc, ax.ClientAuthenticationError) or exc.status_code == 403:
            raise StorageError(f"Azure refused the credentials for {path} ({code}); check "
                               "the connection string or identity and its permissions on "
                               f"container {container!r}") from None
        if isinstance(exc, ax.ResourceNotFoundError):
            raise StorageError(f"cannot use {path}: {code} ({container!r})") from None
        raise StorageError(f"Azure refused {path} ({code})") from None
    except (ax.ServiceRequestError, ax.ServiceResponseError) as exc:
        raise StorageError(f"cannot reach Azure Blob Storage for {path}: "
                           f"{str(exc).splitlines()[0]}") from None
    except ax.AzureError as exc:
        raise StorageError(f"cannot use {path}: {_azure_reason(exc)}") from None
    finally:
        identity_log.setLevel(level)


def _azure_reason(exc: Exception) -> str:
    """The service's error code, else the status, else the message's first line."""
    code = getattr(exc, "error_code", None)
    code = getattr(code, "value", code) or getattr(exc, "status_code", None)
    return str(code) if code else str(exc).strip().splitlines()[0][:200]
