"""The CertificateAuthority: what it encodes, lints, signs, checks, stages, and its CRLs.

certdrop encodes a certificate's TBS and a CRL's entries itself: both are compared byte
for byte with what cryptography's builders make for the same values. The checks after
the real signature (same TBS as linted, the requested public key, this CA as issuer, a
signature that verifies under the CA) are exercised with real certificates of this CA
and of another.
"""

from __future__ import annotations

import datetime as dt
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtensionOID

from certdrop.authority.ca import EKU_OIDS, CertificateAuthority, IssueSpec, Staged, Staging
from certdrop.authority.der import pem_armor
from certdrop.authority.lifecycle import create_ca
from certdrop.authority.lint import Linter, shared_linter
from certdrop.authority.names import ATTRIBUTE_OIDS
from certdrop.authority.reasons import CRL_REASON_CODES
from certdrop.authority.serials import random_serial
from certdrop.clock import utc_seconds
from certdrop.config import CASettings
from certdrop.errors import CAError, LintError
from conftest import OPENSSL, lint_clean, load_cert, make_env, stock_linter


class RecordingLinter:
    """The real linter, remembering every draft it was shown."""

    def __init__(self, real: Linter) -> None:
        self.real = real
        self.drafts: list[x509.Certificate] = []

    def certificate(self, der: bytes) -> list[str]:
        self.drafts.append(x509.load_der_x509_certificate(der))
        return self.real.certificate(der)


def ca_key(state: Path) -> Any:
    """The CA's private key, read from the file the test's CA was created with."""
    return serialization.load_pem_private_key((state / "ca.key").read_bytes(), None)


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    state = tmp_path_factory.mktemp("ca")
    create_ca(state, CASettings(common_name="Post-sign CA"), dt.datetime.now(dt.UTC))
    return state


@pytest.fixture(scope="module")
def ca_dirs(ca_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """CAs with an EC P-256, an EC P-384 and an RSA key, the last two valid past 2050."""
    now = dt.datetime.now(dt.UTC)
    dirs = [ca_dir]
    for kind in ("ec-p384", "rsa-2048"):
        state = tmp_path_factory.mktemp(kind)
        create_ca(state, CASettings(key_type=kind, validity_days=40 * 365), now)
        dirs.append(state)
    return dirs


def spec(**kw: Any) -> IssueSpec:
    now = dt.datetime.now(dt.UTC)
    base: dict[str, Any] = {
        "subject": [("CN", "Post Sign")],
        "public_key": ec.generate_private_key(ec.SECP256R1()).public_key(),
        "not_before": now,
        "not_after": now + dt.timedelta(days=30),
        "key_usage": ["digital_signature"],
        "extended_key_usage": ["client_auth"],
        "serial": random_serial(dt.datetime.now(dt.UTC)),
    }
    base.update(kw)
    return IssueSpec(**base)


# --- the TBS certdrop encodes ------------------------------------------------------------------


def _reference_tbs(ca: CertificateAuthority, key: Any, s: IssueSpec) -> bytes:
    """The TBS cryptography's CertificateBuilder makes for `s`, set field by field, signed
    with the CA's `key` and the hash its certificate was signed with."""
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
                and isinstance(public, ec.EllipticCurvePublicKey),
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
            x509.ExtendedKeyUsage([EKU_OIDS[e] for e in s.extended_key_usage]),
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
    access = [
        x509.AccessDescription(oid, x509.UniformResourceIdentifier(url))
        for oid, url in (
            (AuthorityInformationAccessOID.OCSP, s.ocsp_url),
            (AuthorityInformationAccessOID.CA_ISSUERS, s.ca_issuers_url),
        )
        if url
    ]
    if access:
        builder = builder.add_extension(x509.AuthorityInformationAccess(access), critical=False)
    if s.ocsp_nocheck:
        builder = builder.add_extension(x509.OCSPNoCheck(), critical=False)
    return builder.sign(key, ca.cert.signature_hash_algorithm).tbs_certificate_bytes


def test_the_tbs_certdrop_encodes_is_the_one_cryptographys_builder_makes(
    ca_dirs: list[Path],
) -> None:
    """certdrop encodes the TBSCertificate itself: byte for byte what CertificateBuilder
    makes for the same values, for EC P-256, P-384 and RSA CAs (signature algorithm
    identifiers), EC and RSA subject keys (key usages, SKI), serials of every length,
    UTCTime and GeneralizedTime (a CA valid past 2050), long names (long-form lengths),
    e-mail and DNS names, an empty subject (critical SAN), a CRL distribution point, the
    authorityInfoAccess ([http] base_url: OCSP and caIssuers, or one of them), and the OCSP
    responder's own certificate (id-kp-OCSPSigning, id-pkix-ocsp-nocheck)."""
    now = dt.datetime.now(dt.UTC)
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
        {
            "subject": [("CN", "Relying parties")],
            "crl_distribution_point": "http://pki.example.org/certdrop/crl.der",
            "ocsp_url": "http://pki.example.org/certdrop/ocsp",
            "ca_issuers_url": "http://pki.example.org/certdrop/ca.cer",
        },
        {"subject": [("CN", "Only OCSP")], "ocsp_url": "http://[::1]:8080/ocsp"},
        {"subject": [("CN", "Only issuers")], "ca_issuers_url": "https://ca.example/ca.cer"},
        {
            "subject": [("O", "MyOrg"), ("CN", "Test CA OCSP responder")],
            "key_usage": ["digital_signature"],
            "extended_key_usage": ["ocsp_signing"],
            "ocsp_nocheck": True,
        },
    ]
    keys = [
        ec.generate_private_key(ec.SECP256R1()).public_key(),
        ec.generate_private_key(ec.SECP384R1()).public_key(),
        rsa.generate_private_key(65537, 2048).public_key(),
    ]
    for state in ca_dirs:
        ca, key = CertificateAuthority.load(state), ca_key(state)
        for i, case in enumerate(cases):
            s = spec(
                **{
                    "public_key": keys[i % len(keys)],
                    "key_usage": ["digital_signature", "key_encipherment", "key_agreement"],
                    "extended_key_usage": ["client_auth", "email_protection"],
                    **case,
                }
            )
            cert = ca.issue(s, shared_linter().certificate)
            assert cert.tbs_certificate_bytes == _reference_tbs(ca, key, s), (ca.cert.subject, case)
            assert lint_clean(cert.public_bytes(serialization.Encoding.DER)) == []
            # the SPKI as DER (as the pipeline passes it) gives the same bytes
            der = s.public_key.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            again = ca.issue(IssueSpec(**{**s.__dict__, "public_key": der}), None)
            assert again.tbs_certificate_bytes == cert.tbs_certificate_bytes


