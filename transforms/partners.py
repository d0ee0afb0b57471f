"""FormatForPartner: deduplicated events -> the payload a partner's ingestion API takes.

One formatter for every partner and event type: the mapping is data
(``schemas/partners/<partner>.json``, generated from the seed tabs), compiled per worker
into one small function per (partner, event type), or per event type for all partners at
once (``compile_partners``, what the pipeline uses). Each destination key
is a constant or takes its value from a Currents field, the partner's event name, the
identity chosen by ResolveIdentities, or a run option (token, environment). Custom event
and purchase ``properties`` are expanded into the property bag with the documented
prefix; fields Braze added later (not in the catalogue) go to the property bag too.
"""
from __future__ import annotations

import functools
import time as _time
from collections import Counter, defaultdict
from typing import Any, Callable, Iterator

import apache_beam as beam
import orjson

from schemas.catalogue import read_json_resource
from transforms import codec
from transforms.identities import IDENTITY_RULES, PARTNERS
from transforms.types import SKIPPED, STATS, IdentifiedBatchIn, Record, ShardLines

NO_MAPPING = "no_mapping_for_event_type"


def _iso8601(seconds: int) -> str:
    """Epoch seconds -> ``2026-11-24T08:00:00Z``, the form Segment's API takes.

    Remembered per second (the builders look ``_ISO`` up inline first, ~50 ns against
    ~220 ns for this call; an hour of events has 3,600 seconds), forgetting all past
    ``_ISO_MAX`` (~15 MB)."""
    text = _ISO.get(seconds)
    if text is None:
        if len(_ISO) >= _ISO_MAX:
            _ISO.clear()
        minute, second = divmod(seconds, 60)
        text = _ISO[seconds] = _minute(minute) + _SECONDS[second]
    return text


_ISO: dict[int, str] = {}
_ISO_MAX = 1 << 17
_SECONDS = [f"{s:02d}Z" for s in range(60)]


@functools.lru_cache(maxsize=1 << 14)
def _minute(minute: int) -> str:
    """A run spans hours to days: strftime once per minute (11 days of them cached, a
    few MB at most), not once per event; ~4x faster than formatting each time."""
    return _time.strftime("%Y-%m-%dT%H:%M:", _time.gmtime(minute * 60))


# conversion name -> Python expression over the value `{v}`
_CONVERT = {"seconds_to_millis": "{v} * 1000",
            "seconds_to_iso8601": "(ISO({v}) or _iso8601({v}))",
            "not": "not {v}"}


def load_mapping(partner: str) -> dict:
    """The packaged mapping of one partner."""
    return read_json_resource(f"partners/{partner}.json")


def _mapping_code(spec: dict, bag_path: str, config: dict, name_prefix: dict,
                  const: Callable[[Any], str], value_of: Callable[[str], str],
                  identity_of: Callable[[str], str], has_extra: str,
                  known: str) -> tuple[list[str], list[tuple[str, str, str]]]:
    """The statements (not indented) that build one payload into ``c0``, one per
    destination key, and its required keys as (container variable, key, path).

    ``value_of(field)``: the expression of a Currents field's value; ``identity_of(key)``:
    of the identity's ``key`` (see ``identities.IDENTITY_RULES``); ``has_extra``: an
    expression, true when the record has fields the mapping does not know (``known``:
    the name of their set).
    """
    code = ["c0 = {}"]
    containers = {"": "c0"}

    def container(path: str) -> str:
        if path not in containers:
            parent, _, key = path.rpartition(".")
            var = f"c{len(containers)}"
            containers[path] = var
            if key.isdigit():  # a list of one object: mParticle's events[0]
                grand, _, list_key = parent.rpartition(".")
                code.append(f"{var} = {{}}; {container(grand)}[{list_key!r}] = [{var}]")
            else:
                code.append(f"{var} = {{}}; {container(parent)}[{key!r}] = {var}")
        return containers[path]

    required = []
    for entry in spec["fields"]:
        parent, _, key = entry["to"].rpartition(".")
        target = f"{container(parent)}[{key!r}]"
        source = entry.get("from")
        if "const" in entry or source.startswith("@config."):
            value = entry["const"] if "const" in entry else config[source[8:]]
            code.append(f"{target} = {const(value)}")
            continue
        if source == "@event_name":
            if spec["name"] is None:  # a custom event: its own name, prefixed
                code.append(f"{target} = {const(name_prefix['custom_event_prefix'])}"
                            f" + str({value_of('name')})")
            else:
                code.append(f"{target} = {const(name_prefix['prefix'] + spec['name'])}")
            continue
        get = (identity_of(source[10:]) if source.startswith("@identity.")
               else value_of(source))
        indent = ""
        if "when" in entry:
            cond = " and ".join(f"{value_of(f)} == {const(v)}" for f, v in entry["when"].items())
            code.append(f"if {cond}:")
            indent = "    "
        var = get if get.isidentifier() else "v"  # a local variable is used as is
        if var == "v":
            code.append(f"{indent}v = {get}")
        value = _CONVERT[entry["convert"]].format(v=var) if "convert" in entry else var
        code.append(f"{indent}if {var} is not None: {target} = {value}")
        if entry.get("required"):
            required.append((container(parent), key, entry["to"]))
    bag = container(bag_path)
    expand = spec.get("expand_properties")
    if expand is not None:
        code += [f"props = {value_of('properties')}",
                 "if props:",
                 f"    for k, v in loads(props).items(): {bag}[{const(expand['prefix'])} + k] = v"]
    code += [f"if {has_extra}:",  # fields Braze added later: kept, in order
             "    for k, v in r.items():",
             f"        if v is not None and k not in {known}: {bag}[k] = v"]
    return code, [(var, key, f"missing_required:{path}") for var, key, path in required]


