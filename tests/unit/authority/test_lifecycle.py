"""The CA in the state folder: created, adopted (and what is refused), its certificates read."""

from __future__ import annotations

import datetime as dt
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from ca_kit import cert_of
from certdrop.authority.ca import CertificateAuthority
from certdrop.authority.keys import private_key_pem
from certdrop.authority.lifecycle import (
    CA_CERT,
    CA_CHAIN,
    CA_KEY,
    adopt_ca,
    ca_exists,
    create_ca,
    load_ca_certificates,
)
from certdrop.authority.lint import shared_linter
from certdrop.config import CASettings
from certdrop.errors import CAError, LintError
from conftest import OPENSSL, lint_clean, run

NOW = dt.datetime.now(dt.UTC)


def _ca_cert(
    key: Any,
    *,
    name: str = "Built CA",
    bc: x509.BasicConstraints | None = x509.BasicConstraints(ca=True, path_length=None),
    bc_critical: bool = True,
    ku: x509.KeyUsage | None = None,
    not_after: dt.datetime | None = None,
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = x509.CertificateBuilder(
        issuer_name=subject,
        subject_name=subject,
        public_key=key.public_key(),
        serial_number=x509.random_serial_number(),
        not_valid_before=NOW - dt.timedelta(days=2),
        not_valid_after=not_after or NOW + dt.timedelta(days=365),
    )
    if bc is not None:
        builder = builder.add_extension(bc, critical=bc_critical)
    if ku is not None:
        builder = builder.add_extension(ku, critical=True)
    return builder.sign(key, hashes.SHA256())


def _key_usage(*, cert_sign: bool = True, crl_sign: bool = True) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _files(folder: Path, cert: x509.Certificate, key: Any) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / "ca.cer", folder / "ca.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(private_key_pem(key, None))
    return cert_path, key_path


# --- creating --------------------------------------------------------------------------------------


def test_create_writes_a_ca_that_lints_clean(tmp_path: Path) -> None:
    state = tmp_path / "state"
    settings = CASettings(
        common_name="New CA", organization="MyOrg", country="BE", key_type="ec-p384"
    )
    assert not ca_exists(state)
    cert = create_ca(state, settings, NOW, linter=shared_linter().certificate)
    assert ca_exists(state)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / CA_KEY).stat().st_mode) == 0o600
    assert stat.S_IMODE((state / CA_CERT).stat().st_mode) == 0o644
    assert (state / CA_CERT).read_bytes() == cert.public_bytes(serialization.Encoding.PEM)
    assert cert.subject.rfc4514_string() == "CN=New CA,O=MyOrg,C=BE"
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert bc.critical and bc.value.ca and ku.critical and ku.value.key_cert_sign
    assert ku.value.crl_sign and not ku.value.digital_signature
    assert cert.not_valid_before_utc == (NOW - dt.timedelta(minutes=5)).replace(microsecond=0)
    assert lint_clean(cert.public_bytes(serialization.Encoding.DER)) == []
    verify = run([OPENSSL, "verify", "-CAfile", str(state / CA_CERT), str(state / CA_CERT)])
    assert "OK" in verify.stdout
    ca = CertificateAuthority.load(state)
    assert ca.cert == cert and ca.key_algorithm == "ec-secp384r1"


def test_create_never_overwrites_a_ca(tmp_path: Path) -> None:
    for leftover in (CA_KEY, CA_CERT):  # either file is a CA (a crash may leave the key alone)
        state = tmp_path / leftover
        state.mkdir()
        (state / leftover).write_bytes(b"precious")
        with pytest.raises(CAError, match=r"a CA already exists in .*; certdrop never overwrites"):
            create_ca(state, CASettings(), NOW)
        assert [p.name for p in state.iterdir()] == [leftover]
        assert (state / leftover).read_bytes() == b"precious"


