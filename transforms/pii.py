"""PII controls: personal fields kept, hashed (HMAC-SHA256) or dropped, per output.

Which fields are personal is data: the catalogue's ``[PII]`` marks, and for a field the
catalogue does not know for its event type, the name rule of ``schemas/pii.json``; the
same rule for the keys inside ``properties`` (customer-defined, so no catalogue).
Identity fields (``user_id``, ``external_user_id``, ``device_id``, ...) follow the policy
only with ``identities=True`` (``--pii-identities``): hashing them changes attribution.
``hash`` writes ``hex(HMAC-SHA256(salt, value))`` (a non-string value: of its canonical
JSON), the same in every output, so joins across outputs still work; ``drop`` removes the
field; ``keep`` changes nothing (and costs nothing: the events are not parsed).
"""
from __future__ import annotations

import fnmatch
import functools
import hashlib
import hmac
import json
import os
from typing import Any, Iterator, Literal

import apache_beam as beam

from schemas.catalogue import load_catalogue, read_json_resource
from transforms import codec
from transforms.types import ShardLines

Policy = Literal["keep", "hash", "drop"]
POLICIES = ("keep", "hash", "drop")
SALT_ENV = "CURRENTS_PII_SALT"
# the bag of customer-defined keys (custom events, purchases): its keys are not catalogue
# fields, so the name rule decides for each
PROPERTIES = "properties"


@functools.lru_cache(maxsize=1)
def rules() -> dict:
    """``schemas/pii.json``: the name rule and the identity fields."""
    return read_json_resource("pii.json")


@functools.lru_cache(maxsize=4096)
def looks_personal(field: str) -> bool:
    """The name rule, for a field the catalogue does not know."""
    name, r = field.lower(), rules()
    return (any(fnmatch.fnmatchcase(name, p) for p in r["name_patterns"])
            and not any(fnmatch.fnmatchcase(name, p) for p in r["not_personal"]))


class PiiFields:
    """Which fields of an event type are personal (cached per type and field set)."""

    def __init__(self, identities: bool):
        self._identities = identities
        self._catalogue = load_catalogue()
        self._identity = frozenset(rules()["identity_fields"])
        self._cache: dict[Any, frozenset] = {}

    def of(self, event_type: str, fields: tuple[str, ...]) -> frozenset:
        key = (event_type, fields)
        found = self._cache.get(key)
        if found is None:
            spec = self._catalogue.get(event_type)
            known = spec.fields if spec else {}
            found = frozenset(
                f for f in fields
                if (f in self._identity and self._identities)
                or (f not in self._identity and (
                    known[f].pii if f in known else looks_personal(f))))
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key] = found
        return found


def hasher(salt: str):
    """value -> hex HMAC-SHA256 keyed by ``salt`` (None stays None)."""
    key = salt.encode("utf-8")

    def digest(value: Any) -> Any:
        if value is None:
            return None
        data = value.encode("utf-8") if isinstance(value, str) else codec.dumps(value)
        return hmac.new(key, data, hashlib.sha256).hexdigest()
    return digest


def salt_from_env(policies: tuple[str, ...]) -> str | None:
    """The salt when any policy hashes, else None; ``ValueError`` when it is missing."""
    if "hash" not in policies:
        return None
    salt = os.environ.get(SALT_ENV, "")
    if not salt:
        raise ValueError(f"--pii hash needs a secret salt in the environment variable "
                         f"{SALT_ENV} (the same salt gives the same hashes across runs)")
    return salt


def apply(record: dict, policy: str, personal: frozenset, digest) -> dict:
    """``record`` with its ``personal`` fields hashed or dropped (a new dict), and in its
    ``properties`` bag the keys the name rule calls personal."""
    if policy == "keep":
        return record
    bag = record.get(PROPERTIES)
    if not personal and bag is None:
        return record
    if policy == "drop":
        out = {k: v for k, v in record.items() if k not in personal}
    else:
        out = {k: (digest(v) if k in personal else v) for k, v in record.items()}
    if bag is not None and PROPERTIES not in personal:
        out[PROPERTIES] = _properties(bag, policy, digest)
    return out


def _properties(value: Any, policy: str, digest) -> Any:
    """A custom event's or purchase's properties (JSON text, as Currents writes them, or
    an object) with each top-level key that looks personal by the name rule hashed or
    dropped; unchanged (the same text) when none does or it is not a JSON object."""
    bag = value
    if isinstance(value, str):
        try:
            bag = json.loads(value)
        except ValueError:
            return value
    if not isinstance(bag, dict):
        return value
    personal = [k for k in bag if isinstance(k, str) and looks_personal(k)]
    if not personal:
        return value
    if policy == "drop":
        bag = {k: v for k, v in bag.items() if k not in personal}
    else:
        bag = {k: (digest(v) if k in personal else v) for k, v in bag.items()}
    return json.dumps(bag, ensure_ascii=False) if isinstance(value, str) else bag


class _Apply(beam.DoFn):
    def __init__(self, policy: str, identities: bool, salt: str | None,
                 record_key: str | None):
        self._policy, self._identities, self._salt = policy, identities, salt
        self._record_key = record_key

    def setup(self):
        self._fields = PiiFields(self._identities)
        self._digest = hasher(self._salt) if self._salt else None

    def _one(self, record: dict) -> dict:
        if not isinstance(record, dict):
            return record
        etype = record.get("event_type")
        return apply(record, self._policy, self._fields.of(etype, tuple(record)),
                     self._digest)

    def process(self, element: ShardLines) -> Iterator[ShardLines]:
        shard, lines = element
        out = []
        for line in lines:
            r = codec.loads(line)
            if self._record_key is None:
                r = self._one(r)
            elif isinstance(r.get(self._record_key), dict):
                inner = dict(r[self._record_key])
                inner.setdefault("event_type", r.get("event_type"))
                applied = self._one(inner)
                if "event_type" not in r[self._record_key]:
                    applied.pop("event_type", None)
                r[self._record_key] = applied
            out.append(codec.dumps(r))
        yield shard, out


class ApplyPii(beam.PTransform):
    """ShardLines of events (or of dead letter/duplicates lines, whose raw row is under
    ``record_key``) -> the same with personal fields hashed or dropped.

    ``salt``: required with ``hash`` (``salt_from_env``)."""

    def __init__(self, policy: str, identities: bool = False, salt: str | None = None,
                 record_key: str | None = None):
        super().__init__()
        if policy not in POLICIES:
            raise ValueError(f"pii policy {policy!r}: choose from {', '.join(POLICIES)}")
        if policy == "hash" and not salt:
            raise ValueError(f"pii hash needs a salt ({SALT_ENV})")
        self._args = (policy, identities, salt, record_key)

    def expand(self, lines):
        if self._args[0] == "keep":
            return lines
        return lines | "Apply" >> beam.ParDo(_Apply(*self._args))


def apply_to_identity_record(record: dict, policy: str, digest) -> dict:
    """identity/ outputs under ``--pii-identities``: every braze_id and external_id in a
    map, conflict or deletion record hashed (or dropped)."""
    ids = ("braze_id", "external_id", "chosen", "merged_into")
    out = {}
    for k, v in record.items():
        if k in ids:
            if policy == "drop":
                continue
            out[k] = digest(v)
        elif k == "members":
            if policy != "drop":
                out[k] = [digest(m) for m in v]
        elif k == "candidates":
            out[k] = [apply_to_identity_record(c, policy, digest) for c in v]
        else:
            out[k] = v
    return out
