"""Lint before sign: pkilint sees a draft with a throwaway signature; a finding refuses, nothing is signed.

The requests here are made by openssl; the profile settings are valid configuration.
The post-sign checks (same TBS as linted, the CSR's public key, a signature that
verifies under the CA) are exercised with real keys through small CA subclasses
that break exactly one of them.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from certdrop.authority.ca import (
    CertificateAuthority,
    IssueSpec,
    Staged,
    Staging,
    create_ca,
    random_serial,
    serial_hex,
)
from certdrop.authority.lint import Linter, shared_linter
from certdrop.clock import SystemClock
from certdrop.config import CASettings
from certdrop.errors import CAError, LintError
from certdrop.index.store import Store
from certdrop.intake.request import ATTRIBUTE_OIDS
from certdrop.issue.outcomes import Outcome
from certdrop.service.runtime import Runtime
from conftest import CAEnv, lint_clean, load_cert, make_env, openssl_csr

# a valid profile: key_encipherment only. Fine for RSA keys; for an EC key certdrop
# must drop the bit (RFC 8813), which leaves a keyUsage with no bit set at all.
ENCIPHER_ONLY = {"[profiles.client]\n": '[profiles.client]\nkey_usage = ["key_encipherment"]\n'}


class RecordingLinter:
    """The real linter, remembering every draft it was shown."""

    def __init__(self, real: Linter) -> None:
        self.real = real
        self.drafts: list[x509.Certificate] = []

    def certificate(self, der: bytes) -> list[str]:
        self.drafts.append(x509.load_der_x509_certificate(der))
        return self.real.certificate(der)


def runtime(env: CAEnv) -> tuple[Runtime, RecordingLinter]:
    rt = Runtime.build(env.settings, SystemClock())
    assert rt.linter is shared_linter() and rt.batches.recorder.linter is rt.linter
    rec = RecordingLinter(rt.linter)
    rt.batches.recorder.linter = rec  # type: ignore[assignment]
    return rt, rec


def drop_and_process(rt: Runtime, env: CAEnv, req: Path, name: str) -> Any:
    env.drop(req, f"{name}.req")
    return rt.batches.handle_inbox_file(env.inbox / f"{name}.req", "client")


def index_of(env: CAEnv) -> tuple[list[Any], list[dict[str, Any]]]:
    store = Store(env.settings.database_url)
    try:
        with store.begin() as conn:
            return store.list_certs(conn), [
                j for n in ("ecreq", "longmail") for j in store.journal_for(conn, n)
            ]
    finally:
        store.close()


def test_profile_keyusage_that_empties_for_ec_is_refused_unsigned(
    tmp_path: Path,
) -> None:
    env = make_env(tmp_path / "ca", replace=ENCIPHER_ONLY)
    rt, rec = runtime(env)
    try:
        ec_req, _ = openssl_csr(tmp_path / "u", "ecreq", "/CN=EC User", kind="ec:prime256v1")
        res = drop_and_process(rt, env, ec_req, "ecreq")
        assert res.outcome is Outcome.REJECTED
        reason = (env.rejected / "ecreq.reason").read_text()
        assert "would not be standards-compliant" in reason
        assert "ERROR pkix.no_ku_bits_set" in reason  # pkilint's finding, as the reason
        # what was linted was a draft signed with a throwaway key, never by the CA
        (draft,) = rec.drafts
        ca = load_cert(env.ca_cert)
        with pytest.raises(Exception):  # InvalidSignature (or ValueError)
            draft.verify_directly_issued_by(ca)
        # nothing issued: no certificate, no outputs, the draft's serial unused
        certs, journal = index_of(env)
        assert certs == []
        assert [j["outcome"] for j in journal] == ["rejected"]
        assert not list(env.outbox.iterdir())
        assert not [p for p in (env.spool / "work").rglob("*") if p.is_file()]
        with rt.store.begin() as conn:
            assert not rt.store.serial_exists(conn, serial_hex(draft.serial_number))

        # the same profile with an RSA key: keyEncipherment is set, lint is clean
        rsa_req, _ = openssl_csr(tmp_path / "u", "rsareq", "/CN=RSA User")
        res = drop_and_process(rt, env, rsa_req, "rsareq")
        assert res.outcome is Outcome.ISSUED, res.reason
        cert = load_cert(env.outbox / "rsareq.cer")
        assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_encipherment
        # the certificate the CA signed is the draft that was linted, to the byte
        assert rec.drafts[-1].tbs_certificate_bytes == cert.tbs_certificate_bytes
        assert rec.drafts[-1].signature != cert.signature
        cert.verify_directly_issued_by(load_cert(env.ca_cert))
        assert lint_clean(cert.public_bytes(serialization.Encoding.DER)) == []
    finally:
        rt.close()


def test_overlong_email_local_part_passes_policy_but_not_lint(tmp_path: Path) -> None:
    """RFC 5321 limits a local part to 64 octets; the policy only bounds the address."""
    env = make_env(tmp_path / "ca")
    rt, rec = runtime(env)
    try:
        local = "a" * 65
        req, _ = openssl_csr(
            tmp_path / "u", "longmail", f"/CN=Long Mail/emailAddress={local}@example.org"
        )
        res = drop_and_process(rt, env, req, "longmail")
        assert res.outcome is Outcome.REJECTED
        reason = (env.rejected / "longmail.reason").read_text()
        assert "pkix.invalid_email_address_syntax" in reason
        assert len(rec.drafts) == 1
        certs, _ = index_of(env)
        assert certs == []
    finally:
        rt.close()


def test_lint_off_signs_what_lint_would_refuse(tmp_path: Path) -> None:
    """`[policy] lint = false` really switches it off (and shows what lint protects from)."""
    env = make_env(tmp_path / "ca", replace={**ENCIPHER_ONLY, "lint = true": "lint = false"})
    rt = Runtime.build(env.settings, SystemClock())
    try:
        assert rt.linter is None and rt.batches.recorder.linter is None
        req, _ = openssl_csr(tmp_path / "u", "ecreq", "/CN=EC User", kind="ec:prime256v1")
        res = drop_and_process(rt, env, req, "ecreq")
        assert res.outcome is Outcome.ISSUED
        der = load_cert(env.outbox / "ecreq.cer").public_bytes(serialization.Encoding.DER)
        assert any("no_ku_bits_set" in f for f in lint_clean(der))
    finally:
        rt.close()


def test_the_validator_is_built_once(tmp_path: Path) -> None:
    env = make_env(tmp_path / "ca")
    a = Runtime.build(env.settings, SystemClock())
    b = Runtime.build(env.settings, SystemClock())
    try:
        assert a.linter is b.linter is shared_linter()
        validator = shared_linter()._cert_validator
        ec_req, _ = openssl_csr(tmp_path / "u", "one", "/CN=One", kind="ec:prime256v1")
        drop_and_process(a, env, ec_req, "one")
        assert shared_linter()._cert_validator is validator
    finally:
        a.close()
        b.close()


# --- the checks after the real signature ----------------------------------------------------------


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    state = tmp_path_factory.mktemp("ca")
    create_ca(state, CASettings(common_name="Post-sign CA"), dt.datetime.now(dt.UTC))
    return state


def spec(**kw: Any) -> IssueSpec:
    now = dt.datetime.now(dt.UTC)
    base: dict[str, Any] = {
        "subject": [("CN", "Post Sign")],
        "public_key": ec.generate_private_key(ec.SECP256R1()).public_key(),
        "not_before": now,
        "not_after": now + dt.timedelta(days=30),
        "key_usage": ["digital_signature"],
        "extended_key_usage": ["client_auth"],
        "serial": random_serial(),
    }
    base.update(kw)
    return IssueSpec(**base)


def test_post_sign_checks_pass_for_a_normal_certificate(ca_dir: Path) -> None:
    ca = CertificateAuthority.load(ca_dir)
    rec = RecordingLinter(shared_linter())
    s = spec()
    cert = ca.issue(s, rec.certificate)
    assert rec.drafts[0].tbs_certificate_bytes == cert.tbs_certificate_bytes
    assert cert.public_key() == s.public_key
    assert ca.issued_this(cert) and not ca.issued_this(rec.drafts[0])


def test_a_batch_lints_everything_first_and_refuses_only_what_pkilint_refuses(
    ca_dir: Path, tmp_path: Path
) -> None:
    """issue_and_stage: all drafts are linted before the CA key signs the first; a
    refused request in the middle of a batch stages nothing and leaves the others
    (one with a key made here, as for a p12) issued in order, each from its draft."""
    ca = CertificateAuthority.load(ca_dir)
    signed_before: list[int] = []
    rec = RecordingLinter(shared_linter())

    def lint(der: bytes) -> list[str]:
        signed_before.append(len(list(tmp_path.glob("*.cer"))))
        return rec.certificate(der)

    specs = [
        spec(subject=[("CN", "First")]),
        spec(subject=[("CN", "Second")], key_usage=[]),  # no keyUsage bit: pkilint refuses
        spec(subject=[("CN", "Third")]),
    ]
    stagings = [
        Staging(cer_path=str(tmp_path / "1.cer")),
        Staging(cer_path=str(tmp_path / "2.cer")),
        Staging(
            cer_path=str(tmp_path / "3.cer"),
            p12_path=str(tmp_path / "3.p12"),
            key_type="ec-p256",
            password="correct horse",
            friendly_name="Third",
        ),
    ]
    out = ca.issue_and_stage(specs, stagings, lint)
    assert signed_before == [0, 0, 0]  # nothing signed and staged while linting
    first, refused, third = out
    assert isinstance(refused, LintError) and "would not be standards-compliant" in str(refused)
    assert not (tmp_path / "2.cer").exists()
    assert isinstance(first, Staged) and isinstance(third, Staged) and third.p12
    for i, staged in ((1, first), (3, third)):
        cert = load_cert(tmp_path / f"{i}.cer")
        assert cert.public_bytes(serialization.Encoding.DER) == staged.der
        pem = cert.public_bytes(serialization.Encoding.PEM)
        assert (tmp_path / f"{i}.cer").read_bytes() == pem  # as cryptography writes it
        assert ca.issued_this(cert)
        assert cert.tbs_certificate_bytes == rec.drafts[i - 1].tbs_certificate_bytes
        assert lint_clean(staged.der) == []
    assert [d.subject.rfc4514_string() for d in rec.drafts] == ["CN=First", "CN=Second", "CN=Third"]
    key, cert, _ = pkcs12.load_key_and_certificates(
        (tmp_path / "3.p12").read_bytes(), b"correct horse"
    )
    assert key is not None and cert is not None
    assert cert.public_key() == key.public_key() != specs[2].public_key


def _reference_tbs(ca: CertificateAuthority, s: IssueSpec) -> bytes:
    """The TBS cryptography's CertificateBuilder makes for `s`, set field by field."""
    from cryptography.hazmat.primitives.asymmetric import ec as ec_keys
    from cryptography.x509.oid import ExtendedKeyUsageOID

    key = ca._CertificateAuthority__key  # type: ignore[attr-defined]
    public = s.public_key
    names = [x509.RFC822Name(e) for e in s.emails] + [x509.DNSName(d) for d in s.dns_names]
    usages = set(s.key_usage)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(ATTRIBUTE_OIDS[n], v) for n, v in s.subject]))
        .issuer_name(ca.cert.subject)
        .public_key(public)
        .serial_number(s.serial)
        .not_valid_before(s.not_before.replace(microsecond=0))
        .not_valid_after(min(s.not_after, ca.cert.not_valid_after_utc).replace(microsecond=0))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature="digital_signature" in usages,
                content_commitment=False,
                key_encipherment="key_encipherment" in usages
                and isinstance(public, rsa.RSAPublicKey),
                data_encipherment=False,
                key_agreement="key_agreement" in usages
                and isinstance(public, ec_keys.EllipticCurvePublicKey),
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.EMAIL_PROTECTION]
            ),
            critical=False,
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=not s.subject)
    if s.crl_distribution_point:
        builder = builder.add_extension(
            x509.CRLDistributionPoints(
                [
                    x509.DistributionPoint(
                        [x509.UniformResourceIdentifier(s.crl_distribution_point)], None, None, None
                    )
                ]
            ),
            critical=False,
        )
    return builder.sign(key, ca._hash).tbs_certificate_bytes


