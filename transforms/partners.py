"""FormatForPartner: deduplicated events -> the payload a partner's ingestion API takes.

One interpreter for every partner and event type: the mapping is data
(``schemas/partners/<partner>.json``, generated from the seed tabs). Each destination key
is a constant or takes its value from a Currents field, the partner's event name, the
identity chosen by ResolveIdentities, or a run option (token, environment). Custom event
and purchase ``properties`` are expanded into the property bag with the documented
prefix; fields Braze added later (not in the catalogue) go to the property bag too.
"""
from __future__ import annotations

import time as _time
from collections import Counter
from typing import Any, Callable, Iterator

import apache_beam as beam
import orjson

from schemas.catalogue import read_json_resource
from transforms import codec
from transforms.types import SKIPPED, STATS, IdentifiedBatch, Record, ShardLines

PARTNERS = ("amplitude", "mixpanel", "mparticle", "segment")
_CONVERT: dict[str, Callable[[Any], Any]] = {
    "seconds_to_millis": lambda t: t * 1000,
    "seconds_to_iso8601": lambda t: _time.strftime("%Y-%m-%dT%H:%M:%SZ", _time.gmtime(t)),
    "not": lambda b: not b,
}


def load_mapping(partner: str) -> dict:
    """The packaged mapping of one partner."""
    return read_json_resource(f"partners/{partner}.json")


class _EventPlan:
    """The compiled mapping of one (partner, event type): containers and copy operations."""

    def __init__(self, spec: dict, bag_path: str, config: dict, name_prefix: dict):
        self.name = spec["name"]
        self.name_prefix = name_prefix
        expand = spec.get("expand_properties")
        self.expand_prefix = None if expand is None else expand["prefix"]
        self.known = frozenset(spec["known_fields"]) | {"event_type"}
        self.containers: list[str] = [""]
        self.links: list[tuple[int, str, int, bool]] = []
        self.copies: list[tuple[int, str, str]] = []      # plain field -> key
        self.ops: list[tuple[int, str, str, Any, Any, Any]] = []  # everything else
        self.required: list[tuple[int, str, str]] = []
        self.consts: list[tuple[int, str, Any]] = []
        for entry in spec["fields"]:
            parent, _, key = entry["to"].rpartition(".")
            cidx = self._container(parent)
            if "const" in entry:
                self.consts.append((cidx, key, entry["const"]))
                continue
            source = entry["from"]
            convert = _CONVERT[entry["convert"]] if "convert" in entry else None
            when = tuple(entry["when"].items()) if "when" in entry else None
            if source.startswith("@config."):
                self.consts.append((cidx, key, config[source[8:]]))
            elif source.startswith("@") or convert or when:
                self.ops.append((cidx, key, source, convert, when, None))
            else:
                self.copies.append((cidx, key, source))
            if entry.get("required"):
                self.required.append((cidx, key, entry["to"]))
        self.bag = self._container(bag_path)

    def _container(self, path: str) -> int:
        if path in self.containers:
            return self.containers.index(path)
        parent, _, key = path.rpartition(".")
        if key.isdigit():  # a list of one object, e.g. mParticle's events[0]
            list_path = parent
            grand, _, list_key = list_path.rpartition(".")
            pidx = self._container(grand)
            self.containers.append(path)
            self.links.append((pidx, list_key, len(self.containers) - 1, True))
        else:
            pidx = self._container(parent)
            self.containers.append(path)
            self.links.append((pidx, key, len(self.containers) - 1, False))
        return len(self.containers) - 1

    def event_name(self, record: Record) -> str:
        if self.name is None:
            return self.name_prefix["custom_event_prefix"] + str(record.get("name"))
        return self.name_prefix["prefix"] + self.name

    def build(self, record: Record, identity: dict) -> tuple[dict | None, str | None]:
        cs = [{} for _ in self.containers]
        for pidx, key, cidx, as_list in self.links:
            cs[pidx][key] = [cs[cidx]] if as_list else cs[cidx]
        for cidx, key, value in self.consts:
            cs[cidx][key] = value.copy() if isinstance(value, (dict, list)) else value
        get = record.get
        for cidx, key, field in self.copies:
            value = get(field)
            if value is not None:
                cs[cidx][key] = value
        for cidx, key, source, convert, when, _ in self.ops:
            if source == "@event_name":
                value = self.event_name(record)
            elif source.startswith("@identity."):
                value = identity.get(source[10:])
            else:
                value = get(source)
                if when and any(get(f) != v for f, v in when):
                    continue
                if value is not None and convert:
                    value = convert(value)
            if value is not None:
                cs[cidx][key] = value
        bag = cs[self.bag]
        if self.expand_prefix is not None and record.get("properties"):
            prefix = self.expand_prefix
            for k, v in orjson.loads(record["properties"]).items():
                bag[prefix + k] = v
        for k, v in record.items():
            if k not in self.known and v is not None:
                bag[k] = v
        for cidx, key, path in self.required:
            if key not in cs[cidx]:
                return None, f"missing_required:{path}"
        return cs[0], None


