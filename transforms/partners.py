"""Partner payloads: deduplicated events -> the payload each partner's ingestion API takes.

One formatter for every partner and event type. The mapping is data
(``schemas/partners/<partner>.json``, generated from the seed tabs; ``transforms.mapping``
says how a type is mapped, inferred or overridden), compiled per worker into one small
function per event type for all selected partners at once (``compile_partners``): each
Currents field is looked up once for every payload, the identity rules
(``identities.IDENTITY_RULES``) are written inline. Each destination key is a constant
or takes its value from a Currents field, the partner's event name, the identity, or a
run option (token, environment). Rules that hold for every partner, in one place here:

- Braze fields win: custom event and purchase ``properties`` are expanded into the
  property bag after every Braze field, and a property whose key is taken is kept under
  the partner's ``on_collision`` prefix (counted as ``property_collisions``).
- Fields Braze adds later (in the record, not in the mapping) go to the property bag only
  with ``forward_new_fields``, never over a mapped key; otherwise they are counted per
  field as ``new_fields_held_back``.
- An event is skipped, with the first reason that applies: its type is not sent to the
  partner (``storage_only_event``, ``no_mapping_for_event_type``, an override), its user
  asked to be deleted (``user_deleted``, ``transforms.identity_map``), the partner's
  identity rule refuses it (counted as ``not_eligible`` too), or a key the
  partner's API requires has no value (``missing_required:<key>``).

``FormatForPartner`` (one partner) is a view of ``FormatForPartners`` (``fanout.py``).
``explain_mapping`` prints the generated code of one event type; the code is registered
with ``linecache`` so tracebacks show its lines.
"""
from __future__ import annotations

import functools
import linecache
import time as _time
import zlib
from collections import Counter
from typing import Any, Callable, Iterable, NamedTuple

import apache_beam as beam
import orjson

from transforms import codec
from transforms.identities import FALLBACK, IDENTITY_RULES, PARTNERS
from transforms.identity_map import ADDED_FIELDS, DELETED_REASON
from transforms.mapping import NO_MAPPING, event_spec, load_mapping  # noqa: F401

SkippedEvent = tuple  # (event_type, id, reason)


def _iso8601(seconds: int) -> str:
    """Epoch seconds -> ``2026-11-24T08:00:00Z``, the form Segment's API takes.

    Remembered per second (the builders look ``_ISO`` up inline first, ~50 ns against
    ~220 ns for this call), forgetting all past ``_ISO_MAX`` seconds (~0.5 MB): a shard's
    events come in id order, not time order, and a day has 86,400 seconds, which would
    hold ~10 MB in every worker for ~0.1 s of CPU per 500k events."""
    text = _ISO.get(seconds)
    if text is None:
        if len(_ISO) >= _ISO_MAX:
            _ISO.clear()
        minute, second = divmod(seconds, 60)
        text = _ISO[seconds] = _minute(minute) + _SECONDS[second]
    return text


_ISO: dict[int, str] = {}
_ISO_MAX = 1 << 12
_SECONDS = [f"{s:02d}Z" for s in range(60)]


@functools.lru_cache(maxsize=1 << 14)
def _minute(minute: int) -> str:
    """A run spans hours to days: strftime once per minute (11 days of them cached, a
    few MB at most), not once per event; ~4x faster than formatting each time."""
    return _time.strftime("%Y-%m-%dT%H:%M:", _time.gmtime(minute * 60))


# conversion name -> Python expression over the value `{v}` (transforms.mapping.CONVERSIONS)
_CONVERT = {"seconds_to_millis": "{v} * 1000",
            "seconds_to_iso8601": "(ISO({v}) or _iso8601({v}))",
            "not": "not {v}"}


