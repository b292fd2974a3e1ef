"""The record of expiry warnings: which thresholds (days before the end) were warned for.

A threshold recorded here is never warned again, across restarts and clock jumps too.
`kind` is "cert" (a certificate of the index) or "ca" (a CA certificate of the chain).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import sqlalchemy as sa

from .schema import expiry_warnings, to_epoch
from .store import Transaction

LAST_SWEEP_META_KEY = "expiry_last_sweep"  # meta: when the expiry sweep last ran (ISO 8601)


def thresholds_done(conn: Transaction, kind: str, serial: str) -> set[int]:
    """The thresholds this certificate was warned for."""
    rows = conn.execute(
        sa.select(expiry_warnings.c.threshold).where(
            expiry_warnings.c.kind == kind, expiry_warnings.c.serial == serial
        )
    )
    return {int(t) for (t,) in rows}


def record(
    conn: Transaction, kind: str, serial: str, thresholds: Sequence[int], now: dt.datetime
) -> None:
    """Record these thresholds of this certificate as warned for at `now`."""
    if thresholds:
        conn.execute(
            sa.insert(expiry_warnings),
            [
                {"kind": kind, "serial": serial, "threshold": t, "warned_at": to_epoch(now)}
                for t in thresholds
            ],
        )
