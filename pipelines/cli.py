"""The command's process settings, made before Beam is imported, and the
``currents-to-partners`` console command.

``python -m pipelines.currents_to_partners`` applies ``before_beam_import`` first thing;
the console script (which imports the module it names first) does it here, then runs
the same ``main``.
"""
from __future__ import annotations

import gc
import os


def before_beam_import() -> None:
    """The garbage collector off while Beam is imported
    (``pipelines.currents_to_partners.main`` freezes the imports and turns it on), and
    numpy's OpenBLAS on one thread unless set: the job never calls it, its pool spun at
    start-up (~0.1 s of CPU), and its idle threads would keep the command from forking
    its local workers (see ``pipelines.worker_template``)."""
    gc.disable()
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def main() -> None:
    before_beam_import()
    from pipelines.currents_to_partners import main as run_command
    run_command()
