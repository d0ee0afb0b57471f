"""DeliverToPartner: a partner's payloads -> its bulk ingestion API, nothing lost.

    ShardLines of payloads --Pack--> pieces (lists of payloads, <= 1/8 of a request)
        --BatchElements (weighted by bytes and events)--> one request's worth
        --Send--> delivered | delivery_failed records, per-batch counters

Beam pays per element, so elements are pieces of a request, not single payloads: about
8 elements per request. Every payload ends delivered or in ``failed`` with a reason:

- ``payload_too_large_for_partner``: alone over the API's per-message limit, never sent
  (or answered 413 when sent alone);
- ``retries_exhausted``: 429, 5xx, connection errors or timeouts until
  ``max_retries`` retries or ``timeout`` seconds were spent on the request;
- ``rejected_by_partner``: a permanent 4xx for this very event (the API's per-event
  report where it gives one: Amplitude's and Mixpanel's 400 bodies; otherwise the batch
  is bisected until the rejected events are alone);
- ``unauthorized``: 401/403 (wrong credentials: not split, every event of the batch).

Every request carries the partner's dedup key (= the Braze event id) inside each
payload, so a retried request or a rerun never counts an event twice at the partner.
See docs/delivery.md for each API's limits and the sources.
"""
from __future__ import annotations

import dataclasses
import gzip
import logging
import threading
import time
from collections import Counter, deque
from itertools import chain
from typing import Any, Iterator
from urllib.parse import quote

import apache_beam as beam
import orjson
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from transforms.types import STATS, ShardLines, ShardLinesIn

FAILED = "failed"

# reasons of delivery_failed/ records
TOO_LARGE = "payload_too_large_for_partner"
EXHAUSTED = "retries_exhausted"
REJECTED = "rejected_by_partner"
UNAUTHORIZED = "unauthorized"

# parts of one request per element of the batching step
PIECES_PER_REQUEST = 8
_WEIGHT = 1_000_000  # BatchElements' batch size, in these units: a full request


@dataclasses.dataclass(frozen=True)
class ApiLimits:
    """One ingestion API: its path and documented limits (docs/delivery.md)."""
    path: str
    max_events: int          # payloads per request
    max_bytes: int           # uncompressed body per request
    max_payload_bytes: int   # one payload
    gzip: bool               # the API documents Content-Encoding: gzip
    key_rate: float | None = None  # events/s per user or device id (Amplitude)


APIS = {
    "amplitude": ApiLimits("/2/httpapi", 2000, 1_000_000, 1_000_000, True, 30.0),
    "amplitude-batch": ApiLimits("/batch", 2000, 20_000_000, 1_000_000, True, 1000.0),
    "mixpanel": ApiLimits("/import", 2000, 10_000_000, 1_000_000, True),
    "mparticle": ApiLimits("/v2/bulkevents", 100, 256_000, 128_000, False),
    "segment": ApiLimits("/v1/batch", 2500, 500_000, 32_000, False),
}
ENVELOPE = 200  # bytes of a request body besides its payloads (api_key, brackets)

DEFAULT_ENDPOINTS = {
    "amplitude": "https://api2.amplitude.com",
    "mixpanel": "https://api.mixpanel.com",
    "mparticle": "https://s2s.mparticle.com",
    "segment": "https://api.segment.io",
}
# requests per second per worker, each under the partner's documented rate
DEFAULT_MAX_RPS = {"amplitude": 100.0, "mixpanel": 10.0, "mparticle": 2.0, "segment": 50.0}


