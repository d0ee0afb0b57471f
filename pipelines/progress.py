"""A line of progress every few seconds during a local run (Beam's local runner prints
none; on Dataflow the console shows the job's counters instead).

Counted from the files the run itself writes, so nothing is asked of the runner:
DeduplicateEvents spills one shuffle file per Avro file it has read, ResolveIdentityMap
parks one file per deduplicated shard (``PARKED_PREFIX``), and each shard of
``events/`` is one file in the run's temporary output folder.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from typing import TextIO

from apache_beam.io.filesystems import FileSystems

from transforms.identity_map import PARKED_PREFIX


class Progress(threading.Thread):
    """Prints ``progress M:SS, read F of N files, deduplicated S of K shards, wrote W of
    K shards`` every ``every`` seconds until stopped (a context manager)."""

    def __init__(self, every: float, spill_dir: str, temp_dir: str, files: int,
                 shards: int, out: TextIO | None = None):
        super().__init__(name="progress", daemon=True)
        self._every, self._spill, self._temp = every, spill_dir, temp_dir
        self._files, self._shards = files, shards
        self._out = out or sys.stdout
        self._done = threading.Event()
        self._t0 = time.monotonic()
        self._seen = (0, 0, 0)  # files read, shards deduplicated, shards written

    def line(self) -> str:
        try:
            names = os.listdir(self._spill)
        except OSError:
            names = []
        parked = sum(n.startswith(PARKED_PREFIX) for n in names)
        try:
            pattern = FileSystems.join(self._temp, "events", "part-*")
            written = len(FileSystems.match([pattern])[0].metadata_list)
        except Exception:  # not there yet
            written = 0
        # never backwards: the shards leave the temporary folder when the run commits
        self._seen = read, parked, written = tuple(
            max(a, min(b, cap)) for a, b, cap in zip(
                self._seen, (len(names) - parked, parked, written),
                (self._files, self._shards, self._shards)))
        elapsed = int(time.monotonic() - self._t0)
        return (f"progress {elapsed // 60}:{elapsed % 60:02d}, read {read} of "
                f"{self._files} files, deduplicated {parked} of {self._shards} shards, "
                f"wrote {written} of {self._shards} shards")

    def run(self) -> None:
        while not self._done.wait(self._every):
            print(self.line(), file=self._out, flush=True)

    def __enter__(self) -> "Progress":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self.join()
