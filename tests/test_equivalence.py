"""Speed never costs correctness: every output of the optimised pipeline (batches, batch
coder, compiled checks and payload builders, packed shuffle, shards formatted and written
in chunks, worker processes) equals what
a straightforward row-by-row implementation of the same rules gives on the same input."""
import shutil
from collections import Counter

import fastavro
import orjson
import pytest
from pydantic import ValidationError

from bench.generate import generate
from pipelines.currents_to_partners import run
from schemas.catalogue import event_model, load_catalogue, relaxed_spec
from tests.conftest import REPO, read_ndjson
from transforms import codec
from transforms.identities import PARTNERS
from transforms.partners import PartnerFormatter
from transforms.read import event_type_from_path, float32_shortest, writer_facts
from transforms.validate import MAX_PAYLOAD_BYTES, reason_for

CONFIG = {"mixpanel_token": "tok", "mparticle_environment": "production"}


def straightforward(root) -> dict[str, Counter]:
    """One row at a time: fastavro (32-bit floats as their shortest decimal), the pydantic
    model as the file's writer schema relaxes it, a dict for dedup, the formatter."""
    catalogue = load_catalogue()
    best, seen, dead = {}, [], Counter()
    for path in sorted(root.rglob("*.avro")):
        etype = event_type_from_path(str(path))
        spec = catalogue.get(etype)
        with open(path, "rb") as fo:
            reader = fastavro.reader(fo)
            floats, nulls = writer_facts(reader.writer_schema)
            rows = list(reader)
            for name in floats:
                for r, v in zip(rows, float32_shortest([r[name] for r in rows])):
                    r[name] = v
        for row, record in enumerate(rows):
            reason = None
            if spec is not None:
                relaxed, items = relaxed_spec(spec, nulls)
                try:
                    event_model(etype, relaxed, items).model_validate(record)
                except ValidationError as exc:
                    reason = reason_for(exc.errors(), record, set(relaxed.required))
            payload = codec.dumps({**record, "event_type": etype})
            if reason is None and len(payload) > MAX_PAYLOAD_BYTES:
                reason = "payload_too_large"
            if reason:
                dead[(reason, str(path), row)] += 1
                continue
            seen.append(((etype, record["id"]), (payload, str(path), row)))
    for key, copy in seen:
        best[key] = min(best.get(key, copy), copy)
    dropped = Counter((k[0], k[1], c[1], c[2]) for k, c in seen if best[k] != c)
    annotated = with_identities([orjson.loads(p) for p, _, _ in best.values()])
    out = {"events": Counter(codec.dumps(r) for r in annotated), "dead_letter": dead,
           "duplicates": dropped}
    formatters = {p: PartnerFormatter(p, CONFIG) for p in PARTNERS}
    for partner, fmt in formatters.items():
        sent, skipped = Counter(), Counter()
        for record in annotated:
            built, reason = fmt.format(record)
            if built is None:
                skipped[(record["event_type"], record["id"], reason)] += 1
            else:
                sent[codec.dumps(built)] += 1
        out[f"partners/{partner}"], out[f"partners/{partner}/_skipped"] = sent, skipped
    return out


