"""The OCSP responder's key and certificate, kept current for `certdrop serve`.

`<folder>/ocsp-responder.pem` (0600: the key, then the certificate) is renewed with a new
key when it is missing, unreadable, not issued by this CA, or within RENEW_BEFORE of its
end. The host makes the new key (`ocsp-responder.next.pem`, 0600, until it is certified)
and asks the index for a certificate of its public key; the leading host certifies the
requests of every host sharing the index (index/responders.py: the private key never
leaves its host), and the host then puts key and certificate together in the file.
With one host, which always leads, that is one pass of the job. `certdrop serve` reads
the file again when it changes, with no restart. Each certificate is audited by the
host that signed it (serial, validity, the host it is for).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from ..authority.ca import CertificateAuthority
from ..authority.keys import PrivateKey, public_key_bytes
from ..authority.lifecycle import LintFunction
from ..authority.responder import (
    RENEW_BEFORE,
    RESPONDER_FILE,
    ResponderCredentials,
    certify_responder,
    responder_key,
)
from ..authority.serials import serial_hex
from ..clock import Clock
from ..errors import CertdropError
from ..fsutil import atomic_write
from ..index import responders as rows
from ..index.store import Store

log = logging.getLogger("certdrop.publish")

RESPONDER_MODE = 0o600  # the key: the service user only
NEXT_FILE = "ocsp-responder.next.pem"  # the next key, until the leading host certified it


class ResponderPublisher:
    """Keeps `<folder>/ocsp-responder.pem` current (see the module docstring)."""

    def __init__(
        self,
        folder: Path,
        ca: CertificateAuthority,
        clock: Clock,
        linter: LintFunction | None,
        store: Store,
        host: str,
        audit: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.path = folder / RESPONDER_FILE
        self.next_path = folder / NEXT_FILE
        self.ca = ca
        self.clock = clock
        self.linter = linter
        self.store = store
        self.host = host
        self.audit = audit
        self._waiting = False  # "waiting for the leading host" logged once per request

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

    def renew(self, why: str = "requested", lead: bool = True) -> ResponderCredentials | None:
        """A new key asks for its certificate now; the new credentials once certified
        (at once when this host leads), None while the leading host has not signed."""
        self.next_path.unlink(missing_ok=True)
        return self._renew(why, lead)

    def check(self, lead: bool = True) -> None:
        """The periodic job: ask for a new certificate when due and take it once signed;
        when this host leads, certify what every host asked for. Never raises (logs what
        fails)."""
        try:
            why = self.renewal_reason()
            if why is not None:
                self._renew(why, lead)
            elif lead:
                self.certify_requests()
        except (CertdropError, OSError) as exc:
            log.error("OCSP responder certificate: %s", exc)
        except Exception:
            log.exception("OCSP responder certificate check failed")

    def waiting(self, lead: bool) -> bool:
        """Whether this host waits for its certificate or, leading, a host waits for this
        one to sign (one small query). Never raises."""
        if self._waiting:
            return True
        if not lead:
            return False
        try:
            with self.store.begin() as conn:
                return rows.any_unsigned(conn, self.ca.id)
        except CertdropError:
            return False

    def certify_requests(self) -> int:
        """The leading host's part: certify every host's pending request to this CA; how
        many were certified."""
        done = 0
        with self.store.begin() as conn:
            for host, public_key in rows.unsigned(conn, self.ca.id):
                cert = certify_responder(self.ca, public_key, self.clock.now(), self.linter)
                der = cert.public_bytes(serialization.Encoding.DER)
                rows.certify(conn, host, self.ca.id, public_key, der, self.host)
                self._issued(cert, host)
                done += 1
        return done

    # --- internals ---------------------------------------------------------------------------
    def _renew(self, why: str, lead: bool) -> ResponderCredentials | None:
        key = self._next_key()
        public_key = public_key_bytes(key.public_key())
        with self.store.begin() as conn:
            rows.request(conn, self.host, self.ca.id, public_key, self.clock.now())
        if lead:
            self.certify_requests()
        with self.store.begin() as conn:
            der = rows.certificate(conn, self.host, self.ca.id, public_key)
        if der is None:
            if not self._waiting:
                log.info(
                    "OCSP responder certificate asked for (%s): waiting for the leading host "
                    "to sign it",
                    why,
                )
                self._waiting = True
            return None
        creds = ResponderCredentials(x509.load_der_x509_certificate(der), key)
        problem = creds.problem(self.ca.cert, self.clock.now())
        if problem is not None:
            # not this CA's, or not yet valid by this host's clock: a new key asks again
            self.next_path.unlink(missing_ok=True)
            raise CertdropError(f"the certificate signed for this host's responder: {problem}")
        atomic_write(self.path, creds.pem(), RESPONDER_MODE)
        self.next_path.unlink(missing_ok=True)
        self._waiting = False
        cert = creds.cert
        log.info(
            "new OCSP responder certificate %s, valid until %s UTC: %s",
            serial_hex(cert.serial_number),
            f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M}",
            why,
        )
        return creds

    def _next_key(self) -> PrivateKey:
        """The key waiting for its certificate, made (0600) when there is none."""
        try:
            key = serialization.load_pem_private_key(self.next_path.read_bytes(), None)
            return key  # type: ignore[return-value]
        except (OSError, ValueError, TypeError):
            pass
        key = responder_key()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        atomic_write(self.next_path, pem, RESPONDER_MODE)
        return key

    def _issued(self, cert: x509.Certificate, host: str) -> None:
        log.info(
            "OCSP responder certificate %s signed for host %s, valid until %s UTC",
            serial_hex(cert.serial_number),
            host,
            f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M}",
        )
        if self.audit is not None:
            self.audit(
                {
                    "event": "ocsp-responder-issued",
                    "serial": serial_hex(cert.serial_number),
                    "host": host,
                    "not_before": cert.not_valid_before_utc.isoformat(),
                    "not_after": cert.not_valid_after_utc.isoformat(),
                    "sha256": cert.fingerprint(hashes.SHA256()).hex(),
                }
            )
