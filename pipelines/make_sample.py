"""Build the bundled sample export (``pipelines/sample_export``) from the catalogue.

Every documented event type, two hours of files each, ~30% anonymous users, duplicates
within and across files, a second schema id with a field Braze added later, a type the
catalogue does not know, and a few broken rows so the dead letter has something to show.
Deterministic: the same catalogue gives the same bytes.
``python -m pipelines.make_sample [TARGET]`` (default: the bundled folder).
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

from schemas.catalogue import load_catalogue
from transforms.testing import make_record, write_export

SAMPLE = Path(__file__).resolve().parent / "sample_export"
ROWS_PER_FILE = 5
HOURS = ("2026-11-24-08", "2026-11-24-09")


def sample_files() -> list[dict]:
    catalogue = load_catalogue()
    files = []
    for t_index, etype in enumerate(catalogue.event_types):
        for h_index, hour in enumerate(HOURS):
            rows = [make_record(etype, seed=f"{hour}:{i}", anonymous=(t_index + i) % 3 == 0)
                    for i in range(ROWS_PER_FILE)]
            if h_index == 1:
                rows.append(files[-1]["rows"][0])            # redelivered an hour later
            if t_index % 4 == 0:
                rows.append(dict(rows[1]))                   # repeated within a file
            files.append({"event_type": etype, "rows": rows, "hour": hour, "offset": h_index})
    click = "users.messages.email.Click"
    files.append({"event_type": click, "hour": HOURS[1], "schema_id": 2, "offset": 7,
                  "extra_fields": {"bot_score": "double"},
                  "rows": [make_record(click, seed="v2", bot_score=0.93)]})
    broken = [
        ("users.behaviors.CustomEvent", {"properties": "{not json"}),
        ("users.behaviors.Purchase", {"properties": "[1, 2]"}),
        ("users.messages.whatsapp.Read", {"time": BASE_MS}),  # time is a long there
        ("users.messages.pushnotification.Send", {"time": None}),  # needed, whatever the schema
    ]
    for etype, override in broken:
        files.append({"event_type": etype, "hour": HOURS[1], "offset": 9, "nullable": override,
                      "rows": [make_record(etype, seed="broken", **override)]})
    orphan = {"id": "string", "user_id": "string", "external_user_id": "string",
              "time": "int", "orphaned_by_id": "string"}
    files.append({"event_type": "users.UserOrphan", "hour": HOURS[1], "extra_fields": orphan,
                  "rows": [{"id": f"orphan-{i}", "user_id": f"{i:024x}",
                            "external_user_id": None, "time": 1_795_507_300 + i,
                            "orphaned_by_id": f"{i + 100:024x}"} for i in range(3)]})
    return files


BASE_MS = 1_795_507_200_000  # a time in milliseconds: rejected as implausible


def main(argv: list[str] | None = None) -> int:
    target = Path(argv[0]) if argv else SAMPLE
    if target.exists():
        shutil.rmtree(target)
    write_export(target, sample_files())
    n = sum(1 for _ in target.rglob("*.avro"))
    print(f"wrote {n} files under {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
