"""Derive the event catalogue and the partner payload templates from Braze's docs.

The seeds (``../shared/seeds``) are Braze's own glossary pages. Their JSON blocks are
the specification: one "Cloud Storage" block per event type (the raw Currents export)
and, for many events, one block per partner. This script turns them into data that the
pipeline reads (``schemas/catalogue.json``, ``schemas/partner_templates.json``), so a
new Braze event or field is a data change, not a code change.

The partner mappings (``schemas/partners/<partner>.json``) combine the seed tabs with
the hand-written partner conventions in ``schemas/partners/base.json``.

Run ``python -m schemas.build_from_seeds [--seeds DIR] [--check]``; ``--check`` exits
non-zero when the committed files differ from what the seeds give.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any

from schemas import warehouse

HERE = Path(__file__).resolve().parent
DEFAULT_SEEDS = HERE.parent.parent / "shared" / "seeds"
CATALOGUE = HERE / "catalogue.json"
TEMPLATES = HERE / "partner_templates.json"
PARTNER_DIR = HERE / "partners"
BASE = PARTNER_DIR / "base.json"

# Newest source first: a type documented in several seeds is taken from the first.
SEED_ORDER = ("004", "000", "002")
CATEGORY = {"004": "message_engagement", "000": "customer_behavior", "002": "customer_behavior"}
PARTNERS = ("amplitude", "mixpanel", "mparticle", "segment")
# Fields the newer glossaries mark required on every event; used for the one old-format
# seed (002) that gives types but not required/optional.
ALWAYS_REQUIRED = ("id", "user_id", "time")
# Routed by the identity rules (transforms/identities.py), never a stray property.
IDENTITY_FIELDS = {"user_id", "external_user_id", "device_id"}
TYPE_NAMES = {"string": "string", "int": "int", "long": "long", "float": "float",
              "boolean": "boolean", "array of string": "array<string>", "bool": "boolean"}

_SPEC = re.compile(r"^\((required|optional), ([^)]+)\)\s*(\[PII\])?\s*(.*)$", re.S)
_HEADER = re.compile(r"^//\s*(?:(?P<display>.+?)\s*[:(]\s*)?(?P<type>users\.[A-Za-z0-9_.]+)\)?\s*$")
_LOOSE_FIELD = re.compile(r'^\s*"(?P<name>[^"]+?)\s*"\s*:\s*\((?P<type>[^)]+)\)\s*(?P<desc>.*?),?\s*$')


def _blocks(text: str):
    """Yield (header, start, body) for every ``// header`` followed by a ``{...}`` block."""
    for m in re.finditer(r"^//[^\n]*users\.[^\n]*$", text, re.M):
        header = m.group(0).strip()
        brace = text.find("{", m.end())
        if brace < 0 or text[m.end():brace].strip():
            continue
        try:
            body, _ = json.JSONDecoder().raw_decode(text, brace)
        except json.JSONDecodeError:
            body = _parse_loose(text, brace)
        yield header, m.start(), body


def _parse_loose(text: str, brace: int) -> dict[str, str]:
    """Old-format blocks (``"field": (type) description,``) as strict-format specs."""
    end = text.index("\n}", brace)
    fields = {}
    for line in text[brace + 1:end].splitlines():
        m = _LOOSE_FIELD.match(line)
        if m:
            name = m.group("name").strip()
            kind = TYPE_NAMES.get(m.group("type").strip().lower(), m.group("type").strip())
            req = "required" if name in ALWAYS_REQUIRED else "optional"
            fields[name] = f"({req}, {kind}) {m.group('desc').strip()}"
    return fields


def _kind_of(body: dict[str, Any]) -> str:
    """Which tab a block belongs to, from its shape (the web-copy seed has no tab names)."""
    if "schema_version" in body and "events" in body:
        return "mparticle"
    if "anonymousId" in body or "messageId" in body:
        return "segment"
    if "insert_id" in body and "event_type" in body:
        return "amplitude"
    if "event" in body and isinstance(body.get("properties"), dict):
        return "mixpanel"
    return "storage"


