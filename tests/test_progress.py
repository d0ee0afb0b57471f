"""Progress lines of a local run: counted from the run's own temporary files."""
import io
import re

from pipelines.currents_to_partners import run
from pipelines.options import bundled_sample
from pipelines.progress import Progress
from transforms.identity_map import PARKED_PREFIX

LINE = re.compile(r"progress \d+:\d\d, read (\d+) of (\d+) files, deduplicated (\d+) of "
                  r"(\d+) shards, wrote (\d+) of (\d+) shards")


def test_counts_come_from_the_runs_files_and_never_go_back(tmp_path):
    spill, temp = tmp_path / "spill", tmp_path / "temp"
    spill.mkdir()
    progress = Progress(10, str(spill), str(temp), files=5, shards=4, out=io.StringIO())
    assert LINE.fullmatch(progress.line()).groups() == ("0", "5", "0", "4", "0", "4")
    for name in ("a1.zst", "b2.zst", "c3.zst", f"{PARKED_PREFIX}0-x.zst",
                 f"{PARKED_PREFIX}3-y.zst"):
        (spill / name).write_bytes(b"")
    (temp / "events").mkdir(parents=True)
    (temp / "events" / "part-00000-of-00004.ndjson").write_bytes(b"{}\n")
    assert LINE.fullmatch(progress.line()).groups() == ("3", "5", "2", "4", "1", "4")
    # committed: the shard moved out of the temporary folder; more spill files than
    # files (a retried bundle writes its own): neither shows as more or less done
    (temp / "events" / "part-00000-of-00004.ndjson").unlink()
    for n in range(6):
        (spill / f"retry{n}.zst").write_bytes(b"")
    assert LINE.fullmatch(progress.line()).groups() == ("5", "5", "2", "4", "1", "4")


def test_a_local_run_prints_progress_lines_unless_told_not_to(tmp_path, capsys):
    args = ["--input", str(bundled_sample()), "--output", str(tmp_path / "out"),
            "--partners", ""]
    assert run(args + ["--progress-every", "0.02"]) == 0
    lines = [LINE.fullmatch(x) for x in capsys.readouterr().out.splitlines()
             if x.startswith("progress ")]
    assert lines and all(lines)
    counts = [tuple(map(int, m.groups())) for m in lines]
    assert all(x <= y for a, b in zip(counts, counts[1:]) for x, y in zip(a, b))
    assert run(args + ["--progress-every", "0"]) == 0
    assert "progress " not in capsys.readouterr().out
