"""SMTP: real e-mail messages, and handing them to the configured server.

The only module that imports smtplib, email and ssl (for mail). Messages are plain
text UTF-8 with From, To, Subject, Date, Message-ID and Auto-Submitted headers;
display names may be any Unicode text (RFC 2047).
"""

from __future__ import annotations

import base64
import datetime as dt
import email.policy
import logging
import os
import smtplib
import socket
import ssl
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, getaddresses, make_msgid
from pathlib import Path

from ..config import MailSettings
from ..errors import ConfigError, MailError

log = logging.getLogger("certdrop.mail")

SMTP_CREDENTIAL = "smtp-password"  # systemd credential name ($CREDENTIALS_DIRECTORY)


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


def check_address(name: str, addr: str) -> Address:
    """The address as a header value; refused (permanently) if it could never be sent to."""
    try:
        return Address(display_name=name, addr_spec=addr)
    except (HeaderParseError, ValueError, IndexError) as exc:
        raise MessageRefused(f"{addr!r} is not a usable e-mail address ({exc})", True) from None


def _domain(addr: str) -> str:
    return addr.rpartition("@")[2] or "localhost"


def new_message_id(sender: str) -> str:
    """A fresh Message-ID in the domain of the sender's address."""
    sender_addr = parse_addresses(sender)
    domain = _domain(sender_addr[0][1]) if sender_addr else "localhost"
    return make_msgid(domain=domain)


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
    msg["From"] = check_address(*sender_parsed[0])
    msg["To"] = tuple(check_address(n, a) for n, a in recipients)
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