@dataclasses.dataclass(frozen=True)
class DeliveryConfig:
    """How to reach one partner. ``credentials`` (never printed: ``repr=False``):
    amplitude ``api_key``; mixpanel ``username``/``secret``/``project_id`` (service
    account) or ``api_secret``; segment ``write_key``; mparticle ``api_key``/
    ``api_secret``. ``max_rps`` 0: no cap. ``backoff``: first retry's wait, seconds."""
    endpoint: str
    credentials: dict = dataclasses.field(repr=False, default_factory=dict)
    amplitude_api: str = "http"
    max_retries: int = 8
    timeout: float = 300.0
    max_rps: float = 0.0
    backoff: float = 1.0
    max_backoff: float = 60.0
    dry_run: bool = False
    concurrency: int = 4  # requests in flight per DoFn instance
    api_limits: ApiLimits | None = None  # instead of APIS' (tests, a raised limit)

    def limits(self, partner: str) -> ApiLimits:
        if self.api_limits is not None:
            return self.api_limits
        if partner == "amplitude" and self.amplitude_api == "batch":
            return APIS["amplitude-batch"]
        return APIS[partner]

    def url(self, partner: str) -> str:
        url = self.endpoint.rstrip("/") + self.limits(partner).path
        if partner == "mixpanel":
            url += "?strict=1"
            if self.credentials.get("project_id"):
                url += "&project_id=" + quote(str(self.credentials["project_id"]), safe="")
        return url

    def secrets(self) -> list[str]:
        """Every secret value, for redaction (the Mixpanel project id is not one)."""
        return [v for k, v in self.credentials.items() if v and k != "project_id"]


def dedup_key(partner: str, payload: dict) -> tuple[str, str]:
    """(partner's event name, dedup key = Braze event id) of a parsed payload."""
    if partner == "amplitude":
        return payload.get("event_type"), payload.get("insert_id")
    if partner == "mixpanel":
        return payload.get("event"), (payload.get("properties") or {}).get("$insert_id")
    if partner == "segment":
        return payload.get("event"), payload.get("messageId")
    event = ((payload.get("events") or [{}])[0]) or {}
    data = event.get("data") or {}
    return data.get("event_name") or event.get("event_type"), data.get("source_message_id")


def failure(partner: str, payload: bytes, reason: str, status: int | None,
            error: str) -> dict:
    """A delivery_failed record: ``{reason, event_type, id, status, error, payload}``."""
    try:
        parsed = orjson.loads(payload)
        event_type, key = dedup_key(partner, parsed)
    except (orjson.JSONDecodeError, AttributeError, TypeError):
        parsed, event_type, key = payload.decode("utf-8", "replace"), None, None
    return {"reason": reason, "event_type": event_type, "id": key, "status": status,
            "error": error, "payload": parsed}


# --- packing ------------------------------------------------------------------------

