"""gs:// against a Cloud Storage emulator: ``STORAGE_EMULATOR_HOST`` is all it takes.

Beam reads and writes gs:// through google-cloud-storage, which already sends every
request to ``$STORAGE_EMULATOR_HOST`` when it is set (and, given no credentials, uses
anonymous ones). Beam, however, first resolves Application Default Credentials for its
client: with none on the machine that is ~30 s of retries per process (then it connects
anonymously anyway); with a developer's own gcloud credentials it would refresh a real
token at Google before talking to the emulator. So when ``STORAGE_EMULATOR_HOST`` is set
we tell Beam, in this process and in every worker process it starts
(``--beam_plugins``), that there are no credentials to look for: its GCS client is
google-cloud-storage's anonymous one, pointed at the emulator. Without the variable
nothing changes: Dataflow and real buckets use Application Default Credentials as usual.
"""
from __future__ import annotations

import os

EMULATOR_ENV = "STORAGE_EMULATOR_HOST"


def emulator_host() -> str | None:
    return os.environ.get(EMULATOR_ENV) or None


def use_anonymous_credentials_for_emulator() -> bool:
    """If an emulator is configured, make Beam's GCS client anonymous in this process."""
    if not emulator_host():
        return False
    from apache_beam.internal.gcp import auth
    # Beam caches the credentials it resolved once per process; we fill that cache with
    # "none", which makes apache_beam.io.gcp.gcsio.create_storage_client return
    # storage.Client.create_anonymous_client() (the emulator's endpoint, no token).
    with auth._Credentials._credentials_lock:
        auth._Credentials._credentials = None
        auth._Credentials._credentials_init = True
    return True


def emulator_args(beam_args: list[str]) -> list[str]:
    """Beam arguments that give every worker process the same treatment (when emulated).

    Beam workers import the modules named by ``--beam_plugins`` at start-up, before any
    DoFn runs; importing this module applies the setting (see the end of the file).
    """
    if not use_anonymous_credentials_for_emulator():
        return beam_args
    return [*beam_args, f"--beam_plugins={__name__}"]


# Imported as a Beam plugin by a worker process: apply the setting there too.
use_anonymous_credentials_for_emulator()
