"""Mail: real e-mail messages, a durable queue in the index, and SMTP delivery.

The only module that imports smtplib and email.

Every message is first a row of the `mail_queue` table, written in the same
transaction as the change it reports (a certificate and its p12 password, a
threshold crossed by the expiry sweep): a message is never lost, and never sent
about something that did not happen. `Mailer.flush` sends what is due and marks
each message sent right after the server accepted it; a server that is down,
slow or refuses is retried with exponential backoff (state in the row: attempts,
next_attempt_at, last_error). A restart sends nothing twice, with one exception
that no SMTP client can close: a crash between the server's "250 accepted" and
the commit that records it. Then the message goes out once more, with the same
Message-ID, so that mail clients can tell it is the same message.

Messages are plain text UTF-8 with From, To, Subject, Date, Message-ID and
Auto-Submitted headers; display names may be any Unicode text (RFC 2047).
"""

from __future__ import annotations

import base64
import datetime as dt
import email.policy
import json
import logging
import os
import smtplib
import socket
import ssl
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, getaddresses, make_msgid
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from ..clock import Clock
from ..config import MailSettings, Settings
from ..errors import ConfigError, MailError
from ..index.store import Store, certificates, from_epoch, mail_queue, to_epoch
from ..issue.delivery import PasswordChannel, PasswordFiles

log = logging.getLogger("certdrop.mail")

SMTP_CREDENTIAL = "smtp-password"  # systemd credential name ($CREDENTIALS_DIRECTORY)
SUBJECT_PREFIX = "[certdrop] "
SIGNATURE = "\n-- \ncertdrop, the certificate authority of this site (automatic message)\n"
PASSWORD_SCRUBBED = "(the password was removed from the index after the message was sent)"


class SmtpUnavailable(MailError):
    """The SMTP server could not be reached, or TLS or login failed: nothing was sent."""


