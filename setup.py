"""Braze Currents -> clean events and partner payloads, on Apache Beam.

``pip install .`` (or ``-e .``); the schema catalogue, partner mappings and the sample
export are package data, so a wheel is all a Dataflow worker needs (``--setup_file``).
"""
import os

from setuptools import find_packages, setup


def data_files(package: str, folder: str) -> list[str]:
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), package)
    found = []
    for dirpath, _, files in os.walk(os.path.join(root, folder)):
        found += [os.path.relpath(os.path.join(dirpath, f), root) for f in files]
    return sorted(found)


setup(
    name="braze-currents-beam",
    version="0.1.0",
    description="Braze Currents exports -> validated, deduplicated events for "
                "Amplitude, Mixpanel, mParticle and Segment, on Apache Beam",
    python_requires=">=3.11",
    packages=find_packages(include=["pipelines", "pipelines.*", "transforms", "transforms.*",
                                    "schemas", "schemas.*"]),
    package_data={
        "schemas": ["*.json", "partners/*.json", "bigquery/*.json"],
        "pipelines": data_files("pipelines", "sample_export"),
    },
    # Ranges, as a library's should be: exact, tested pins are in constraints.txt, which
    # `make` (and the Dockerfile) install with (`pip install -c constraints.txt`).
    install_requires=[
        "apache-beam[gcp]>=2.77,<3",
        "fastavro>=1.9,<2",
        "pydantic>=2.6,<3",
        "google-cloud-storage>=2.14,<4",
        # orjson 3.12+ returns bytes that keep a >=4 KB buffer each (never trimmed):
        # ~6.5 KB of RSS per 600-byte line held in a batch, ~160 MB more at peak here.
        "orjson>=3.9,<3.12",
        # reads Avro files into columns ~4x faster than fastavro builds dicts
        "polars>=1.30,<3",
        "zstandard>=0.22,<1",
        # delivery to the partners' APIs (transforms/deliver.py): HTTP connection pool,
        # retries with backoff (stop_before_delay: tenacity 8.3)
        "urllib3>=2,<3",
        "tenacity>=8.3,<10",
        "pyarrow>=14",  # --parquet-output
    ],
    extras_require={
        # s3:// and azfs:// through Beam's own filesystems (docs/storage.md); extras, so
        # a GCP-only install pulls neither boto3 nor the Azure SDK
        "aws": ["apache-beam[aws]>=2.77,<3"],
        "azure": ["apache-beam[azure]>=2.77,<3"],
        "test": ["pytest>=8,<10", "hypothesis>=6.100,<7", "gcp-storage-emulator>=2024.8.3",
                 "pdoc>=14,<17", "psutil>=5.9,<8", "moto[server]>=5.0,<6",
                 # a local BigQuery emulator; its spatial extension must match duckdb's
                 # version and is installed offline by `make` (tests/install_duckdb_spatial);
                 # its pytest plugin (off in pytest.ini) imports testcontainers
                 "bqemulator>=1.4", "duckdb>=1.5", "duckdb-extension-spatial>=1.5",
                 "testcontainers>=4"],
        "bench": ["psutil>=5.9,<8"],
    },
    entry_points={"console_scripts": [
        "currents-to-partners=pipelines.cli:main"]},
)
