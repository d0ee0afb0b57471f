"""ResolveIdentities over the export: braze_id -> external_id, built with keyed joins.

Braze sends nothing to Mixpanel or mParticle for an event without an external_id, so
what a user did before logging in is lost there. This step builds an identity map from
(a) events carrying both ``user_id`` (braze_id) and ``external_user_id``, (b)
``users.UserOrphan`` merges (the orphan's events belong to the survivor, chains
followed, cycles cut) and (c) a user-supplied map (``--identity-map``), then gives each
event ``resolved_external_user_id`` and ``identity_source`` (``event``, ``export``,
``merge``, ``user_map`` or ``none``); the Currents fields stay as Braze wrote them.
Events of users with a deletion request (``users.UserDeleteRequest``, ``--deletions``)
are marked ``user_deleted`` and reach no partner.

Everything is keyed by braze_id (CombinePerKey, CoGroupByKey): no worker holds the whole
map. Two things are held whole, both small by nature (docs/identity.md, "Memory"): the
UserOrphan merges, on one worker to follow chains, and the deletion requests, a side
input of every worker.
"""
from __future__ import annotations

import csv
from collections import Counter
from typing import Any, Iterable, Iterator, NamedTuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from transforms import codec
from transforms.types import STATS, ShardLines

ORPHAN = "users.UserOrphan"
DELETE_REQUEST = "users.UserDeleteRequest"
# identity_source values
EVENT, EXPORT, MERGE, USER_MAP, NONE = "event", "export", "merge", "user_map", "none"
# Fields this step adds to each event in events/ (the partner formatter knows them)
ADDED_FIELDS = ("identity_source", "resolved_external_user_id", "user_deleted")
DELETED_REASON = "user_deleted"

MERGES, DELETIONS, EVIDENCE, NEEDS = "merges", "deletions", "evidence", "needs"
CONFLICTS, ERRORS, MAP = "conflicts", "errors", "map"


