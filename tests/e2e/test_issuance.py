"""End to end: openssl-made requests dropped into a running daemon's inbox."""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from conftest import (
    CAEnv,
    DaemonThread,
    lint_clean,
    load_cert,
    make_env,
    openssl_csr,
    openssl_verify,
    wait_for,
    wait_result,
)


def test_howto_rsa_request_is_issued_and_verifies(
    ca_env: CAEnv, daemon: DaemonThread, tmp_path: Path
) -> None:
    req, _key = openssl_csr(tmp_path / "user", "client")
    ca_env.drop(req)
    assert wait_result(ca_env, "client") == "outbox"
    cer = ca_env.outbox / "client.cer"
    assert openssl_verify(ca_env.ca_cert, cer).endswith("OK")
    cert = load_cert(cer)
    assert lint_clean(cert.public_bytes(serialization.Encoding.DER)) == []
    # subject as requested, e-mail copied into the SAN
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Koen Van Impe"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "MyDpt"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.RFC822Name) == ["koen@example.org"]
    # the profile's usages, SHA-256, a random serial, AKI = CA's SKI
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and ku.value.key_encipherment
    assert not ku.value.key_cert_sign
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    assert cert.serial_number >= 1 << 64 and cert.serial_number.bit_length() <= 159
    ca = load_cert(ca_env.ca_cert)
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ca_ski
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())  # RFC 5280 method 1
    assert cert.not_valid_after_utc <= ca.not_valid_after_utc
    # request archived, nothing left in the inbox or work folders
    assert (ca_env.archive / "client.req").read_bytes() == req.read_bytes()
    assert [
        p.name for p in ca_env.inbox.iterdir() if p.is_file() and not p.name.startswith(".")
    ] == []
    assert list((ca_env.spool / "work" / "client").iterdir()) == []
    assert stat.S_IMODE(cer.stat().st_mode) == 0o644


def test_ec_and_der_requests(ca_env: CAEnv, daemon: DaemonThread, tmp_path: Path) -> None:
    req1, _ = openssl_csr(
        tmp_path, "ec1", "/CN=EC User/emailAddress=ec@example.org", kind="ec:prime256v1"
    )
    req2, _ = openssl_csr(tmp_path, "der1", "/CN=DER User", kind="ec:secp384r1", der=True)
    ca_env.drop(req1)
    ca_env.drop(req2)
    for name in ("ec1", "der1"):
        assert wait_result(ca_env, name) == "outbox"
        cer = ca_env.outbox / f"{name}.cer"
        assert openssl_verify(ca_env.ca_cert, cer).endswith("OK")
        cert = load_cert(cer)
        assert lint_clean(cert.public_bytes(serialization.Encoding.DER)) == []
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        assert ku.digital_signature and not ku.key_encipherment  # no encipherment for EC keys
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        assert ski == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())


def test_csr_extensions_are_not_copied(ca_env: CAEnv, daemon: DaemonThread, tmp_path: Path) -> None:
    req, _ = openssl_csr(
        tmp_path,
        "exts",
        "/CN=Ext User",
        addext=[
            "basicConstraints=critical,CA:FALSE",
            "extendedKeyUsage=codeSigning",
            "certificatePolicies=1.2.3.4",
            "subjectAltName=email:ext@example.org",
        ],
    )
    ca_env.drop(req)
    assert wait_result(ca_env, "exts") == "outbox"
    cert = load_cert(ca_env.outbox / "exts.cer")
    oids = {e.oid for e in cert.extensions}
    assert ExtensionOID.CERTIFICATE_POLICIES not in oids
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.RFC822Name) == ["ext@example.org"]


@pytest.mark.parametrize(
    ("name", "kwargs", "expect"),
    [
        ("sha1", {"digest": "-sha1"}, "SHA1"),
        ("small", {"kind": "rsa:1024"}, "at least 2048"),
        ("nocn", {"subject": "/O=MyOrg"}, "must contain CN"),
        ("ca", {"addext": ["basicConstraints=critical,CA:TRUE"]}, "CA powers"),
        ("ed", {"kind": "ed25519", "digest": ""}, "Ed25519"),
        ("twocn", {"subject": "/CN=A/CN=B"}, "2 CN"),
        ("badmail", {"subject": "/CN=X/emailAddress=not-an-address"}, "not a valid e-mail"),
    ],
)
def test_policy_refusals_have_reasons(
    ca_env: CAEnv, daemon: DaemonThread, tmp_path: Path, name: str, kwargs: dict, expect: str
) -> None:
    kwargs.setdefault("subject", f"/CN=User {name}")
    req, _ = openssl_csr(tmp_path, name, **kwargs)
    ca_env.drop(req)
    assert wait_result(ca_env, name) == "rejected"
    reason = (ca_env.rejected / f"{name}.reason").read_text()
    assert expect in reason
    assert reason.startswith(f"certdrop refused {name}.req")
    assert not (ca_env.outbox / f"{name}.cer").exists()
    assert daemon.alive()


