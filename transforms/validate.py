"""ValidateEvents: raw rows -> canonical valid events, or dead letter with a reason.

What "valid" means is the pydantic model derived from the catalogue for the row's event
type: required fields present and non-null, every documented field of its documented
type, ``time`` a plausible epoch in seconds, ``properties`` a JSON-object string. Fields
Braze adds later are kept; event types not in the catalogue pass unvalidated (they only
need an ``id`` to be deduplicated) and are counted as unknown.

Where Braze's writer schema is looser than its docs (a field the docs call required is
``["null", T]`` in the file, or an array's items may be null), a null the file's own
schema allows is valid and counted under ``warnings/<type>/<field>`` instead (``id`` and
``time`` stay required); ``strict=True`` dead-letters it as the docs say.
"""
from __future__ import annotations

from collections import Counter
from itertools import compress, repeat
from typing import Any, Iterator

import apache_beam as beam
from pydantic import ValidationError

from schemas.catalogue import (MAX_EPOCH_SECONDS, MIN_EPOCH_SECONDS, Catalogue, EventTypeSpec,
                               event_model, load_catalogue, relaxed_spec)
from transforms import codec
from transforms.identity_map import EVENT, NONE, RESOLVED, SOURCE
from transforms.types import (DEAD_LETTER, STATS, DeadLetter, Record, RowBatch, RowBatchIn,
                              ValidBatch)

# Braze's partner connectors drop events whose payload is over 900 KB.
MAX_PAYLOAD_BYTES = 900 * 1024

# Dead-letter reasons, most fundamental first: a row gets the first that applies.
REASONS = (
    "event_type_mismatch",
    "invalid_utf8",
    "missing_required_field",
    "null_required_field",
    "empty_id",
    "wrong_type",
    "implausible_time",
    "invalid_properties_json",
    "properties_not_object",
    "payload_too_large",
)
_PYDANTIC_REASON = {
    "missing": "missing_required_field",
    "string_too_short": "empty_id",
    "greater_than_equal": "implausible_time",
    "less_than": "implausible_time",
    "properties_not_json": "invalid_properties_json",
    "properties_not_object": "properties_not_object",
}


def reason_for(errors: list[dict[str, Any]], record: Record, required: set[str]) -> str:
    """The machine-readable reason for a pydantic error list (first in ``REASONS`` order)."""
    found = set()
    for err in errors:
        field = err["loc"][0] if err["loc"] else None
        if err["type"] in _PYDANTIC_REASON:
            found.add(_PYDANTIC_REASON[err["type"]])
        elif field in required and record.get(field) is None:
            found.add("null_required_field")
        else:
            found.add("wrong_type")
    return min(found, key=REASONS.index)


def describe(errors: list[dict[str, Any]]) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'row'}: {e['msg']}" for e in errors)


# type name -> Python test over `v`, exactly as strict as the pydantic model (or stricter)
_ACCEPTS = {
    "string": "type(v) is str",
    "int": "type(v) is int",
    "long": "type(v) is int",
    "float": "(type(v) is float and v - v == 0.0 or type(v) is int)",  # finite, or an int
    "boolean": "type(v) is bool",
    "array<string>": "(type(v) is list and all(type(x) is str for x in v))",
}


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(codec.loads(text), dict)
    except ValueError:
        return False


def compile_fast_check(spec: EventTypeSpec, nullable_items: Any = ()):
    """``record -> bool``: True only for rows the pydantic model accepts.

    Most rows are valid; pydantic costs ~8 us a row, this straight-line check ~2.5 us.
    A row it does not accept goes to the model, which gives the reason and message, so
    verdicts are the model's (a property test checks both agree).
    """
    code = ["def ok(r):", "    g = r.get"]
    for name, field in spec.fields.items():
        test = _ACCEPTS[field.type]
        if f"{name}[]" in nullable_items and field.type == "array<string>":
            test = "(type(v) is list and all(type(x) is str or x is None for x in v))"
        if name == "time" and field.type in ("int", "long"):
            test = f"type(v) is int and {MIN_EPOCH_SECONDS} <= v < {MAX_EPOCH_SECONDS}"
        elif name == "id" and field.type == "string":
            test = "type(v) is str and v != ''"
        elif name == "properties" and field.type == "string":
            test = "type(v) is str and json_object(v)"
        code.append(f"    v = g({name!r})")
        if field.required:
            code.append(f"    if v is None or not ({test}): return False")
        else:
            code.append(f"    if v is not None and not ({test}): return False")
    code.append("    return True")
    namespace = {"json_object": _is_json_object}
    exec(compile("\n".join(code), "<fast check>", "exec"), namespace)
    return namespace["ok"]


