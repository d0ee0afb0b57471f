"""Partner mappings as data: the packaged ones, the rule for event types the seeds do not
document, and users' overrides (``--mapping-overrides``).

``event_spec(mapping, event_type, fields)`` is the one place that says how an event type
is mapped for a partner: the generated entry of ``schemas/partners/<partner>.json`` for
a documented (or catalogue) type, else the inference rule below, then the user's
override merged over either. The formatter (``transforms.partners``) compiles what it
returns; nothing here is written per event type.

Inference, for a type Braze exports that the seeds do not document (for instance
``users.messages.rcs.Delivery``): the event is named as the seeds name its siblings
(the partner's name for the same action in a similar channel, ``SMS Delivered`` ->
``RCS Delivered``, else the most common one, else the action itself in words), each
field goes where documented types of the same channel put it, else where any documented
type puts a field of that name; fields with no documented destination are new fields
(held back unless ``forward_new_fields``). Types listed ``not_sendable`` are skipped with
their reason, types outside the inferable families as ``no_mapping_for_event_type``.
"""
from __future__ import annotations

import re
from typing import Any, Iterable, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from schemas.catalogue import read_json_resource

NO_MAPPING = "no_mapping_for_event_type"
OVERRIDE_REASON = "disabled_by_mapping_override"
CONVERSIONS = ("seconds_to_millis", "seconds_to_iso8601", "not")
IDENTITY_FIELDS = ("user_id", "external_user_id", "device_id")


def load_mapping(partner: str) -> dict:
    """The packaged mapping of one partner (``schemas/partners/<partner>.json``)."""
    return read_json_resource(f"partners/{partner}.json")


def humanise(name: str) -> str:
    """``TokenStateChange`` -> ``Token State Change``."""
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name)


def _suffix(inferred: dict, action: str, channel: str | None) -> str:
    """The partner's words for a message action (``Delivery`` -> ``Delivered``)."""
    names = inferred["action_names"].get(action)
    if not names:
        return humanise(action)
    for sibling in inferred["similar_channels"].get(channel or "", []):
        if sibling in names:
            return names[sibling]
    counts: dict[str, int] = {}
    for word in names.values():
        counts[word] = counts.get(word, 0) + 1
    return min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]


def infer_spec(mapping: dict, event_type: str, fields: Iterable[str]) -> dict:
    """The mapping of an event type the packaged mapping does not know (see the module
    docstring), for a record with ``fields``."""
    rules = mapping["inferred"]
    for prefix, (reason, why) in rules["not_sendable"].items():
        if event_type == prefix or (prefix.endswith(".") and event_type.startswith(prefix)):
            return {"sendable": False, "reason": reason, "why": why}
    family = next((f for f in rules["families"] if event_type.startswith(f)), None)
    if family is None:
        return {"sendable": False, "reason": NO_MAPPING,
                "why": "not a family of event types the inference rule covers"}
    parts = event_type[len(family):].split(".")
    channel = parts[0] if family == "users.messages." and len(parts) == 2 else None
    action = parts[-1]
    if channel is not None:
        words = [rules["channels"].get(channel, humanise(channel.capitalize()))]
    else:
        words = [rules["families_display"].get(family, "")]
        words += [rules["channels"].get(p, humanise(p[:1].upper() + p[1:])) for p in parts[:-1]]
    words.append(_suffix(rules, action, channel))
    name = " ".join(w for w in words if w)
    by_channel = rules["fields_by_channel"].get(channel or "", {})
    envelope = list(rules["envelope"])
    taken = {e["to"] for e in envelope}
    used = {e.get("from") for e in envelope} | set(IDENTITY_FIELDS) | {"id", "time"}
    entries = []
    for field in sorted(set(fields)):
        to = by_channel.get(field) or rules["fields"].get(field)
        if to and to not in taken and field not in used:
            entries.append({"to": to, "from": field})
            taken.add(to)
    known = sorted(used - {None} | {e["from"] for e in entries}
                   | {e["from"] for e in envelope if not e.get("from", "@").startswith("@")})
    return {"sendable": True, "documented": False, "inferred": True, "name": name,
            "expand_properties": None, "known_fields": [k for k in known if k],
            "fields": envelope + entries}


def event_spec(mapping: dict, event_type: str, fields: Iterable[str] = (),
               override: dict | None = None) -> dict:
    """How ``event_type`` is mapped for this partner: packaged or inferred, then the
    user's override (a validated ``EventOverride`` dict) merged over it."""
    spec = mapping["events"].get(event_type)
    if spec is None:
        spec = infer_spec(mapping, event_type, fields)
    return merge_override(spec, override) if override else spec


