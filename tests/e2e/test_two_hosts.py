"""Two CA hosts on one PostgreSQL index and one shared spool, as two `certdrop run`
processes with their own state folders (two hosts on one machine).

The second host joins with `certdrop init --ca-cert --ca-key` (the index is not changed).
A burst of 1,000 requests is dropped; the leading daemon is killed -9 halfway: its claims
are taken over by the other, every request is issued exactly once, serials are unique;
the survivor takes the lead (CRL, expiry sweep, mail) within 30 s; a revocation on the
survivor reaches its CRL, and the killed host, started again, publishes that CRL to its
own files; no expiry warning is mailed twice (a real SMTP peer).

Short leases for the test: [cluster] heartbeat_seconds = 0.5, lease_seconds = 4.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.x509.oid import NameOID

from certdrop.audit import AUDIT_FILE
from certdrop.authority.responder import RESPONDER_FILE, ResponderCredentials
from certdrop.index.migrate import table_checksums
from certdrop.index.schema import certificates, mail_queue
from certdrop.index.store import Store
from conftest import CAEnv, ec_csr, make_env, wait_for
from mailpeer import SmtpPeer

BURST = 1000
LEASE = 4.0  # a heartbeat delayed by a loaded CI machine must not hand the lead over early


def _env(root: Path, spool: Path, url: str, smtp_port: int, init: bool) -> CAEnv:
    extra = f"""
[cluster]
heartbeat_seconds = 0.5
lease_seconds = {LEASE}

[expiry]
warn_days = [30]
notify_holder = true
notify_admin = false
sweep_minutes = 0.05

