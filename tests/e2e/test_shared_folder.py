"""Many users, one shared folder: nobody's certificate is lost, renewals renew, approvals
keep the key (issue 18). Through a running daemon, with openssl as the users' tool."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from certdrop.clock import ManualClock
from conftest import OPENSSL, CAEnv, DaemonThread, make_env, openssl_csr, utc, wait_for

USERS = 50
UID0 = 30000  # the Unix owners of the users' drops (root gives each file to "its" user)


def spki(key: object) -> bytes:
    return key.public_key().public_bytes(  # type: ignore[attr-defined,no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def drop_as(env: CAEnv, src: Path, name: str, uid: int) -> None:
    """cp as user `uid`: a temporary name, given to the user, renamed into the inbox."""
    tmp = env.inbox / f".{name}.part"
    tmp.write_bytes(src.read_bytes())
    os.chown(tmp, uid, uid)
    os.rename(tmp, env.inbox / name)


def show(env: CAEnv, ref: str) -> list[dict[str, object]]:
    code, out, err = env.cli("show", ref, "--json")
    assert code == 0, err
    certs: list[dict[str, object]] = json.loads(out)["certificates"]
    return certs


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop files as 50 users")
def test_fifty_users_drop_client_req_and_nobody_loses_anything(tmp_path: Path) -> None:
    env = make_env(tmp_path / "ca")
    d = DaemonThread(env).start()
    users: dict[str, tuple[object, bool]] = {}  # CN -> (private key, dropped with the key)
    try:
        for i in range(USERS):
            cn = f"User {i:02d}"
            req, key_path = openssl_csr(
                tmp_path / f"u{i}", "client", f"/O=MyOrg/CN={cn}", kind="ec:P-256"
            )
            with_key = i % 2 == 0
            uid = UID0 + i
            if with_key:
                drop_as(env, key_path, "client.key", uid)
            drop_as(env, req, "client.req", uid)
            # one after another: the next user drops once this one's files are taken
            wait_for(lambda: not any(env.inbox.glob("client.*")), what=f"{cn}'s drop taken")
            key = serialization.load_pem_private_key(key_path.read_bytes(), None)
            users[cn] = (key, with_key)
        wait_for(lambda: len(show(env, "client")) == USERS, 60, what="50 certificates")
    finally:
        d.stop()

    certs = show(env, "client")
    by_cn = {str(c["common_name"]): c for c in certs}
    assert sorted(by_cn) == sorted(users)
    names = set()
    for cn, (key, with_key) in users.items():
        files = [Path(str(f)) for f in by_cn[cn]["files"]]  # type: ignore[union-attr]
        cer = next(f for f in files if f.suffix == ".cer")
        names.add(cer.stem)
        issued = x509.load_pem_x509_certificate(cer.read_bytes())
        assert format(issued.serial_number, "X").rjust(2, "0") == by_cn[cn]["serial"]
        assert spki(key) == issued.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if not with_key:
            assert not any(f.suffix in (".p12", ".txt") for f in files), files
            continue
        p12 = next(f for f in files if f.suffix == ".p12")
        password_file = next(f for f in files if f.suffix == ".txt")
        assert p12.stem == cer.stem == password_file.stem
        # openssl reads the password file as it is: its first line
        res = subprocess.run(
            [OPENSSL, "pkcs12", "-in", str(p12), "-nodes", "-passin", f"file:{password_file}"],
            capture_output=True,
            text=True,
        )
        assert res.returncode == 0, res.stderr
        bundle = pkcs12.load_pkcs12(
            p12.read_bytes(), password_file.read_text().splitlines()[0].encode()
        )
        assert bundle.key is not None and spki(bundle.key) == spki(key)
    # every user got a name of their own: client, client-2, ..., client-50
    assert names == {"client"} | {f"client-{n}" for n in range(2, USERS + 1)}
    assert sorted(p.name for p in env.outbox.iterdir() if p.suffix == ".cer") == sorted(
        f"{n}.cer" for n in names
    )


def test_the_same_holder_renewing_takes_the_name_over(tmp_path: Path) -> None:
    """The same RSA request bytes: re-delivered outside the renewal window, a renewal
    inside it; the renewal replaces the holder's own outputs, which go to archive/."""
    env = make_env(tmp_path / "ca")
    t0 = utc(2031, 3, 1, 12)
    clock = ManualClock(t0)
    req, key = openssl_csr(tmp_path, "alice", "/CN=Alice Renew", kind="rsa:2048")
    other_req, _ = openssl_csr(tmp_path / "o", "alice", "/CN=Another Alice", kind="rsa:2048")
    d = DaemonThread(env, clock).start()
    try:
        env.drop(key, "alice.key")
        env.drop(req, "alice.req")
        wait_for(lambda: (env.outbox / "alice.p12").exists(), what="alice's p12")
        [first] = show(env, "alice")
        # the very same bytes again, long before the end: the same certificate again
        env.drop(req, "alice.req")
        wait_for(lambda: "redelivered" in _history(env, "alice"), what="the re-delivery")
        assert [c["serial"] for c in show(env, "alice")] == [first["serial"]]
        # another holder's alice.req: its outputs go elsewhere, nothing of Alice's is touched
        env.drop(other_req, "alice.req")
        wait_for(lambda: (env.outbox / "alice-2.cer").exists(), what="the other holder's alice-2")
        # inside the renewal window (30 days before the end): the same bytes renew
        clock.set(t0 + dt.timedelta(days=365 - 20))
        env.drop(req, "alice.req")
        wait_for(lambda: len(show(env, "alice")) == 3, what="the renewal")
    finally:
        d.stop()
    mine = {c["serial"]: c for c in show(env, "alice") if c["common_name"] == "Alice Renew"}
    old = mine.pop(first["serial"])
    [new] = mine.values()
    assert old["status"] == "superseded" and old["superseded_by"] == new["serial"]
    current = x509.load_pem_x509_certificate((env.outbox / "alice.cer").read_bytes())
    assert format(current.serial_number, "X").rjust(2, "0") == new["serial"]
    # the renewed request came without its key: the holder's old p12 stays with the old cert
    archived = sorted(p.name for p in env.archive.iterdir() if ".replaced-by-" in p.name)
    assert archived == [
        f"alice.cer.replaced-by-{new['serial']}",
        f"alice.p12.replaced-by-{new['serial']}",
    ]
    assert not (env.outbox / "alice.p12").exists()
    assert sorted(map(str, old["files"])) == sorted(  # type: ignore[arg-type]
        [str(env.archive / n) for n in archived]
        + [str(env.state / "passwords" / "archive" / f"alice.txt.replaced-by-{new['serial']}")]
    )
    other = [c for c in show(env, "alice") if c["common_name"] == "Another Alice"]
    assert [Path(str(f)).name for f in other[0]["files"]] == ["alice-2.cer"]  # type: ignore[union-attr]


