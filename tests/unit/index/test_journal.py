"""The journal (index/journal.py): one row per outcome, written alone or by the batch,
read back per request and certificate (`show`'s history) and counted by outcome
(`status`); on SQLite and PostgreSQL. That `show`'s reads are searches of the
journal's indexes is checked with the lookups in test_listing.py."""

from __future__ import annotations

import datetime as dt
from typing import Any

from certdrop.index import journal
from certdrop.index.store import Store

T0 = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)


def _shown(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(r["name"], r["outcome"], r["serial"], r["profile"], r["detail"]) for r in rows]


def test_entries_read_back_by_request_and_by_certificate_oldest_first(store: Store) -> None:
    with store.begin() as conn:
        journal.log(conn, T0, "web", "pending", profile="server", fingerprint="a" * 64)
        journal.log(conn, T0, "other", "rejected", detail="the CN is missing — «refusé»")
        journal.log_many(
            conn,
            [
                {"at": T0, "name": "web", "outcome": "issued", "serial": "0A", "profile": "server"},
                {"at": T0, "name": "web-2", "outcome": "issued", "serial": "0B"},
            ],
        )
        journal.log_many(conn, [])  # an empty batch writes nothing
        journal.log(conn, T0 + dt.timedelta(days=1), "admin", "revoked", serial="0A")
    with store.begin() as conn:
        web = journal.journal_for(conn, "web")
        both = journal.journal_for(conn, "web", ["0A", "0B", "0A"])
        other = journal.journal_for(conn, "other", ())
        nobody = journal.journal_for(conn, "nobody")
    assert _shown(web) == [
        ("web", "pending", None, "server", ""),
        ("web", "issued", "0A", "server", ""),
    ]
    assert web[0]["fingerprint"] == "a" * 64 and web[0]["at"] == int(T0.timestamp())
    # the request's rows and every row of its certificates, each once, in order
    assert _shown(both) == [
        ("web", "pending", None, "server", ""),
        ("web", "issued", "0A", "server", ""),
        ("web-2", "issued", "0B", "", ""),
        ("admin", "revoked", "0A", "", ""),
    ]
    assert [r["id"] for r in both] == sorted(r["id"] for r in both)
    assert _shown(other) == [("other", "rejected", None, "", "the CN is missing — «refusé»")]
    assert nobody == []


def test_outcomes_are_counted(store: Store) -> None:
    with store.begin() as conn:
        assert journal.outcome_counts(conn) == {}
        journal.log_many(conn, [{"at": T0, "name": f"r{i}", "outcome": "issued"} for i in range(5)])
        journal.log(conn, T0, "bad", "rejected")
        journal.log(conn, T0, "bad2", "rejected")
        journal.log(conn, T0, "wait", "pending")
    with store.begin() as conn:
        assert journal.outcome_counts(conn) == {"issued": 5, "rejected": 2, "pending": 1}
