"""ResolveIdentityMap: braze_id -> external_id over the export, built with keyed joins.

Braze sends nothing to Mixpanel or mParticle for an event without an external_id, so
what a user did before logging in is lost there. This step builds an identity map from
(a) events carrying both ``user_id`` (braze_id) and ``external_user_id``, (b)
``users.UserOrphan`` merges (the orphan's events belong to the survivor, chains
followed, cycles cut) and (c) a user-supplied map (``--identity-map``), then gives each
event ``resolved_external_user_id`` and ``identity_source`` (``event``, ``export``,
``merge``, ``user_map`` or ``none``); the Currents fields stay as Braze wrote them.
Events of users with a deletion request (``users.UserDeleteRequest``, ``--deletions``)
are marked ``user_deleted`` and reach no partner.

Everything is keyed by a bucket of braze_ids (two GroupByKeys, one packed batch per
bucket and kind, not one element per event: Beam encodes one bytes value, not each
tuple in it): no worker holds the whole map. The events read their
shard's resolutions from a multimap side input (by shard), so they are not shuffled
again. Two things are held whole, both small by nature (docs/identity.md, "Memory and
cost"): the UserOrphan merges, on one worker to follow chains, and the deletion
requests, a side input of every worker.
"""
from __future__ import annotations

import csv
import uuid
import zlib
from collections import Counter
from typing import Any, Iterable, Iterator, NamedTuple

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms import codec
from transforms.types import STATS, ShardLines

ORPHAN = "users.UserOrphan"
DELETE_REQUEST = "users.UserDeleteRequest"
# identity_source values
EVENT, EXPORT, MERGE, USER_MAP, NONE = "event", "export", "merge", "user_map", "none"
# Fields this step adds to each event in events/ (the partner formatter knows them);
# ValidateEvents already writes each event's own (EVENT or NONE)
SOURCE, RESOLVED = "identity_source", "resolved_external_user_id"
ADDED_FIELDS = (SOURCE, RESOLVED, "user_deleted")
DELETED_REASON = "user_deleted"

MERGES, DELETIONS, EVIDENCE, NEEDS = "merges", "deletions", "evidence", "needs"
CONFLICTS, ERRORS, MAP, FOUND = "conflicts", "errors", "map", "found"
# Rows of a user's map per shuffled element
BATCH = 5000


