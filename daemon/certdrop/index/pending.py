"""Requests waiting for an operator's approval: the rows of the `pending` table, and the
decision taken on each (approved, denied) until the request is issued or removed."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from .schema import from_epoch, pending, to_epoch
from .store import Transaction


@dataclass(frozen=True)
class PendingRecord:
    name: str
    profile: str
    fingerprint: str
    owner: str
    owner_uid: int | None
    received_at: dt.datetime
    subject: str
    decision: str | None
    decision_reason: str | None


def add_pending(
    conn: Transaction,
    name: str,
    profile: str,
    fingerprint: str,
    owner: str,
    owner_uid: int | None,
    when: dt.datetime,
    subject: str,
) -> None:
    conn.execute(sa.delete(pending).where(pending.c.name == name))
    conn.execute(
        sa.insert(pending).values(
            name=name,
            profile=profile,
            fingerprint=fingerprint,
            owner=owner,
            owner_uid=owner_uid,
            received_at=to_epoch(when),
            subject=subject,
        )
    )


def get_pending(conn: Transaction, name: str) -> PendingRecord | None:
    row = conn.execute(sa.select(pending).where(pending.c.name == name)).first()
    return _pending(row) if row is not None else None


def pending_by_names(conn: Transaction, names: Iterable[str]) -> dict[str, PendingRecord]:
    wanted = list(dict.fromkeys(names))
    out: dict[str, PendingRecord] = {}
    for start in range(0, len(wanted), 500):
        for r in conn.execute(_PENDING_BY_NAMES, {"names": wanted[start : start + 500]}):
            rec = _pending(r)
            out[rec.name] = rec
    return out


def remove_pending_many(conn: Transaction, names: Sequence[str]) -> None:
    conn.execute(sa.delete(pending).where(pending.c.name.in_(list(names))))


def list_pending(conn: Transaction) -> list[PendingRecord]:
    return [_pending(r) for r in conn.execute(sa.select(pending).order_by(pending.c.received_at))]


def decide_pending(
    conn: Transaction, name: str, decision: str, reason: str, when: dt.datetime
) -> None:
    conn.execute(
        sa.update(pending)
        .where(pending.c.name == name)
        .values(decision=decision, decision_reason=reason, decided_at=to_epoch(when))
    )


def remove_pending(conn: Transaction, name: str) -> None:
    conn.execute(sa.delete(pending).where(pending.c.name == name))


def _pending(row: Any) -> PendingRecord:
    m = row._mapping
    return PendingRecord(
        name=m["name"],
        profile=m["profile"],
        fingerprint=m["fingerprint"],
        owner=m["owner"],
        owner_uid=m["owner_uid"],
        received_at=from_epoch(m["received_at"]),  # type: ignore[arg-type]
        subject=m["subject"],
        decision=m["decision"],
        decision_reason=m["decision_reason"],
    )


_PENDING_BY_NAMES = sa.select(pending).where(
    pending.c.name.in_(sa.bindparam("names", expanding=True))
)
