"""The run summary: counters from every step, merged, checked and rendered.

Each step emits flat counters (``{"valid": 3, "by_event_type/<type>": 2}``) as data, so
the summary is right on every runner (Beam metrics are best-effort on some). The
summary proves conservation: ``rows_read == valid + invalid + duplicates_dropped``.
``StatsToMetrics`` also adds each of them to a Beam ``Metrics`` counter of the same name
(namespace ``currents``), so a runner's console (Dataflow's) shows them during the run.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Iterable, Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms.types import FileReport, Stats


class MergeStats(beam.CombineFn):
    """Sum flat counters."""

    def create_accumulator(self) -> Counter:
        return Counter()

    def add_input(self, acc: Counter, stats: Stats) -> Counter:
        acc.update(stats)
        return acc

    def merge_accumulators(self, accs: Iterable[Counter]) -> Counter:
        total: Counter = Counter()
        for acc in accs:
            total.update(acc)
        return total

    def extract_output(self, acc: Counter) -> dict:
        return dict(acc)


METRICS_NAMESPACE = "currents"
# Reasons whose totals summary.json shows too: (prefix, total's counter name); the
# partner's name is the second part of "partners/<partner>/skipped/<reason>"
_TOTALS = {"file_errors": "files_with_errors"}
_PARTNER_TOTALS = ("skipped", "not_eligible")


def metric_increments(stats: Stats) -> Iterator[tuple[str, int]]:
    """(counter name, increment) for one stats dict: each key as it is, plus the totals
    that summary.json shows (``files_with_errors``, ``partners/<p>/skipped``,
    ``partners/<p>/not_eligible``)."""
    for key, n in stats.items():
        if not n:
            continue
        yield key, n
        parts = key.split("/", 3)
        if parts[0] in _TOTALS:
            yield _TOTALS[parts[0]], n
        elif parts[0] == "partners" and len(parts) == 4 and parts[2] in _PARTNER_TOTALS:
            yield f"partners/{parts[1]}/{parts[2]}", n


class _CountInMetrics(beam.DoFn):
    def process(self, stats: Stats) -> Iterator[Stats]:
        for name, n in metric_increments(stats):
            Metrics.counter(METRICS_NAMESPACE, name).inc(n)
        yield stats


@beam.typehints.with_input_types(Stats)
@beam.typehints.with_output_types(Stats)
class StatsToMetrics(beam.PTransform):
    """Stats dicts (any step's ``stats`` output) -> the same dicts, each count also added
    to the Beam counter of its name in namespace ``currents`` (plus the totals
    summary.json shows). Counters are what a runner's UI shows while the job runs; the
    summary stays the exact record (a runner may count a retried bundle twice)."""

    def expand(self, stats):
        return stats | "CountInMetrics" >> beam.ParDo(_CountInMetrics())


def file_stats(report: FileReport) -> Stats:
    stats = {"files_read": 1}
    if report["reason"]:
        stats[f"file_errors/{report['reason']}"] = 1
    return stats


def _group(stats: dict, prefix: str) -> dict[str, int]:
    return {k[len(prefix):]: v for k, v in sorted(stats.items()) if k.startswith(prefix)}


def build_summary(stats: dict, partners: Iterable[str] = (), deliver: Iterable[str] = (),
                  dry_run: bool = False, **extra: Any) -> dict:
    """The summary.json document from merged counters."""
    rows_read = stats.get("rows_read", 0)
    valid, invalid = stats.get("valid", 0), stats.get("invalid", 0)
    dropped = stats.get("duplicates_dropped", 0)
    summary = {
        "rows_read": rows_read,
        "valid": valid,
        "invalid": invalid,
        "duplicates_dropped": dropped,
        "conflicting_duplicates": stats.get("conflicting_duplicates", 0),
        "conservation_ok": rows_read == valid + invalid + dropped,
        "unknown_event_types": _group(stats, "unknown_rows/"),
        "by_event_type": _group(stats, "by_event_type/"),
        "dead_letter_reasons": _group(stats, "dead_letter_reasons/"),
        "files": {"read": stats.get("files_read", 0),
                  "with_errors": sum(_group(stats, "file_errors/").values()),
                  "error_reasons": _group(stats, "file_errors/")},
        "warnings": [{"event_type": key.rsplit("/", 1)[0], "field": key.rsplit("/", 1)[1],
                      "reason": "null_allowed_by_writer_schema", "count": n}
                     for key, n in _group(stats, "warnings/").items()],
        "partners": {},
    }
    for partner in partners:
        not_eligible = _group(stats, f"partners/{partner}/not_eligible/")
        skipped = _group(stats, f"partners/{partner}/skipped/")
        summary["partners"][partner] = {
            "eligible": stats.get(f"partners/{partner}/eligible", 0),
            "not_eligible": sum(not_eligible.values()),
            "not_eligible_reasons": not_eligible,
            "written": stats.get(f"partners/{partner}/written", 0),
            "skipped": sum(skipped.values()),
            "skipped_reasons": skipped,
            "property_collisions": stats.get(f"partners/{partner}/property_collisions", 0),
            "new_fields_held_back": _group(stats, f"partners/{partner}/new_fields_held_back/"),
        }
    if deliver:
        summary["delivery"] = {p: delivery_summary(stats, p, dry_run) for p in deliver}
        for p, d in summary["delivery"].items():
            d["accounted"] = (d["delivered"] + d["failed"] == d["carried_over"]
                              + summary["partners"].get(p, {}).get("written", 0))
    if any(k.startswith("parquet/") for k in stats):
        summary["parquet"] = {"files": stats.get("parquet/files", 0),
                              "rows_written": stats.get("parquet/rows_written", 0)}
    if any(k.startswith("bigquery/") for k in stats):
        summary["bigquery"] = {key: stats.get(f"bigquery/{key}", 0)
                               for key in ("tables", "rows_written", "rows_rejected")}
    summary.update(extra)
    return summary


def delivery_summary(stats: dict, partner: str, dry_run: bool = False) -> dict:
    """``delivery.<partner>``: delivered + failed = payloads written for it plus those
    carried over from earlier runs (checked by the caller, as ``accounted``). In a dry
    run "delivered" counts what would be sent."""
    failed = _group(stats, f"delivery/{partner}/failed/")
    d = {"delivered": stats.get(f"delivery/{partner}/delivered", 0),
         "failed": sum(failed.values()), "failed_reasons": failed}
    for key in ("carried_over", "requests", "retried_requests", "bytes_sent"):
        d[key] = stats.get(f"delivery/{partner}/{key}", 0)
    if dry_run:
        d["dry_run"] = True
    return d


def render_table(summary: dict) -> str:
    """The summary as a readable table for the end of a run."""
    rows: list[tuple[str, Any]] = [
        ("rows read", summary["rows_read"]),
        ("valid (unique events written)", summary["valid"]),
        ("invalid (dead letter)", summary["invalid"]),
        ("duplicates dropped", summary["duplicates_dropped"]),
        ("  of which conflicting", summary["conflicting_duplicates"]),
        ("conservation rows = valid+invalid+dups",
         "ok" if summary["conservation_ok"] else "BROKEN"),
        ("files read", summary["files"]["read"]),
        ("files with errors", summary["files"]["with_errors"]),
    ]
    for reason, n in summary["files"]["error_reasons"].items():
        rows.append((f"  file: {reason}", n))
    for reason, n in summary["dead_letter_reasons"].items():
        rows.append((f"  dead letter: {reason}", n))
    for etype, n in summary["unknown_event_types"].items():
        rows.append((f"  unknown type: {etype}", n))
    for warning in summary.get("warnings", []):
        rows.append((f"  warning: null {warning['event_type'].split('.', 1)[-1]}."
                     f"{warning['field']}", warning["count"]))
    ident = summary.get("identity")
    if ident:
        backfilled = sum(ident[f"backfilled_{s}"] for s in ("export", "merge", "user_map"))
        rows.append(("identity: own / backfilled / none",
                     f"{ident['from_event']} / {backfilled} / {ident['unresolved']}"))
        for key in ("conflicts", "orphan_chains", "deletion_requests", "deleted_events",
                    "input_errors"):
            if ident.get(key):
                rows.append((f"  identity {key.replace('_', ' ')}", ident[key]))
    for partner, p in summary["partners"].items():
        rows.append((f"{partner}: written / skipped", f"{p['written']} / {p['skipped']}"))
        for reason, n in p["skipped_reasons"].items():
            rows.append((f"  {partner} skipped: {reason}", n))
        if p.get("property_collisions"):
            rows.append((f"  {partner} property collisions", p["property_collisions"]))
        for field, n in p.get("new_fields_held_back", {}).items():
            rows.append((f"  {partner} held back: {field}", n))
    for partner, d in summary.get("delivery", {}).items():
        rows.append((f"{partner}: delivered / failed" + (" (dry run)" if d.get("dry_run")
                                                         else ""),
                     f"{d['delivered']} / {d['failed']}"))
        rows.append((f"  {partner} requests (retried)",
                     f"{d['requests']} ({d['retried_requests']})"))
        if d.get("carried_over"):
            rows.append((f"  {partner} from earlier runs", d["carried_over"]))
        for reason, n in d["failed_reasons"].items():
            rows.append((f"  {partner} failed: {reason}", n))
    if "parquet" in summary:
        rows.append(("parquet: files / rows", f"{summary['parquet']['files']} / "
                                               f"{summary['parquet']['rows_written']}"))
    if "bigquery" in summary:
        bq = summary["bigquery"]
        rows.append(("bigquery: rows written / rejected",
                     f"{bq['rows_written']} / {bq['rows_rejected']}"))
    width = max(len(k) for k, _ in rows)
    lines = ["Run summary", "-" * (width + 12)]
    lines += [f"{k.ljust(width)}  {v:>11}" for k, v in rows]
    types = summary["by_event_type"]
    if types:
        lines.append("-" * (width + 12))
        lines.append(f"{len(types)} event types; largest: " + ", ".join(
            f"{t.split('.', 1)[-1]} {n}" for t, n in sorted(types.items(), key=lambda kv: -kv[1])[:5]))
    return "\n".join(lines)
