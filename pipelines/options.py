"""Command-line options of the pipeline: ours are parsed here, the rest go to Beam."""
from __future__ import annotations

import argparse
import os
import re
from importlib import resources
from pathlib import Path

from typing import Literal

from apache_beam.options.pipeline_options import PipelineOptions
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from transforms.identities import PARTNERS
from transforms.read import BATCH_SIZE


def bundled_sample() -> str:
    """The small sample export shipped with the package (made by pipelines/make_sample.py)."""
    return str(resources.files("pipelines").joinpath("sample_export"))


class BeamOptions(PipelineOptions):
    """Beam's options, with each view (``view_as(SomeOptions)``) made once and reused.

    Beam asks for a view for every transform applied and again while running the job,
    and each new view builds an argparse parser of every registered option: ~0.1 s of
    the command's start-up at 500k events (to the first bundle: 0.38 -> 0.26-0.29 s),
    before any worker starts. A view keeps no value of its own (values live in the dict
    all views share), so reusing one changes nothing."""

    def view_as(self, cls):
        views = self.__dict__.setdefault("_views", {})
        view = views.get(cls)
        if view is None:
            view = views[cls] = super().view_as(cls)
        return view

    def __getstate__(self):
        state = dict(super().__getstate__())
        state.pop("_views", None)
        return state


class RunConfig(BaseModel):
    """Validated options of one run."""

    model_config = ConfigDict(frozen=True)
    input: str
    output: str
    partners: tuple[str, ...] = PARTNERS
    shards: int | None = Field(None, ge=1, le=100_000)  # None: from the input size
    batch_size: int = Field(BATCH_SIZE, ge=1)
    max_invalid_ratio: float | None = Field(None, ge=0.0, le=1.0)
    mixpanel_token: SecretStr | None = None
    mparticle_environment: Literal["production", "development"] = "production"
    parquet_output: str | None = None
    bigquery_dataset: str | None = None
    bigquery_method: Literal["file_loads", "streaming_inserts",
                             "storage_write_api"] = "file_loads"
    bigquery_endpoint: str | None = None

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
        if "mixpanel" in self.partners and not (
                self.mixpanel_token and self.mixpanel_token.get_secret_value()):
            raise ValueError("Mixpanel needs a project token: pass --mixpanel-token or set "
                             "MIXPANEL_TOKEN (or leave mixpanel out of --partners)")
        return self

    @model_validator(mode="after")
    def _bigquery_settings(self):
        if self.bigquery_dataset and self.bigquery_method == "storage_write_api":
            from transforms.bigquery import STORAGE_WRITE_API_UNSUPPORTED
            raise ValueError(STORAGE_WRITE_API_UNSUPPORTED)
        return self

    def partner_config(self) -> dict:
        """Settings the partner formatters need (the token is revealed only here)."""
        token = self.mixpanel_token.get_secret_value() if self.mixpanel_token else None
        return {"mixpanel_token": token, "mparticle_environment": self.mparticle_environment}

    @field_validator("partners", mode="before")
    @classmethod
    def _split(cls, value):
        if isinstance(value, str):
            value = [p.strip().lower() for p in value.split(",") if p.strip()]
        unknown = sorted(set(value) - set(PARTNERS))
        if unknown:
            raise ValueError(f"unknown partner(s) {', '.join(unknown)}; "
                             f"choose from {', '.join(PARTNERS)}")
        return tuple(dict.fromkeys(value))


HELP_EPILOG = """\
Beam options pass through unchanged, for example:
  --runner DirectRunner|DataflowRunner   where to run (default: DirectRunner)
  --direct_num_workers N                 local parallelism
  --direct_running_mode multi_processing|multi_threading|in_memory
  --project, --region, --temp_location, --setup_file   for Dataflow

Outputs under --output:
  events/        one deduplicated event per line (Currents fields + event_type)
  dead_letter/   rejected rows: {reason, event_type, source, row, error, record}
  duplicates/    dropped copies: {event_type, id, source, row, kept_source, kept_row, ...}
  file_errors/   files that could not be read (fully or partly), with the reason
  partners/<p>/  one payload per line for partner p, in its ingestion API's format
  partners/<p>/_skipped/  events not sent to p: {event_type, id, reason}
  summary.json   counts; written last, it marks a complete run

Exit codes: 0 success; 1 run failed or --max-invalid-ratio exceeded; 2 bad options/input.
"""


def parser() -> argparse.ArgumentParser:
    """Our options; each also has its underscore spelling (``--batch_size``), as Beam's
    options and Dataflow Flex Template parameters (dataflow/metadata.json) have."""
    ap = argparse.ArgumentParser(
        prog="python -m pipelines.currents_to_partners",
        description="Turn a raw Braze Currents export (Avro) into clean, deduplicated "
                    "events, a dead letter and a run summary.",
        epilog=HELP_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", default=None,
                    help="folder, prefix (local or gs://), glob or .avro file of a Currents "
                         "export; every .avro below it is read. Default: the bundled sample")
    ap.add_argument("--output", default=None,
                    help="folder (local or gs://) for the outputs. Default: ./output "
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
                         "files under --temp_location, gs://); storage_write_api is not "
                         "available yet (docs/bigquery.md)")
    ap.add_argument("--bigquery-endpoint", "--bigquery_endpoint", dest="bigquery_endpoint",
                    default=None,
                    help="URL of a BigQuery-compatible endpoint (a local emulator, a "
                         "private endpoint) instead of Google's")
    return ap


def parse(argv: list[str] | None) -> tuple[RunConfig, list[str]]:
    """Our options as a RunConfig, and the arguments left for Beam."""
    args, beam_args = parser().parse_known_args(argv)
    values = vars(args)
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
