"""Command-line options of the pipeline: ours are parsed here, the rest go to Beam."""
from __future__ import annotations

import argparse
import os
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
    mapping_overrides: str | None = None  # path of a --mapping-overrides file
    overrides: dict | None = None  # its JSON, checked (transforms.mapping)
    forward_new_fields: bool = False
    strict: bool = False
    explain_mapping: str | None = None

    @model_validator(mode="after")
    def _partner_settings(self):
        if "mixpanel" in self.partners and not self.explain_mapping and not (
                self.mixpanel_token and self.mixpanel_token.get_secret_value()):
            raise ValueError("Mixpanel needs a project token: pass --mixpanel-token or set "
                             "MIXPANEL_TOKEN (or leave mixpanel out of --partners)")
        return self

    def partner_config(self) -> dict:
        """Settings the partner formatters need (the token is revealed only here)."""
        token = self.mixpanel_token.get_secret_value() if self.mixpanel_token else None
        return {"mixpanel_token": token, "mparticle_environment": self.mparticle_environment}

    @model_validator(mode="after")
    def _overrides(self):
        if self.mapping_overrides and self.overrides is None:
            object.__setattr__(self, "overrides", load_overrides(self.mapping_overrides))
        return self

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


def _flag(value: str) -> bool:
    """``--strict``, or ``--strict=true|false`` as Flex Template parameters pass it."""
    lowered = value.lower()
    if lowered not in ("true", "false", "1", "0", "yes", "no"):
        raise argparse.ArgumentTypeError(f"expected true or false, not {value!r}")
    return lowered in ("true", "1", "yes")


# Options that make the command do something else than run a job: not Flex Template
# parameters (dataflow/metadata.json).
LOCAL_ONLY = ("explain_mapping",)

HELP_EPILOG = """\
Beam options pass through unchanged, for example:
  --runner DirectRunner|DataflowRunner   where to run (default: DirectRunner)
  --direct_num_workers N                 local parallelism
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
    if "://" not in values["input"]:
        values["input"] = str(Path(values["input"]).absolute())
    return RunConfig(**values), beam_args
