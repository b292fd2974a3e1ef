"""Expiry warnings, renewal, the p12 password by mail and operator alerts, end to end.

Certificates are made from openssl requests by the real issue layer; mail goes to a
real SMTP server (aiosmtpd on 127.0.0.1); days pass on a ManualClock.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import re
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from certdrop.clock import ManualClock
from certdrop.index.mailqueue import list_queue
from certdrop.index.schema import expiry_warnings, mail_queue
from certdrop.index.store import CertRecord
from certdrop.issue.outcomes import Outcome
from certdrop.notify.expiry import SweepConfig, SweepReport, sweep
from certdrop.notify.mailer import PASSWORD_SCRUBBED, FlushReport
from certdrop.service.runtime import Runtime
from conftest import (
    OPENSSL,
    CAEnv,
    DaemonThread,
    load_cert,
    make_env,
    openssl_csr,
    wait_for,
    wait_result,
)
from mailpeer import Received, SmtpPeer, free_port, mail_config

ALICE = "/C=BE/O=MyOrg/OU=MyDpt/emailAddress=alice@example.org/CN=Alice Example"
ADMIN = "admin@example.org"


@pytest.fixture
def peer() -> Iterator[SmtpPeer]:
    p = SmtpPeer().start()
    yield p
    p.stop()


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


class Harness:
    """A CA with mail on, driven directly: batches, sweep and queue flush at clock time."""

    def __init__(self, env: CAEnv, clock: ManualClock) -> None:
        self.env = env
        self.clock = clock
        self.rt = Runtime.build(env.settings, clock)
        self.users = env.root / "users"

    def close(self) -> None:
        self.rt.close()

    def restart(self) -> None:
        self.rt.close()
        self.rt = Runtime.build(self.env.settings, self.clock)

    def issue(
        self, name: str, subject: str = ALICE, *, with_key: bool = False, kind: str = "ec:P-256"
    ) -> str:
        req, key = openssl_csr(self.users, name, subject, kind=kind)
        if with_key:
            dropped = self.env.drop(key)
            # a key that finished arriving a while ago (the pipeline waits for fresh ones)
            old = time.time() - 60
            os.utime(dropped, (old, old))
        return self.process(self.env.drop(req))

    def process(self, path: Path, profile: str = "client") -> str:
        res = self.rt.batches.handle_inbox_file(path, profile)
        assert res.outcome is Outcome.ISSUED, res
        assert res.serial is not None
        return res.serial

    def cert(self, serial: str) -> CertRecord:
        with self.rt.store.begin() as conn:
            rec = self.rt.store.get(conn, serial)
        assert rec is not None
        return rec

    def at(self, serial: str, days_left: float) -> None:
        self.clock.set(self.cert(serial).not_after - dt.timedelta(days=days_left))

    def sweep(self) -> SweepReport:
        return sweep(
            self.rt.store,
            SweepConfig.from_settings(self.rt.settings),
            self.rt.ca.bundle_certificates(),
            self.clock.now(),
        )

    def flush(self) -> FlushReport:
        assert self.rt.mailer is not None
        return self.rt.mailer.flush(self.clock.now())

    def warned(self, serial: str) -> set[int]:
        with self.rt.store.begin() as conn:
            rows = conn.execute(
                sa.select(expiry_warnings.c.threshold).where(expiry_warnings.c.serial == serial)
            )
            return {int(t) for (t,) in rows}


def harness(tmp_path: Path, port: int, **kw: str) -> Harness:
    env = make_env(tmp_path, extra=mail_config(port, admin=f"CA Admin <{ADMIN}>", **kw))
    return Harness(env, ManualClock(now_utc()))


@pytest.fixture
def h(tmp_path: Path, peer: SmtpPeer) -> Iterator[Harness]:
    hh = harness(tmp_path, peer.port)
    yield hh
    hh.close()


def holder_mails(peer: SmtpPeer, addr: str = "alice@example.org") -> list[Received]:
    return [m for m in peer.to(addr) if "expires" in m.subject]


# --- thresholds --------------------------------------------------------------------------------------
def test_one_mail_per_threshold_tightest_first_never_twice(h: Harness, peer: SmtpPeer) -> None:
    serial = h.issue("alice")
    rec = h.cert(serial)

    h.at(serial, 40)
    assert h.sweep().holder_mails == [] and h.flush().sent == 0

    h.at(serial, 29.5)  # crosses 30
    report = h.sweep()
    assert report.holder_mails == [serial] and report.digest == [serial]
    assert h.flush().sent == 2
    [mail] = holder_mails(peer)
    msg = mail.message
    assert msg["To"].addresses[0].display_name == "Alice Example"
    assert mail.subject == (
        f"[certdrop] your certificate Alice Example expires in 29 days ({rec.not_after:%Y-%m-%d})"
    )
    text = mail.text
    assert rec.subject in text and serial in text
    assert f"{rec.not_after:%Y-%m-%d %H:%M:%S} UTC (notAfter)" in text
    assert "Days left:    29" in text
    assert "How to renew: drop a new request" in text
    assert f"{h.env.inbox}/alice.req" in text
    [digest] = peer.to(ADMIN)
    assert digest.subject == "[certdrop] 1 certificate expiring soon"
    assert serial in digest.text and "holder warned at alice@example.org" in digest.text
    assert "(30-day warning)" in digest.text
    assert h.warned(serial) == {30}

    # later sweeps, and a restart, repeat nothing
    h.at(serial, 29)
    assert h.sweep().holder_mails == []
    h.restart()
    h.at(serial, 8)
    assert h.sweep().holder_mails == [] and h.flush().sent == 0

    h.at(serial, 6.5)  # crosses 7
    assert h.sweep().holder_mails == [serial]
    h.at(serial, 0.5)  # crosses 1
    assert h.sweep().holder_mails == [serial]
    assert h.flush().sent == 4
    subjects = [m.subject for m in holder_mails(peer)]
    assert [s.split(" expires ")[1].split(" (")[0] for s in subjects] == [
        "in 29 days",
        "in 6 days",
        "in less than a day",
    ]
    assert h.warned(serial) == {30, 7, 1}

    h.at(serial, -0.1)  # expired: nothing more
    assert h.sweep().holder_mails == [] and h.flush().sent == 0
    assert len(peer.messages) == 6  # 3 holder mails + 3 digests


def test_a_late_first_warning_is_the_tightest_only(h: Harness, peer: SmtpPeer) -> None:
    serial = h.issue("bob", "/emailAddress=bob@example.org/CN=Bob")
    h.at(serial, 5)  # never warned: 30 and 7 are both crossed
    assert h.sweep().holder_mails == [serial]
    assert h.warned(serial) == {30, 7}
    h.flush()
    [mail] = holder_mails(peer, "bob@example.org")
    assert "expires in 5 days" in mail.subject
    assert "(7-day warning)" in peer.to(ADMIN)[0].text
    h.at(serial, 4)
    assert h.sweep().holder_mails == []
    assert h.flush().sent == 0


def test_revoked_superseded_expired_and_unmailable(h: Harness, peer: SmtpPeer) -> None:
    revoked = h.issue("carol", "/emailAddress=carol@example.org/CN=Carol")
    nomail = h.issue("dave", "/CN=Dave Without Mail")
    with h.rt.store.begin() as conn:
        h.rt.store.revoke(conn, revoked, "keyCompromise", h.clock.now())
    h.at(nomail, 3)
    report = h.sweep()
    assert report.holder_mails == [] and report.digest == [nomail]
    h.flush()
    assert peer.to("carol@example.org") == []
    [digest] = peer.to(ADMIN)
    assert "Carol" not in digest.text
    assert "NO e-mail address in the certificate: the holder was not warned" in digest.text


# --- renewal ------------------------------------------------------------------------------------------
def _commands(text: str) -> list[str]:
    return [
        line.strip() for line in text.splitlines() if line.startswith(("    openssl ", "    cp "))
    ]


def test_renewing_as_the_mail_says_supersedes_and_silences(
    h: Harness, peer: SmtpPeer, tmp_path: Path
) -> None:
    old = h.issue("alice", kind="rsa:2048")
    h.at(old, 20)
    h.sweep()
    h.flush()
    [mail] = holder_mails(peer)
    # the holder does exactly what the mail says, in a folder of their own
    cmds = _commands(mail.text)
    assert len(cmds) == 2 and cmds[0].startswith("openssl req -new") and "rsa:2048" in cmds[0]
    home = tmp_path / "alice-home"
    home.mkdir()
    for cmd in cmds:
        subprocess.run(cmd, shell=True, cwd=home, check=True, capture_output=True)
    new = h.process(h.env.inbox / "alice.req")  # the profile says CN unique: still issued
    assert new != old
    assert h.cert(old).status == "superseded" and h.cert(old).superseded_by == new
    assert h.cert(new).subject == h.cert(old).subject
    verify = subprocess.run(
        [
            OPENSSL,
            "verify",
            "-CAfile",
            str(h.env.ca_cert),
            "-purpose",
            "sslclient",
            "-attime",
            str(int(h.clock.now().timestamp())),
            str(h.env.outbox / "alice.cer"),
        ],
        capture_output=True,
        text=True,
    )
    assert verify.stdout.strip().endswith("OK"), verify.stdout + verify.stderr
    assert load_cert(h.env.outbox / "alice.cer").serial_number == int(new, 16)

    # the old certificate's later thresholds pass in silence
    h.at(old, 5)
    assert h.sweep().holder_mails == []
    h.at(old, 0.5)
    assert h.sweep().holder_mails == []
    assert h.flush().sent == 0
    assert len(holder_mails(peer)) == 1
    assert h.warned(old) == {30}


def test_a_queued_warning_is_dropped_when_the_certificate_is_renewed(
    h: Harness, peer: SmtpPeer
) -> None:
    old = h.issue("alice")
    h.at(old, 10)
    assert h.sweep().holder_mails == [old]  # queued, not sent yet (SMTP busy, say)
    h.issue("alice-renewal")  # same CN, inside the renewal window
    assert h.cert(old).status == "superseded"
    report = h.flush()
    assert report.cancelled == 1 and report.sent == 1  # the admin digest still goes
    assert holder_mails(peer) == []
    with h.rt.store.begin() as conn:
        [cancelled] = [m for m in list_queue(conn) if m.status == "cancelled"]
    assert "superseded" in str(cancelled.last_error)


def test_key_generated_certificates_are_renewed_with_an_enrollment(
    h: Harness, peer: SmtpPeer, tmp_path: Path
) -> None:
    enroll = tmp_path / "erin.req"
    enroll.write_text('[subject]\nCN = "Erin Ünal"\nemailAddress = "erin@example.org"\n')
    old = h.process(h.env.drop(enroll))
    h.flush()  # the password mail of erin.p12
    h.at(old, 15)
    h.sweep()
    h.flush()
    [mail] = holder_mails(peer, "erin@example.org")
    assert mail.message["To"].addresses[0].display_name == "Erin Ünal"
    text = mail.text
    block = text.split("small text file with this content:\n\n")[1].split("\n\n")[0]
    toml = "\n".join(line.removeprefix("    ") for line in block.splitlines())
    assert toml.startswith("[subject]") and 'CN = "Erin Ünal"' in toml
    renewal = tmp_path / "renewal"
    renewal.mkdir()
    (renewal / "erin.req").write_text(toml + "\n", encoding="utf-8")
    new = h.process(h.env.drop(renewal / "erin.req"))
    assert h.cert(old).status == "superseded" and h.cert(new).key_generated
    assert "password of\nerin.p12 comes by a separate mail" in text


# --- the p12 password -----------------------------------------------------------------------------------
def _p12_opens(p12: Path, password: str) -> bool:
    res = subprocess.run(
        [OPENSSL, "pkcs12", "-in", str(p12), "-passin", f"pass:{password}", "-nokeys", "-noout"],
        capture_output=True,
        text=True,
    )
    return res.returncode == 0


def test_the_password_goes_by_mail_and_never_with_the_p12(h: Harness, peer: SmtpPeer) -> None:
    serial = h.issue("alice", with_key=True)
    p12 = h.env.outbox / "alice.p12"
    assert p12.exists()
    assert not (h.env.state / "passwords" / "alice.txt").exists()
    assert h.flush().sent == 1
    [mail] = peer.messages
    assert mail.rcpt_tos == ["alice@example.org"]
    assert mail.subject == "[certdrop] password for your certificate alice.p12"
    m = re.search(r"The password to import alice\.p12 is:\n\n    (\S+)\n", mail.text)
    assert m is not None
    password = m.group(1)
    assert _p12_opens(p12, password)  # the real thing: openssl opens the bundle with it
    assert not _p12_opens(p12, password + "x")
    # the mail carries no bundle: one text/plain part, none of the p12's bytes
    msg = mail.message
    assert not msg.is_multipart() and list(msg.iter_attachments()) == []
    assert msg.get_content_type() == "text/plain"
    data = p12.read_bytes()
    assert data[:64] not in mail.data
    assert base64.b64encode(data)[:40] not in mail.data
    assert "NOT attached to this mail" in mail.text and serial in mail.text
    # and the password does not stay in the index once sent
    with h.rt.store.begin() as conn:
        [row] = [q for q in list_queue(conn) if q.kind == "password"]
    assert row.status == "sent" and row.body == PASSWORD_SCRUBBED


def test_without_an_address_the_password_goes_to_the_file_and_the_admin_is_told(
    h: Harness, peer: SmtpPeer
) -> None:
    h.issue("nomail", "/CN=No Mail User", with_key=True)
    pw_file = h.env.state / "passwords" / "nomail.txt"
    assert stat.S_IMODE(pw_file.stat().st_mode) == 0o600
    password = pw_file.read_text().splitlines()[0]
    assert _p12_opens(h.env.outbox / "nomail.p12", password)
    h.flush()
    [alert] = peer.messages
    assert alert.rcpt_tos == [ADMIN]
    assert str(pw_file) in alert.text and password not in alert.text


def test_password_delivery_file_keeps_passwords_out_of_mail(tmp_path: Path, peer: SmtpPeer) -> None:
    hh = harness(tmp_path, peer.port, delivery="file")
    try:
        hh.issue("alice", with_key=True)
        assert (hh.env.state / "passwords" / "alice.txt").exists()
        assert hh.flush().sent == 0 and peer.messages == []
    finally:
        hh.close()


# --- operator alerts ----------------------------------------------------------------------------------
def test_ca_and_crl_alerts(h: Harness, peer: SmtpPeer) -> None:
    ca = load_cert(h.env.ca_cert)
    end = ca.not_valid_after_utc
    h.clock.set(end - dt.timedelta(days=100))
    assert h.sweep().alerts == []
    h.clock.set(end - dt.timedelta(days=20))  # 90 and 30 crossed: one alert
    assert len(h.sweep().alerts) == 1
    assert h.sweep().alerts == []
    h.clock.set(end - dt.timedelta(days=6))
    assert len(h.sweep().alerts) == 1
    h.flush()
    subjects = [m.subject for m in peer.to(ADMIN)]
    assert subjects == [
        "[certdrop] the CA certificate CN=Test CA,O=MyOrg,C=BE expires in 20 days",
        "[certdrop] the CA certificate CN=Test CA,O=MyOrg,C=BE expires in 6 days",
    ]

    # the CRL: the key written by the CRL publisher (epoch seconds or ISO 8601)
    h.clock.set(now_utc())
    with h.rt.store.begin() as conn:
        h.rt.store.set_meta(
            conn, "crl_next_update", str(int((h.clock.now() + dt.timedelta(days=5)).timestamp()))
        )
    assert h.sweep().alerts == []  # refreshed in time: quiet
    h.clock.advance(dt.timedelta(days=4))  # one day left, refresh_before_days = 3
    [stale] = h.sweep().alerts
    assert "was not refreshed" in stale
    assert h.sweep().alerts == []
    with h.rt.store.begin() as conn:
        h.rt.store.set_meta(
            conn, "crl_next_update", (h.clock.now() - dt.timedelta(hours=1)).isoformat()
        )
    [expired] = h.sweep().alerts
    assert "EXPIRED: Apache refuses every client certificate" in expired
    h.flush()
    assert "certdrop crl" in peer.to(ADMIN)[-1].text


# --- the daemon -------------------------------------------------------------------------------------------
def _daemon(env: CAEnv, clock: ManualClock) -> DaemonThread:
    d = DaemonThread(env, clock)
    d.daemon.jobs.mail_flush_seconds = 0.2
    return d


def _rows(env: CAEnv) -> list[dict[str, object]]:
    engine = sa.create_engine(env.settings.database_url)
    try:
        with engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.select(mail_queue))]
    finally:
        engine.dispose()


def test_the_daemon_announces_pending_requests(tmp_path: Path, peer: SmtpPeer) -> None:
    env = make_env(tmp_path, extra=mail_config(peer.port, admin=ADMIN))
    d = _daemon(env, ManualClock(now_utc())).start()
    try:
        req, _ = openssl_csr(
            tmp_path / "u",
            "web",
            "/CN=www.example.org",
            addext=["subjectAltName=DNS:www.example.org"],
        )
        env.drop(req, profile="server")
        assert wait_result(env, "web") == "pending"
        [alert] = peer.wait_count(1)
        assert alert.rcpt_tos == [ADMIN]
        assert alert.subject == "[certdrop] request web waits for approval (server)"
        assert "certdrop approve web" in alert.text and "CN=www.example.org" in alert.text
        d.daemon.jobs.expiry_sweep()  # the sweep would announce it too, but it was announced
        assert len([r for r in _rows(env) if r["kind"] == "alert"]) == 1
    finally:
        d.stop()


def test_warnings_are_sent_once_across_daemon_restarts(tmp_path: Path, peer: SmtpPeer) -> None:
    env = make_env(tmp_path, extra=mail_config(peer.port, admin=ADMIN))
    clock = ManualClock(now_utc())
    d = _daemon(env, clock).start()
    try:
        req, _ = openssl_csr(tmp_path / "u", "alice", ALICE)
        env.drop(req)
        assert wait_result(env, "alice") == "outbox"
    finally:
        d.stop()
    cert = load_cert(env.outbox / "alice.cer")
    clock.set(cert.not_valid_after_utc - dt.timedelta(days=10))

    d = _daemon(env, clock).start()  # the sweep at start warns
    try:
        peer.wait_count(2)
        wait_for(lambda: d.daemon.jobs.sweeps >= 1, what="first sweep")
    finally:
        d.stop()
    assert sorted(m.rcpt_tos[0] for m in peer.messages) == [ADMIN, "alice@example.org"]

    d = _daemon(env, clock).start()  # same day, after a restart: nothing again
    try:
        wait_for(lambda: d.daemon.jobs.sweeps >= 1, what="sweep after restart")
        assert len(_rows(env)) == 2 and all(r["status"] == "sent" for r in _rows(env))
        # days later, the next threshold: the job sends it at once
        clock.set(cert.not_valid_after_utc - dt.timedelta(days=3))
        d.daemon.jobs.crl()  # the CRL job keeps the CRL fresh (else the admin hears of it)
        d.daemon.jobs.expiry_sweep()
        peer.wait_count(4)
        code, out, _ = env.cli("status", "--json", clock=clock)
        assert code == 0
        doc = json.loads(out)
        assert doc["mail"]["sent"] == 4 and doc["mail"]["queued"] == 0
    finally:
        d.stop()
    assert len(peer.messages) == 4
    assert len(holder_mails(peer)) == 2


def test_smtp_down_then_up_the_warning_still_arrives(tmp_path: Path) -> None:
    port = free_port()  # no server yet: connection refused
    env = make_env(tmp_path, extra=mail_config(port, admin=ADMIN))
    clock = ManualClock(now_utc())
    hh = Harness(env, clock)
    try:
        serial = hh.issue("alice")
        hh.at(serial, 10)
    finally:
        hh.close()
    d = _daemon(env, clock).start()
    peer = SmtpPeer(port)
    try:
        wait_for(
            lambda: len(_rows(env)) == 2 and all(int(r["attempts"]) >= 1 for r in _rows(env)),  # type: ignore[call-overload]
            what="failed attempts",
        )
        assert all("connection refused" in str(r["last_error"]) for r in _rows(env))
        assert all(r["status"] == "queued" for r in _rows(env))
        peer.start()
        clock.advance(dt.timedelta(minutes=2))  # past the backoff
        peer.wait_count(2)
        wait_for(lambda: all(r["status"] == "sent" for r in _rows(env)), what="marked sent")
    finally:
        d.stop()
        peer.stop()
    assert sorted(m.rcpt_tos[0] for m in peer.messages) == [ADMIN, "alice@example.org"]
    assert os.path.exists(env.outbox / "alice.cer")


# --- alerts from the publisher (CRL and Apache), with the real publisher -----------------------------------
def test_the_published_crl_feeds_the_crl_alert(h: Harness, peer: SmtpPeer) -> None:
    facts = h.rt.crl.regenerate("test")
    assert h.sweep().alerts == []  # just published: quiet
    # the scheduler did not refresh it (daemon down): one day before its nextUpdate
    h.clock.set(facts.next_update - dt.timedelta(days=1))
    [stale] = h.sweep().alerts
    assert "was not refreshed" in stale
    h.flush()
    assert "certdrop crl" in peer.to(ADMIN)[-1].text


def test_a_failed_apache_configtest_alerts_the_admin(tmp_path: Path, peer: SmtpPeer) -> None:
    apache = (
        "[apache]\nenabled = true\n"
        f'ca_file = "{tmp_path / "apache" / "ca.pem"}"\ncrl_file = "{tmp_path / "apache" / "crl.pem"}"\n'
        'configtest_command = ["false"]\nreload_command = ["true"]\ndebounce_seconds = 0\n'
    )
    (tmp_path / "apache").mkdir()
    env = make_env(tmp_path / "ca", extra=mail_config(peer.port, admin=ADMIN) + apache)
    hh = Harness(env, ManualClock(now_utc()))
    try:
        assert hh.rt.apache is not None
        outcome = hh.rt.apache.publish()
        assert not outcome.ok
        hh.flush()
        [alert] = peer.to(ADMIN)
        assert "Apache publication failed" in alert.subject
        assert "Apache was not reloaded" in alert.text
        assert not (tmp_path / "apache" / "ca.pem").exists()  # the previous state was restored
    finally:
        hh.close()


def test_a_key_others_could_read_is_accepted_and_the_holder_is_told(
    h: Harness, peer: SmtpPeer, caplog: pytest.LogCaptureFixture
) -> None:
    req, key = openssl_csr(h.users, "open", ALICE)
    dropped = h.env.drop(key)
    os.chmod(dropped, 0o644)
    old = time.time() - 60
    os.utime(dropped, (old, old))
    with caplog.at_level("WARNING"):
        h.process(h.env.drop(req))
    assert "open.key was group/world readable" in caplog.text
    h.flush()
    [mail] = peer.to("alice@example.org")
    assert "open.key was readable by other users (mode 0644)" in mail.text
    assert (h.env.outbox / "open.p12").exists()
