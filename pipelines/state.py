"""The memory of incremental runs (``--state PATH``): a ledger of processed files, the
seen-event store's current generation, and a lock.

Layout under ``--state`` (any FileSystems path: local, gs://, s3://, azfs://)::

    state.json           pointer, written last at commit: {run_id, ledger, seen, ...}
    ledger/<run_id>.zst  every processed file: {path: [size, last_updated, run_id]}
    seen/<run_id>/       the seen store written by that run (transforms.seen)
    lock.json            {token, owner, expires}: one run at a time

With ``--deliver``, ``state.json`` also lists the delivery_failed/ files of the last run
whose payloads a new attempt can deliver (``pending_delivery``): the next run sends them
again with its own, so a partner that was down gets them without any file read twice.

With ``--ledger-retention``, each commit drops the files last updated that long before
the newest one and records that time as the ledger's horizon: files updated before it
are then never read again, whether the ledger still names them or not (counted as
``before_horizon``), so the ledger stays as long as the retention whatever the history.

A run reads ``state.json`` once, writes its new ledger and seen generation under new
names, and only after its outputs are committed rewrites ``state.json`` to point at them:
a run that fails before that leaves the state as it was (its unreferenced files are
removed by the next commit). Files are identified by path, size and last-update time:
Beam's FileSystems does not expose a gs:// object's generation, but every new generation
of an object has a new update time, so a rewritten object is seen as changed.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import socket
import time
import uuid
from typing import Any, Callable

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms import codec
from transforms.read import export_pattern
from transforms.seen import SeenStore

STATE = "state.json"
LOCK = "lock.json"
# A lock older than this is taken over: a run killed outright (kill -9, a lost VM)
# cannot release its lock, and an hourly schedule should not stay blocked for long.
LOCK_TTL = 3 * 3600
# Shards of the seen store, fixed when the state is created (transforms.seen)
SEEN_SHARDS = 16


class LockHeld(RuntimeError):
    """Another run holds the state's lock."""


def new_run_id(now: float | None = None) -> str:
    """``20261130T224012Z-1a2b3c``: sorts by start time (UTC, to the second), unique."""
    stamp = datetime.datetime.fromtimestamp(now or time.time(), datetime.timezone.utc)
    return f"{stamp:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


def _read(path: str) -> bytes | None:
    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as fo:
            return fo.read()
    except Exception:  # not there (each filesystem says so its own way)
        return None


def _write(path: str, data: bytes) -> None:
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as fo:
        fo.write(data)


@dataclasses.dataclass
class Lock:
    """``lock.json`` written with a random token, then read back: of two runs that
    start together the one whose token is not there refuses. The same code on every
    filesystem (no object-store preconditions through FileSystems)."""

    path: str
    token: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex)
    settle: float = 0.5  # seconds between writing and reading back

    def acquire(self, ttl: float = LOCK_TTL) -> None:
        held = self._holder()
        if held is not None and held.get("expires", 0) > time.time():
            raise LockHeld(self._message(held))
        owner = f"{socket.gethostname()}:{os.getpid()}"
        _write(self.path, json.dumps({"token": self.token, "owner": owner,
                                      "expires": time.time() + ttl}).encode())
        time.sleep(self.settle)  # a concurrent writer's lock lands meanwhile
        held = self._holder()
        if held is None or held.get("token") != self.token:
            raise LockHeld(self._message(held or {}))

    def held(self) -> bool:
        holder = self._holder()
        return holder is not None and holder.get("token") == self.token

    def release(self) -> None:
        held = self._holder()
        if held is not None and held.get("token") == self.token:
            FileSystems.delete([self.path])

    def _holder(self) -> dict | None:
        data = _read(self.path)
        if data is None:
            return None
        try:
            return json.loads(data)
        except ValueError:
            return {}  # being written: treat as held

    def _message(self, held: dict) -> str:
        until = datetime.datetime.fromtimestamp(held.get("expires", time.time()),
                                                datetime.timezone.utc)
        return (f"another run ({held.get('owner', 'unknown')}) holds the lock on this "
                f"--state until {until:%Y-%m-%d %H:%M:%S} UTC; if no run is alive, "
                f"delete {self.path}")


@dataclasses.dataclass
class Plan:
    """What an incremental run reads and where its state goes."""

    run_id: str
    listed: int                     # .avro files under --input
    new_files: list[str]            # to read, largest first
    changed: list[dict]             # FileReports (reason changed_after_processing)
    new_meta: dict[str, list]       # path -> [size, last_updated, run_id] for the ledger
    seen_old: str | None            # the current seen generation folder, or None
    seen_new: str                   # where this run writes the next one
    seen_shards: int
    seen_entries: int               # entries in the current store (its last commit)
    ledger: dict[str, list]         # the ledger this run commits (pruned to the horizon)
    horizon: float | None           # files updated before this are not read (epoch s)
    pruned: int                     # entries this run's commit drops
    before_horizon: int             # listed files not read for being before the horizon
    pending: dict[str, list[str]]   # partner -> delivery_failed/ files to send again

    def ledger_summary(self) -> dict:
        """The ledger's counts for summary.json (the horizon after this run's commit)."""
        return {"entries": len(self.ledger), "pruned": self.pruned,
                "before_horizon": self.before_horizon, "horizon": iso_time(self.horizon)}

    def seen_store(self, window: int) -> SeenStore:
        return SeenStore(old=self.seen_old, new=self.seen_new, run_id=self.run_id,
                         window=window, shards=self.seen_shards)


