"""The README's library examples run as written, and the API reference builds."""
import os
import re
import subprocess
import sys

from pipelines.options import bundled_sample
from tests.conftest import REPO


def readme_blocks() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Use the transforms in your own pipeline", 1)[1].split("\n## ")[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_pipeline_example_runs(tmp_path):
    namespace: dict = {}
    exec(compile(readme_blocks()[0], "README.md[pipeline]", "exec"), namespace)
    out = tmp_path / "clicks.csv"
    namespace["email_clicks_per_campaign"](bundled_sample(), str(out))
    lines = out.read_text().splitlines()
    counts = dict(line.rsplit(",", 1) for line in lines)
    assert sum(map(int, counts.values())) == 11  # unique valid email clicks in the sample


def test_the_pytest_example_passes(tmp_path):
    test_file = tmp_path / "test_from_readme.py"
    test_file.write_text(readme_blocks()[1])
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # as installed by `pip install -e .`
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             str(test_file)], capture_output=True, text=True, cwd=tmp_path,
                            timeout=300, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_misuse_fails_when_the_pipeline_is_built():
    import apache_beam as beam
    import pytest
    from apache_beam.typehints.decorators import TypeCheckError
    from transforms import DeduplicateEvents, ValidateEvents
    with pytest.raises(TypeCheckError):
        beam.Pipeline() | beam.Create(["not a batch"]) | ValidateEvents()
    with pytest.raises(TypeCheckError):
        beam.Pipeline() | beam.Create([("users.x", "src", 0, [], None)]) | DeduplicateEvents()


def test_api_reference_builds(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pdoc", "-o", str(tmp_path), "transforms",
                             "pipelines", "schemas"], capture_output=True, text=True,
                            cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "transforms.html").read_text()
    for name in ("ReadCurrentsExport", "ValidateEvents", "DeduplicateEvents",
                 "ResolveIdentities", "FormatForPartner", "FormatForPartners"):
        assert name in page
