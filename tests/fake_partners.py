"""Real HTTP servers on 127.0.0.1 imitating the partners' bulk ingestion APIs.

Each checks the path, the credentials and the body's shape, enforces the documented
limits (413 or 400 past them, as the API answers), answers 429 with Retry-After and 503
at random (seeded) or by a script, rejects "poison" events the way the real API reports
them (Amplitude: 400 listing the events, nothing ingested; Mixpanel strict=1: 400 with
failed_records, the rest ingested; Segment and mParticle: 400 for the whole request), and
records what it accepts by dedup key. Amplitude also enforces its per-user/device rate.
"""
from __future__ import annotations

import base64
import dataclasses
import gzip
import json
import random
import threading
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from transforms.testing import serve_posts

# stand-in secrets: none may reach an output file or a log
CREDENTIALS = {
    "AMPLITUDE_API_KEY": "amp-key-SECRET-1a2b",
    "MIXPANEL_API_SECRET": "mp-api-SECRET-3c4d",
    "MPARTICLE_API_KEY": "mpt-key-SECRET-5e6f",
    "MPARTICLE_API_SECRET": "mpt-secret-SECRET-7a8b",
    "SEGMENT_WRITE_KEY": "seg-write-SECRET-9c0d",
}
SERVICE_ACCOUNT = ("sa-user.mp-service-account", "sa-SECRET-4e5f", ["12345"])
SECRETS = tuple(CREDENTIALS.values()) + (SERVICE_ACCOUNT[1],)


@dataclass
class Limits:
    path: str
    max_events: int
    max_bytes: int
    max_payload: int
    too_many_status: int = 413
    too_large_status: int = 413


LIMITS = {  # the documented ones (docs/delivery.md)
    "amplitude": Limits("/2/httpapi", 2000, 1_000_000, 1_000_000),
    "amplitude-batch": Limits("/batch", 2000, 20_000_000, 1_000_000),
    "mixpanel": Limits("/import", 2000, 10_000_000, 1_000_000),
    "mparticle": Limits("/v2/bulkevents", 100, 256_000, 128_000, 400, 413),
    "segment": Limits("/v1/batch", 100_000, 500_000, 32_000, 400, 400),  # no event cap
}


def dedup_key(partner: str, event: dict) -> str | None:
    if partner == "amplitude":
        return event.get("insert_id")
    if partner == "mixpanel":
        return (event.get("properties") or {}).get("$insert_id")
    if partner == "segment":
        return event.get("messageId")
    events = event.get("events") or [{}]
    return ((events[0] or {}).get("data") or {}).get("source_message_id")


def _shape_error(partner: str, event: dict) -> str | None:
    """Why the API would refuse this event's shape, or None."""
    if not isinstance(event, dict):
        return "event is not an object"
    if partner == "amplitude":
        if not event.get("event_type") or not (event.get("user_id") or event.get("device_id")):
            return "event_type and user_id or device_id required"
    elif partner == "mixpanel":
        props = event.get("properties") or {}
        if not event.get("event") or not all(props.get(k) for k in (
                "$insert_id", "distinct_id", "time", "token")):
            return "event, properties.$insert_id/distinct_id/time/token required"
    elif partner == "segment":
        if event.get("type") != "track" or not event.get("event") or not event.get(
                "messageId") or not (event.get("userId") or event.get("anonymousId")):
            return "track call with event, messageId and userId or anonymousId required"
    elif not (event.get("schema_version") and event.get("environment")
              and event.get("user_identities") and isinstance(event.get("events"), list)
              and event["events"] and event["events"][0].get("event_type")):
        return "batch with schema_version, environment, user_identities, events required"
    if not dedup_key(partner, event):
        return "dedup key missing"
    return None


