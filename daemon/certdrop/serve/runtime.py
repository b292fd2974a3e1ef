"""The one place where `certdrop serve`'s collaborators are built and wired together.

Each worker process builds its own `ServeRuntime` after the fork (an index connection
is not shared across processes). Nothing here reads the CA key: the CA certificate,
the published CRL, the OCSP responder's certificate and key, and the index, read-only.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..clock import Clock
from ..config import Settings
from .published import PublishedFiles

MAX_REQUEST_BYTES = 16 * 1024  # an OCSP request for one certificate is about 100 octets


@dataclass
class ServeRuntime:
    settings: Settings
    clock: Clock
    files: PublishedFiles
    max_request_bytes: int = MAX_REQUEST_BYTES

    @classmethod
    def build(cls, settings: Settings, clock: Clock) -> ServeRuntime:
        return cls(settings, clock, PublishedFiles(settings.state))

    def close(self) -> None:
        pass