class MessageRefused(MailError):
    """The server refused this message (sender, recipients or content)."""

    def __init__(self, message: str, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


Recipient = tuple[str, str]  # (display name, address)


# --- configuration helpers --------------------------------------------------------------------
def smtp_password(mail: MailSettings, environ: Mapping[str, str] | None = None) -> str | None:
    """The SMTP login password: [mail] password_file, else the systemd credential.

    The first line of the file is the password. None when neither is there.
    """
    env = os.environ if environ is None else environ
    path, source = mail.password_file, "[mail] password_file"
    if not path:
        cred_dir = env.get("CREDENTIALS_DIRECTORY")
        if not cred_dir or not (Path(cred_dir) / SMTP_CREDENTIAL).is_file():
            return None
        path, source = (
            str(Path(cred_dir) / SMTP_CREDENTIAL),
            f"systemd credential {SMTP_CREDENTIAL}",
        )
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{source} = {path!r}: cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{source} = {path!r}: is not UTF-8 text") from None
    lines = text.splitlines()
    if not lines or not lines[0]:
        raise ConfigError(f"{source} = {path!r}: is empty; its first line must be the password")
    return lines[0]


def tls_context(mail: MailSettings) -> ssl.SSLContext:
    """Verifying TLS context: [mail] ca_file if set (only those CAs), else the system store."""
    try:
        ctx = ssl.create_default_context(cafile=mail.ca_file or None)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise ConfigError(
            f"[mail] ca_file = {mail.ca_file!r}: cannot load it as PEM CA certificates ({exc})"
        ) from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def parse_addresses(text: str) -> list[Recipient]:
    """'a@b, Name <c@d>' -> [('', 'a@b'), ('Name', 'c@d')] (configured addresses)."""
    return [(name, addr) for name, addr in getaddresses([text]) if addr]


def admin_recipients(mail: MailSettings) -> list[Recipient]:
    return parse_addresses(mail.admin) if mail.admin else []


def _address(name: str, addr: str) -> Address:
    try:
        return Address(display_name=name, addr_spec=addr)
    except (HeaderParseError, ValueError, IndexError) as exc:
        raise MessageRefused(f"{addr!r} is not a usable e-mail address ({exc})", True) from None


def _domain(addr: str) -> str:
    return addr.rpartition("@")[2] or "localhost"


# --- composing ------------------------------------------------------------------------------------
def compose(
    sender: str,
    recipients: Sequence[Recipient],
    subject: str,
    body: str,
    *,
    message_id: str,
    date: dt.datetime,
) -> EmailMessage:
    """A plain-text UTF-8 message with the headers mail systems expect."""
    if date.tzinfo is None:
        raise ValueError("naive datetime for the Date header")
    sender_parsed = parse_addresses(sender)
    if not sender_parsed:
        raise MessageRefused(f"[mail] sender {sender!r} is not an e-mail address", True)
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = _address(*sender_parsed[0])
    msg["To"] = tuple(_address(n, a) for n, a in recipients)
    msg["Subject"] = subject
    msg["Date"] = format_datetime(date.astimezone(dt.UTC))
    msg["Message-ID"] = message_id
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to this
    msg["X-Auto-Response-Suppress"] = "All"
    # 7-bit clean on the wire: any relay takes it, 8BITMIME or not
    msg.set_content(body, charset="utf-8", cte="quoted-printable")
    return msg


# --- SMTP ---------------------------------------------------------------------------------------------
def _smtp_text(code: int, text: bytes | str) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return f"{code} {text}".strip()


class SmtpTransport:
    """Hands messages to the configured SMTP server (plain, STARTTLS or implicit TLS).

    Every network call is bounded by [mail] timeout_seconds (connect, TLS handshake,
    each command and reply).
    """

    def __init__(
        self, mail: MailSettings, password: str | None, context: ssl.SSLContext | None
    ) -> None:
        self.mail = mail
        self.password = password
        self.context = context

    @classmethod
    def from_settings(
        cls, mail: MailSettings, environ: Mapping[str, str] | None = None
    ) -> SmtpTransport:
        password = smtp_password(mail, environ)
        if mail.username and password is None:
            raise ConfigError(
                f"[mail] username = {mail.username!r} needs a password: set [mail] password_file "
                f"or give the systemd credential {SMTP_CREDENTIAL}"
            )
        context = tls_context(mail) if mail.security != "none" else None
        if mail.username and mail.security == "none" and not _loopback(mail.smtp_host):
            log.warning(
                '[mail] security = "none": the SMTP password for %s would cross the network '
                'unencrypted; use "starttls" or "ssl"',
                mail.smtp_host,
            )
        return cls(mail, password, context)

    @property
    def where(self) -> str:
        return f"{self.mail.smtp_host}:{self.mail.smtp_port}"

    def _connect(self) -> smtplib.SMTP:
        m = self.mail
        # a local name without a DNS lookup (getfqdn could block without any timeout)
        helo = socket.gethostname() or "localhost"
        try:
            conn: smtplib.SMTP
            if m.security == "ssl":
                conn = smtplib.SMTP_SSL(
                    m.smtp_host,
                    m.smtp_port,
                    local_hostname=helo,
                    timeout=m.timeout_seconds,
                    context=self.context,
                )
            else:
                conn = smtplib.SMTP(
                    m.smtp_host, m.smtp_port, local_hostname=helo, timeout=m.timeout_seconds
                )
            try:
                conn.ehlo_or_helo_if_needed()
                if m.security == "starttls":
                    if not conn.has_extn("starttls"):
                        raise SmtpUnavailable(
                            f"{self.where} does not offer STARTTLS, and [mail] security = "
                            '"starttls" forbids sending without it'
                        )
                    conn.starttls(context=self.context)
                    conn.ehlo()
                if m.username:
                    self._login(conn)
            except BaseException:
                conn.close()
                raise
        except SmtpUnavailable:
            raise
        except smtplib.SMTPAuthenticationError as exc:
            raise SmtpUnavailable(
                f"{self.where}: login as {m.username!r} refused "
                f"({_smtp_text(exc.smtp_code, exc.smtp_error)}); check [mail] username and the password"
            ) from None
        except smtplib.SMTPNotSupportedError:
            raise SmtpUnavailable(
                f"{self.where} does not offer AUTH (login); clear [mail] username or fix the server"
            ) from None
        except ssl.SSLCertVerificationError as exc:
            raise SmtpUnavailable(
                f"{self.where}: the server's TLS certificate is not trusted ({exc.verify_message}); "
                "set [mail] ca_file to the CA that issued it"
            ) from None
        except smtplib.SMTPResponseException as exc:
            raise SmtpUnavailable(
                f"{self.where}: {_smtp_text(exc.smtp_code, exc.smtp_error)}"
            ) from None
        except (smtplib.SMTPException, OSError) as exc:
            raise SmtpUnavailable(f"{self.where}: {self._describe(exc)}") from None
        return conn

    def _describe(self, exc: BaseException) -> str:
        if _timed_out(exc):
            return f"no answer within {self.mail.timeout_seconds:g} s ([mail] timeout_seconds)"
        return _describe_oserror(exc)

    def _login(self, conn: smtplib.SMTP) -> None:
        """AUTH PLAIN (or LOGIN), UTF-8 user name and password (smtplib's own is ASCII only)."""
        if not conn.has_extn("auth"):
            raise smtplib.SMTPNotSupportedError("AUTH not offered")
        offered = conn.esmtp_features["auth"].upper().split()
        user = self.mail.username.encode()
        password = (self.password or "").encode()
        if "PLAIN" in offered:
            token = base64.b64encode(b"\0" + user + b"\0" + password).decode("ascii")
            code, resp = conn.docmd("AUTH", "PLAIN " + token)
        elif "LOGIN" in offered:
            code, resp = conn.docmd("AUTH", "LOGIN")
            if code == 334:
                code, resp = conn.docmd(base64.b64encode(user).decode("ascii"))
            if code == 334:
                code, resp = conn.docmd(base64.b64encode(password).decode("ascii"))
        else:
            raise SmtpUnavailable(
                f"{self.where} offers no login method certdrop uses (PLAIN, LOGIN); "
                f"it offers {' '.join(offered) or 'none'}"
            )
        if code not in (235, 503):  # 503: already authenticated
            raise smtplib.SMTPAuthenticationError(code, resp)

    @contextmanager
    def session(self) -> Iterator[Callable[[EmailMessage], None]]:
        """One SMTP connection; yields a function that sends one message on it."""
        conn = self._connect()
        try:
            yield lambda msg: self._send(conn, msg)
        finally:
            try:
                conn.quit()
            except (smtplib.SMTPException, OSError):
                conn.close()

    def _send(self, conn: smtplib.SMTP, msg: EmailMessage) -> None:
        try:
            refused = conn.send_message(msg)
        except smtplib.SMTPRecipientsRefused as exc:
            details = "; ".join(
                f"{rcpt}: {_smtp_text(code, text)}" for rcpt, (code, text) in exc.recipients.items()
            )
            permanent = all(500 <= code < 600 for code, _ in exc.recipients.values())
            raise MessageRefused(f"recipient refused ({details})", permanent) from None
        except smtplib.SMTPSenderRefused as exc:
            raise MessageRefused(
                f"sender {exc.sender} refused ({_smtp_text(exc.smtp_code, exc.smtp_error)})",
                500 <= exc.smtp_code < 600,
            ) from None
        except smtplib.SMTPDataError as exc:
            raise MessageRefused(
                f"message refused ({_smtp_text(exc.smtp_code, exc.smtp_error)})",
                500 <= exc.smtp_code < 600,
            ) from None
        except smtplib.SMTPNotSupportedError as exc:
            raise MessageRefused(f"message refused ({exc})", True) from None
        except (smtplib.SMTPException, OSError) as exc:
            raise SmtpUnavailable(f"{self.where}: {self._describe(exc)}") from None
        if refused:
            log.warning(
                "message %s: some recipients were refused: %s",
                msg["Message-ID"],
                "; ".join(f"{r}: {_smtp_text(c, t)}" for r, (c, t) in refused.items()),
            )


def _timed_out(exc: BaseException) -> bool:
    # smtplib turns a read timeout into SMTPServerDisconnected; the timeout is its context
    return isinstance(exc, TimeoutError) or isinstance(exc.__context__, TimeoutError)


def _describe_oserror(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return (
            "connection refused (is the SMTP server running? check [mail] smtp_host and smtp_port)"
        )
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({exc.strerror})"
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return f"the server closed the connection ({exc})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed ({exc.reason or exc})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _loopback(host: str) -> bool:
    return host in ("localhost", "127.0.0.1", "::1", "[::1]") or host.startswith("127.")


# --- the queue ---------------------------------------------------------------------------------------
def enqueue(
    conn: Connection,
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
        _address(name, addr)  # refuse what could never be sent, now rather than at send time
    if dedupe_key is not None and _key_exists(conn, dedupe_key):
        return None
    sender_addr = parse_addresses(mail.sender)
    domain = _domain(sender_addr[0][1]) if sender_addr else "localhost"
    values = {
        "kind": kind,
        "dedupe_key": dedupe_key,
        "recipients": json.dumps([list(r) for r in recipients], ensure_ascii=False),
        "subject": SUBJECT_PREFIX + subject,
        "body": body.rstrip("\n") + "\n" + SIGNATURE,
        "message_id": make_msgid(domain=domain),
        "serial": serial,
        "created_at": to_epoch(now),
        "status": "queued",
        "attempts": 0,
        "next_attempt_at": to_epoch(now),
    }
    try:
        with conn.begin_nested():
            res = conn.execute(sa.insert(mail_queue).values(**values))
    except IntegrityError:
        if dedupe_key is not None:
            return None  # queued meanwhile by another writer
        raise
    pk = res.inserted_primary_key
    assert pk is not None
    log.info("queued %s mail to %s: %s", kind, _rcpt_text(recipients), subject)
    return int(pk[0])


def _key_exists(conn: Connection, key: str) -> bool:
    row = conn.execute(sa.select(mail_queue.c.id).where(mail_queue.c.dedupe_key == key)).first()
    return row is not None


def _rcpt_text(recipients: Sequence[Recipient]) -> str:
    return ", ".join(addr for _, addr in recipients)


def queue_admin_alert(
    target: Store | Connection,
    mail: MailSettings,
    subject: str,
    body: str,
    now: dt.datetime,
    *,
    key: str | None = None,
) -> bool:
    """Queue a mail to [mail] admin about something that needs a person.

    `target` is the Store (own transaction) or a Connection (the caller's
    transaction). With `key`, the alert is queued at most once ever. Returns True
    when queued; False when mail is off, no admin is set, or `key` was used before.
    The alert is logged as a warning in every case.
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


@dataclass(frozen=True)
class QueuedMail:
    id: int
    kind: str
    recipients: list[Recipient]
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


def list_queue(conn: Connection, *, status: str | None = None) -> list[QueuedMail]:
    q = sa.select(mail_queue).order_by(mail_queue.c.id)
    if status is not None:
        q = q.where(mail_queue.c.status == status)
    return [_queued(r) for r in conn.execute(q)]


def queue_status(conn: Connection) -> dict[str, Any]:
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

    def _flush(self, now: dt.datetime, report: FlushReport) -> None:
        with self.store.begin() as conn:
            rows = [
                _queued(r)
                for r in conn.execute(
                    sa.select(mail_queue)
                    .where(
                        mail_queue.c.status == "queued",
                        mail_queue.c.next_attempt_at <= to_epoch(now),
                    )
                    .order_by(mail_queue.c.next_attempt_at, mail_queue.c.id)
                    .limit(self.BATCH)
                )
            ]
            todo: list[QueuedMail] = []
            for row in rows:
                stale = self._stale(conn, row, now)
                if stale:
                    conn.execute(
                        sa.update(mail_queue)
                        .where(mail_queue.c.id == row.id)
                        .values(status="cancelled", last_error=stale)
                    )
                    log.info(
                        "mail %d to %s not sent: %s", row.id, _rcpt_text(row.recipients), stale
                    )
                    report.cancelled += 1
                else:
                    todo.append(row)
        if not todo:
            return
        try:
            with self.transport.session() as send:
                for i, row in enumerate(todo):
                    try:
                        send(self._message(row))
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

    def _stale(self, conn: Connection, row: QueuedMail, now: dt.datetime) -> str:
        """A reason not to send an expiry warning any more (renewed, revoked, expired)."""
        if row.kind != "expiry" or not row.serial:
            return ""
        cert = conn.execute(
            sa.select(certificates.c.status, certificates.c.not_after).where(
                certificates.c.serial == row.serial
            )
        ).first()
        if cert is None:
            return f"certificate {row.serial} is no longer in the index"
        status, not_after = cert
        if status != "valid":
            return f"certificate {row.serial} is {status} now; its expiry warning is void"
        if not_after <= to_epoch(now):
            return f"certificate {row.serial} has expired; its expiry warning is void"
        return ""

    def _message(self, row: QueuedMail) -> EmailMessage:
        return compose(
            self.mail.sender,
            row.recipients,
            row.subject,
            row.body,
            message_id=row.message_id,
            date=row.created_at,
        )

    def _sent(self, row: QueuedMail, now: dt.datetime, report: FlushReport) -> None:
        values: dict[str, Any] = {
            "status": "sent",
            "sent_at": to_epoch(now),
            "attempts": row.attempts + 1,
            "last_error": None,
        }
        if row.kind == "password":
            values["body"] = PASSWORD_SCRUBBED  # the secret does not stay in the index
        with self.store.begin() as conn:
            conn.execute(sa.update(mail_queue).where(mail_queue.c.id == row.id).values(**values))
        report.sent += 1
        log.info(
            "mail %d (%s) sent to %s: %s", row.id, row.kind, _rcpt_text(row.recipients), row.subject
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
            conn.execute(
                sa.update(mail_queue)
                .where(mail_queue.c.id == row.id)
                .values(attempts=attempts, next_attempt_at=to_epoch(when), last_error=error)
            )
        report.failed += 1
        if error not in report.errors:
            report.errors.append(error)
        log.warning(
            "mail %d (%s) to %s not sent (attempt %d; next try %s UTC): %s",
            row.id,
            row.kind,
            _rcpt_text(row.recipients),
            attempts,
            f"{when:%Y-%m-%d %H:%M:%S}",
            error,
        )


# --- the p12 password by mail --------------------------------------------------------------------
class MailPasswordChannel:
    """Puts the p12 password into the mail queue, in the certificate's transaction.

    The message carries the password only: never the p12, which stays in the
    outbox. A certificate without an e-mail address gets the file channel
    (state/passwords/NAME.txt) instead, and the admin is told to hand it over.
    """

    def __init__(
        self, mail: MailSettings, outbox: Path, files: PasswordFiles, clock: Clock
    ) -> None:
        self.mail = mail
        self.outbox = outbox
        self.files = files
        self.clock = clock

    def __call__(
        self,
        conn: Connection,
        name: str,
        email: str,
        serial: str,
        password: str,
        notes: Sequence[str] = (),
    ) -> None:
        now = self.clock.now()
        if not email:
            self.files(conn, name, email, serial, password, notes)
            path = self.files.path_for(name)
            log.warning(
                "%s.p12 (serial %s): the certificate has no e-mail address, so its password "
                "cannot be mailed; it is in %s for the CA operator to hand over",
                name,
                serial,
                path,
            )
            queue_admin_alert(
                conn,
                self.mail,
                f"hand over the p12 password for {name}",
                f"certdrop issued certificate {serial} for {name}.req with a PKCS#12 bundle,\n"
                f"{self.outbox / (name + '.p12')}.\n\n"
                "The certificate has no e-mail address, so the password of the bundle could\n"
                f"not be mailed to its holder. It is in {path} (readable by the\n"
                "CA operator only). Give it to the holder by another channel than the p12\n"
                "itself, then delete the file.\n",
                now,
            )
            return
        enqueue(
            conn,
            self.mail,
            "password",
            [("", email)],
            f"password for your certificate {name}.p12",
            password_mail_body(name, serial, password, self.outbox, notes),
            now,
            serial=serial,
        )

    def sync(self) -> None:
        """Make password files written for holders without an e-mail address durable."""
        self.files.sync()


def password_mail_body(
    name: str, serial: str, password: str, outbox: Path, notes: Sequence[str] = ()
) -> str:
    remarks = "".join(f"Please note: {n}\n\n" for n in notes)
    return remarks + (
        "Hello,\n\n"
        f"certdrop issued a certificate for your request {name}.req (serial {serial}).\n"
        f"Its PKCS#12 bundle {name}.p12 (your certificate and private key, for browsers\n"
        "and mail clients) is NOT attached to this mail; collect it from the outbox:\n\n"
        f"    {outbox / (name + '.p12')}\n\n"
        f"The password to import {name}.p12 is:\n\n"
        f"    {password}\n\n"
        "Keep the password apart from the file, and delete this mail once the bundle\n"
        "is imported. If you did not ask for this certificate, tell the CA operator.\n"
    )


def choose_password_channel(
    delivery: str,
    mail: MailSettings,
    state: Path,
    outbox: Path,
    clock: Clock,
) -> PasswordChannel:
    """[pkcs12] password_delivery: "file", or "mail"/"auto" (mail when [mail] is enabled).

    With "mail" or "auto" and mail enabled, a certificate without an e-mail address
    still gets its password in the file (see MailPasswordChannel): refusing would
    throw away a certificate that was issued correctly.
    """
    files = PasswordFiles(state)
    if delivery == "file" or not mail.enabled:
        return files
    return MailPasswordChannel(mail, outbox, files, clock)


def status_extra(
    store: Store, conn: Connection, settings: Settings, now: dt.datetime
) -> dict[str, Any]:
    """`certdrop status`: the mail queue (and when the expiry sweep last ran)."""
    doc = queue_status(conn)
    if not settings.mail.enabled and not any(doc[k] for k in ("queued", "sent", "cancelled")):
        return {}
    doc["enabled"] = settings.mail.enabled
    doc["last_expiry_sweep"] = store.get_meta(conn, "expiry_last_sweep")
    return {"mail": doc}
