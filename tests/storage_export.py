"""An export laid out as Braze writes it to a given destination, and output comparison.

Braze names the connector in every folder and file name and in the writer schema:
``dataexport.<cluster>.<S3|AzureBlob|GCS>.integration.<id>/event_type=<t>/date=<hour>/
<schema-id>/<zone>/dataexport.<cluster>.<conn>.integration.<id>+<partition>+<offset>.avro``
(so object keys hold ``+`` and ``=``). The rows are the bundled sample's (duplicates,
invalid rows, a second schema id, an unknown type); added: a truncated file, a file that
is not Avro, and a file outside any ``event_type=`` folder (type from the writer schema).
"""
from __future__ import annotations

from pathlib import Path

from pipelines.make_sample import sample_files
from schemas.catalogue import load_catalogue
from transforms.testing import CLUSTER, INTEGRATION, avro_bytes, avro_schema

ROOT = "<INPUT>"
# A few event types (with the sample's broken rows, second schema and unknown type)
# keep each run short; every output folder still gets lines.
TYPES = ("users.messages.email.Click", "users.behaviors.CustomEvent",
         "users.behaviors.Purchase", "users.messages.whatsapp.Read",
         "users.messages.pushnotification.Send", "users.UserOrphan",
)


def connector_folder(connector: str) -> str:
    return f"dataexport.{CLUSTER}.{connector}.integration.{INTEGRATION}"


def write_braze_export(root: Path, connector: str) -> Path:
    """The export under ``root`` as Braze's ``connector`` (``S3``, ``AzureBlob``) lays it
    out; returns ``root``."""
    catalogue = load_catalogue()
    conn = connector_folder(connector)
    written = []
    for f in sample_files():
        etype = f["event_type"]
        if etype not in TYPES:
            continue
        schema = avro_schema(etype, catalogue.get(etype), f.get("extra_fields"),
                             connector=connector, nullable=f.get("nullable", ()))
        path = (root / conn / f"event_type={etype}" / f"date={f.get('hour')}"
                / str(f.get("schema_id", 1)) / "0" / f"{conn}+0+{f.get('offset', 0)}.avro")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(avro_bytes(schema, f["rows"]))
        written.append(path)
    click = next(p for p in written if "email.Click/date=2026-11-24-08" in p.as_posix())
    data = click.read_bytes()
    (click.parent / f"{conn}+0+5.avro").write_bytes(data[:len(data) - 40])  # truncated
    (click.parent / f"{conn}+0+6.avro").write_bytes(b"this is not an Avro file")
    recovered = root / "recovered" / f"{conn}+0+0.avro"  # no event_type= folder
    recovered.parent.mkdir(parents=True)
    recovered.write_bytes(data)
    return root


def output_files(folder: Path, input_root: str) -> dict[str, bytes]:
    """Every output file, relative path -> bytes with the input root written as <INPUT>."""
    return {p.relative_to(folder).as_posix(): p.read_bytes().replace(input_root.encode(),
                                                                       ROOT.encode())
            for p in sorted(folder.rglob("*")) if p.is_file()}