def test_the_ca_key_signs_the_bytes_that_were_linted(ca_dirs: list[Path]) -> None:
    """The draft pkilint sees carries a throwaway key's signature of the CA key's
    algorithm; its TBS, signature algorithm included, is the one the CA key then signs."""
    for state in ca_dirs:
        ca = CertificateAuthority.load(state)
        rec = RecordingLinter(shared_linter())
        cert = ca.issue(spec(), rec.certificate)
        (draft,) = rec.drafts
        assert draft.tbs_certificate_bytes == cert.tbs_certificate_bytes
        assert draft.signature_algorithm_oid == cert.signature_algorithm_oid
        assert draft.signature != cert.signature
        assert ca.issued_this(cert) and not ca.issued_this(draft)


def test_post_sign_checks_pass_for_a_normal_certificate(ca_dir: Path) -> None:
    ca = CertificateAuthority.load(ca_dir)
    rec = RecordingLinter(shared_linter())
    s = spec()
    cert = ca.issue(s, rec.certificate)
    assert rec.drafts[0].tbs_certificate_bytes == cert.tbs_certificate_bytes
    assert cert.public_key() == s.public_key
    assert ca.issued_this(cert) and not ca.issued_this(rec.drafts[0])
    der = cert.public_bytes(serialization.Encoding.DER)
    assert ca.check_issued(der, cert.tbs_certificate_bytes, s.public_key) == cert


# --- the checks after the real signature ----------------------------------------------------------


def test_a_certificate_for_another_key_is_not_released(ca_dir: Path) -> None:
    ca = CertificateAuthority.load(ca_dir)
    cert = ca.issue(spec(), None)
    other = ec.generate_private_key(ec.SECP256R1()).public_key()  # what a bug could ask for
    der = cert.public_bytes(serialization.Encoding.DER)
    with pytest.raises(CAError, match="different public key"):
        ca.check_issued(der, cert.tbs_certificate_bytes, other)