def parse_spec(spec: str) -> dict[str, Any]:
    m = _SPEC.match(spec.strip())
    if not m:
        raise ValueError(f"unparseable field spec: {spec!r}")
    required, kind, pii, desc = m.groups()
    return {"type": TYPE_NAMES[kind.strip()], "required": required == "required",
            "pii": bool(pii), "description": desc.strip()}


def _tab_before(text: str, pos: int) -> str | None:
    tab = text.rfind("{% tab ", 0, pos)
    api = text.rfind("{% api %}", 0, pos)
    if tab < 0 or tab < api:
        return None
    return text[tab + 7:text.index("%}", tab)].strip()


def build(seeds: Path) -> tuple[dict, dict]:
    files = {p.name[:3]: p for p in sorted(seeds.glob("0*.txt"))}
    events: dict[str, dict] = {}
    templates: dict[str, dict] = {}
    digests = {}
    pii_fields: set[str] = set()
    for key in SEED_ORDER:
        path = files[key]
        text = path.read_text(encoding="utf-8")
        digests[path.name] = hashlib.sha256(text.encode()).hexdigest()
        for header, pos, body in _blocks(text):
            m = _HEADER.match(header)
            if not m:
                raise ValueError(f"{path.name}: unparseable header {header!r}")
            etype, display = m.group("type"), m.group("display")
            kind = _kind_of(body)
            tab = _tab_before(text, pos)
            if tab and kind != "storage" and tab.lower() != kind:
                raise ValueError(f"{path.name}: {header!r} in tab {tab!r} looks like {kind}")
            if kind == "storage":
                if etype in events:
                    continue  # documented by a newer seed already
                fields = {name: parse_spec(spec) for name, spec in body.items()}
                events[etype] = {"category": CATEGORY[key], "seed": path.name,
                                 "fields": dict(sorted(fields.items()))}
                if key != "002":
                    pii_fields.update(n for n, f in fields.items() if f["pii"])
            else:
                per_type = templates.setdefault(etype, {})
                if kind not in per_type:
                    per_type[kind] = {"name": display, "seed": path.name, "template": body}
    # The old-format seed has no [PII] marks: carry them over by field name.
    for spec in events.values():
        if spec["seed"].startswith("002"):
            for name, field in spec["fields"].items():
                field["pii"] = name in pii_fields
    catalogue = {
        "generated_by": "python -m schemas.build_from_seeds",
        "seeds": digests,
        "event_types": dict(sorted(events.items())),
    }
    partner_templates = {
        "generated_by": "python -m schemas.build_from_seeds",
        "event_types": {t: dict(sorted(v.items())) for t, v in sorted(templates.items())},
    }
    return catalogue, partner_templates


def _leaves(obj: Any, path: tuple = ()):
    """(dotted path, value) of every leaf; empty objects are leaves too."""
    if isinstance(obj, dict) and obj:
        for key, value in obj.items():
            yield from _leaves(value, path + (key,))
    elif isinstance(obj, list) and obj:
        for i, value in enumerate(obj):
            yield from _leaves(value, path + (str(i),))
    else:
        yield ".".join(path), obj


def _is_spec(value: Any) -> bool:
    return isinstance(value, str) and bool(_SPEC.match(value))


def _humanise(event_type: str) -> str:
    """``users.behaviors.app.SessionStart`` -> ``Session Start`` (for undocumented names)."""
    last = event_type.rsplit(".", 1)[-1]
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", last)


