"""ResolveIdentities: the user identity each partner would receive for each event.

Braze's ``user_id`` is the braze_id (always present), ``external_user_id`` the
customer's external_id (absent for anonymous users), ``device_id`` the device. The
partner rules come from seeds 001/003/004:

- Amplitude: ``user_id`` = external_id; anonymous users only when ``device_id`` is set.
- Mixpanel: ``distinct_id`` = external_id; events without one are not sent.
- mParticle: ``user_identities.customerid`` = external_id; required.
- Segment: ``anonymousId`` = braze_id, ``userId`` = external_id when present.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Iterator, Union

import apache_beam as beam

from transforms import codec
from transforms.gcpause import paused_gc
from transforms.types import STATS, IdentifiedBatch, Record, ShardLines

PARTNERS = ("amplitude", "mixpanel", "mparticle", "segment")

# Events per output element of ResolveIdentities (see _Resolve.process).
CHUNK = 2000

# What a partner gets: the identity fields, or the reason the event cannot be sent.
Identity = Union[dict, str]


def _present(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def _amplitude(r: Record) -> Identity:
    ext, device = r.get("external_user_id"), r.get("device_id")
    if _present(ext):
        return {"user_id": ext, "device_id": device if _present(device) else None}
    if _present(device):
        return {"user_id": None, "device_id": device}
    return "no_external_id_or_device_id"


def _mixpanel(r: Record) -> Identity:
    ext = r.get("external_user_id")
    return {"distinct_id": ext} if _present(ext) else "no_external_id"


def _mparticle(r: Record) -> Identity:
    ext = r.get("external_user_id")
    return {"customerid": ext} if _present(ext) else "no_external_id"


def _segment(r: Record) -> Identity:
    braze, ext = r.get("user_id"), r.get("external_user_id")
    if not _present(braze):
        return "no_braze_id"
    return {"anonymousId": braze, "userId": ext if _present(ext) else None}


RULES: dict[str, Callable[[Record], Identity]] = {
    "amplitude": _amplitude, "mixpanel": _mixpanel,
    "mparticle": _mparticle, "segment": _segment,
}


def resolve_identity(partner: str, record: Record) -> Identity:
    """The identity ``partner`` would use for ``record``, or why it cannot be sent."""
    return RULES[partner](record)


class _Resolve(beam.DoFn):
    def __init__(self, partners: tuple[str, ...], chunk: int):
        self._partners, self._chunk = partners, chunk

    def process(self, element: ShardLines) -> Iterator[Any]:
        shard, lines = element
        rules = [(p, RULES[p]) for p in self._partners]
        not_eligible: Counter = Counter()  # (partner, reason); most events are eligible
        loads = codec.loads
        # A shard's events are parsed and formatted a chunk at a time (the partners'
        # writers append the chunks to the shard's file): a worker holds a chunk of parsed
        # events, not the whole shard.
        for start in range(0, len(lines), self._chunk):
            out = []
            with paused_gc():
                for line in lines[start:start + self._chunk]:
                    record = loads(line)
                    identities = {}
                    for partner, rule in rules:
                        identity = identities[partner] = rule(record)
                        if type(identity) is str:
                            not_eligible[partner, identity] += 1
                    out.append((record, identities))
                yield shard, out
        stats = {f"partners/{p}/not_eligible/{reason}": n
                 for (p, reason), n in not_eligible.items()}
        for p in self._partners:
            stats[f"partners/{p}/eligible"] = len(lines) - sum(
                n for (q, _), n in not_eligible.items() if q == p)
        yield beam.pvalue.TaggedOutput(STATS, stats)


@beam.typehints.with_input_types(ShardLines)
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
        unknown = set(partners) - set(RULES)
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
