"""Command-line options of the pipeline: ours are parsed here, the rest go to Beam."""
from __future__ import annotations

import argparse
import difflib
import os
import re
from importlib import resources
from pathlib import Path

from typing import Literal

from apache_beam.options.pipeline_options import PipelineOptions
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from transforms.deliver import DEFAULT_ENDPOINTS, DEFAULT_MAX_RPS, DeliveryConfig
from transforms.identities import PARTNERS
from transforms.read import BATCH_SIZE

# Currents re-delivers a copy within hours (at-least-once retries); 72 hours also covers
# a connector paused over a weekend, for a store of ~3 days of event keys (see
# docs/scheduling.md for its size)
DEDUP_WINDOW = 72 * 3600

# delivery credentials: option dest -> environment variable (the option wins)
CREDENTIALS = {
    "amplitude_api_key": "AMPLITUDE_API_KEY",
    "mixpanel_service_account_username": "MIXPANEL_SERVICE_ACCOUNT_USERNAME",
    "mixpanel_service_account_secret": "MIXPANEL_SERVICE_ACCOUNT_SECRET",
    "mixpanel_project_id": "MIXPANEL_PROJECT_ID",
    "mixpanel_api_secret": "MIXPANEL_API_SECRET",
    "mparticle_api_key": "MPARTICLE_API_KEY",
    "mparticle_api_secret": "MPARTICLE_API_SECRET",
    "segment_write_key": "SEGMENT_WRITE_KEY",
}


def bundled_sample() -> str:
    """The small sample export shipped with the package (made by pipelines/make_sample.py)."""
    return str(resources.files("pipelines").joinpath("sample_export"))


