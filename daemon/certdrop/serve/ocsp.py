"""The OCSP responder (RFC 6960, with RFC 5019's profile): a request in, a signed answer out.

A request names a certificate by its issuer's name and key hashes and its serial. The
answer for a certificate of this CA is `good`, `revoked` (with the time and the reason) or
`unknown` (never issued here), from the index as it is at that moment (no cache: a
revocation is answered the moment it is committed). It is signed by the delegated
responder (`<state>/ocsp-responder.pem`, renewed by the daemon, read again when it
changes) and carries the responder's certificate and the request's nonce.

What cannot be answered gets an unsigned error status: a request that does not parse, an
unknown hash algorithm, a critical extension we do not know or a nonce RFC 8954 forbids:
malformedRequest; a certificate of another CA: unauthorized (RFC 5019 2.2.3); no usable
responder certificate or an index that cannot be read now: tryLater.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from ..authority.der import spki_key_bits
from ..authority.responder import RESPONDER_FILE, ResponderCredentials
from ..authority.serials import serial_hex
from ..clock import utc_seconds
from ..errors import CertdropError, IndexUnavailable, ServeError
from ..index.status import StatusReader
from .published import PublishedFiles

log = logging.getLogger("certdrop.serve")

RESPONSE_VALIDITY = dt.timedelta(hours=1)  # nextUpdate: how long an answer may be relied on
MAX_NONCE = 32  # RFC 8954 2.1: a nonce of 1 to 32 octets
_HASHES: tuple[hashes.HashAlgorithm, ...] = (
    hashes.SHA1(),  # noqa: S303 (CertID's hash: RFC 5019 has clients use SHA-1)
    hashes.SHA224(),
    hashes.SHA256(),
    hashes.SHA384(),
    hashes.SHA512(),
)
_ERRORS = {
    status: ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(
        serialization.Encoding.DER
    )
    for status in (
        ocsp.OCSPResponseStatus.MALFORMED_REQUEST,
        ocsp.OCSPResponseStatus.INTERNAL_ERROR,
        ocsp.OCSPResponseStatus.TRY_LATER,
        ocsp.OCSPResponseStatus.UNAUTHORIZED,
    )
}


@dataclass(frozen=True)
class OcspAnswer:
    """An OCSP response (DER) and what HTTP caches may be told about it."""

    body: bytes
    status: ocsp.OCSPResponseStatus
    cert_status: str = ""  # good, revoked, unknown (successful answers)
    produced_at: dt.datetime | None = None
    next_update: dt.datetime | None = None
    nonce: bool = False  # an answer to a nonce is for that request alone: never cached
    reason: str = ""  # why it is not successful (for the log)


def _error(status: ocsp.OCSPResponseStatus, reason: str) -> OcspAnswer:
    return OcspAnswer(_ERRORS[status], status, reason=reason)


class ResponderFile:
    """`<state>/ocsp-responder.pem`, read again when it changes."""

    def __init__(self, state: Path) -> None:
        self.path = state / RESPONDER_FILE
        self._stamp: tuple[int, int, int] | None = None
        self._creds: ResponderCredentials | None = None
        self._error = ""

    def get(self) -> ResponderCredentials:
        """The responder's credentials; ServeError when there are none to use."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise ServeError(
                f"no OCSP responder certificate yet ({self.path}): the daemon makes one "
                "when it starts"
            ) from None
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self._creds, self._error = ResponderCredentials.from_pem(self.path.read_bytes()), ""
            except (OSError, CertdropError) as exc:
                self._creds, self._error = None, f"{self.path}: {exc}"
        if self._creds is None:
            raise ServeError(self._error)
        return self._creds


class IssuerIds:
    """The (issuerNameHash, issuerKeyHash) of this CA for every hash a request may use."""

    def __init__(self, ca_der: bytes) -> None:
        cert = x509.load_der_x509_certificate(ca_der)
        name = cert.subject.public_bytes()
        spki = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        key = spki_key_bits(spki)
        self.cert = cert
        self.ids: dict[str, tuple[bytes, bytes]] = {}
        for alg in _HASHES:
            self.ids[alg.name] = (_digest(alg, name), _digest(alg, key))


def _digest(alg: hashes.HashAlgorithm, data: bytes) -> bytes:
    h = hashes.Hash(alg)
    h.update(data)
    return h.finalize()


