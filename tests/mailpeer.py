"""A real SMTP server for the tests: aiosmtpd on 127.0.0.1, plain, STARTTLS or TLS.

It stores what it accepts (envelope and the parsed message) and can be told to
refuse (a reply code for RCPT or DATA) and to require a login.
"""

from __future__ import annotations

import email
import email.policy
import socket
import ssl
import threading
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from conftest import OPENSSL, run, wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    tls: bool
    login: str | None

    @property
    def message(self) -> EmailMessage:
        msg = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        return msg

    @property
    def subject(self) -> str:
        # Python folds a long ASCII Subject right after "Subject:" (valid RFC 5322
        # folding) and its parser keeps the folding space; mail clients drop it
        return str(self.message["Subject"]).strip()

    @property
    def text(self) -> str:
        body = self.message.get_body(("plain",))
        assert body is not None
        return str(body.get_content()).replace("\r\n", "\n")  # type: ignore[attr-defined]


@dataclass
class Handler:
    messages: list[Received] = field(default_factory=list)
    rcpt_reply: str | None = None  # e.g. "450 4.2.1 mailbox busy"
    data_reply: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(
        self, server: SMTP, session: Any, envelope: Any, address: str, rcpt_options: Any
    ) -> str:
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        if self.data_reply:
            return self.data_reply
        with self.lock:
            self.messages.append(
                Received(
                    mail_from=envelope.mail_from,
                    rcpt_tos=list(envelope.rcpt_tos),
                    data=bytes(envelope.original_content or envelope.content),
                    tls=server.transport is not None
                    and server.transport.get_extra_info("ssl_object") is not None,
                    login=session.auth_data.login.decode()
                    if isinstance(session.auth_data, LoginPassword)
                    else None,
                )
            )
        return "250 Message accepted for delivery"


class SmtpPeer:
    """aiosmtpd on 127.0.0.1:port; `security` is "none", "starttls" or "ssl"."""

    def __init__(
        self,
        port: int | None = None,
        *,
        security: str = "none",
        tls: tuple[Path, Path] | None = None,  # (cert chain PEM, key PEM)
        login: tuple[str, str] | None = None,
        exclude_auth: list[str] | None = None,  # e.g. ["PLAIN"]: offer LOGIN only
    ) -> None:
        self.port = port or free_port()
        self.handler = Handler()
        self.logins: list[tuple[str, str]] = []
        self.login = login
        kwargs: dict[str, Any] = {}
        ctx: ssl.SSLContext | None = None
        if tls is not None:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(str(tls[0]), str(tls[1]))
        if security == "starttls":
            assert ctx is not None
            kwargs.update(tls_context=ctx, require_starttls=True, auth_require_tls=True)
        elif security == "ssl":
            assert ctx is not None
            kwargs.update(ssl_context=ctx, auth_require_tls=False)
        if login is not None:
            kwargs.update(authenticator=self._authenticate, auth_required=True)
            if exclude_auth:
                kwargs.update(auth_exclude_mechanism=exclude_auth)
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port, **kwargs)
        self.running = False

    def _authenticate(
        self, server: SMTP, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        pair = (auth_data.login.decode(), auth_data.password.decode())
        self.logins.append(pair)
        ok = pair == self.login
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    def start(self) -> SmtpPeer:
        self.controller.start()
        self.running = True
        return self

    def stop(self) -> None:
        if self.running:
            self.controller.stop()
            self.running = False

    @property
    def messages(self) -> list[Received]:
        with self.handler.lock:
            return list(self.handler.messages)

    def wait_count(self, n: int, timeout: float = 15.0) -> list[Received]:
        wait_for(lambda: len(self.messages) >= n, timeout, what=f"{n} message(s) at the SMTP peer")
        return self.messages

    def to(self, addr: str) -> list[Received]:
        return [m for m in self.messages if addr in m.rcpt_tos]


def make_tls_files(folder: Path) -> tuple[Path, Path, Path]:
    """A private CA and a server certificate for 127.0.0.1, made with the openssl CLI.

    Returns (ca.pem, server chain pem, server key pem).
    """
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca_pem = folder / "mailca.key", folder / "mailca.pem"
    key, csr, pem = folder / "smtp.key", folder / "smtp.csr", folder / "smtp.pem"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    ca_ext = ["-addext", "basicConstraints=critical,CA:TRUE"]
    ca_ext += ["-addext", "keyUsage=critical,keyCertSign,cRLSign"]
    run(
        [
            OPENSSL,
            "req",
            "-x509",
            *ec,
            "-keyout",
            str(ca_key),
            "-out",
            str(ca_pem),
            *ca_ext,
            "-subj",
            "/CN=Test Mail CA",
            "-days",
            "3",
        ]
    )
    run([OPENSSL, "req", "-new", *ec, "-keyout", str(key), "-out", str(csr), "-subj", "/CN=smtp"])
    ext = folder / "smtp.ext"
    ext.write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
    )
    sign = ["-CA", str(ca_pem), "-CAkey", str(ca_key), "-CAcreateserial", "-sha256"]
    run(
        [
            OPENSSL,
            "x509",
            "-req",
            "-in",
            str(csr),
            *sign,
            "-days",
            "2",
            "-out",
            str(pem),
            "-extfile",
            str(ext),
        ]
    )
    return ca_pem, pem, key


def mail_config(
    port: int,
    *,
    admin: str = "CA Admin <admin@example.org>",
    security: str = "none",
    extra_mail: str = "",
    expiry: str = "",
    delivery: str = "auto",
) -> str:
    """TOML for [mail], [expiry] and [pkcs12] pointing at a test SMTP peer."""
    return (
        "[mail]\nenabled = true\n"
        'sender = "certdrop CA <certdrop@ca.example.org>"\n'
        f'admin = "{admin}"\nsmtp_host = "127.0.0.1"\nsmtp_port = {port}\n'
        f'security = "{security}"\ntimeout_seconds = 5\n{extra_mail}\n'
        f"[expiry]\n{expiry}\n"
        f'[pkcs12]\npassword_delivery = "{delivery}"\n'
    )