def test_several_violations_are_all_listed(
    ca_env: CAEnv, daemon: DaemonThread, tmp_path: Path
) -> None:
    req, _ = openssl_csr(
        tmp_path, "many", "/O=MyOrg/emailAddress=bad", kind="rsa:1024", digest="-sha1"
    )
    ca_env.drop(req)
    assert wait_result(ca_env, "many") == "rejected"
    reason = (ca_env.rejected / "many.reason").read_text()
    for part in ("at least 2048", "SHA1", "must contain CN", "not a valid e-mail"):
        assert part in reason


def test_hostile_files_are_refused_without_reading(
    ca_env: CAEnv, daemon: DaemonThread, tmp_path: Path
) -> None:
    secret = ca_env.state / "ca.key"
    before = secret.read_bytes()
    os.symlink(secret, ca_env.inbox / "link.req")
    os.mkfifo(ca_env.inbox / "fifo.req")
    (ca_env.inbox / "dir.req").mkdir()
    outside = tmp_path / "outside.req"
    req, _ = openssl_csr(tmp_path / "x", "hl", "/CN=Hard Link")
    outside.write_bytes(req.read_bytes())
    os.link(outside, ca_env.inbox / "hard.req")
    big = ca_env.inbox / ".big.part"
    big.write_bytes(b"A" * (5 * 1024 * 1024))
    os.rename(big, ca_env.inbox / "big.req")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(ca_env.inbox / "sock.req"))
    try:
        expected = {
            "link": "symbolic link",
            "fifo": "FIFO",
            "dir": "directory",
            "hard": "hard-linked",
            "big": "at most 65536 bytes",
            "sock": "socket",
        }
        for name, text in expected.items():
            assert wait_result(ca_env, name) == "rejected", name
            assert text in (ca_env.rejected / f"{name}.reason").read_text(), name
    finally:
        sock.close()
    assert secret.read_bytes() == before
    assert os.path.islink(ca_env.rejected / "link.req")  # moved as it was, never followed
    assert stat.S_ISFIFO(os.lstat(ca_env.rejected / "fifo.req").st_mode)
    assert daemon.alive()


def test_names_and_ignored_files(ca_env: CAEnv, daemon: DaemonThread, tmp_path: Path) -> None:
    req, _ = openssl_csr(tmp_path, "n", "/CN=Name Test")
    for ignored in (".hidden.req", "upload.req.part", "x.tmp", "backup.req~"):
        (ca_env.inbox / ignored).write_bytes(req.read_bytes())
    ca_env.drop(req, "my cert.req")
    ca_env.drop(req, "zoë.req")
    ca_env.drop(req, "notes.txt")
    assert wait_result(ca_env, "my_cert") == "rejected"
    assert "not allowed" in (ca_env.rejected / "my_cert.reason").read_text()
    assert wait_result(ca_env, "zo_") == "rejected"
    assert wait_result(ca_env, "notes.txt") == "rejected"
    # ignored files stay where they are, untouched
    daemon.daemon.inbox.scan()  # type: ignore[union-attr]
    wait_for(lambda: len(daemon.daemon.queue) == 0)
    for ignored in (".hidden.req", "upload.req.part", "x.tmp", "backup.req~"):
        assert (ca_env.inbox / ignored).exists()


