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
from .ocsp_der import ResponseSigner, cert_status, request_cert_id
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
    """`<state>/ocsp-responder.pem`, read again when it changes, with its signer."""

    def __init__(self, state: Path) -> None:
        self.path = state / RESPONDER_FILE
        self._stamp: tuple[int, int, int] | None = None
        self._signer: ResponseSigner | None = None
        self._error = ""
        self._issued_by: str | None = None  # the CA (ca.cer's ETag) it was checked against

    def get(self, issuer: IssuerIds, issuer_tag: str, now: dt.datetime) -> ResponseSigner:
        """The signer of the responder's credentials, checked against the CA `issuer`
        (whose ca.cer has the ETag `issuer_tag`) and `now`; ServeError when there are
        none to use."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise ServeError(
                f"no OCSP responder certificate yet ({self.path}): the daemon makes one "
                "when it starts"
            ) from None
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp != self._stamp:
            self._stamp, self._issued_by = stamp, None
            try:
                creds = ResponderCredentials.from_pem(self.path.read_bytes())
                self._signer, self._error = ResponseSigner(creds), ""
            except (OSError, CertdropError, ValueError) as exc:
                self._signer, self._error = None, f"{self.path}: {exc}"
        signer = self._signer
        if signer is None:
            raise ServeError(self._error)
        if self._issued_by != issuer_tag:  # the signature is checked once, not per answer
            problem = signer.creds.problem(issuer.cert, signer.creds.cert.not_valid_before_utc)
            if problem is not None:
                raise ServeError(problem)
            self._issued_by = issuer_tag
        cert = signer.creds.cert
        if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
            raise ServeError(
                f"the responder certificate is valid from {cert.not_valid_before_utc:%Y-%m-%d %H:%M}"
                f" to {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC, not now"
            )
        return signer


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

    def _issuer_ids(self) -> tuple[str, IssuerIds]:
        doc = self.files.get("ca.cer")
        cached = self._issuer
        if cached is None or cached[0] != doc.etag:
            cached = self._issuer = (doc.etag, IssuerIds(doc.body))
        return cached

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
            tag, issuer = self._issuer_ids()
            signer = self.responder.get(issuer, tag, now)
        except ServeError as exc:
            return _error(ocsp.OCSPResponseStatus.TRY_LATER, str(exc))
        ours = issuer.ids.get(alg.name)
        if ours is None:
            return _error(ocsp.OCSPResponseStatus.MALFORMED_REQUEST, f"unsupported hash {alg.name}")
        if (req.issuer_name_hash, req.issuer_key_hash) != ours:
            return _error(ocsp.OCSPResponseStatus.UNAUTHORIZED, "a certificate of another CA")
        serial = req.serial_number
        try:
            found = self.index.status(serial_hex(serial)) if 0 < serial < 1 << 160 else None
        except IndexUnavailable as exc:
            return _error(ocsp.OCSPResponseStatus.TRY_LATER, str(exc))
        this_update = utc_seconds(now)
        next_update = min(this_update + RESPONSE_VALIDITY, signer.creds.cert.not_valid_after_utc)
        if found is None:
            label, status = "unknown", cert_status(None, None, known=False)
        elif found.revoked:
            reason = found.reason if found.reason != "unspecified" else None
            label, status = "revoked", cert_status(found.revoked_at or this_update, reason, True)
        else:
            label, status = "good", cert_status(None, None, known=True)
        body = signer.sign(
            request_cert_id(der), status, this_update, next_update, this_update, nonce
        )
        return OcspAnswer(
            body,
            ocsp.OCSPResponseStatus.SUCCESSFUL,
            label,
            this_update,
            next_update,
            nonce is not None,
        )