class OcspResponder:
    """Answers OCSP requests for this CA (see the module docstring)."""

    def __init__(
        self, files: PublishedFiles, responder: ResponderFile, index: StatusReader
    ) -> None:
        self.files = files
        self.responder = responder
        self.index = index
        self._issuer: tuple[str, IssuerIds] | None = None

    def _issuer_ids(self) -> IssuerIds:
        doc = self.files.get("ca.cer")
        cached = self._issuer
        if cached is None or cached[0] != doc.etag:
            cached = self._issuer = (doc.etag, IssuerIds(doc.body))
        return cached[1]

    def respond(self, der: bytes, now: dt.datetime) -> OcspAnswer:
        """The answer to the DER request `der` at `now`."""
        try:
            req = ocsp.load_der_ocsp_request(der)
        except ValueError as exc:
            return _error(ocsp.OCSPResponseStatus.MALFORMED_REQUEST, f"not an OCSP request: {exc}")
        try:
            alg = req.hash_algorithm
            extensions = list(req.extensions)
        except UnsupportedAlgorithm as exc:
            return _error(ocsp.OCSPResponseStatus.MALFORMED_REQUEST, f"unsupported hash: {exc}")
        except ValueError as exc:
            return _error(ocsp.OCSPResponseStatus.MALFORMED_REQUEST, f"bad extensions: {exc}")
        nonce: bytes | None = None
        for ext in extensions:
            if isinstance(ext.value, x509.OCSPNonce):
                nonce = ext.value.nonce
            elif ext.critical:
                return _error(
                    ocsp.OCSPResponseStatus.MALFORMED_REQUEST,
                    f"unknown critical extension {ext.oid.dotted_string}",
                )
        if nonce is not None and not 1 <= len(nonce) <= MAX_NONCE:
            return _error(
                ocsp.OCSPResponseStatus.MALFORMED_REQUEST,
                f"a nonce of {len(nonce)} octets (RFC 8954: 1 to {MAX_NONCE})",
            )
        try:
            issuer = self._issuer_ids()
            creds = self.responder.get()
        except ServeError as exc:
            return _error(ocsp.OCSPResponseStatus.TRY_LATER, str(exc))
        ours = issuer.ids.get(alg.name)
        if ours is None:
            return _error(ocsp.OCSPResponseStatus.MALFORMED_REQUEST, f"unsupported hash {alg.name}")
        if (req.issuer_name_hash, req.issuer_key_hash) != ours:
            return _error(ocsp.OCSPResponseStatus.UNAUTHORIZED, "a certificate of another CA")
        problem = creds.problem(issuer.cert, now)
        if problem is not None:
            return _error(ocsp.OCSPResponseStatus.TRY_LATER, problem)
        serial = req.serial_number
        try:
            found = self.index.status(serial_hex(serial)) if 0 < serial < 1 << 160 else None
        except IndexUnavailable as exc:
            return _error(ocsp.OCSPResponseStatus.TRY_LATER, str(exc))
        this_update = utc_seconds(now)
        next_update = min(this_update + RESPONSE_VALIDITY, creds.cert.not_valid_after_utc)
        revoked_at: dt.datetime | None = None
        reason: x509.ReasonFlags | None = None
        if found is None:
            cert_status, label = ocsp.OCSPCertStatus.UNKNOWN, "unknown"
        elif found.revoked:
            cert_status, label = ocsp.OCSPCertStatus.REVOKED, "revoked"
            revoked_at = found.revoked_at or this_update
            if found.reason and found.reason != "unspecified":
                reason = x509.ReasonFlags(found.reason)
        else:
            cert_status, label = ocsp.OCSPCertStatus.GOOD, "good"
        builder = (
            ocsp.OCSPResponseBuilder()
            .add_response_by_hash(
                req.issuer_name_hash,
                req.issuer_key_hash,
                serial,
                alg,
                cert_status,
                this_update,
                next_update,
                revoked_at,
                reason,
            )
            .responder_id(ocsp.OCSPResponderEncoding.HASH, creds.cert)
            .certificates([creds.cert])
        )
        if nonce is not None:
            builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
        response = builder.sign(creds.key, hashes.SHA256())
        return OcspAnswer(
            response.public_bytes(serialization.Encoding.DER),
            ocsp.OCSPResponseStatus.SUCCESSFUL,
            label,
            this_update,
            next_update,
            nonce is not None,
        )
