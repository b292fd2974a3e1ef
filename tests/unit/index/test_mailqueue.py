"""The mail queue's rows: queued at most once per key, due in order, sent, failed, cancelled.

A real SQLite index; what the rows hold is read back through the same module.
"""

from __future__ import annotations

import datetime as dt
import threading

from certdrop.index import mailqueue
from certdrop.index.store import NewCertificate, Store

T0 = dt.datetime(2030, 5, 1, 12, 0, tzinfo=dt.UTC)


def add(
    store: Store, subject: str, now: dt.datetime = T0, dedupe_key: str | None = None
) -> int | None:
    with store.begin() as conn:
        return mailqueue.add(
            conn,
            kind="alert",
            recipients=[("Zoë Müller", "zoe@example.org"), ("", "ops@example.org")],
            subject=subject,
            body=f"about {subject}\n",
            message_id=f"<{subject}@ca.example.org>",
            now=now,
            dedupe_key=dedupe_key,
        )


def one(store: Store, mail_id: int) -> mailqueue.QueuedMail:
    with store.begin() as conn:
        [m] = [m for m in mailqueue.list_queue(conn) if m.id == mail_id]
    return m


def test_a_message_is_stored_as_given(store: Store) -> None:
    mid = add(store, "first")
    assert mid is not None
    m = one(store, mid)
    assert m.recipients == [("Zoë Müller", "zoe@example.org"), ("", "ops@example.org")]
    assert (m.kind, m.subject, m.body, m.message_id) == (
        "alert",
        "first",
        "about first\n",
        "<first@ca.example.org>",
    )
    assert (m.status, m.attempts, m.last_error, m.sent_at, m.serial) == (
        "queued",
        0,
        None,
        None,
        None,
    )
    assert m.created_at == m.next_attempt_at == T0


def test_a_dedupe_key_is_used_once_ever(store: Store) -> None:
    first = add(store, "a", dedupe_key="k")
    assert first is not None
    assert add(store, "b", dedupe_key="k") is None
    with store.begin() as conn:
        assert mailqueue.key_used(conn, "k") and not mailqueue.key_used(conn, "other")
        mailqueue.mark_sent(conn, first, 1, T0)
    assert add(store, "c", dedupe_key="k") is None  # also after it was sent
    assert add(store, "d") is not None and add(store, "d") is not None  # no key: no limit


def test_due_messages_longest_waiting_first(store: Store) -> None:
    late = add(store, "late", now=T0 + dt.timedelta(minutes=5))
    early = add(store, "early")
    later = add(store, "later", now=T0 + dt.timedelta(hours=1))
    assert late is not None and early is not None and later is not None
    with store.begin() as conn:
        assert [m.id for m in mailqueue.due(conn, T0, 10)] == [early]
        at = T0 + dt.timedelta(minutes=5)
        assert [m.id for m in mailqueue.due(conn, at, 10)] == [early, late]
        assert [m.id for m in mailqueue.due(conn, T0 + dt.timedelta(days=1), 2)] == [early, late]
        # a failed message waits for its next attempt
        mailqueue.mark_failed(conn, early, 1, T0 + dt.timedelta(minutes=30), "450 busy")
        assert [m.id for m in mailqueue.due(conn, at, 10)] == [late]
        mailqueue.cancel(conn, late, "void")
        mailqueue.mark_sent(conn, later, 1, T0 + dt.timedelta(hours=1))
        assert mailqueue.due(conn, T0 + dt.timedelta(minutes=29), 10) == []
        assert [m.id for m in mailqueue.due(conn, T0 + dt.timedelta(days=1), 10)] == [early]


