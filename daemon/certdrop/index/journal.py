"""The journal: one row per thing that happened to a request or a certificate (issued,
rejected, pending, approved, revoked...), in the caller's transaction."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from .schema import journal, to_epoch
from .store import Transaction, insert_many


def log(
    conn: Transaction,
    when: dt.datetime,
    name: str,
    outcome: str,
    *,
    profile: str = "",
    fingerprint: str = "",
    serial: str | None = None,
    detail: str = "",
) -> None:
    conn.execute(
        sa.insert(journal).values(
            at=to_epoch(when),
            name=name,
            profile=profile,
            fingerprint=fingerprint,
            outcome=outcome,
            serial=serial,
            detail=detail,
        )
    )


def log_many(conn: Transaction, entries: Sequence[Mapping[str, Any]]) -> None:
    if entries:
        insert_many(
            conn,
            journal,
            [
                {
                    "at": to_epoch(e["at"]),
                    "name": e["name"],
                    "profile": e.get("profile", ""),
                    "fingerprint": e.get("fingerprint", ""),
                    "outcome": e["outcome"],
                    "serial": e.get("serial"),
                    "detail": e.get("detail", ""),
                }
                for e in entries
            ],
        )


def outcome_counts(conn: Transaction) -> dict[str, int]:
    rows = conn.execute(sa.select(journal.c.outcome, sa.func.count()).group_by(journal.c.outcome))
    return {o: int(n) for o, n in rows}


def journal_for(conn: Transaction, name: str, serials: Iterable[str] = ()) -> list[dict[str, Any]]:
    """The journal of request `name` and of the certificates `serials`, oldest first."""
    cond = journal.c.name == name
    wanted = list(dict.fromkeys(serials))
    if wanted:
        cond = sa.or_(cond, journal.c.serial.in_(wanted))
    rows = conn.execute(sa.select(journal).where(cond).order_by(journal.c.id))
    return [dict(r._mapping) for r in rows]
