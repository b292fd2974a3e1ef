"""`certdrop rollover`: a new CA takes over issuing in a running daemon and at the next
start; the CA before is retiring (its certificates revocable on its own, fresh CRL) until
its last certificate ends, then retired; two tiers under the offline root.
(Apache's side: tests/e2e/test_apache.py.)"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from certdrop.authority.lifecycle import ca_id
from certdrop.authority.serials import serial_hex
from certdrop.clock import ManualClock
from certdrop.errors import CAError
from conftest import (
    CAEnv,
    DaemonThread,
    load_cert,
    make_env,
    openssl_csr,
    openssl_verify,
    stock_linter,
    wait_for,
    wait_result,
)

DER = serialization.Encoding.DER
PASS = "correct horse battery staple\n"


def _issue(env: CAEnv, folder: Path, name: str) -> tuple[x509.Certificate, Path]:
    req, key = openssl_csr(folder, name, f"/CN={name.title()} Example")
    env.drop(req)
    assert wait_result(env, name) == "outbox"
    return load_cert(env.outbox / f"{name}.cer"), key


def _status(env: CAEnv) -> dict[str, Any]:
    code, out, err = env.cli("status", "--json")
    assert code == 0, err
    doc: dict[str, Any] = json.loads(out)
    return doc


def sn(cert: x509.Certificate) -> str:
    return serial_hex(cert.serial_number)


def _crl(path: Path) -> x509.CertificateRevocationList:
    return x509.load_der_x509_crl(path.read_bytes())


def _number(crl: x509.CertificateRevocationList) -> int:
    return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)


def test_rollover_in_a_running_daemon(tmp_path: Path) -> None:
    t0 = dt.datetime.now(dt.UTC).replace(microsecond=0)
    clock = ManualClock(t0)
    env = make_env(tmp_path / "ca")
    env.clock = clock
    old_ca = load_cert(env.ca_cert)
    old_key = (env.state / "ca.key").read_bytes()
    d = DaemonThread(env, clock).start()
    try:
        alice, _ = _issue(env, tmp_path / "u", "alice")
        alice.verify_directly_issued_by(old_ca)
        old_crl_number = _number(_crl(env.state / "crl.der"))

        # the operator, in another process, while the daemon runs
        res = env.cli_proc("rollover")
        assert res.returncode == 0, res.stderr
        new_ca = load_cert(env.ca_cert)
        assert (
            f"the CA CN=Test CA,O=MyOrg,C=BE serial {sn(new_ca)} (valid until "
            f"{new_ca.not_valid_after_utc:%Y-%m-%d}) issues from now on; the CA "
            f"CN=Test CA,O=MyOrg,C=BE serial {sn(old_ca)} is retiring"
        ) in res.stdout
        # the same names (Apache's issuer rule keeps matching), another key
        assert new_ca.subject == old_ca.subject and ca_id(new_ca) != ca_id(old_ca)
        assert not stock_linter().certificate(new_ca.public_bytes(DER))
        # the old CA's files are kept, never overwritten
        old_folder = env.state / "cas" / ca_id(old_ca)
        assert (old_folder / "ca.key").read_bytes() == old_key
        assert load_cert(old_folder / "ca.cer") == old_ca
        assert (env.state / "ca.key").read_bytes() != old_key

        # the next certificate is the new CA's: no restart
        bob, _ = _issue(env, tmp_path / "u", "bob")
        bob.verify_directly_issued_by(new_ca)
        assert openssl_verify(env.ca_cert, env.outbox / "bob.cer").endswith(": OK")
        assert "OK" not in openssl_verify(env.ca_cert, env.outbox / "alice.cer")

        # a p12 built now carries the new CA
        req, key = openssl_csr(tmp_path / "u", "carol", "/CN=Carol Example")
        os.chmod(key, 0o600)
        env.drop(key)
        env.drop(req)
        assert wait_result(env, "carol") == "outbox"
        wait_for(lambda: (env.outbox / "carol.p12").exists(), what="carol.p12")
        password = (env.state / "passwords" / "carol.txt").read_text().splitlines()[0]
        p12 = pkcs12.load_pkcs12((env.outbox / "carol.p12").read_bytes(), password.encode())
        assert [c.certificate for c in p12.additional_certs] == [new_ca]

        # both CRLs: the new CA's in the state folder, the retiring one's in cas/<id>/
        new_crl, old_crl = _crl(env.state / "crl.der"), _crl(old_folder / "crl.der")
        assert new_crl.is_signature_valid(new_ca.public_key())  # type: ignore[arg-type]
        assert old_crl.is_signature_valid(old_ca.public_key())  # type: ignore[arg-type]
        assert _number(new_crl) > old_crl_number
        assert {c["state"]: (c["serial"], c["key_id"]) for c in _status(env)["cas"]} == {
            "current": (sn(new_ca), ca_id(new_ca)),
            "retiring": (sn(old_ca), ca_id(old_ca)),
        }
        retiring = next(c for c in _status(env)["cas"] if c["state"] == "retiring")
        assert retiring["certificates_until"] == alice.not_valid_after_utc.isoformat()
        assert retiring["crl_next_update"] == old_crl.next_update_utc.isoformat()
        code, out, _ = env.cli("status")
        line = next(ln for ln in out.splitlines() if ln.startswith("cas"))
        assert f"retiring CN=Test CA,O=MyOrg,C=BE serial {sn(old_ca)} (until " in line
        assert f"; CRL until {old_crl.next_update_utc:%Y-%m-%d %H:%M} UTC)" in line

        # show says which CA issued each
        code, out, err = env.cli("show", "alice", "--json")
        assert code == 0, err
        assert [c["ca"] for c in json.loads(out)["certificates"]] == [ca_id(old_ca)]

        # revoking each lands on its own CA's CRL
        code, out, err = env.cli("revoke", "alice")
        assert code == 0, err
        assert f"(the CRL of the retiring CA CN=Test CA,O=MyOrg,C=BE serial {sn(old_ca)})" in out
        old_after = _crl(old_folder / "crl.der")
        assert old_after.get_revoked_certificate_by_serial_number(alice.serial_number)
        assert _number(old_after) > _number(old_crl)
        assert old_after.is_signature_valid(old_ca.public_key())  # type: ignore[arg-type]
        assert not _crl(env.state / "crl.der").get_revoked_certificate_by_serial_number(
            alice.serial_number
        )
        code, _, err = env.cli("revoke", "bob")
        assert code == 0, err
        current = _crl(env.state / "crl.der")
        assert current.get_revoked_certificate_by_serial_number(bob.serial_number)
        assert _number(current) > _number(old_after)  # never backwards, across the CAs
        verdict = openssl_verify(
            old_folder / "ca.cer", env.outbox / "alice.cer", crl=old_folder / "crl.pem"
        )
        assert "certificate revoked" in verdict
        for path in (env.state / "crl.der", old_folder / "crl.der"):
            assert not stock_linter().crl(path.read_bytes()), path
    finally:
        d.stop()

    # the next start: the new CA still issues, the old one still retiring, its CRL kept fresh
    clock.set(t0 + dt.timedelta(days=30))
    d = DaemonThread(env, clock).start()
    try:
        assert load_cert(env.ca_cert) == new_ca
        dave, _ = _issue(env, tmp_path / "u", "dave")
        dave.verify_directly_issued_by(new_ca)
        refreshed = _crl(old_folder / "crl.der")
        assert refreshed.last_update_utc >= t0 + dt.timedelta(days=30)  # due after 23 days
        assert refreshed.get_revoked_certificate_by_serial_number(alice.serial_number)

        # once alice's certificate has ended (the last of the old CA's), the CA is retired
        clock.set(alice.not_valid_after_utc + dt.timedelta(minutes=1))
        d.daemon.jobs.crl()
        cas = {c["state"]: c for c in _status(env)["cas"]}
        assert cas["retired"]["serial"] == sn(old_ca)
        assert "retiring" not in cas
        assert d.daemon.rt is not None and d.daemon.rt.crls is not None
        assert d.daemon.rt.crls.retiring() == []
    finally:
        d.stop()


def test_rollover_without_a_daemon_takes_effect_at_the_next_start(tmp_path: Path) -> None:
    env = make_env(tmp_path / "ca")
    old_ca = load_cert(env.ca_cert)
    code, out, err = env.cli("rollover")
    assert code == 0, err
    assert "the daemon signs with it from its next start" in out
    new_ca = load_cert(env.ca_cert)
    assert ca_id(new_ca) != ca_id(old_ca)
    # a CA that issued nothing is retired at once: nothing of it needs a CRL
    states = {c["serial"]: c["state"] for c in _status(env)["cas"]}
    assert states == {sn(new_ca): "current", sn(old_ca): "retired"}
    code, out, _ = env.cli("status")
    assert f"current CN=Test CA,O=MyOrg,C=BE serial {sn(new_ca)} (until " in out
    assert _crl(env.state / "crl.der").is_signature_valid(new_ca.public_key())  # type: ignore[arg-type]
    # a second rollover: every CA's files kept
    code, out, err = env.cli("rollover")
    assert code == 0, err
    assert ca_id(load_cert(env.ca_cert)) not in (ca_id(old_ca), ca_id(new_ca))
    assert len(list((env.state / "cas").iterdir())) == 3


def test_two_tier_rollover_under_the_offline_root(tmp_path: Path) -> None:
    env = make_env(tmp_path / "ca", init=False)
    (tmp_path / "root-pass").write_text(PASS)
    media = tmp_path / "media"
    root_args = [
        "--offline-root",
        str(media),
        "--root-passphrase-file",
        str(tmp_path / "root-pass"),
    ]
    code, _, err = env.cli("init", *root_args)
    assert code == 0, err
    old_ca = load_cert(env.ca_cert)
    code, _, err = env.cli("rollover")
    assert code != 0 and "--offline-root DIR" in err

    code, out, err = env.cli("rollover", *root_args)
    assert code == 0, err
    assert f"signed by the offline root in {media}" in out
    new_ca = load_cert(env.ca_cert)
    root = load_cert(media / "root.cer")
    assert new_ca.issuer == root.subject and ca_id(new_ca) != ca_id(old_ca)
    new_ca.verify_directly_issued_by(root)
    bc = new_ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca and bc.path_length == 0
    assert not stock_linter().certificate(new_ca.public_bytes(DER))
    chain = env.state / "chain.pem"
    assert x509.load_pem_x509_certificates(chain.read_bytes()) == [root]

    d = DaemonThread(env).start()
    try:
        erin, _ = _issue(env, tmp_path / "u", "erin")
    finally:
        d.stop()
    erin.verify_directly_issued_by(new_ca)
    res = subprocess.run(
        ["openssl", "verify", "-CAfile", str(media / "root.cer"), "-untrusted",
         str(env.ca_cert), "-purpose", "sslclient", str(env.outbox / "erin.cer")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert res.returncode == 0 and res.stdout.strip().endswith(": OK"), res.stdout + res.stderr
    assert not stock_linter().crl((env.state / "crl.der").read_bytes())


def test_a_backup_after_a_rollover_restores_both_cas(tmp_path: Path) -> None:
    """backup and restore carry cas/: restored, the daemon signs with the new CA, the old
    one is still retiring (its key as stored, a fresh CRL numbered above the old one's) and
    its certificates still revocable on its CRL."""
    env = make_env(tmp_path / "ca")
    old_ca = load_cert(env.ca_cert)
    d = DaemonThread(env).start()
    try:
        alice, _ = _issue(env, tmp_path / "u", "alice")
        code, _, err = env.cli("rollover")
        assert code == 0, err
        new_ca = load_cert(env.ca_cert)
        old_folder = env.state / "cas" / ca_id(old_ca)
        old_number = _number(_crl(old_folder / "crl.der"))
        res = env.cli_proc("backup", str(tmp_path / "backup"))
        assert res.returncode == 0, res.stderr
    finally:
        d.stop()

    fresh = make_env(tmp_path / "restored", init=False)
    code, out, err = fresh.cli("restore", str(tmp_path / "backup"))
    assert code == 0, err
    assert f"cas/{ca_id(old_ca)}/crl.der" in out  # left out: made afresh
    restored_old = fresh.state / "cas" / ca_id(old_ca)
    assert (restored_old / "ca.key").read_bytes() == (old_folder / "ca.key").read_bytes()
    d = DaemonThread(fresh).start()
    try:
        assert load_cert(fresh.ca_cert) == new_ca
        bob, _ = _issue(fresh, tmp_path / "u2", "bob")
        bob.verify_directly_issued_by(new_ca)
        states = {c["key_id"]: c["state"] for c in _status(fresh)["cas"]}
        assert states == {ca_id(new_ca): "current", ca_id(old_ca): "retiring"}
        code, out, err = fresh.cli("revoke", "alice")
        assert code == 0, err
        crl = _crl(restored_old / "crl.der")
        assert crl.get_revoked_certificate_by_serial_number(alice.serial_number)
        assert crl.is_signature_valid(old_ca.public_key())  # type: ignore[arg-type]
        assert _number(crl) > old_number
    finally:
        d.stop()


def test_a_daemon_that_cannot_switch_stops_and_starts_with_the_new_ca(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The files are switched but the daemon cannot build its new runtime (a fault put in
    its place): the operator is told, the daemon stops with exit status 1 (the service
    manager restarts it) and signs with the new CA from its next start."""
    env = make_env(tmp_path / "ca")
    d = DaemonThread(env).start()

    def cannot_build(settings: object) -> object:
        raise CAError("the disk went away")

    monkeypatch.setattr(d.daemon, "_runtime", cannot_build)
    code, _, err = env.cli("rollover")
    assert code == 1
    assert "but the daemon could not switch to it (the disk went away)" in err
    d.thread.join(timeout=60)
    assert not d.thread.is_alive() and d.daemon.exit_code == 1
    monkeypatch.undo()

    new_ca = load_cert(env.ca_cert)
    d = DaemonThread(env).start()
    try:
        frank, _ = _issue(env, tmp_path / "u", "frank")
        frank.verify_directly_issued_by(new_ca)
    finally:
        d.stop()


def test_serve_publishes_the_retiring_cas_crl(tmp_path: Path) -> None:
    """certdrop serve: /crl.der is the current CA's; the retiring CA's CRL (and
    certificate) under /cas/<key id>/, as status --json names it; anything else is 404."""
    from serve_kit import curl, free_port, serve_config, start_serve

    port = free_port()
    env = make_env(tmp_path / "ca", extra=serve_config(port))
    old_ca = load_cert(env.ca_cert)
    d = DaemonThread(env).start()
    try:
        alice, _ = _issue(env, tmp_path / "u", "alice")
        for args in (["rollover"], ["revoke", "alice"]):
            code, _, err = env.cli(*args)
            assert code == 0, err
        new_ca = load_cert(env.ca_cert)
        srv = start_serve(env, port)
        try:
            status, _, body = curl(f"{srv.url}/crl.der")
            assert status == 200
            assert x509.load_der_x509_crl(body).is_signature_valid(new_ca.public_key())  # type: ignore[arg-type]
            base = f"{srv.url}/cas/{ca_id(old_ca)}"
            status, headers, body = curl(f"{base}/crl.der")
            assert status == 200 and headers["content-type"] == "application/pkix-crl"
            old_crl = x509.load_der_x509_crl(body)
            assert old_crl.is_signature_valid(old_ca.public_key())  # type: ignore[arg-type]
            assert old_crl.get_revoked_certificate_by_serial_number(alice.serial_number)
            status, _, body = curl(f"{base}/ca.cer")
            assert status == 200 and x509.load_der_x509_certificate(body) == old_ca
            for path in (f"{base}/ca.key", "/cas/../ca.key", f"/cas/{'ab' * 32}/crl.der"):
                status, _, _ = curl(srv.url + path if path.startswith("/") else path)
                assert status == 404, path
        finally:
            assert srv.stop() == 0, srv.output()
    finally:
        d.stop()
