"""The benchmark runs end to end (tiny, so it never rots; timings are not asserted)."""
import json
import subprocess
import sys

from tests.conftest import REPO


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
    for job in result["results"].values():
        assert job["wall_s"] > 0 and job["cpu_s"] > 0 and job["peak_rss_mb"] > 0
