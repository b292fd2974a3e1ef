"""The one place where `certdrop serve`'s collaborators are built and wired together.

Each worker process builds its own `ServeRuntime` after the fork (an index connection
is not shared across processes). Nothing here reads the CA key: the CA certificate,
the published CRL, the OCSP responder's certificate and key, and the index, read-only.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..clock import Clock
from ..config import Settings
from ..index.status import StatusReader
from .ocsp import OcspResponder, ResponderFile
from .published import PublishedFiles

MAX_REQUEST_BYTES = 16 * 1024  # an OCSP request for one certificate is about 100 octets


@dataclass
class ServeRuntime:
    settings: Settings
    clock: Clock
    files: PublishedFiles
    ocsp: OcspResponder
    index: StatusReader
    max_request_bytes: int = MAX_REQUEST_BYTES

    @classmethod
    def build(cls, settings: Settings, clock: Clock) -> ServeRuntime:
        files = PublishedFiles(settings.state)
        index = StatusReader(settings.database_url)
        ocsp = OcspResponder(files, ResponderFile(settings.state), index)
        return cls(settings, clock, files, ocsp, index)

    def close(self) -> None:
        self.index.close()
