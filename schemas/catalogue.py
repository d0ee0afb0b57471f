"""The Currents event catalogue (``catalogue.json``) and the pydantic models derived from it.

The catalogue is data generated from Braze's docs by ``schemas/build_from_seeds.py``;
nothing here is written per event type. ``event_model(spec)`` builds, for any catalogue
entry, a pydantic model that states what a valid raw Currents row of that type is.
"""
from __future__ import annotations

import json
from importlib import resources
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr
from pydantic import AfterValidator, create_model
from pydantic_core import PydanticCustomError
import orjson

FieldType = Literal["string", "int", "long", "float", "boolean", "array<string>"]

# A Currents `time` is epoch seconds. Anything outside these bounds is 0, negative,
# milliseconds or otherwise not a real event time. Fixed bounds keep reruns identical.
MIN_EPOCH_SECONDS = 946_684_800      # 2000-01-01T00:00:00Z
MAX_EPOCH_SECONDS = 4_102_444_800    # 2100-01-01T00:00:00Z


class FieldSpec(BaseModel):
    model_config = ConfigDict(frozen=True)
    type: FieldType
    required: bool
    pii: bool
    description: str = ""


class EventTypeSpec(BaseModel):
    model_config = ConfigDict(frozen=True)
    category: Literal["message_engagement", "customer_behavior"]
    seed: str
    fields: dict[str, FieldSpec]

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(n for n, f in self.fields.items() if f.required)


class Catalogue(BaseModel):
    model_config = ConfigDict(frozen=True)
    generated_by: str
    seeds: dict[str, str]
    event_types: dict[str, EventTypeSpec]

    def __contains__(self, event_type: str) -> bool:
        return event_type in self.event_types

    def get(self, event_type: str) -> EventTypeSpec | None:
        return self.event_types.get(event_type)


def load_catalogue() -> Catalogue:
    """Read the packaged catalogue (works from a checkout, a wheel or a Dataflow worker)."""
    text = resources.files("schemas").joinpath("catalogue.json").read_text(encoding="utf-8")
    return Catalogue.model_validate(json.loads(text))


def read_json_resource(name: str) -> Any:
    return json.loads(resources.files("schemas").joinpath(name).read_text(encoding="utf-8"))


_PYTHON_TYPES: dict[str, Any] = {
    "string": StrictStr,
    "int": StrictInt,
    "long": StrictInt,
    # Avro float/double read as Python float; an integral value written as int is still a
    # number. NaN and infinities have no JSON form and no meaning here.
    "float": Annotated[StrictFloat, Field(allow_inf_nan=False)] | StrictInt,
    "boolean": StrictBool,
    "array<string>": list[StrictStr],
}

EpochSeconds = Annotated[StrictInt, Field(ge=MIN_EPOCH_SECONDS, lt=MAX_EPOCH_SECONDS)]
NonEmptyStr = Annotated[StrictStr, Field(min_length=1)]  # an event id; dedup keys on it


def _json_object(value: str) -> str:
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise PydanticCustomError("properties_not_json", "properties is not JSON: {err}",
                                  {"err": str(exc)}) from None
    if not isinstance(parsed, dict):
        raise PydanticCustomError("properties_not_object",
                                  "properties is JSON but not an object: {kind}",
                                  {"kind": type(parsed).__name__})
    return value


JsonObjectString = Annotated[StrictStr, AfterValidator(_json_object)]


def python_type(name: str, field: FieldSpec) -> Any:
    """The pydantic type of one catalogue field.

    ``time`` must be a plausible epoch in seconds; ``properties`` a JSON-object string.
    """
    if name == "time" and field.type in ("int", "long"):
        return EpochSeconds
    if name == "id" and field.type == "string":
        return NonEmptyStr
    if name == "properties" and field.type == "string":
        return JsonObjectString
    return _PYTHON_TYPES[field.type]


# Fields a row cannot do without, whatever its writer schema allows: the dedup key and
# the event time every partner and every hourly reconciliation needs.
ALWAYS_REQUIRED = ("id", "time")


def relaxed_spec(spec: EventTypeSpec, allowed_nulls: Any) -> tuple[EventTypeSpec, frozenset]:
    """``spec`` with the required fields whose nulls the file's writer schema allows
    made optional (but ``ALWAYS_REQUIRED``), and the set of fields so relaxed plus
    ``field[]`` for arrays whose items may be null."""
    allowed = frozenset(allowed_nulls or ())
    relaxed = frozenset(n for n, f in spec.fields.items() if f.required and n in allowed
                        and n not in ALWAYS_REQUIRED)
    items = frozenset(n for n in allowed if n.endswith("[]") and n[:-2] in spec.fields)
    if not relaxed:
        return spec, items
    fields = {n: f.model_copy(update={"required": False}) if n in relaxed else f
              for n, f in spec.fields.items()}
    return spec.model_copy(update={"fields": fields}), relaxed | items


def event_model(event_type: str, spec: EventTypeSpec,
                nullable_items: Any = ()) -> type[BaseModel]:
    """A pydantic model of one raw Currents row; unknown fields are allowed and kept.
    ``nullable_items``: ``field[]`` for array fields whose items may be null."""
    fields: dict[str, Any] = {}
    for name, field in spec.fields.items():
        kind = python_type(name, field)
        if f"{name}[]" in nullable_items and field.type == "array<string>":
            kind = list[StrictStr | None]
        fields[name] = (kind, ...) if field.required else (kind | None, None)
    model_name = "".join(part[:1].upper() + part[1:] for part in event_type.split("."))
    return create_model(model_name, __config__=ConfigDict(extra="allow", frozen=True),
                        **fields)
