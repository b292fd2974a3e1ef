"""SMTP: real messages on the wire, plain, STARTTLS or TLS, login, and what goes wrong.

The SMTP server is aiosmtpd on 127.0.0.1 (tests/mailpeer.py). Most tests drive the
transport the way the daemon does, through a Mailer flushing a real queue, and read
what the server received and what the queue row says.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from certdrop.clock import SystemClock
from certdrop.errors import ConfigError
from certdrop.index.store import Store
from certdrop.notify.mailer import Mailer
from certdrop.notify.smtp import (
    MessageRefused,
    SmtpTransport,
    check_address,
    compose,
    new_message_id,
    parse_addresses,
    smtp_password,
)
from certdrop.service.runtime import Runtime
from conftest import make_env
from mailpeer import SmtpPeer, make_tls_files
from notify_helpers import T0, mail_settings, queue_one, row


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'index.sqlite'}").open()
    yield s
    s.close()


@pytest.fixture
def peer() -> Iterator[SmtpPeer]:
    p = SmtpPeer().start()
    yield p
    p.stop()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return make_tls_files(tmp_path_factory.mktemp("mailtls"))


# --- messages ------------------------------------------------------------------------------------
def test_a_real_message_with_utf8_names(store: Store, peer: SmtpPeer) -> None:
    mail = mail_settings(peer.port, sender="Zertifikatsstelle Köln <certdrop@ca.example.org>")
    body = "Grüße aus Köln — the certificate of Zoë expires ✓\nsecond line\n"
    mid = queue_one(
        store,
        mail,
        ("Zoë Müller-Łukasiewicz", "zoe@example.org"),
        subject="Zoë, your certificate expires",
        body=body,
        now=T0,
    )
    report = Mailer.from_settings(store, mail).flush(T0)
    assert (report.sent, report.failed) == (1, 0)
    [got] = peer.messages
    assert got.rcpt_tos == ["zoe@example.org"]
    assert got.mail_from == "certdrop@ca.example.org"
    raw = got.data.decode("ascii")  # 7-bit clean on the wire: RFC 2047 + a transfer encoding
    assert "Zo=C3=AB" in raw or "=?utf-8?" in raw.lower()
    msg = got.message
    assert msg["To"].addresses[0].display_name == "Zoë Müller-Łukasiewicz"
    assert msg["To"].addresses[0].addr_spec == "zoe@example.org"
    assert msg["From"].addresses[0].display_name == "Zertifikatsstelle Köln"
    assert msg["Subject"] == "[certdrop] Zoë, your certificate expires"
    assert email.utils.parsedate_to_datetime(msg["Date"]) == T0
    stored = row(store, mid)
    assert msg["Message-ID"] == stored["message_id"]
    assert str(msg["Message-ID"]).startswith("<") and str(msg["Message-ID"]).endswith(
        "@ca.example.org>"
    )
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg.get_content_type() == "text/plain"
    assert msg.get_content_charset() == "utf-8"
    assert not msg.is_multipart()
    assert got.text.startswith(body)
    assert stored["status"] == "sent" and stored["sent_at"] == int(T0.timestamp())
    # sent once: a second flush sends nothing
    assert Mailer.from_settings(store, mail).flush(T0 + dt.timedelta(hours=1)).sent == 0
    assert len(peer.messages) == 1


def test_compose_refuses_what_no_server_would_take() -> None:
    rcpt = [("", "alice@example.org")]
    with pytest.raises(ValueError, match="naive datetime"):
        compose("ca@example.org", rcpt, "s", "b", message_id="<1@x>", date=dt.datetime(2030, 1, 1))
    with pytest.raises(MessageRefused, match=r"\[mail\] sender '' is not an e-mail address") as exc:
        compose("", rcpt, "s", "b", message_id="<1@x>", date=T0)
    assert exc.value.permanent
    with pytest.raises(MessageRefused, match="is not a usable e-mail address") as exc:
        check_address("", "not an address@@")
    assert exc.value.permanent
    assert str(check_address("Zoë", "zoe@example.org")) == "Zoë <zoe@example.org>"


def test_addresses_and_message_ids() -> None:
    assert parse_addresses("a@b.example, Name <c@d.example>") == [
        ("", "a@b.example"),
        ("Name", "c@d.example"),
    ]
    first = new_message_id("certdrop CA <certdrop@ca.example.org>")
    second = new_message_id("certdrop CA <certdrop@ca.example.org>")
    assert first != second
    assert first.startswith("<") and first.endswith("@ca.example.org>")


def test_one_session_sends_several_messages(peer: SmtpPeer) -> None:
    transport = SmtpTransport.from_settings(mail_settings(peer.port), environ={})
    assert transport.where == f"127.0.0.1:{peer.port}"
    with transport.session() as send:
        for n in range(3):
            send(
                compose(
                    "certdrop CA <certdrop@ca.example.org>",
                    [("", f"u{n}@example.org")],
                    f"message {n}",
                    "text\n",
                    message_id=new_message_id("certdrop@ca.example.org"),
                    date=T0,
                )
            )
    assert [m.rcpt_tos for m in peer.messages] == [[f"u{n}@example.org"] for n in range(3)]
    assert [m.subject for m in peer.messages] == ["message 0", "message 1", "message 2"]


def test_refusals_say_whether_they_are_permanent(peer: SmtpPeer) -> None:
    transport = SmtpTransport.from_settings(mail_settings(peer.port), environ={})
    msg = compose(
        "certdrop@ca.example.org",
        [("", "bob@example.org")],
        "s",
        "b\n",
        message_id="<1@ca.example.org>",
        date=T0,
    )
    peer.handler.rcpt_reply = "450 4.2.1 mailbox busy"
    with (
        transport.session() as send,
        pytest.raises(MessageRefused, match=r"450 4\.2\.1 mailbox busy") as exc,
    ):
        send(msg)
    assert not exc.value.permanent
    peer.handler.rcpt_reply = "550 5.1.1 no such user"
    with (
        transport.session() as send,
        pytest.raises(MessageRefused, match=r"550 5\.1\.1 no such user") as exc,
    ):
        send(msg)
    assert exc.value.permanent
    assert peer.messages == []


def test_the_smtp_password_comes_from_the_file_or_the_credential(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("first line\nsecond line\n")
    assert smtp_password(mail_settings(25, password_file=str(pw)), environ={}) == "first line"
    creds = tmp_path / "credentials"
    creds.mkdir()
    assert smtp_password(mail_settings(25), {"CREDENTIALS_DIRECTORY": str(creds)}) is None
    (creds / "smtp-password").write_text("from-credential\n")
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    assert smtp_password(mail_settings(25), env) == "from-credential"
    # the file wins over the credential
    assert smtp_password(mail_settings(25, password_file=str(pw)), env) == "first line"
    assert smtp_password(mail_settings(25), environ={}) is None


def test_a_silent_server_times_out(store: Store) -> None:
    # accepts TCP connections (the kernel does) but never says a word
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(5)
        mail = mail_settings(lsock.getsockname()[1], timeout_seconds=0.3)
        mid = queue_one(store, mail)
        report = Mailer.from_settings(store, mail).flush(T0)
    assert (report.sent, report.failed) == (0, 1)
    assert "no answer within 0.3 s ([mail] timeout_seconds)" in str(row(store, mid)["last_error"])
    assert row(store, mid)["status"] == "queued"


# --- TLS and login ---------------------------------------------------------------------------------
def test_starttls_with_login_from_password_file(
    store: Store, tmp_path: Path, tls_files: tuple[Path, Path, Path]
) -> None:
    ca, chain, key = tls_files
    pw = tmp_path / "smtp-password"
    pw.write_text("s3cret pass wörd\n")
    peer = SmtpPeer(security="starttls", tls=(chain, key), login=("certdrop", "s3cret pass wörd"))
    peer.start()
    try:
        mail = mail_settings(
            peer.port,
            security="starttls",
            ca_file=str(ca),
            username="certdrop",
            password_file=str(pw),
        )
        queue_one(store, mail)
        report = Mailer.from_settings(store, mail, environ={}).flush(T0)
        assert (report.sent, report.errors) == (1, [])
        [got] = peer.messages
        assert got.tls and got.login == "certdrop"
        assert peer.logins == [("certdrop", "s3cret pass wörd")]
    finally:
        peer.stop()


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_implicit_tls_with_the_systemd_credential(
    store: Store, tmp_path: Path, tls_files: tuple[Path, Path, Path]
) -> None:
    ca, chain, key = tls_files
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "smtp-password").write_text("from-credential")
    peer = SmtpPeer(security="ssl", tls=(chain, key), login=("mailer", "from-credential")).start()
    try:
        mail = mail_settings(peer.port, security="ssl", ca_file=str(ca), username="mailer")
        queue_one(store, mail)
        mailer = Mailer.from_settings(store, mail, environ={"CREDENTIALS_DIRECTORY": str(creds)})
        assert mailer.flush(T0).sent == 1
        assert peer.messages[0].tls and peer.logins == [("mailer", "from-credential")]
    finally:
        peer.stop()


def test_login_mechanism_when_plain_is_not_offered(
    store: Store, tmp_path: Path, tls_files: tuple[Path, Path, Path]
) -> None:
    ca, chain, key = tls_files
    pw = tmp_path / "pw"
    pw.write_text("pässword\n")
    peer = SmtpPeer(
        security="starttls", tls=(chain, key), login=("ü", "pässword"), exclude_auth=["PLAIN"]
    ).start()
    try:
        mail = mail_settings(
            peer.port, security="starttls", ca_file=str(ca), username="ü", password_file=str(pw)
        )
        queue_one(store, mail)
        assert Mailer.from_settings(store, mail, environ={}).flush(T0).sent == 1
        assert peer.logins == [("ü", "pässword")]
    finally:
        peer.stop()


def test_tls_failures_keep_the_message(
    store: Store, tmp_path: Path, tls_files: tuple[Path, Path, Path]
) -> None:
    ca, chain, key = tls_files
    peer = SmtpPeer(security="ssl", tls=(chain, key)).start()
    plain = SmtpPeer().start()
    try:
        # the system store does not know the test CA: refused, with the fix in the message
        mail = mail_settings(peer.port, security="ssl")
        mid = queue_one(store, mail)
        assert Mailer.from_settings(store, mail).flush(T0).failed == 1
        err = str(row(store, mid)["last_error"])
        assert "TLS certificate is not trusted" in err and "[mail] ca_file" in err
        # a server without STARTTLS is not used in clear when starttls is asked for
        mail2 = mail_settings(plain.port, security="starttls", ca_file=str(ca))
        t1 = T0 + dt.timedelta(minutes=5)
        assert Mailer.from_settings(store, mail2).flush(t1).failed == 1
        assert "does not offer STARTTLS" in str(row(store, mid)["last_error"])
        assert plain.messages == [] and peer.messages == []
        # trusted now: delivered
        mail3 = mail_settings(peer.port, security="ssl", ca_file=str(ca))
        assert Mailer.from_settings(store, mail3).flush(t1 + dt.timedelta(hours=1)).sent == 1
        assert len(peer.messages) == 1
    finally:
        peer.stop()
        plain.stop()


def test_wrong_password_is_reported(
    store: Store, tmp_path: Path, tls_files: tuple[Path, Path, Path]
) -> None:
    ca, chain, key = tls_files
    pw = tmp_path / "pw"
    pw.write_text("wrong\n")
    peer = SmtpPeer(security="starttls", tls=(chain, key), login=("u", "right")).start()
    try:
        mail = mail_settings(
            peer.port, security="starttls", ca_file=str(ca), username="u", password_file=str(pw)
        )
        mid = queue_one(store, mail)
        assert Mailer.from_settings(store, mail, environ={}).flush(T0).failed == 1
        err = str(row(store, mid)["last_error"])
        assert "login as 'u' refused (535" in err
        assert row(store, mid)["status"] == "queued" and peer.messages == []
    finally:
        peer.stop()


# --- configuration ---------------------------------------------------------------------------------
def test_mail_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[mail\] username = 'u' needs a password"):
        SmtpTransport.from_settings(mail_settings(25, username="u"), environ={})
    with pytest.raises(ConfigError, match=r"\[mail\] password_file = .*cannot read it"):
        SmtpTransport.from_settings(
            mail_settings(25, username="u", password_file=str(tmp_path / "missing")), environ={}
        )
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        SmtpTransport.from_settings(mail_settings(25, password_file=str(empty)), environ={})
    with pytest.raises(ConfigError, match=r"\[mail\] ca_file = .*cannot load it"):
        SmtpTransport.from_settings(
            mail_settings(25, security="starttls", ca_file=str(tmp_path / "nope.pem")), environ={}
        )


def test_bad_mail_settings_stop_start_up_with_one_line(tmp_path: Path) -> None:
    env = make_env(tmp_path, init=False, extra='[mail]\nenabled = true\nsender = "nobody"\n')
    with pytest.raises(ConfigError) as exc:
        env.settings
    assert "mail.sender = 'nobody': the sender must be an e-mail address" in str(exc.value)
    env.write_config('[mail]\nadmin = "ops@example.org, oops"\n')
    with pytest.raises(ConfigError, match="each admin address must be an e-mail address"):
        env.settings
    # the password is read at start (it may be a systemd credential): start-up stops
    env = make_env(tmp_path / "ca", extra='[mail]\nenabled = true\nusername = "u"\n')
    with pytest.raises(ConfigError, match=r"\[mail\] username = 'u' needs a password"):
        Runtime.build(env.settings, SystemClock())
    env.write_config('[mail]\nenabled = true\nsecurity = "ssl"\nca_file = "missing.pem"\n')
    with pytest.raises(ConfigError, match=r"\[mail\] ca_file = .*missing.pem.*cannot load it"):
        Runtime.build(env.settings, SystemClock())
    env.write_config('[mail]\nca_file = "certs/smtp-ca.pem"\n')
    assert env.settings.mail.ca_file == str(tmp_path / "ca" / "certs" / "smtp-ca.pem")