def _history(env: CAEnv, name: str) -> list[str]:
    code, out, _ = env.cli("show", name, "--json")
    return [h["outcome"] for h in json.loads(out)["history"]] if code == 0 else []


@pytest.mark.parametrize("decision", ["approve", "deny"])
def test_a_pending_request_keeps_its_key_for_the_approval(tmp_path: Path, decision: str) -> None:
    env = make_env(tmp_path / "ca")
    req, key = openssl_csr(
        tmp_path, "web", "/CN=www.example.org", addext=["subjectAltName=DNS:www.example.org"]
    )
    d = DaemonThread(env).start()
    try:
        env.drop(key, "web.key", profile="server")
        env.drop(req, "web.req", profile="server")
        wait_for(lambda: (env.pending / "web.req").exists(), what="pending")
        held = env.state / "pending-keys" / "web.key"
        assert held.read_bytes() == key.read_bytes()
        assert oct(held.stat().st_mode & 0o777) == "0o600"
        assert not list(env.spool.rglob("web.key"))  # never in the spool while it waits
        if decision == "approve":
            proc = env.cli_proc("approve", "web")
            assert proc.returncode == 0, proc.stderr
            wait_for(lambda: (env.outbox / "web.p12").exists(), what="the p12")
            password = (env.state / "passwords" / "web.txt").read_text().splitlines()[0]
            bundle = pkcs12.load_pkcs12((env.outbox / "web.p12").read_bytes(), password.encode())
            theirs = serialization.load_pem_private_key(key.read_bytes(), None)
            assert bundle.key is not None and spki(bundle.key) == spki(theirs)
        else:
            proc = env.cli_proc("deny", "web", "--reason", "not ours")
            assert proc.returncode == 0, proc.stderr
            wait_for(lambda: (env.rejected / "web.reason").exists(), what="the denial")
    finally:
        d.stop()
    # the key is gone from everywhere but the p12
    assert not list(env.root.rglob("web.key"))
    assert not held.exists()