# catalogue type -> the polars dtypes whose every value the row check accepts by type
_FRAME_DTYPES = {"string": ("String",), "int": ("Int32", "Int64"), "long": ("Int32", "Int64"),
                 "float": ("Float64", "Int32", "Int64"), "boolean": ("Boolean",),
                 "array<string>": ("List(String)",)}


def compile_frame_check(spec: EventTypeSpec, schema: dict) -> tuple[Any, list[str]]:
    """(a polars expression, the string columns whose values must also parse as a JSON
    object): together True only for rows ``compile_fast_check`` accepts.

    The same rules over a whole frame at once, but for the one that needs a JSON parser
    (``properties``), left to the caller column by column. Every row they do not accept
    goes through ``_Validator.check`` one by one, for its reason.
    """
    import polars as pl
    tests: list[Any] = []
    json_objects: list[str] = []
    for name, field in spec.fields.items():
        dtype = schema.get(name)
        if dtype is None:  # the row has no such field: None
            if field.required:
                return pl.lit(False), []
            continue
        col = pl.col(name)
        if str(dtype) not in _FRAME_DTYPES[field.type]:
            test = pl.lit(False)
        elif name == "time" and field.type in ("int", "long"):
            test = col.is_between(MIN_EPOCH_SECONDS, MAX_EPOCH_SECONDS, closed="left")
        elif name == "id" and field.type == "string":
            test = col != ""
        elif name == "properties" and field.type == "string":
            test = pl.lit(True)
            json_objects.append(name)
        elif field.type == "float" and dtype == pl.Float64:
            test = col.is_finite()
        else:
            test = pl.lit(True)
        test = (col.is_not_null() & test) if field.required else (col.is_null() | test)
        tests.append(test.fill_null(False))
    return (pl.all_horizontal(tests) if tests else pl.lit(True)), json_objects


class _Validator:
    """Validates rows against the catalogue; built once per worker (in ``setup``)."""

    def __init__(self, catalogue: Catalogue, strict: bool = False):
        self._catalogue = catalogue
        self._strict = strict
        self._models: dict[Any, Any] = {}
        self._fast: dict[Any, Any] = {}
        self._required: dict[Any, set[str]] = {}
        self._specs: dict[Any, Any] = {}

    def spec(self, event_type: str, allowed_nulls: Any = None):
        """(the catalogue spec as this file's writer schema relaxes it, the relaxed
        fields); (None, ()) for unknown types."""
        key = (event_type, allowed_nulls)
        found = self._specs.get(key)
        if found is None:
            spec = self._catalogue.get(event_type)
            found = self._specs[key] = ((None, frozenset()) if spec is None else
                                        (spec, frozenset()) if self._strict else
                                        relaxed_spec(spec, allowed_nulls))
        return found

    def fast_check(self, event_type: str, allowed_nulls: Any = None):
        """The compiled accept-check of a catalogue type (None for unknown types)."""
        key = (event_type, allowed_nulls)
        fast = self._fast.get(key)
        if fast is None:
            spec, relaxed = self.spec(event_type, allowed_nulls)
            if spec is None:
                return None
            fast = self._fast[key] = compile_fast_check(spec, relaxed)
        return fast

    def check(self, event_type: str, record: Record,
              allowed_nulls: Any = None) -> tuple[str, str] | None:
        """None if valid, else (reason, message)."""
        spec, relaxed = self.spec(event_type, allowed_nulls)
        if spec is None:
            if not isinstance(record.get("id"), str):
                return "missing_required_field", "id: an event needs a string id"
            if not record["id"]:
                return "empty_id", "id: an event id cannot be empty"
            return None
        key = (event_type, allowed_nulls)
        if self.fast_check(event_type, allowed_nulls)(record):
            return None
        model = self._models.get(key)
        if model is None:
            model = self._models[key] = event_model(event_type, spec, relaxed)
            self._required[key] = set(spec.required)
        try:
            model.model_validate(record)
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_context=False)
            return reason_for(errors, record, self._required[key]), describe(errors)
        return None

    def warned(self, event_type: str, allowed_nulls: Any = None) -> tuple[str, ...]:
        """Required fields (per the docs) whose nulls this file's schema makes valid."""
        return tuple(sorted(n for n in self.spec(event_type, allowed_nulls)[1]
                            if not n.endswith("[]")))


