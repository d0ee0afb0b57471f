"""``--streaming``: watch ``--input`` for new files and write windowed outputs under
``<output>/stream/`` (transforms.stream; docs/scheduling.md "Streaming").

On a streaming runner (Dataflow) the watch is Beam's ``fileio.MatchContinuously``. Beam's
local runners cannot run it (the FnApiRunner emits its polls at once instead of every
``--poll-interval``; the Python streaming DirectRunner refuses its splittable DoFn), so a
local run watches with ``PollFolder`` for ``--stop-after`` seconds, and its windows are
written when the watch ends (the FnApiRunner runs one stage after the other).
"""
from __future__ import annotations

import sys
import time
from typing import Iterator

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindows, TimestampedValue
from apache_beam.io import fileio
from apache_beam.utils.timestamp import MAX_TIMESTAMP, Timestamp

from pipelines.options import RunConfig
from transforms import FormatForPartners, ValidateEvents, codec
from transforms.deliver import FAILED, DeliverToPartner
from transforms.fanout import skipped_tag
from transforms.read import ReadAvroFiles, export_pattern
from transforms.stream import DeduplicateStream, WriteWindows, keyed_copies


def _file_lines(report: dict):
    yield "_rows", report["rows"]
    if report["reason"]:
        yield "file_errors", codec.dumps(report)


class _PollFolder(beam.DoFn):
    """Lists ``pattern`` every ``interval`` seconds for ``stop_after`` seconds; each new
    path once, stamped with the time it was found (its arrival)."""

    def __init__(self, pattern: str, interval: float, stop_after: float):
        self._pattern, self._interval, self._stop_after = pattern, interval, stop_after

    def process(self, _: object) -> Iterator[TimestampedValue]:
        seen: set[str] = set()
        end = time.time() + self._stop_after
        while True:
            now = time.time()
            for m in FileSystems.match([self._pattern])[0].metadata_list:
                if m.path not in seen:
                    seen.add(m.path)
                    yield TimestampedValue(m.path, now)
            if now >= end:
                return
            time.sleep(max(0.0, min(self._interval, end - time.time())))


class PollFolder(beam.PTransform):
    """The local runners' ``MatchContinuously``: new paths under ``pattern``."""

    def __init__(self, pattern: str, interval: float, stop_after: float):
        super().__init__()
        self._args = (pattern, interval, stop_after)

    def expand(self, pbegin):
        return pbegin | "Start" >> beam.Create([None]) | "Poll" >> beam.ParDo(
            _PollFolder(*self._args))


