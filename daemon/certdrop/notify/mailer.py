"""Sending the mail queue: `Mailer.flush` hands the due messages to the SMTP server.

Each message is marked sent right after the server accepted it; a server that is
down, slow or refuses is retried with exponential backoff (state in the row:
attempts, next_attempt_at, last_error). A restart sends nothing twice, with one
exception that no SMTP client can close: a crash between the server's "250 accepted"
and the commit that records it. Then the message goes out once more, with the same
Message-ID, so that mail clients can tell it is the same message.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..config import MailSettings
from ..index import mailqueue
from ..index.mailqueue import QueuedMail
from ..index.store import Store, Transaction
from .queue import recipients_text
from .smtp import MessageRefused, SmtpTransport, SmtpUnavailable, compose

log = logging.getLogger("certdrop.mail")

PASSWORD_SCRUBBED = "(the password was removed from the index after the message was sent)"

_FLUSH_LOCK = threading.Lock()


@dataclass
class FlushReport:
    sent: int = 0
    failed: int = 0
    cancelled: int = 0
    errors: list[str] = field(default_factory=list)
    busy: bool = False


class Mailer:
    """Sends the due messages of the queue; one flush at a time per process."""

    BATCH = 50

    def __init__(
        self,
        store: Store,
        mail: MailSettings,
        transport: SmtpTransport,
        *,
        retry_seconds: float = 60.0,
        retry_max_seconds: float = 3600.0,
    ) -> None:
        self.store = store
        self.mail = mail
        self.transport = transport
        self.retry_seconds = retry_seconds
        self.retry_max_seconds = retry_max_seconds
        # one flush at a time in this process, also across a SIGHUP that builds a new Mailer
        self._lock = _FLUSH_LOCK

    @classmethod
    def from_settings(
        cls, store: Store, mail: MailSettings, environ: Mapping[str, str] | None = None
    ) -> Mailer:
        return cls(store, mail, SmtpTransport.from_settings(mail, environ))

    @property
    def busy(self) -> bool:
        """A flush is running right now."""
        return self._lock.locked()

    def backoff(self, attempts: int, permanent: bool = False) -> dt.timedelta:
        """Wait before the next try after `attempts` failed ones: 1, 2, 4 ... min, at most 1 h."""
        if permanent:
            return dt.timedelta(seconds=self.retry_max_seconds)
        seconds = self.retry_seconds * 2 ** min(max(attempts - 1, 0), 30)
        return dt.timedelta(seconds=min(seconds, self.retry_max_seconds))

    def flush(self, now: dt.datetime) -> FlushReport:
        """Send every message that is due at `now` (at most BATCH per call)."""
        report = FlushReport()
        if not self._lock.acquire(blocking=False):
            report.busy = True
            return report
        try:
            self._flush(now, report)
        finally:
            self._lock.release()
        return report

    @property
    def lease(self) -> dt.timedelta:
        """How long the messages of one flush are this host's to send (several hosts share
        one queue); one SMTP call more than the lease never starts (`_flush`)."""
        return dt.timedelta(seconds=max(600.0, 4 * self.mail.timeout_seconds))

    def _flush(self, now: dt.datetime, report: FlushReport) -> None:
        lease = self.lease
        # the last moment a message may still be handed over: a call takes at most about
        # two timeouts (send and answer), and the lease must still hold when it ends
        deadline = time.monotonic() + lease.total_seconds() - 2 * self.mail.timeout_seconds
        with self.store.begin() as conn:
            todo: list[QueuedMail] = []
            for row in mailqueue.due(conn, now, self.BATCH):
                stale = self._stale(conn, row, now)
                if stale:
                    mailqueue.cancel(conn, row.id, stale)
                    log.info(
                        "mail %d to %s not sent: %s", row.id, recipients_text(row.recipients), stale
                    )
                    report.cancelled += 1
                else:
                    todo.append(row)
            # claimed in the transaction that locked the rows: another host's flush
            # passes over them now, and finds them due again only if this host dies
            mailqueue.claim(conn, [row.id for row in todo], now, lease)
        if not todo:
            return
        try:
            with self.transport.session() as send:
                for i, row in enumerate(todo):
                    if time.monotonic() > deadline:
                        # the rest: due again when the lease ends (for this host or another)
                        log.warning("mail flush: the lease ran out; %d left", len(todo) - i)
                        return
                    try:
                        send(
                            compose(
                                self.mail.sender,
                                row.recipients,
                                row.subject,
                                row.body,
                                message_id=row.message_id,
                                date=row.created_at,
                            )
                        )
                    except MessageRefused as exc:
                        self._failed(row, str(exc), now, report, permanent=exc.permanent)
                        continue
                    except SmtpUnavailable as exc:
                        for rest in todo[i:]:
                            self._failed(rest, str(exc), now, report)
                        return
                    self._sent(row, now, report)
        except SmtpUnavailable as exc:
            # could not connect, TLS or login failed: every due message waits
            for row in todo:
                self._failed(row, str(exc), now, report)

    @staticmethod
    def _stale(conn: Transaction, row: QueuedMail, now: dt.datetime) -> str:
        """A reason not to send an expiry warning any more (renewed, revoked, expired)."""
        if row.kind != "expiry" or not row.serial:
            return ""
        cert = mailqueue.certificate_state(conn, row.serial)
        if cert is None:
            return f"certificate {row.serial} is no longer in the index"
        status, not_after = cert
        if status != "valid":
            return f"certificate {row.serial} is {status} now; its expiry warning is void"
        if not_after <= now:
            return f"certificate {row.serial} has expired; its expiry warning is void"
        return ""

    def _sent(self, row: QueuedMail, now: dt.datetime, report: FlushReport) -> None:
        # the secret does not stay in the index
        body = PASSWORD_SCRUBBED if row.kind == "password" else None
        with self.store.begin() as conn:
            mailqueue.mark_sent(conn, row.id, row.attempts + 1, now, body)
        report.sent += 1
        log.info(
            "mail %d (%s) sent to %s: %s",
            row.id,
            row.kind,
            recipients_text(row.recipients),
            row.subject,
        )

    def _failed(
        self,
        row: QueuedMail,
        error: str,
        now: dt.datetime,
        report: FlushReport,
        *,
        permanent: bool = False,
    ) -> None:
        attempts = row.attempts + 1
        when = now + self.backoff(attempts, permanent)
        with self.store.begin() as conn:
            mailqueue.mark_failed(conn, row.id, attempts, when, error)
        report.failed += 1
        if error not in report.errors:
            report.errors.append(error)
        log.warning(
            "mail %d (%s) to %s not sent (attempt %d; next try %s UTC): %s",
            row.id,
            row.kind,
            recipients_text(row.recipients),
            attempts,
            f"{when:%Y-%m-%d %H:%M:%S}",
            error,
        )