class RunConfig(BaseModel):
    """Validated options of one run."""

    model_config = ConfigDict(frozen=True)
    input: str
    output: str
    partners: tuple[str, ...] = PARTNERS
    shards: int | None = Field(None, ge=1, le=100_000)  # None: from the input size
    batch_size: int = Field(BATCH_SIZE, ge=1)
    max_invalid_ratio: float | None = Field(None, ge=0.0, le=1.0)
    progress_every: float = Field(10.0, ge=0.0)  # seconds; 0: no progress lines
    mixpanel_token: SecretStr | None = None
    mparticle_environment: Literal["production", "development"] = "production"
    mapping_overrides: str | None = None  # path of a --mapping-overrides file
    overrides: dict | None = None  # its JSON, checked (transforms.mapping)
    forward_new_fields: bool = False
    strict: bool = False
    explain_mapping: str | None = None
    # identity map, backfill and deletion requests (transforms.identity_map, docs/identity.md)
    identity_map: str | None = None
    deletions: str | None = None
    no_backfill_identities: bool = False
    # PII controls (transforms.pii, docs/identity.md); None: as --pii
    pii: Literal["keep", "hash", "drop"] = "keep"
    pii_events: Literal["keep", "hash", "drop"] | None = None
    pii_amplitude: Literal["keep", "hash", "drop"] | None = None
    pii_mixpanel: Literal["keep", "hash", "drop"] | None = None
    pii_mparticle: Literal["keep", "hash", "drop"] | None = None
    pii_segment: Literal["keep", "hash", "drop"] | None = None
    pii_identities: bool = False
    pii_salt: SecretStr | None = None  # from CURRENTS_PII_SALT, only when a policy hashes
    # incremental runs (pipelines.state, docs/scheduling.md)
    state: str | None = None
    dedup_window: int = Field(DEDUP_WINDOW, ge=0)  # seconds of event time
    ledger_retention: int | None = Field(None, gt=0)  # seconds of file update time
    # streaming (pipelines.streaming)
    streaming: bool = False
    poll_interval: float = Field(60.0, gt=0)
    window: float = Field(60.0, gt=0)  # minutes
    stop_after: float | None = Field(None, ge=0)
    # delivery to the partners' APIs (transforms.deliver, docs/delivery.md)
    deliver: tuple[str, ...] = ()
    deliver_dry_run: bool = False
    amplitude_api: Literal["http", "batch"] = "http"
    amplitude_endpoint: str = DEFAULT_ENDPOINTS["amplitude"]
    mixpanel_endpoint: str = DEFAULT_ENDPOINTS["mixpanel"]
    mparticle_endpoint: str = DEFAULT_ENDPOINTS["mparticle"]
    segment_endpoint: str = DEFAULT_ENDPOINTS["segment"]
    amplitude_api_key: SecretStr | None = None
    mixpanel_service_account_username: SecretStr | None = None
    mixpanel_service_account_secret: SecretStr | None = None
    mixpanel_project_id: str | None = None
    mixpanel_api_secret: SecretStr | None = None
    mparticle_api_key: SecretStr | None = None
    mparticle_api_secret: SecretStr | None = None
    segment_write_key: SecretStr | None = None
    delivery_max_retries: int = Field(8, ge=0, le=100)
    delivery_timeout: float = Field(300.0, gt=0)
    delivery_backoff: float = Field(1.0, ge=0)
    delivery_concurrency: int = Field(4, ge=1, le=64)
    amplitude_max_rps: float = Field(DEFAULT_MAX_RPS["amplitude"], ge=0)
    mixpanel_max_rps: float = Field(DEFAULT_MAX_RPS["mixpanel"], ge=0)
    mparticle_max_rps: float = Field(DEFAULT_MAX_RPS["mparticle"], ge=0)
    segment_max_rps: float = Field(DEFAULT_MAX_RPS["segment"], ge=0)
    parquet_output: str | None = None
    bigquery_dataset: str | None = None
    bigquery_method: Literal["file_loads", "streaming_inserts",
                             "storage_write_api"] = "file_loads"
    bigquery_endpoint: str | None = None
    bigquery_expansion_service: str | None = None  # HOST:PORT

    @field_validator("bigquery_expansion_service")
    @classmethod
    def _host_port(cls, value):
        if value is not None and not re.fullmatch(r"(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):\d{1,5}",
                                                  value):
            raise ValueError(f"must be HOST:PORT (like localhost:8097), not {value!r}")
        return value

    @field_validator("bigquery_dataset")
    @classmethod
    def _dataset(cls, value):
        if value is not None and not re.fullmatch(r"[A-Za-z0-9.:-]+:[A-Za-z0-9_]+", value):
            raise ValueError(f"must be PROJECT:DATASET (like my-project:currents), not "
                             f"{value!r}")
        return value

    @field_validator("bigquery_endpoint")
    @classmethod
    def _endpoint(cls, value):
        if value is not None and not re.match(r"https?://[^/]+", value):
            raise ValueError(f"must be a URL like http://127.0.0.1:9050, not {value!r}")
        return value

    @model_validator(mode="after")
    def _partner_settings(self):
        if "mixpanel" in self.partners and not self.explain_mapping and not (
                self.mixpanel_token and self.mixpanel_token.get_secret_value()):
            raise ValueError("Mixpanel needs a project token: pass --mixpanel-token or set "
                             "MIXPANEL_TOKEN (or leave mixpanel out of --partners)")
        not_formatted = [p for p in self.deliver if p not in self.partners]
        if not_formatted:
            raise ValueError(f"--deliver {','.join(not_formatted)}: not in --partners "
                             f"({','.join(self.partners) or 'none'})")
        missing = [m for p in self.deliver for m in [self._missing_credentials(p)] if m]
        if missing:
            raise ValueError("missing credentials: " + "; ".join(missing))
        return self

    def _secret(self, name: str) -> str:
        value = getattr(self, name)
        return value.get_secret_value() if isinstance(value, SecretStr) else (value or "")

    def _missing_credentials(self, partner: str) -> str | None:
        """What ``partner`` lacks to be delivered to, as one phrase, or None."""
        def need(*names: str) -> list[str]:
            return [n for n in names if not self._secret(n)]

        def say(names: list[str]) -> str:
            return " and ".join(f"{CREDENTIALS[n]} (--{n.replace('_', '-')})" for n in names)

        if partner == "mixpanel":
            account = need("mixpanel_service_account_username",
                           "mixpanel_service_account_secret", "mixpanel_project_id")
            if not account or not need("mixpanel_api_secret"):
                return None
            return (f"mixpanel needs a service account, {say(account)}, "
                    f"or the project's {say(['mixpanel_api_secret'])}")
        names = {"amplitude": ("amplitude_api_key",),
                 "mparticle": ("mparticle_api_key", "mparticle_api_secret"),
                 "segment": ("segment_write_key",)}[partner]
        lacking = need(*names)
        return f"{partner} needs {say(lacking)}" if lacking else None

    @field_validator("amplitude_endpoint", "mixpanel_endpoint", "mparticle_endpoint",
                     "segment_endpoint")
    @classmethod
    def _base_url(cls, value: str) -> str:
        from urllib.parse import urlsplit
        parts = urlsplit(value)
        try:
            parts.port
        except ValueError:
            raise ValueError(f"{value!r}: bad port") from None
        if (parts.scheme not in ("http", "https") or not parts.hostname
                or parts.path not in ("", "/") or parts.query or parts.fragment
                or parts.username or parts.password):
            raise ValueError(f"{value!r} is not a base URL: scheme, host and optional port "
                             "only (https://api.example.com:8443); the API path is appended")
        return value.rstrip("/")

    def delivery_config(self, partner: str) -> DeliveryConfig:
        """How to deliver to ``partner`` (its credentials revealed only here)."""
        credentials = {
            "amplitude": {"api_key": self._secret("amplitude_api_key")},
            "mixpanel": (
                {"username": self._secret("mixpanel_service_account_username"),
                 "secret": self._secret("mixpanel_service_account_secret"),
                 "project_id": self._secret("mixpanel_project_id")}
                if self._secret("mixpanel_service_account_username")
                else {"api_secret": self._secret("mixpanel_api_secret")}),
            "mparticle": {"api_key": self._secret("mparticle_api_key"),
                          "api_secret": self._secret("mparticle_api_secret")},
            "segment": {"write_key": self._secret("segment_write_key")},
        }[partner]
        return DeliveryConfig(
            endpoint=getattr(self, f"{partner}_endpoint"), credentials=credentials,
            amplitude_api=self.amplitude_api, max_retries=self.delivery_max_retries,
            timeout=self.delivery_timeout, backoff=self.delivery_backoff,
            max_backoff=max(self.delivery_backoff, min(60.0, self.delivery_timeout / 4)),
            max_rps=getattr(self, f"{partner}_max_rps"), dry_run=self.deliver_dry_run,
            concurrency=self.delivery_concurrency)

    @model_validator(mode="after")
    def _bigquery_settings(self):
        storage = self.bigquery_method == "storage_write_api"
        if self.bigquery_expansion_service and not storage:
            raise ValueError("--bigquery-expansion-service is for --bigquery-method "
                             "storage_write_api only")
        if self.bigquery_dataset and storage and self.bigquery_endpoint:
            raise ValueError("--bigquery-endpoint does not reach storage_write_api's Java "
                             "writer (it speaks gRPC to Google's Storage Write API): use "
                             "file_loads or streaming_inserts with an endpoint")
        return self

    def pii_policy(self, output: str) -> str:
        """The PII policy of ``events`` (also dead letter and duplicates) or a partner."""
        return getattr(self, f"pii_{output}") or self.pii

    def pii_salt_value(self) -> str | None:
        return self.pii_salt.get_secret_value() if self.pii_salt else None

    def partner_config(self) -> dict:
        """Settings the partner formatters need (the token is revealed only here)."""
        token = self.mixpanel_token.get_secret_value() if self.mixpanel_token else None
        return {"mixpanel_token": token, "mparticle_environment": self.mparticle_environment}

    @model_validator(mode="after")
    def _streaming_has_no_state(self):
        if self.streaming and self.state:
            raise ValueError("--state is for scheduled batch runs; --streaming keeps its "
                             "dedup in keyed state (docs/scheduling.md): use one of them")
        if self.ledger_retention and not self.state:
            raise ValueError("--ledger-retention prunes the ledger of --state: give --state")
        return self

    @model_validator(mode="after")
    def _overrides(self):
        if self.mapping_overrides and self.overrides is None:
            object.__setattr__(self, "overrides", load_overrides(self.mapping_overrides))
        return self

    @field_validator("partners", "deliver", mode="before")
    @classmethod
    def _split(cls, value):
        if isinstance(value, str):
            value = [p.strip().lower() for p in value.split(",") if p.strip()]
        unknown = sorted(set(value) - set(PARTNERS))
        if unknown:
            raise ValueError(f"unknown partner(s) {', '.join(unknown)}; "
                             f"choose from {', '.join(PARTNERS)}")
        return tuple(dict.fromkeys(value))