def _present(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def _time(value: Any) -> int:
    return value if isinstance(value, int) else -1


def bucket_of(braze_id: str, buckets: int) -> int:
    """The bucket of a braze_id: CRC32, stable across processes and machines."""
    return zlib.crc32(braze_id.encode("utf-8", "surrogatepass")) % buckets


def _parsed(line: bytes) -> tuple[Any, Any, int, Any, Any]:
    """(user_id, external_user_id, time, event_type, orphaned_by_id) of one event."""
    r = codec.loads(line)
    return (r.get("user_id"), r.get("external_user_id"), _time(r.get("time")),
            r.get("event_type"), r.get("orphaned_by_id"))


def _facts_of(lines: list[bytes]) -> tuple[list, list, list, dict]:
    """Facts (as DeduplicateEvents' ``facts``) of events given as JSON: all to be parsed."""
    return [None] * len(lines), [None] * len(lines), [-1] * len(lines), dict(enumerate(lines))


class _Scan(beam.DoFn):
    """One pass over a shard's facts (DeduplicateEvents' ``facts``: ``(user_ids,
    external_user_ids, times, {index: JSON to parse})``, one entry per event of the
    shard, in order) or over its events: what the map is built from, in one element
    per (bucket, kind), so the shuffle pays per batch, not per event. Evidence and needs
    travel as columns (parallel lists), not a tuple per event."""

    def __init__(self, backfill: bool, buckets: int):
        self._backfill, self._buckets = backfill, buckets

    def process(self, element: tuple[int, Any]) -> Iterator[Any]:
        shard, facts = element
        uids, exts, times, parse = _facts_of(facts) if type(facts) is list else facts
        n, backfill = self._buckets, self._backfill
        merges, deletions = [], {}
        if parse:  # these events' facts from their JSON (copies: the input stays as it is)
            uids, exts, times = list(uids), list(exts), list(times)
            for idx, line in parse.items():
                uid, ext, t, etype, orphaned_by = _parsed(line)
                if not uid or type(uid) is not str:
                    continue
                if etype == ORPHAN and _present(orphaned_by):
                    merges.append((uid, orphaned_by, t, ""))
                elif etype == DELETE_REQUEST:
                    deletions.setdefault(bucket_of(uid, n), []).append((uid, EXPORT, t))
                uids[idx], exts[idx], times[idx] = uid, ext if _present(ext) else None, t
        ev_uids, ev_exts, ev_times = ([[] for _ in range(n)] for _ in range(3))
        need_uids, need_idx = [[] for _ in range(n)], [[] for _ in range(n)]
        for idx, uid in enumerate(uids):
            if not uid:
                continue
            bucket = bucket_of(uid, n)
            ext = exts[idx]
            if ext:
                ev_uids[bucket].append(uid)
                ev_exts[bucket].append(ext)
                ev_times[bucket].append(times[idx])
            elif backfill:
                need_uids[bucket].append(uid)
                need_idx[bucket].append(idx)
        for bucket in range(n):
            if bucket in deletions:
                yield bucket, (DELETIONS, codec.pack(deletions[bucket]))
            if ev_uids[bucket]:
                yield bucket, (EVIDENCE, codec.pack(
                    (ev_uids[bucket], ev_exts[bucket], ev_times[bucket])))
            if need_uids[bucket]:
                yield bucket, (NEEDS, codec.pack((shard, need_uids[bucket], need_idx[bucket])))
        if merges:
            yield beam.pvalue.TaggedOutput(MERGES, merges)


def choose(candidates: dict) -> str:
    """The external_id of the latest evidence; ties by the smallest value."""
    return min(candidates, key=lambda ext: (-candidates[ext][2], ext))


def _seen(t: int) -> int | None:
    return None if t < 0 else t


# A map entry travels as a tuple: (braze_id, external_id, source, first, last[, merged_into,
# merge_hops]); written as a JSON object (``_as_dict``)
def _as_dict(entry: tuple) -> dict:
    out = {"braze_id": entry[0], "external_id": entry[1], "source": entry[2],
           "first_seen": _seen(entry[3]), "last_seen": _seen(entry[4])}
    if len(entry) > 5:
        out["merged_into"], out["merge_hops"] = entry[5], entry[6]
    return out


def _pick(braze_id: str, cands: dict, source: str, conflicts: list) -> tuple:
    ext = choose(cands)
    _, first, last = cands[ext]
    conflicts.append({
        "kind": "external_ids", "braze_id": braze_id, "source": source, "chosen": ext,
        "candidates": [{"external_id": e, "events": n, "first_seen": _seen(f),
                        "last_seen": _seen(l)}
                       for e, (n, f, l) in sorted(cands.items())]})
    return braze_id, ext, source, first, last


def _count(c: list, t: int) -> None:
    """One more piece of evidence at time ``t`` for ``c`` = [count, first, last]."""
    c[0] += 1
    if t < c[1]:
        c[1] = t
    elif t > c[2]:
        c[2] = t


def _candidates(columns: Iterable[tuple[list, list, list]]) -> tuple[dict, dict]:
    """Evidence columns (user_ids, external_ids, times) -> ``(first, others)``: per
    braze_id, ``(external_id, [count, first time, last time])`` of the first external_id
    seen, and ``{external_id: [count, first, last]}`` of any other (rare: a conflict)."""
    first: dict[str, tuple[str, list]] = {}
    others: dict[str, dict] = {}
    for uids, exts, times in columns:
        for uid, ext, t in zip(uids, exts, times):
            c = first.get(uid)
            if c is None:
                first[uid] = (ext, [1, t, t])
            elif c[0] == ext:
                _count(c[1], t)
            else:
                more = others.setdefault(uid, {})
                if ext in more:
                    _count(more[ext], t)
                else:
                    more[ext] = [1, t, t]
    return first, others


def _chosen(columns: Iterable[tuple[list, list, list]], source: str,
            conflicts: list) -> dict[str, tuple]:
    """braze_id -> its map entry, from evidence columns; conflicts appended."""
    first, others = _candidates(columns)
    out = {}
    for uid, (ext, (n, f, l)) in first.items():
        more = others.get(uid)
        if more is None:
            out[uid] = (uid, ext, source, f, l)
        else:
            out[uid] = _pick(uid, {ext: [n, f, l], **more}, source, conflicts)
    return out


class _Known(beam.DoFn):
    """Stage 1, per bucket of braze_ids: the export's own evidence and the user's map,
    each braze_id's external_id chosen; orphans merged into a survivor of this bucket
    get its external_id (sent to the orphan's bucket)."""

    def __init__(self, buckets: int):
        self._buckets = buckets

    def process(self, element: tuple[int, Iterable]) -> Iterator[Any]:
        bucket, batches = element
        evidence, user_rows, orphans = [], [], []
        for kind, blob in batches:
            items = codec.unpack(blob)
            if kind == EVIDENCE:
                evidence.append(items)
            else:
                (user_rows if kind == USER_MAP else orphans).extend(items)
        conflicts: list[dict] = []
        direct = _chosen(evidence, EXPORT, conflicts)
        user = _chosen([tuple(zip(*user_rows))] if user_rows else [], USER_MAP, conflicts)
        for uid in sorted(direct.keys() & user.keys()):  # the export's evidence wins
            if direct[uid][1] != user[uid][1]:
                conflicts.append({
                    "kind": "user_map_disagrees", "braze_id": uid, "source": EXPORT,
                    "chosen": direct[uid][1],
                    "candidates": [{"external_id": direct[uid][1], "source": EXPORT},
                                   {"external_id": user[uid][1], "source": USER_MAP}]})
        yield bucket, (EXPORT, codec.pack(list(direct.values())))
        yield bucket, (USER_MAP, codec.pack(list(user.values())))
        merged: dict[int, list] = {}
        for survivor, orphan, hops, t in orphans:
            found = direct.get(survivor) or user.get(survivor)
            if found is None:
                continue
            merged.setdefault(bucket_of(orphan, self._buckets), []).append(
                (orphan, found[1], MERGE, t, t, survivor, hops))
        for target, entries in sorted(merged.items()):
            yield target, (MERGE, codec.pack(entries))
        for c in conflicts:
            yield beam.pvalue.TaggedOutput(CONFLICTS, c)


class _Resolve(beam.DoFn):
    """Stage 2, per bucket: one entry per braze_id (the export's own evidence, else a
    merge, else the user's map), written as the bucket's identity/map/ shard; the
    resolutions of the events that lack an external_id, by event shard (columns: event
    indexes, external_ids, sources); the deletion requests with the external_id they
    cover."""

    def process(self, element: tuple[int, Iterable]) -> Iterator[Any]:
        bucket, batches = element
        by_source: dict[str, list] = {EXPORT: [], MERGE: [], USER_MAP: []}
        needs, requests = [], []
        for kind, blob in batches:
            items = codec.unpack(blob)
            if kind == NEEDS:
                needs.append(items)
            elif kind == DELETIONS:
                requests.extend(items)
            else:
                by_source[kind].extend(items)
        final: dict[str, tuple] = {}
        for source in (USER_MAP, MERGE, EXPORT):  # later sources win
            for entry in by_source[source]:
                final[entry[0]] = entry
        if final:
            yield beam.pvalue.TaggedOutput(MAP, (bucket, [
                codec.dumps(_as_dict(final[uid])) for uid in sorted(final)]))
        found: dict[int, tuple[list, list, list]] = {}
        for shard, uids, idxs in needs:
            cols = found.get(shard)
            if cols is None:
                cols = found[shard] = ([], [], [])
            for uid, idx in zip(uids, idxs):
                entry = final.get(uid)
                if entry is not None:
                    cols[0].append(idx)
                    cols[1].append(entry[1])
                    cols[2].append(entry[2])
        for shard, cols in sorted(found.items()):  # packed: one value for Beam to cache
            if cols[0]:
                yield beam.pvalue.TaggedOutput(FOUND, (shard, codec.pack(cols)))
        asked: dict[str, list] = {}
        for uid, source, t in requests:
            asked.setdefault(uid, []).append((source, t))
        for uid in sorted(asked):
            times = [t for _, t in asked[uid] if t >= 0]
            entry = final.get(uid)
            yield beam.pvalue.TaggedOutput(DELETIONS, {
                "braze_id": uid, "external_id": entry[1] if entry else None,
                "sources": sorted({s for s, _ in asked[uid]}),
                "requested_at": max(times) if times else None})
        yield beam.pvalue.TaggedOutput(STATS, {"identity/map_entries": len(final)})


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


def _batched(rows: Iterable[Any], kind: str, buckets: int,
             size: int = BATCH) -> Iterator[Any]:
    """``(braze_id, value)`` rows -> ``(bucket, (kind, [(braze_id, *value)]))`` batches;
    tagged outputs (errors, conflicts) passed through."""
    pending: dict[int, list] = {}
    for row in rows:
        if isinstance(row, beam.pvalue.TaggedOutput):
            yield row
            continue
        braze_id, value = row
        bucket = bucket_of(braze_id, buckets)
        items = pending.setdefault(bucket, [])
        items.append((braze_id, *value))
        if len(items) >= size:
            yield bucket, (kind, codec.pack(pending.pop(bucket)))
    for bucket, items in sorted(pending.items()):
        yield bucket, (kind, codec.pack(items))


def _chain_stats(orphans: list[tuple]) -> dict:
    """Counters of one batch of ``_orphans``."""
    return {"identity/orphan_chains": sum(hops >= 2 for _, _, hops, _ in orphans),
            "identity/orphans_merged": len(orphans)}


def _orphans(merges: Iterable[list], buckets: int) -> Iterator[Any]:
    """All merges (one worker: see the module docstring) -> orphans by their survivor's
    bucket, ``(survivor, orphan, hops, time)``."""
    yield from _batched(follow_merges(m for batch in merges for m in batch), MERGES,
                        buckets)


PARKED_PREFIX = "identity-"  # the parked files' names: one per shard (counted by progress)


def _park(element: ShardLines, folder: str) -> tuple[int, str]:
    """A shard's events to a file of their own: the local runner would otherwise hold
    every event in its memory until the map is built (the events wait for it). Lines of
    canonical JSON (which has no newline of its own), compressed as they are written, a
    few hundred at a time: no copy of the whole shard; any other lines pickled."""
    shard, lines = element
    path = FileSystems.join(folder, f"{PARKED_PREFIX}{shard}-{uuid.uuid4().hex}.zst")
    as_lines = bool(lines) and not any(b"\n" in line for line in lines)
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as fo:
        fo.write(b"L" if as_lines else b"P")
        if not as_lines:
            fo.write(codec.pack(lines))
            return shard, path
        with codec.compressing(fo) as out:
            for start in range(0, len(lines), _PARK_LINES):
                out.write(b"\n".join(lines[start:start + _PARK_LINES]))
                out.write(b"\n")
    return shard, path


_PARK_LINES = 256


def _unparked(path: str) -> list[bytes]:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as fo:
        if fo.read(1) == b"P":
            return codec.unpack(fo.read())
        return [line[:-1] for line in codec.decompressing(fo)]  # each ends with b"\n"


_OWN = b'"identity_source":"event"'
_UNRESOLVED = b'"identity_source":"none"'
_MAX_NEEDLES = 8  # a substring search costs ~0.4 us a line; parsing one ~4 us


def deletion_needles(braze_ids: set, external_ids: set) -> tuple[bytes, ...] | None:
    """What a canonical event line of a user under a deletion request must contain:
    ``"user_id":"<braze_id>"`` or ``"external_user_id":"<external_id>"``, so a line with
    none of them is no such user's and needs no parsing. Only for a few ids of plain
    printable ASCII (written the same by every JSON encoder); None otherwise: then every
    line is parsed and checked."""
    ids = [(b'"user_id":', i) for i in braze_ids] + [
        (b'"external_user_id":', e) for e in external_ids]
    if len(ids) > _MAX_NEEDLES or not all(
            isinstance(v, str) and v.isascii() and v.isprintable()
            and not any(c in v for c in '"\\/') for _, v in ids):
        return None
    return tuple(key + b'"' + v.encode() + b'"' for key, v in ids)


class _Annotate(beam.DoFn):
    """A shard's events with identity_source and resolved_external_user_id (and
    user_deleted); the Currents fields untouched. ``found``: a multimap side input read
    by shard (one shard's resolutions at a time, not the whole map).

    ValidateEvents already wrote each event's own identity, so only the events
    backfilled here (or under a deletion request, or made elsewhere without those
    fields) are parsed and rewritten; the others pass as they are."""

    def process(self, element: ShardLines, found: Any, deleted: list[dict]) -> Iterator[Any]:
        shard, lines = element
        if isinstance(lines, str):  # parked (see _park)
            lines = _unparked(lines)
        resolved: dict[int, tuple[str, str]] = {}
        for blob in found[shard]:
            idxs, exts, sources = codec.unpack(blob)
            resolved.update(zip(idxs, zip(exts, sources)))
        found = resolved
        deleted_ids = {d["braze_id"] for d in deleted}
        deleted_ext = {d["external_id"] for d in deleted if d["external_id"]}
        needles = deletion_needles(deleted_ids, deleted_ext)
        stats: Counter = Counter()
        own = unresolved = 0
        out = []
        for idx, line in enumerate(lines):
            hit = found.get(idx)
            if hit is None and needles is not None and not any(n in line for n in needles):
                # as ValidateEvents wrote it, with the event's own identity, and of no
                # user under a deletion request: kept as is
                if _OWN in line:
                    own += 1
                    out.append(line)
                    continue
                if _UNRESOLVED in line:
                    unresolved += 1
                    out.append(line)
                    continue
            r = codec.loads(line)
            ext = r.get("external_user_id")
            if _present(ext):
                source = EVENT
                own += 1
            elif hit is not None:
                ext, source = hit
                stats[f"identity/backfilled_{source}"] += 1
            else:
                ext, source = None, NONE
                unresolved += 1
            r[SOURCE], r[RESOLVED] = source, ext
            if deleted_ids and (r.get("user_id") in deleted_ids or ext in deleted_ext
                                or r.get("external_user_id") in deleted_ext):
                r["user_deleted"] = True
                stats["identity/deleted_events"] += 1
            out.append(codec.dumps(r))
        stats["identity/from_event"] += own
        stats["identity/unresolved"] += unresolved
        yield shard, out
        yield beam.pvalue.TaggedOutput(STATS, +stats)  # counts of 0 left out


class IdentityOutputs(NamedTuple):
    events: beam.PCollection      # ShardLines, as DeduplicateEvents' events, annotated
    map: beam.PCollection         # ShardLines of identity/map/ (shard = bucket of braze_id)
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
    ``buckets``: braze_ids are resolved in this many groups (one worker holds one
    bucket's evidence and map); ``spill_dir``: as DeduplicateEvents' (local runner), where
    the events wait for the map as files instead of in the runner's memory.
    ``facts``: DeduplicateEvents' ``facts`` output for these events (the
    map is then built without reading the events again); None: read from the events.
    """

    def __init__(self, identity_map: str | None = None, deletions: str | None = None,
                 backfill: bool = True, buckets: int = 8, spill_dir: str | None = None,
                 facts: beam.PCollection | None = None):
        super().__init__()
        self._facts = facts
        self._spill_dir = spill_dir
        self._map_path, self._deletions_path, self._backfill = (
            identity_map, deletions, backfill)
        if buckets < 1:
            raise ValueError("buckets must be >= 1")
        self._buckets = buckets

    def expand(self, events):
        p, n = events.pipeline, self._buckets
        # without DeduplicateEvents' facts, the events themselves: each JSON is parsed
        facts = events if self._facts is None else self._facts
        scan = facts | "Scan" >> beam.ParDo(_Scan(self._backfill, n)).with_outputs(
            MERGES, main="batches")
        first = [scan.batches | "EvidenceOnly" >> beam.Filter(lambda b: b[1][0] == EVIDENCE)]
        second = [scan.batches | "NeedsAndRequests" >> beam.Filter(
            lambda b: b[1][0] != EVIDENCE)]
        errors, conflicts = [], []
        for path, name, reader, to in ((self._map_path, "UserMap", _read_user_map, first),
                                       (self._deletions_path, "Deletions", _read_deletions,
                                        second)):
            if path:
                kind = USER_MAP if name == "UserMap" else DELETIONS
                rows = (p | f"{name}Path" >> beam.Create([path])
                        | f"Read{name}" >> beam.FlatMap(
                            lambda path, reader=reader, kind=kind: _batched(
                                reader(path), kind, n)).with_outputs(ERRORS, main="rows"))
                errors.append(rows[ERRORS])
                to.append(rows.rows)
        chains = (scan[MERGES] | "AllMerges" >> beam.Map(lambda m: (None, m))
                  | "GroupMerges" >> beam.GroupByKey()
                  | "FollowChains" >> beam.FlatMap(lambda kv: _orphans(kv[1], n))
                  .with_outputs(CONFLICTS, main="orphans"))
        conflicts.append(chains[CONFLICTS])
        first.append(chains.orphans)
        known = (first | "FirstInputs" >> beam.Flatten()
                 | "GroupFirst" >> beam.GroupByKey()
                 | "KnownIds" >> beam.ParDo(_Known(n)).with_outputs(CONFLICTS, main="known"))
        conflicts.append(known[CONFLICTS])
        second.append(known.known)
        resolved = (second | "SecondInputs" >> beam.Flatten()
                    | "GroupSecond" >> beam.GroupByKey()
                    | "Resolve" >> beam.ParDo(_Resolve()).with_outputs(
                        MAP, FOUND, DELETIONS, STATS))
        deletions = resolved[DELETIONS]
        waiting = events
        if self._spill_dir is not None:
            waiting = events | "Park" >> beam.Map(_park, self._spill_dir)
        annotated = waiting | "Annotate" >> beam.ParDo(
            _Annotate(), beam.pvalue.AsMultiMap(resolved[FOUND]),
            beam.pvalue.AsList(deletions)).with_outputs(STATS, main="events")
        conflicts = conflicts | "AllConflicts" >> beam.Flatten()
        errors = (errors or [p | "NoErrors" >> beam.Create([])]) | "AllErrors" >> beam.Flatten()
        orphans_merged = chains.orphans | "CountChains" >> beam.Map(
            lambda b: _chain_stats(codec.unpack(b[1][1])))
        stats = [annotated[STATS], resolved[STATS], orphans_merged,
                 conflicts | "CountConflicts" >> beam.Map(
                     lambda c: {f"identity/conflicts/{c['kind']}": 1}),
                 deletions | "CountDeletions" >> beam.Map(
                     lambda d: {"identity/deletion_requests": 1}),
                 errors | "CountErrors" >> beam.Map(lambda e: {"identity/input_errors": 1})]
        return IdentityOutputs(annotated.events, resolved[MAP], conflicts, deletions, errors,
                               stats | "IdentityStats" >> beam.Flatten())


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
