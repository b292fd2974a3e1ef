"""`certdrop init` (create and adopt), `certdrop check-config` (cli/setup.py)."""

from __future__ import annotations

import datetime as dt
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ca_kit import cert_of, new_key
from conftest import (
    CAEnv,
    DaemonThread,
    lint_clean,
    make_env,
    openssl_csr,
    openssl_verify,
    run,
    wait_result,
)


def test_check_config_prints_effective_values(ca_env: CAEnv) -> None:
    code, out, _ = ca_env.cli("check-config")
    assert code == 0
    assert "[profiles.client]" in out and "validity_days = 365" in out
    assert "configuration is valid" in out


def test_config_from_environment_variable(ca_env: CAEnv) -> None:
    e = {k: v for k, v in os.environ.items() if not k.startswith("CERTDROP_")}
    e["CERTDROP_CONFIG"] = str(ca_env.config)
    proc = subprocess.run(
        [sys.executable, "-m", "certdrop.cli", "check-config", "--json"],
        capture_output=True,
        text=True,
        env=e,
    )
    assert proc.returncode == 0, proc.stderr
    assert '"common_name": "Test CA"' in proc.stdout


@pytest.mark.parametrize("key_type", ["ec-p256", "ec-p384", "rsa-2048", "rsa-3072"])
def test_init_creates_a_clean_root(tmp_path: Path, key_type: str) -> None:
    env = make_env(tmp_path, key_type=key_type)
    assert stat.S_IMODE(env.state.stat().st_mode) == 0o700
    assert stat.S_IMODE((env.state / "ca.key").stat().st_mode) == 0o600
    ca = x509.load_pem_x509_certificate(env.ca_cert.read_bytes())
    der = ca.public_bytes(serialization.Encoding.DER)
    assert lint_clean(der) == []
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert ca.signature_hash_algorithm is not None
    assert ca.signature_hash_algorithm.name in ("sha256", "sha384")
    assert ca.serial_number >= 1 << 64
    pub = ca.public_key()
    if key_type.startswith("rsa"):
        assert isinstance(pub, rsa.RSAPublicKey) and pub.key_size == int(key_type[4:])
    else:
        assert isinstance(pub, ec.EllipticCurvePublicKey)
    # openssl agrees it is a CA
    out = run(["openssl", "x509", "-in", str(env.ca_cert), "-noout", "-text"]).stdout
    assert "CA:TRUE" in out
    for sub in ("inbox", "outbox", "rejected", "pending", "archive"):
        assert (env.spool / sub).is_dir()


def test_init_never_overwrites(ca_env: CAEnv) -> None:
    before = ca_env.ca_cert.read_bytes(), (ca_env.state / "ca.key").read_bytes()
    code, _, err = ca_env.cli("init")
    assert code != 0
    assert "never overwrites" in err
    assert (ca_env.ca_cert.read_bytes(), (ca_env.state / "ca.key").read_bytes()) == before


def howto_ca(folder: Path) -> tuple[Path, Path]:
    """The CA exactly as ../shared/reference/client-cert-howto.txt makes it (SHA-1!)."""
    folder.mkdir(parents=True, exist_ok=True)
    cnf = folder / "openssl.cnf"
    cnf.write_text(
        "[ req ]\ndefault_md = sha1\ndistinguished_name = req_distinguished_name\n"
        "[ req_distinguished_name ]\ncountryName = Country\nlocalityName = Locality\n"
        "organizationName = Organization\norganizationalUnitName = Unit\n"
        "emailAddress = emailaddress\ncommonName = Common Name\n"
        "[ certauth ]\nsubjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid:always,issuer:always\n"
        "basicConstraints = CA:true\n"
    )
    run(
        [
            "openssl",
            "req",
            "-config",
            str(cnf),
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyform",
            "PEM",
            "-keyout",
            str(folder / "ca.key"),
            "-x509",
            "-days",
            "3650",
            "-extensions",
            "certauth",
            "-outform",
            "PEM",
            "-out",
            str(folder / "ca.cer"),
            "-subj",
            "/C=BE/L=Brussels/O=MyOrg/OU=MyDpt/CN=MyOrg CA",
        ]
    )
    return folder / "ca.cer", folder / "ca.key"