def with_identities(records: list[dict]) -> list[dict]:
    """The identity map with dicts (docs/identity.md): own evidence (latest time, then
    smallest value), else the final survivor's of a UserOrphan chain (cycles cut at their
    smallest member); deletion requests."""
    evidence: dict[str, dict[str, int]] = {}
    edges: dict[str, tuple[int, str]] = {}
    deleted = set()
    for r in records:
        uid, ext = r.get("user_id"), r.get("external_user_id")
        if not uid:
            continue
        if r["event_type"] == "users.UserOrphan" and r.get("orphaned_by_id") not in (None, "", uid):
            edges[uid] = max(edges.get(uid, (r["time"], r["orphaned_by_id"])),
                             (r["time"], r["orphaned_by_id"]))
        if r["event_type"] == "users.UserDeleteRequest":
            deleted.add(uid)
        if ext:
            seen = evidence.setdefault(uid, {})
            seen[ext] = max(seen.get(ext, r["time"]), r["time"])
    own = {uid: min(c, key=lambda e: (-c[e], e)) for uid, c in evidence.items()}
    merged = {}
    for orphan in edges:
        path = [orphan]
        while path[-1] in edges:
            nxt = edges[path[-1]][1]
            if nxt in path:
                path = path[:path.index(min(path[path.index(nxt):])) + 1]
                break
            path.append(nxt)
        if path[-1] != orphan and path[-1] in own:
            merged[orphan] = own[path[-1]]
    deleted_ext = {own.get(u) or merged.get(u) for u in deleted} - {None}
    out = []
    for r in records:
        uid, ext = r.get("user_id"), r.get("external_user_id")
        if ext:
            source = "event"
        elif uid in own:
            ext, source = own[uid], "export"
        elif uid in merged:
            ext, source = merged[uid], "merge"
        else:
            ext, source = None, "none"
        r = {**r, "identity_source": source, "resolved_external_user_id": ext}
        if uid in deleted or ext in deleted_ext or r.get("external_user_id") in deleted_ext:
            r["user_deleted"] = True
        out.append(r)
    return out


def pipeline_outputs(out) -> dict[str, Counter]:
    def lines(folder):
        return read_ndjson(out / folder) if (out / folder).exists() else []
    result = {
        "events": Counter(codec.dumps(e) for e in lines("events")),
        "dead_letter": Counter((d["reason"], d["source"], d["row"]) for d in lines("dead_letter")),
        "duplicates": Counter((d["event_type"], d["id"], d["source"], d["row"])
                              for d in lines("duplicates")),
    }
    for partner in PARTNERS:
        result[f"partners/{partner}"] = Counter(
            codec.dumps(p) for p in lines(f"partners/{partner}"))
        result[f"partners/{partner}/_skipped"] = Counter(
            (s["event_type"], s["id"], s["reason"]) for s in lines(f"partners/{partner}/_skipped"))
    return result


@pytest.mark.slow  # a generated export through the whole pipeline, twice
def test_optimised_pipeline_equals_the_straightforward_path(tmp_path, monkeypatch):
    from transforms import identities
    monkeypatch.setattr(identities, "CHUNK", 97)  # shards formatted and written in chunks
    root = tmp_path / "export"
    shutil.copytree(REPO / "pipelines" / "sample_export", root / "sample")  # has bad rows
    generate(12_000, root / "generated", seed=3)  # realistic mix, duplicates across files
    expected = straightforward(root)
    out = tmp_path / "out"
    assert run(["--input", str(root), "--output", str(out), "--mixpanel-token", "tok",
                "--batch-size", "700", "--direct_num_workers=2",
                "--direct_running_mode=multi_processing"]) == 0
    actual = pipeline_outputs(out)
    assert sum(expected["events"].values()) > 12_000
    assert sum(expected["duplicates"].values()) > 300 and expected["dead_letter"]
    for folder in expected:
        assert actual[folder] == expected[folder], folder


@pytest.mark.slow
def test_chunks_change_no_byte(tmp_path, monkeypatch):
    """Formatting and writing a shard a chunk at a time gives the same files, byte for byte."""
    from transforms import identities
    root = tmp_path / "export"
    generate(4_000, root, seed=5)
    outputs, default_chunk = {}, identities.CHUNK
    for chunk in (default_chunk, 13):
        monkeypatch.setattr(identities, "CHUNK", chunk)
        out = tmp_path / f"out{chunk}"
        assert run(["--input", str(root), "--output", str(out), "--mixpanel-token", "tok",
                    "--direct_num_workers=1"]) == 0
        outputs[chunk] = {p.relative_to(out): p.read_bytes() for p in out.rglob("part-*")}
    assert outputs[13] == outputs[default_chunk] and len(outputs[13]) > 10
