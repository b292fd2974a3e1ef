"""Alerts: mail to [mail] admin about something that needs a person."""

from __future__ import annotations

import datetime as dt
import logging

from ..config import MailSettings
from ..index import pending as waiting
from ..index.pending import PendingRecord
from ..index.store import Store, Transaction
from .messages import pending_request
from .queue import enqueue
from .smtp import Recipient, parse_addresses

log = logging.getLogger("certdrop.mail")


def admin_recipients(mail: MailSettings) -> list[Recipient]:
    return parse_addresses(mail.admin) if mail.admin else []


def queue_admin_alert(
    target: Store | Transaction,
    mail: MailSettings,
    subject: str,
    body: str,
    now: dt.datetime,
    *,
    key: str | None = None,
) -> bool:
    """Queue a mail to [mail] admin about something that needs a person.

    `target` is the Store (own transaction) or a Transaction (the caller's). With
    `key`, the alert is queued at most once ever. Returns True when queued; False
    when mail is off, no admin is set, or `key` was used before. The alert is logged
    as a warning in every case.
    """
    admins = admin_recipients(mail)
    if not mail.enabled or not admins:
        why = "[mail] enabled = false" if not mail.enabled else "[mail] admin is not set"
        log.info("alert (not mailed: %s): %s", why, subject)
        return False
    if isinstance(target, Store):
        with target.begin() as conn:
            queued = enqueue(conn, mail, "alert", admins, subject, body, now, dedupe_key=key)
    else:
        queued = enqueue(target, mail, "alert", admins, subject, body, now, dedupe_key=key)
    if queued is not None:
        log.warning("alert (mailed to the admin): %s", subject)
    return queued is not None


# --- pending requests -----------------------------------------------------------------------------
def pending_alert(
    conn: Transaction, mail: MailSettings, rec: PendingRecord, now: dt.datetime
) -> bool:
    """Tell the admin that a request waits for approval (once per request)."""
    subject, body = pending_request(rec)
    return queue_admin_alert(
        conn, mail, subject, body, now, key=f"pending:{rec.name}:{rec.fingerprint}"
    )


def announce_pending(store: Store, mail: MailSettings, name: str, now: dt.datetime) -> bool:
    """The issue layer's on_pending hook: alert the admin about request NAME."""
    with store.begin() as conn:
        rec = waiting.get_pending(conn, name)
        if rec is None or rec.decision is not None:
            return False
        return pending_alert(conn, mail, rec, now)