class _Pack(beam.DoFn):
    """ShardLines -> pieces of at most 1/PIECES_PER_REQUEST of a request (events and
    bytes); payloads over the per-message limit go to ``failed`` at once."""

    def __init__(self, partner: str, limits: ApiLimits):
        self._partner, self._limits = partner, limits

    def process(self, element: ShardLines) -> Iterator[Any]:
        _, payloads = element
        lim = self._limits
        events_cap = max(1, lim.max_events // PIECES_PER_REQUEST)
        bytes_cap = max(1, (lim.max_bytes - ENVELOPE) // PIECES_PER_REQUEST)
        piece, size, too_large = [], 0, 0
        for payload in payloads:
            n = len(payload) + 1
            if len(payload) > lim.max_payload_bytes or n > lim.max_bytes - ENVELOPE:
                too_large += 1
                yield beam.pvalue.TaggedOutput(FAILED, failure(
                    self._partner, payload, TOO_LARGE, None,
                    f"{len(payload)} bytes; {self._partner} takes at most "
                    f"{lim.max_payload_bytes} per message"))
                continue
            if piece and (len(piece) >= events_cap or size + n > bytes_cap):
                yield piece, size
                piece, size = [], 0
            piece.append(payload)
            size += n
        if piece:
            yield piece, size
        if too_large:
            for name in ("failed", f"failed/{TOO_LARGE}"):
                Metrics.counter("delivery", f"{self._partner}/{name}").inc(too_large)
            yield beam.pvalue.TaggedOutput(
                STATS, {f"delivery/{self._partner}/failed/{TOO_LARGE}": too_large})


def _weight(limits: ApiLimits):
    """A piece's share of a request, in _WEIGHT units: the larger of its shares of the
    event and the byte limits, so a batch of weight <= _WEIGHT is within both."""
    max_events, max_bytes = limits.max_events, limits.max_bytes - ENVELOPE

    def weight(piece: tuple[list[bytes], int]) -> int:
        payloads, size = piece
        return max(-(-len(payloads) * _WEIGHT // max_events), -(-size * _WEIGHT // max_bytes))
    return weight


# --- sending --------------------------------------------------------------------------

class _Transient(Exception):
    """A response worth retrying (429, 5xx): its status and Retry-After, if any."""

    def __init__(self, status: int, retry_after: float | None, text: str):
        super().__init__(f"HTTP {status}: {text}")
        self.status, self.retry_after = status, retry_after


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


class _RateCap:
    """At most ``rps`` requests per second from this process (all threads), spaced
    evenly: one cap per partner per worker process."""

    _caps: dict[str, "_RateCap"] = {}
    _lock = threading.Lock()

    @classmethod
    def of(cls, partner: str, rps: float) -> "_RateCap":
        with cls._lock:
            cap = cls._caps.get(partner)
            if cap is None or cap.rps != rps:
                cap = cls._caps[partner] = cls(rps)
            return cap

    def __init__(self, rps: float):
        self.rps, self._next, self._lock = rps, 0.0, threading.Lock()

    def wait(self) -> None:
        with self._lock:
            now = time.monotonic()
            at = max(now, self._next)
            self._next = at + (1.0 / self.rps if self.rps > 0 else 0.0)
        if at > now:
            time.sleep(at - now)

    def pause(self, seconds: float) -> None:
        """No request from this process before ``seconds`` from now (Retry-After)."""
        with self._lock:
            self._next = max(self._next, time.monotonic() + seconds)


class _KeyRate:
    """Events per user or device id within any 1 s window stay <= ``rate`` (Amplitude
    throttles ids over 30 events/s on HTTP V2, 1000/s on the Batch API).

    Counted per whole second of the clock: a request may go when, for each of its ids,
    the events sent in the current and the previous second plus its own stay within the
    rate, which bounds every 1 s window (a hot id gets between half and all of the
    rate). Counters, not per-event records: a few C-level updates per request."""

    def __init__(self, rate: float):
        self.rate = int(rate)
        self._second, self._previous, self._current = 0, Counter(), Counter()
        self._lock = threading.Lock()

    def rounds(self, keys: list[list[str]]) -> list[list[int]]:
        """Indexes of payloads (given by their ids) split so that no id has more than
        ``rate`` events in a round."""
        if max(Counter(chain.from_iterable(keys)).values(), default=0) <= self.rate:
            return [list(range(len(keys)))]  # the usual case, without a loop per event
        seen: Counter = Counter()
        rounds: list[list[int]] = []
        for i, ids in enumerate(keys):
            r = max((seen[k] for k in ids), default=0) // self.rate
            seen.update(ids)
            while len(rounds) <= r:
                rounds.append([])
            rounds[r].append(i)
        return rounds

    @staticmethod
    def keys(payload: bytes) -> list[str]:
        """The ids Amplitude throttles by (user_id and device_id values, in one space:
        a user id equal to a device id only makes the cap stricter)."""
        event = orjson.loads(payload)
        return [v for v in (event.get("user_id"), event.get("device_id")) if v]

    def reserve(self, counts: Counter) -> float:
        """0 and ``counts`` counted as sent now, if they fit; else the seconds to wait
        before asking again (the next second of the clock)."""
        with self._lock:
            now = time.monotonic()
            second = int(now)
            if second != self._second:
                self._previous = self._current if second == self._second + 1 else Counter()
                self._current, self._second = Counter(), second
            previous, current, rate = self._previous, self._current, self.rate
            if all(previous[k] + current[k] + n <= rate for k, n in counts.items()):
                current.update(counts)
                return 0.0
            return second + 1 - now


def _body(partner: str, payloads: list[bytes], credentials: dict) -> bytes:
    """The request body around the payloads, as each API takes it (no re-encoding)."""
    events = b",".join(payloads)
    if partner == "amplitude":
        return b'{"api_key":' + orjson.dumps(credentials["api_key"]) + b',"events":[' + \
            events + b"]}"
    if partner == "segment":
        return b'{"batch":[' + events + b"]}"
    return b"[" + events + b"]"  # mixpanel /import, mparticle /v2/bulkevents


def _auth(partner: str, credentials: dict) -> tuple[str, str] | None:
    if partner == "mixpanel":
        if credentials.get("username"):
            return credentials["username"], credentials["secret"]
        return credentials["api_secret"], ""
    if partner == "segment":
        return credentials["write_key"], ""
    if partner == "mparticle":
        return credentials["api_key"], credentials["api_secret"]
    return None  # amplitude: the key is in the body


class _Outcome:
    """One batch's result: counters, failed records, ids of its payloads (Amplitude)."""

    def __init__(self):
        self.stats: Counter = Counter()
        self.failed: list[dict] = []
        self.keys: dict[int, list[str]] = {}


class _Send(beam.DoFn):
    """One batch of pieces -> requests, retried, split on rejection; outputs the
    payloads that could not be delivered (``failed``) and the batch's counters."""

    def __init__(self, partner: str, config: DeliveryConfig):
        self._partner, self._config = partner, config

    def setup(self):
        import urllib3
        cfg, partner = self._config, self._partner
        self._limits = cfg.limits(partner)
        self._url = cfg.url(partner)
        # the secrets, and the basic auth header made of them, are never written out
        self._secrets = cfg.secrets()
        self._rate = _RateCap.of(partner, cfg.max_rps)
        self._key_rate = (_KeyRate(self._limits.key_rate) if self._limits.key_rate
                          else None)
        self._client = None
        # urllib3 (a connection pool, keep-alive): about half httpx's CPU per request,
        # which counts with mParticle's 100 events per request
        self._headers = {"Content-Type": "application/json",
                         "User-Agent": "braze-currents-beam"}
        auth = _auth(partner, cfg.credentials)
        if auth is not None:
            self._headers.update(urllib3.make_headers(basic_auth=":".join(auth)))
        if not cfg.dry_run:
            logging.getLogger("urllib3").setLevel(logging.WARNING)  # a line per request
            self._client = urllib3.PoolManager(
                maxsize=max(1, cfg.concurrency), block=False, retries=False,
                timeout=urllib3.Timeout(total=min(cfg.timeout, 60.0)))
        from concurrent.futures import ThreadPoolExecutor
        self._pool = ThreadPoolExecutor(max(1, cfg.concurrency),
                                        thread_name_prefix=f"deliver-{partner}")
        ns = "delivery"
        self._metrics = {k: Metrics.counter(ns, f"{partner}/{k}") for k in (
            "delivered", "failed", "requests", "retried_requests", "bytes_sent")}

    def teardown(self):
        if getattr(self, "_pool", None) is not None:
            self._pool.shutdown(wait=True)
        if getattr(self, "_client", None) is not None:
            self._client.clear()

    def start_bundle(self):
        self._pending: deque = deque()

    def process(self, batch: list[tuple[list[bytes], int]],
                window=beam.DoFn.WindowParam,
                timestamp=beam.DoFn.TimestampParam) -> Iterator[Any]:
        """Up to ``concurrency`` batches in flight (threads of this DoFn): the worker
        formats and packs while requests wait on the network. A batch's outputs keep
        its own window, whenever they are emitted."""
        self._pending.append((self._pool.submit(self._send_batch, batch), window, timestamp))
        while self._pending and (len(self._pending) > self._config.concurrency
                                 or self._pending[0][0].done()):
            yield from self._emit(*self._pending.popleft())

    def finish_bundle(self):
        while self._pending:
            yield from self._emit(*self._pending.popleft())

    def _emit(self, future, window, timestamp) -> Iterator[Any]:
        """A finished batch's outputs, in its window; counters incremented here, in the
        bundle's thread."""
        from apache_beam.utils.windowed_value import WindowedValue
        out: _Outcome = future.result()
        for name, counter in self._metrics.items():
            value = (sum(v for k, v in out.stats.items() if k.startswith("failed/"))
                     if name == "failed" else out.stats.get(name, 0))
            if value:
                counter.inc(value)
        for key, value in out.stats.items():
            if key.startswith("failed/"):  # failed/<reason>
                Metrics.counter("delivery", f"{self._partner}/{key}").inc(value)
        for record in out.failed:
            yield beam.pvalue.TaggedOutput(FAILED, WindowedValue(record, timestamp, [window]))
        p = self._partner
        stats = {f"delivery/{p}/{k}": v for k, v in out.stats.items()}
        yield beam.pvalue.TaggedOutput(STATS, WindowedValue(stats, timestamp, [window]))

    def _send_batch(self, batch: list[tuple[list[bytes], int]]) -> "_Outcome":
        out = _Outcome()
        payloads = [p for piece, _ in batch for p in piece]
        if self._key_rate is None:
            self._deliver(out, payloads)
        else:  # each id's events in rounds of at most the rate, a second apart
            keys = [self._key_rate.keys(p) for p in payloads]
            out.keys = {id(p): k for p, k in zip(payloads, keys)}
            for indexes in self._key_rate.rounds(keys):
                self._deliver(out, [payloads[i] for i in indexes])
        return out

    # - one request and its outcome -

    def _fail(self, out: "_Outcome", payloads: list[bytes], reason: str, status: int | None, error: str):
        error = self._redact(error)
        out.stats[f"failed/{reason}"] += len(payloads)
        out.failed += [failure(self._partner, p, reason, status, error) for p in payloads]

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text[:2000]

    def _deliver(self, out: "_Outcome", payloads: list[bytes]) -> None:
        """Send ``payloads`` in one request; split and resend on 413 and rejections."""
        if not payloads:
            return
        try:
            status, text = self._post(out, payloads)
        except _Transient as exc:
            return self._fail(out, payloads, EXHAUSTED, exc.status, str(exc))
        except Exception as exc:  # urllib3 transport errors, after the last retry
            return self._fail(out, payloads, EXHAUSTED, None,
                              f"{type(exc).__name__}: {exc}")
        if status < 300:
            out.stats["delivered"] += len(payloads)
            return
        if status in (401, 403):
            return self._fail(out, payloads, UNAUTHORIZED, status, text)
        if status == 413 and len(payloads) == 1:
            return self._fail(out, payloads, TOO_LARGE, status, text)
        bad = self._rejected_by_report(status, text, len(payloads))
        if bad is not None:
            rejected, resend, delivered = bad
            for i, message in rejected.items():
                self._fail(out, [payloads[i]], REJECTED, status, message)
            out.stats["delivered"] += delivered
            if resend:
                self._deliver(out, [payloads[i] for i in resend])
            return
        if len(payloads) == 1:
            return self._fail(out, payloads, REJECTED, status, text)
        half = len(payloads) // 2
        self._deliver(out, payloads[:half])
        self._deliver(out, payloads[half:])

    def _rejected_by_report(self, status: int, text: str, n: int):
        """The API's own per-event report of a 400, if it gave one:
        ({index: error}, indexes to send again, events it took), or None."""
        if status != 400:
            return None
        try:
            body = orjson.loads(text)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(body, dict):
            return None
        if self._partner == "mixpanel" and body.get("failed_records"):
            # strict=1: the valid records were imported, the listed ones were not
            rejected = {}
            for record in body["failed_records"]:
                i = record.get("index")
                if isinstance(i, int) and 0 <= i < n:
                    rejected[i] = (f"{record.get('field', '')}: "
                                   f"{record.get('message', '')}").strip(": ")
            if not rejected:
                return None
            return rejected, [], n - len(rejected)
        if self._partner == "amplitude":
            # the whole request was refused; the body names the events at fault
            rejected: dict[int, str] = {}
            for group in ("events_with_invalid_fields", "events_with_missing_fields"):
                for field, indexes in (body.get(group) or {}).items():
                    for i in indexes if isinstance(indexes, list) else []:
                        if isinstance(i, int) and 0 <= i < n:
                            rejected[i] = (rejected.get(i, "") + f"{group}: {field}; ")
            if not rejected:
                return None
            rejected = {i: m.rstrip("; ") for i, m in rejected.items()}
            return rejected, [i for i in range(n) if i not in rejected], 0
        return None

    def _post(self, out: "_Outcome", payloads: list[bytes]) -> tuple[int, str]:
        """One request, retried on 429, 5xx and transport errors (tenacity: exponential
        backoff with full jitter, never before Retry-After, bounded by max_retries and
        timeout); the final (status, body text)."""
        import tenacity
        import urllib3
        cfg, limits = self._config, self._limits
        body = _body(self._partner, payloads, cfg.credentials)
        headers = self._headers
        if limits.gzip:
            headers = {**headers, "Content-Encoding": "gzip"}
            body = gzip.compress(body, compresslevel=1, mtime=0)
        counts = None
        if self._key_rate is not None:
            counts = Counter(chain.from_iterable(map(out.keys.__getitem__, map(id, payloads))))
        if cfg.dry_run:
            out.stats["requests"] += 1
            out.stats["bytes_sent"] += len(body)
            return 200, ""
        jitter = tenacity.wait_random_exponential(multiplier=cfg.backoff,
                                                  max=cfg.max_backoff)

        def wait(state: tenacity.RetryCallState) -> float:
            exc = state.outcome.exception()
            after = getattr(exc, "retry_after", None) or 0.0
            return max(after, jitter(state))

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type((_Transient, urllib3.exceptions.HTTPError,
                                                    OSError)),
            stop=(tenacity.stop_after_attempt(cfg.max_retries + 1)
                  | tenacity.stop_before_delay(cfg.timeout)),
            wait=wait, reraise=True)
        for attempt in retrying:
            with attempt:
                while counts is not None and (pause := self._key_rate.reserve(counts)):
                    time.sleep(pause)
                self._rate.wait()
                out.stats["requests"] += 1
                out.stats["bytes_sent"] += len(body)
                if attempt.retry_state.attempt_number > 1:
                    out.stats["retried_requests"] += 1
                response = self._client.request("POST", self._url, body=body,
                                                headers=headers)
                text = response.data.decode("utf-8", "replace")
                if response.status == 429 or response.status >= 500:
                    after = _retry_after(response.headers.get("Retry-After"))
                    if after:  # the whole partner is asked to wait, not this batch alone
                        self._rate.pause(min(after, cfg.timeout))
                    raise _Transient(response.status, after, self._redact(text[:500]))
                return response.status, self._redact(text)
        raise AssertionError("unreachable")  # tenacity re-raises the last error


@beam.typehints.with_input_types(ShardLinesIn)
class DeliverToPartner(beam.PTransform):
    """Send a partner's payloads to its bulk ingestion API.

    Input: ShardLines ``(shard, [payload JSON bytes])`` - FormatForPartners' output for
    ``partner``, exactly what ``partners/<partner>/`` holds. Output: a dict of
    PCollections: ``"failed"``, the delivery_failed records (dicts), and ``"stats"``,
    flat counters: ``delivery/<p>/delivered``, ``.../failed/<reason>``, ``.../requests``,
    ``.../retried_requests``, ``.../bytes_sent`` (also Beam counters, namespace
    ``delivery``). ``delivered + failed`` = the payloads given.
    """

    def __init__(self, partner: str, config: DeliveryConfig):
        super().__init__()
        if partner not in DEFAULT_ENDPOINTS:
            raise ValueError(f"unknown partner {partner!r}; choose from "
                             f"{', '.join(DEFAULT_ENDPOINTS)}")
        self._partner, self._config = partner, config

    def expand(self, shard_lines):
        partner, cfg = self._partner, self._config
        limits = cfg.limits(partner)
        packed = shard_lines | "Pack" >> beam.ParDo(_Pack(partner, limits)).with_outputs(
            FAILED, STATS, main="pieces")
        sent = (packed.pieces
                | "Batch" >> beam.BatchElements(
                    min_batch_size=_WEIGHT, max_batch_size=_WEIGHT,
                    element_size_fn=_weight(limits), record_metrics=False)
                | "Send" >> beam.ParDo(_Send(partner, cfg)).with_outputs(FAILED, STATS))
        failed = (packed[FAILED], sent[FAILED]) | "AllFailed" >> beam.Flatten()
        stats = (packed[STATS], sent[STATS]) | "AllStats" >> beam.Flatten()
        return {FAILED: failed, STATS: stats}


# --- what earlier runs left undelivered ------------------------------------------------

# failures a later attempt can turn into deliveries (the others never will)
RETRIABLE = (EXHAUSTED, UNAUTHORIZED)


class _Undelivered(beam.DoFn):
    """A delivery_failed/ file -> ShardLines of its payloads worth sending again."""

    def __init__(self, partner: str):
        self._partner = partner

    def process(self, path: str) -> Iterator[Any]:
        payloads = []
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as fo:
            for line in fo:
                record = orjson.loads(line)
                if record.get("reason") in RETRIABLE:
                    payload = record["payload"]
                    payloads.append(payload.encode() if isinstance(payload, str)
                                    else orjson.dumps(payload))
        if payloads:
            Metrics.counter("delivery", f"{self._partner}/carried_over").inc(len(payloads))
            yield ShardLines(0, payloads)  # the shard is not used by delivery
        yield beam.pvalue.TaggedOutput(
            STATS, {f"delivery/{self._partner}/carried_over": len(payloads)})


class ReadUndelivered(beam.PTransform):
    """Earlier runs' ``delivery_failed/<partner>/`` files -> the payloads they left
    undelivered for a reason a new attempt can fix (``retries_exhausted``,
    ``unauthorized``), as ShardLines to flatten into DeliverToPartner's input.

    Applied to the pipeline. Outputs: main ``payloads``; tagged ``stats``:
    ``delivery/<p>/carried_over`` (also a Beam counter). Permanent failures (rejected,
    too large) stay where they are: sending them again would fail again.
    """

    def __init__(self, partner: str, paths: list[str]):
        super().__init__()
        if partner not in DEFAULT_ENDPOINTS:
            raise ValueError(f"unknown partner {partner!r}; choose from "
                             f"{', '.join(DEFAULT_ENDPOINTS)}")
        if isinstance(paths, str) or not all(isinstance(x, str) and x for x in paths):
            raise ValueError("paths must be a list of delivery_failed/ file paths")
        self._partner, self._paths = partner, list(paths)

    def expand(self, pbegin):
        return (pbegin
                | "Files" >> beam.Create(self._paths)
                | "Payloads" >> beam.ParDo(_Undelivered(self._partner)).with_output_types(
                    ShardLines).with_outputs(STATS, main="payloads"))


__all__ = ["DeliverToPartner", "DeliveryConfig", "ReadUndelivered", "APIS",
           "DEFAULT_ENDPOINTS", "DEFAULT_MAX_RPS", "FAILED", "RETRIABLE", "TOO_LARGE",
           "EXHAUSTED", "REJECTED", "UNAUTHORIZED"]