def test_the_tbs_certdrop_encodes_is_the_one_cryptographys_builder_makes(
    ca_dir: Path, tmp_path: Path
) -> None:
    """certdrop encodes the TBSCertificate itself: byte for byte what CertificateBuilder
    makes for the same values, for EC P-256, P-384 and RSA CAs (signature algorithm
    identifiers), EC and RSA subject keys (key usages, SKI), serials of every length,
    UTCTime and GeneralizedTime (a CA valid past 2050), long names (long-form lengths),
    e-mail and DNS names, an empty subject (critical SAN), a CRL distribution point."""
    from cryptography.hazmat.primitives.asymmetric import ec as ec_keys

    now = dt.datetime.now(dt.UTC)
    cas = [CertificateAuthority.load(ca_dir)]
    for kind in ("ec-p384", "rsa-2048"):
        state = tmp_path / kind
        create_ca(state, CASettings(key_type=kind, validity_days=40 * 365), now)
        cas.append(CertificateAuthority.load(state))
    long = "x" * 64
    cases: list[dict[str, Any]] = [
        {
            "subject": [("CN", "Alice"), ("emailAddress", "a@example.org")],
            "emails": ["a@example.org"],
        },
        {"subject": [], "dns_names": ["a.example", "b.example"], "serial": 1},
        {
            "subject": [("C", "BE"), ("O", long), ("OU", long), ("L", long), ("CN", long)],
            "emails": ["long@example.org"],
            "dns_names": ["c.example"],
            "serial": (1 << 158) + 7,
            "crl_distribution_point": "http://ca.example/crl.der",
        },
        {
            "subject": [("CN", "Later")],
            "not_after": now + dt.timedelta(days=30 * 365),
            "serial": 1 << 63,
        },
        {"subject": [("CN", "Byte edge")], "serial": (1 << 127) - 1},
    ]
    keys = [
        ec_keys.generate_private_key(ec_keys.SECP256R1()).public_key(),
        ec_keys.generate_private_key(ec_keys.SECP384R1()).public_key(),
        rsa.generate_private_key(65537, 2048).public_key(),
    ]
    for ca in cas:
        for i, case in enumerate(cases):
            s = spec(
                public_key=keys[i % len(keys)],
                key_usage=["digital_signature", "key_encipherment", "key_agreement"],
                extended_key_usage=["client_auth", "email_protection"],
                **case,
            )
            assert ca._tbs(s) == _reference_tbs(ca, s), (ca.cert.subject, case)
            # the SPKI as DER (as the pipeline passes it) gives the same bytes
            der = s.public_key.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            assert ca._tbs(IssueSpec(**{**s.__dict__, "public_key": der})) == ca._tbs(s)
            cert = ca.issue(s, shared_linter().certificate)
            assert lint_clean(cert.public_bytes(serialization.Encoding.DER)) == []