class _ValidateBatch(beam.DoFn):
    def __init__(self, catalogue: Catalogue | None, strict: bool = False):
        self._catalogue = catalogue
        self._strict = strict

    def setup(self):
        self._validator = _Validator(self._catalogue or load_catalogue(), self._strict)
        self._frame_checks: dict[tuple, Any] = {}

    def process(self, batch: RowBatch) -> Iterator[Any]:
        event_type, source, first_row, rows, problems, nulls = batch
        problems = problems or {}
        validator = self._validator
        known = event_type in validator._catalogue
        dumps, limit = codec.dumps, MAX_PAYLOAD_BYTES
        stats: Counter = Counter(rows_read=len(rows))
        warned = validator.warned(event_type, nulls)
        if isinstance(rows, list):
            valid, by_row = [], enumerate(rows)
        else:  # a polars frame (ReadCurrentsExport(as_frames=True))
            valid, by_row = self._frame(event_type, first_row, rows, nulls, stats)
        for offset, record in by_row:
            verdict = problems.get(offset) or validator.check(event_type, record, nulls)
            if verdict is None:
                ext = record.get("external_user_id")
                own = type(ext) is str and ext != ""
                payload = dumps({**record, "event_type": event_type,
                                 SOURCE: EVENT if own else NONE,
                                 RESOLVED: ext if own else None})
                if len(payload) <= limit:
                    uid, t = record.get("user_id"), record.get("time")
                    valid.append((first_row + offset, event_type, record["id"], payload,
                                  uid if type(uid) is str else None, ext if own else None,
                                  t if type(t) is int else -1))
                    for name in warned:
                        if record.get(name) is None:
                            stats[f"warnings/{event_type}/{name}"] += 1
                    continue
                verdict = ("payload_too_large",
                           f"payload is {len(payload)} bytes, over {limit}")
            reason, message = verdict
            stats[f"dead_letter_reasons/{reason}"] += 1
            stats["invalid"] += 1
            dead: DeadLetter = {"reason": reason, "event_type": event_type,
                                "source": source, "row": first_row + offset,
                                "error": message, "record": record}
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, dead)
        if not known:
            stats[f"unknown_rows/{event_type}"] += len(rows)
        if valid:
            out = ValidBatch(source, valid)
            yield out
        yield beam.pvalue.TaggedOutput(STATS, dict(stats))

    @staticmethod
    def _who(frame: Any) -> list[Any]:
        """user_id, external_user_id (None when empty) and time (-1 when not an int) of
        each row, as the row path gives them (see ``ValidBatch``)."""
        import polars as pl
        schema, n = frame.schema, frame.height

        def strings(name: str) -> Any:
            if schema.get(name) != pl.String:
                return repeat(None, n)
            col = frame[name]
            return (col if name == "user_id" else col.replace("", None)).to_list()
        times = (frame["time"].fill_null(-1).to_list()
                 if schema.get("time") in (pl.Int64, pl.Int32) else repeat(-1, n))
        return [strings("user_id"), strings("external_user_id"), times]

    def _frame(self, event_type: str, first_row: int, frame: Any, nulls: Any,
               stats: Counter) -> tuple[list, Any]:
        """Validate and serialise a frame at once: (valid entries of the rows the frame
        check accepts, (offset, record) of the others for the row-by-row check); counts
        the warnings of the accepted rows into ``stats``."""
        import polars as pl
        spec, _ = self._validator.spec(event_type, nulls)
        if spec is None or frame.schema.get("id") != pl.String:
            return [], enumerate(frame.to_dicts())
        key = (event_type, nulls, tuple(frame.schema.items()))
        checks = self._frame_checks.get(key)
        if checks is None:
            checks = self._frame_checks[key] = compile_frame_check(spec, frame.schema)
        check, json_objects = checks
        columns = sorted({*frame.columns, "event_type", SOURCE, RESOLVED})
        # canonical JSON, the bytes codec.dumps writes for the same row (sorted keys)
        # (encoded once: an eager select evaluates an expression used twice twice)
        if frame.schema.get("external_user_id") == pl.String:
            own = pl.col("external_user_id").is_not_null() & (pl.col("external_user_id") != "")
            identity = [pl.when(own).then(pl.lit(EVENT)).otherwise(pl.lit(NONE)).alias(SOURCE),
                        pl.when(own).then(pl.col("external_user_id")).otherwise(
                            pl.lit(None, pl.String)).alias(RESOLVED)]
        else:  # no usable external_user_id in this file
            identity = [pl.lit(NONE).alias(SOURCE), pl.lit(None, pl.String).alias(RESOLVED)]
        out = frame.with_columns(pl.lit(event_type).alias("event_type"), *identity).select(
            ok=check, id=pl.col("id"),
            payload=pl.struct(columns).struct.json_encode().cast(pl.Binary))
        ok = out["ok"] & (out["payload"].bin.size() <= MAX_PAYLOAD_BYTES)
        for name in json_objects:  # nulls: the expression has the field's null rule
            values = frame[name].to_list()
            ok &= pl.Series([v is None or _is_json_object(v) for v in values],
                            dtype=pl.Boolean)
        for name in self._validator.warned(event_type, nulls):
            if name in frame.columns:
                nulls_kept = int((frame[name].is_null() & ok).sum())
                if nulls_kept:
                    stats[f"warnings/{event_type}/{name}"] += nulls_kept
        rows = range(first_row, first_row + frame.height)
        entries = zip(rows, repeat(event_type), out["id"].to_list(), out["payload"].to_list(),
                      *self._who(frame))
        if ok.all():
            return list(entries), ()
        others = (~ok).arg_true().to_list()
        return (list(compress(entries, ok.to_list())),
                zip(others, frame[others].to_dicts()))


