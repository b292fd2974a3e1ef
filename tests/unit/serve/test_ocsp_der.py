"""certdrop encodes its OCSP responses itself (serve/ocsp_der.py): byte for byte what
cryptography's OCSPResponseBuilder makes for the same values, for every status, with and
without nonce and nextUpdate, for EC, RSA and Ed25519 responder keys (RSA PKCS#1 v1.5 and
Ed25519 signatures are deterministic: there the whole response is compared)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from certdrop.authority.responder import ResponderCredentials
from certdrop.serve.ocsp_der import ResponseSigner, cert_status, request_cert_id
from conftest import stock_linter

NOW = dt.datetime(2031, 6, 1, 10, 20, 30, tzinfo=dt.UTC)


def _credentials(key: Any) -> ResponderCredentials:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test responder")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test CA")]))
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=3))
        .sign(ca_key, hashes.SHA256())
    )
    return ResponderCredentials(cert, key)


def _request(alg: hashes.HashAlgorithm, serial: int, nonce: bytes | None) -> bytes:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    issuer = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Issuer")]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Issuer")]))
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(NOW)
        .not_valid_after(NOW + dt.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Leaf")]))
        .issuer_name(issuer.subject)
        .public_key(ec.generate_private_key(ec.SECP256R1()).public_key())
        .serial_number(serial)
        .not_valid_before(NOW)
        .not_valid_after(NOW + dt.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    b = ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, alg)
    if nonce is not None:
        b = b.add_extension(x509.OCSPNonce(nonce), critical=False)
    return b.build().public_bytes(serialization.Encoding.DER)


CASES = [
    # (status, revoked at, reason, next update, nonce, CertID hash, serial)
    ("good", None, None, NOW + dt.timedelta(hours=1), b"\x01" * 16, hashes.SHA1(), 1 << 126),
    ("good", None, None, None, None, hashes.SHA256(), 1),
    ("unknown", None, None, NOW + dt.timedelta(hours=1), b"n", hashes.SHA1(), 0x1234),
    (
        "revoked",
        NOW - dt.timedelta(days=3),
        "keyCompromise",
        NOW,
        b"\xff" * 32,
        hashes.SHA384(),
        99,
    ),
    ("revoked", NOW, None, NOW + dt.timedelta(minutes=1), None, hashes.SHA512(), (1 << 159) - 1),
]
_STATUS = {
    "good": ocsp.OCSPCertStatus.GOOD,
    "unknown": ocsp.OCSPCertStatus.UNKNOWN,
    "revoked": ocsp.OCSPCertStatus.REVOKED,
}


@pytest.mark.parametrize("kind", ["ec", "rsa", "ed25519"])
def test_responses_are_byte_for_byte_what_cryptography_builds(kind: str) -> None:
    key: Any = {
        "ec": lambda: ec.generate_private_key(ec.SECP256R1()),
        "rsa": lambda: rsa.generate_private_key(65537, 2048),
        "ed25519": ed25519.Ed25519PrivateKey.generate,
    }[kind]()
    creds = _credentials(key)
    signer = ResponseSigner(creds)
    for status, revoked_at, reason, next_update, nonce, alg, serial in CASES:
        req_der = _request(alg, serial, nonce)
        req = ocsp.load_der_ocsp_request(req_der)
        builder = (
            ocsp.OCSPResponseBuilder()
            .add_response_by_hash(
                req.issuer_name_hash,
                req.issuer_key_hash,
                req.serial_number,
                req.hash_algorithm,
                _STATUS[status],
                NOW,
                next_update,
                revoked_at,
                x509.ReasonFlags(reason) if reason else None,
            )
            .responder_id(ocsp.OCSPResponderEncoding.HASH, creds.cert)
            .certificates([creds.cert])
        )
        if nonce is not None:
            builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
        theirs = builder.sign(key, None if kind == "ed25519" else hashes.SHA256())
        der = signer.sign(
            request_cert_id(req_der),
            cert_status(revoked_at, reason, known=status != "unknown"),
            NOW,
            next_update,
            theirs.produced_at_utc,  # cryptography takes the system's time: ours is given
            nonce,
        )
        ours = ocsp.load_der_ocsp_response(der)
        assert ours.tbs_response_bytes == theirs.tbs_response_bytes, (kind, status)
        assert ours.signature_algorithm_oid == theirs.signature_algorithm_oid
        assert ours.certificates == theirs.certificates
        if kind != "ec":  # deterministic signatures: the very same bytes
            assert der == theirs.public_bytes(serialization.Encoding.DER), (kind, status)
        else:
            pub = creds.cert.public_key()
            assert isinstance(pub, ec.EllipticCurvePublicKey)
            pub.verify(ours.signature, ours.tbs_response_bytes, ec.ECDSA(hashes.SHA256()))
        assert stock_linter().ocsp_response(der) == []