def test_garbage_files_get_reasons(ca_env: CAEnv, daemon: DaemonThread, tmp_path: Path) -> None:
    req, _ = openssl_csr(tmp_path, "g", "/CN=Garbage")
    pem = req.read_bytes()
    cases = {
        "empty": b"",
        "trunc": pem[: len(pem) // 2],
        "double": pem + pem,
        "trailing": pem + b"garbage after\n",
        "cert": ca_env.ca_cert.read_bytes(),
        "text": b"hello, please give me a certificate\n",
    }
    for name, data in cases.items():
        p = tmp_path / f"{name}.req"
        p.write_bytes(data)
        ca_env.drop(p)
    for name in cases:
        assert wait_result(ca_env, name) == "rejected", name
        reason = (ca_env.rejected / f"{name}.reason").read_text()
        assert "Traceback" not in reason and len(reason.splitlines()) >= 2
    assert "empty" in (ca_env.rejected / "empty.reason").read_text()
    assert "2 certificate signing requests" in (ca_env.rejected / "double.reason").read_text()
    assert "after" in (ca_env.rejected / "trailing.reason").read_text()
    assert (
        "certificate, not a certificate signing request"
        in (ca_env.rejected / "cert.reason").read_text()
    )
    assert daemon.alive()


def test_bad_signature_is_refused(ca_env: CAEnv, daemon: DaemonThread, tmp_path: Path) -> None:
    req, _ = openssl_csr(tmp_path, "sig", "/CN=Sig Test", der=True)
    data = bytearray(req.read_bytes())
    data[-5] ^= 0xFF  # inside the signature bit string
    bad = tmp_path / "badsig.req"
    bad.write_bytes(bytes(data))
    ca_env.drop(bad)
    assert wait_result(ca_env, "badsig") == "rejected"
    assert "proof of possession" in (ca_env.rejected / "badsig.reason").read_text()


def test_unique_cn_renewal_and_redelivery(ca_env: CAEnv, tmp_path: Path) -> None:
    import datetime as dt

    from certdrop.clock import ManualClock

    clock = ManualClock(dt.datetime.now(dt.UTC))
    ca_env.clock = clock
    d = DaemonThread(ca_env, clock).start()
    try:
        r1, _ = openssl_csr(tmp_path, "u1", "/CN=Unique Person")
        ca_env.drop(r1)
        assert wait_result(ca_env, "u1") == "outbox"
        first = load_cert(ca_env.outbox / "u1.cer")
        # the same CSR again under another name: the same certificate, not a second one
        ca_env.drop(r1, "u1again.req")
        wait_for(lambda: (ca_env.outbox / "u1again.cer").exists())
        assert load_cert(ca_env.outbox / "u1again.cer").serial_number == first.serial_number
        # a second key for the same CN while the first is valid: refused
        r2, _ = openssl_csr(tmp_path, "u2", "/CN=Unique Person")
        ca_env.drop(r2)
        assert wait_result(ca_env, "u2") == "rejected"
        assert "already has a valid certificate" in (ca_env.rejected / "u2.reason").read_text()
        # 340 days later (within renew_before_days): renewal, the old one is superseded
        clock.advance(dt.timedelta(days=340))
        r3, _ = openssl_csr(tmp_path, "u3", "/CN=Unique Person")
        ca_env.drop(r3)
        assert wait_result(ca_env, "u3") == "outbox"
        _code, out, _ = ca_env.cli("list", "--json", clock=clock)
        certs = {c["request_name"]: c for c in json.loads(out)["certificates"]}
        assert certs["u1"]["status"] == "superseded"
        assert certs["u3"]["status"] == "valid"
    finally:
        d.stop()


def test_profile_subfolder_and_manual_approval(
    ca_env: CAEnv, daemon: DaemonThread, tmp_path: Path
) -> None:
    req, _ = openssl_csr(
        tmp_path, "web", "/CN=www.example.org", addext=["subjectAltName=DNS:www.example.org"]
    )
    ca_env.drop(req, profile="server")
    assert wait_result(ca_env, "web") == "pending"
    code, out, _ = ca_env.cli("status", "--json")
    assert code == 0
    assert [p["name"] for p in json.loads(out)["pending"]] == ["web"]
    # approve through the CLI (a separate process) while the daemon runs
    proc = ca_env.cli_proc("approve", "web")
    assert proc.returncode == 0, proc.stderr
    assert "issued web" in proc.stdout
    assert wait_result(ca_env, "web") == "outbox"
    cert = load_cert(ca_env.outbox / "web.cer")
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH
    ]
    assert cert.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.DNSName) == ["www.example.org"]
    assert openssl_verify(ca_env.ca_cert, ca_env.outbox / "web.cer", "sslserver").endswith("OK")
    assert lint_clean(cert.public_bytes(serialization.Encoding.DER)) == []
    # deny another one
    req2, _ = openssl_csr(tmp_path, "web2", "/CN=mail.example.org")
    ca_env.drop(req2, profile="server")
    assert wait_result(ca_env, "web2") == "pending"
    proc = ca_env.cli_proc("deny", "web2", "--reason", "not our host")
    assert proc.returncode == 0, proc.stderr
    assert wait_result(ca_env, "web2") == "rejected"
    assert "not our host" in (ca_env.rejected / "web2.reason").read_text()
    # unknown names are clear errors
    proc = ca_env.cli_proc("approve", "nosuch")
    assert proc.returncode == 1
    assert "no pending request named nosuch" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_approve_without_running_daemon(ca_env: CAEnv, tmp_path: Path) -> None:
    d = DaemonThread(ca_env).start()
    req, _ = openssl_csr(tmp_path, "later", "/CN=later.example.org")
    ca_env.drop(req, profile="server")
    assert wait_result(ca_env, "later") == "pending"
    d.stop()
    proc = ca_env.cli_proc("approve", "later")
    assert proc.returncode == 0, proc.stderr
    assert (ca_env.outbox / "later.cer").exists()