def test_sent_failed_and_cancelled(store: Store) -> None:
    a, b, c = (add(store, s) for s in "abc")
    assert a is not None and b is not None and c is not None
    t1 = T0 + dt.timedelta(minutes=1)
    with store.begin() as conn:
        mailqueue.mark_failed(conn, a, 1, t1, "connection refused")
        mailqueue.mark_failed(conn, b, 1, t1, "first error")
        mailqueue.mark_failed(conn, b, 2, t1, "second error")
        mailqueue.mark_sent(conn, c, 1, T0, body="(scrubbed)")
    assert (one(store, a).attempts, one(store, a).next_attempt_at) == (1, t1)
    sent = one(store, c)
    assert (sent.status, sent.sent_at, sent.body, sent.last_error) == (
        "sent",
        T0,
        "(scrubbed)",
        None,
    )
    with store.begin() as conn:
        assert mailqueue.queue_status(conn) == {
            "queued": 2,
            "failing": 2,
            "sent": 1,
            "cancelled": 0,
            "last_error": "second error",  # of the newest failing message
        }
        mailqueue.mark_sent(conn, b, 3, t1)
        mailqueue.cancel(conn, a, "certificate 0A is revoked now")
        assert mailqueue.queue_status(conn) == {
            "queued": 0,
            "failing": 0,
            "sent": 2,
            "cancelled": 1,
            "last_error": None,
        }
        assert [m.id for m in mailqueue.list_queue(conn, status="sent")] == [b, c]
        [cancelled] = mailqueue.list_queue(conn, status="cancelled")
    assert cancelled.last_error == "certificate 0A is revoked now"
    assert one(store, b).body == "about b\n"  # kept unless replaced


def test_the_state_of_the_certificate_a_message_is_about(store: Store) -> None:
    end = T0 + dt.timedelta(days=7)
    with store.begin() as conn:
        store.add_certificates(
            conn,
            [
                NewCertificate(
                    serial="0A",
                    subject="CN=Alice",
                    common_name="Alice",
                    email="alice@example.org",
                    not_before=T0 - dt.timedelta(days=300),
                    not_after=end,
                    profile="client",
                    request_name="alice",
                    request_fingerprint="0a" * 32,
                    issued_at=T0 - dt.timedelta(days=300),
                    der=b"\x30\x00",
                )
            ],
        )
        assert mailqueue.certificate_state(conn, "0A") == ("valid", end)
        store.revoke(conn, "0A", "superseded", T0)
        assert mailqueue.certificate_state(conn, "0A") == ("revoked", end)
        assert mailqueue.certificate_state(conn, "0B") is None


# --- several hosts flushing one queue -------------------------------------------------------------------
def test_hosts_flushing_at_once_take_different_messages(store: Store) -> None:
    """Host A's flush holds the due rows it took; host B's, at the same moment, takes the
    others without waiting, and after A's claim commits does not see A's messages until
    the lease runs out (A died: they are due again)."""
    ids = [add(store, f"m{i}") for i in range(6)]
    lease = dt.timedelta(minutes=10)
    got_b: list[list[int]] = []

    def host_b() -> None:
        with store.begin() as conn:
            rows = mailqueue.due(conn, T0, 10)
            mailqueue.claim(conn, [m.id for m in rows], T0, lease)
        got_b.append([m.id for m in rows])

    with store.begin() as conn:
        taken_a = [m.id for m in mailqueue.due(conn, T0, 4)]
        assert taken_a == ids[:4]
        mailqueue.claim(conn, taken_a, T0, lease)
        if store.dialect == "postgresql":  # SQLite: one writer at a time, B waits below
            b = threading.Thread(target=host_b)
            b.start()
            b.join(15)
            assert got_b == [ids[4:]]  # passed over A's locked rows, without waiting
    if store.dialect != "postgresql":
        host_b()
        assert got_b == [ids[4:]]
    with store.begin() as conn:
        assert mailqueue.due(conn, T0 + lease - dt.timedelta(seconds=1), 10) == []
        # a host that claimed and died: its messages are due again once the lease ends
        assert [m.id for m in mailqueue.due(conn, T0 + lease, 10)] == ids
        mailqueue.mark_sent(conn, ids[0], 1, T0)
        mailqueue.claim(conn, [ids[0]], T0 + lease, lease)  # a sent message stays sent
    assert one(store, ids[0]).status == "sent"
    assert one(store, ids[0]).next_attempt_at == T0 + lease
