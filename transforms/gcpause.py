"""Pause Python's cyclic garbage collector while a batch is processed.

A batch allocates thousands of dicts, lists and tuples, none of them in reference
cycles. Each allocation burst triggers the collector, and its full passes walk every
object alive in the worker, so with big batches it kept re-scanning the same heap
(~6% of the full pipeline's CPU, measured with ``gc.disable()``). Reference counting
frees everything here; the collector resumes, and catches up, after the batch.
"""
from __future__ import annotations

import contextlib
import gc
import threading
from typing import Iterator

# Fused steps run inside each other's batches, and a worker may run bundles in
# threads: the collector resumes when the last batch in flight is done.
_lock = threading.Lock()
_depth = 0


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    global _depth
    with _lock:
        if _depth == 0 and not gc.isenabled():  # switched off by the user: leave it so
            owner = False
        else:
            owner = True
            _depth += 1
            gc.disable()
    try:
        yield
    finally:
        if owner:
            with _lock:
                _depth -= 1
                if _depth == 0:
                    gc.enable()
