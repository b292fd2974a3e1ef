"""certdrop's pkilint dispatch (certdrop.authority.lint._Dispatch) gives exactly pkilint's results.

The daemon lints with `Linter()` (the dispatch); `Linter(fast=False)` walks the
document as pkilint ships it. Every validation result is compared (validator, node
path, findings with their messages, in order), also the ones without findings, on the
certificate and CRL shapes certdrop issues, on certificates built to break rules (each
checked to raise the finding it was made for), and on byte-mutated certificates.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certdrop.authority.ca import CertificateAuthority, IssueSpec
from certdrop.authority.lifecycle import create_ca
from certdrop.authority.lint import Linter, fast_dispatch
from certdrop.authority.serials import random_serial
from certdrop.config import CASettings
from certdrop.errors import CertdropError

NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def linters() -> tuple[Linter, Linter]:
    fast, stock = Linter(), Linter(fast=False)
    assert fast.fast and not stock.fast
    return fast, stock


def outcome(linter: Linter, der: bytes, kind: str) -> Any:
    try:
        return linter.results(der, kind)
    except Exception as exc:  # an undecodable document: both must say so, alike
        return f"{type(exc).__name__}: {exc}"


def same(linters: tuple[Linter, Linter], der: bytes, kind: str = "certificate") -> Any:
    fast, stock = linters
    got, want = outcome(fast, der, kind), outcome(stock, der, kind)
    assert got == want
    return want


# --- what certdrop issues ---------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["ec-p256", "ec-p384", "rsa-2048"])
def ca(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    state = tmp_path_factory.mktemp("ca")
    create_ca(state, CASettings(common_name="Dispatch CA", key_type=request.param), NOW)
    return CertificateAuthority.load(state)


SUBJECT_KEYS: list[Callable[[], Any]] = [
    lambda: ec.generate_private_key(ec.SECP256R1()).public_key(),
    lambda: ec.generate_private_key(ec.SECP384R1()).public_key(),
    lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key(),
    lambda: ed25519.Ed25519PrivateKey.generate().public_key(),
]


def test_the_shapes_certdrop_issues(linters: tuple[Linter, Linter], ca: Any) -> None:
    shapes: list[dict[str, Any]] = [
        {},
        {
            "emails": ["joe@example.org"],
            "subject": [("CN", "Joe"), ("emailAddress", "joe@example.org")],
        },
        {"dns_names": ["www.example.org", "example.org"], "extended_key_usage": ["server_auth"]},
        {"crl_distribution_point": "http://ca.example.org/ca.crl"},
        {
            "subject": [("C", "BE"), ("O", "MyOrg"), ("OU", "Ops"), ("OU", "Lab"), ("CN", "Ann")],
            "key_usage": ["digital_signature", "key_encipherment"],
            "extended_key_usage": ["client_auth", "email_protection"],
        },
    ]
    compared = 0
    for make_key in SUBJECT_KEYS:
        for extra in shapes:
            fields: dict[str, Any] = {
                "subject": [("CN", "Dispatch")],
                "public_key": make_key(),
                "not_before": NOW,
                "not_after": NOW + dt.timedelta(days=365),
                "key_usage": ["digital_signature"],
                "extended_key_usage": ["client_auth"],
                "serial": random_serial(NOW),
            }
            fields.update(extra)
            try:
                cert = ca.issue(IssueSpec(**fields))
            except CertdropError:  # a combination certdrop refuses: nothing to compare
                continue
            same(linters, cert.public_bytes(serialization.Encoding.DER))
            compared += 1
    assert compared >= 16
    same(linters, ca.cert.public_bytes(serialization.Encoding.DER))  # the CA certificate


def test_the_crls_certdrop_issues(linters: tuple[Linter, Linter], ca: Any) -> None:
    entries = [
        (random_serial(NOW), NOW - dt.timedelta(days=i), reason)
        for i, reason in enumerate(
            ["keyCompromise", "superseded", "unspecified", "cessationOfOperation"]
        )
    ]
    for revoked in ([], entries):
        der = ca.build_crl_der(revoked, 7, NOW, NOW + dt.timedelta(days=7))
        same(linters, der, "crl")


# --- certificates made to break rules -----------------------------------------------------------------
def _builder(subject: x509.Name, key: Any) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Broken CA")]))
        .public_key(key.public_key())
        .serial_number(random_serial(NOW))
        .not_valid_before(NOW)
        .not_valid_after(NOW + dt.timedelta(days=90))
    )


def _cn(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


KU_SIGN = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
KU_CA = x509.KeyUsage(False, False, False, False, False, True, True, False, False)


def broken_certificates() -> list[tuple[str, str, bytes]]:
    """(what is wrong, a finding code that pkilint must raise, DER)."""
    issuer_key = ec.generate_private_key(ec.SECP256R1())
    key = ec.generate_private_key(ec.SECP256R1())
    out: list[tuple[str, str, x509.CertificateBuilder]] = [
        (
            "a CA whose basicConstraints is not critical",
            "pkix.basic_constraints_extension_not_critical",
            _builder(_cn("CA"), key)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=False)
            .add_extension(KU_CA, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False),
        ),
        (
            "an empty subject with a subjectAltName that is not critical",
            "pkix.san_extension_not_critical_empty_subject",
            _builder(x509.Name([]), key).add_extension(
                x509.SubjectAlternativeName([x509.DNSName("example.org")]), critical=False
            ),
        ),
        (
            "a critical authorityKeyIdentifier",
            "pkix.authority_key_identifier_critical",
            _builder(_cn("a"), key).add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                critical=True,
            ),
        ),
        (
            "timeStamping in a non-critical extendedKeyUsage",
            "pkix.extended_key_usage_extension_with_timestamping_not_critical",
            _builder(_cn("ts"), key).add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=False
            ),
        ),
        (
            "a critical subjectKeyIdentifier",
            "pkix.certificate_skid_extension_critical",
            _builder(_cn("s"), key).add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=True
            ),
        ),
        (
            "keyCertSign on a certificate that is not a CA",
            "pkix.ee_certificate_keycertsign_keyusage_set",
            _builder(_cn("ee"), key).add_extension(KU_CA, critical=True),
        ),
        (
            "a subjectAltName DNS name that is not one",
            "pkix.invalid_domain_name_syntax",
            _builder(_cn("d"), key).add_extension(
                x509.SubjectAlternativeName([x509.DNSName("-bad-.example..org")]), critical=False
            ),
        ),
        (
            "a subjectAltName e-mail address that is not one",
            "pkix.invalid_email_address_syntax",
            _builder(_cn("m"), key).add_extension(
                x509.SubjectAlternativeName([x509.RFC822Name("not an address")]), critical=False
            ),
        ),
        (
            "keyUsage not critical",
            "pkix.key_usage_extension_not_critical",
            _builder(_cn("k"), key).add_extension(KU_SIGN, critical=False),
        ),
    ]
    return [
        (what, code, b.sign(issuer_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER))
        for what, code, b in out
    ]


def test_certificates_that_break_rules(linters: tuple[Linter, Linter]) -> None:
    missed = []
    for what, code, der in broken_certificates():
        got = same(linters, der)
        if code not in repr(got):
            missed.append((what, code))
    # each certificate raises what it was made for, or the comparison above proves little
    assert not missed, missed


def test_byte_mutations_of_certificates_and_crls(
    linters: tuple[Linter, Linter], tmp_path: Path
) -> None:
    state = tmp_path / "ca"
    create_ca(state, CASettings(common_name="Mutation CA"), NOW)
    ca = CertificateAuthority.load(state)
    cert = ca.issue(
        IssueSpec(
            subject=[("CN", "Mutant"), ("emailAddress", "m@example.org")],
            public_key=ec.generate_private_key(ec.SECP256R1()).public_key(),
            not_before=NOW,
            not_after=NOW + dt.timedelta(days=30),
            key_usage=["digital_signature"],
            extended_key_usage=["client_auth"],
            emails=["m@example.org"],
            serial=random_serial(NOW),
            crl_distribution_point="http://ca.example.org/ca.crl",
        )
    ).public_bytes(serialization.Encoding.DER)
    crl = ca.build_crl_der([(5, NOW, "superseded")], 3, NOW, NOW + dt.timedelta(days=7))
    rng = random.Random(20261127)
    decoded = 0
    for base, kind in ((cert, "certificate"), (crl, "crl")):
        for _ in range(150):
            data = bytearray(base)
            for _ in range(rng.randint(1, 3)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            if not isinstance(same(linters, bytes(data), kind), str):
                decoded += 1
    assert decoded > 50  # most mutations still decode: the walk itself was compared


def test_a_container_pkilint_changed_keeps_pkilints_walk() -> None:
    linter = Linter(fast=False)

    class Odd:
        """A validator without NodeVisitor's fields."""

    container = linter.certificate_validator
    inner = container.validators[0]
    inner.validators.append(Odd())
    try:
        assert fast_dispatch(linter.crl_validator, container) is False
        for c in (linter.crl_validator, container, inner):  # nothing installed, not even partly
            assert "_validate_rec" not in c.__dict__
    finally:
        inner.validators.pop()
    some = inner.validators[0]
    some.match = lambda node: True  # a match of its own, set on the instance
    try:
        assert fast_dispatch(container) is False
    finally:
        del some.match
    assert fast_dispatch(container) is True
