"""The OCSP responder (RFC 6960, with RFC 5019's profile): a request in, a signed answer out.

A request names a certificate by its issuer's name and key hashes and its serial. The
answer for a certificate of this CA is `good`, `revoked` (with the time and the reason) or
`unknown` (never issued here), from the index as it is at that moment (looked up for
every request: a revocation is answered the moment it is committed). It is signed by
the delegated responder (`<state>/ocsp-responder.pem`, renewed by the daemon, read again
when it changes) and carries the responder's certificate and the request's nonce.

An answer to a request without nonce (RFC 5019's GETs) is signed once and given again
for up to REUSE_SECONDS to the same CertID while the index says the same and the
responder is the same: a new status or responder makes a new answer at once. An answer
to a nonce is for that request alone.

What cannot be answered gets an unsigned error status: a request that does not parse, an
unknown hash algorithm, a critical extension we do not know or a nonce RFC 8954 forbids:
malformedRequest; a certificate of another CA: unauthorized (RFC 5019 2.2.3); no usable
responder certificate or an index that cannot be read now: tryLater.

After a rollover the retiring CAs are answered for too: each `<state>/cas/<id>/` that
holds a responder certificate (the daemon keeps one, issued by that CA, for every
retiring CA) is an issuer this responder knows; a serial the index records under
another CA is `unknown` for it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import time
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

CAS = "cas"  # the folders of every CA after a rollover (authority/rollover.py)
RESCAN_SECONDS = 10.0  # cas/ is listed again at least this often
RESPONSE_VALIDITY = dt.timedelta(hours=1)  # nextUpdate: how long an answer may be relied on
MAX_NONCE = 32  # RFC 8954 2.1: a nonce of 1 to 32 octets
REUSE_SECONDS = 60  # a nonce-less answer is given again this long (its thisUpdate as old)
REUSE_ENTRIES = 10_000  # answers kept for that; all forgotten when full
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
        self._path = str(self.path)  # stat()ed on every answer: no Path conversion each time
        self._stamp: tuple[int, int, int] | None = None
        self._signer: ResponseSigner | None = None
        self._error = ""
        self._issued_by: str | None = None  # the CA (ca.cer's ETag) it was checked against

    def get(self, issuer: IssuerIds, issuer_tag: str, now: dt.datetime) -> ResponseSigner:
        """The signer of the responder's credentials, checked against the CA `issuer`
        (whose ca.cer has the ETag `issuer_tag`) and `now`; ServeError when there are
        none to use."""
        try:
            st = os.stat(self._path)
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
        if not signer.not_before <= now < signer.not_after:
            raise ServeError(
                f"the responder certificate is valid from {signer.not_before:%Y-%m-%d %H:%M}"
                f" to {signer.not_after:%Y-%m-%d %H:%M} UTC, not now"
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
        self.id = hashlib.sha256(spki).hexdigest()  # as the index names a CA (lifecycle.ca_id)
        self.ids: dict[str, tuple[bytes, bytes]] = {}
        for alg in _HASHES:
            self.ids[alg.name] = (_digest(alg, name), _digest(alg, key))


class RetiringIssuers:
    """The retiring CAs' folders (`cas/<id>/` with a responder certificate): their ids,
    issuer hashes and responder files; listed again when cas/ changes, or after
    RESCAN_SECONDS (a responder file added inside a folder does not change cas/)."""

    def __init__(self, state: Path) -> None:
        self.folder = state / CAS
        self._seen: int | None = None
        self._listed_at = 0.0
        self._issuers: dict[str, tuple[IssuerIds, ResponderFile]] = {}

    def get(self) -> dict[str, tuple[IssuerIds, ResponderFile]]:
        try:
            mtime = os.stat(self.folder).st_mtime_ns
        except FileNotFoundError:
            return {}
        now = time.monotonic()
        if mtime != self._seen or now - self._listed_at >= RESCAN_SECONDS:
            self._seen, self._listed_at = mtime, now
            found: dict[str, tuple[IssuerIds, ResponderFile]] = {}
            for sub in sorted(self.folder.iterdir()):
                if not (sub / RESPONDER_FILE).exists():
                    continue
                known = self._issuers.get(sub.name)
                if known is not None:
                    found[sub.name] = known  # its certificate never changes; keep its cache
                    continue
                try:
                    cert = x509.load_pem_x509_certificate((sub / "ca.cer").read_bytes())
                except (OSError, ValueError) as exc:
                    log.warning("the CA in %s cannot be read: %s", sub, exc)
                    continue
                ids = IssuerIds(cert.public_bytes(serialization.Encoding.DER))
                found[sub.name] = (ids, ResponderFile(sub))
            self._issuers = found
        return self._issuers


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
        # (CertID, CertStatus DER) -> (the signer that signed it, its answer)
        self._reuse: dict[tuple[bytes, bytes], tuple[ResponseSigner, OcspAnswer]] = {}
        self.retiring = RetiringIssuers(responder.path.parent)

    def _issuer_ids(self) -> tuple[str, IssuerIds]:
        doc = self.files.get("ca.cer")
        cached = self._issuer
        if cached is None or cached[0] != doc.etag:
            cached = self._issuer = (doc.etag, IssuerIds(doc.body))
        return cached

    def warm_up(self, now: dt.datetime) -> None:
        """Answer one request for serial 1, whatever the answer: what a first answer loads
        (the index's SQL dialect, cryptography's backend) is loaded by then."""
        try:
            _tag, issuer = self._issuer_ids()
        except ServeError:
            return
        name_hash, key_hash = issuer.ids["sha1"]
        der = (
            ocsp.OCSPRequestBuilder()
            .add_certificate_by_hash(name_hash, key_hash, 1, hashes.SHA1())  # noqa: S303
            .build()
            .public_bytes(serialization.Encoding.DER)
        )
        self.respond(der, now)

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
        if alg.name not in {a.name for a in _HASHES}:
            return _error(ocsp.OCSPResponseStatus.MALFORMED_REQUEST, f"unsupported hash {alg.name}")
        asked = (req.issuer_name_hash, req.issuer_key_hash)
        try:
            tag, issuer = self._issuer_ids()
            current = issuer.ids[alg.name] == asked
            responder = self.responder
            if not current:  # a retiring CA's certificate (after a rollover)?
                match = next(
                    (
                        (ident, ids, file)
                        for ident, (ids, file) in self.retiring.get().items()
                        if ids.ids[alg.name] == asked
                    ),
                    None,
                )
                if match is None:
                    return _error(
                        ocsp.OCSPResponseStatus.UNAUTHORIZED, "a certificate of another CA"
                    )
                tag, issuer, responder = match
            signer = responder.get(issuer, tag, now)
        except ServeError as exc:
            return _error(ocsp.OCSPResponseStatus.TRY_LATER, str(exc))
        serial = req.serial_number
        try:
            found = self.index.status(serial_hex(serial)) if 0 < serial < 1 << 160 else None
        except IndexUnavailable as exc:
            return _error(ocsp.OCSPResponseStatus.TRY_LATER, str(exc))
        if found is not None and found.issuer != issuer.id:
            # a serial of another of this state's CAs; rows no CA claimed yet are the
            # current CA's (index/cas.py)
            if not (current and found.issuer is None):
                found = None
        this_update = utc_seconds(now)
        next_update = min(this_update + RESPONSE_VALIDITY, signer.not_after)
        if found is None:
            label, status = "unknown", cert_status(None, None, known=False)
        elif found.revoked:
            reason = found.reason if found.reason != "unspecified" else None
            label, status = "revoked", cert_status(found.revoked_at or this_update, reason, True)
        else:
            label, status = "good", cert_status(None, None, known=True)
        cert_id = request_cert_id(der)
        if nonce is None:
            kept = self._reuse.get((cert_id, status))
            if kept is not None and kept[0] is signer:
                answer = kept[1]
                assert answer.produced_at is not None and answer.next_update is not None
                age = (now - answer.produced_at).total_seconds()
                if 0 <= age < REUSE_SECONDS and now < answer.next_update:
                    return answer
        body = signer.sign(cert_id, status, this_update, next_update, this_update, nonce)
        answer = OcspAnswer(
            body,
            ocsp.OCSPResponseStatus.SUCCESSFUL,
            label,
            this_update,
            next_update,
            nonce is not None,
        )
        if nonce is None:
            if len(self._reuse) >= REUSE_ENTRIES:
                self._reuse.clear()
            self._reuse[(cert_id, status)] = (signer, answer)
        return answer
