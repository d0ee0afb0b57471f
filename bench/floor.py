"""The floor: fastavro decoding every file of an export in one process, nothing else.

    python -m bench.floor bench/data/500k
"""
from __future__ import annotations

import sys
from pathlib import Path

import fastavro


def decode_all(root: str) -> int:
    rows = 0
    for path in sorted(Path(root).rglob("*.avro")):
        with open(path, "rb") as fo:
            for _ in fastavro.reader(fo):
                rows += 1
    return rows


if __name__ == "__main__":
    print(f"decoded {decode_all(sys.argv[1])} rows")
