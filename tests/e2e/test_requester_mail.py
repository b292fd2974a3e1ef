"""Requesters are told by mail, end to end: refused, waiting for approval, approved,
denied, revoked reach the requester's mailbox at a real SMTP server (aiosmtpd on
127.0.0.1); a server that is down loses none and sends none twice; nothing is mailed to
requesters when [mail] notify_requester = false or mail is off.

Requests are made with the openssl CLI and go through the real issue layer; a Runtime is
driven at ManualClock time (as in test_expiry_mail.py), and once through a running daemon
with the operator's CLI.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from certdrop.clock import ManualClock
from certdrop.index.mailqueue import QueuedMail, list_queue
from certdrop.issue.outcomes import Outcome, Result
from certdrop.notify.mailer import FlushReport
from certdrop.service.runtime import Runtime
from conftest import CAEnv, DaemonThread, load_cert, make_env, openssl_csr, wait_for, wait_result
from mailpeer import Received, SmtpPeer, free_port, mail_config

ADMIN = "admin@example.org"
ALICE = "alice@example.org"
WEBMASTER = "webmaster@example.org"


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


class Harness:
    """A CA with mail on: requests dropped and processed, operator decisions, queue flushes,
    all at clock time."""

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

    def drop(self, name: str, subject: str, profile: str = "client", **kw: object) -> Result:
        req, _ = openssl_csr(self.users, name, subject, **kw)  # type: ignore[arg-type]
        dropped = self.env.drop(req, profile=None if profile == "client" else profile)
        return self.rt.batches.handle_inbox_file(dropped, profile)

    def flush(self) -> FlushReport:
        assert self.rt.mailer is not None
        return self.rt.mailer.flush(self.clock.now())

    def queue(self) -> list[QueuedMail]:
        with self.rt.store.begin() as conn:
            return list_queue(conn)

    def five_events(self) -> dict[str, str]:
        """Refused, waiting, approved, denied, revoked: the serials (approved, revoked)."""
        ok = self.drop("alice", f"/emailAddress={ALICE}/CN=Alice Example", kind="ec:P-256")
        assert ok.outcome is Outcome.ISSUED and ok.serial is not None
        weak = self.drop("weak", f"/emailAddress={ALICE}/CN=Alice Again", kind="rsa:1024")
        assert weak.outcome is Outcome.REJECTED
        for name, host in (("web", "www.example.org"), ("intranet", "intranet.example.org")):
            waiting = self.drop(
                name,
                f"/emailAddress={WEBMASTER}/CN={host}",
                "server",
                kind="ec:P-256",
                addext=[f"subjectAltName=DNS:{host}"],
            )
            assert waiting.outcome is Outcome.PENDING
        issued = self.rt.approvals.approve("web")
        assert issued.outcome is Outcome.ISSUED and issued.serial is not None
        denied = self.rt.approvals.deny("intranet", "intranet names come from IT, ask them first")
        assert denied.outcome is Outcome.REJECTED
        self.clock.advance(dt.timedelta(hours=1))
        self.rt.revoker.revoke(ok.serial, "keyCompromise")
        return {"approved": issued.serial, "revoked": ok.serial}


def harness(tmp_path: Path, port: int, extra_mail: str = "") -> Harness:
    env = make_env(tmp_path, extra=mail_config(port, admin=ADMIN, extra_mail=extra_mail))
    return Harness(env, ManualClock(now_utc()))


@pytest.fixture
def peer() -> Iterator[SmtpPeer]:
    p = SmtpPeer().start()
    yield p
    p.stop()


EVENTS = ("refused", "waits for approval", "approved", "denied", "revoked")


def requester_mails(peer: SmtpPeer) -> dict[str, list[Received]]:
    """The mails at the peer to anyone but the admin, by the event they tell of."""
    found: dict[str, list[Received]] = {}
    for m in peer.messages:
        if m.rcpt_tos != [ADMIN]:
            found.setdefault(next(w for w in EVENTS if w in m.subject), []).append(m)
    return found


def test_each_event_reaches_the_requesters_mailbox(tmp_path: Path, peer: SmtpPeer) -> None:
    h = harness(tmp_path, peer.port)
    try:
        serials = h.five_events()
        assert h.flush().sent == 6  # and nothing else is due
    finally:
        h.close()
    env = h.env
    assert len(peer.messages) == 6
    mails = requester_mails(peer)
    assert {k: len(v) for k, v in mails.items()} == {
        "refused": 1,
        "waits for approval": 2,  # web and intranet
        "approved": 1,
        "denied": 1,
        "revoked": 1,
    }
    [refused], [approved], [denied], [revoked] = (
        mails[k] for k in ("refused", "approved", "denied", "revoked")
    )

    assert refused.rcpt_tos == [ALICE]
    assert refused.subject == "[certdrop] your request weak.req was refused"
    assert (env.rejected / "weak.reason").read_text() in refused.text
    assert "the RSA key has 1024 bits" in refused.text
    assert f"{env.inbox}/" in refused.text

    for waiting, name in zip(mails["waits for approval"], ("web", "intranet"), strict=True):
        assert waiting.rcpt_tos == [WEBMASTER]
        assert waiting.subject == f"[certdrop] your request {name}.req waits for approval (server)"
        assert "only after the CA operator has\napproved the request" in waiting.text
        assert f"    {env.pending / (name + '.req')}\n" in waiting.text

    assert approved.rcpt_tos == [WEBMASTER]
    assert approved.message["To"].addresses[0].display_name == "www.example.org"
    cert = load_cert(env.outbox / "web.cer")
    assert f"{cert.serial_number:X}" == serials["approved"].lstrip("0")
    assert f"Serial:       {serials['approved']}" in approved.text
    assert f"    {env.outbox / 'web.cer'}   the certificate (PEM)" in approved.text

    assert denied.rcpt_tos == [WEBMASTER]
    assert denied.subject == "[certdrop] your request intranet.req was denied"
    assert "    intranet names come from IT, ask them first\n" in denied.text

    assert revoked.rcpt_tos == [ALICE]
    assert f"Serial:   {serials['revoked']}" in revoked.text
    assert "Reason:   keyCompromise" in revoked.text
    assert "make a NEW key" in revoked.text

    # the sender is certdrop's, and each message is marked sent
    assert all(m.mail_from == "certdrop@ca.example.org" for m in peer.messages)


def test_a_down_smtp_server_loses_none_and_sends_none_twice(tmp_path: Path) -> None:
    port = free_port()  # nothing listens yet: connection refused
    h = harness(tmp_path, port)
    peer = SmtpPeer(port)
    try:
        h.five_events()  # the events happen while the server is down
        assert (h.env.outbox / "web.cer").exists() and (h.env.rejected / "weak.reason").exists()
        report = h.flush()
        assert report.sent == 0 and report.failed == 6
        rows = h.queue()
        assert len(rows) == 6 and all(r.status == "queued" and r.attempts == 1 for r in rows)
        assert all("connection refused" in str(r.last_error) for r in rows)
        h.restart()  # the queue is in the index: a restart keeps it
        h.clock.advance(dt.timedelta(seconds=30))
        assert h.flush().sent == 0  # still waiting out the backoff: not tried
        peer.start()
        h.clock.advance(dt.timedelta(minutes=2))  # past the backoff
        assert h.flush().sent == 6
        h.clock.advance(dt.timedelta(hours=2))
        assert h.flush().sent == 0
        assert all(r.status == "sent" for r in h.queue())
    finally:
        h.close()
        peer.stop()
    # each event's mail exactly once, none lost, none twice
    assert sorted(m.subject for m in peer.messages) == sorted(r.subject for r in rows)
    assert {k: len(v) for k, v in requester_mails(peer).items()} == {
        "refused": 1,
        "waits for approval": 2,
        "approved": 1,
        "denied": 1,
        "revoked": 1,
    }


def test_no_requester_mail_when_notify_requester_is_false(tmp_path: Path, peer: SmtpPeer) -> None:
    h = harness(tmp_path, peer.port, extra_mail="notify_requester = false")
    try:
        h.five_events()
        assert h.queue() == [] and h.flush().sent == 0
    finally:
        h.close()
    assert peer.messages == []


def test_no_requester_mail_when_mail_is_off(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    h = Harness(env, ManualClock(now_utc()))
    try:
        assert h.rt.mailer is None
        h.five_events()
        assert h.queue() == []
    finally:
        h.close()


def test_the_daemon_tells_requesters_with_the_operators_cli(tmp_path: Path, peer: SmtpPeer) -> None:
    env = make_env(tmp_path, extra=mail_config(peer.port, admin=ADMIN))
    clock = ManualClock(now_utc())
    d = DaemonThread(env, clock)
    d.daemon.jobs.mail_flush_seconds = 0.2
    d.start()
    try:
        weak, _ = openssl_csr(tmp_path / "u", "weak", f"/emailAddress={ALICE}/CN=A", "rsa:1024")
        env.drop(weak)
        assert wait_result(env, "weak") == "rejected"
        web, _ = openssl_csr(
            tmp_path / "u",
            "web",
            f"/emailAddress={WEBMASTER}/CN=www.example.org",
            "ec:P-256",
            addext=["subjectAltName=DNS:www.example.org"],
        )
        env.drop(web, profile="server")
        assert wait_result(env, "web") == "pending"
        wait_for(lambda: len(peer.to(WEBMASTER)) == 1, what="the waiting mail")
        code, out, err = env.cli("deny", "web", "--reason", "not ours", clock=clock)
        assert code == 0, (out, err)
        wait_for(lambda: len(peer.to(WEBMASTER)) == 2, what="the denial mail")
        wait_for(lambda: len(peer.to(ALICE)) == 1, what="the refusal mail")
    finally:
        d.stop()
    [refused] = peer.to(ALICE)
    assert refused.subject == "[certdrop] your request weak.req was refused"
    waiting, denied = peer.to(WEBMASTER)
    assert waiting.subject == "[certdrop] your request web.req waits for approval (server)"
    assert denied.subject == "[certdrop] your request web.req was denied"
    assert "    not ours\n" in denied.text
    assert [m.rcpt_tos for m in peer.messages].count([ADMIN]) == 1  # the admin's pending alert
