"""A two-tier CA: the offline root in its folder, the issuing CA it signs, the root's CRLs.

openssl is the judge of the chains and the name constraints, pkilint of every shape.
"""

from __future__ import annotations

import datetime as dt
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from certdrop.authority.ca import CertificateAuthority, IssueSpec
from certdrop.authority.lifecycle import CA_CERT, CA_CHAIN, CA_KEY, CHAIN_CRLS, ROOT_CRL_FILE
from certdrop.authority.lint import shared_linter
from certdrop.authority.offline_root import (
    ROOT_CERT,
    ROOT_CRL,
    ROOT_INDEX,
    ROOT_KEY,
    OfflineRoot,
    create_two_tier,
)
from certdrop.authority.serials import random_serial, serial_hex
from certdrop.config import CASettings
from certdrop.errors import CAError
from conftest import OPENSSL, lint_clean, stock_linter

NOW = dt.datetime.now(dt.UTC)
PASS = b"root secret"
SETTINGS = CASettings(
    common_name="Issuing CA",
    organization="MyOrg",
    country="BE",
    permitted_email_domains=["example.org"],
    root_crl_days=365,
)


def _two_tier(tmp_path: Path, settings: CASettings = SETTINGS) -> tuple[Path, Path]:
    state, root_dir = tmp_path / "state", tmp_path / "media" / "root"
    linter = shared_linter()
    create_two_tier(state, root_dir, settings, NOW, None, PASS, linter.certificate, linter.crl)
    return state, root_dir