def duration(text: str) -> int:
    """``72h``, ``90m``, ``3d``, ``45s`` or plain seconds -> seconds."""
    value = text.strip().lower()
    unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}.get(value[-1:])
    try:
        number = float(value[:-1] if unit else value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a duration such as 72h, 90m, 3d or seconds, not {text!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"a duration cannot be negative: {text!r}")
    return int(number * (unit or 1))


def load_overrides(path: str) -> dict:
    """The JSON of a ``--mapping-overrides`` file (local or gs://), checked now: a bad key
    is an error naming it, before any data is read."""
    import json

    from apache_beam.io.filesystems import FileSystems

    from transforms.mapping import validate_overrides
    try:
        with FileSystems.open(path) as fo:
            text = fo.read().decode("utf-8")
    except Exception as exc:
        raise ValueError(f"cannot read --mapping-overrides {path}: {exc}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"--mapping-overrides {path} is not JSON: {exc}") from None
    validate_overrides(data)
    return data


# Options that make the command do something else than run a job: not Flex Template
# parameters (dataflow/metadata.json).
LOCAL_ONLY = ("explain_mapping",)

HELP_EPILOG = """\
Beam options pass through by their full names (a typo or abbreviation is an error):
  --runner DataflowRunner|DirectRunner   where to run (default: Beam's FnApiRunner,
                                         2 worker processes for exports >= 8 MiB)
  --direct_num_workers N                 local parallelism (1: one process)
  --direct_running_mode multi_processing|multi_threading|in_memory
  --project, --region, --temp_location, --setup_file   for Dataflow
  --s3_endpoint_url, --s3_region_name, --s3_access_key_id, ...   for s3://
  --azure_connection_string, --blob_service_endpoint   for azfs://
  (s3:// and azfs:// need the [aws] and [azure] extras; see docs/storage.md)

Outputs under --output:
  events/        one deduplicated event per line (Currents fields + event_type)
  dead_letter/   rejected rows: {reason, event_type, source, row, error, record}
  duplicates/    dropped copies: {event_type, id, source, row, kept_source, kept_row, ...}
  file_errors/   files that could not be read (fully or partly), with the reason
  partners/<p>/  one payload per line for partner p, in its ingestion API's format
  partners/<p>/_skipped/  events not sent to p: {event_type, id, reason}
  delivery_failed/<p>/  with --deliver: payloads p did not take:
                 {reason, event_type, id, status, error, payload}
  identity/map|conflicts|deletions|errors/   braze_id -> external_id map (a valid
                 --identity-map), conflicts, deletion requests, bad input lines
  summary.json   counts; written last, it marks a complete run

Delivery credentials (with --deliver; options of the same names override them):
  AMPLITUDE_API_KEY; MIXPANEL_SERVICE_ACCOUNT_USERNAME, MIXPANEL_SERVICE_ACCOUNT_SECRET
  and MIXPANEL_PROJECT_ID, or MIXPANEL_API_SECRET; MPARTICLE_API_KEY and
  MPARTICLE_API_SECRET; SEGMENT_WRITE_KEY. See docs/delivery.md.

PII: --pii hash needs CURRENTS_PII_SALT (the HMAC key). See docs/identity.md.

Exit codes: 0 success; 1 run failed, --max-invalid-ratio exceeded or events not
delivered (retries exhausted, credentials refused); 2 bad options/input; 3 another
run holds the --state lock.
"""


def parser() -> argparse.ArgumentParser:
    """Our options; each also has its underscore spelling (``--batch_size``), as Beam's
    options and Dataflow Flex Template parameters (dataflow/metadata.json) have."""
    ap = argparse.ArgumentParser(
        prog="python -m pipelines.currents_to_partners", allow_abbrev=False,
        description="Turn a raw Braze Currents export (Avro) into clean, deduplicated "
                    "events, a dead letter and a run summary.",
        epilog=HELP_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", default=None,
                    help="folder, prefix (local, gs://, s3:// or azfs://), glob or .avro "
                         "file of a Currents export; every .avro below it is read. "
                         "Default: the bundled sample")
    ap.add_argument("--output", default=None,
                    help="folder (local, gs://, s3:// or azfs://) for the outputs. "
                         "Default: ./output "
                         "(with the bundled sample)")
    ap.add_argument("--partners", default=",".join(PARTNERS),
                    help="comma-separated partners to format payloads for, under "
                         f"partners/<partner>/ (default: {','.join(PARTNERS)}); "
                         "'' for none (events only)")
    ap.add_argument("--mixpanel-token", "--mixpanel_token", dest="mixpanel_token",
                    default=os.environ.get("MIXPANEL_TOKEN"),
                    help="Mixpanel project token, put in each Mixpanel payload "
                         "(default: $MIXPANEL_TOKEN). Required when mixpanel is selected; "
                         "never logged nor written to the summary")
    ap.add_argument("--mparticle-environment", "--mparticle_environment",
                    dest="mparticle_environment",
                    default="production", choices=("production", "development"),
                    help="mParticle environment of each batch (default: production)")
    ap.add_argument("--mapping-overrides", "--mapping_overrides", dest="mapping_overrides",
                    default=None,
                    help="JSON file (local or gs://) merged over the built-in partner "
                         "mappings: rename an event, add or drop a field, mark a type not "
                         "sendable (docs/partners.md); checked before any data is read")
    ap.add_argument("--forward-new-fields", "--forward_new_fields", dest="forward_new_fields",
                    type=_flag, nargs="?", const=True, default=False,
                    help="send fields Braze added later (in the records, not in the "
                         "mappings) to the partners' property bags (default: off; they stay "
                         "in events/ and are counted in summary.json)")
    ap.add_argument("--strict", type=_flag, nargs="?", const=True, default=False,
                    help="dead-letter nulls in fields Braze's docs call required even where "
                         "the file's writer schema allows them (default: keep such rows, "
                         "count them under warnings in summary.json)")
    ap.add_argument("--explain-mapping", "--explain_mapping", dest="explain_mapping",
                    default=None, metavar="EVENT_TYPE",
                    help="print the code the partner formatter compiles for EVENT_TYPE "
                         "(for --partners, with --mapping-overrides) and exit")
    ap.add_argument("--shards", type=int, default=None,
                    help="output files per folder, and dedup parallelism. Default: from "
                         "the input size, one shard per ~1 MB of Avro (~10k events), "
                         "at least 8: memory per worker stays flat as exports grow")
    ap.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int,
                    default=BATCH_SIZE,
                    help=f"rows per element moved between steps (default: {BATCH_SIZE})")
    ap.add_argument("--max-invalid-ratio", "--max_invalid_ratio", dest="max_invalid_ratio",
                    type=float, default=None,
                    help="fail the run (exit 1, after writing everything) when "
                         "invalid/rows_read exceeds this ratio (default: off)")
    ap.add_argument("--progress-every", "--progress_every", dest="progress_every",
                    type=float, default=10.0, metavar="SECONDS",
                    help="on a local runner, print a line of progress (files read, shards "
                         "deduplicated and written) this often; 0: none (default: 10; "
                         "on Dataflow the console shows the counters)")
    ap.add_argument("--identity-map", "--identity_map", dest="identity_map", default=None,
                    metavar="PATH",
                    help="braze_id -> external_id map (local or gs:// file, folder or glob; "
                         "CSV with header braze_id,external_id or NDJSON with those keys, "
                         "as identity/map/ of an earlier run) used after the export's own "
                         "evidence and profile merges; bad lines go to identity/errors/")
    ap.add_argument("--deletions", default=None, metavar="PATH",
                    help="deletion requests besides the export's users.UserDeleteRequest "
                         "(CSV with a braze_id column or NDJSON with that key): those "
                         "users' events reach no partner (skipped as user_deleted), listed "
                         "in identity/deletions/")
    ap.add_argument("--no-backfill-identities", "--no_backfill_identities",
                    dest="no_backfill_identities", type=_flag, nargs="?", const=True,
                    default=False,
                    help="give partners only each event's own external_id (default: an "
                         "event without one gets its braze_id's external_id from the "
                         "identity map; see docs/identity.md)")
    pii = ("keep", "hash", "drop")
    ap.add_argument("--pii", default="keep", choices=pii,
                    help="fields the catalogue marks [PII] (and unknown fields named like "
                         "personal data, schemas/pii.json) in every output: keep, hash "
                         "(HMAC-SHA256 keyed by $CURRENTS_PII_SALT, hex) or drop "
                         "(default: keep)")
    for output in ("events", *PARTNERS):
        where = ("events/, dead_letter/ and duplicates/" if output == "events"
                 else f"partners/{output}/")
        ap.add_argument(f"--pii-{output}", f"--pii_{output}", dest=f"pii_{output}",
                        default=None, choices=pii,
                        help=f"--pii for {where} only (default: as --pii)")
    ap.add_argument("--pii-identities", "--pii_identities", dest="pii_identities",
                    type=_flag, nargs="?", const=True, default=False,
                    help="apply --pii to the identity fields too (user_id, external_user_id, "
                         "device_id; and identity/): hashing them changes attribution at "
                         "the partners (default: off)")
    ap.add_argument("--parquet-output", "--parquet_output", dest="parquet_output",
                    default=None,
                    help="also write the clean events as Parquet under this folder (local "
                         "or gs://): event_type=<type>/date=<YYYY-MM-DD>/part-*.parquet, "
                         "columns from the catalogue (docs/bigquery.md)")
    ap.add_argument("--bigquery-dataset", "--bigquery_dataset", dest="bigquery_dataset",
                    default=None,
                    help="also write the clean events to BigQuery, PROJECT:DATASET: one "
                         "table per event type (users_messages_email_Send), reruns add no "
                         "rows (docs/bigquery.md)")
    ap.add_argument("--bigquery-method", "--bigquery_method", dest="bigquery_method",
                    default="file_loads",
                    choices=("file_loads", "streaming_inserts", "storage_write_api"),
                    help="how rows reach BigQuery (default: file_loads; load jobs from "
                         "files under --temp_location, gs://); storage_write_api needs "
                         "Java or --bigquery-expansion-service (docs/bigquery.md)")
    ap.add_argument("--bigquery-endpoint", "--bigquery_endpoint", dest="bigquery_endpoint",
                    default=None,
                    help="URL of a BigQuery-compatible endpoint (a local emulator, a "
                         "private endpoint) instead of Google's")
    ap.add_argument("--bigquery-expansion-service", "--bigquery_expansion_service",
                    dest="bigquery_expansion_service", default=None, metavar="HOST:PORT",
                    help="with --bigquery-method storage_write_api: a running Beam Java "
                         "expansion service (default: Beam starts its jar with Java, "
                         "downloaded once)")
    ap.add_argument("--state", default=None,
                    help="folder (local, gs://, s3://, azfs://) remembering earlier runs: "
                         "only .avro files no committed run processed are read, outputs go to "
                         "<output>/runs/<run_id>/, events kept by earlier runs are "
                         "duplicates (docs/scheduling.md). Default: off, read everything")
    ap.add_argument("--dedup-window", "--dedup_window", dest="dedup_window", type=duration,
                    default=DEDUP_WINDOW,
                    help="with --state: how far back, in event time, events are remembered "
                         "to drop copies re-delivered in later runs, e.g. 72h, 90m, 3d "
                         "(default: 72h)")
    ap.add_argument("--ledger-retention", "--ledger_retention", dest="ledger_retention",
                    type=duration, default=None,
                    help="with --state: forget processed files last updated this long "
                         "before the newest one, e.g. 30d; files older than that are then "
                         "never read, only counted (docs/scheduling.md). Default: keep "
                         "every path")
    ap.add_argument("--streaming", type=_flag, nargs="?", const=True, default=False,
                    help="watch --input for new .avro files and write windowed outputs "
                         "under <output>/stream/<window>/, each with its summary.json "
                         "(docs/scheduling.md); also Beam's streaming mode on Dataflow")
    ap.add_argument("--poll-interval", "--poll_interval", dest="poll_interval",
                    type=float, default=60.0,
                    help="with --streaming: seconds between listings of --input "
                         "(default: 60)")
    ap.add_argument("--window", type=float, default=60.0,
                    help="with --streaming: minutes of file arrival per output window "
                         "(default: 60)")
    ap.add_argument("--stop-after", "--stop_after", dest="stop_after", type=float,
                    default=None,
                    help="with --streaming: stop watching after SECONDS, then drain and "
                         "exit (default: run until stopped)")
    _delivery_options(ap)
    return ap


def _flag(text: str) -> bool:
    """A switch that also takes a value (``--deliver_dry_run=true``: Flex Templates)."""
    value = text.strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")
    return value in ("true", "1", "yes")


def _delivery_options(ap: argparse.ArgumentParser) -> None:
    def add(name: str, **kwargs) -> None:
        dest = name.replace("-", "_")
        ap.add_argument(f"--{name}", f"--{dest}", dest=dest, **kwargs)

    add("deliver", default="",
        help="comma-separated partners to send partners/<partner>/ payloads to, through "
             "their bulk ingestion APIs (each also in --partners; default: none). "
             "Payloads they do not take go to delivery_failed/<partner>/")
    add("deliver-dry-run", nargs="?", const=True, default=False, type=_flag,
        metavar="true|false",
        help="with --deliver: build and size-check the requests and check the "
             "credentials, but send nothing; prints the requests and bytes per URL")
    add("amplitude-api", default="http", choices=("http", "batch"),
        help="Amplitude API: http = HTTP V2 POST /2/httpapi (30 events/s per user or "
             "device), batch = Batch Event Upload POST /batch (default: http)")
    for partner in DEFAULT_ENDPOINTS:
        add(f"{partner}-endpoint", default=DEFAULT_ENDPOINTS[partner],
            help=f"{partner} API base URL, scheme://host[:port], the API path appended "
                 f"(default: {DEFAULT_ENDPOINTS[partner]}; EU hosts in docs/delivery.md)")
    what = {"amplitude_api_key": "Amplitude project API key",
            "mixpanel_service_account_username": "Mixpanel service account username",
            "mixpanel_service_account_secret": "Mixpanel service account secret",
            "mixpanel_project_id": "Mixpanel project id (with a service account)",
            "mixpanel_api_secret": "Mixpanel project API secret (instead of a service "
                                   "account)",
            "mparticle_api_key": "mParticle input feed key",
            "mparticle_api_secret": "mParticle input feed secret",
            "segment_write_key": "Segment source write key"}
    for dest, env in CREDENTIALS.items():
        secret = dest != "mixpanel_project_id"
        add(dest.replace("_", "-"), default=None, metavar="SECRET" if secret else "ID",
            help=f"{what[dest]} for --deliver (default: ${env})"
                 + ("; never logged nor written anywhere" if secret else ""))
    add("delivery-max-retries", type=int, default=8,
        help="retries of a request on 429, 5xx, connection errors and timeouts, with "
             "exponential backoff and jitter, never before Retry-After (default: 8)")
    add("delivery-timeout", type=float, default=300.0,
        help="seconds one request (with its retries) may take before its events go to "
             "delivery_failed/ as retries_exhausted (default: 300)")
    add("delivery-backoff", type=float, default=1.0,
        help="seconds of the first retry's backoff, doubling each retry (default: 1)")
    add("delivery-concurrency", type=int, default=4,
        help="requests in flight per partner from each worker (default: 4)")
    for partner, rps in DEFAULT_MAX_RPS.items():
        add(f"{partner}-max-rps", type=float, default=rps,
            help=f"most requests per second to {partner} from each worker; 0 for no cap "
                 f"(default: {rps:g})")


class OptionError(ValueError):
    """An option neither ours nor Beam's (a typo, an abbreviation): exit 2 with a hint."""


def beam_option_names(args: list[str]) -> tuple[set[str], list[str]]:
    """Beam's registered option names (as ``--name``) and the arguments of ``args`` that
    none of Beam's registered options accepts, both from the parser Beam itself builds
    (``PipelineOptions.get_all_options``, which hands it to ``add_extra_args_fn``; it
    does not accept abbreviations)."""
    parsers: list[argparse.ArgumentParser] = []
    names = {f"--{name}" for name in PipelineOptions([]).get_all_options(
        add_extra_args_fn=parsers.append)}
    _, unknown = parsers[0].parse_known_args(args)
    return names, unknown


def check_beam_args(beam_args: list[str], ours: list[str]) -> None:
    """Raise OptionError for the first argument that is neither ours nor Beam's, naming
    the closest valid options. Beam would only log a warning and drop it."""
    names, unknown = beam_option_names(beam_args)
    for arg in unknown:
        if not arg.startswith("-"):
            raise OptionError(f"unexpected argument {arg!r} (options are --name=value)")
        name = arg.split("=", 1)[0]
        close = difflib.get_close_matches(name, ours + sorted(names), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else "; see --help"
        raise OptionError(f"unknown option {name}{hint}")


def our_option_names(ap: argparse.ArgumentParser) -> list[str]:
    """Every spelling of our options (``--batch-size`` and ``--batch_size``)."""
    return sorted({s for action in ap._actions for s in action.option_strings
                   if s.startswith("--")})


def parse(argv: list[str] | None) -> tuple[RunConfig, list[str]]:
    """Our options as a RunConfig, and the arguments left for Beam (each one a Beam
    option, by its full name: anything else raises OptionError)."""
    ap = parser()
    args, beam_args = ap.parse_known_args(argv)
    check_beam_args(beam_args, our_option_names(ap))
    values = vars(args)
    for dest, env in CREDENTIALS.items():
        if values[dest] is None and os.environ.get(env):
            values[dest] = os.environ[env]
        if values[dest] is not None and dest != "mixpanel_project_id":
            values[dest] = SecretStr(values[dest])  # masked in any error's repr
    policies = tuple(values[k] or values["pii"] for k in
                     ("pii", "pii_events", *(f"pii_{p}" for p in PARTNERS)))
    if "hash" in policies:
        from transforms.pii import salt_from_env
        values["pii_salt"] = SecretStr(salt_from_env(policies))  # ValueError: no salt
    if values["input"] is None:
        values["input"] = bundled_sample()
        values["output"] = values["output"] or os.path.join(os.getcwd(), "output")
    if values["output"] is None:
        raise ValueError("--output is required when --input is given")
    if "://" not in values["output"]:
        values["output"] = str(Path(values["output"]).absolute())
    if values["parquet_output"] and "://" not in values["parquet_output"]:
        values["parquet_output"] = str(Path(values["parquet_output"]).absolute())
    if "://" not in values["input"]:
        values["input"] = str(Path(values["input"]).absolute())
    return RunConfig(**values), beam_args