def test_a_ca_that_would_not_lint_clean_is_not_written(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with pytest.raises(LintError, match=r"would not lint clean: ERROR made\.up"):
        create_ca(state, CASettings(), NOW, linter=lambda der: ["ERROR made.up"])
    assert not ca_exists(state)


def test_a_passphrase_encrypts_the_key(tmp_path: Path) -> None:
    state = tmp_path / "state"
    create_ca(state, CASettings(key_type="rsa-2048"), NOW, passphrase=b"correct horse")
    assert b"ENCRYPTED PRIVATE KEY" in (state / CA_KEY).read_bytes()
    with pytest.raises(CAError, match="is encrypted"):
        CertificateAuthority.load(state)
    assert CertificateAuthority.load(state, b"correct horse").key_algorithm == "rsa-2048"


# --- adopting ----------------------------------------------------------------------------------------


def test_adopting_the_howtos_ca(tmp_path: Path) -> None:
    """ca.key + ca.cer as the howto makes them with openssl: adopted, with a warning for
    what it lacks; the key is stored 0600, encrypted with the passphrase given."""
    howto = tmp_path / "howto"
    howto.mkdir()
    key_path, cert_path = howto / "ca.key", howto / "ca.cer"
    run([OPENSSL, "genrsa", "-aes256", "-passout", "pass:pw", "-out", str(key_path), "2048"])
    subject = "/C=BE/O=MyOrg/CN=Howto CA"
    req = [OPENSSL, "req", "-x509", "-new", "-key", str(key_path), "-passin", "pass:pw"]
    run([*req, "-days", "30", "-subj", subject, "-out", str(cert_path)])
    state = tmp_path / "state"
    cert, warnings = adopt_ca(state, cert_path, key_path, NOW, passphrase=b"pw")
    assert warnings == ["the CA certificate has no keyUsage extension"]
    assert cert == x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert (state / CA_CERT).read_bytes() == cert.public_bytes(serialization.Encoding.PEM)
    assert stat.S_IMODE((state / CA_KEY).stat().st_mode) == 0o600
    assert not (state / CA_CHAIN).exists()
    ca = CertificateAuthority.load(state, b"pw")
    assert ca.cert == cert and ca.key_algorithm == "rsa-2048"
    with pytest.raises(CAError, match="a CA already exists"):
        adopt_ca(state, cert_path, key_path, NOW)


def test_adopting_an_intermediate_keeps_its_chain_in_path_order(tmp_path: Path) -> None:
    root_key, mid_key, key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = cert_of("Root", root_key, days=3650)
    mid = cert_of("Mid", mid_key, root, root_key, days=3000)
    cert_path, key_path = _files(tmp_path / "in", cert_of("Issuing", key, mid, mid_key), key)
    chain_path = tmp_path / "in" / "chain.pem"
    chain_path.write_bytes(
        b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (root, mid))
    )
    state = tmp_path / "state"
    cert, warnings = adopt_ca(state, cert_path, key_path, NOW, chain_path=chain_path)
    assert warnings == []
    assert load_ca_certificates(state) == (cert, [mid, root])
    assert CertificateAuthority.load(state).bundle_certificates() == [cert, mid, root]


def test_a_chain_that_does_not_fit_leaves_no_ca_behind(tmp_path: Path) -> None:
    """The issue's case: an intermediate with an unrelated root as its chain."""
    root_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    root = cert_of("Root", root_key, days=3650)
    unrelated = cert_of("Unrelated Root", ec.generate_private_key(ec.SECP256R1()))
    cert_path, key_path = _files(tmp_path / "in", cert_of("Issuing", key, root, root_key), key)
    state = tmp_path / "state"
    for chain in ([unrelated], []):
        chain_path = tmp_path / "in" / "chain.pem"
        chain_path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain))
        with pytest.raises(CAError, match="'CN=Root'"):
            adopt_ca(state, cert_path, key_path, NOW, chain_path=chain_path if chain else None)
        assert not state.exists()


def test_adoption_warnings(tmp_path: Path) -> None:
    key = rsa.generate_private_key(65537, 2048)
    cases = [
        (
            _ca_cert(key, bc_critical=False, ku=_key_usage()),
            "basicConstraints is not marked critical (RFC 5280 requires it for CAs)",
        ),
        (
            _ca_cert(key, ku=_key_usage(crl_sign=False)),
            "keyUsage lacks cRLSign: relying parties may reject its CRLs",
        ),
    ]
    for i, (cert, warning) in enumerate(cases):
        cert_path, key_path = _files(tmp_path / f"in{i}", cert, key)
        _, warnings = adopt_ca(tmp_path / f"state{i}", cert_path, key_path, NOW)
        assert warnings == [warning]
    # signed with SHA-1, as the howto's openssl commands did (cryptography signs no SHA-1)
    key_path = tmp_path / "sha1.key"
    key_path.write_bytes(private_key_pem(key, None))
    cert_path = tmp_path / "sha1.cer"
    req = [OPENSSL, "req", "-x509", "-new", "-sha1", "-key", str(key_path), "-days", "30"]
    ku = "keyUsage=critical,keyCertSign,cRLSign"
    run([*req, "-subj", "/CN=Old CA", "-addext", ku, "-out", str(cert_path)])
    _, warnings = adopt_ca(tmp_path / "state-sha1", cert_path, key_path, NOW)
    assert warnings == [
        "the CA certificate is signed with SHA1; certificates certdrop issues use SHA-256 "
        "regardless, but plan to replace this CA"
    ]