@dataclass
class FakePartner:
    """One imitation API. ``script``: statuses answered first, in order (429 with
    ``retry_after``); then 429 and 503 at random with ``throttle_rate``/``error_rate``."""
    partner: str
    api: str = "http"             # amplitude: http | batch
    script: list = field(default_factory=list)
    throttle_rate: float = 0.0
    error_rate: float = 0.0
    retry_after: float = 1.0
    seed: int = 18
    poison: set = field(default_factory=set)
    down: bool = False
    limits: Limits | None = None
    echo_credentials: bool = False  # a hostile API that echoes the key in its errors
    key_rate: int | None = None       # Amplitude: events/s per user or device id

    def __post_init__(self):
        name = "amplitude-batch" if self.partner == "amplitude" and self.api == "batch" \
            else self.partner
        self.limits = dataclasses.replace(self.limits or LIMITS[name])  # own copy
        if self.partner == "amplitude" and self.key_rate is None:
            self.key_rate = 1000 if self.api == "batch" else 30
        self.received: Counter = Counter()   # dedup key -> times accepted
        self.requests: list[dict] = []       # (time, status, events, bytes)
        self.early: list[float] = []         # requests that came before Retry-After
        self.key_violations = 0
        self._not_before = 0.0
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()
        self._key_times: dict[str, deque] = defaultdict(deque)
        self._server = None

    # - lifecycle -

    def start(self) -> "FakePartner":
        def answer(path: str, headers: Any, raw: bytes) -> tuple[int, bytes, dict]:
            status, body, extra = self.handle(path, headers, raw)  # headers: any case
            return status, json.dumps(body).encode(), extra

        self._server = serve_posts(answer)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # - one request -

    def handle(self, path: str, headers: dict, raw: bytes):
        with self._lock:
            now = time.monotonic()
            if now < self._not_before:
                self.early.append(self._not_before - now)
            status, body, out = self._answer(path, headers, raw, now)
            if status == 429 and "Retry-After" in out:
                self._not_before = now + float(out["Retry-After"])
            self.requests.append({"at": now, "status": status, "bytes": len(raw),
                                  "events": body.pop("_events", None)})
            return status, body, out

    def own_secrets(self) -> list[str]:
        return [v for k, v in CREDENTIALS.items() if k.startswith(self.partner.upper())]

    def _auth_ok(self, query: dict, headers: dict, doc) -> bool:
        p = self.partner
        if p == "amplitude":
            return isinstance(doc, dict) and doc.get("api_key") == CREDENTIALS[
                "AMPLITUDE_API_KEY"]
        auth = headers.get("Authorization", "")
        try:
            user, _, password = base64.b64decode(auth.removeprefix("Basic ")).decode(
            ).partition(":")
        except Exception:
            return False
        if p == "mixpanel":
            if query.get("strict") != ["1"]:
                return False
            if query.get("project_id"):  # a service account, for that project
                return (user, password, query["project_id"]) == SERVICE_ACCOUNT
            return user == CREDENTIALS["MIXPANEL_API_SECRET"]
        if p == "segment":
            return user == CREDENTIALS["SEGMENT_WRITE_KEY"]
        return (user, password) == (CREDENTIALS["MPARTICLE_API_KEY"],
                                    CREDENTIALS["MPARTICLE_API_SECRET"])

    def _answer(self, path: str, headers: dict, raw: bytes, now: float):
        url = urlsplit(path)
        lim = self.limits
        if url.path != lim.path:
            return 404, {"error": f"no such path {url.path}"}, {}
        if self.down:
            return 503, {"error": "service unavailable"}, {}
        if self.script:
            status = self.script.pop(0)
            if status == 429:
                return 429, {"error": "too many requests"}, {"Retry-After": str(self.retry_after)}
            return status, {"error": "scripted"}, {}
        roll = self._rng.random()
        if roll < self.throttle_rate:
            return 429, {"error": "too many requests"}, {"Retry-After": str(self.retry_after)}
        if roll < self.throttle_rate + self.error_rate:
            return 503, {"error": "try again"}, {}
        if headers.get("Content-Encoding") == "gzip":
            raw = gzip.decompress(raw)
        if len(raw) > lim.max_bytes:
            return lim.too_large_status, {"error": f"request over {lim.max_bytes} bytes"}, {}
        try:
            doc = json.loads(raw)
        except ValueError:
            return 400, {"error": "invalid JSON"}, {}
        if not self._auth_ok(parse_qs(url.query), headers, doc):
            got = headers.get("Authorization", "") if self.partner != "amplitude" else (
                doc.get("api_key", "") if isinstance(doc, dict) else "")
            if got.startswith("Basic "):
                got = base64.b64decode(got[6:]).decode(errors="replace")
            echo = f" got {got!r}" if self.echo_credentials else ""  # what it was sent
            return 401, {"error": f"invalid credentials{echo}"}, {}
        events = doc.get("events") if self.partner == "amplitude" else (
            doc.get("batch") if self.partner == "segment" else doc)
        if not isinstance(events, list) or not events:
            return 400, {"error": "body shape: no events"}, {}
        if len(events) > lim.max_events:
            return lim.too_many_status, {"error": f"over {lim.max_events} events"}, {}
        for i, event in enumerate(events):
            size = len(json.dumps(event, separators=(",", ":")).encode())
            if size > lim.max_payload:
                return lim.too_large_status, {"error": f"event {i} over {lim.max_payload}"}, {}
            problem = _shape_error(self.partner, event)
            if problem:
                return 400, {"error": f"event {i}: {problem}"}, {}
        keys = [dedup_key(self.partner, e) for e in events]
        poisoned = [i for i, k in enumerate(keys) if k in self.poison]
        echo = (" " + " ".join(self.own_secrets())) if self.echo_credentials else ""
        if poisoned and self.partner == "amplitude":  # nothing ingested
            return 400, {"code": 400, "error": "Request missing required field" + echo,
                         "missing_field": "time",
                         "events_with_invalid_fields": {"time": poisoned}}, {}
        if poisoned and self.partner in ("segment", "mparticle"):
            return 400, {"error": "invalid event in request" + echo}, {}
        if self.key_rate:
            throttled = self._throttled(events, now)
            if throttled:
                return 429, {"code": 429, "error": "Too many requests for some devices "
                             "and users", "throttled_devices": throttled}, {}
        accepted = [k for i, k in enumerate(keys) if i not in poisoned]
        self.received.update(accepted)
        if poisoned:  # mixpanel strict=1: the rest is imported
            return 400, {"code": 400, "status": "Bad Request",
                         "error": "some data points in the request failed validation" + echo,
                         "num_records_imported": len(accepted), "_events": len(events),
                         "failed_records": [{"index": i, "$insert_id": keys[i],
                                             "field": "properties.time",
                                             "message": "'properties.time' is invalid"}
                                            for i in poisoned]}, {}
        if self.partner == "amplitude":
            return 200, {"code": 200, "events_ingested": len(events), "_events": len(events)}, {}
        if self.partner == "mixpanel":
            return 200, {"code": 200, "num_records_imported": len(events),
                         "_events": len(events)}, {}
        return 200 if self.partner == "segment" else 202, {"_events": len(events)}, {}

    def _throttled(self, events: list[dict], now: float) -> dict:
        """Ids over ``key_rate`` events within the last 0.95 s with this request (the
        request is refused, nothing ingested); else records the request's events."""
        counts = Counter(f"{k}:{e[k]}" for e in events for k in ("user_id", "device_id")
                         if e.get(k))
        over = {}
        for key, n in counts.items():
            times = self._key_times[key]
            while times and times[0][0] <= now - 0.95:
                times.popleft()
            if sum(c for _, c in times) + n > self.key_rate:
                over[key] = n
        if over:
            self.key_violations += 1
            return over
        for key, n in counts.items():
            self._key_times[key].append((now, n))
        return {}


@pytest.fixture
def fake_partners():
    """One fake API per partner on free 127.0.0.1 ports, stopped after the test.
    Configure them (``script``, ``poison``, ``down``, ...) before the run."""
    fakes = {p: FakePartner(p).start() for p in ("amplitude", "mixpanel", "mparticle",
                                                  "segment")}
    try:
        yield fakes
    finally:
        for fake in fakes.values():
            fake.stop()


def delivery_args(fakes: dict, partners=("amplitude", "mixpanel", "mparticle",
                                         "segment")) -> list[str]:
    """Options delivering to ``fakes``, with short backoff for tests."""
    args = ["--deliver", ",".join(partners), "--delivery-backoff", "0.02",
            "--delivery-timeout", "20"]
    for p in partners:
        args += [f"--{p}-endpoint", fakes[p].url, f"--{p}-max-rps", "0"]
    return args
