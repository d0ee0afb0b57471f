"""Every count of summary.json is also a Beam Metrics counter, read from the PipelineResult."""
import json

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.currents_to_partners import build
from pipelines.local import local_runner
from pipelines.options import bundled_sample, parse
from transforms.summary import METRICS_NAMESPACE, metric_increments


def summary_counts(summary: dict) -> dict[str, int]:
    """Each count of summary.json under the counter name it is documented with."""
    counts = {k: summary[k] for k in ("rows_read", "valid", "invalid",
                                      "duplicates_dropped", "conflicting_duplicates")}
    for group, prefix in (("unknown_event_types", "unknown_rows/"),
                          ("by_event_type", "by_event_type/"),
                          ("dead_letter_reasons", "dead_letter_reasons/")):
        counts.update({prefix + k: n for k, n in summary[group].items()})
    counts["files_read"] = summary["files"]["read"]
    counts["files_with_errors"] = summary["files"]["with_errors"]
    counts.update({f"file_errors/{k}": n for k, n in summary["files"]["error_reasons"].items()})
    for partner, p in summary["partners"].items():
        for key in ("eligible", "not_eligible", "written", "skipped"):
            counts[f"partners/{partner}/{key}"] = p[key]
        for key in ("not_eligible", "skipped"):
            counts.update({f"partners/{partner}/{key}/{k}": n
                           for k, n in p[f"{key}_reasons"].items()})
        if p["property_collisions"]:
            counts[f"partners/{partner}/property_collisions"] = p["property_collisions"]
        counts.update({f"partners/{partner}/new_fields_held_back/{k}": n
                       for k, n in p["new_fields_held_back"].items()})
    counts.update({f"warnings/{w['event_type']}/{w['field']}": w["count"]
                   for w in summary["warnings"]})
    identity = summary["identity"]
    counts.update({f"identity/{k}": n for k, n in identity.items()
                   if isinstance(n, int) and n and k != "conflicts"})
    counts.update({f"identity/conflicts/{k}": n
                   for k, n in identity["conflict_kinds"].items()})
    return counts


def test_every_summary_count_is_a_metrics_counter(tmp_path):
    cfg, beam_args = parse(["--output", str(tmp_path / "out"), "--mixpanel-token", "mp-x",
                            "--input", str(bundled_sample())])
    options = PipelineOptions(beam_args)
    p = beam.Pipeline(runner=local_runner(options), options=options)
    build(p, cfg, str(tmp_path / "out" / "_temporary" / "run"))
    result = p.run()
    result.wait_until_finish()
    counters = {c.key.metric.name: c.committed for c in result.metrics().query(
        MetricsFilter().with_namespace(METRICS_NAMESPACE))["counters"]}
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    expected = summary_counts(summary)
    # the sample has something in every group: a test that can fail for each
    assert summary["files"]["with_errors"] == 0 or expected["files_with_errors"]
    assert all(summary[k] for k in ("invalid", "duplicates_dropped", "unknown_event_types"))
    assert all(p["skipped"] and p["written"] for p in summary["partners"].values())
    assert {k: counters.get(k, 0) for k in expected} == expected
    assert set(counters) <= set(expected)  # no counter the summary does not show


def test_metric_increments_add_the_totals_the_summary_shows():
    stats = {"rows_read": 3, "file_errors/not_avro": 1, "file_errors/empty": 2,
             "partners/segment/skipped/a/b": 2, "partners/segment/not_eligible/x": 1,
             "partners/segment/written": 4, "valid": 0}
    got = {}
    for name, n in metric_increments(stats):
        got[name] = got.get(name, 0) + n
    assert got == {"rows_read": 3, "file_errors/not_avro": 1, "file_errors/empty": 2,
                   "files_with_errors": 3, "partners/segment/skipped/a/b": 2,
                   "partners/segment/skipped": 2, "partners/segment/not_eligible/x": 1,
                   "partners/segment/not_eligible": 1, "partners/segment/written": 4}
