"""Credentials for Beam's GCS client against the emulator, without Google and without
Beam's private state.

Beam's gs:// filesystem always resolves Application Default Credentials first
(``google.auth.default()``); with none on the machine that is ~30 s of retries per
process before it connects anonymously. Here ADC is a real ``external_account``
(workload identity federation) file, named by ``GOOGLE_APPLICATION_CREDENTIALS``
(google-auth's documented variable), whose token exchange endpoint (``token_url``) is a
small HTTP server on 127.0.0.1: the client gets its token there and sends it to the
emulator, which ignores it. Nothing leaves the machine. (An ``authorized_user`` file
would not do: google-auth always sends those to Google's token endpoint.)
"""
from __future__ import annotations

import json
from pathlib import Path

from transforms.testing import serve_posts


_TOKEN = json.dumps({
    "access_token": "emulator-token", "token_type": "Bearer", "expires_in": 3600,
    "issued_token_type": "urn:ietf:params:oauth:token-type:access_token"}).encode()


class LoopbackCredentials:
    """A token endpoint on a free port of 127.0.0.1 and an ADC file that names it."""

    def __init__(self, folder: Path):
        self._server = serve_posts(lambda path, headers, body: (200, _TOKEN, {}))
        self.token_uri = f"http://127.0.0.1:{self._server.server_address[1]}/token"
        subject = folder / "subject-token"
        subject.write_text("emulator-subject-token")
        self.path = folder / "adc.json"
        self.path.write_text(json.dumps({
            # no project number in the audience: google-auth then asks no project of Google
            "type": "external_account", "audience": "emulator",
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "token_url": self.token_uri, "credential_source": {"file": str(subject)}}))

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
