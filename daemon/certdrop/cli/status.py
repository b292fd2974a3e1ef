"""The pieces of `certdrop status` beyond the index counts, read from the index."""

from __future__ import annotations

import datetime as dt
from typing import Any

from ..config import Settings
from ..index.mailqueue import queue_status
from ..index.store import Store, Transaction
from ..index.warned import LAST_SWEEP_META_KEY


def mail_status(
    store: Store, conn: Transaction, settings: Settings, now: dt.datetime
) -> dict[str, Any]:
    """The mail queue (and when the expiry sweep last ran); {} while mail was never used."""
    doc = queue_status(conn)
    if not settings.mail.enabled and not any(doc[k] for k in ("queued", "sent", "cancelled")):
        return {}
    doc["enabled"] = settings.mail.enabled
    doc["last_expiry_sweep"] = store.get_meta(conn, LAST_SWEEP_META_KEY)
    return {"mail": doc}