def _present(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def _time(value: Any) -> int:
    return value if isinstance(value, int) else -1


class _Scan(beam.DoFn):
    """One pass over the deduplicated events: what the map is built from."""

    def __init__(self, backfill: bool):
        self._backfill = backfill

    def process(self, element: ShardLines) -> Iterator[Any]:
        shard, lines = element
        for idx, line in enumerate(lines):
            r = codec.loads(line)
            uid, ext, etype = r.get("user_id"), r.get("external_user_id"), r.get("event_type")
            t = _time(r.get("time"))
            if etype == ORPHAN and _present(uid) and _present(r.get("orphaned_by_id")):
                yield beam.pvalue.TaggedOutput(MERGES, (uid, r["orphaned_by_id"], t,
                                                        str(r.get("id"))))
            elif etype == DELETE_REQUEST and _present(uid):
                yield beam.pvalue.TaggedOutput(DELETIONS, (uid, (EXPORT, t)))
            if _present(ext):
                if _present(uid):
                    yield beam.pvalue.TaggedOutput(EVIDENCE, (uid, (ext, t)))
            elif _present(uid) and self._backfill:
                yield beam.pvalue.TaggedOutput(NEEDS, (uid, (shard, idx)))


class Candidates(beam.CombineFn):
    """external_id -> [evidence count, first time, last time] for one braze_id."""

    def create_accumulator(self) -> dict:
        return {}

    def add_input(self, acc: dict, value: tuple[str, int]) -> dict:
        ext, t = value
        c = acc.get(ext)
        if c is None:
            acc[ext] = [1, t, t]
        else:
            c[0] += 1
            c[1], c[2] = min(c[1], t), max(c[2], t)
        return acc

    def merge_accumulators(self, accs: Iterable[dict]) -> dict:
        out: dict = {}
        for acc in accs:
            for ext, (n, first, last) in acc.items():
                c = out.get(ext)
                if c is None:
                    out[ext] = [n, first, last]
                else:
                    c[0] += n
                    c[1], c[2] = min(c[1], first), max(c[2], last)
        return out

    def extract_output(self, acc: dict) -> dict:
        return acc


def choose(candidates: dict) -> str:
    """The external_id of the latest evidence; ties by the smallest value."""
    return min(candidates, key=lambda ext: (-candidates[ext][2], ext))


def _seen(t: int) -> int | None:
    return None if t < 0 else t


def _entry(braze_id: str, ext: str, source: str, first: int, last: int) -> dict:
    return {"braze_id": braze_id, "external_id": ext, "source": source,
            "first_seen": _seen(first), "last_seen": _seen(last)}


def _pick(element: tuple[str, dict], source: str) -> Iterator[Any]:
    braze_id, cands = element
    ext = choose(cands)
    _, first, last = cands[ext]
    yield braze_id, _entry(braze_id, ext, source, first, last)
    if len(cands) > 1:
        yield beam.pvalue.TaggedOutput(CONFLICTS, {
            "kind": "external_ids", "braze_id": braze_id, "source": source, "chosen": ext,
            "candidates": [{"external_id": e, "events": n, "first_seen": _seen(f),
                            "last_seen": _seen(l)}
                           for e, (n, f, l) in sorted(cands.items())]})


def follow_merges(merges: Iterable[tuple[str, str, int, str]]) -> Iterator[Any]:
    """UserOrphan merges (orphan, survivor, time, id) -> ``(final survivor, (orphan, hops,
    time))`` per orphan, following chains; a cycle is cut at its smallest braze_id (the
    survivor of every member) and reported (tagged ``conflicts``)."""
    edges: dict[str, tuple[int, str]] = {}
    for orphan, survivor, t, _ in merges:  # orphaned twice: the latest merge wins
        if orphan != survivor and (orphan not in edges or (t, survivor) > edges[orphan]):
            edges[orphan] = (t, survivor)
    cycles = set()
    for orphan in sorted(edges):
        path, node = [orphan], orphan
        while node in edges:
            nxt = edges[node][1]
            if nxt in path:  # a cycle: cut at its smallest member
                cycle = tuple(sorted(path[path.index(nxt):]))
                cycles.add(cycle)
                path = path[:path.index(cycle[0]) + 1]
                break
            path.append(nxt)
            node = nxt
        if path[-1] != orphan:
            yield path[-1], (orphan, len(path) - 1, edges[orphan][0])
    for cycle in sorted(cycles):
        yield beam.pvalue.TaggedOutput(CONFLICTS, {
            "kind": "merge_cycle", "braze_id": cycle[0], "members": list(cycle),
            "chosen": cycle[0]})


def _merged(element: tuple[str, dict]) -> Iterator[tuple[str, dict]]:
    """Orphans of one survivor get the survivor's external_id (from the export, else the
    user's map)."""
    survivor, joined = element
    found = list(joined["direct"]) or list(joined["user"])
    if not found:
        return
    ext = found[0]["external_id"]
    for orphan, hops, t in joined["orphans"]:
        entry = _entry(orphan, ext, MERGE, t, t)
        entry["merged_into"], entry["merge_hops"] = survivor, hops
        yield orphan, entry


def _final(element: tuple[str, dict]) -> Iterator[tuple[str, dict]]:
    """One entry per braze_id: the export's own evidence, else a merge, else the map."""
    braze_id, joined = element
    for source in ("direct", "merge", "user"):
        found = list(joined[source])
        if found:
            yield braze_id, found[0]
            return


def _parse_map_line(line: str, header: list[str] | None) -> tuple[str, str, int]:
    if header is None:  # NDJSON
        obj = codec.loads(line)
        if not isinstance(obj, dict):
            raise ValueError("not a JSON object")
    else:
        row = next(csv.reader([line]))
        if len(row) != len(header):
            raise ValueError(f"{len(row)} columns, the header has {len(header)}")
        obj = dict(zip(header, row))
    braze_id, ext = obj.get("braze_id"), obj.get("external_id")
    if not _present(braze_id) or not _present(ext):
        raise ValueError("braze_id and external_id must be non-empty strings")
    last = obj.get("last_seen")
    return braze_id, ext, int(last) if isinstance(last, (int, str)) and str(
        last).isdigit() else -1


def input_files(pattern: str) -> list[str]:
    """The files of ``--identity-map``/``--deletions``: a folder's files, else the files
    matching ``pattern`` (a file or a glob; any FileSystems path), in name order; names
    starting with ``_`` or ``.`` skipped (an earlier run's folder has none)."""
    for candidate in (pattern.rstrip("/") + "/*", pattern):
        try:
            found = FileSystems.match([candidate])[0].metadata_list
        except Exception:
            found = []
        paths = sorted(m.path for m in found if not m.path.rstrip("/").rsplit(
            "/", 1)[-1].startswith(("_", ".")) and not m.path.endswith("/"))
        if candidate != pattern:
            paths = [path for path in paths if not FileSystems.match(
                [path.rstrip("/") + "/*"])[0].metadata_list]  # not a sub-folder
        if paths:
            return paths
    return []


def read_lines(pattern: str) -> Iterator[tuple[str, int, str]]:
    """``(path, line number, text)`` of every line of ``input_files(pattern)``."""
    paths = input_files(pattern)
    if not paths:
        raise FileNotFoundError(f"no file found at {pattern}")
    for path in paths:
        with FileSystems.open(path) as fo:
            for n, raw in enumerate(iter(fo.readline, b""), start=1):
                yield path, n, raw.decode("utf-8", "replace").rstrip("\r\n")


def _read_user_map(pattern: str) -> Iterator[Any]:
    """A user's map: CSV with header ``braze_id,external_id`` or NDJSON with those keys
    (``identity/map/`` of an earlier run is one). Bad lines are reported, not fatal."""
    header: list[str] | None = None
    current = None
    for path, n, line in read_lines(pattern):
        if path != current:
            current, header = path, None
            is_csv = not line.lstrip().startswith("{")
            if is_csv:
                header = [h.strip() for h in next(csv.reader([line]))] if line else []
                if "braze_id" not in header or "external_id" not in header:
                    yield beam.pvalue.TaggedOutput(ERRORS, {
                        "source": path, "line": n,
                        "reason": "header must name braze_id and external_id"})
                    header = ["\x00skip"]
                continue
        if not line.strip():
            continue
        if header == ["\x00skip"]:
            continue
        try:
            braze_id, ext, last = _parse_map_line(line, header)
        except Exception as exc:
            yield beam.pvalue.TaggedOutput(ERRORS, {"source": path, "line": n,
                                                    "reason": str(exc)[:200]})
            continue
        yield braze_id, (ext, last)


def _read_deletions(pattern: str) -> Iterator[Any]:
    """``--deletions``: CSV with a ``braze_id`` column or NDJSON with that key."""
    header: list[str] | None = None
    current = None
    for path, n, line in read_lines(pattern):
        if path != current:
            current = path
            header = None
            if not line.lstrip().startswith("{"):
                header = [h.strip() for h in next(csv.reader([line]))] if line else []
                if "braze_id" not in header:
                    header = []
                    yield beam.pvalue.TaggedOutput(ERRORS, {
                        "source": path, "line": n, "reason": "header must name braze_id"})
                continue
        if not line.strip() or header == []:
            continue
        try:
            obj = (codec.loads(line) if header is None
                   else dict(zip(header, next(csv.reader([line])))))
            braze_id = obj.get("braze_id") if isinstance(obj, dict) else None
            if not _present(braze_id):
                raise ValueError("no braze_id")
        except Exception as exc:
            yield beam.pvalue.TaggedOutput(ERRORS, {"source": path, "line": n,
                                                    "reason": str(exc)[:200]})
            continue
        yield braze_id, ("deletions_file", -1)


def _deletion_record(element: tuple[str, dict]) -> Iterator[dict]:
    braze_id, joined = element
    requests = list(joined["requests"])
    if not requests:
        return
    entries = list(joined["map"])
    times = [t for _, t in requests if t >= 0]
    yield {"braze_id": braze_id,
           "external_id": entries[0]["external_id"] if entries else None,
           "sources": sorted({s for s, _ in requests}),
           "requested_at": max(times) if times else None}


class _Annotate(beam.DoFn):
    """A shard's events with identity_source and resolved_external_user_id (and
    user_deleted); the Currents fields untouched."""

    def process(self, element: tuple[int, dict], deleted: list[dict]) -> Iterator[Any]:
        shard, joined = element
        batches = list(joined["events"])
        if not batches:
            return
        found = {idx: (ext, source) for idx, ext, source in joined["found"]}
        deleted_ids = {d["braze_id"] for d in deleted}
        deleted_ext = {d["external_id"] for d in deleted if d["external_id"]}
        stats: Counter = Counter()
        out = []
        for idx, line in enumerate(line for batch in batches for line in batch):
            r = codec.loads(line)
            ext = r.get("external_user_id")
            if _present(ext):
                source = EVENT
                stats["identity/from_event"] += 1
            elif idx in found:
                ext, source = found[idx]
                stats[f"identity/backfilled_{source}"] += 1
            else:
                ext, source = None, NONE
                stats["identity/unresolved"] += 1
            r["identity_source"], r["resolved_external_user_id"] = source, ext
            if deleted_ids and (r.get("user_id") in deleted_ids or ext in deleted_ext
                                or r.get("external_user_id") in deleted_ext):
                r["user_deleted"] = True
                stats["identity/deleted_events"] += 1
            out.append(codec.dumps(r))
        yield shard, out
        yield beam.pvalue.TaggedOutput(STATS, dict(stats))


class IdentityOutputs(NamedTuple):
    events: beam.PCollection      # ShardLines, as DeduplicateEvents' events, annotated
    map: beam.PCollection         # identity map entries (dicts)
    conflicts: beam.PCollection   # conflict records (dicts)
    deletions: beam.PCollection   # deletion request records (dicts)
    errors: beam.PCollection      # malformed lines of --identity-map / --deletions
    stats: beam.PCollection


class ResolveIdentityMap(beam.PTransform):
    """Build the identity map of an export and attach it to its events.

    Input: ShardLines ``(shard, [canonical_json])``, one element per shard
    (DeduplicateEvents' events). Output: ``IdentityOutputs``; ``events`` has the same
    shards and order, each event with ``identity_source`` and
    ``resolved_external_user_id`` (and ``user_deleted: true`` under a deletion request).
    ``identity_map``/``deletions``: paths (local, gs://, ...) or None; ``backfill``
    False: only an event's own external_id counts (the map is still built and written).
    """

    def __init__(self, identity_map: str | None = None, deletions: str | None = None,
                 backfill: bool = True):
        super().__init__()
        self._map_path, self._deletions_path, self._backfill = (
            identity_map, deletions, backfill)

    def expand(self, events):
        p = events.pipeline
        scan = events | "Scan" >> beam.ParDo(_Scan(self._backfill)).with_outputs(
            MERGES, DELETIONS, EVIDENCE, NEEDS)
        picked = (scan[EVIDENCE] | "CandidatesPerBrazeId" >> beam.CombinePerKey(Candidates())
                  | "PickFromExport" >> beam.FlatMap(_pick, EXPORT).with_outputs(
                      CONFLICTS, main=MAP))
        errors, conflicts = [], [picked[CONFLICTS]]
        if self._map_path:
            user_rows = (p | "UserMapPath" >> beam.Create([self._map_path])
                         | "ReadUserMap" >> beam.FlatMap(_read_user_map).with_outputs(
                             ERRORS, main="rows"))
            errors.append(user_rows[ERRORS])
            user = (user_rows.rows | "UserMapCandidates" >> beam.CombinePerKey(Candidates())
                    | "PickFromUserMap" >> beam.FlatMap(_pick, USER_MAP).with_outputs(
                        CONFLICTS, main=MAP))
            conflicts.append(user[CONFLICTS])
            user_map = user[MAP]
        else:
            user_map = p | "NoUserMap" >> beam.Create([])
        chains = (scan[MERGES] | "AllMerges" >> beam.Map(lambda m: (None, m))
                  | "GroupMerges" >> beam.GroupByKey()
                  | "FollowChains" >> beam.FlatMap(lambda kv: follow_merges(kv[1]))
                  .with_outputs(CONFLICTS, main="orphans"))
        conflicts.append(chains[CONFLICTS])
        merged = ({"orphans": chains.orphans, "direct": picked[MAP], "user": user_map}
                  | "JoinSurvivors" >> beam.CoGroupByKey()
                  | "OrphansGetSurvivorIds" >> beam.FlatMap(_merged))
        final = ({"direct": picked[MAP], "merge": merged, "user": user_map}
                 | "JoinSources" >> beam.CoGroupByKey()
                 | "OneEntryPerBrazeId" >> beam.FlatMap(_final))

        requests = [scan[DELETIONS]]
        if self._deletions_path:
            listed = (p | "DeletionsPath" >> beam.Create([self._deletions_path])
                      | "ReadDeletions" >> beam.FlatMap(_read_deletions).with_outputs(
                          ERRORS, main="rows"))
            errors.append(listed[ERRORS])
            requests.append(listed.rows)
        deletions = ({"requests": requests | "AllRequests" >> beam.Flatten(), "map": final}
                     | "JoinDeletions" >> beam.CoGroupByKey()
                     | "DeletionRecords" >> beam.FlatMap(_deletion_record))

        found = ({"needs": scan[NEEDS], "map": final}
                 | "JoinNeeds" >> beam.CoGroupByKey()
                 | "FoundPerShard" >> beam.FlatMap(lambda kv: [
                     (shard, (idx, entry["external_id"], entry["source"]))
                     for entry in list(kv[1]["map"])[:1] for shard, idx in kv[1]["needs"]]))
        annotated = ({"events": events, "found": found}
                     | "JoinShards" >> beam.CoGroupByKey()
                     | "Annotate" >> beam.ParDo(
                         _Annotate(), beam.pvalue.AsList(deletions)).with_outputs(
                         STATS, main="events"))
        conflicts = conflicts | "AllConflicts" >> beam.Flatten()
        errors = (errors or [p | "NoErrors" >> beam.Create([])]) | "AllErrors" >> beam.Flatten()
        summary_counts = [
            annotated[STATS],
            conflicts | "CountConflicts" >> beam.Map(
                lambda c: {f"identity/conflicts/{c['kind']}": 1}),
            chains.orphans | "CountChains" >> beam.Map(
                lambda kv: {"identity/orphan_chains": int(kv[1][1] >= 2),
                            "identity/orphans_merged": 1}),
            deletions | "CountDeletions" >> beam.Map(lambda d: {"identity/deletion_requests": 1}),
            errors | "CountErrors" >> beam.Map(lambda e: {"identity/input_errors": 1}),
            final | "CountMap" >> beam.Map(lambda kv: {"identity/map_entries": 1}),
        ]
        stats = summary_counts | "IdentityStats" >> beam.Flatten()
        return IdentityOutputs(annotated.events, final | "Entries" >> beam.Values(),
                               conflicts, deletions, errors, stats)


def identity_summary(stats: dict) -> dict:
    """``summary.json`` ``identity``: from the flat counters of ResolveIdentityMap."""
    def get(key: str) -> int:
        return stats.get(f"identity/{key}", 0)
    conflicts = {k.rsplit("/", 1)[1]: v for k, v in sorted(stats.items())
                 if k.startswith("identity/conflicts/")}
    return {"from_event": get("from_event"), "backfilled_export": get("backfilled_export"),
            "backfilled_merge": get("backfilled_merge"),
            "backfilled_user_map": get("backfilled_user_map"),
            "unresolved": get("unresolved"), "conflicts": sum(conflicts.values()),
            "conflict_kinds": conflicts, "orphan_chains": get("orphan_chains"),
            "orphans_merged": get("orphans_merged"), "map_entries": get("map_entries"),
            "deletion_requests": get("deletion_requests"),
            "deleted_events": get("deleted_events"), "input_errors": get("input_errors")}