def test_a_certificate_naming_another_issuer_is_not_released(ca_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    create_ca(other, CASettings(common_name="Another CA"), dt.datetime.now(dt.UTC))
    s = spec()
    cert = CertificateAuthority.load(other).issue(s, None)
    der = cert.public_bytes(serialization.Encoding.DER)
    with pytest.raises(CAError, match="names another issuer"):
        CertificateAuthority.load(ca_dir).check_issued(
            der, cert.tbs_certificate_bytes, s.public_key
        )


def test_a_certificate_that_is_not_the_linted_one_is_not_released(ca_dir: Path) -> None:
    ca = CertificateAuthority.load(ca_dir)
    s = spec()
    cert = ca.issue(s, None)
    other = ca.issue(spec(public_key=s.public_key), None)  # another serial
    der = cert.public_bytes(serialization.Encoding.DER)
    with pytest.raises(CAError, match="differs from the linted one"):
        ca.check_issued(der, other.tbs_certificate_bytes, s.public_key)
    with pytest.raises(CAError, match="does not parse"):
        ca.check_issued(der[:-9], cert.tbs_certificate_bytes, s.public_key)


def test_a_signature_that_does_not_verify_is_not_released(ca_dir: Path, tmp_path: Path) -> None:
    # the key of this CA, the certificate of another: what a mixed-up adoption would give
    other = tmp_path / "other"
    create_ca(other, CASettings(common_name="Post-sign CA"), dt.datetime.now(dt.UTC))
    mixed = CertificateAuthority(load_cert(other / "ca.cer"), ca_key(ca_dir))
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


def test_serial_numbers_are_positive_and_at_most_20_octets(ca_dir: Path) -> None:
    ca = CertificateAuthority.load(ca_dir)
    for serial in (0, -1, 1 << 159):
        with pytest.raises(CAError, match="positive serial number of at most 159 bits"):
            ca.issue(spec(serial=serial), None)
    for serial in (1, (1 << 159) - 1):
        assert ca.issue(spec(serial=serial), None).serial_number == serial


def test_validity_is_cut_at_the_end_of_the_ca(ca_dir: Path) -> None:
    ca = CertificateAuthority.load(ca_dir)
    late = ca.not_after + dt.timedelta(days=1000)
    cert = ca.issue(spec(not_after=late), None)
    assert cert.not_valid_after_utc == ca.not_after.replace(microsecond=0)
    with pytest.raises(CAError, match="would end before it begins"):
        ca.issue(spec(not_before=late, not_after=late + dt.timedelta(days=1)), None)


# --- a batch: lint all, then sign and stage ----------------------------------------------------------


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


def test_a_stale_p12_is_removed_when_no_key_is_made_here(ca_dir: Path, tmp_path: Path) -> None:
    ca = CertificateAuthority.load(ca_dir)
    stale = tmp_path / "x.p12"
    stale.write_bytes(b"left by a crash")
    staging = Staging(cer_path=str(tmp_path / "x.cer"), p12_path=str(stale))
    (staged,) = ca.issue_and_stage([spec()], [staging], None)
    assert isinstance(staged, Staged) and not staged.p12
    assert not stale.exists() and (tmp_path / "x.cer").exists()


# --- CRLs --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key_type", ["ec-p256", "rsa-2048"])
def test_fast_crl_is_byte_for_byte_what_cryptography_builds(tmp_path: Path, key_type: str) -> None:
    """The CRL entries certdrop encodes itself give the very TBS cryptography's builder
    gives, for every serial size, reason and both time encodings; openssl accepts it."""
    env = make_env(tmp_path / "ca", key_type=key_type)
    ca = CertificateAuthority.load(env.state)
    rng = random.Random(5280)
    now = dt.datetime(2026, 11, 27, 8, 1, 2, 345678, tzinfo=dt.UTC)
    reasons = [*CRL_REASON_CODES, None]
    entries: list[tuple[int, dt.datetime | int, str | None]] = []
    for i in range(3000):
        bits = rng.choice([1, 7, 8, 9, 63, 64, 127, 128, 152, 158, 159])
        serial = rng.getrandbits(bits) | (1 << (bits - 1))  # exactly `bits` long: high bit set
        when = dt.datetime(2049, 12, 31, 23, 59, 59, tzinfo=dt.UTC) + dt.timedelta(
            seconds=rng.randint(-(10**9), 10**9)
        )
        entries.append(
            (serial, when if i % 2 else int(when.timestamp()), reasons[i % len(reasons)])
        )
    entries.append((1, 0, "keyCompromise"))  # 1970
    crl = ca.build_crl(entries, 42, now, now + dt.timedelta(days=7))

    built = []
    for serial, when, reason in entries:
        at = when if isinstance(when, dt.datetime) else dt.datetime.fromtimestamp(when, dt.UTC)
        b = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(utc_seconds(at))
        if reason and reason != "unspecified":
            b = b.add_extension(x509.CRLReason(x509.ReasonFlags(reason)), critical=False)
        built.append(b.build())
    reference = x509.CertificateRevocationListBuilder(
        issuer_name=ca.cert.subject,
        last_update=utc_seconds(now),
        next_update=utc_seconds(now + dt.timedelta(days=7)),
        extensions=[
            x509.Extension(x509.CRLNumber.oid, False, x509.CRLNumber(42)),
            x509.Extension(
                ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
                False,
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.cert.public_key()),  # type: ignore[arg-type]
            ),
        ],
        revoked_certificates=built,
    )
    # the TBS depends on the key's type only (its signature algorithm), not on the key
    other: Any = (
        ec.generate_private_key(ec.SECP256R1())
        if key_type.startswith("ec")
        else rsa.generate_private_key(65537, 2048)
    )
    assert crl.tbs_certlist_bytes == reference.sign(other, hashes.SHA256()).tbs_certlist_bytes
    assert crl.is_signature_valid(ca.cert.public_key())  # type: ignore[arg-type]
    assert len(crl) == len(entries)
    der = crl.public_bytes(serialization.Encoding.DER)
    assert pem_armor("X509 CRL", der) == crl.public_bytes(serialization.Encoding.PEM)
    pem = tmp_path / "crl.pem"
    pem.write_bytes(pem_armor("X509 CRL", der))
    out = subprocess.run(
        [OPENSSL, "crl", "-in", str(pem), "-CAfile", str(env.ca_cert), "-noout"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and "verify OK" in out.stdout + out.stderr, out
    # the empty CRL is cryptography's own; a serial of 21 octets is refused, as by cryptography
    assert len(ca.build_crl([], 43, now, now + dt.timedelta(days=7))) == 0
    with pytest.raises(CAError):
        ca.build_crl([(1 << 159, 0, None)], 44, now, now + dt.timedelta(days=7))


def test_crl_entries_refuse_what_a_crl_cannot_carry(ca_dir: Path) -> None:
    ca = CertificateAuthority.load(ca_dir)
    now = dt.datetime.now(dt.UTC)
    later = now + dt.timedelta(days=7)
    for bad in ((0, now, None), (-5, now, None)):
        with pytest.raises(CAError, match="positive and at most 20 octets"):
            ca.build_crl_der([bad], 1, now, later)
    for reason in ("removeFromCRL", "stolen"):  # removeFromCRL: delta CRLs only
        with pytest.raises(CAError, match="unknown revocation reason"):
            ca.build_crl_der([(5, now, reason)], 1, now, later)


def test_signed_this_crl_tells_its_own_crls_from_others(ca_dir: Path, tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    later = now + dt.timedelta(days=7)
    ca = CertificateAuthority.load(ca_dir)
    other = tmp_path / "other"
    create_ca(other, CASettings(common_name="Post-sign CA"), now)  # the same name
    entries = [(5, now, "superseded"), (6, now, None)]
    mine = ca.build_crl_der(entries, 1, now, later)
    theirs = CertificateAuthority.load(other).build_crl_der(entries, 1, now, later)
    assert ca.signed_this_crl(mine) and ca.signed_this_crl(ca.build_crl_der([], 2, now, later))
    assert not ca.signed_this_crl(theirs)
    assert not ca.signed_this_crl(mine[:-1]) and not ca.signed_this_crl(b"\x30\x80")
    crl = x509.load_der_x509_crl(mine)
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 1
    revoked = crl.get_revoked_certificate_by_serial_number(5)
    assert revoked is not None
    assert revoked.extensions.get_extension_for_class(x509.CRLReason).value.reason is (
        x509.ReasonFlags.superseded
    )
    assert stock_linter().crl(mine) == []


# --- loading, facts and bundles -------------------------------------------------------------------


def test_a_ca_key_of_another_certificate_is_refused(ca_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    create_ca(other, CASettings(common_name="Post-sign CA"), dt.datetime.now(dt.UTC))
    (other / "ca.key").write_bytes((ca_dir / "ca.key").read_bytes())
    with pytest.raises(CAError, match="does not belong to the CA certificate"):
        CertificateAuthority.load(other)


def test_facts_and_p12_bundle(ca_dirs: list[Path]) -> None:
    names = []
    for state in ca_dirs:
        ca = CertificateAuthority.load(state)
        names.append(ca.key_algorithm)
        assert ca.subject == ca.cert.subject
        assert ca.not_after == ca.cert.not_valid_after_utc
        assert ca.bundle_certificates() == [ca.cert]
        key = ec.generate_private_key(ec.SECP256R1())
        cert = ca.issue(spec(public_key=key.public_key()), None)
        p12 = ca.pkcs12_bundle(key, cert, "Alice", "pw", "aes256")
        got_key, got_cert, cas = pkcs12.load_key_and_certificates(p12, b"pw")
        assert got_cert == cert and cas == [ca.cert] and got_key is not None
    assert names == ["ec-secp256r1", "ec-secp384r1", "rsa-2048"]
