"""Requests waiting for approval (index/pending.py): what a row holds, the decision on
it, the batch's read by name (more names than one statement takes) and the removals;
on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt

from certdrop.index import pending as waiting
from certdrop.index.pending import PendingRecord
from certdrop.index.store import Store

T0 = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)


def test_a_pending_request_reads_back_and_a_new_one_of_the_same_name_replaces_it(
    store: Store,
) -> None:
    with store.begin() as conn:
        waiting.add_pending(conn, "web", "server", "a" * 64, "bob", 1001, T0, "CN=www")
        waiting.add_pending(conn, "mail", "client", "b" * 64, "", None, T0, "CN=Zoë")
    with store.begin() as conn:
        assert waiting.get_pending(conn, "web") == PendingRecord(
            name="web",
            profile="server",
            fingerprint="a" * 64,
            owner="bob",
            owner_uid=1001,
            received_at=T0,
            subject="CN=www",
            decision=None,
            decision_reason=None,
        )
        mail = waiting.get_pending(conn, "mail")
        assert mail is not None and (mail.owner, mail.owner_uid, mail.subject) == (
            "",
            None,
            "CN=Zoë",
        )
        assert waiting.get_pending(conn, "nobody") is None
        # the same name dropped again: the new request is the one waiting, undecided
        waiting.decide_pending(conn, "web", "denied", "not ours", T0)
        later = T0 + dt.timedelta(hours=1)
        waiting.add_pending(conn, "web", "server", "c" * 64, "bob", 1001, later, "CN=www2")
    with store.begin() as conn:
        web = waiting.get_pending(conn, "web")
        assert web is not None
        assert (web.fingerprint, web.received_at, web.subject) == ("c" * 64, later, "CN=www2")
        assert (web.decision, web.decision_reason) == (None, None)


def test_decisions_are_recorded_and_the_list_is_oldest_first(store: Store) -> None:
    with store.begin() as conn:
        for i, name in enumerate(["c", "a", "b"]):
            when = T0 + dt.timedelta(minutes=10 - i)  # b oldest, c newest
            waiting.add_pending(conn, name, "server", f"{i:064x}", "", None, when, f"CN={name}")
        waiting.decide_pending(conn, "a", "approved", "", T0)
        waiting.decide_pending(conn, "b", "denied", "not ours", T0)
    with store.begin() as conn:
        listed = waiting.list_pending(conn)
    assert [r.name for r in listed] == ["b", "a", "c"]
    assert [(r.decision, r.decision_reason) for r in listed] == [
        ("denied", "not ours"),
        ("approved", ""),
        (None, None),
    ]


def test_the_batch_reads_more_names_than_one_statement_takes_and_removes_them(
    store: Store,
) -> None:
    n = 1_100  # three statements of at most 500 names
    with store.begin() as conn:
        for i in range(n):
            waiting.add_pending(conn, f"r{i}", "client", f"{i:064x}", "", None, T0, f"CN=u{i}")
    asked = [f"r{i}" for i in range(0, n + 300, 2)] + ["r0", "r2"]  # unknown names, repeats
    with store.begin() as conn:
        got = waiting.pending_by_names(conn, asked)
    assert sorted(got) == sorted(f"r{i}" for i in range(0, n, 2))
    assert all(rec.name == name and rec.subject == f"CN=u{name[1:]}" for name, rec in got.items())
    with store.begin() as conn:
        waiting.remove_pending_many(conn, [f"r{i}" for i in range(0, n, 2)])
        waiting.remove_pending(conn, "r1")
        waiting.remove_pending(conn, "nobody")  # nothing to remove: no error
    with store.begin() as conn:
        left = [r.name for r in waiting.list_pending(conn)]
        assert sorted(left) == sorted(f"r{i}" for i in range(3, n, 2))
        assert waiting.pending_by_names(conn, []) == {}