def iso_time(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.datetime.fromtimestamp(
        epoch, datetime.timezone.utc).isoformat()


def run_summary(make_summary: Callable[[dict], dict], run_id: str, ledger: dict,
                stats: dict) -> dict:
    """An incremental run's summary.json: the usual one, its run id, the counts of the
    seen store and ``ledger`` (``Plan.ledger_summary``)."""
    summary = make_summary(stats)
    summary.update(run_id=run_id, ledger=ledger,
                   duplicates_across_runs=stats.get("duplicates_across_runs", 0),
                   seen_store={"entries": stats.get("seen_store_entries", 0),
                               "bytes": stats.get("seen_store_bytes", 0)})
    return summary


class State:
    """``--state``: read once at the start of a run, committed once at its end."""

    def __init__(self, path: str):
        self.path = path.rstrip("/")
        self.lock = Lock(self._at(LOCK))
        raw = _read(self._at(STATE))
        self.doc: dict[str, Any] = json.loads(raw) if raw else {}
        ledger = self.doc.get("ledger")
        blob = _read(self._at(ledger)) if ledger else None
        if ledger and blob is None:
            raise ValueError(f"--state {path}: {ledger} is missing")
        self.ledger: dict[str, list] = codec.unpack(blob) if blob else {}

    def _at(self, relative: str) -> str:
        return FileSystems.join(self.path, relative)

    def plan(self, input_path: str, run_id: str, retention: int | None = None) -> Plan:
        """What to read under ``input_path``; ``retention`` (seconds): prune the ledger
        this run commits to the files updated that long before the newest one."""
        found = FileSystems.match([export_pattern(input_path)])[0].metadata_list
        horizon = self.doc.get("ledger_horizon")
        new, changed, meta, before = [], [], {}, 0
        for m in sorted(found, key=lambda m: (-m.size_in_bytes, m.path)):
            updated = round(float(getattr(m, "last_updated_in_seconds", 0) or 0), 3)
            known = self.ledger.get(m.path)
            if horizon is not None and 0 < updated < horizon:
                before += 1  # processed, or older than what this state remembers
            elif known is None:
                new.append(m.path)
                meta[m.path] = [m.size_in_bytes, updated, run_id]
            elif known[:2] != [m.size_in_bytes, updated]:
                changed.append({
                    "source": m.path, "rows": 0, "event_type": None, "schema_id": None,
                    "reason": "changed_after_processing",
                    "error": f"processed by run {known[2]} at {known[0]} bytes; now "
                             f"{m.size_in_bytes} bytes, updated {updated}: not read again"})
        ledger = {**self.ledger, **meta}
        pruned = 0
        if retention:
            newest = max((entry[1] for entry in ledger.values()), default=0)
            if newest > 0:  # a filesystem without update times prunes nothing
                horizon = max(horizon or 0, newest - retention)
                kept = {p: e for p, e in ledger.items() if not 0 < e[1] < horizon}
                pruned, ledger = len(ledger) - len(kept), kept
        seen = self.doc.get("seen")
        return Plan(run_id=run_id, listed=len(found), new_files=new, changed=changed, new_meta=meta,
                    seen_old=self._at(seen) if seen else None,
                    seen_new=self._at(f"seen/{run_id}"),
                    seen_shards=self.doc.get("seen_shards", SEEN_SHARDS),
                    seen_entries=self.doc.get("seen_entries", 0),
                    ledger=ledger, horizon=horizon, pruned=pruned, before_horizon=before,
                    pending=self.doc.get("pending_delivery", {}))

    def commit(self, plan: Plan, seen_entries: int,
               pending: dict[str, list[str]] | None = None) -> None:
        """Point the state at this run's ledger and seen store (after its outputs are
        committed), then remove what no longer belongs to it. ``pending``: per partner,
        the delivery_failed/ files the next run sends again. Refuses (LockHeld) if the
        lock expired and another run took it meanwhile: that run read the same state."""
        if not self.lock.held():
            raise LockHeld("the lock on this --state expired during the run and another "
                           "run took it: this run's files are not recorded")
        ledger = f"ledger/{plan.run_id}.zst"
        _write(self._at(ledger), codec.pack(plan.ledger))
        doc = {"run_id": plan.run_id, "ledger": ledger, "seen": f"seen/{plan.run_id}",
               "seen_shards": plan.seen_shards, "seen_entries": seen_entries,
               "committed": datetime.datetime.now(datetime.timezone.utc).isoformat()}
        if plan.horizon is not None:
            doc["ledger_horizon"] = plan.horizon
        if pending:
            doc["pending_delivery"] = pending
        _write(self._at(STATE), json.dumps(doc, indent=2).encode())
        self.doc = doc
        for folder, keep in (("ledger", ledger), ("seen", doc["seen"])):
            found = FileSystems.match([self._at(f"{folder}/**")])[0].metadata_list
            stale = [m.path for m in found if not m.path.startswith(self._at(keep))]
            if stale:
                FileSystems.delete(stale)
            if folder == "seen":  # local folders stay behind their files
                for old in {path[:path.rfind("/")] for path in stale}:
                    try:
                        FileSystems.delete([old])
                    except Exception:
                        pass  # object stores have no folders
