"""The CAs of the index (the `cas` table) and which certificates each issued.

One CA is "current" (it issues): the one in the state folder's ca.cer, which signs. After a
rollover the one before is "retiring": its certificates stay valid and revocable and
its CRL is kept fresh, until its last certificate has expired; then it is "retired".
The state folder's files are the truth about which CA issues: `register_issuing`
makes the index follow them (at every start, and after a rollover).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa

from .schema import cas, certificates, from_epoch, to_epoch
from .store import Transaction

CURRENT, RETIRING, RETIRED = "current", "retiring", "retired"


@dataclass(frozen=True)
class CaRow:
    id: str  # SHA-256 (hex) of the CA's public key
    subject: str
    serial: str
    not_before: dt.datetime
    not_after: dt.datetime
    state: str
    since: dt.datetime
    der: bytes


@dataclass(frozen=True)
class NewCa:
    """What the index records of a CA."""

    id: str
    subject: str
    serial: str
    not_before: dt.datetime
    not_after: dt.datetime
    der: bytes


def _row(r: sa.Row[tuple[object, ...]]) -> CaRow:
    m = r._mapping
    return CaRow(
        id=m["id"],
        subject=m["subject"],
        serial=m["serial"],
        not_before=from_epoch(m["not_before"]),  # type: ignore[arg-type]
        not_after=from_epoch(m["not_after"]),  # type: ignore[arg-type]
        state=m["state"],
        since=from_epoch(m["since"]),  # type: ignore[arg-type]
        der=bytes(m["der"]),
    )


def list_cas(conn: Transaction) -> list[CaRow]:
    """Every CA: the current one first, then the retiring, then the retired, newest first."""
    order = sa.case((cas.c.state == CURRENT, 0), (cas.c.state == RETIRING, 1), else_=2)
    rows = conn.execute(sa.select(cas).order_by(order, cas.c.not_before.desc()))
    return [_row(r) for r in rows]


def register_issuing(conn: Transaction, ca: NewCa, now: dt.datetime) -> list[CaRow]:
    """Record `ca` as the current (issuing) CA; the one issuing before becomes retiring (it claims
    the certificates no CA has claimed yet, which it issued). Returns every CA."""
    current = conn.execute(sa.select(cas.c.id).where(cas.c.state == CURRENT)).scalars().all()
    for old in current:
        if old != ca.id:
            claim_unclaimed(conn, old)
            conn.execute(
                sa.update(cas).where(cas.c.id == old).values(state=RETIRING, since=to_epoch(now))
            )
    if conn.execute(sa.select(cas.c.id).where(cas.c.id == ca.id)).first() is None:
        conn.execute(
            sa.insert(cas).values(
                id=ca.id,
                subject=ca.subject,
                serial=ca.serial,
                not_before=to_epoch(ca.not_before),
                not_after=to_epoch(ca.not_after),
                state=CURRENT,
                since=to_epoch(now),
                der=ca.der,
            )
        )
    elif ca.id not in current:
        conn.execute(
            sa.update(cas).where(cas.c.id == ca.id).values(state=CURRENT, since=to_epoch(now))
        )
    claim_unclaimed(conn, ca.id)
    return list_cas(conn)


def claim_unclaimed(conn: Transaction, ca_id: str) -> int:
    """The certificates recorded without an issuer (before schema 6) are `ca_id`'s."""
    res = conn.execute(
        sa.update(certificates).where(certificates.c.issuer.is_(None)).values(issuer=ca_id)
    )
    return int(res.rowcount or 0)


def set_state(conn: Transaction, ca_id: str, state: str, now: dt.datetime) -> None:
    conn.execute(sa.update(cas).where(cas.c.id == ca_id).values(state=state, since=to_epoch(now)))


def last_expiry(conn: Transaction, ca_id: str) -> dt.datetime | None:
    """When the last certificate `ca_id` issued ends (None: it issued none)."""
    value = conn.execute(
        sa.select(sa.func.max(certificates.c.not_after)).where(certificates.c.issuer == ca_id)
    ).scalar()
    return from_epoch(int(value)) if value is not None else None
