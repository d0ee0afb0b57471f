"""FormatForPartners: deduplicated events -> every selected partner's payloads, in one pass.

Each event is parsed once and goes through one function compiled per event type for all
selected partners (``partners.compile_partners``): each Currents field is looked up once
for every payload, the identity rules are written inline, and the payloads are appended
straight to per-chunk lists. ``FormatForPartner`` is this transform with one partner.
Options are checked when the transform is built, not on a worker.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Iterator, Literal, Optional

import apache_beam as beam
from pydantic import BaseModel, ConfigDict, ValidationError

from transforms import codec
from transforms.identities import CHUNK
from transforms.mapping import event_spec, validate_overrides
from transforms.partners import (PARTNERS, compile_partners, delivery_stats, load_mapping,
                                skipped_lines)
from transforms.types import STATS, ShardLines, ShardLinesIn


def skipped_tag(partner: str) -> str:
    """The tagged output of a partner's skipped events (its payloads: the partner's name)."""
    return f"{partner}/skipped"


class PartnerConfig(BaseModel):
    """Run options the partner payloads carry."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    mixpanel_token: Optional[str] = None
    mparticle_environment: Literal["production", "development"] = "production"


def check_config(partners: tuple[str, ...], config: dict | None) -> dict:
    """The partner options as a plain dict, or ``ValueError`` naming what is wrong (never
    echoing a value: the token is a secret)."""
    try:
        checked = PartnerConfig.model_validate(config or {})
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False, include_input=False):
            key = ".".join(map(str, err["loc"]))
            problems.append(f"unknown option {key!r} (known: "
                            f"{', '.join(PartnerConfig.model_fields)})"
                            if err["type"] == "extra_forbidden" else f"{key}: {err['msg']}")
        raise ValueError("partner config: " + "; ".join(problems)) from None
    if "mixpanel" in partners and not checked.mixpanel_token:
        raise ValueError("partner config: mixpanel needs 'mixpanel_token' (the project "
                         "token its payloads carry)")
    return checked.model_dump()


class _FormatAll(beam.DoFn):
    def __init__(self, partners: tuple[str, ...], config: dict, chunk: int,
                 overrides: dict, forward_new_fields: bool):
        self._partners, self._config, self._chunk = partners, config, chunk
        self._overrides, self._forward = overrides, forward_new_fields

    def setup(self):
        self._mappings = {p: load_mapping(p) for p in self._partners}
        # each partner's (payloads, skipped) of the chunk being formatted: the compiled
        # builders append to these lists, emptied after each chunk
        self._outputs = [([], []) for _ in self._partners]
        self._builders: dict[Any, Any] = {}

    def _builder(self, event_type: str, record: dict):
        """The compiled builder of an event type: one per type the mappings know, one
        per (type, fields) for types they do not (inferred from the record's fields)."""
        known = event_type in self._mappings[self._partners[0]]["events"]
        key = event_type if known else (event_type, tuple(record))
        build = self._builders.get(key)
        if build is None:
            build = self._builders[key] = compile_partners(
                event_type, self._partners, self._mappings, self._config, self._outputs,
                () if known else record, self._overrides, self._forward).build
            if known:
                self._builders[event_type] = build
        return build

    def process(self, element: ShardLines) -> Iterator[Any]:
        shard, lines = element
        partners, loads = self._partners, codec.loads
        counters: Counter = Counter()  # not_eligible, collisions, held-back fields
        skipped_by = {p: Counter() for p in partners}  # partner -> reason -> events
        written = Counter()
        builders, builder = self._builders, self._builder
        for payloads, skipped in self._outputs:  # a failed element's leftovers
            payloads.clear()
            skipped.clear()
        # A shard is parsed and formatted a chunk at a time (the writers append the
        # chunks to the shard's file): a worker holds a chunk of parsed events.
        for start in range(0, len(lines), self._chunk):
            for line in lines[start:start + self._chunk]:
                record = loads(line)
                event_type = record.get("event_type")
                (builders.get(event_type) or builder(event_type, record))(record, counters)
            for partner, (payloads, skipped) in zip(partners, self._outputs):
                written[partner] += len(payloads)
                yield beam.pvalue.TaggedOutput(partner, (shard, payloads[:]))
                payloads.clear()
                if skipped:
                    skipped_by[partner].update(reason for _, _, reason in skipped)
                    yield beam.pvalue.TaggedOutput(skipped_tag(partner),
                                                   (shard, skipped_lines(skipped)))
                    skipped.clear()
        stats = dict(counters)
        for p in partners:
            refused = sum(n for k, n in counters.items()
                          if k.startswith(f"partners/{p}/not_eligible/"))
            stats[f"partners/{p}/eligible"] = len(lines) - refused
            stats.update(delivery_stats(p, written[p], skipped_by[p]))
        yield beam.pvalue.TaggedOutput(STATS, stats)


@beam.typehints.with_input_types(ShardLinesIn)
class FormatForPartners(beam.PTransform):
    """Format deduplicated events for several partners at once.

    Input: ShardLines ``(shard, [canonical_json, ...])`` (DeduplicateEvents' output).
    Outputs, per partner ``p``: tagged ``p``: ShardLines of its JSON payloads; tagged
    ``p/skipped`` (``skipped_tag(p)``): ShardLines of ``{event_type, id, reason}``; a
    shard comes as consecutive elements of up to ``chunk`` events' worth. Tagged
    ``stats``: ``partners/<p>/eligible``, ``.../not_eligible/<reason>``, ``.../written``,
    ``.../skipped/<reason>``, ``.../property_collisions``,
    ``.../new_fields_held_back/<field>``.

    ``config``: ``mixpanel_token`` (required with Mixpanel), ``mparticle_environment``;
    ``overrides``: the JSON of a ``--mapping-overrides`` file; ``forward_new_fields``:
    fields Braze added later go to the property bags. All checked here.
    """

    def __init__(self, partners: tuple[str, ...] = PARTNERS, config: dict | None = None,
                 chunk: int = CHUNK, overrides: dict | None = None,
                 forward_new_fields: bool = False):
        super().__init__()
        unknown = set(partners) - set(PARTNERS)
        if unknown or not partners:
            raise ValueError(f"unknown partner(s): {', '.join(sorted(unknown))}; choose "
                             f"from {', '.join(PARTNERS)}" if unknown else "no partners")
        if chunk < 1:
            raise ValueError("chunk must be >= 1")
        self._partners = tuple(partners)
        self._config = check_config(self._partners, config)
        self._overrides = validate_overrides(overrides) if overrides else {}
        for partner, events in self._overrides.items():  # every override applies cleanly
            mapping = load_mapping(partner)
            for event_type, override in events.items():
                try:
                    event_spec(mapping, event_type, (), override)
                except ValueError as exc:
                    raise ValueError(f"mapping overrides: {partner}.events.{event_type}: "
                                     f"{exc}") from None
        self._chunk, self._forward = chunk, bool(forward_new_fields)

    def expand(self, events):
        tags = [t for p in self._partners for t in (p, skipped_tag(p))]
        return events | "Format" >> beam.ParDo(_FormatAll(
            self._partners, self._config, self._chunk, self._overrides,
            self._forward)).with_output_types(ShardLines).with_outputs(*tags, STATS)
