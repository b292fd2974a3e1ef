"""The OCSP responder (serve/ocsp.py) through its public seam, `ServeRuntime.ocsp`: real
requests made by `openssl ocsp` and by cryptography, answers checked by `openssl ocsp`
(signature, nonce, status) and by pkilint's RFC 6960 linter, certificates issued and
revoked by certdrop's own issue layer in a real index."""

from __future__ import annotations

import datetime as dt
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp

from certdrop.authority.responder import RESPONDER_FILE
from certdrop.serve.runtime import ServeRuntime
from conftest import OPENSSL, ec_csr, stock_linter
from issue_kit import Kit, make_kit


@dataclass
class Setup:
    kit: Kit
    rt: ServeRuntime
    alice: x509.Certificate
    bob: x509.Certificate  # revoked, keyCompromise
    tmp: Path

    @property
    def ca(self) -> x509.Certificate:
        return self.kit.rt.ca.cert

    def ask(self, der: bytes) -> ocsp.OCSPResponse:
        answer = self.rt.ocsp.respond(der, self.kit.clock.now())
        assert stock_linter().ocsp_response(answer.body) == [], answer
        return ocsp.load_der_ocsp_response(answer.body)


def _issue(kit: Kit, name: str) -> x509.Certificate:
    csr, _key = ec_csr(name)
    kit.process(name, csr)
    return x509.load_pem_x509_certificate((kit.env.outbox / f"{name}.cer").read_bytes())


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    kit = make_kit(tmp_path)
    alice, bob = _issue(kit, "alice"), _issue(kit, "bob")
    kit.rt.revoker.revoke(f"{bob.serial_number:X}", "keyCompromise")
    kit.rt.responder.renew()
    rt = ServeRuntime.build(kit.env.settings, kit.clock)
    yield Setup(kit, rt, alice, bob, tmp_path)
    rt.close()
    kit.close()


def _request(
    cert: x509.Certificate,
    issuer: x509.Certificate,
    *,
    nonce: bytes | None = None,
    alg: hashes.HashAlgorithm | None = None,
) -> bytes:
    b = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, alg or hashes.SHA1())
    if nonce is not None:
        b = b.add_extension(x509.OCSPNonce(nonce), critical=False)
    return b.build().public_bytes(serialization.Encoding.DER)


def _openssl_request(s: Setup, cert_pem: Path, out: Path) -> bytes:
    subprocess.run(
        [
            OPENSSL,
            "ocsp",
            "-issuer",
            str(s.kit.env.ca_cert),
            "-cert",
            str(cert_pem),
            "-nonce",
            "-reqout",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    return out.read_bytes()


def _openssl_verify(s: Setup, req: Path, resp: bytes) -> str:
    """openssl's verdict on `resp` as the answer to `req` (signature, chain, nonce)."""
    (s.tmp / "resp.der").write_bytes(resp)
    res = subprocess.run(
        [
            OPENSSL,
            "ocsp",
            "-reqin",
            str(req),
            "-respin",
            str(s.tmp / "resp.der"),
            "-CAfile",
            str(s.kit.env.ca_cert),
            "-resp_text",
        ],
        capture_output=True,
        text=True,
    )
    return res.stdout + res.stderr


def test_good_revoked_and_unknown_as_openssl_sees_them(setup: Setup) -> None:
    s = setup
    outbox = s.kit.env.outbox
    for name, expect in (("alice", "Cert Status: good"), ("bob", "Cert Status: revoked")):
        req = s.tmp / f"{name}.req.der"
        der = _openssl_request(s, outbox / f"{name}.cer", req)
        resp = s.rt.ocsp.respond(der, s.kit.clock.now()).body
        out = _openssl_verify(s, req, resp)
        assert "Response verify OK" in out, out
        assert expect in out, out
        assert "OCSP Nonce" in out and "Nonce Verify error" not in out, out
        assert stock_linter().ocsp_response(resp) == []
    # openssl checks the nonce: an answer to another request is refused
    other = s.tmp / "other.req.der"
    _openssl_request(s, outbox / "alice.cer", other)
    assert "Nonce Verify error" in _openssl_verify(s, other, resp)
    # the revocation's time and reason
    got = s.ask(_request(s.bob, s.ca))
    assert got.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert got.revocation_reason == x509.ReasonFlags.key_compromise
    assert got.revocation_time_utc == s.kit.clock.now().replace(microsecond=0)
    # a serial this CA never issued (same issuer): unknown
    stranger = (
        x509.CertificateBuilder()
        .subject_name(s.alice.subject)
        .issuer_name(s.ca.subject)
        .public_key(s.alice.public_key())
        .serial_number(0x1234)
        .not_valid_before(s.alice.not_valid_before_utc)
        .not_valid_after(s.alice.not_valid_after_utc)
        .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
    )
    got = s.ask(_request(stranger, s.ca, nonce=b"n" * 16))
    assert got.certificate_status == ocsp.OCSPCertStatus.UNKNOWN


def test_the_answer_is_signed_by_the_delegated_responder_and_echoes_the_nonce(setup: Setup) -> None:
    s = setup
    got = s.ask(_request(s.alice, s.ca, nonce=b"\x01" * 32, alg=hashes.SHA256()))
    assert got.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    assert got.certificate_status == ocsp.OCSPCertStatus.GOOD
    assert got.hash_algorithm.name == "sha256"  # the CertID as the request had it
    assert got.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == b"\x01" * 32
    (responder,) = got.certificates
    assert responder.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == (
        x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.OCSP_SIGNING])
    )
    responder.verify_directly_issued_by(s.ca)
    pub = responder.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    pub.verify(got.signature, got.tbs_response_bytes, ec.ECDSA(hashes.SHA256()))
    assert got.responder_key_hash == x509.SubjectKeyIdentifier.from_public_key(pub).digest
    now = s.kit.clock.now().replace(microsecond=0)
    assert got.this_update_utc == now
    assert got.next_update_utc is not None and now < got.next_update_utc <= now + dt.timedelta(
        hours=1
    )