def _mapping_code(event_type: str, spec: dict, partner: str, mapping: dict, config: dict,
                  const: Callable[[Any], str], value_of: Callable[[str], str],
                  identity_of: Callable[[str], str], has_extra: str, known: str,
                  forward_new_fields: bool) -> tuple[list[str], list[tuple[str, str, str]]]:
    """The statements (not indented) that build one payload into ``c0``, one per
    destination key, and the keys the partner's API requires as (container variable,
    key, skip reason).

    ``value_of(field)``: the expression of a Currents field's value; ``identity_of(key)``:
    of the identity's ``key``; ``has_extra``: an expression, true when the record has
    fields the mapping does not know (``known``: the name of their set). Counters go to
    ``C`` (a Counter of summary keys).
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
    names = mapping["event_name"]
    for entry in spec["fields"]:
        parent, _, key = entry["to"].rpartition(".")
        target = f"{container(parent)}[{key!r}]"
        if entry.get("api_required"):
            required.append((container(parent), key, f"missing_required:{entry['to']}"))
        source = entry.get("from")
        if "const" in entry or source.startswith("@config."):
            if "const" in entry:
                value = entry["const"]
            elif source[8:] in config:
                value = config[source[8:]]
            else:
                raise ValueError(f"{partner}: the mapping needs the option {source[8:]!r}")
            code.append(f"{target} = {const(value)}")
            continue
        if source == "@event_name":
            if spec["name"] is None:  # a custom event: its own name, prefixed
                code.append(f"v = {value_of('name')}")
                code.append(f"if v is not None: {target} = "
                            f"{const(names['custom_event_prefix'])} + str(v)")
            else:
                code.append(f"{target} = {const(names['prefix'] + spec['name'])}")
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
    bag = container(mapping["property_bag"])
    held = const(f"partners/{partner}/new_fields_held_back/")
    code += [f"if {has_extra}:",  # fields Braze added later: kept in order, or counted
             "    for k, v in r.items():",
             f"        if v is not None and k not in {known}:"]
    if forward_new_fields:
        code += [f"            if k not in {bag}: {bag}[k] = v",
                 f"            else: C[{held} + k] += 1"]
    else:
        code.append(f"            C[{held} + k] += 1")
    expand = spec.get("expand_properties")
    if expand is not None:  # after every Braze field: a property never replaces one
        prefix = const(expand["prefix"])
        again = const(mapping["on_collision"].get(event_type) or expand["prefix"]
                      or "property ")
        code += [f"props = {value_of('properties')}",
                 "if props:",
                 "    for k, v in loads(props).items():",
                 f"        k = {prefix} + k",
                 f"        if k in {bag}:",
                 f"            C[{const(f'partners/{partner}/property_collisions')}] += 1",
                 f"            k = {again} + k",
                 f"            while k in {bag}: k = {again} + k",
                 f"        {bag}[k] = v"]
    return code, required


def _constants(consts: list) -> Callable[[Any], str]:
    def const(value: Any) -> str:
        consts.append(value)
        return f"K[{len(consts) - 1}]" + (".copy()" if isinstance(value, (dict, list)) else "")
    return const


def _indented(lines: list[str], spaces: int) -> list[str]:
    return [" " * spaces + line for line in lines]


class Builder(NamedTuple):
    """A compiled builder and its source (``explain_mapping``)."""
    build: Callable[[dict, Counter], None]
    source: str


def compile_partners(event_type: str, partners: tuple[str, ...], mappings: dict[str, dict],
                     config: dict, outputs: list[tuple[list, list]],
                     fields: Iterable[str] = (), overrides: dict | None = None,
                     forward_new_fields: bool = False) -> Builder:
    """One function for an event type and several partners, ``build(record, C)``:
    appends each partner's payload (JSON bytes) to its ``outputs[n][0]``, or
    ``(event_type, id, reason)`` to ``outputs[n][1]`` when the event is not sent, and
    adds to ``C`` (summary counter keys) what it refused or changed.

    ``fields``: the record's fields, for a type the mappings do not know (inferred);
    ``overrides``: ``{partner: {event_type: override}}`` (``mapping.validate_overrides``).
    """
    consts: list[Any] = []
    const = _constants(consts)
    local: dict[str, str] = {}  # Currents field -> local variable

    def value_of(field: str) -> str:
        return local.setdefault(field, f"f{len(local)}")

    def present(field: str) -> str:  # identities._present, on the field's local
        return f"(isinstance({value_of(field)}, str) and {value_of(field)} != '')"

    namespace: dict[str, Any] = {"K": consts, "loads": orjson.loads, "dumps": orjson.dumps,
                                 "_iso8601": _iso8601, "ISO": _ISO.get, "ET": event_type}
    knowns: dict[frozenset, str] = {}
    body: list[str] = []
    for n, partner in enumerate(partners):
        rule = IDENTITY_RULES[partner]
        namespace[f"P{n}"], namespace[f"S{n}"] = (out.append for out in outputs[n])
        override = ((overrides or {}).get(partner) or {}).get(event_type)
        spec = event_spec(mappings[partner], event_type, fields, override)
        body.append(f"# {partner}")
        if not spec["sendable"]:
            body.append(f"S{n}((ET, g('id'), {spec['reason']!r}))")
            continue
        known_set = frozenset(spec["known_fields"]) | {"event_type", *ADDED_FIELDS}
        known = knowns.setdefault(known_set, f"KNOWN{len(knowns)}")
        code, required = _mapping_code(
            event_type, spec, partner, mappings[partner], config, const, value_of,
            lambda key: f"({value_of(rule.keys[key])} if {present(rule.keys[key])} else None)",
            f"x{known[5:]}", known, forward_new_fields)
        body += ["if D:",  # a deletion request (transforms.identity_map): not sent
                 f"    S{n}((ET, g('id'), {DELETED_REASON!r}))",
                 f"elif not ({' or '.join(present(f) for f in rule.needs_any)}):",
                 f"    C[{const(f'partners/{partner}/not_eligible/{rule.reason}')}] += 1",
                 f"    S{n}((ET, g('id'), {rule.reason!r}))", "else:",
                 *_indented(code, 4)]
        body += [f"    {'el' if i else ''}if {key!r} not in {var}: S{n}((ET, g('id'), {why!r}))"
                 for i, (var, key, why) in enumerate(required)]
        body.append(f"    {'else: ' if required else ''}P{n}(dumps(c0))")
    head = ["def build(r, C):", "    g = r.get"]
    head.append("    D = g('user_deleted')")  # under a deletion request
    head += [f"    {var} = g({field!r}, g({FALLBACK[field]!r}))" if field in FALLBACK
             else f"    {var} = g({field!r})" for field, var in local.items()]
    for known_set, name in knowns.items():
        namespace[name] = known_set
        head.append(f"    x{name[5:]} = not {name}.issuperset(r)")
    source = "\n".join(head + _indented(body, 4)) + "\n"
    filename = f"<partners {event_type} {zlib.crc32(source.encode()):08x}>"
    # tracebacks through a builder show its generated lines
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(compile(source, filename, "exec"), namespace)
    return Builder(namespace["build"], source)


def explain_mapping(event_type: str, partners: Iterable[str] = PARTNERS,
                    config: dict | None = None, overrides: dict | None = None,
                    fields: Iterable[str] = (), forward_new_fields: bool = False) -> str:
    """The Python the formatter compiles for ``event_type`` and ``partners`` (run options
    are constants ``K[i]``, so no token appears). ``fields``: a record's fields, for a type
    the mappings do not document. ``python -m pipelines.currents_to_partners
    --explain-mapping TYPE`` prints it."""
    partners = tuple(partners)
    mappings = {p: load_mapping(p) for p in partners}
    config = {"mixpanel_token": "<token>", "mparticle_environment": "production",
              **(config or {})}
    return compile_partners(event_type, partners, mappings, config,
                            [([], []) for _ in partners], fields, overrides,
                            forward_new_fields).source


class PartnerFormatter:
    """One partner's payload for one event at a time (tests, notebooks); the pipeline
    formats for several partners per event with ``FormatForPartners``."""

    def __init__(self, partner: str, config: dict, mapping: dict | None = None,
                 overrides: dict | None = None, forward_new_fields: bool = False):
        if partner not in PARTNERS:
            raise ValueError(f"unknown partner {partner!r}")
        self.partner = partner
        self._args = ({partner: mapping or load_mapping(partner)}, dict(config), overrides,
                      forward_new_fields)
        self._out: list[tuple[list, list]] = [([], [])]
        self._builders: dict[Any, Builder] = {}
        self.counters: Counter = Counter()

    def format(self, record: dict) -> tuple[dict | None, str | None]:
        """(payload, None), or (None, reason) when the event is not sent to this partner."""
        event_type = record.get("event_type")
        mappings, config, overrides, forward = self._args
        key = (event_type, tuple(record)) if event_type not in mappings[self.partner][
            "events"] else event_type
        builder = self._builders.get(key)
        if builder is None:
            builder = self._builders[key] = compile_partners(
                event_type, (self.partner,), mappings, config, self._out, record, overrides,
                forward)
        payloads, skipped = self._out[0]
        builder.build(record, self.counters)
        if payloads:
            return orjson.loads(payloads.pop()), None
        return None, skipped.pop()[2]


def skipped_lines(skipped: list[SkippedEvent]) -> list[bytes]:
    """``(event_type, id, reason)`` of events not sent -> the ``_skipped`` JSON lines."""
    return [codec.dumps({"event_type": t, "id": i, "reason": r}) for t, i, r in skipped]


def delivery_stats(partner: str, written: int, skipped: Counter) -> dict[str, int]:
    """``partners/<p>/written`` and ``partners/<p>/skipped/<reason>`` (``skipped``:
    reason -> events)."""
    stats = {f"partners/{partner}/skipped/{reason}": n for reason, n in skipped.items()}
    stats[f"partners/{partner}/written"] = written
    return stats


class PartnerOutputs(NamedTuple):
    payloads: beam.PCollection
    skipped: beam.PCollection
    stats: beam.PCollection


class FormatForPartner(beam.PTransform):
    """Format events for one partner: a view of ``FormatForPartners`` with one partner.

    Input: ShardLines ``(shard, [canonical_json, ...])`` (DeduplicateEvents' output).
    Output: ``PartnerOutputs(payloads, skipped, stats)``: ShardLines of the partner's JSON
    payloads; ShardLines of ``{event_type, id, reason}``; counters. ``config`` as for
    ``FormatForPartners`` (checked here, when the pipeline is built).
    """

    def __init__(self, partner: str, config: dict | None = None, **options: Any):
        super().__init__()
        from transforms.fanout import FormatForPartners
        self._partner = partner
        self._all = FormatForPartners((partner,), config, **options)

    def expand(self, events):
        from transforms.fanout import skipped_tag
        from transforms.types import STATS
        out = events | f"Format[{self._partner}]" >> self._all
        return PartnerOutputs(out[self._partner], out[skipped_tag(self._partner)], out[STATS])