def build_mappings(catalogue: dict, templates: dict, base: dict) -> dict[str, dict]:
    """One declarative mapping per partner: for every catalogue event, where each
    destination key of the partner payload takes its value from.

    Documented (event, partner) pairs follow the seed tab exactly; the others (no tab)
    follow the partner's default template plus every catalogue field in the property bag.
    """
    events = catalogue["event_types"]
    by_description: dict[str, set[str]] = {}
    for spec in events.values():
        for name, field in spec["fields"].items():
            by_description.setdefault(field["description"], set()).add(name)
    mappings = {}
    for partner, conv in base["partners"].items():
        roles, bag = conv["roles"], conv["property_bag"]
        role_required: dict[str, bool] = {}
        for tabs in templates.values():
            if partner in tabs:
                for path, value in _leaves(tabs[partner]["template"]):
                    if path in roles and _is_spec(value):
                        role_required.setdefault(path, parse_spec(value)["required"])

        def resolve(etype: str, path: str, value: Any, fields: dict) -> dict:
            entry: dict[str, Any] = {"to": path}
            key = path.rsplit(".", 1)[-1]
            if path in roles:
                role = roles[path]
                if "const_by_event" in role:
                    entry["const"] = role["const_by_event"].get(etype, role["const"])
                else:
                    entry.update(role)
                # the seed's mark, kept as documentation; `api_required` is what is enforced
                entry["required"] = (parse_spec(value)["required"] if _is_spec(value)
                                     else role_required.get(path, False))
            elif not _is_spec(value):
                entry["const"] = value
            else:
                spec = parse_spec(value)
                same_desc = [n for n, f in fields.items() if f["description"] == spec["description"]]
                anywhere = sorted(by_description.get(spec["description"], ()))
                if key in fields:
                    entry["from"] = key
                elif len(same_desc) == 1:
                    entry["from"] = same_desc[0]
                elif len(anywhere) == 1:
                    entry["from"] = anywhere[0]
                else:
                    entry["from"] = key  # a field Braze sends that the storage block omits
                entry["required"] = spec["required"]
            return entry

        mapping_events = {}
        for etype, spec in events.items():
            fields = spec["fields"]
            tabs = templates.get(etype, {})
            if etype in base["storage_only"]:
                mapping_events[etype] = {"sendable": False, "reason": "storage_only_event",
                                         "why": base["storage_only"][etype]}
                continue
            expand = conv["expand_properties"].get(etype)
            if partner in tabs:
                leaves = list(_leaves(tabs[partner]["template"]))
                name, documented = tabs[partner]["name"], True
            else:
                leaves = [(path, None) for path in conv["default_template"]]
                used = {"id", "time", "user_id", "external_user_id"} | set(
                    roles[p].get("from", "") for p in conv["default_template"] if p in roles)
                if expand is not None:
                    used |= {"name", "properties"}
                leaves += [(f"{bag}.{n}", f"({'required' if f['required'] else 'optional'}, "
                                          f"{f['type']}) {f['description']}")
                           for n, f in fields.items() if n not in used]
                other = tabs.get("amplitude") or tabs.get("mixpanel")
                name = other["name"] if other else _humanise(etype)
                documented = False
            if expand is not None and "name" in fields:
                name = None  # a custom event is named after itself (its `name` field)
            entries = []
            for path, value in leaves:
                entry = resolve(etype, path, value, fields)
                if not documented and entry.get("from") not in (None, *fields) and \
                        not str(entry.get("from", "")).startswith("@"):
                    continue  # default template keys this event has no source for
                entries.append(_api_view(entry, conv))
            mapping_events[etype] = {
                "sendable": True, "documented": documented, "name": name,
                "expand_properties": None if expand is None else {"prefix": expand},
                "known_fields": sorted(set(fields) | IDENTITY_FIELDS | {
                    e["from"] for e in entries if not e.get("from", "@").startswith("@")}),
                "fields": entries}
        envelope = [_api_view(resolve("", path, None, {}), conv)
                    for path in conv["default_template"] if path in roles]
        mappings[partner] = {
            "generated_by": "python -m schemas.build_from_seeds",
            "partner": partner, "api": conv["api"], "property_bag": bag,
            "event_name": conv["event_name"], "on_collision": conv["on_collision"],
            "events": mapping_events,
            "inferred": _inference(base["inference"], mapping_events, envelope, roles)}
    return mappings


