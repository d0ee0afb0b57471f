"""Braze Currents export -> clean, deduplicated events, dead letter and a run summary.

The whole flow (each step a composite PTransform from ``transforms``):

    ReadCurrentsExport -> ValidateEvents -> DeduplicateEvents -> FormatForPartners
         | files              | dead letter      | duplicates          | payloads, skipped
         +--------------------+------------------+---------------------+--> summary

Run locally on the bundled sample (writes ./output):

    python -m pipelines.currents_to_partners

On your own export, locally or on Dataflow (see README "Run on Dataflow"):

    python -m pipelines.currents_to_partners --input PATH --output PATH [Beam options]
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import tempfile
import time
import uuid
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import (DirectOptions, GoogleCloudOptions,
                                                  PipelineOptions, TestOptions)
from pydantic import ValidationError

from pipelines.local import local_parallelism, local_runner, local_worker_env, runs_locally
from pipelines.options import OptionError, RunConfig, parse
from pipelines.progress import Progress
from pipelines.state import LockHeld, Plan, State, iso_time, new_run_id, run_summary
from pipelines.storage import StorageError, prepare_storage
from transforms import codec
from transforms import (DeduplicateEvents, FormatForPartners, ReadCurrentsExport,
                        ValidateEvents)
from transforms.deliver import FAILED, RETRIABLE, DeliverToPartner, ReadUndelivered
from transforms.fanout import skipped_tag
from transforms.identity_map import ResolveIdentityMap, identity_summary, input_files
from transforms.pii import ApplyPii, apply_to_identity_record, hasher
from transforms.mapping import validate_overrides
from transforms.partners import PARTNERS
from transforms.read import export_size
from transforms.seen import SEEN_NEW
from transforms.sinks import SUMMARY, TEMPORARY, CommitOutputs, ShardRecords, WriteShards
from transforms.summary import (MergeStats, StatsToMetrics, build_summary, file_stats,
                                render_table)
from transforms.types import STATS

OUTPUT_FOLDERS = ("events", "dead_letter", "duplicates", "file_errors") + tuple(
    f"partners/{p}{sub}" for p in PARTNERS for sub in ("", "/_skipped")) + tuple(
    f"delivery_failed/{p}" for p in PARTNERS) + tuple(
    f"identity/{f}" for f in ("map", "conflicts", "deletions", "errors"))


def input_root(path: str) -> str:
    """The folder an export's files are named from: ``--input`` itself, or its folder
    for a single file or a glob (so gs:// and local copies of an export shard alike)."""
    if path.endswith(".avro") or any(c in path for c in "*?["):
        return path[:min([path.find(c) for c in "*?[" if c in path] or [len(path)])
                    ].rsplit("/", 1)[0] + "/"
    return path.rstrip("/") + "/"


def build(p: beam.Pipeline, cfg: RunConfig, temp_dir: str,
          spill_dir: str | None = None, plan: Plan | None = None) -> beam.PCollection:
    """Compose the pipeline on ``p``; returns the single-element summary PCollection.

    ``cfg.shards`` None means ``MIN_SHARDS`` here; ``run`` sizes it from the input first.
    ``spill_dir``: where dedup puts its shuffle values (see DeduplicateEvents); ``run``
    gives a local temporary folder on a local runner, which would otherwise hold them all
    in its own memory. ``plan``: an incremental run's files and seen store
    (``pipelines.state``, with ``--state``).
    """
    n = cfg.shards or MIN_SHARDS
    read = p | "ReadCurrentsExport" >> ReadCurrentsExport(
        cfg.input, cfg.batch_size, as_frames=True, files=plan and plan.new_files)
    checked = read.rows | "ValidateEvents" >> ValidateEvents(strict=cfg.strict)
    seen = plan and plan.seen_store(cfg.dedup_window)
    unique = checked.valid | "DeduplicateEvents" >> DeduplicateEvents(n, spill_dir, seen)
    file_reports = read.files
    if plan:  # files changed since a run processed them: reported, not read
        file_reports = (read.files, p | "ChangedFiles" >> beam.Create(plan.changed)
                        ) | "AllFileReports" >> beam.Flatten()
    identity = unique.events | "ResolveIdentityMap" >> ResolveIdentityMap(
        cfg.identity_map, cfg.deletions, backfill=not cfg.no_backfill_identities, buckets=n,
        spill_dir=spill_dir, facts=unique.facts)
    events = identity.events  # each with identity_source, resolved_external_user_id

    root = input_root(cfg.input)  # shard by the path within the export, not its location
    dead_letter = checked.dead_letter | "ShardDeadLetter" >> ShardRecords(
        n, shard_key=lambda d: f"{d['source'].removeprefix(root)}\x00{d['row']}",
        sort_key=lambda d: (d["source"], d["row"]))
    file_errors = (file_reports
                   | "OnlyFileErrors" >> beam.Filter(lambda f: f["reason"] is not None)
                   | "ShardFileErrors" >> ShardRecords(1, shard_key=lambda f: "",
                                                       sort_key=lambda f: f["source"]))
    # PII (transforms.pii): events/, dead letter and duplicates follow --pii-events;
    # each partner its own policy (partners sharing one are formatted in one pass)
    salt, identities = cfg.pii_salt_value(), cfg.pii_identities
    events_policy = cfg.pii_policy("events")
    policed = {events_policy: events | "PiiEvents" >> ApplyPii(
        events_policy, identities, salt)}
    written = [
        policed[events_policy] | "WriteEvents" >> WriteShards(temp_dir, "events", n),
        dead_letter | "PiiDeadLetter" >> ApplyPii(events_policy, identities, salt, "record")
        | "WriteDeadLetter" >> WriteShards(temp_dir, "dead_letter", n),
        unique.duplicates | "PiiDuplicates" >> ApplyPii(events_policy, identities, salt,
                                                        "record")
        | "WriteDuplicates" >> WriteShards(temp_dir, "duplicates", n),
        file_errors | "WriteFileErrors" >> WriteShards(temp_dir, "file_errors", 1),
    ]
    hide = (functools.partial(apply_to_identity_record, policy=events_policy,
                              digest=hasher(salt) if salt else None)
            if identities and events_policy != "keep" else None)
    identity_map = identity.map
    if hide is not None:
        identity_map = identity_map | "PiiIdentity[map]" >> beam.Map(
            lambda sl: (sl[0], [codec.dumps(hide(codec.loads(line))) for line in sl[1]]))
    written.append(identity_map | "WriteIdentity[map]" >> WriteShards(
        temp_dir, "identity/map", n))
    for name, records in (("conflicts", identity.conflicts),
                          ("deletions", identity.deletions)):
        if hide is not None:
            records = records | f"PiiIdentity[{name}]" >> beam.Map(hide)
        written.append(
            records | f"ShardIdentity[{name}]" >> ShardRecords(1, _json_key, _json_key)
            | f"WriteIdentity[{name}]" >> WriteShards(temp_dir, f"identity/{name}", 1))
    written.append(
        identity.errors | "ShardIdentity[errors]" >> ShardRecords(
            1, lambda r: "", lambda r: (r["source"], r["line"]))
        | "WriteIdentity[errors]" >> WriteShards(temp_dir, "identity/errors", 1))
    stats = [checked.stats, unique.stats, read.files | "FileStats" >> beam.Map(file_stats),
             identity.stats]
    if plan:  # the seen store's next generation is written before the commit
        stats += [unique[SEEN_NEW] | "WriteSeenStore" >> seen.write(),
                  p | "ChangedStats" >> beam.Create(
                      [{"file_errors/changed_after_processing": len(plan.changed),
                        **{f"ledger/{k}": v for k, v in plan.ledger_summary().items()
                           if k != "horizon"}}])]
    # Parquet and BigQuery hold what events/ holds
    warehouse_stats, warehouse_files = warehouse_outputs(policed[events_policy], cfg, root,
                                                         temp_dir)
    stats += warehouse_stats
    written += warehouse_files
    groups: dict[str, list[str]] = {}
    for partner in cfg.partners:
        groups.setdefault(cfg.pii_policy(partner), []).append(partner)
    formatted: dict[str, Any] = {}
    for policy, partners in groups.items():
        if policy not in policed:
            policed[policy] = events | f"Pii[{policy}]" >> ApplyPii(policy, identities, salt)
        label = "FormatForPartners" if len(groups) == 1 else f"FormatForPartners[{policy}]"
        out = policed[policy] | label >> FormatForPartners(
            tuple(partners), cfg.partner_config(), overrides=cfg.overrides,
            forward_new_fields=cfg.forward_new_fields)
        stats.append(out[STATS])
        for partner in partners:
            formatted[partner] = out[partner]
            formatted[skipped_tag(partner)] = out[skipped_tag(partner)]
    for partner in cfg.partners:
        written += [
            formatted[partner] | f"Write[{partner}]" >> WriteShards(
                temp_dir, f"partners/{partner}", n),
            formatted[skipped_tag(partner)] | f"WriteSkipped[{partner}]" >> WriteShards(
                temp_dir, f"partners/{partner}/_skipped", n)]
    for partner in cfg.deliver:  # exactly the payloads written to partners/<partner>/
        payloads, pending = formatted[partner], plan and plan.pending.get(partner)
        if pending:  # and what earlier runs with this --state left undelivered
            earlier = p | f"Undelivered[{partner}]" >> ReadUndelivered(partner, pending)
            stats.append(earlier[STATS])
            payloads = (payloads, earlier.payloads) | f"AndUndelivered[{partner}]" >> (
                beam.Flatten())
        delivery = payloads | f"Deliver[{partner}]" >> DeliverToPartner(
            partner, cfg.delivery_config(partner))
        stats.append(delivery[STATS])
        written.append(
            delivery[FAILED]
            | f"ShardDeliveryFailed[{partner}]" >> ShardRecords(
                n, shard_key=lambda f: str(f["id"]),
                sort_key=lambda f: (str(f["id"]), f["reason"]))
            | f"WriteDeliveryFailed[{partner}]" >> WriteShards(
                temp_dir, f"delivery_failed/{partner}", n))

    written = written | "AllWritten" >> beam.Flatten()
    stats = (stats | "AllStats" >> beam.Flatten() | "StatsToMetrics" >> StatsToMetrics()
             | "MergeStats" >> beam.CombineGlobally(MergeStats()))

    make_summary = functools.partial(summary_with_identity, partners=cfg.partners, shards=n,
                                     deliver=cfg.deliver, dry_run=cfg.deliver_dry_run)
    if plan:
        make_summary = functools.partial(run_summary, make_summary, plan.run_id,
                                         plan.ledger_summary())
    return p | "CommitOutputs" >> CommitOutputs(
        cfg.output, temp_dir, OUTPUT_FOLDERS, written, stats, make_summary)


def _json_key(record: dict) -> str:
    """Shard and order identity/ records by their canonical JSON (braze_id first)."""
    return codec.dumps(record).decode()


def summary_with_identity(stats: dict, **options: Any) -> dict:
    """build_summary plus ``identity`` (transforms.identity_map.identity_summary)."""
    return build_summary(stats, identity=identity_summary(stats), **options)


def warehouse_outputs(events: beam.PCollection, cfg: RunConfig, root: str,
                      temp_dir: str) -> tuple[list, list]:
    """The Parquet and BigQuery sinks that ``cfg`` asks for: (their counters, each given
    once committed, so ``summary.json`` is written after them; dead-letter files)."""
    if not (cfg.parquet_output or cfg.bigquery_dataset):
        return [], []
    from transforms.bigquery import WriteToWarehouse
    from transforms.columns import ObserveColumns
    from transforms.parquet import WriteParquet
    run_id = temp_dir.rstrip("/").rsplit("/", 1)[-1]
    columns = events | "ObserveColumns" >> ObserveColumns()
    stats, files = [], []
    if cfg.parquet_output:
        stats.append(events | "WriteParquet" >> WriteParquet(
            cfg.parquet_output, root, run_id, columns))
    if cfg.bigquery_dataset:
        bq = events | "WriteToWarehouse" >> WriteToWarehouse(
            cfg.bigquery_dataset, cfg.bigquery_method, cfg.bigquery_endpoint, run_id,
            temp_dir, columns, cfg.bigquery_expansion_service)
        stats.append(bq["stats"])
        files.append(bq["dead_letter"])
    return stats, files


# Compressed Avro bytes per dedup shard (~10k events): one shard's copies and survivors
# are what a worker holds at once, so shards grow with the input instead of memory.
SHARD_BYTES = 1_000_000
MIN_SHARDS = 8
# Seen-store entries per dedup shard (incremental runs): ~330 B each in a worker's
# memory (bench/seen_store_size.py), ~65 MB per shard
SEEN_PER_SHARD = 200_000

# Incremental runs (--state): <output>/runs/<run_id>/, and runs/_latest names the last
RUNS, LATEST = "runs", "_latest"


def auto_shards(avro_bytes: int) -> int:
    """Shards for an export of ``avro_bytes``: deterministic, so reruns match."""
    return max(MIN_SHARDS, -(-avro_bytes // SHARD_BYTES))


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _check_output_writable(temp_dir: str) -> None:
    probe = FileSystems.join(temp_dir, ".probe")
    with FileSystems.create(probe) as fo:
        fo.write(b"ok")
    FileSystems.delete([probe])


def _job_not_run_here(options: PipelineOptions) -> bool:
    """A Dataflow dry run or template build: the graph was made, nothing was run."""
    return bool(options.view_as(TestOptions).dry_run
                or options.view_as(GoogleCloudOptions).template_location)


def read_summary(output: str) -> dict:
    import json
    with FileSystems.open(FileSystems.join(output, SUMMARY)) as fo:
        return json.loads(fo.read())


def run(argv: list[str] | None = None) -> int:
    """Parse options, run the pipeline, print the summary; returns the exit code."""
    try:
        cfg, beam_args = parse(argv)
    except OptionError as exc:
        return _fail(str(exc), 2)
    except ValidationError as exc:
        return _fail("; ".join(
            (f"--{'.'.join(map(str, e['loc'])).replace('_', '-')}: " if e["loc"] else "")
            + e["msg"].removeprefix("Value error, ") for e in exc.errors()), 2)
    except ValueError as exc:
        return _fail(str(exc), 2)
    if cfg.explain_mapping:
        from transforms.partners import explain_mapping
        print(explain_mapping(cfg.explain_mapping, cfg.partners or PARTNERS,
                              overrides=cfg.overrides and validate_overrides(cfg.overrides),
                              forward_new_fields=cfg.forward_new_fields), end="")
        return 0
    try:
        prepare_storage([cfg.input], [cfg.output, *filter(None, [cfg.state])], beam_args)
    except StorageError as exc:
        return _fail(str(exc), 2)
    for option, path in (("--identity-map", cfg.identity_map),
                         ("--deletions", cfg.deletions)):
        try:
            if path and not input_files(path):
                return _fail(f"{option} {path}: no file there", 2)
        except Exception as exc:
            return _fail(f"cannot list {option} {path}: {exc}", 2)
    if cfg.bigquery_dataset and cfg.bigquery_method == "file_loads" and not str(
            PipelineOptions(beam_args).view_as(GoogleCloudOptions).temp_location
            ).startswith("gs://"):
        return _fail("--bigquery-method file_loads stages its load files in Cloud Storage: "
                     "pass --temp_location gs://BUCKET/PATH (or use --bigquery-method "
                     "streaming_inserts)", 2)
    if cfg.bigquery_dataset and cfg.bigquery_method == "storage_write_api":
        from transforms.bigquery import storage_write_api_missing
        missing = storage_write_api_missing(cfg.bigquery_expansion_service,
                                            _job_not_run_here(PipelineOptions(beam_args)))
        if missing:
            return _fail(missing, 2)
    if cfg.streaming:
        from pipelines.streaming import run_streaming
        return run_streaming(cfg, beam_args)
    if cfg.state:
        return _incremental(cfg, beam_args)
    return _execute(cfg, beam_args)


def _incremental(cfg: RunConfig, beam_args: list[str]) -> int:
    """``--state``: the new files only, outputs in ``<output>/runs/<run_id>/``, the
    state committed after the outputs (pipelines.state)."""
    try:
        state = State(cfg.state)
        state.lock.acquire()
    except LockHeld as exc:
        return _fail(f"refusing to start: {exc}", 3)
    except Exception as exc:
        return _fail(f"cannot use --state {cfg.state}: {exc}", 2)
    try:
        run_id = new_run_id()
        try:
            plan = state.plan(cfg.input, run_id, cfg.ledger_retention)
        except Exception as exc:
            return _fail(f"cannot list {cfg.input}: {exc}", 2)
        if not plan.listed:
            return _fail(f"no .avro files found under {cfg.input}", 2)
        for partner in cfg.deliver:
            _check_pending(plan, partner)
        if plan.before_horizon:
            print(f"{plan.before_horizon} files under {cfg.input} were last updated before "
                  f"the ledger's horizon ({iso_time(state.doc['ledger_horizon'])}, "
                  "--ledger-retention): not read", flush=True)
        runs = FileSystems.join(cfg.output, RUNS)
        run_cfg = cfg.model_copy(update={"output": FileSystems.join(runs, run_id)})
        if not plan.new_files:
            print(f"Nothing new under {cfg.input} since run {state.doc.get('run_id')}: "
                  f"writing the empty run {run_id}"
                  + (f" ({len(plan.changed)} changed files reported)" if plan.changed
                     else ""), flush=True)
        code = _execute(run_cfg, beam_args, plan)
        try:
            summary = read_summary(run_cfg.output)
        except Exception:  # failed, or a Dataflow dry run: nothing was committed
            print(f"--state {cfg.state} left as it was (no outputs committed)",
                  file=sys.stderr if code else sys.stdout)
            return code
        try:
            state.commit(plan, summary["seen_store"]["entries"],
                         pending_deliveries(cfg, plan, summary, run_cfg.output))
        except LockHeld as exc:
            return _fail(f"outputs in {run_cfg.output}, but {exc}", 1)
        with FileSystems.create(FileSystems.join(runs, LATEST)) as fo:
            fo.write(f"{run_id}\n".encode())
        print(f"State {cfg.state} committed: run {run_id}, {len(plan.new_files)} new "
              f"files recorded" + (f", {plan.pruned} older than "
                                   f"{summary['ledger']['horizon']} forgotten"
                                   if plan.pruned else ""))
        return code
    finally:
        state.lock.release()


def _check_pending(plan: Plan, partner: str) -> None:
    """Say what an earlier run left undelivered to ``partner`` and is sent again; drop
    files that are gone (a cleaned-up runs/ folder) with a warning, not a crash."""
    paths = plan.pending.get(partner)
    if not paths:
        return
    folders = sorted({path.rsplit("/", 1)[0] for path in paths})
    try:
        found = FileSystems.match([FileSystems.join(f, "part-*") for f in folders])
        listed = {m.path for result in found for m in result.metadata_list}
    except Exception:  # a filesystem that raises for a folder that is gone
        listed = set()
    kept = [path for path in paths if path in listed]
    if len(kept) < len(paths):
        print(f"warning: {len(paths) - len(kept)} delivery_failed/{partner} files of an "
              "earlier run are gone; their payloads are not sent again", file=sys.stderr)
    plan.pending[partner] = kept
    if kept:
        print(f"{partner}: sending again what {', '.join(folders)} left undelivered",
              flush=True)


def retriable_failures(delivery: dict) -> int:
    """Payloads of a partner's ``delivery`` summary a new attempt may deliver."""
    return sum(delivery["failed_reasons"].get(reason, 0) for reason in RETRIABLE)


def pending_deliveries(cfg: RunConfig, plan: Plan, summary: dict, output: str) -> dict:
    """Per partner, the delivery_failed/ files the next run sends again: this run's, if
    it left payloads a new attempt can deliver; earlier ones for partners this run did
    not send to, and in a dry run (nothing was sent)."""
    pending = dict(plan.pending)
    for partner in () if cfg.deliver_dry_run else cfg.deliver:
        pending.pop(partner, None)
        if retriable_failures(summary["delivery"][partner]):
            pattern = FileSystems.join(output, "delivery_failed", partner, "part-*")
            pending[partner] = sorted(
                m.path for m in FileSystems.match([pattern])[0].metadata_list)
    return pending


def _execute(cfg: RunConfig, beam_args: list[str], plan: Plan | None = None) -> int:
    """One batch run of ``cfg`` (``plan``: an incremental run's files and seen store)."""
    if plan is not None:
        files, size = len(plan.new_files), sum(m[0] for m in plan.new_meta.values())
    else:
        try:
            files, size = export_size(cfg.input)
        except Exception as exc:
            return _fail(f"cannot list {cfg.input}: {exc}", 2)
        if not files:
            return _fail(f"no .avro files found under {cfg.input}", 2)
    if cfg.shards is None:  # with --state, dedup shards also hold the seen store
        cfg = cfg.model_copy(update={"shards": max(auto_shards(size), -(-(
            plan.seen_entries if plan else 0) // SEEN_PER_SHARD))})
    given, beam_args = beam_args, local_parallelism(beam_args, size)
    temp_dir = FileSystems.join(cfg.output, TEMPORARY, uuid.uuid4().hex)
    try:
        _check_output_writable(temp_dir)
    except Exception as exc:
        return _fail(f"cannot write to {cfg.output}: {exc}", 2)

    print(f"Reading {files} files ({size / 2**20:.1f} MiB) under {cfg.input}\n"
          f"Writing {cfg.output} ({cfg.shards} shards)", flush=True)
    started = time.monotonic()
    options = PipelineOptions(beam_args, save_main_session=False)
    if beam_args != given:  # worker processes added
        workers = options.view_as(DirectOptions).direct_num_workers
        print(f"Using {workers} local worker processes "
              "(--direct_num_workers=1 for one process)", flush=True)
        local_worker_env(os.environ)
    if not os.environ.get("CURRENTS_DEBUG"):  # workers' start-up warnings, relayed
        logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(
            logging.ERROR)
    try:
        spill = (tempfile.TemporaryDirectory(prefix="currents-shuffle-")
                 if runs_locally(options) else contextlib.nullcontext())
        with spill as spill_dir, progress(cfg, spill_dir, temp_dir, files), beam.Pipeline(
                runner=local_runner(options), options=options) as p:
            build(p, cfg, temp_dir, spill_dir, plan)
        if _job_not_run_here(options):
            print("Dataflow job built (--dry_run or --template_location), not run: no outputs")
            return 0
        summary = read_summary(cfg.output)
    except Exception as exc:
        logging.getLogger(__name__).debug("run failed", exc_info=True)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return _fail(f"run failed: {first} (set CURRENTS_DEBUG=1 for the traceback)"
                     if not os.environ.get("CURRENTS_DEBUG") else repr(exc), 1)
    print(render_table(summary))
    print(f"Done in {time.monotonic() - started:.1f}s. Outputs in {cfg.output}")
    ratio = summary["invalid"] / summary["rows_read"] if summary["rows_read"] else 0.0
    if cfg.max_invalid_ratio is not None and ratio > cfg.max_invalid_ratio:
        return _fail(f"invalid ratio {ratio:.4f} exceeds --max-invalid-ratio "
                     f"{cfg.max_invalid_ratio}", 1)
    if not summary["conservation_ok"]:
        return _fail("conservation check failed: rows_read != valid + invalid + duplicates", 1)
    return _check_delivery(cfg, summary)


def progress(cfg: RunConfig, spill_dir: str | None, temp_dir: str, files: int) -> Any:
    """Progress lines while a local run goes (``--progress-every``); none elsewhere."""
    if spill_dir is None or not cfg.progress_every:
        return contextlib.nullcontext()
    return Progress(cfg.progress_every, spill_dir, temp_dir, files, cfg.shards)


def _check_delivery(cfg: RunConfig, summary: dict) -> int:
    """Every payload written for a delivered partner is delivered or in
    delivery_failed/ (else exit 1); events left undelivered by retries or refused
    credentials also fail the run (a rerun can deliver them: dedup keys make it safe)."""
    code = 0
    for partner in cfg.deliver:
        d = summary["delivery"][partner]
        if cfg.deliver_dry_run:
            print(f"dry run: {partner}: {d['requests']} requests, {d['bytes_sent']} bytes "
                  f"would go to {cfg.delivery_config(partner).url(partner)}")
        if not d["accounted"]:
            code = _fail(f"delivery accounting broken for {partner}: delivered "
                         f"{d['delivered']} + failed {d['failed']} != written "
                         f"{summary['partners'][partner]['written']}", 1)
            continue
        if d["failed"]:
            reasons = ", ".join(f"{r} {k}" for r, k in d["failed_reasons"].items())
            print(f"{partner}: {d['failed']} events not delivered ({reasons}); see "
                  f"delivery_failed/{partner}/", file=sys.stderr)
        undelivered = retriable_failures(d)
        if undelivered:
            code = _fail(f"{undelivered} events not delivered to {partner} "
                         "(retries exhausted or credentials refused); " + (
                             "the next run with this --state sends them again"
                             if cfg.state else "rerun to resend") +
                         " (the partner deduplicates by event id)", 1)
    return code


def main() -> None:
    try:
        code = run(sys.argv[1:])
    except KeyboardInterrupt:  # Ctrl-C: one line, not the runner's threads' stacks
        code = _fail("interrupted: nothing was committed (an earlier run's outputs and "
                     "--state are as they were)", 130)
    sys.exit(code)


if __name__ == "__main__":
    main()
