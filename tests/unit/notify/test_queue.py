"""Queueing a message: checked, prefixed, signed, in the caller's transaction, at most once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from certdrop.index.mailqueue import list_queue
from certdrop.index.store import Store
from certdrop.notify.queue import SIGNATURE, SUBJECT_PREFIX, enqueue
from notify_helpers import T0, mail_settings


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'index.sqlite'}").open()
    yield s
    s.close()


def test_enqueue_refuses_an_unusable_address(store: Store) -> None:
    mail = mail_settings(25)
    with store.begin() as conn, pytest.raises(Exception, match="not a usable e-mail address"):
        enqueue(conn, mail, "alert", [("", "not an address@@")], "s", "b", T0)


def test_enqueue_needs_a_recipient(store: Store) -> None:
    with store.begin() as conn, pytest.raises(ValueError, match="at least one recipient"):
        enqueue(conn, mail_settings(25), "alert", [], "s", "b", T0)


def test_a_queued_message_is_prefixed_signed_and_due_now(store: Store) -> None:
    mail = mail_settings(25)
    with store.begin() as conn:
        mid = enqueue(
            conn,
            mail,
            "expiry",
            [("Zoë", "zoe@example.org")],
            "hello",
            "line\n\n\n",
            T0,
            serial="0A",
        )
    with store.begin() as conn:
        [queued] = list_queue(conn)
    assert queued.id == mid
    assert queued.kind == "expiry" and queued.serial == "0A"
    assert queued.recipients == [("Zoë", "zoe@example.org")]
    assert queued.subject == SUBJECT_PREFIX + "hello" == "[certdrop] hello"
    assert queued.body == "line\n" + SIGNATURE
    assert queued.message_id.endswith("@ca.example.org>")
    assert queued.status == "queued" and queued.attempts == 0
    assert queued.created_at == queued.next_attempt_at == T0


def test_a_dedupe_key_queues_once_ever(store: Store) -> None:
    mail = mail_settings(25)
    rcpt = [("", "ops@example.org")]
    with store.begin() as conn:
        first = enqueue(conn, mail, "alert", rcpt, "once", "b", T0, dedupe_key="k")
        assert first is not None
        assert enqueue(conn, mail, "alert", rcpt, "once", "b", T0, dedupe_key="k") is None
        assert enqueue(conn, mail, "alert", rcpt, "no key", "b", T0) is not None
        assert enqueue(conn, mail, "alert", rcpt, "no key", "b", T0) is not None
    with store.begin() as conn:
        assert [m.subject for m in list_queue(conn)] == [
            "[certdrop] once",
            "[certdrop] no key",
            "[certdrop] no key",
        ]


def test_a_message_is_queued_with_the_change_it_reports(store: Store) -> None:
    class Rollback(Exception):
        pass

    with pytest.raises(Rollback), store.begin() as conn:
        enqueue(conn, mail_settings(25), "alert", [("", "ops@example.org")], "s", "b", T0)
        raise Rollback
    with store.begin() as conn:
        assert list_queue(conn) == []
