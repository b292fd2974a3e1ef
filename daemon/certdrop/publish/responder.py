"""The OCSP responder's key and certificate, kept current for `certdrop serve`.

`<state>/ocsp-responder.pem` (0600: the key, then the certificate) is renewed with a new
key when it is missing, unreadable, not issued by this CA, or within RENEW_BEFORE of its
end (authority/responder.py issues it). The daemon's job checks it every few minutes;
`certdrop serve` reads the file again when it changes, with no restart. Each renewal is
audited (serial, validity).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes

from ..authority.ca import CertificateAuthority
from ..authority.lifecycle import LintFunction
from ..authority.responder import (
    RENEW_BEFORE,
    RESPONDER_FILE,
    ResponderCredentials,
    issue_responder,
)
from ..authority.serials import serial_hex
from ..clock import Clock
from ..errors import CertdropError
from ..fsutil import atomic_write

log = logging.getLogger("certdrop.publish")

RESPONDER_MODE = 0o600  # the key: the service user only


class ResponderPublisher:
    """Keeps `<state>/ocsp-responder.pem` current (see the module docstring)."""

    def __init__(
        self,
        state: Path,
        ca: CertificateAuthority,
        clock: Clock,
        linter: LintFunction | None,
        audit: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.path = state / RESPONDER_FILE
        self.ca = ca
        self.clock = clock
        self.linter = linter
        self.audit = audit

    def current(self) -> ResponderCredentials | None:
        try:
            return ResponderCredentials.from_pem(self.path.read_bytes())
        except (OSError, CertdropError):
            return None

    def renewal_reason(self) -> str | None:
        """Why a new responder certificate is needed now, or None."""
        now = self.clock.now()
        creds = self.current()
        if creds is None:
            return (
                f"{self.path} is not a responder key and certificate"
                if self.path.exists()
                else "no OCSP responder certificate yet"
            )
        problem = creds.problem(self.ca.cert, now)
        if problem is not None:
            return problem
        if creds.cert.not_valid_after_utc - now < RENEW_BEFORE:
            return (
                f"the responder certificate ends {creds.cert.not_valid_after_utc:%Y-%m-%d %H:%M} "
                "UTC"
            )
        return None

    def renew(self, why: str = "requested") -> ResponderCredentials:
        creds = issue_responder(self.ca, self.clock.now(), self.linter)
        atomic_write(self.path, creds.pem(), RESPONDER_MODE)
        cert = creds.cert
        log.info(
            "new OCSP responder certificate %s, valid until %s UTC: %s",
            serial_hex(cert.serial_number),
            f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M}",
            why,
        )
        if self.audit is not None:
            self.audit(
                {
                    "event": "ocsp-responder-issued",
                    "serial": serial_hex(cert.serial_number),
                    "not_before": cert.not_valid_before_utc.isoformat(),
                    "not_after": cert.not_valid_after_utc.isoformat(),
                    "sha256": cert.fingerprint(hashes.SHA256()).hex(),
                    "why": why,
                }
            )
        return creds

    def check(self) -> None:
        """The periodic job: renew when due. Never raises (logs what fails)."""
        try:
            why = self.renewal_reason()
            if why is not None:
                self.renew(why)
        except (CertdropError, OSError) as exc:
            log.error("OCSP responder certificate: %s", exc)
        except Exception:
            log.exception("OCSP responder certificate check failed")
