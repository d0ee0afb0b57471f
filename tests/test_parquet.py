"""--parquet-output: a Hive-partitioned Parquet lake read back by DuckDB and pyarrow."""
import json

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from pipelines.currents_to_partners import run
from schemas import warehouse
from tests.conftest import read_ndjson
from transforms.testing import BASE_TIME, make_record, write_export

# runs real emulators or whole exports: excluded from the quick `pytest -m "not slow"`
pytestmark = pytest.mark.slow

SEND, CLICK, CUSTOM = ("users.messages.email.Send", "users.messages.email.Click",
                       "users.behaviors.CustomEvent")
DAY = 86_400


def export(root, offset_seed: int = 0):
    """Two days of Send (one file with a field Braze added later), Click and Location."""
    sends = [make_record(SEND, seed=i + offset_seed, time=BASE_TIME + (i % 2) * DAY)
             for i in range(40)]
    newer = [dict(make_record(SEND, seed=100 + i + offset_seed), bot_score=0.5 + i / 100)
             for i in range(5)]
    return write_export(root, [
        {"event_type": SEND, "rows": sends},
        {"event_type": SEND, "rows": newer, "extra_fields": {"bot_score": "double"},
         "schema_id": 2, "offset": 1},
        {"event_type": CLICK, "rows": [make_record(CLICK, seed=i + offset_seed)
                                       for i in range(12)]},
        {"event_type": CUSTOM, "rows": [make_record(CUSTOM, seed=i + offset_seed,
                                                      complete=True) for i in range(7)]},
    ])


@pytest.fixture(scope="module")
def lake_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("parquet")
    src = export(base / "in")
    out, lake = base / "out", base / "lake"
    args = ["--input", str(src), "--output", str(out), "--partners", "",
            "--parquet-output", str(lake)]
    assert run(args) == 0
    return base, args, out, lake


def _dataset(lake):
    return ds.dataset(lake, format="parquet", partitioning="hive")


def test_hive_layout_types_and_rows_equal_events(lake_run, catalogue):
    _, _, out, lake = lake_run
    events = read_ndjson(out / "events")
    summary = json.loads((out / "summary.json").read_text())
    assert len(events) == 64
    assert summary["parquet"] == {"files": 4, "rows_written": 64}
    files = sorted(p.relative_to(lake).as_posix() for p in lake.rglob("*.parquet"))
    assert [f.rsplit("/", 1)[0] for f in files] == [
        f"event_type={CUSTOM}/date=2026-11-24", f"event_type={CLICK}/date=2026-11-24",
        f"event_type={SEND}/date=2026-11-24", f"event_type={SEND}/date=2026-11-25"]
    assert not (lake / "_temporary").exists()
    # per type: the catalogue's columns with the shared mapping, plus the newer field
    for etype in (SEND, CLICK, CUSTOM):
        mine = [e for e in events if e["event_type"] == etype]
        folder = lake / f"event_type={etype}"
        schema = pq.read_schema(next(folder.rglob("*.parquet")))
        columns = json.loads((warehouse.BIGQUERY_DIR / f"{warehouse.table_name(etype)}.json"
                              ).read_text())
        for column in columns:
            assert schema.field(column["name"]).type == warehouse.arrow_type(column)
            assert schema.field(column["name"]).nullable == (column["mode"] != "REQUIRED")
        table = ds.dataset(folder, format="parquet", partitioning="hive").to_table()
        assert table.num_rows == len(mine)
        got = {r["id"]: r for r in table.to_pylist()}
        for e in mine:
            row = got[e["id"]]
            assert row["event_timestamp"].timestamp() == e["time"]
            for name, value in e.items():
                if name == "properties" and value is not None:
                    assert json.loads(row[name]) == json.loads(value)
                else:
                    assert row[name] == value, (etype, name)
    send_schema = pq.read_schema(next((lake / f"event_type={SEND}").rglob("*.parquet")))
    assert send_schema.field("bot_score").type == pa.float64()
    custom_schema = pq.read_schema(next((lake / f"event_type={CUSTOM}").rglob("*.parquet")))
    assert custom_schema.field("properties").type == pa.json_(pa.string())
    assert send_schema.field("event_timestamp").type == pa.timestamp("us", tz="UTC")
    assert pq.ParquetFile(next(lake.rglob("*.parquet"))).metadata.row_group(0).column(
        0).compression == "ZSTD"


def test_duckdb_reads_the_lake_with_partitions(lake_run):
    _, _, out, lake = lake_run
    events = read_ndjson(out / "events")
    con = duckdb.connect()
    rows = con.execute(
        "SELECT event_type, CAST(date AS VARCHAR), count(*) FROM read_parquet(?, "
        "hive_partitioning = true, union_by_name = true) GROUP BY ALL ORDER BY ALL",
        [f"{lake}/*/*/*.parquet"]).fetchall()
    sends = [e for e in events if e["event_type"] == SEND]
    assert rows == sorted([
        (CLICK, "2026-11-24", 12), (CUSTOM, "2026-11-24", 7),
        (SEND, "2026-11-24", sum(1 for e in sends if e["time"] < BASE_TIME + DAY)),
        (SEND, "2026-11-25", sum(1 for e in sends if e["time"] >= BASE_TIME + DAY))])
    kinds = dict(con.execute(
        "SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM read_parquet(?))",
        [f"{lake}/event_type={SEND}/*/*.parquet"]).fetchall())
    assert (kinds["time"], kinds["event_timestamp"], kinds["bot_score"],
            kinds["email_address"]) == ("BIGINT", "TIMESTAMP WITH TIME ZONE", "DOUBLE",
                                        "VARCHAR")
    plans = con.execute("SELECT json_extract_string(properties, '$.plan') FROM read_parquet("
                        "?, hive_partitioning = true) ORDER BY id",
                        [f"{lake}/event_type={CUSTOM}/*/*.parquet"]).fetchall()
    customs = sorted((e for e in events if e["event_type"] == CUSTOM), key=lambda e: e["id"])
    assert [p for (p,) in plans] == [
        json.loads(e["properties"])["plan"] if e.get("properties") else None for e in customs]


def test_rerun_replaces_its_files_and_another_input_adds_its_own(lake_run):
    base, args, _, lake = lake_run
    before = _dataset(lake).count_rows()
    assert run(args) == 0
    assert _dataset(lake).count_rows() == before
    other = export(base / "in2", offset_seed=1000)
    assert run(["--input", str(other), "--output", str(base / "out2"), "--partners", "",
                "--parquet-output", str(lake)]) == 0
    assert _dataset(lake).count_rows() == 2 * before
    keys = {p.name.split("-")[1] for p in lake.rglob("*.parquet")}
    assert len(keys) == 2  # one name key per input