@beam.typehints.with_input_types(RowBatchIn)
class ValidateEvents(beam.PTransform):
    """Validate raw Currents rows against the catalogue.

    Input: RowBatch ``(event_type, source, first_row, rows, problems, allowed_nulls)``.
    Output (main, ``valid``): ValidBatch ``(source, [(row, event_type, id, canonical_json,
    user_id, external_user_id, time)])``,
    each event with its own ``identity_source``/``resolved_external_user_id`` (above);
    tagged ``dead_letter``: DeadLetter dicts ``{reason, event_type, source, row, error,
    record}``; tagged ``stats``: counters (``warnings/<type>/<field>``: nulls the file's
    writer schema allows in fields the docs call required). ``catalogue`` defaults to the
    packaged one; ``strict``: dead-letter those nulls too.
    """

    def __init__(self, catalogue: Catalogue | None = None, strict: bool = False):
        super().__init__()
        if catalogue is not None and not isinstance(catalogue, Catalogue):
            raise TypeError(f"catalogue must be a schemas.catalogue.Catalogue or None, "
                            f"not {type(catalogue).__name__}")
        self._catalogue = catalogue
        self._strict = bool(strict)

    def expand(self, batches):
        return batches | "Validate" >> beam.ParDo(_ValidateBatch(
            self._catalogue, self._strict)).with_output_types(ValidBatch).with_outputs(
            DEAD_LETTER, STATS, main="valid")