def test_the_ca_key_signs_the_bytes_that_were_linted(ca_dir: Path) -> None:
    class SkewedCA(CertificateAuthority):
        # a throwaway of another algorithm than the CA key's: the TBS stays the CA's
        def _throwaway_key(self) -> Any:
            return rsa.generate_private_key(65537, 2048)

    ca = SkewedCA.load(ca_dir)
    rec = RecordingLinter(shared_linter())
    cert = ca.issue(spec(), rec.certificate)
    assert rec.drafts[0].tbs_certificate_bytes == cert.tbs_certificate_bytes


def test_a_certificate_for_another_key_is_not_released(ca_dir: Path) -> None:
    other = ec.generate_private_key(ec.SECP256R1()).public_key()

    class SwappingCA(CertificateAuthority):
        def _tbs(self, s: IssueSpec) -> bytes:
            return super()._tbs(
                IssueSpec(**{**s.__dict__, "public_key": other})  # what a bug could do
            )

    ca = SwappingCA.load(ca_dir)
    with pytest.raises(CAError, match="different public key"):
        ca.issue(spec(), shared_linter().certificate)


def test_a_certificate_naming_another_issuer_is_not_released(ca_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    create_ca(other, CASettings(common_name="Another CA"), dt.datetime.now(dt.UTC))
    another = load_cert(other / "ca.cer").subject.public_bytes()

    class MisnamingCA(CertificateAuthority):
        def _tbs(self, s: IssueSpec) -> bytes:  # what a bug could do: name that one
            mine, self._issuer_der = self._issuer_der, another
            try:
                return super()._tbs(s)
            finally:
                self._issuer_der = mine

    ca = MisnamingCA.load(ca_dir)
    with pytest.raises(CAError, match="names another issuer"):
        ca.issue(spec(), shared_linter().certificate)


def test_a_signature_that_does_not_verify_is_not_released(ca_dir: Path, tmp_path: Path) -> None:
    # the key of this CA, the certificate of another: what a mixed-up adoption would give
    other = tmp_path / "other"
    create_ca(other, CASettings(common_name="Post-sign CA"), dt.datetime.now(dt.UTC))
    mine = CertificateAuthority.load(ca_dir)
    mixed = CertificateAuthority(
        load_cert(other / "ca.cer"),
        mine._CertificateAuthority__key,  # type: ignore[attr-defined]
    )
    with pytest.raises(CAError, match="not issued by this CA"):
        mixed.issue(spec(), shared_linter().certificate)


def test_a_finding_refuses_before_the_ca_key_is_used(ca_dir: Path) -> None:
    """An injected finding: LintError with the finding as the reason, no certificate."""
    ca = CertificateAuthority.load(ca_dir)
    seen: list[bytes] = []

    def finding(der: bytes) -> list[str]:
        seen.append(der)
        return ["WARNING pkix.example_finding (injected)"]

    with pytest.raises(LintError, match=r"WARNING pkix\.example_finding \(injected\)"):
        ca.issue(spec(), finding)
    assert len(seen) == 1 and not ca.issued_this(x509.load_der_x509_certificate(seen[0]))


def test_values_the_encoder_refuses_are_a_refusal_not_a_crash(ca_dir: Path) -> None:
    ca = CertificateAuthority.load(ca_dir)
    for subject in (
        [("CN", "x"), ("serialNumber", "under_score@")],  # not a PrintableString
        [("CN", "x"), ("emailAddress", "j\u00e9@example.org")],  # not an IA5String
        [("CN", "é" * 40)],  # 40 characters, 80 bytes: more than the library's 64
    ):
        with pytest.raises(LintError, match="cannot be encoded"):
            ca.issue(spec(subject=subject), shared_linter().certificate)
        with pytest.raises(LintError, match="cannot be encoded"):
            ca.issue(spec(subject=subject), None)
    for names in (  # subjectAltName values (the policy lets none of these through)
        {"emails": ["j\u00e9@example.org"]},
        {"emails": ["Joe <joe@example.org>"]},
        {"emails": ["joe@example.org, eve@example.org"]},
        {"emails": ["joe"]},
        {"emails": ["joe@example.org\n"]},
        {"dns_names": ["b\u00fccher.example"]},
    ):
        with pytest.raises(LintError, match="cannot be encoded"):
            ca.issue(spec(**names), None)