def test_adopt_the_howto_ca(tmp_path: Path) -> None:
    cer, key = howto_ca(tmp_path / "myca")
    env = make_env(tmp_path / "x", init=False)
    code, out, err = env.cli("init", "--ca-cert", str(cer), "--ca-key", str(key))
    assert code == 0, err
    assert "adopted CA" in out
    assert "SHA1" in out and "basicConstraints is not marked critical" in out
    assert stat.S_IMODE((env.state / "ca.key").stat().st_mode) == 0o600
    d = DaemonThread(env).start()
    try:
        req, _ = openssl_csr(tmp_path / "u", "koen")
        env.drop(req)
        assert wait_result(env, "koen") == "outbox"
        assert openssl_verify(cer, env.outbox / "koen.cer").endswith("OK")
        cert = x509.load_pem_x509_certificate((env.outbox / "koen.cer").read_bytes())
        assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
        assert lint_clean(cert.public_bytes(serialization.Encoding.DER)) == []
    finally:
        d.stop()


def test_adopt_refuses_mismatched_key_and_non_ca(tmp_path: Path) -> None:
    cer, _ = howto_ca(tmp_path / "a")
    _, key2 = howto_ca(tmp_path / "b")
    env = make_env(tmp_path / "x", init=False)
    code, _, err = env.cli("init", "--ca-cert", str(cer), "--ca-key", str(key2))
    assert code != 0 and "is not the private key" in err
    # an end-entity certificate is not a CA
    req, k = openssl_csr(tmp_path / "ee", "ee", "/CN=ee")
    ee = tmp_path / "ee.cer"
    run(
        [
            "openssl",
            "x509",
            "-req",
            "-in",
            str(req),
            "-signkey",
            str(k),
            "-out",
            str(ee),
            "-days",
            "10",
        ]
    )
    code, _, err = env.cli("init", "--ca-cert", str(ee), "--ca-key", str(k))
    assert code != 0 and "not a CA certificate" in err
    assert not (env.state / "ca.cer").exists()


def test_adopt_refuses_a_chain_of_another_root(tmp_path: Path) -> None:
    """init --ca-cert inter.cer --ca-key inter.key --ca-chain unrelated-root.pem: refused
    with the reason, one line, and no CA behind."""
    root_key, key = new_key(), new_key()
    root = cert_of("Root CA", root_key, days=3650)
    inter = cert_of("Issuing CA", key, root, root_key, path_length=0)
    pki = tmp_path / "pki"
    pki.mkdir()
    (pki / "inter.cer").write_bytes(inter.public_bytes(serialization.Encoding.PEM))
    (pki / "inter.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (pki / "unrelated.pem").write_bytes(
        cert_of("Unrelated Root", new_key()).public_bytes(serialization.Encoding.PEM)
    )
    env = make_env(tmp_path / "x", init=False)
    args = ["--ca-cert", str(pki / "inter.cer"), "--ca-key", str(pki / "inter.key")]
    proc = env.cli_proc("init", *args, "--ca-chain", str(pki / "unrelated.pem"))
    assert proc.returncode == 1
    assert proc.stderr == (
        "certdrop: error: the chain has no certificate of 'CN=Root CA', the issuer of "
        "'CN=Issuing CA': it must lead to a self-signed root\n"
    )
    assert not env.state.exists()
    (pki / "root.pem").write_bytes(root.public_bytes(serialization.Encoding.PEM))
    code, _, err = env.cli("init", *args, "--ca-chain", str(pki / "root.pem"))
    assert code == 0, err
    assert (env.state / "chain.pem").read_bytes() == (pki / "root.pem").read_bytes()


def test_ca_key_readable_by_others_is_refused(ca_env: CAEnv) -> None:
    os.chmod(ca_env.state / "ca.key", 0o644)
    proc = ca_env.cli_proc("status")
    assert proc.returncode == 1
    assert "readable by group or others" in proc.stderr and "chmod 600" in proc.stderr


def test_validity_never_past_the_ca(tmp_path: Path) -> None:
    env = make_env(
        tmp_path, replace={'key_type = "ec-p256"\n': 'key_type = "ec-p256"\nvalidity_days = 100\n'}
    )
    d = DaemonThread(env).start()
    try:
        req, _ = openssl_csr(tmp_path / "u", "long", "/CN=Long Lived", kind="ec:prime256v1")
        env.drop(req)
        assert wait_result(env, "long") == "outbox"
        cert = x509.load_pem_x509_certificate((env.outbox / "long.cer").read_bytes())
        ca = x509.load_pem_x509_certificate(env.ca_cert.read_bytes())
        assert cert.not_valid_after_utc == ca.not_valid_after_utc
        assert cert.not_valid_after_utc - dt.datetime.now(dt.UTC) < dt.timedelta(days=101)
    finally:
        d.stop()
