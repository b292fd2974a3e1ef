"""The Mailer: the due messages of the queue to the SMTP server, retries with backoff.

The SMTP server is aiosmtpd on 127.0.0.1; time is a ManualClock, so backoff is
tested without sleeping; the queue is a real SQLite index, and a real PostgreSQL one
(also shared by two hosts flushing at once).
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from certdrop.clock import ManualClock
from certdrop.index.mailqueue import list_queue, queue_status
from certdrop.index.store import NewCertificate, Store
from certdrop.notify.mailer import PASSWORD_SCRUBBED, Mailer
from conftest import wait_for
from mailpeer import SmtpPeer, free_port
from notify_helpers import T0, mail_settings, queue_one, row


@pytest.fixture
def store(index_url: str) -> Iterator[Store]:
    """An empty index on each backend: SQLite, then PostgreSQL."""
    s = Store(index_url).open()
    yield s
    s.close()


@pytest.fixture
def peer() -> Iterator[SmtpPeer]:
    p = SmtpPeer().start()
    yield p
    p.stop()


# --- durability and retries ------------------------------------------------------------------------
def test_smtp_down_then_up_with_backoff(store: Store) -> None:
    port = free_port()  # nothing listens: connection refused
    mail = mail_settings(port)
    clock = ManualClock(T0)
    mid = queue_one(store, mail, subject="expiry warning")
    mailer = Mailer.from_settings(store, mail)

    report = mailer.flush(clock.now())
    assert (report.sent, report.failed) == (0, 1)
    r = row(store, mid)
    assert r["status"] == "queued" and r["attempts"] == 1
    assert "connection refused" in str(r["last_error"])
    assert r["next_attempt_at"] == int((T0 + dt.timedelta(minutes=1)).timestamp())

    # second failure doubles the wait
    clock.advance(dt.timedelta(minutes=1))
    mailer.flush(clock.now())
    r = row(store, mid)
    assert r["attempts"] == 2
    assert r["next_attempt_at"] == int((clock.now() + dt.timedelta(minutes=2)).timestamp())
    with store.begin() as conn:
        st = queue_status(conn)
    assert st["queued"] == 1 and st["failing"] == 1 and "connection refused" in st["last_error"]

    peer = SmtpPeer(port).start()
    try:
        # not due yet: not even tried
        clock.advance(dt.timedelta(seconds=90))
        assert mailer.flush(clock.now()).sent == 0
        assert row(store, mid)["attempts"] == 2
        clock.advance(dt.timedelta(seconds=31))
        assert mailer.flush(clock.now()).sent == 1
        assert [m.subject for m in peer.messages] == ["[certdrop] expiry warning"]
        r = row(store, mid)
        assert r["status"] == "sent" and r["attempts"] == 3 and r["last_error"] is None
        clock.advance(dt.timedelta(hours=2))
        assert mailer.flush(clock.now()).sent == 0
        assert len(peer.messages) == 1
    finally:
        peer.stop()


def test_backoff_is_capped_at_an_hour(store: Store) -> None:
    mailer = Mailer.from_settings(store, mail_settings(free_port()))
    waits = [mailer.backoff(n).total_seconds() for n in range(1, 10)]
    assert waits == [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]


def test_a_refusing_server_is_retried(store: Store, peer: SmtpPeer) -> None:
    mail = mail_settings(peer.port)
    mailer = Mailer.from_settings(store, mail)
    temp = queue_one(store, mail, ("", "busy@example.org"), subject="temporary")
    # a temporary refusal of the recipient: tried again in a minute
    peer.handler.rcpt_reply = "450 4.2.1 mailbox busy, try later"
    report = mailer.flush(T0)
    assert (report.sent, report.failed) == (0, 1)
    r = row(store, temp)
    assert "450 4.2.1 mailbox busy" in str(r["last_error"]) and r["attempts"] == 1
    assert r["next_attempt_at"] == int((T0 + dt.timedelta(minutes=1)).timestamp())

    # the DATA phase refused, temporarily: two minutes
    peer.handler.rcpt_reply = None
    peer.handler.data_reply = "451 4.3.0 local problem"
    t1 = T0 + dt.timedelta(minutes=1)
    assert mailer.flush(t1).failed == 1
    r = row(store, temp)
    assert "451 4.3.0 local problem" in str(r["last_error"]) and r["attempts"] == 2
    assert r["next_attempt_at"] == int((t1 + dt.timedelta(minutes=2)).timestamp())

    # a permanent refusal: still kept, tried again only after the longest wait
    peer.handler.data_reply = None
    peer.handler.rcpt_reply = "550 5.1.1 no such user"
    perm = queue_one(store, mail, ("", "gone@example.org"), subject="permanent", now=t1)
    t2 = t1 + dt.timedelta(minutes=2)
    assert mailer.flush(t2).failed == 2
    for mid in (temp, perm):
        assert row(store, mid)["next_attempt_at"] == int((t2 + dt.timedelta(hours=1)).timestamp())
        assert "550 5.1.1 no such user" in str(row(store, mid)["last_error"])
    assert peer.messages == []

    peer.handler.rcpt_reply = None
    t3 = t2 + dt.timedelta(hours=1)
    assert mailer.flush(t3).sent == 2
    assert sorted(m.rcpt_tos[0] for m in peer.messages) == [
        "busy@example.org",
        "gone@example.org",
    ]
    assert mailer.flush(t3 + dt.timedelta(hours=3)).sent == 0
    assert len(peer.messages) == 2


def test_the_queue_survives_a_restart_and_sends_once(tmp_path: Path, peer: SmtpPeer) -> None:
    url = f"sqlite:///{tmp_path / 'index.sqlite'}"
    mail = mail_settings(peer.port)
    s1 = Store(url).open()
    ids = [queue_one(s1, mail, ("", f"u{i}@example.org"), subject=f"m{i}") for i in range(3)]
    s1.close()  # "crash" before anything was sent

    s2 = Store(url).open()
    assert Mailer.from_settings(s2, mail).flush(T0).sent == 3
    s2.close()

    s3 = Store(url).open()  # and again: nothing is sent twice
    assert Mailer.from_settings(s3, mail).flush(T0 + dt.timedelta(days=1)).sent == 0
    with s3.begin() as conn:
        assert [m.status for m in list_queue(conn)] == ["sent"] * 3
    s3.close()
    assert sorted(m.subject for m in peer.messages) == [
        "[certdrop] m0",
        "[certdrop] m1",
        "[certdrop] m2",
    ]
    assert len(ids) == 3


def test_password_bodies_are_scrubbed_after_sending(store: Store, peer: SmtpPeer) -> None:
    mail = mail_settings(peer.port)
    mid = queue_one(store, mail, kind="password", body="the password is abc-def\n")
    Mailer.from_settings(store, mail).flush(T0)
    assert "abc-def" in peer.messages[0].text
    assert row(store, mid)["body"] == PASSWORD_SCRUBBED


def test_a_flush_sends_at_most_a_batch(store: Store, peer: SmtpPeer) -> None:
    mail = mail_settings(peer.port)
    for i in range(Mailer.BATCH + 3):
        queue_one(store, mail, ("", f"u{i}@example.org"), subject=f"m{i}")
    mailer = Mailer.from_settings(store, mail)
    assert not mailer.busy
    first = mailer.flush(T0)
    assert (first.sent, first.failed, first.cancelled, first.busy) == (Mailer.BATCH, 0, 0, False)
    assert mailer.flush(T0).sent == 3
    # the oldest first
    assert [m.subject for m in peer.messages[:2]] == ["[certdrop] m0", "[certdrop] m1"]
    with store.begin() as conn:
        assert queue_status(conn)["sent"] == Mailer.BATCH + 3


# --- several hosts, one queue -------------------------------------------------------------------------
_HOST = """
import sys, time
from pathlib import Path
from certdrop.index.store import Store
from certdrop.notify.mailer import Mailer
from notify_helpers import T0, mail_settings
url, port, go, ready = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
store = Store(url).open()
mailer = Mailer.from_settings(store, mail_settings(port))
ready.touch()
while not go.exists():
    time.sleep(0.005)
