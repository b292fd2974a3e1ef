"""Putting a message into the durable mail queue (index/mailqueue.py).

Every message is first a row of the queue, written in the same transaction as the
change it reports (a certificate and its p12 password, a threshold crossed by the
expiry sweep): a message is never lost, and never sent about something that did not
happen. The Mailer (mailer.py) sends it.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence

from ..config import MailSettings
from ..index import mailqueue
from ..index.store import Transaction
from .smtp import Recipient, check_address, new_message_id

log = logging.getLogger("certdrop.mail")

SUBJECT_PREFIX = "[certdrop] "
SIGNATURE = "\n-- \ncertdrop, the certificate authority of this site (automatic message)\n"


def enqueue(
    conn: Transaction,
    mail: MailSettings,
    kind: str,
    recipients: Sequence[Recipient],
    subject: str,
    body: str,
    now: dt.datetime,
    *,
    dedupe_key: str | None = None,
    serial: str | None = None,
) -> int | None:
    """Add a message to the queue inside the caller's transaction.

    With `dedupe_key`, a message is queued at most once ever (None if it was before).
    """
    if not recipients:
        raise ValueError("a message needs at least one recipient")
    for name, addr in recipients:
        check_address(name, addr)  # refuse what could never be sent, now rather than at send time
    queued = mailqueue.add(
        conn,
        kind=kind,
        recipients=recipients,
        subject=SUBJECT_PREFIX + subject,
        body=body.rstrip("\n") + "\n" + SIGNATURE,
        message_id=new_message_id(mail.sender),
        now=now,
        dedupe_key=dedupe_key,
        serial=serial,
    )
    if queued is not None:
        log.info("queued %s mail to %s: %s", kind, recipients_text(recipients), subject)
    return queued


def recipients_text(recipients: Sequence[Recipient]) -> str:
    """The addresses, for log lines."""
    return ", ".join(addr for _, addr in recipients)
