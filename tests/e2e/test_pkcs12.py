"""PKCS#12 delivery: key alongside, server-side key generation, the password channel.

Every bundle is opened by the importers people use: OpenSSL, NSS (Firefox),
Java keytool and GnuTLS.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from conftest import (
    CAEnv,
    DaemonThread,
    lint_clean,
    make_env,
    openssl_csr,
    openssl_key,
    openssl_verify,
    wait_for,
    wait_result,
)


def password_for(env: CAEnv, name: str) -> str:
    lines = (env.state / "passwords" / f"{name}.txt").read_text().splitlines()
    return lines[0]


def check_with_openssl(env: CAEnv, p12: Path, password: str, tmp: Path) -> None:
    """openssl pkcs12: MAC verifies, the chain is present, the key matches the certificate."""
    out = tmp / f"{p12.stem}.pem"
    subprocess.run(
        [
            "openssl",
            "pkcs12",
            "-in",
            str(p12),
            "-passin",
            f"pass:{password}",
            "-nodes",
            "-out",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    text = out.read_text()
    assert text.count("-----BEGIN CERTIFICATE-----") == 2  # the certificate and the CA
    assert "PRIVATE KEY-----" in text
    certs = x509.load_pem_x509_certificates(out.read_bytes())
    ca = x509.load_pem_x509_certificate(env.ca_cert.read_bytes())
    assert ca in certs
    key = serialization.load_pem_private_key(out.read_bytes(), None)
    leaf = next(c for c in certs if c != ca)

    def pub(k):
        return k.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    assert pub(key.public_key()) == pub(leaf.public_key())
    info = subprocess.run(
        ["openssl", "pkcs12", "-in", str(p12), "-passin", f"pass:{password}", "-info", "-noout"],
        capture_output=True,
        text=True,
    )
    assert info.returncode == 0, info.stderr


def check_with_nss(p12: Path, password: str, tmp: Path, cn: str) -> None:
    db = tmp / f"nss-{p12.stem}"
    db.mkdir()
    subprocess.run(
        ["certutil", "-N", "-d", f"sql:{db}", "--empty-password"], check=True, capture_output=True
    )
    res = subprocess.run(
        ["pk12util", "-i", str(p12), "-d", f"sql:{db}", "-W", password],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    listing = subprocess.run(
        ["certutil", "-L", "-d", f"sql:{db}"], capture_output=True, text=True, check=True
    ).stdout
    assert cn in listing
    keys = subprocess.run(
        ["certutil", "-K", "-d", f"sql:{db}"], capture_output=True, text=True, input="\n"
    ).stdout
    assert cn in keys


def check_with_keytool(p12: Path, password: str) -> None:
    res = subprocess.run(
        [
            "keytool",
            "-list",
            "-v",
            "-storetype",
            "PKCS12",
            "-keystore",
            str(p12),
            "-storepass",
            password,
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "PrivateKeyEntry" in res.stdout
    assert "Certificate chain length: 2" in res.stdout


def check_with_gnutls(p12: Path, password: str) -> None:
    res = subprocess.run(
        ["certtool", "--p12-info", "--inder", "--infile", str(p12), "--password", password],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "MAC" in res.stdout


def assert_password_nowhere_in_spool(env: CAEnv, password: str) -> None:
    needles = [password.encode(), password.encode("utf-16-be"), password.replace("-", "").encode()]
    for path in env.spool.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            for needle in needles:
                assert needle not in data, path


def p12_env(tmp_path: Path, preset: str) -> CAEnv:
    return make_env(
        tmp_path / "ca", replace={"[watch]\n": f'[pkcs12]\nencryption = "{preset}"\n\n[watch]\n'}
    )


@pytest.mark.parametrize("preset", ["aes256", "legacy"])
@pytest.mark.parametrize("kind", ["rsa:2048", "ec:prime256v1"])
def test_key_alongside(tmp_path: Path, preset: str, kind: str) -> None:
    env = p12_env(tmp_path, preset)
    d = DaemonThread(env).start()
    try:
        name = f"user-{kind.split(':')[0]}"
        req, key = openssl_csr(
            tmp_path / "u", name, f"/CN=P12 {name}/emailAddress={name}@example.org", kind=kind
        )
        os.chmod(key, 0o600)
        env.drop(key)  # the key first, then the request
        env.drop(req)
        assert wait_result(env, name) == "outbox"
        wait_for(lambda: (env.outbox / f"{name}.p12").exists())
        p12 = env.outbox / f"{name}.p12"
        password = password_for(env, name)
        assert len(password.replace("-", "")) >= 17
        check_with_openssl(env, p12, password, tmp_path)
        check_with_nss(p12, password, tmp_path, f"P12 {name}")
        check_with_keytool(p12, password)
        check_with_gnutls(p12, password)
        bundle = pkcs12.load_pkcs12(p12.read_bytes(), password.encode())
        assert bundle.cert is not None and bundle.cert.friendly_name == f"P12 {name}".encode()
        # the key is consumed: not in the inbox, archive, rejected or work folders
        for folder in (env.inbox, env.archive, env.rejected, env.spool / "work"):
            assert not any(p.name.endswith(".key") for p in folder.rglob("*")), folder
        assert_password_nowhere_in_spool(env, password)
        pw_file = env.state / "passwords" / f"{name}.txt"
        assert stat.S_IMODE(pw_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(pw_file.parent.stat().st_mode) == 0o700
    finally:
        d.stop()


def test_key_after_request_builds_the_p12(
    ca_env: CAEnv, daemon: DaemonThread, tmp_path: Path
) -> None:
    req, key = openssl_csr(tmp_path, "late", "/CN=Late Key", kind="ec:prime256v1")
    ca_env.drop(req)
    assert wait_result(ca_env, "late") == "outbox"
    ca_env.drop(key)
    wait_for(lambda: (ca_env.outbox / "late.p12").exists(), what="late.p12")
    check_with_openssl(ca_env, ca_env.outbox / "late.p12", password_for(ca_env, "late"), tmp_path)
    assert not (ca_env.inbox / "late.key").exists()


def test_mismatched_key_is_refused(ca_env: CAEnv, daemon: DaemonThread, tmp_path: Path) -> None:
    req, _ = openssl_csr(tmp_path / "a", "mm", "/CN=Mismatch")
    other = openssl_key(tmp_path / "other.key")
    ca_env.drop(other, "mm.key")
    ca_env.drop(req)
    assert wait_result(ca_env, "mm") == "rejected"
    assert "does not belong to mm.req" in (ca_env.rejected / "mm.reason").read_text()
    assert not (ca_env.outbox / "mm.p12").exists()
    assert not list(ca_env.spool.rglob("mm.key"))


def test_orphan_key_is_refused_after_the_wait(tmp_path: Path) -> None:
    env = make_env(
        tmp_path / "ca", replace={"[watch]\n": "[pkcs12]\norphan_key_minutes = 0.02\n\n[watch]\n"}
    )
    d = DaemonThread(env).start()
    try:
        key = openssl_key(tmp_path / "lonely.key", "ec:prime256v1")
        env.drop(key)
        wait_for(lambda: (env.rejected / "lonely.reason").exists(), 30, what="orphan key refusal")
        assert "without lonely.req" in (env.rejected / "lonely.reason").read_text()
        assert not list(env.spool.rglob("lonely.key"))
    finally:
        d.stop()


def write_enrollment(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("preset", ["aes256", "legacy"])
@pytest.mark.parametrize("key_type", ["", "rsa-2048"])
def test_server_side_key_generation(tmp_path: Path, preset: str, key_type: str) -> None:
    env = p12_env(tmp_path, preset)
    d = DaemonThread(env).start()
    try:
        kt = f'key_type = "{key_type}"\n' if key_type else ""
        enr = write_enrollment(
            tmp_path / "gen.req",
            kt + '[subject]\nCN = "Gen Erated"\nemailAddress = "gen@example.org"\nOU = "MyDpt"\n',
        )
        env.drop(enr)
        assert wait_result(env, "gen") == "outbox"
        p12 = env.outbox / "gen.p12"
        wait_for(p12.exists)
        password = password_for(env, "gen")
        check_with_openssl(env, p12, password, tmp_path)
        check_with_nss(p12, password, tmp_path, "Gen Erated")
        check_with_keytool(p12, password)
        check_with_gnutls(p12, password)
        cert = x509.load_pem_x509_certificate((env.outbox / "gen.cer").read_bytes())
        assert openssl_verify(env.ca_cert, env.outbox / "gen.cer").endswith("OK")
        assert lint_clean(cert.public_bytes(serialization.Encoding.DER)) == []
        pub = cert.public_key()
        if key_type == "rsa-2048":
            assert isinstance(pub, rsa.RSAPublicKey) and pub.key_size == 2048
        else:
            assert isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.name == "secp256r1"
        assert_password_nowhere_in_spool(env, password)
        # the same enrollment text dropped again is a new request (a new key), not a re-delivery
        # (so it meets the unique-CN rule instead of getting the first certificate back)
        env.drop(enr, "gen2.req")
        assert wait_result(env, "gen2") == "rejected"
        assert "already has a valid certificate" in (env.rejected / "gen2.reason").read_text()
    finally:
        d.stop()


def test_enrollment_follows_the_policy(ca_env: CAEnv, daemon: DaemonThread, tmp_path: Path) -> None:
    bad = write_enrollment(tmp_path / "bad.req", '[subject]\nO = "NoCN"\ncolour = "blue"\n')
    ca_env.drop(bad)
    assert wait_result(ca_env, "bad") == "rejected"
    assert "colour" in (ca_env.rejected / "bad.reason").read_text()
    inj = write_enrollment(
        tmp_path / "inj.req", '[subject]\nCN = "x"\n[extensions]\nbasicConstraints = "CA:TRUE"\n'
    )
    ca_env.drop(inj)
    assert wait_result(ca_env, "inj") == "rejected"
    assert "unknown keys extensions" in (ca_env.rejected / "inj.reason").read_text()
    nocn = write_enrollment(tmp_path / "nocn.req", '[subject]\nO = "MyOrg"\n')
    ca_env.drop(nocn)
    assert wait_result(ca_env, "nocn") == "rejected"
    assert "must contain CN" in (ca_env.rejected / "nocn.reason").read_text()
    assert not list(ca_env.outbox.glob("*.p12"))


def test_profile_overrides_the_preset(tmp_path: Path) -> None:
    env = make_env(
        tmp_path / "ca",
        replace={
            "[profiles.client.subject]": 'pkcs12_encryption = "legacy"\n\n[profiles.client.subject]'
        },
    )
    d = DaemonThread(env).start()
    try:
        env.drop(write_enrollment(tmp_path / "leg.req", '[subject]\nCN = "Legacy User"\n'))
        assert wait_result(env, "leg") == "outbox"
        p12 = env.outbox / "leg.p12"
        wait_for(p12.exists)
        info = subprocess.run(
            [
                "openssl",
                "pkcs12",
                "-in",
                str(p12),
                "-passin",
                f"pass:{password_for(env, 'leg')}",
                "-info",
                "-noout",
                "-legacy",
            ],
            capture_output=True,
            text=True,
        )
        assert "pbeWithSHA1And3-KeyTripleDES-CBC" in info.stderr + info.stdout
    finally:
        d.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files to their owner needs root")
def test_outputs_belong_to_the_requester(
    ca_env: CAEnv, daemon: DaemonThread, tmp_path: Path
) -> None:
    nobody = 65534
    req, key = openssl_csr(tmp_path, "owned", "/CN=Owned", kind="ec:prime256v1")
    for src in (key, req):
        staged = ca_env.inbox / f".{src.name}.part"
        shutil.copyfile(src, staged)
        os.chown(staged, nobody, nobody)
        os.chmod(staged, 0o600)
        os.rename(staged, ca_env.inbox / src.name)
    assert wait_result(ca_env, "owned") == "outbox"
    wait_for((ca_env.outbox / "owned.p12").exists)
    cer, p12 = os.stat(ca_env.outbox / "owned.cer"), os.stat(ca_env.outbox / "owned.p12")
    assert (cer.st_uid, stat.S_IMODE(cer.st_mode)) == (nobody, 0o644)
    assert (p12.st_uid, stat.S_IMODE(p12.st_mode)) == (nobody, 0o600)


def test_same_request_again_with_its_key_gets_the_p12(
    ca_env: CAEnv, daemon: DaemonThread, tmp_path: Path
) -> None:
    req, key = openssl_csr(tmp_path, "again", "/CN=Again", kind="ec:prime256v1")
    ca_env.drop(req)
    assert wait_result(ca_env, "again") == "outbox"
    first = x509.load_pem_x509_certificate((ca_env.outbox / "again.cer").read_bytes())
    # later: the same CSR under another name, this time with its key
    old = time.time() - 60
    dropped = ca_env.drop(key, "again2.key")
    os.utime(dropped, (old, old))
    ca_env.drop(req, "again2.req")
    wait_for(lambda: (ca_env.outbox / "again2.p12").exists(), what="again2.p12")
    assert wait_result(ca_env, "again2") == "outbox"  # the request done: its key removed too
    bundle = pkcs12.load_pkcs12(
        (ca_env.outbox / "again2.p12").read_bytes(), password_for(ca_env, "again2").encode()
    )
    assert bundle.cert is not None
    assert bundle.cert.certificate.serial_number == first.serial_number  # not a second certificate
    assert not list(ca_env.spool.rglob("again2.key"))