def test_owner_binding(tmp_path: Path) -> None:
    import pwd

    me = pwd.getpwuid(os.getuid()).pw_name
    env = make_env(
        tmp_path,
        replace={
            "renew_before_days = 30\n": 'renew_before_days = 30\nowner_binding = "{owner}@example.org"\n'
        },
    )
    d = DaemonThread(env).start()
    try:
        good, _ = openssl_csr(tmp_path, "mine", f"/CN=Me/emailAddress={me}@example.org")
        bad, _ = openssl_csr(tmp_path, "theirs", "/CN=Other/emailAddress=someoneelse@example.org")
        none, _ = openssl_csr(tmp_path, "nomail", "/CN=No Mail")
        for r in (good, bad, none):
            env.drop(r)
        assert wait_result(env, "mine") == "outbox"
        assert wait_result(env, "theirs") == "rejected"
        assert f"does not belong to {me}" in (env.rejected / "theirs.reason").read_text()
        assert wait_result(env, "nomail") == "rejected"
        assert f"{me}@example.org" in (env.rejected / "nomail.reason").read_text()
    finally:
        d.stop()


def test_requests_dropped_while_down_are_processed_at_start(ca_env: CAEnv, tmp_path: Path) -> None:
    for i in range(5):
        req, _ = openssl_csr(tmp_path, f"down{i}", f"/CN=Down {i}", kind="ec:prime256v1")
        ca_env.drop(req)
    d = DaemonThread(ca_env).start()
    try:
        # READY comes after the first full scan has been processed
        for i in range(5):
            assert (ca_env.outbox / f"down{i}.cer").exists()
    finally:
        d.stop()


def test_second_daemon_refuses_to_start(ca_env: CAEnv, daemon: DaemonThread) -> None:
    proc = ca_env.cli_proc("run", timeout=30)
    assert proc.returncode != 0
    assert "another certdrop daemon" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_list_show_status_json(ca_env: CAEnv, daemon: DaemonThread, tmp_path: Path) -> None:
    req, _ = openssl_csr(
        tmp_path, "js", "/CN=Json User/emailAddress=json@example.org", kind="ec:prime256v1"
    )
    ca_env.drop(req)
    assert wait_result(ca_env, "js") == "outbox"
    code, out, _ = ca_env.cli("list", "--json")
    assert code == 0
    (c,) = json.loads(out)["certificates"]
    for key in (
        "serial",
        "subject",
        "not_before",
        "not_after",
        "status",
        "profile",
        "request_name",
    ):
        assert key in c
    assert c["status"] == "valid" and c["request_name"] == "js" and c["profile"] == "client"
    assert int(c["serial"], 16) == load_cert(ca_env.outbox / "js.cer").serial_number
    code, out, _ = ca_env.cli("show", c["serial"], "--json")
    assert json.loads(out)["certificates"][0]["subject"] == c["subject"]
    code, out, _ = ca_env.cli("show", "js", "--pem")
    assert out.startswith("-----BEGIN CERTIFICATE-----")
    code, out, _ = ca_env.cli("status", "--json")
    doc = json.loads(out)
    assert doc["certificates"]["valid"] == 1
    assert doc["daemon"]["running"] is True
    code, out, _ = ca_env.cli("status")
    assert "CA" in out and "valid 1" in out
