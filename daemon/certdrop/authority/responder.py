"""The OCSP responder's certificate: a delegated responder (RFC 6960 4.2.2.2) the CA issues.

Short-lived (RESPONDER_DAYS), with its own fresh P-256 key each time: id-kp-OCSPSigning
(the CA delegates signing OCSP responses to it), id-pkix-ocsp-nocheck (clients do not ask
about the responder itself, RFC 6960 4.2.2.2.1), digitalSignature only. It is issued like
any certificate of this CA (`CertificateAuthority.issue`: linted before the CA key signs,
checked after). Its key and certificate live together in one file, so that a reader never
sees the key of one with the certificate of another.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ..clock import utc_seconds
from ..errors import CAError
from .ca import CertificateAuthority, IssueSpec
from .keys import PrivateKey, generate_key, public_key_bytes
from .lifecycle import LintFunction
from .serials import random_serial

RESPONDER_FILE = "ocsp-responder.pem"  # the key, then the certificate (0600)
RESPONDER_DAYS = 4
RENEW_BEFORE = dt.timedelta(days=2)  # renewed when less than this is left
BACKDATE = dt.timedelta(minutes=5)  # clients whose clock is a little behind accept it


@dataclass(frozen=True)
class ResponderCredentials:
    """The responder's certificate and its private key."""

    cert: x509.Certificate
    key: PrivateKey

    def pem(self) -> bytes:
        """The file's contents: the key (PKCS#8, unencrypted: the file is 0600), then the
        certificate."""
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ) + self.cert.public_bytes(serialization.Encoding.PEM)

    @classmethod
    def from_pem(cls, data: bytes) -> ResponderCredentials:
        """Read a responder file; CAError when it is not a key with its certificate."""
        try:
            key = serialization.load_pem_private_key(data, None)
            cert = x509.load_pem_x509_certificate(data[data.index(b"-----BEGIN CERTIFICATE") :])
        except (ValueError, TypeError) as exc:
            raise CAError(f"not an OCSP responder key and certificate ({exc})") from None
        if public_key_bytes(key.public_key()) != public_key_bytes(cert.public_key()):
            raise CAError("the OCSP responder key does not belong to its certificate")
        return cls(cert, key)  # type: ignore[arg-type]

    def problem(self, ca_cert: x509.Certificate, now: dt.datetime) -> str | None:
        """Why these credentials cannot sign for `ca_cert` at `now`, or None."""
        try:
            self.cert.verify_directly_issued_by(ca_cert)
        except (ValueError, TypeError, InvalidSignature):
            return "the responder certificate was not issued by this CA"
        if now < self.cert.not_valid_before_utc:
            return f"the responder certificate is valid only from {self.cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
        if now >= self.cert.not_valid_after_utc:
            return f"the responder certificate expired at {self.cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
        return None


def responder_key() -> PrivateKey:
    """A new key for an OCSP responder (each certificate gets a key of its own)."""
    return generate_key("ec-p256")


def certify_responder(
    ca: CertificateAuthority,
    public_key: bytes,
    now: dt.datetime,
    linter: LintFunction | None,
    days: int = RESPONDER_DAYS,
) -> x509.Certificate:
    """A responder certificate for `public_key` (SubjectPublicKeyInfo DER), valid from
    `now` (less BACKDATE) for `days`."""
    try:
        key = serialization.load_der_public_key(public_key)
    except (ValueError, TypeError) as exc:
        raise CAError(f"not a responder's public key ({exc})") from None
    if not (isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"):
        raise CAError("a responder's key is an EC P-256 key; this one is not")
    start = utc_seconds(now) - BACKDATE
    subject = [
        (short, str(a.value))
        for short, oid in (("C", NameOID.COUNTRY_NAME), ("O", NameOID.ORGANIZATION_NAME))
        for a in ca.subject.get_attributes_for_oid(oid)[:1]
    ]
    ca_cn = [str(a.value) for a in ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    subject.append(("CN", f"{(ca_cn or ['certdrop CA'])[0][:49]} OCSP responder"))
    spec = IssueSpec(
        subject=subject,
        public_key=key,
        not_before=start,
        not_after=start + dt.timedelta(days=days),
        key_usage=["digital_signature"],
        extended_key_usage=["ocsp_signing"],
        serial=random_serial(now),
        ocsp_nocheck=True,
    )
    return ca.issue(spec, linter)
