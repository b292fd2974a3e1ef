"""Certificates and query plans for the index's tests (tests/unit/index): a certificate
of given subject attributes, the SELECTs a piece of code sends, and each one's plan."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa

from certdrop.index.store import NewCertificate, Store

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


def cert(serial: int, attrs: list[tuple[str, str]], *, days: int = 30) -> NewCertificate:
    return NewCertificate(
        serial=f"{serial:032X}",
        subject=", ".join(f"{a}={v}" for a, v in attrs),
        common_name=next((v for a, v in attrs if a == "CN"), ""),
        email=next((v for a, v in attrs if a == "emailAddress"), ""),
        not_before=NOW - dt.timedelta(days=1),
        not_after=NOW + dt.timedelta(days=days),
        profile="client",
        request_name=f"r{serial}",
        request_fingerprint=f"{serial:064x}",
        issued_at=NOW - dt.timedelta(days=1),
        der=b"\x30\x00",
        attrs=attrs,
    )


def statements(store: Store, run: Any) -> list[tuple[str, Any]]:
    """The SELECTs `run()` sends to the database, with their parameters."""
    ran: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            ran.append((statement, parameters))

    sa.event.listen(store.engine, "before_cursor_execute", capture)
    try:
        run()
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", capture)
    return ran


def query_plan(store: Store, statement: str, parameters: Any) -> list[str]:
    """The database's plan of a statement, one line per step. PostgreSQL's is planned
    as the index is searched when it is big (no sequential scan, which a table this
    small would get) and without statistics, as in a burst into a new index."""
    with store.engine.connect() as conn:
        if store.dialect == "sqlite":
            rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)
            return [row[3] for row in rows]
        conn.exec_driver_sql("SET enable_seqscan = off")
        return [row[0] for row in conn.exec_driver_sql("EXPLAIN " + statement, parameters)]
