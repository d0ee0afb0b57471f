"""The ``currents-to-partners`` console command: ``python -m pipelines.currents_to_partners``."""
from __future__ import annotations


def main() -> None:
    from pipelines.currents_to_partners import main as run_command
    run_command()