def _known(spec: dict) -> frozenset:
    return frozenset(spec["known_fields"]) | {"event_type"}


def _constants(consts: list) -> Callable[[Any], str]:
    def const(value: Any) -> str:
        consts.append(value)
        return f"K[{len(consts) - 1}]" + (".copy()" if isinstance(value, (dict, list)) else "")
    return const


def _indented(lines: list[str], spaces: int) -> list[str]:
    return [" " * spaces + line for line in lines]


def compile_plan(spec: dict, bag_path: str, config: dict,
                 name_prefix: dict) -> Callable[[Record, dict], tuple]:
    """Turn one (partner, event type) mapping into a function ``(record, identity) ->
    (payload, None) | (None, reason)``.

    The mapping stays data; this writes it out once per worker as straight-line Python
    (one statement per destination key), several times faster per event than walking
    the mapping, which matters at millions of events an hour.
    """
    consts: list[Any] = []
    body, required = _mapping_code(spec, bag_path, config, name_prefix, _constants(consts),
                                   lambda field: f"g({field!r})",
                                   lambda key: f"ident.get({key!r})",
                                   "not KNOWN.issuperset(r)", "KNOWN")
    code = ["def build(r, ident):", "    g = r.get", *_indented(body, 4)]
    code += [f"    if {key!r} not in {var}: return None, {why!r}" for var, key, why in required]
    code.append("    return c0, None")
    namespace = {"K": consts, "KNOWN": _known(spec), "loads": orjson.loads,
                 "_iso8601": _iso8601, "ISO": _ISO.get}
    exec(compile("\n".join(code), f"<mapping {name_prefix}>", "exec"), namespace)
    return namespace["build"]


def compile_partners(event_type: str, partners: tuple[str, ...], mappings: dict[str, dict],
                     config: dict, outputs: list[tuple[list, list]]) -> Callable:
    """One function for an event type and several partners, ``(record, not_eligible)``:
    appends each partner's payload (JSON bytes) to its ``outputs[n][0]``, or
    ``(event_type, id, reason)`` to ``outputs[n][1]`` when the event is not sent, and
    counts ``not_eligible[partner, reason]`` for the identities the partner's rule
    (``identities.IDENTITY_RULES``) refuses.

    The same statements as ``compile_plan``'s builders, one partner after the other, but
    each Currents field is looked up once for all partners, the identity rules are
    written inline, and the record's unknown fields are checked once: most fields go to
    every partner's property bag.
    """
    consts: list[Any] = []
    const = _constants(consts)
    fields: dict[str, str] = {}  # Currents field -> local variable

    def value_of(field: str) -> str:
        return fields.setdefault(field, f"f{len(fields)}")

    def present(field: str) -> str:  # identities._present, on the field's local
        return f"(isinstance({value_of(field)}, str) and {value_of(field)} != '')"

    namespace: dict[str, Any] = {"K": consts, "loads": orjson.loads, "dumps": orjson.dumps,
                                 "_iso8601": _iso8601, "ISO": _ISO.get, "ET": event_type}
    knowns: dict[frozenset, str] = {}
    body: list[str] = []
    for n, partner in enumerate(partners):
        rule = IDENTITY_RULES[partner]
        namespace[f"P{n}"], namespace[f"S{n}"] = (out.append for out in outputs[n])
        refused = (f"if not ({' or '.join(present(f) for f in rule.needs_any)}):",
                   f"    NE[{partner!r}, {rule.reason!r}] += 1")
        spec = mappings[partner]["events"].get(event_type)
        if spec is None or not spec["sendable"]:
            reason = NO_MAPPING if spec is None else spec["reason"]
            body += [*refused, f"S{n}((ET, g('id'), {reason!r}))"]
            continue
        known = knowns.setdefault(_known(spec), f"KNOWN{len(knowns)}")
        code, required = _mapping_code(
            spec, mappings[partner]["property_bag"], config, mappings[partner]["event_name"],
            const, value_of,
            lambda key: f"({value_of(rule.keys[key])} if {present(rule.keys[key])} else None)",
            f"x{known[5:]}", known)
        body += [*refused, f"    S{n}((ET, g('id'), {rule.reason!r}))", "else:",
                 *_indented(code, 4)]
        body += [f"    {'el' if i else ''}if {key!r} not in {var}: S{n}((ET, g('id'), {why!r}))"
                 for i, (var, key, why) in enumerate(required)]
        body.append(f"    {'else: ' if required else ''}P{n}(dumps(c0))")
    head = ["def build(r, NE):", "    g = r.get"]
    head += [f"    {var} = g({field!r})" for field, var in fields.items()]
    for known, name in knowns.items():
        namespace[name] = known
        head.append(f"    x{name[5:]} = not {name}.issuperset(r)")
    code = head + _indented(body, 4)
    exec(_compiled("\n".join(code), f"<partners {event_type}>"), namespace)
    return namespace["build"]


