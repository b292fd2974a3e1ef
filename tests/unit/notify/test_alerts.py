"""Alerts to [mail] admin: queued once per key, and the announcement of pending requests."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from certdrop.index import pending as waiting
from certdrop.index.mailqueue import list_queue
from certdrop.index.store import Store
from certdrop.notify.alerts import admin_recipients, announce_pending, queue_admin_alert
from certdrop.notify.mailer import Mailer
from mailpeer import SmtpPeer
from notify_helpers import T0, mail_settings


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'index.sqlite'}").open()
    yield s
    s.close()


@pytest.fixture
def peer() -> Iterator[SmtpPeer]:
    p = SmtpPeer().start()
    yield p
    p.stop()


def test_admin_alerts_and_dedupe(store: Store, peer: SmtpPeer) -> None:
    mail = mail_settings(peer.port, admin="ops@example.org, Second Admin <two@example.org>")
    assert queue_admin_alert(store, mail, "apache configtest failed", "details\n", T0, key="k1")
    assert not queue_admin_alert(store, mail, "apache configtest failed", "again\n", T0, key="k1")
    with store.begin() as conn:  # inside a caller's transaction
        assert queue_admin_alert(conn, mail, "second", "body\n", T0)
    assert Mailer.from_settings(store, mail).flush(T0).sent == 2
    first = peer.messages[0]
    assert sorted(first.rcpt_tos) == ["ops@example.org", "two@example.org"]
    assert first.subject == "[certdrop] apache configtest failed"
    # mail off, or no admin: not queued (logged)
    assert not queue_admin_alert(store, mail_settings(peer.port, enabled=False), "x", "y", T0)
    assert not queue_admin_alert(store, mail_settings(peer.port, admin=""), "x", "y", T0)


def test_admin_recipients() -> None:
    assert admin_recipients(mail_settings(25, admin="ops@example.org, Two <two@example.org>")) == [
        ("", "ops@example.org"),
        ("Two", "two@example.org"),
    ]
    assert admin_recipients(mail_settings(25, admin="")) == []


def _pending(store: Store, name: str, fingerprint: str = "f" * 64) -> None:
    with store.begin() as conn:
        waiting.add_pending(
            conn, name, "server", fingerprint, "bob", 1001, T0, "CN=www.example.org"
        )


def test_a_pending_request_is_announced_once(store: Store, peer: SmtpPeer) -> None:
    mail = mail_settings(peer.port, admin="ops@example.org")
    assert not announce_pending(store, mail, "web", T0)  # no such request
    _pending(store, "web")
    assert announce_pending(store, mail, "web", T0)
    assert not announce_pending(store, mail, "web", T0 + dt.timedelta(hours=1))
    assert Mailer.from_settings(store, mail).flush(T0).sent == 1
    [got] = peer.messages
    assert got.rcpt_tos == ["ops@example.org"]
    assert got.subject == "[certdrop] request web waits for approval (server)"
    text = got.text
    assert "    name:      web.req\n" in text
    assert "    owner:     bob (uid 1001)\n" in text
    assert "    received:  2030-05-01 12:00:00 UTC\n" in text
    assert "certdrop approve web\n" in text and 'certdrop deny web --reason "..."' in text


def test_a_request_dropped_again_is_announced_again(store: Store) -> None:
    mail = mail_settings(25, admin="ops@example.org")
    _pending(store, "web", "a" * 64)
    assert announce_pending(store, mail, "web", T0)
    _pending(store, "web", "b" * 64)  # a different request under the same name
    assert announce_pending(store, mail, "web", T0)
    with store.begin() as conn:
        assert len(list_queue(conn)) == 2


def test_a_decided_request_is_not_announced(store: Store) -> None:
    mail = mail_settings(25, admin="ops@example.org")
    _pending(store, "web")
    with store.begin() as conn:
        waiting.decide_pending(conn, "web", "denied", "not ours", T0)
    assert not announce_pending(store, mail, "web", T0)
    assert not announce_pending(store, mail_settings(25, enabled=False), "other", T0)
    with store.begin() as conn:
        assert list_queue(conn) == []
