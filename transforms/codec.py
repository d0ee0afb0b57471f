"""Serialisation used between steps: canonical JSON lines and compact shuffle values.

Every event is serialised once, right after validation, to canonical JSON (sorted keys,
orjson); those bytes are what dedup compares, what is shuffled and what ``events/``
holds. Shuffled values are whole batches, pickled and compressed, so the shuffle pays
per batch rather than per event and the local runner keeps a fraction of the bytes.
"""
from __future__ import annotations

import base64
import datetime
import decimal
import io
import pickle
import uuid
from typing import Any, BinaryIO

import orjson
import zstandard

_OPTS = orjson.OPT_SORT_KEYS  # Avro field names and map keys are always strings


def _default(value: Any) -> Any:
    """JSON for what Avro can hold but JSON cannot (bytes/fixed, decimals, uuids)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, (decimal.Decimal, uuid.UUID)):
        return str(value)
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def dumps(obj: Any) -> bytes:
    """Canonical JSON: sorted keys, compact, UTF-8; the same object gives the same bytes."""
    return orjson.dumps(obj, default=_default, option=_OPTS)


loads = orjson.loads


def compress(data: bytes) -> bytes:
    """zstd, level 1: fast, and ~4x smaller on canonical JSON."""
    return zstandard.ZstdCompressor(level=1).compress(data)


def decompress(blob: bytes) -> bytes:
    return zstandard.ZstdDecompressor().decompress(blob)


def compressing(fo: BinaryIO) -> BinaryIO:
    """A writer compressing into ``fo`` (closing it ends the frame, not ``fo``)."""
    return zstandard.ZstdCompressor(level=1).stream_writer(fo, closefd=False)


def decompressing(fo: BinaryIO) -> BinaryIO:
    """What ``compressing`` wrote, read from ``fo`` (buffered: iterate it for lines)."""
    return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(fo, closefd=False))


def pack(obj: Any) -> bytes:
    """A compact, compressed value for a shuffle (our own data only: pickle is safe here)."""
    return compress(pickle.dumps(obj, protocol=5))


def unpack(blob: bytes) -> Any:
    return pickle.loads(decompress(blob))
