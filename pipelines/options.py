"""Command-line options of the pipeline: ours are parsed here, the rest go to Beam."""
from __future__ import annotations

import argparse
import difflib
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

    @model_validator(mode="after")
    def _partner_settings(self):
        if "mixpanel" in self.partners and not (
                self.mixpanel_token and self.mixpanel_token.get_secret_value()):
            raise ValueError("Mixpanel needs a project token: pass --mixpanel-token or set "
                             "MIXPANEL_TOKEN (or leave mixpanel out of --partners)")
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
Beam options pass through by their full names (a typo or abbreviation is an error):
  --runner DataflowRunner|DirectRunner   where to run (default: Beam's FnApiRunner,
                                         2 worker processes for exports >= 8 MiB)
  --direct_num_workers N                 local parallelism (1: one process)
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
        prog="python -m pipelines.currents_to_partners", allow_abbrev=False,
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
    return ap


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
