"""The OCSP response (RFC 6960 4.2.1), DER, encoded here and signed by the responder's key.

Every answer has the same frame: the responder's ID (its key hash), producedAt, one
SingleResponse, perhaps the nonce, the signature algorithm, the responder's certificate.
Building it with cryptography's OCSPResponseBuilder cost three times the signature; here
the frame is made once per responder certificate and each answer fills in the CertID
(the request's, byte for byte), the status, the times and the nonce. The result is byte
for byte what OCSPResponseBuilder makes for the same values (tests/unit/serve/
test_ocsp_der.py), with the signature of the same key.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from ..authority.der import children, element_value, spki_key_bits, tlv
from ..authority.keys import PrivateKey, sign_bytes, signature_hash
from ..authority.reasons import CRL_REASON_CODES
from ..authority.responder import ResponderCredentials

_BASIC = bytes.fromhex("06092b0601050507300101")  # id-pkix-ocsp-basic
_NONCE = bytes.fromhex("06092b0601050507300102")  # id-pkix-ocsp-nonce
_GOOD = b"\x80\x00"  # [0] IMPLICIT NULL
_UNKNOWN = b"\x82\x00"  # [2] IMPLICIT NULL


def generalized_time(when: dt.datetime) -> bytes:
    """GeneralizedTime YYYYMMDDHHMMSSZ (whole seconds, UTC), as RFC 5280 profiles it."""
    return b"\x18\x0f" + time.strftime("%Y%m%d%H%M%SZ", time.gmtime(int(when.timestamp()))).encode()


def request_cert_id(request_der: bytes) -> bytes:
    """The CertID (DER, as the client wrote it) of the single request in an OCSPRequest
    that cryptography has parsed already (so its structure is known to be sound)."""
    tbs = children(element_value(request_der))[0][1]
    request_list = next(e for tag, e in children(element_value(tbs)) if tag == 0x30)
    first = children(element_value(request_list))[0][1]
    return children(element_value(first))[0][1]


def cert_status(revoked_at: dt.datetime | None, reason: str | None, known: bool) -> bytes:
    """CertStatus: good, unknown, or revoked [1] RevokedInfo (time, reason when given)."""
    if not known:
        return _UNKNOWN
    if revoked_at is None:
        return _GOOD
    info = generalized_time(revoked_at)
    if reason is not None:
        info += tlv(0xA0, b"\x0a\x01" + bytes((CRL_REASON_CODES[reason],)))
    return tlv(0xA1, info)


class ResponseSigner:
    """Signs answers with one responder's key and certificate (see the module docstring)."""

    def __init__(self, creds: ResponderCredentials) -> None:
        self.creds = creds
        self._key: PrivateKey = creds.key
        cert = creds.cert
        spki = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        key_hash = hashlib.sha1(spki_key_bits(spki), usedforsecurity=False).digest()
        self._responder_id = tlv(0xA2, tlv(0x04, key_hash))  # byKey
        self._certs = tlv(0xA0, tlv(0x30, cert.public_bytes(serialization.Encoding.DER)))
        self._hash = None if signature_hash(self._key) is None else hashes.SHA256()
        self._algorithm = self._signature_algorithm()

    def _signature_algorithm(self) -> bytes:
        """The signatureAlgorithm cryptography writes for this key: taken from an answer
        it makes, not from a table."""
        sample = (
            ocsp.OCSPResponseBuilder()
            .add_response_by_hash(
                b"\x00" * 20,
                b"\x00" * 20,
                1,
                hashes.SHA1(),  # noqa: S303 (only the frame is used)
                ocsp.OCSPCertStatus.GOOD,
                dt.datetime(2000, 1, 1),
                None,
                None,
                None,
            )
            .responder_id(ocsp.OCSPResponderEncoding.HASH, self.creds.cert)
            .sign(self._key, self._hash)
        )
        basic = _basic_response(sample.public_bytes(serialization.Encoding.DER))
        return children(element_value(basic))[1][1]

    def sign(
        self,
        cert_id: bytes,
        status: bytes,
        this_update: dt.datetime,
        next_update: dt.datetime | None,
        produced_at: dt.datetime,
        nonce: bytes | None,
    ) -> bytes:
        """The OCSPResponse (DER): successful, one SingleResponse, signed."""
        single = cert_id + status + generalized_time(this_update)
        if next_update is not None:
            single += tlv(0xA0, generalized_time(next_update))
        data = self._responder_id + generalized_time(produced_at) + tlv(0x30, tlv(0x30, single))
        if nonce is not None:
            data += tlv(0xA1, tlv(0x30, tlv(0x30, _NONCE + tlv(0x04, tlv(0x04, nonce)))))
        tbs = tlv(0x30, data)
        signature = sign_bytes(self._key, tbs, self._hash)
        basic = tlv(0x30, tbs + self._algorithm + tlv(0x03, b"\x00" + signature) + self._certs)
        return tlv(0x30, b"\x0a\x01\x00" + tlv(0xA0, tlv(0x30, _BASIC + tlv(0x04, basic))))


def _basic_response(response_der: bytes) -> bytes:
    """The BasicOCSPResponse inside a successful OCSPResponse."""
    _status, response_bytes = children(element_value(response_der))
    _type, octets = children(element_value(element_value(response_bytes[1])))
    return element_value(octets[1])