def _pem(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _verify(root: Path, untrusted: Path, leaf: Path, *crls: Path) -> str:
    cmd = [OPENSSL, "verify", "-CAfile", str(root), "-untrusted", str(untrusted)]
    for crl in crls:
        cmd += ["-crl_check_all", "-CRLfile", str(crl)]
    res = subprocess.run([*cmd, str(leaf)], capture_output=True, text=True)
    return (res.stdout + res.stderr).strip()


def test_the_root_key_is_only_in_its_folder_and_everything_lints_clean(tmp_path: Path) -> None:
    state, root_dir = _two_tier(tmp_path)
    assert sorted(p.name for p in root_dir.iterdir()) == sorted(
        [ROOT_KEY, ROOT_CERT, ROOT_INDEX, ROOT_CRL]
    )
    assert stat.S_IMODE(root_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((root_dir / ROOT_KEY).stat().st_mode) == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in (root_dir / ROOT_KEY).read_bytes()
    names = sorted(str(p.relative_to(state)) for p in state.rglob("*"))
    assert names == sorted([CA_KEY, CA_CERT, CA_CHAIN, CHAIN_CRLS, f"{CHAIN_CRLS}/{ROOT_CRL_FILE}"])
    root = x509.load_pem_x509_certificate((root_dir / ROOT_CERT).read_bytes())
    assert (state / CA_CHAIN).read_bytes() == (root_dir / ROOT_CERT).read_bytes()
    ca = CertificateAuthority.load(state)
    assert ca.chain == (root,)
    assert root.subject.rfc4514_string() == "CN=Issuing CA Root,O=MyOrg,C=BE"
    assert ca.cert.issuer == root.subject
    root_bc = root.extensions.get_extension_for_class(x509.BasicConstraints).value
    bc = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert root_bc.path_length == 1 and bc.critical and bc.value.path_length == 0
    nc = ca.cert.extensions.get_extension_for_class(x509.NameConstraints)
    assert nc.critical and nc.value.permitted_subtrees == [x509.RFC822Name("example.org")]
    aki = ca.cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    crl = x509.load_pem_x509_crl((state / CHAIN_CRLS / ROOT_CRL_FILE).read_bytes())
    assert crl.issuer == root.subject and crl.is_signature_valid(root.public_key())
    assert crl.next_update_utc - crl.last_update_utc == dt.timedelta(days=365)
    assert (root_dir / ROOT_CRL).read_bytes() == (state / CHAIN_CRLS / ROOT_CRL_FILE).read_bytes()
    der = serialization.Encoding.DER
    assert lint_clean(root.public_bytes(der)) == []
    assert lint_clean(ca.cert.public_bytes(der)) == []
    assert stock_linter().crl(crl.public_bytes(der)) == []


def test_issued_certificates_verify_up_to_the_root_within_the_constraints(
    tmp_path: Path,
) -> None:
    state, root_dir = _two_tier(tmp_path)
    ca = CertificateAuthority.load(state)
    issuing_crl = tmp_path / "issuing.crl"
    issuing_crl.write_bytes(
        ca.build_crl([], 1, NOW, NOW + dt.timedelta(days=7)).public_bytes(
            serialization.Encoding.PEM
        )
    )

    def leaf(email: str) -> Path:
        cert = ca.issue(
            IssueSpec(
                subject=[("CN", "Alice"), ("emailAddress", email)],
                public_key=ec.generate_private_key(ec.SECP256R1()).public_key(),
                not_before=NOW,
                not_after=NOW + dt.timedelta(days=30),
                key_usage=["digital_signature"],
                extended_key_usage=["client_auth"],
                emails=[email],
                serial=random_serial(NOW),
            ),
            shared_linter().certificate,
        )
        return _pem(tmp_path / f"{email}.cer", cert)

    root_file, chain_file = root_dir / ROOT_CERT, state / CA_CERT
    root_crl = state / CHAIN_CRLS / ROOT_CRL_FILE
    inside = leaf("alice@example.org")
    assert _verify(root_file, chain_file, inside).endswith(": OK")
    assert _verify(root_file, chain_file, inside, root_crl, issuing_crl).endswith(": OK")
    outside = leaf("alice@elsewhere.net")
    assert "permitted subtree violation" in _verify(root_file, chain_file, outside)


def test_the_root_signs_its_next_crls_and_revokes_issuing_cas(tmp_path: Path) -> None:
    state, root_dir = _two_tier(tmp_path)
    with pytest.raises(CAError, match="wrong passphrase"):
        OfflineRoot.open(root_dir, b"guess")
    with pytest.raises(CAError, match="needs its passphrase"):
        OfflineRoot.open(root_dir, None)
    with pytest.raises(CAError, match=r"no offline root in .*is the right medium mounted"):
        OfflineRoot.open(tmp_path, PASS)
    root = OfflineRoot.open(root_dir, PASS)
    first = x509.load_pem_x509_crl((root_dir / ROOT_CRL).read_bytes())
    number = first.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    crl = root.sign_crl(NOW, 30)  # the same time again: still a higher number
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == number + 1
    ca = CertificateAuthority.load(state)
    with pytest.raises(CAError, match="the root signed no CA with serial 0BAD; it signed: "):
        root.revoke_ca("0BAD", "keyCompromise", NOW)
    serial = serial_hex(ca.cert.serial_number)
    revoked = root.revoke_ca(serial.lower(), "keyCompromise", NOW)
    assert (revoked.serial, revoked.reason) == (serial, "keyCompromise")
    with pytest.raises(CAError, match="is already revoked"):
        root.revoke_ca(serial, "keyCompromise", NOW)
    crl = OfflineRoot.open(root_dir, PASS).sign_crl(NOW, 30, shared_linter().crl)
    [entry] = list(crl)
    assert entry.serial_number == ca.cert.serial_number
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason == x509.ReasonFlags.key_compromise
    assert stock_linter().crl(crl.public_bytes(serialization.Encoding.DER)) == []


def test_an_existing_root_signs_another_issuing_ca_and_nothing_is_overwritten(
    tmp_path: Path,
) -> None:
    state, root_dir = _two_tier(tmp_path)
    root_key = (root_dir / ROOT_KEY).read_bytes()
    with pytest.raises(CAError, match="a root CA already exists"):
        OfflineRoot.create(root_dir, SETTINGS, NOW, PASS)
    with pytest.raises(CAError, match="a CA already exists in"):
        create_two_tier(state, root_dir, SETTINGS, NOW, None, PASS)
    with pytest.raises(CAError, match="is inside the state folder"):
        create_two_tier(tmp_path / "s2", tmp_path / "s2" / "root", SETTINGS, NOW, None, PASS)
    assert not (tmp_path / "s2").exists()
    made = create_two_tier(tmp_path / "s3", root_dir, SETTINGS, NOW, b"ca secret", PASS)
    assert not made.new_root and (root_dir / ROOT_KEY).read_bytes() == root_key
    assert made.root == CertificateAuthority.load(state).chain[0]
    assert len(OfflineRoot.open(root_dir, PASS).signed) == 2
    assert CertificateAuthority.load(tmp_path / "s3", b"ca secret").cert == made.ca