def build_stream(p: beam.Pipeline, cfg: RunConfig, local: bool = False
                 ) -> beam.PCollection:
    """Compose the streaming pipeline on ``p``; returns the per-window summaries.
    ``local``: watch with ``PollFolder`` (needs ``cfg.stop_after``)."""
    pattern = export_pattern(cfg.input)
    if local:
        paths = p | "WatchInput" >> PollFolder(pattern, cfg.poll_interval, cfg.stop_after)
    else:
        stop = (Timestamp.now() + cfg.stop_after if cfg.stop_after is not None
                else MAX_TIMESTAMP)
        paths = (p
                 | "WatchInput" >> fileio.MatchContinuously(
                     pattern, interval=cfg.poll_interval, stop_timestamp=stop)
                 | "Paths" >> beam.Map(lambda m: m.path))
    read = (paths
            | "Spread" >> beam.Reshuffle()
            | "ReadAvroFiles" >> ReadAvroFiles(cfg.batch_size, as_frames=True))
    checked = read.rows | "ValidateEvents" >> ValidateEvents(strict=cfg.strict)
    unique = (checked.valid
              | "KeyedCopies" >> beam.FlatMap(keyed_copies)
              | "DeduplicateStream" >> DeduplicateStream(cfg.dedup_window))
    lines = [
        unique.events | "EventLines" >> beam.Map(lambda e: ("events", e)),
        unique.duplicates | "DuplicateLines" >> beam.Map(lambda d: ("duplicates", d)),
        checked.dead_letter | "DeadLetterLines" >> beam.Map(
            lambda d: ("dead_letter", codec.dumps(d))),
        read.files | "FileLines" >> beam.FlatMap(_file_lines),
    ]
    if cfg.partners:
        formatted = (unique.events  # a few hundred per element: per-request batches
                     | "EventWindows" >> beam.WindowInto(beam.window.FixedWindows(
                         int(cfg.window * 60)))  # batches stay in their event's window
                     | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=500)
                     | "AsShardLines" >> beam.Map(lambda events: (0, list(events)))
                     | "FormatForPartners" >> FormatForPartners(
                         cfg.partners, cfg.partner_config(), overrides=cfg.overrides,
                         forward_new_fields=cfg.forward_new_fields))
        for partner in cfg.partners:
            for tag, folder in ((partner, f"partners/{partner}"),
                                (skipped_tag(partner), f"partners/{partner}/_skipped")):
                lines.append(formatted[tag] | f"Lines[{folder}]" >> beam.FlatMap(
                    lambda shard_lines, f=folder: [(f, x) for x in shard_lines[1]])
                    | f"Unwindowed[{folder}]" >> beam.WindowInto(GlobalWindows()))
    for partner in cfg.deliver:  # exactly the payloads written to partners/<partner>/
        delivery = formatted[partner] | f"Deliver[{partner}]" >> DeliverToPartner(
            partner, cfg.delivery_config(partner))
        lines.append(delivery[FAILED] | f"Lines[delivery_failed/{partner}]" >> beam.Map(
            lambda f, folder=f"delivery_failed/{partner}": (folder, codec.dumps(f)))
            | f"Unwindowed[delivery_failed/{partner}]" >> beam.WindowInto(GlobalWindows()))
    return (lines | "AllLines" >> beam.Flatten()
            | "WriteWindows" >> WriteWindows(cfg.output, cfg.window, cfg.deliver))


def run_streaming(cfg: RunConfig, beam_args: list[str]) -> int:
    """``--streaming`` from the command line; returns the exit code."""
    import json

    from pipelines.currents_to_partners import _fail, _job_not_run_here
    from pipelines.local import local_runner, runs_locally
    options = PipelineOptions(beam_args, save_main_session=False)
    local = runs_locally(options)
    if local and cfg.stop_after is None:
        return _fail("--streaming on a local runner needs --stop-after SECONDS (its "
                     "windows are written when the watch ends); run it unbounded on "
                     "Dataflow (--runner DataflowRunner)", 2)
    if not local:
        options = PipelineOptions([*beam_args, "--streaming"], save_main_session=False)
    print(f"Watching {cfg.input} every {cfg.poll_interval:g}s"
          + (f" for {cfg.stop_after:g}s" if cfg.stop_after is not None else "")
          + f"; {cfg.window:g}-minute windows under {cfg.output}/stream/", flush=True)
    try:
        with beam.Pipeline(runner=local_runner(options) if local else None,
                           options=options) as p:
            build_stream(p, cfg, local=local)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        return _fail(f"streaming run failed: {first}", 1)
    if _job_not_run_here(options):
        print("Dataflow streaming job built (--dry_run or --template_location), not run")
        return 0
    code = 0
    for path in sorted(m.path for m in FileSystems.match(
            [FileSystems.join(cfg.output, "stream", "*", "summary.json")])[0].metadata_list):
        with FileSystems.open(path) as fo:
            summary = json.loads(fo.read())
        print(f"window {summary['window']['start']}: {summary['rows_read']} rows, "
              f"{summary['valid']} events, {summary['duplicates_dropped']} duplicates, "
              f"{summary['invalid']} invalid")
        if not summary["conservation_ok"]:
            code = _fail(f"conservation check failed in {path}", 1)
        for partner, reasons in summary.get("delivery_failed", {}).items():
            undelivered = sum(n for r, n in reasons.items()
                              if r in ("retries_exhausted", "unauthorized"))
            if undelivered:  # as a batch run: rerun to resend (partners dedup by id)
                code = _fail(f"{undelivered} events not delivered to {partner} in window "
                             f"{summary['window']['start']} (retries exhausted or "
                             "credentials refused); see its delivery_failed/", 1)
    sys.stdout.flush()
    return code
