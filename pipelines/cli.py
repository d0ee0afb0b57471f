"""The ``currents-to-partners`` console command.

The same as ``python -m pipelines.currents_to_partners``, including what that command
sets before Beam is imported (a console script imports the module it names first):
the garbage collector off during the imports, and numpy's OpenBLAS on one thread, whose
idle thread pool would otherwise keep the command from forking its local workers
(see ``pipelines.worker_template``).
"""
from __future__ import annotations

import gc
import os


def main() -> None:
    gc.disable()  # pipelines.currents_to_partners.main freezes the imports and turns it on
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from pipelines.currents_to_partners import main as run_command
    run_command()