class PartnerFormatter:
    """Builds one partner's payloads for any catalogue event type."""

    def __init__(self, partner: str, config: dict, mapping: dict | None = None):
        self.partner = partner
        mapping = mapping or load_mapping(partner)
        self._plans: dict[str, _EventPlan | str] = {}
        for etype, spec in mapping["events"].items():
            self._plans[etype] = (_EventPlan(spec, mapping["property_bag"], config,
                                             mapping["event_name"])
                                  if spec["sendable"] else spec["reason"])

    def format(self, record: Record, identity: Any) -> tuple[dict | None, str | None]:
        """(payload, None), or (None, reason) when the event is not sent to this partner."""
        plan = self._plans.get(record.get("event_type"))
        if plan is None:
            return None, "no_mapping_for_event_type"
        if isinstance(plan, str):
            return None, plan
        if isinstance(identity, str):
            return None, identity
        return plan.build(record, identity)


class _Format(beam.DoFn):
    def __init__(self, partner: str, config: dict):
        self._partner, self._config = partner, config

    def setup(self):
        self._formatter = PartnerFormatter(self._partner, self._config)

    def process(self, element: tuple[int, list]) -> Iterator[Any]:
        shard, items = element
        fmt, partner = self._formatter.format, self._partner
        lines, skipped = [], []
        stats: Counter = Counter()
        for record, identities in items:
            payload, reason = fmt(record, identities[partner])
            if payload is None:
                stats[f"partners/{partner}/skipped/{reason}"] += 1
                skipped.append(codec.dumps({"event_type": record.get("event_type"),
                                            "id": record.get("id"), "reason": reason}))
            else:
                lines.append(codec.dumps(payload))
        stats[f"partners/{partner}/written"] += len(lines)
        yield shard, lines
        if skipped:
            yield beam.pvalue.TaggedOutput(SKIPPED, (shard, skipped))
        yield beam.pvalue.TaggedOutput(STATS, dict(stats))


@beam.typehints.with_input_types(IdentifiedBatch)
class FormatForPartner(beam.PTransform):
    """Format events for one partner.

    Input: ``(shard, [(event dict, {partner: identity | reason})])`` (ResolveIdentities).
    Output (main, ``payloads``): ShardLines of the partner's JSON payloads; tagged
    ``skipped``: ShardLines of ``{event_type, id, reason}``; tagged ``stats``:
    ``partners/<p>/written`` and ``partners/<p>/skipped/<reason>``.
    ``config``: ``mixpanel_token`` (Mixpanel), ``mparticle_environment`` (mParticle).
    """

    def __init__(self, partner: str, config: dict | None = None):
        super().__init__()
        if partner not in PARTNERS:
            raise ValueError(f"unknown partner {partner!r}")
        self._partner, self._config = partner, dict(config or {})

    def expand(self, identified):
        return identified | f"Format[{self._partner}]" >> beam.ParDo(
            _Format(self._partner, self._config)).with_output_types(ShardLines).with_outputs(
            SKIPPED, STATS, main="payloads")
