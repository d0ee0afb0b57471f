"""The benchmark runs end to end (tiny, so it never rots; timings are not asserted)."""
import json
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_benchmark_runs_all_four_jobs_on_a_generated_export(tmp_path):
    result_file = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--events", "3000", "--data",
         str(tmp_path / "export"), "--json", str(result_file)],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(result_file.read_text())
    assert set(result["results"]) == {"a", "b", "c", "d"}
    assert result["rows"] > 3000  # + the duplicates the generator adds
    assert {"a/c wall", "a/d wall", "d/b CPU"} <= set(result["ratios"])
    assert set(result["targets"]) == {"a/c wall >= 3", "a/d wall >= 2.5", "d/b CPU <= 3",
                                      "d peak RSS MB <= 1024"}
    assert "targets (issue 6" in done.stdout
    for job in result["results"].values():
        assert job["wall_s"] > 0 and job["cpu_s"] > 0 and job["peak_rss_mb"] > 0


def test_targets_are_judged_on_the_measured_values():
    from bench.run import check_targets
    results = {"d": {"peak_rss_mb": 1500.0}}
    ratios = {"a/c wall": 3.2, "a/d wall": 1.8, "d/b CPU": 2.9}
    assert check_targets(results, ratios) == {
        "a/c wall >= 3": (3.2, True), "a/d wall >= 2.5": (1.8, False),
        "d/b CPU <= 3": (2.9, True), "d peak RSS MB <= 1024": (1500.0, False)}
    assert check_targets({}, {"a/c wall": 2.0}) == {"a/c wall >= 3": (2.0, False)}