def merge_override(spec: dict, override: dict) -> dict:
    """``override`` over ``spec``: ``name``, ``sendable``/``reason``; ``fields`` replace
    the entry with the same ``to`` or are added; ``drop_fields`` removes entries."""
    out = dict(spec)
    if override.get("sendable") is False:
        return {"sendable": False, "reason": override.get("reason") or OVERRIDE_REASON,
                "why": "--mapping-overrides"}
    if not out.get("sendable", False):
        if override.get("sendable") is not True:
            return out
        if not override.get("name") or not override.get("fields"):
            raise ValueError("an override that makes a type sendable needs its 'name' "
                             "and 'fields'")
        out = {"documented": False, "name": None, "expand_properties": None,
               "fields": [], "known_fields": []}
    if "name" in override:
        out["name"] = override["name"]
    drop = set(override.get("drop_fields") or ())
    added = {e["to"]: e for e in override.get("fields") or ()}
    fields = [added.pop(e["to"], e) for e in out["fields"] if e["to"] not in drop]
    out["fields"] = fields + list(added.values())
    out["known_fields"] = sorted(set(out.get("known_fields", ())) | {
        e["from"] for e in out["fields"] if not e.get("from", "@").startswith("@")})
    out["sendable"] = True
    return out


# --- --mapping-overrides: validated when the pipeline is built ---------------------------

class FieldOverride(BaseModel):
    """One destination key, as in ``schemas/partners/<partner>.json``."""
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    to: str = Field(min_length=1)
    from_: Optional[str] = Field(None, alias="from", min_length=1)
    const: Any = None
    convert: Optional[Literal["seconds_to_millis", "seconds_to_iso8601", "not"]] = None
    when: Optional[dict[str, str]] = None
    required: bool = False
    api_required: bool = False

    @model_validator(mode="after")
    def _one_source(self):
        if (self.from_ is None) == ("const" not in self.model_fields_set):
            raise ValueError("give exactly one of 'from' (a Currents field, @event_name, "
                             "@identity.<key> or @config.<key>) and 'const'")
        if self.from_ and self.from_.startswith("@") and self.from_ != "@event_name" and \
                not self.from_.startswith(("@identity.", "@config.")):
            raise ValueError(f"unknown source {self.from_!r}: use @event_name, "
                             "@identity.<key> or @config.<key>")
        return self

    def entry(self) -> dict:
        out: dict[str, Any] = {"to": self.to}
        if self.from_ is not None:
            out["from"] = self.from_
        else:
            out["const"] = self.const
        for key in ("convert", "when"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.api_required:
            out["api_required"] = True
        return out


class EventOverride(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Optional[str] = None
    sendable: Optional[bool] = None
    reason: Optional[str] = Field(None, pattern=r"^[a-z0-9_]+$")
    fields: list[FieldOverride] = []
    drop_fields: list[str] = []


class PartnerOverrides(BaseModel):
    model_config = ConfigDict(extra="forbid")
    events: dict[str, EventOverride]


class MappingOverrides(BaseModel):
    model_config = ConfigDict(extra="forbid")
    amplitude: Optional[PartnerOverrides] = None
    mixpanel: Optional[PartnerOverrides] = None
    mparticle: Optional[PartnerOverrides] = None
    segment: Optional[PartnerOverrides] = None


def validate_overrides(data: Any) -> dict[str, dict[str, dict]]:
    """``{partner: {event_type: override}}`` from the JSON of a ``--mapping-overrides``
    file; raises ``ValueError`` naming the first bad key."""
    try:
        model = MappingOverrides.model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key" + (" (partners: amplitude, mixpanel, mparticle, segment)"
                                       if len(err["loc"]) == 1 else "")
        raise ValueError(f"mapping overrides: {where}: {message}") from None
    out: dict[str, dict[str, dict]] = {}
    for partner in ("amplitude", "mixpanel", "mparticle", "segment"):
        spec: Union[PartnerOverrides, None] = getattr(model, partner)
        if spec is None:
            continue
        out[partner] = {}
        for event_type, ev in spec.events.items():
            item: dict[str, Any] = {}
            for key in ("name", "sendable", "reason"):
                if key in ev.model_fields_set:
                    item[key] = getattr(ev, key)
            if ev.fields:
                item["fields"] = [f.entry() for f in ev.fields]
            if ev.drop_fields:
                item["drop_fields"] = list(ev.drop_fields)
            out[partner][event_type] = item
    return out