sent = 0
while True:
    report = mailer.flush(T0)
    sent += report.sent
    if report.sent == 0:
        break
print(sent)
"""


def test_two_hosts_flushing_one_queue_send_each_message_once(
    pg_url: str, peer: SmtpPeer, tmp_path: Path
) -> None:
    """Two processes (hosts) flush one PostgreSQL queue at the same moment, batch after
    batch: each message reaches the server once, and between them they send them all."""
    mail = mail_settings(peer.port)
    store = Store(pg_url).open()
    n = 6 * Mailer.BATCH
    try:
        for i in range(n):
            queue_one(store, mail, ("", f"u{i}@example.org"), subject=f"m{i}")
        go = tmp_path / "go"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        hosts = [
            subprocess.Popen(
                [sys.executable, "-c", _HOST, pg_url, str(peer.port), str(go), str(ready)],
                stdout=subprocess.PIPE,
                text=True,
                env=env,
            )
            for ready in (tmp_path / "ready-a", tmp_path / "ready-b")
        ]
        wait_for(lambda: all((tmp_path / f"ready-{h}").exists() for h in "ab"), 60)
        go.touch()
        counts = [int(h.communicate(timeout=120)[0]) for h in hosts]
        assert [h.returncode for h in hosts] == [0, 0]
        ids = [m.message["Message-ID"] for m in peer.messages]
        assert len(ids) == len(set(ids)) == n  # once each, all of them
        assert sum(counts) == n and min(counts) > 0  # both took part
        with store.begin() as conn:
            assert queue_status(conn)["sent"] == n
    finally:
        store.close()


# --- expiry warnings whose certificate changed -------------------------------------------------------
def _cert(serial: str, not_after: dt.datetime) -> NewCertificate:
    return NewCertificate(
        serial=serial,
        subject="CN=Alice",
        common_name="Alice",
        email="alice@example.org",
        not_before=T0 - dt.timedelta(days=300),
        not_after=not_after,
        profile="client",
        request_name="alice",
        request_fingerprint=serial.lower() * 2,
        issued_at=T0 - dt.timedelta(days=300),
        der=b"\x30\x00",
    )


def test_a_void_expiry_warning_is_cancelled_not_sent(store: Store, peer: SmtpPeer) -> None:
    mail = mail_settings(peer.port)
    with store.begin() as conn:
        store.add_certificates(
            conn,
            [
                _cert("0A", T0 + dt.timedelta(days=7)),  # stays valid: warned
                _cert("0B", T0 + dt.timedelta(days=7)),  # revoked meanwhile
                _cert("0C", T0 + dt.timedelta(hours=1)),  # expires before the flush
            ],
        )
    ids = {
        serial: queue_one(store, mail, kind="expiry", serial=serial, subject=f"expiry {serial}")
        for serial in ("0A", "0B", "0C", "0D")  # 0D: not in the index
    }
    other = queue_one(store, mail, kind="alert", serial="0D", subject="about 0D")
    with store.begin() as conn:
        store.revoke(conn, "0B", "keyCompromise", T0)
    report = Mailer.from_settings(store, mail).flush(T0 + dt.timedelta(hours=2))
    assert (report.sent, report.cancelled, report.failed) == (2, 3, 0)
    assert sorted(m.subject for m in peer.messages) == [
        "[certdrop] about 0D",
        "[certdrop] expiry 0A",
    ]
    assert row(store, ids["0A"])["status"] == "sent"
    assert row(store, other)["status"] == "sent"  # only expiry warnings go void
    reasons = {s: str(row(store, ids[s])["last_error"]) for s in ("0B", "0C", "0D")}
    assert reasons == {
        "0B": "certificate 0B is revoked now; its expiry warning is void",
        "0C": "certificate 0C has expired; its expiry warning is void",
        "0D": "certificate 0D is no longer in the index",
    }
    with store.begin() as conn:
        assert {m.id for m in list_queue(conn, status="cancelled")} == {
            ids["0B"],
            ids["0C"],
            ids["0D"],
        }
