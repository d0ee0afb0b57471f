"""ResolveIdentities: the user identity each partner would receive for each event.

Braze's ``user_id`` is the braze_id (always present), ``external_user_id`` the
customer's external_id (absent for anonymous users), ``device_id`` the device. The
partner rules come from seeds 001/003/004:

- Amplitude: ``user_id`` = external_id; anonymous users only when ``device_id`` is set.
- Mixpanel: ``distinct_id`` = external_id; events without one are not sent.
- mParticle: ``user_identities.customerid`` = external_id; required.
- Segment: ``anonymousId`` = braze_id, ``userId`` = external_id, either one enough.
"""
from __future__ import annotations

import functools
from collections import Counter
from typing import Any, Iterator, NamedTuple, Union

import apache_beam as beam

from transforms import codec
from transforms.types import STATS, IdentifiedBatch, Record, ShardLines, ShardLinesIn

PARTNERS = ("amplitude", "mixpanel", "mparticle", "segment")

# Events per output element of ResolveIdentities (see _Resolve.process).
CHUNK = 2000

# What a partner gets: the identity fields, or the reason the event cannot be sent.
Identity = Union[dict, str]


def _present(value: Any) -> bool:
    return isinstance(value, str) and value != ""


class IdentityRule(NamedTuple):
    """What a partner gets: ``keys`` (identity key -> Currents field, None where the field
    is absent or empty), sendable only when one of ``needs_any`` is present, otherwise
    ``reason``. Data, so that the partner builders can be compiled with it inline."""
    keys: dict[str, str]
    needs_any: tuple[str, ...]
    reason: str


# The external_id partners get: the event's own, or the one the identity map resolved for
# its braze_id (transforms.identity_map adds this field to every event). A record that
# did not go through that step falls back to the Currents field (FALLBACK).
RESOLVED = "resolved_external_user_id"
FALLBACK = {RESOLVED: "external_user_id"}


def identity_value(record: Record, field: str) -> Any:
    """``record[field]``, or its FALLBACK field's value when the record lacks ``field``."""
    if field in FALLBACK and field not in record:
        field = FALLBACK[field]
    return record.get(field)


IDENTITY_RULES: dict[str, IdentityRule] = {
    "amplitude": IdentityRule({"user_id": RESOLVED, "device_id": "device_id"},
                              (RESOLVED, "device_id"),
                              "no_external_id_or_device_id"),
    "mixpanel": IdentityRule({"distinct_id": RESOLVED}, (RESOLVED,),
                             "no_external_id"),
    "mparticle": IdentityRule({"customerid": RESOLVED}, (RESOLVED,),
                              "no_external_id"),
    # Segment takes a track call with userId or anonymousId (either is enough)
    "segment": IdentityRule({"anonymousId": "user_id", "userId": RESOLVED},
                            ("user_id", RESOLVED), "no_braze_id_or_external_id"),
}


def resolve_identity(partner: str, record: Record) -> Identity:
    """The identity ``partner`` would use for ``record``, or why it cannot be sent."""
    rule = IDENTITY_RULES[partner]
    if not any(_present(identity_value(record, field)) for field in rule.needs_any):
        return rule.reason
    return {key: value if _present(value := identity_value(record, field)) else None
            for key, field in rule.keys.items()}


class _Resolve(beam.DoFn):
    def __init__(self, partners: tuple[str, ...], chunk: int):
        self._partners, self._chunk = partners, chunk

    def process(self, element: ShardLines) -> Iterator[Any]:
        shard, lines = element
        rules = [(p, functools.partial(resolve_identity, p)) for p in self._partners]
        not_eligible: Counter = Counter()  # (partner, reason); most events are eligible
        loads = codec.loads
        # A shard's events are parsed and formatted a chunk at a time (the partners'
        # writers append the chunks to the shard's file): a worker holds a chunk of parsed
        # events, not the whole shard.
        for start in range(0, len(lines), self._chunk):
            out = []
            for line in lines[start:start + self._chunk]:
                record = loads(line)
                identities = {}
                for partner, rule in rules:
                    identity = identities[partner] = rule(record)
                    if type(identity) is str:
                        not_eligible[partner, identity] += 1
                out.append((record, identities))
            yield shard, out
        yield beam.pvalue.TaggedOutput(STATS, eligibility_stats(
            self._partners, len(lines), not_eligible))


def eligibility_stats(partners: tuple[str, ...], events: int,
                      not_eligible: Counter) -> dict[str, int]:
    """``partners/<p>/eligible`` and ``partners/<p>/not_eligible/<reason>`` for
    ``events`` events, of which ``not_eligible[partner, reason]`` were refused."""
    stats = {f"partners/{p}/not_eligible/{reason}": n
             for (p, reason), n in not_eligible.items()}
    for p in partners:
        stats[f"partners/{p}/eligible"] = events - sum(
            n for (q, _), n in not_eligible.items() if q == p)
    return stats


@beam.typehints.with_input_types(ShardLinesIn)
class ResolveIdentities(beam.PTransform):
    """Attach each partner's identity to each event.

    Input: ShardLines ``(shard, [canonical_json, ...])`` (DeduplicateEvents' output).
    Output (main, ``identified``): ``(shard, [(event dict, {partner: identity dict | reason})])``,
    a shard's events in order, in consecutive elements of up to ``chunk`` events (default
    ``CHUNK``); tagged ``stats``: ``partners/<p>/eligible`` and
    ``partners/<p>/not_eligible/<reason>``.
    """

    def __init__(self, partners: tuple[str, ...] = PARTNERS, chunk: int | None = None):
        super().__init__()
        unknown = set(partners) - set(IDENTITY_RULES)
        if unknown:
            raise ValueError(f"unknown partner(s): {', '.join(sorted(unknown))}")
        self._partners = tuple(partners)
        self._chunk = CHUNK if chunk is None else chunk
        if self._chunk < 1:
            raise ValueError("chunk must be >= 1")

    def expand(self, events):
        return events | "Resolve" >> beam.ParDo(_Resolve(
            self._partners, self._chunk)).with_output_types(
            IdentifiedBatch).with_outputs(STATS, main="identified")
