"""Test helpers, shipped with the package: valid Currents rows, export trees, a check
of partner payloads against the keys Braze documents, and a loopback HTTP server to
stand in for a remote API.

    rec = make_record("users.messages.email.Click", seed=1, url="https://x.test")
    root = write_export(tmp_path, {"users.messages.email.Click": [rec]})
    assert not payload_problems("segment", "users.messages.email.Click", payload)

Everything is derived from the catalogue and deterministic for a given seed.
"""
from __future__ import annotations

import io
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import fastavro

from schemas.catalogue import Catalogue, EventTypeSpec, load_catalogue, read_json_resource

BASE_TIME = 1_795_507_200  # 2026-11-24T08:00:00Z, the hour of the default export folder
CLUSTER, CONNECTOR, INTEGRATION = "prod-01", "GCS", "5f1d8a2b3c4d5e6f7a8b9c0d"
# As Braze writes them: its decimal fields (price, latitude, ...) are Avro float, 32-bit
_AVRO_TYPES = {"string": "string", "int": "int", "long": "long", "float": "float",
               "boolean": "boolean", "array<string>": {"type": "array", "items": "string"}}


def _uuid(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _value(name: str, kind: str, rng: random.Random, user: int) -> Any:
    """A plausible value for one field, from its name and catalogue type."""
    if kind in ("int", "long"):
        if name == "time":
            return BASE_TIME + rng.randrange(3600)
        return rng.randrange(0, 10_000) if "bucket" in name else rng.randrange(1, 100)
    if kind == "float":
        return round(rng.uniform(-80, 80), 4) if name in ("latitude", "longitude") else round(
            rng.uniform(0, 500), 2)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "array<string>":
        return [rng.choice(["ip_blocklist", "user_agent", "prefetch"])]
    if name == "id" or name.endswith("_id") and ("device" in name or "request" in name):
        return _uuid(rng)
    if name == "user_id":
        return f"{0x5f0000000000000000000000 + user:024x}"
    if name == "external_user_id":
        return f"user-{user:05d}"
    if "email" in name:
        return f"user-{user:05d}@example.com"
    if "phone_number" in name:
        return f"+1415555{user % 10_000:04d}"
    if name == "properties":
        return f'{{"plan": "{rng.choice(["gold", "free"])}", "count": {rng.randrange(9)}}}'
    if name == "timezone":
        return rng.choice(["America/New_York", "Europe/Paris", "Asia/Tokyo"])
    if name == "platform":
        return rng.choice(["ios", "android", "web"])
    if name in ("url", "link_url") or name.endswith("_url"):
        return f"https://example.com/{name}/{rng.randrange(1000)}"
    if name == "currency":
        return "USD"
    if name == "ad_id_type":
        return "ios_idfa"
    return f"{name}-{rng.randrange(1000)}"


def make_record(event_type: str, seed: int | str = 0, *, anonymous: bool = False,
                complete: bool = False, catalogue: Catalogue | None = None,
                **overrides: Any) -> dict[str, Any]:
    """A valid raw Currents row of ``event_type``.

    Required fields are always set; optional ones are set at random (all of them with
    ``complete=True``). ``anonymous=True`` leaves ``external_user_id`` out. Overrides win.
    """
    spec = (catalogue or load_catalogue()).get(event_type)
    if spec is None:
        raise KeyError(f"{event_type} is not in the catalogue")
    rng = random.Random(f"{event_type}:{seed}")
    user = rng.randrange(1, 5000)
    record = {}
    for name, field in spec.fields.items():
        if field.required or complete or rng.random() < 0.7:
            record[name] = _value(name, field.type, rng, user)
        else:
            record[name] = None
    if anonymous and "external_user_id" in record:
        record["external_user_id"] = None
    record.update(overrides)
    return record


def avro_schema(event_type: str, spec: EventTypeSpec | None = None,
                extra_fields: Mapping[str, Any] | None = None,
                connector: str = CONNECTOR, nullable: Iterable[str] = (),
                nullable_items: Iterable[str] = ()) -> dict[str, Any]:
    """The writer schema Currents would use: required fields plain, optional ones nullable.

    ``extra_fields`` ({name: avro type}) are added as optional fields: a newer schema, or
    the whole schema of an event type the catalogue does not know. ``nullable`` makes
    required fields nullable too (how a row with a null required field gets written);
    ``nullable_items``: array fields whose items may be null (Braze's ``media_urls``).
    """
    nullable, nullable_items = set(nullable), set(nullable_items)
    spec = spec or load_catalogue().get(event_type)
    namespace, _, name = f"dataexport.{connector}.inner.{event_type}".rpartition(".")
    fields = []
    for fname, field in (spec.fields.items() if spec else ()):
        kind = _AVRO_TYPES[field.type]
        if fname in nullable_items:
            kind = {"type": "array", "items": ["null", "string"]}
        fields.append({"name": fname, "type": kind} if field.required and fname not in nullable
                      else {"name": fname, "type": ["null", kind], "default": None})
    for fname, kind in (extra_fields or {}).items():
        if spec and fname in spec.fields:
            raise ValueError(f"{fname} is already a field of {event_type}")
        fields.append({"name": fname, "type": ["null", kind], "default": None})
    return {"type": "record", "name": name, "namespace": namespace, "fields": fields}


def avro_bytes(schema: dict, records: Iterable[dict], codec: str = "deflate",
               sync_marker: bytes = b"currents-sample!") -> bytes:
    """Avro container bytes; a fixed sync marker keeps the bytes reproducible."""
    buf = io.BytesIO()
    fastavro.writer(buf, fastavro.parse_schema(schema), list(records), codec=codec,
                    sync_marker=sync_marker)
    return buf.getvalue()


def export_path(root: str | Path, event_type: str, hour: str = "2026-11-24-08",
                schema_id: int = 1, partition: int = 0, offset: int = 0,
                zone: str = "0") -> Path:
    """Where Currents puts a file: ``<root>/dataexport.../event_type=<t>/date=<h>/<id>/...``."""
    conn = f"dataexport.{CLUSTER}.{CONNECTOR}.integration.{INTEGRATION}"
    return (Path(root) / conn / f"event_type={event_type}" / f"date={hour}" / str(schema_id)
            / zone / f"{conn}+{partition}+{offset}.avro")


def write_export(root: str | Path, files: Mapping[str, list[dict]] | Iterable[dict],
                 codec: str = "deflate") -> Path:
    """Write a small export tree and return ``root``.

    ``files`` is either ``{event_type: rows}`` (one file per type) or a list of dicts
    ``{"event_type", "rows", "hour"?, "schema_id"?, "offset"?, "extra_fields"?,
    "nullable"?, "nullable_items"?}`` (see ``avro_schema``).
    """
    if isinstance(files, Mapping):
        files = [{"event_type": t, "rows": rows} for t, rows in files.items()]
    catalogue = load_catalogue()
    for f in files:
        etype = f["event_type"]
        schema = avro_schema(etype, catalogue.get(etype), f.get("extra_fields"),
                             nullable=f.get("nullable", ()),
                             nullable_items=f.get("nullable_items", ()))
        path = export_path(root, etype, f.get("hour", "2026-11-24-08"), f.get("schema_id", 1),
                           offset=f.get("offset", 0))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(avro_bytes(schema, f["rows"], codec=codec))
    return Path(root)


def payload_leaves(payload: Any, path: tuple = ()) -> Iterable[tuple[str, Any]]:
    """(dotted key path, value) of a payload's leaves; lists of objects are walked
    (``events.0.data``), empty objects are leaves."""
    if isinstance(payload, dict) and payload:
        for key, value in payload.items():
            yield from payload_leaves(value, path + (key,))
    elif isinstance(payload, list) and payload and isinstance(payload[0], dict):
        for i, value in enumerate(payload):
            yield from payload_leaves(value, path + (str(i),))
    else:
        yield ".".join(path), payload


def payload_paths(payload: Any) -> Iterable[str]:
    """Dotted key paths of a payload's leaves."""
    return (path for path, _ in payload_leaves(payload))


def documented_keys(partner: str, event_type: str) -> tuple[set[str], set[str]]:
    """(all, required) dotted keys of the seed tab of (partner, event type).

    Raises ``KeyError`` when the seeds have no such tab.
    """
    tab = read_json_resource("partner_templates.json")["event_types"][event_type][partner]
    renames = read_json_resource("partners/base.json")["partners"][partner].get("renames", {})
    required = set()
    for entry in read_json_resource(f"partners/{partner}.json")["events"][event_type]["fields"]:
        if entry.get("required"):
            required.add(entry["to"])
    return {renames.get(k, k) for k in payload_paths(tab["template"])}, required


def payload_problems(partner: str, event_type: str, payload: dict,
                     extra_ok: Iterable[str] = ()) -> list[str]:
    """What is wrong with a payload against its seed tab: keys the tab does not document,
    and required keys that are missing. ``extra_ok``: prefixes allowed beyond the tab (the
    property bag keys of expanded custom properties or of fields Braze added later).
    """
    documented, required = documented_keys(partner, event_type)
    extra_ok = tuple(extra_ok)
    keys = set(payload_paths(payload))
    problems = [f"undocumented key {k}" for k in sorted(keys - documented)
                if not k.startswith(extra_ok)]
    problems += [f"missing required key {k}" for k in sorted(required - keys)]
    return problems


def serve_posts(answer: Callable[[str, Any, bytes], tuple[int, bytes, dict]]
                ) -> ThreadingHTTPServer:
    """A keep-alive HTTP server on a free port of 127.0.0.1 (``server_address[1]``),
    answering each POST with ``answer(path, headers, body) -> (status, JSON bytes, extra
    headers)``, served by daemon threads. Stop it with ``shutdown()`` then
    ``server_close()``."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real APIs
        disable_nagle_algorithm = True  # headers and body not 40 ms apart

        def do_POST(self):  # noqa: N802 (http.server's naming)
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, data, headers = answer(self.path, self.headers, raw)
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