# Compiled builders by (source, name): the same mapping, event type and partners give the
# same source, which compiles to the same code. Compiling is most of the cost of making
# a builder (~70 event types: ~0.2 s per worker); ``warm_builders`` fills it ahead.
_CODE: dict[tuple[str, str], Any] = {}


def _compiled(source: str, name: str) -> Any:
    code = _CODE.get((source, name))
    if code is None:
        code = _CODE[source, name] = compile(source, name, "exec")
    return code


def warm_builders(partners: tuple[str, ...] = PARTNERS) -> int:
    """Compile the builders of every event type the mappings of ``partners`` know, as
    ``compile_partners`` will ask for them (option values do not appear in the source:
    they are constants); returns how many."""
    mappings = {p: load_mapping(p) for p in partners}
    config: dict = defaultdict(str)  # any run option, as a string (as they all are)
    outputs: list[tuple[list, list]] = [([], []) for _ in partners]
    event_types = sorted({t for m in mappings.values() for t in m["events"]})
    for event_type in event_types:
        compile_partners(event_type, partners, mappings, config, outputs)
    return len(event_types)


class PartnerFormatter:
    """Builds one partner's payloads for any catalogue event type."""

    def __init__(self, partner: str, config: dict, mapping: dict | None = None):
        self.partner = partner
        mapping = mapping or load_mapping(partner)
        self._plans: dict[str, Callable | str] = {}
        for etype, spec in mapping["events"].items():
            self._plans[etype] = (compile_plan(spec, mapping["property_bag"], config,
                                               mapping["event_name"])
                                  if spec["sendable"] else spec["reason"])

    def plan(self, event_type: str | None) -> Callable | str:
        """The compiled builder of an event type, or why it is not sent to this partner."""
        return self._plans.get(event_type, NO_MAPPING)

    def format(self, record: Record, identity: Any) -> tuple[dict | None, str | None]:
        """(payload, None), or (None, reason) when the event is not sent to this partner."""
        plan = self.plan(record.get("event_type"))
        if isinstance(plan, str):
            return None, plan
        if isinstance(identity, str):
            return None, identity
        return plan(record, identity)


class _Format(beam.DoFn):
    def __init__(self, partner: str, config: dict):
        self._partner, self._config = partner, config

    def setup(self):
        self._formatter = PartnerFormatter(self._partner, self._config)

    def process(self, element: tuple[int, list]) -> Iterator[Any]:
        shard, items = element
        partner, dumps, format_ = self._partner, orjson.dumps, self._formatter.format
        lines, skipped = [], []
        for record, identities in items:
            payload, reason = format_(record, identities[partner])
            if payload is not None:
                lines.append(dumps(payload))
            else:
                skipped.append((record.get("event_type"), record.get("id"), reason))
        yield shard, lines
        if skipped:
            yield beam.pvalue.TaggedOutput(SKIPPED, (shard, skipped_lines(skipped)))
        yield beam.pvalue.TaggedOutput(STATS, delivery_stats(
            partner, len(lines), Counter(reason for _, _, reason in skipped)))


def skipped_lines(skipped: list[tuple[str, str, str]]) -> list[bytes]:
    """``(event_type, id, reason)`` of events not sent -> the ``_skipped`` JSON lines."""
    return [codec.dumps({"event_type": t, "id": i, "reason": r}) for t, i, r in skipped]


def delivery_stats(partner: str, written: int, skipped: Counter) -> dict[str, int]:
    """``partners/<p>/written`` and ``partners/<p>/skipped/<reason>`` (``skipped``:
    reason -> events)."""
    stats = {f"partners/{partner}/skipped/{reason}": n for reason, n in skipped.items()}
    stats[f"partners/{partner}/written"] = written
    return stats


@beam.typehints.with_input_types(IdentifiedBatchIn)
class FormatForPartner(beam.PTransform):
    """Format events for one partner.

    Input: ``(shard, [(event dict, {partner: identity | reason})])`` (ResolveIdentities).
    Output (main, ``payloads``): ShardLines of the partner's JSON payloads, one element per
    input element (so a shard may come in several consecutive elements); tagged
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