def test_a_revocation_is_answered_at_once(setup: Setup) -> None:
    s = setup
    req = _request(s.alice, s.ca)
    assert s.ask(req).certificate_status == ocsp.OCSPCertStatus.GOOD
    s.kit.rt.revoker.revoke(f"{s.alice.serial_number:X}", "superseded")
    got = s.ask(req)
    assert got.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert got.revocation_reason == x509.ReasonFlags.superseded


def _status(s: Setup, der: bytes) -> ocsp.OCSPResponseStatus:
    answer = s.rt.ocsp.respond(der, s.kit.clock.now())
    assert stock_linter().ocsp_response(answer.body) == []
    return ocsp.load_der_ocsp_response(answer.body).response_status


def test_what_cannot_be_answered_gets_the_matching_error_status(setup: Setup) -> None:
    s = setup
    malformed = ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    good = _request(s.alice, s.ca)
    for garbage in (b"", b"\x00" * 10, b"garbage" * 100, good[:-3], good + b"\x00"):
        assert _status(s, garbage) == malformed, garbage
    # RFC 8954: a nonce longer than 32 octets
    assert _status(s, _request(s.alice, s.ca, nonce=b"x" * 33)) == malformed
    # CertIDs hashed with algorithms the responder does not take (made by openssl)
    for digest in ("-md5", "-sha3-256"):
        out = s.tmp / f"req{digest}.der"
        subprocess.run(
            [
                OPENSSL,
                "ocsp",
                "-issuer",
                str(s.kit.env.ca_cert),
                digest,
                "-cert",
                str(s.kit.env.outbox / "alice.cer"),
                "-reqout",
                str(out),
            ],
            check=True,
            capture_output=True,
        )
        assert _status(s, out.read_bytes()) == malformed, digest
    # and an algorithm identifier nobody knows
    sha1 = bytes.fromhex("06052b0e03021a")  # 1.3.14.3.2.26
    assert sha1 in good
    assert _status(s, good.replace(sha1, bytes.fromhex("06052b0e03021b"))) == malformed
    # a certificate of another CA: not ours to answer
    other = make_kit(s.tmp / "other")
    try:
        assert (
            _status(s, _request(s.alice, other.rt.ca.cert)) == ocsp.OCSPResponseStatus.UNAUTHORIZED
        )
    finally:
        other.close()
    # an unknown critical extension in the request
    crit = (
        ocsp.OCSPRequestBuilder()
        .add_certificate(s.alice, s.ca, hashes.SHA1())
        .add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00"),
            critical=True,
        )
        .build()
        .public_bytes(serialization.Encoding.DER)
    )
    assert _status(s, crit) == malformed


def test_no_usable_responder_certificate_means_try_later(setup: Setup) -> None:
    s = setup
    req = _request(s.alice, s.ca)
    path = s.kit.env.state / RESPONDER_FILE
    saved = path.read_bytes()
    path.unlink()
    assert _status(s, req) == ocsp.OCSPResponseStatus.TRY_LATER
    path.write_bytes(b"not a key")
    assert _status(s, req) == ocsp.OCSPResponseStatus.TRY_LATER
    path.write_bytes(saved)  # read again: answers again, without a restart
    assert _status(s, req) == ocsp.OCSPResponseStatus.SUCCESSFUL
    s.kit.clock.advance(dt.timedelta(days=5))  # past the responder's end
    assert _status(s, req) == ocsp.OCSPResponseStatus.TRY_LATER
    s.kit.rt.responder.renew()  # what the daemon's job does
    assert _status(s, req) == ocsp.OCSPResponseStatus.SUCCESSFUL
