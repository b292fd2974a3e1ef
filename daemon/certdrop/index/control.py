"""Operator commands for a running daemon: the rows of the `control` table.

The CLI pushes a command when a daemon holds the state lock; the daemon's worker reads
the open ones between batches, carries them out and writes each result line, which the
CLI waits for (service/control.py).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from .schema import control, to_epoch
from .store import Store, Transaction


def push(conn: Transaction, kind: str, payload: Mapping[str, Any], when: dt.datetime) -> int:
    res = conn.execute(
        sa.insert(control).values(
            kind=kind, payload=json.dumps(dict(payload)), created_at=to_epoch(when)
        )
    )
    pk = res.inserted_primary_key
    assert pk is not None
    return int(pk[0])


def open_commands(
    conn: Transaction, host: str | None = None
) -> list[tuple[int, str, dict[str, Any]]]:
    """The commands not carried out yet; with `host`, those pushed for that host (its
    payload's "host", from the CLI run with that host's state folder) or for any host."""
    rows = conn.execute(
        sa.select(control.c.id, control.c.kind, control.c.payload)
        .where(control.c.done_at.is_(None))
        .order_by(control.c.id)
    )
    found = [(int(i), k, json.loads(p)) for i, k, p in rows]
    return [c for c in found if host is None or c[2].get("host") in (None, host)]


def finish(conn: Transaction, control_id: int, result: str, when: dt.datetime) -> None:
    conn.execute(
        sa.update(control)
        .where(control.c.id == control_id)
        .values(done_at=to_epoch(when), result=result)
    )


def result(conn: Transaction, control_id: int) -> str | None:
    row = conn.execute(
        sa.select(control.c.done_at, control.c.result).where(control.c.id == control_id)
    ).first()
    if row is None or row[0] is None:
        return None
    return str(row[1] or "")


def wait_result(store: Store, control_id: int, timeout: float) -> str | None:
    """The result line of command `control_id` once the daemon wrote it (None after
    `timeout` seconds); polled every 0.1 s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with store.begin() as conn:
            found = result(conn, control_id)
        if found is not None:
            return found
        time.sleep(0.1)
    return None