def _api_view(entry: dict, conv: dict) -> dict:
    """A mapping entry with the partner's own key names (``renames``) and
    ``api_required`` set where the partner's API requires the key."""
    renamed = conv.get("renames", {}).get(entry["to"])
    if renamed:
        entry = {**entry, "to": renamed}
    if entry["to"] in conv["api_required"]:
        entry = {**entry, "api_required": True}
    return entry


def _most_common(counter: dict[str, int]) -> str:
    return min(counter.items(), key=lambda kv: (-kv[1], kv[0]))[0]


def _inference(rules: dict, events: dict, envelope: list, roles: dict) -> dict:
    """What the formatter needs to map an event type the seeds do not document: the
    partner's name for each message action per channel (``Delivery`` -> sms:
    ``Delivered``), the destination of each Currents field in documented types of each
    channel and in any type, and the envelope every payload has."""
    channels = rules["channels"]
    actions: dict[str, dict[str, str]] = {}
    by_channel: dict[str, dict[str, dict[str, int]]] = {}
    anywhere: dict[str, dict[str, int]] = {}
    for etype, spec in sorted(events.items()):
        if not spec["sendable"]:
            continue
        parts = etype.split(".")
        channel = parts[2] if etype.startswith("users.messages.") and len(parts) == 4 else None
        display = channels.get(channel or "")
        if channel and spec.get("documented") and spec["name"] and display and \
                spec["name"].startswith(display + " "):
            actions.setdefault(parts[3], {})[channel] = spec["name"][len(display) + 1:]
        for entry in spec["fields"]:
            source = entry.get("from", "@")
            if source.startswith("@") or entry["to"] in roles or "when" in entry \
                    or "convert" in entry:
                continue
            for table in ([by_channel.setdefault(channel, {})] if channel else []) + [anywhere]:
                counts = table.setdefault(source, {})
                counts[entry["to"]] = counts.get(entry["to"], 0) + 1
    return {
        "families": rules["families"], "not_sendable": rules["not_sendable"],
        "channels": channels, "families_display": rules["families_display"],
        "similar_channels": rules["similar_channels"],
        "action_names": {a: dict(sorted(v.items())) for a, v in sorted(actions.items())},
        "fields_by_channel": {c: {f: _most_common(t) for f, t in sorted(v.items())}
                              for c, v in sorted(by_channel.items())},
        "fields": {f: _most_common(t) for f, t in sorted(anywhere.items())},
        "envelope": envelope,
    }


def _dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, ensure_ascii=False, sort_keys=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=Path, default=DEFAULT_SEEDS, help="folder of seed pages")
    ap.add_argument("--check", action="store_true",
                    help="compare with the committed files instead of writing them")
    args = ap.parse_args(argv)
    if not args.seeds.is_dir():
        print(f"error: seeds folder not found: {args.seeds}", file=sys.stderr)
        return 2
    catalogue, templates = build(args.seeds)
    base = json.loads(BASE.read_text(encoding="utf-8"))
    outputs = {CATALOGUE: _dump(catalogue), TEMPLATES: _dump(templates)}
    for partner, mapping in build_mappings(catalogue, templates["event_types"], base).items():
        outputs[PARTNER_DIR / f"{partner}.json"] = _dump(mapping)
    outputs.update(warehouse.files(catalogue))  # schemas/bigquery/
    if args.check:
        stale = [p.name for p, text in outputs.items()
                 if not p.exists() or p.read_text(encoding="utf-8") != text]
        stale += warehouse.stale(warehouse.BIGQUERY_DIR, outputs)
        if stale:
            print(f"out of date with the seeds: {', '.join(stale)}", file=sys.stderr)
            return 1
        print("schemas match the seeds")
        return 0
    for path, text in outputs.items():
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    cat = json.loads(outputs[CATALOGUE])
    print(f"wrote {CATALOGUE.name}: {len(cat['event_types'])} event types; {TEMPLATES.name}; "
          f"partners/{{{','.join(base['partners'])}}}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