[mail]
enabled = true
sender = "ca@example.org"
smtp_host = "127.0.0.1"
smtp_port = {smtp_port}
timeout_seconds = 5
notify_requester = false
"""
    return make_env(
        root,
        extra,
        init=init,
        replace={
            'spool = "spool"': f'spool = "{spool}"',
            'state = "state"': f'state = "state"\ndatabase = "{url}"',
            "lint = true": "lint = false",
            # every certificate is within the 30-day warning from the start: one warning each
            "validity_days = 365\nrenew_before_days = 30": "validity_days = 20\nrenew_before_days = 5",
        },
    )


def _start(env: CAEnv, log: Path) -> subprocess.Popen[bytes]:
    e = dict(os.environ)
    e.pop("NOTIFY_SOCKET", None)
    e.pop("CERTDROP_CRASH_AT", None)
    return subprocess.Popen(
        [sys.executable, "-m", "certdrop.cli", "--config", str(env.config), "run"],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env=e,
        start_new_session=True,  # a kill -9 of the group takes its signing workers too
    )


def _host_state(env: CAEnv, host: str) -> str | None:
    """`host`'s state in `env`'s `status --json` (alive, silent, stopped)."""
    for h in _cluster(env)["hosts"]:  # type: ignore[attr-defined]
        if h["id"] == host:
            return str(h["state"])
    return None


def _cluster(env: CAEnv) -> dict[str, object]:
    res = env.cli_proc("status", "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)["cluster"]
    assert isinstance(doc, dict)
    return doc


def _crl_serials(env: CAEnv) -> set[int]:
    try:
        crl = x509.load_der_x509_crl((env.state / "crl.der").read_bytes())
    except (OSError, ValueError):
        return set()
    return {e.serial_number for e in crl}


@pytest.fixture
def peer() -> Iterator[SmtpPeer]:
    p = SmtpPeer().start()
    yield p
    p.stop()


def test_two_hosts_one_killed_mid_burst(tmp_path: Path, pg_url: str, peer: SmtpPeer) -> None:
    spool = tmp_path / "spool"
    a = _env(tmp_path / "a", spool, pg_url, peer.port, init=True)
    # the second host joins: the same CA files, the same database; the index is unchanged
    store = Store(pg_url).open()
    with store.begin() as conn:
        before = table_checksums(conn)
    b = _env(tmp_path / "b", spool, pg_url, peer.port, init=False)
    res = b.cli_proc(
        "init", "--ca-cert", str(a.state / "ca.cer"), "--ca-key", str(a.state / "ca.key")
    )
    assert res.returncode == 0, res.stderr
    assert "adopted CA" in res.stdout
    with store.begin() as conn:
        assert table_checksums(conn) == before

    # the burst, made before the daemons start (CSR making is not what is measured)
    burst = tmp_path / "burst"
    burst.mkdir()
    names = [f"user{i:04d}" for i in range(BURST)]
    for i, name in enumerate(names):
        pem, _ = ec_csr(
            "",
            [
                x509.NameAttribute(NameOID.COMMON_NAME, f"User {i}"),
                x509.NameAttribute(NameOID.EMAIL_ADDRESS, f"u{i}@example.org"),
            ],
        )
        (burst / f".{name}.req.part").write_bytes(pem)

    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        procs["a"] = _start(a, tmp_path / "a.log")
        wait_for(lambda: (a.state / "crl.der").exists(), 30, what="host a's first CRL")
        procs["b"] = _start(b, tmp_path / "b.log")
        host_a = (a.state / "host-id").read_text().strip()
        wait_for(lambda: (b.state / "host-id").exists(), 30, what="host b's id")
        host_b = (b.state / "host-id").read_text().strip()
        assert host_a != host_b  # two hosts on one machine
        wait_for(
            lambda: (
                {h["id"] for h in _cluster(b)["hosts"] if h["state"] == "alive"}  # type: ignore[attr-defined,index]
                == {host_a, host_b}
            ),
            30,
            what="both hosts alive",
        )
        doc = _cluster(b)
        assert doc["host"] == host_b and doc["leader"] == host_a
        # b publishes a's CRL to its own files
        wait_for(lambda: (b.state / "crl.der").exists(), 10, what="host b's copy of the CRL")
        assert (b.state / "crl.der").read_bytes() == (a.state / "crl.der").read_bytes()
        # b's OCSP responder key stays on b; the leader a signs its certificate
        wait_for(lambda: (b.state / RESPONDER_FILE).exists(), 30, what="b's responder")
        b_responder = ResponderCredentials.from_pem((b.state / RESPONDER_FILE).read_bytes())
        signed = [
            e
            for e in map(json.loads, (a.state / AUDIT_FILE).read_text().splitlines())
            if e.get("event") == "ocsp-responder-issued"
        ]
        assert {e["host"] for e in signed} == {host_a, host_b}
        assert f"{b_responder.cert.serial_number:X}" in {e["serial"] for e in signed}
        assert "ocsp-responder-issued" not in (b.state / AUDIT_FILE).read_text()

        for name in names:
            os.rename(burst / f".{name}.req.part", spool / "inbox" / f"{name}.req")
        wait_for(
            lambda: len(list(spool.joinpath("outbox").glob("*.cer"))) >= BURST // 2,
            60,
            interval=0.01,
            what="half of the burst issued",
        )
        # the leader dies mid-burst, with whatever it had claimed
        killed_at = time.monotonic()
        os.killpg(procs["a"].pid, signal.SIGKILL)
        # what the killed host held (a kill between two batches leaves nothing to take over)
        held = [p for p in (spool / ".claims" / host_a).rglob("*") if p.is_file()]
        procs["a"].wait(10)
        assert len(list(spool.joinpath("outbox").glob("*.cer"))) < BURST  # truly mid-burst
        wait_for(lambda: _cluster(b)["leader"] == host_b, 30, interval=0.1, what="b leads")
        takeover = time.monotonic() - killed_at
        assert takeover < 30, takeover

        outbox = spool / "outbox"
        wait_for(
            lambda: len(list(outbox.glob("*.cer"))) == BURST,
            60,
            interval=0.1,
            what="the whole burst issued",
        )
        # exactly once: one .cer per request under its own name, each request archived
        # once, nothing left in the inbox or in any host's claims
        assert sorted(p.stem for p in outbox.glob("*.cer")) == names
        assert sorted(p.name for p in (spool / "archive").iterdir()) == [f"{n}.req" for n in names]
        assert not [p for p in (spool / "inbox").rglob("*") if p.is_file()]
        assert not [p for p in (spool / ".claims").rglob("*") if p.is_file()]
        with store.begin() as conn:
            rows = conn.execute(sa.select(certificates.c.serial, certificates.c.request_name)).all()
        assert len(rows) == BURST
        assert sorted(r[1] for r in rows) == names  # one certificate per request
        serials = {int(r[0], 16) for r in rows}
        assert len(serials) == BURST
        on_disk = {
            x509.load_pem_x509_certificate((outbox / f"{n}.cer").read_bytes()).serial_number
            for n in names
        }
        assert on_disk == serials

        # a revocation on the survivor reaches its CRL
        res = b.cli_proc("revoke", "user0007", "--reason", "keyCompromise")
        assert res.returncode == 0, res.stderr
        revoked = x509.load_pem_x509_certificate((outbox / "user0007.cer").read_bytes())
        assert revoked.serial_number in _crl_serials(b)

        # the killed host comes back: it follows, and publishes the survivor's CRL
        procs["a"] = _start(a, tmp_path / "a.log")
        wait_for(lambda: revoked.serial_number in _crl_serials(a), 30, what="host a's CRL follows")
        assert (a.state / "crl.der").read_bytes() == (b.state / "crl.der").read_bytes()
        doc = _cluster(a)
        assert doc["host"] == host_a and doc["leader"] == host_b

        # mail: each certificate's one warning, sent by the leader of the moment; those
        # the killed leader had claimed wait for their claim's lease (10 min): the one it
        # may have handed to the server just before its death is not sent again
        def mail_settled() -> dict[str, set[str]] | None:
            with store.begin() as conn:
                rows = conn.execute(
                    sa.select(
                        mail_queue.c.status, mail_queue.c.message_id, mail_queue.c.next_attempt_at
                    ).where(mail_queue.c.kind == "expiry")
                ).all()
            by: dict[str, set[str]] = {"sent": set(), "claimed": set(), "cancelled": set()}
            for status, message_id, next_attempt in rows:
                if status == "queued" and next_attempt > time.time() + 60:
                    status = "claimed"
                if status not in by:
                    return None  # still due
                by[status].add(message_id)
            return by if len(rows) == BURST else None

        by = wait_for(mail_settled, 60, interval=0.2, what="the warnings sent")
        # the revoked certificate's warning is void if it was not sent before
        assert len(by["claimed"]) <= 50 and len(by["cancelled"]) <= 1, by
        peer.wait_count(len(by["sent"]), timeout=10)
        received = Counter(str(m.message["Message-ID"]) for m in peer.messages)
        assert [i for i, n in received.items() if n > 1] == []  # never twice
        assert by["sent"] <= set(received) <= by["sent"] | by["claimed"]
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        store.close()
    for log in ("a.log", "b.log"):
        assert "Traceback" not in (tmp_path / log).read_text(errors="replace"), log
    # the survivor did take requests over from the killed host
    if held:
        assert f"claimed by host {host_a}" in (tmp_path / "b.log").read_text(), held


def test_a_request_held_on_one_host_is_approved_on_the_other(
    tmp_path: Path, pg_url: str, peer: SmtpPeer
) -> None:
    """A server request with its key waits for approval after host a claimed it; host a
    stops; the operator approves on host b, which issues it with the held key (a p12)."""
    from conftest import DaemonThread

    spool = tmp_path / "spool"
    a = _env(tmp_path / "a", spool, pg_url, peer.port, init=True)
    b = _env(tmp_path / "b", spool, pg_url, peer.port, init=False)
    res = b.cli_proc(
        "init", "--ca-cert", str(a.state / "ca.cer"), "--ca-key", str(a.state / "ca.key")
    )
    assert res.returncode == 0, res.stderr
    pem, key = ec_csr("web.example.org")
    inbox = spool / "inbox" / "server"
    da = DaemonThread(a).start()
    try:
        (inbox / ".web.key.part").write_bytes(key)
        os.chmod(inbox / ".web.key.part", 0o600)
        os.rename(inbox / ".web.key.part", inbox / "web.key")
        (inbox / ".web.req.part").write_bytes(pem)
        os.rename(inbox / ".web.req.part", inbox / "web.req")
        wait_for(lambda: (spool / "pending" / "web.req").exists(), 30, what="web pending")
    finally:
        da.stop()
    # the key is held on the shared spool, not in host a's state folder
    assert not (a.state / "pending-keys").exists()
    db = DaemonThread(b).start()
    try:
        res = b.cli_proc("approve", "web")
        assert res.returncode == 0, res.stderr
        assert "issued web" in res.stdout
        wait_for(lambda: (spool / "outbox" / "web.p12").exists(), 30, what="web.p12")
    finally:
        db.stop()
    cert = x509.load_pem_x509_certificate((spool / "outbox" / "web.cer").read_bytes())
    assert cert.subject.rfc4514_string() == "CN=web.example.org"
    # the p12 holds the key dropped on host a, opened with the password host b wrote
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import pkcs12

    password = (b.state / "passwords" / "web.txt").read_text().splitlines()[0]
    bundle = pkcs12.load_pkcs12((spool / "outbox" / "web.p12").read_bytes(), password.encode())
    assert bundle.key is not None and bundle.cert is not None
    assert bundle.cert.certificate == cert
    dropped = serialization.load_pem_private_key(key, None)
    raw = serialization.PublicFormat.SubjectPublicKeyInfo
    assert bundle.key.public_key().public_bytes(
        serialization.Encoding.DER, raw
    ) == dropped.public_key().public_bytes(serialization.Encoding.DER, raw)


def test_a_frozen_host_wakes_up_and_issues_nothing_twice(
    tmp_path: Path, pg_url: str, peer: SmtpPeer
) -> None:
    """Host a is frozen (SIGSTOP) mid-burst for a few leases: b takes the lead (and a's
    claims, when a did not freeze inside a transaction on its host row); a wakes up
    (SIGCONT), records nothing for claims taken from it, and joins again. Each request
    issued once."""
    n = 300
    spool = tmp_path / "spool"
    a = _env(tmp_path / "a", spool, pg_url, peer.port, init=True)
    b = _env(tmp_path / "b", spool, pg_url, peer.port, init=False)
    res = b.cli_proc(
        "init", "--ca-cert", str(a.state / "ca.cer"), "--ca-key", str(a.state / "ca.key")
    )
    assert res.returncode == 0, res.stderr
    burst = tmp_path / "burst"
    burst.mkdir()
    names = [f"frozen{i:03d}" for i in range(n)]
    for i, name in enumerate(names):
        pem, _ = ec_csr(f"Frozen {i}")
        (burst / name).write_bytes(pem)
    store = Store(pg_url).open()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    outbox = spool / "outbox"
    try:
        procs["a"] = _start(a, tmp_path / "a.log")
        wait_for(lambda: (a.state / "crl.der").exists(), 30, what="host a's first CRL")
        procs["b"] = _start(b, tmp_path / "b.log")
        wait_for(lambda: (b.state / "crl.der").exists(), 30, what="host b's copy of the CRL")
        host_a = (a.state / "host-id").read_text().strip()
        host_b = (b.state / "host-id").read_text().strip()
        assert _cluster(b)["leader"] == host_a
        for name in names:
            os.rename(burst / name, spool / "inbox" / f"{name}.req")
        wait_for(lambda: len(list(outbox.glob("*.cer"))) >= n // 5, 60, interval=0.01)
        os.killpg(procs["a"].pid, signal.SIGSTOP)
        try:
            wait_for(lambda: _cluster(b)["leader"] == host_b, 30, interval=0.2, what="b leads")
            # frozen until b sees it silent: b takes a's claims over unless a froze inside
            # a transaction that holds its host row (the fence: then they wait for a)
            wait_for(lambda: _host_state(b, host_a) in ("silent", "stopped"), 30, what="a silent")
        finally:
            os.killpg(procs["a"].pid, signal.SIGCONT)
        wait_for(lambda: len(list(outbox.glob("*.cer"))) == n, 120, interval=0.1)
        # a is awake: alive again (registered again if it was taken for dead), not leading
        wait_for(
            lambda: (
                {h["id"]: h["state"] for h in _cluster(b)["hosts"]}  # type: ignore[attr-defined,index]
                == {host_a: "alive", host_b: "alive"}
            ),
            30,
            interval=0.2,
            what="a alive again",
        )
        assert _cluster(a)["leader"] == host_b
        # a has dropped whatever it had in hand (its claim folder is empty) and lives on
        wait_for(
            lambda: not [p for p in (spool / ".claims" / host_a).rglob("*") if p.is_file()],
            30,
            interval=0.2,
            what="a's claims dropped",
        )
        assert procs["a"].poll() is None and procs["b"].poll() is None
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    with store.begin() as conn:
        rows = conn.execute(sa.select(certificates.c.serial, certificates.c.request_name)).all()
    store.close()
    assert sorted(r[1] for r in rows) == names  # one certificate per request
    assert len({r[0] for r in rows}) == n
    assert sorted(p.stem for p in outbox.glob("*.cer")) == names
    assert sorted(p.name for p in (spool / "archive").iterdir()) == [f"{x}.req" for x in names]
    assert not [p for p in (spool / ".claims").rglob("*") if p.is_file()]
    assert not list((spool / "rejected").iterdir())  # no stale refusal from the frozen host
    for log in ("a.log", "b.log"):
        assert "Traceback" not in (tmp_path / log).read_text(errors="replace"), log


def test_a_rollover_is_refused_while_another_host_shares_the_index(
    tmp_path: Path, pg_url: str, peer: SmtpPeer
) -> None:
    """Host b may not roll over while host a runs on the same index: a would go on
    signing with the CA before. b's CA files stay as they were."""
    from conftest import DaemonThread

    spool = tmp_path / "spool"
    a = _env(tmp_path / "a", spool, pg_url, peer.port, init=True)
    b = _env(tmp_path / "b", spool, pg_url, peer.port, init=False)
    res = b.cli_proc(
        "init", "--ca-cert", str(a.state / "ca.cer"), "--ca-key", str(a.state / "ca.key")
    )
    assert res.returncode == 0, res.stderr
    before = (b.state / "ca.cer").read_bytes()
    da = DaemonThread(a).start()
    try:
        wait_for(lambda: len(_cluster(a)["hosts"]) == 1, 30, what="host a registered")  # type: ignore[arg-type]
        host_a = _cluster(a)["host"]
        res = b.cli_proc("rollover")
        assert res.returncode != 0
        assert f"other hosts share this index ({host_a})" in res.stderr
        assert "Traceback" not in res.stderr
        assert (b.state / "ca.cer").read_bytes() == before
        assert not (b.state / "cas").exists()
    finally:
        da.stop()
