"""The durable mail queue: the rows of the `mail_queue` table.

A message is a row from the moment it is queued, in the transaction of the change it
reports, until it is sent or cancelled; its delivery state (attempts, next_attempt_at,
last_error) lives in the row. What a message says and how it is sent is notify's.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from .schema import certificates, from_epoch, mail_queue, to_epoch
from .store import Transaction


@dataclass(frozen=True)
class QueuedMail:
    id: int
    kind: str
    recipients: list[tuple[str, str]]  # (display name, address)
    subject: str
    body: str
    message_id: str
    serial: str | None
    created_at: dt.datetime
    attempts: int
    status: str
    last_error: str | None
    next_attempt_at: dt.datetime
    sent_at: dt.datetime | None


def _queued(row: Any) -> QueuedMail:
    m = row._mapping
    return QueuedMail(
        id=int(m["id"]),
        kind=m["kind"],
        recipients=[(str(n), str(a)) for n, a in json.loads(m["recipients"])],
        subject=m["subject"],
        body=m["body"],
        message_id=m["message_id"],
        serial=m["serial"],
        created_at=from_epoch(m["created_at"]),  # type: ignore[arg-type]
        attempts=int(m["attempts"]),
        status=m["status"],
        last_error=m["last_error"],
        next_attempt_at=from_epoch(m["next_attempt_at"]),  # type: ignore[arg-type]
        sent_at=from_epoch(m["sent_at"]),
    )


_INSERT = sa.insert(mail_queue)  # built once; the values are parameters


def add(
    conn: Transaction,
    *,
    kind: str,
    recipients: Sequence[tuple[str, str]],
    subject: str,
    body: str,
    message_id: str,
    now: dt.datetime,
    dedupe_key: str | None = None,
    serial: str | None = None,
) -> int | None:
    """Queue a message, due at `now`, in the caller's transaction; its id.

    With `dedupe_key`, a message is queued at most once ever: None if it was before.
    """
    if dedupe_key is not None and key_used(conn, dedupe_key):
        return None
    values = {
        "kind": kind,
        "dedupe_key": dedupe_key,
        "recipients": json.dumps([list(r) for r in recipients], ensure_ascii=False),
        "subject": subject,
        "body": body,
        "message_id": message_id,
        "serial": serial,
        "created_at": to_epoch(now),
        "status": "queued",
        "attempts": 0,
        "next_attempt_at": to_epoch(now),
    }
    if dedupe_key is None:  # one statement: a refusal in a burst queues its mail cheaply
        res = conn.execute(_INSERT, values)
    else:
        try:
            with conn.begin_nested():
                res = conn.execute(_INSERT, values)
        except IntegrityError:
            return None  # queued meanwhile by another writer
    pk = res.inserted_primary_key
    assert pk is not None
    return int(pk[0])


def key_used(conn: Transaction, dedupe_key: str) -> bool:
    """A message with this dedupe key was queued before (whatever became of it)."""
    row = conn.execute(
        sa.select(mail_queue.c.id).where(mail_queue.c.dedupe_key == dedupe_key)
    ).first()
    return row is not None


def due(conn: Transaction, now: dt.datetime, limit: int) -> list[QueuedMail]:
    """The queued messages due at `now`, longest due first, at most `limit`.

    Their rows stay locked until the transaction ends; rows another transaction holds
    are passed over (on PostgreSQL; SQLite has one writer at a time anyway)."""
    rows = conn.execute(
        sa.select(mail_queue)
        .where(mail_queue.c.status == "queued", mail_queue.c.next_attempt_at <= to_epoch(now))
        .order_by(mail_queue.c.next_attempt_at, mail_queue.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return [_queued(r) for r in rows]


def claim(conn: Transaction, ids: Sequence[int], now: dt.datetime, lease: dt.timedelta) -> None:
    """Messages `ids` (from `due`) are being sent by this host: not due for anyone else
    until `now + lease`, when, if still queued (their sender died), they are due again."""
    if ids:
        conn.execute(
            sa.update(mail_queue)
            .where(mail_queue.c.id.in_(list(ids)), mail_queue.c.status == "queued")
            .values(next_attempt_at=to_epoch(now + lease))
        )


def mark_sent(
    conn: Transaction, mail_id: int, attempts: int, now: dt.datetime, body: str | None = None
) -> None:
    """The server accepted message `mail_id` at `now`; `body` replaces the stored body."""
    values: dict[str, Any] = {
        "status": "sent",
        "sent_at": to_epoch(now),
        "attempts": attempts,
        "last_error": None,
    }
    if body is not None:
        values["body"] = body
    conn.execute(sa.update(mail_queue).where(mail_queue.c.id == mail_id).values(**values))


def mark_failed(
    conn: Transaction, mail_id: int, attempts: int, next_attempt_at: dt.datetime, error: str
) -> None:
    """Message `mail_id` was not sent; it stays queued until `next_attempt_at`."""
    conn.execute(
        sa.update(mail_queue)
        .where(mail_queue.c.id == mail_id)
        .values(attempts=attempts, next_attempt_at=to_epoch(next_attempt_at), last_error=error)
    )


def cancel(conn: Transaction, mail_id: int, reason: str) -> None:
    """Message `mail_id` is not to be sent any more (kept, with the reason)."""
    conn.execute(
        sa.update(mail_queue)
        .where(mail_queue.c.id == mail_id)
        .values(status="cancelled", last_error=reason)
    )


def certificate_state(conn: Transaction, serial: str) -> tuple[str, dt.datetime] | None:
    """(stored status, notAfter) of the certificate a message is about; None if not indexed.

    An expiry warning still in the queue is void once its certificate is no longer valid.
    """
    row = conn.execute(
        sa.select(certificates.c.status, certificates.c.not_after).where(
            certificates.c.serial == serial
        )
    ).first()
    if row is None:
        return None
    status, not_after = row
    return str(status), from_epoch(not_after)  # type: ignore[return-value]


def list_queue(conn: Transaction, *, status: str | None = None) -> list[QueuedMail]:
    q = sa.select(mail_queue).order_by(mail_queue.c.id)
    if status is not None:
        q = q.where(mail_queue.c.status == status)
    return [_queued(r) for r in conn.execute(q)]


def queue_status(conn: Transaction) -> dict[str, Any]:
    """Counts for `certdrop status`: queued, failing (queued, tried and not yet sent), sent."""
    c = mail_queue.c
    counts = {
        str(s): int(n)
        for s, n in conn.execute(sa.select(c.status, sa.func.count()).group_by(c.status))
    }
    failing = conn.execute(
        sa.select(sa.func.count()).where(c.status == "queued", c.attempts > 0)
    ).scalar_one()
    last = conn.execute(
        sa.select(c.last_error)
        .where(c.status == "queued", c.last_error.is_not(None))
        .order_by(c.id.desc())
        .limit(1)
    ).scalar()
    return {
        "queued": counts.get("queued", 0),
        "failing": int(failing),
        "sent": counts.get("sent", 0),
        "cancelled": counts.get("cancelled", 0),
        "last_error": last,
    }