def test_adoption_refusals(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    other = ec.generate_private_key(ec.SECP256R1())
    small = rsa.generate_private_key(65537, 1024)
    cases: list[tuple[x509.Certificate, Any, str]] = [
        (_ca_cert(key, bc=None), key, r"is not a CA certificate \(no basicConstraints CA:TRUE\)"),
        (
            _ca_cert(key, bc=x509.BasicConstraints(ca=False, path_length=None)),
            key,
            r"is not a CA certificate \(basicConstraints CA:FALSE\)",
        ),
        (
            _ca_cert(key, ku=_key_usage(cert_sign=False)),
            key,
            r"may not sign certificates \(keyUsage lacks keyCertSign\)",
        ),
        (_ca_cert(key, not_after=NOW - dt.timedelta(days=1)), key, "expired on"),
        (_ca_cert(key), other, "is not the private key of"),
        (_ca_cert(small), small, "the CA key has only 1024 bits; at least 2048 are required"),
    ]
    for i, (cert, cert_key, refusal) in enumerate(cases):
        cert_path, key_path = _files(tmp_path / f"in{i}", cert, cert_key)
        state = tmp_path / f"state{i}"
        with pytest.raises(CAError, match=refusal):
            adopt_ca(state, cert_path, key_path, NOW)
        assert not state.exists(), refusal  # nothing written


def test_adoption_refuses_files_it_cannot_use(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert_path, key_path = _files(tmp_path / "in", _ca_cert(key), key)
    state = tmp_path / "state"
    with pytest.raises(CAError, match=r"cannot read .*missing\.cer: No such file"):
        adopt_ca(state, tmp_path / "missing.cer", key_path, NOW)
    with pytest.raises(CAError, match=r"ca\.key is not a certificate"):
        adopt_ca(state, key_path, key_path, NOW)
    with pytest.raises(CAError, match=r"ca\.cer cannot be loaded: wrong passphrase or not a PEM"):
        adopt_ca(state, cert_path, cert_path, NOW)
    bad_chain = tmp_path / "in" / "chain.pem"
    bad_chain.write_bytes(b"not PEM")
    with pytest.raises(CAError, match="cannot read the chain"):
        adopt_ca(state, cert_path, key_path, NOW, chain_path=bad_chain)
    assert not state.exists()


# --- reading the CA certificates -------------------------------------------------------------------


def test_the_ca_certificates_without_the_key(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with pytest.raises(CAError, match=r"^no CA in .*; create one with 'certdrop init'$"):
        load_ca_certificates(state)
    cert = create_ca(state, CASettings(), NOW)
    assert load_ca_certificates(state) == (cert, [])
    assert load_ca_certificates(state, check_key=True) == (cert, [])
    # the key is not needed ... unless asked for
    (state / CA_KEY).rename(tmp_path / "away.key")
    assert load_ca_certificates(state) == (cert, [])
    with pytest.raises(CAError, match=r"^no CA in "):
        load_ca_certificates(state, check_key=True)
    (tmp_path / "away.key").rename(state / CA_KEY)
    # a CA certificate written as DER is read too
    (state / CA_CERT).write_bytes(cert.public_bytes(serialization.Encoding.DER))
    assert load_ca_certificates(state, check_key=True)[0] == cert


def test_a_ca_key_others_can_read_is_refused_where_the_key_is_checked(tmp_path: Path) -> None:
    state = tmp_path / "state"
    cert = create_ca(state, CASettings(), NOW)
    key_path = state / CA_KEY
    os.chmod(key_path, 0o640)
    with pytest.raises(CAError) as caught:
        load_ca_certificates(state, check_key=True)
    assert str(caught.value) == (
        f"the CA key {key_path} is readable by group or others (mode 0640); "
        f"run 'chmod 600 {key_path}'"
    )
    with pytest.raises(CAError, match="readable by group or others"):
        CertificateAuthority.load(state)
    assert load_ca_certificates(state) == (cert, [])  # apache-config needs no key


def test_unreadable_ca_certificates_are_one_clear_error(tmp_path: Path) -> None:
    state = tmp_path / "state"
    create_ca(state, CASettings(), NOW)
    good = (state / CA_CERT).read_bytes()
    (state / CA_CHAIN).write_bytes(
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    )
    with pytest.raises(CAError, match=f"^cannot read the CA certificate in {state}: "):
        load_ca_certificates(state)
    (state / CA_CHAIN).unlink()
    for bad in (good[:100], b"not a certificate"):
        (state / CA_CERT).write_bytes(bad)
        for check_key in (False, True):
            with pytest.raises(CAError, match=f"^cannot read the CA certificate in {state}: "):
                load_ca_certificates(state, check_key=check_key)
