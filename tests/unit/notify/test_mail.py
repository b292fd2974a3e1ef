"""Mail: real messages, the durable queue, SMTP (plain, STARTTLS, TLS, login), retries.

The SMTP server is aiosmtpd on 127.0.0.1; time is a ManualClock, so backoff is
tested without sleeping.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from certdrop.clock import ManualClock, SystemClock
from certdrop.config import MailSettings
from certdrop.errors import ConfigError
from certdrop.index.store import SCHEMA_VERSION, Store, mail_queue, metadata
from certdrop.notify.mail import (
    PASSWORD_SCRUBBED,
    Mailer,
    SmtpTransport,
    enqueue,
    list_queue,
    queue_admin_alert,
    queue_status,
)
from certdrop.service.runtime import Runtime
from conftest import make_env
from mailpeer import SmtpPeer, free_port, make_tls_files

T0 = dt.datetime(2030, 5, 1, 12, 0, tzinfo=dt.UTC)


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


def settings(port: int, **kw: object) -> MailSettings:
    base: dict[str, object] = {
        "enabled": True,
        "sender": "certdrop CA <certdrop@ca.example.org>",
        "admin": "Ops Team <ops@example.org>",
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
        "timeout_seconds": 5,
    }
    base.update(kw)
    return MailSettings(**base)  # type: ignore[arg-type]


def queue_one(
    store: Store, mail: MailSettings, to: tuple[str, str] = ("", "alice@example.org"), **kw: object
) -> int:
    with store.begin() as conn:
        mid = enqueue(
            conn,
            mail,
            str(kw.pop("kind", "alert")),
            [to],
            str(kw.pop("subject", "hello")),
            str(kw.pop("body", "a test message\n")),
            kw.pop("now", T0),  # type: ignore[arg-type]
            **kw,  # type: ignore[arg-type]
        )
    assert mid is not None
    return mid


def row(store: Store, mid: int) -> dict[str, object]:
    with store.begin() as conn:
        r = conn.execute(sa.select(mail_queue).where(mail_queue.c.id == mid)).one()
    return dict(r._mapping)


# --- messages ------------------------------------------------------------------------------------
def test_a_real_message_with_utf8_names(store: Store, peer: SmtpPeer) -> None:
    mail = settings(peer.port, sender="Zertifikatsstelle Köln <certdrop@ca.example.org>")
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


def test_enqueue_refuses_an_unusable_address(store: Store) -> None:
    mail = settings(25)
    with store.begin() as conn, pytest.raises(Exception, match="not a usable e-mail address"):
        enqueue(conn, mail, "alert", [("", "not an address@@")], "s", "b", T0)


# --- durability and retries ------------------------------------------------------------------------
def test_smtp_down_then_up_with_backoff(store: Store) -> None:
    port = free_port()  # nothing listens: connection refused
    mail = settings(port)
    clock = ManualClock(T0)
    mid = queue_one(store, mail, subject="expiry warning")
    mailer = Mailer.from_settings(store, mail)

    report = mailer.flush(clock.now())
    assert (report.sent, report.failed) == (0, 1)
    r = row(store, mid)
    assert r["status"] == "queued" and r["attempts"] == 1
    assert "connection refused" in str(r["last_error"])
    assert r["next_attempt_at"] == int((T0 + dt.timedelta(minutes=1)).timestamp())

    # second failure doubles the wait
    clock.advance(dt.timedelta(minutes=1))
    mailer.flush(clock.now())
    r = row(store, mid)
    assert r["attempts"] == 2
    assert r["next_attempt_at"] == int((clock.now() + dt.timedelta(minutes=2)).timestamp())
    with store.begin() as conn:
        st = queue_status(conn)
    assert st["queued"] == 1 and st["failing"] == 1 and "connection refused" in st["last_error"]

    peer = SmtpPeer(port).start()
    try:
        # not due yet: not even tried
        clock.advance(dt.timedelta(seconds=90))
        assert mailer.flush(clock.now()).sent == 0
        assert row(store, mid)["attempts"] == 2
        clock.advance(dt.timedelta(seconds=31))
        assert mailer.flush(clock.now()).sent == 1
        assert [m.subject for m in peer.messages] == ["[certdrop] expiry warning"]
        r = row(store, mid)
        assert r["status"] == "sent" and r["attempts"] == 3 and r["last_error"] is None
        clock.advance(dt.timedelta(hours=2))
        assert mailer.flush(clock.now()).sent == 0
        assert len(peer.messages) == 1
    finally:
        peer.stop()


def test_backoff_is_capped_at_an_hour(store: Store) -> None:
    mailer = Mailer.from_settings(store, settings(free_port()))
    waits = [mailer.backoff(n).total_seconds() for n in range(1, 10)]
    assert waits == [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]


def test_a_refusing_server_is_retried(store: Store, peer: SmtpPeer) -> None:
    mail = settings(peer.port)
    mailer = Mailer.from_settings(store, mail)
    temp = queue_one(store, mail, ("", "busy@example.org"), subject="temporary")
    # a temporary refusal of the recipient: tried again in a minute
    peer.handler.rcpt_reply = "450 4.2.1 mailbox busy, try later"
    report = mailer.flush(T0)
    assert (report.sent, report.failed) == (0, 1)
    r = row(store, temp)
    assert "450 4.2.1 mailbox busy" in str(r["last_error"]) and r["attempts"] == 1
    assert r["next_attempt_at"] == int((T0 + dt.timedelta(minutes=1)).timestamp())

    # the DATA phase refused, temporarily: two minutes
    peer.handler.rcpt_reply = None
    peer.handler.data_reply = "451 4.3.0 local problem"
    t1 = T0 + dt.timedelta(minutes=1)
    assert mailer.flush(t1).failed == 1
    r = row(store, temp)
    assert "451 4.3.0 local problem" in str(r["last_error"]) and r["attempts"] == 2
    assert r["next_attempt_at"] == int((t1 + dt.timedelta(minutes=2)).timestamp())

    # a permanent refusal: still kept, tried again only after the longest wait
    peer.handler.data_reply = None
    peer.handler.rcpt_reply = "550 5.1.1 no such user"
    perm = queue_one(store, mail, ("", "gone@example.org"), subject="permanent", now=t1)
    t2 = t1 + dt.timedelta(minutes=2)
    assert mailer.flush(t2).failed == 2
    for mid in (temp, perm):
        assert row(store, mid)["next_attempt_at"] == int((t2 + dt.timedelta(hours=1)).timestamp())
        assert "550 5.1.1 no such user" in str(row(store, mid)["last_error"])
    assert peer.messages == []

    peer.handler.rcpt_reply = None
    t3 = t2 + dt.timedelta(hours=1)
    assert mailer.flush(t3).sent == 2
    assert sorted(m.rcpt_tos[0] for m in peer.messages) == [
        "busy@example.org",
        "gone@example.org",
    ]
    assert mailer.flush(t3 + dt.timedelta(hours=3)).sent == 0
    assert len(peer.messages) == 2


def test_a_silent_server_times_out(store: Store) -> None:
    # accepts TCP connections (the kernel does) but never says a word
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(5)
        mail = settings(lsock.getsockname()[1], timeout_seconds=0.3)
        mid = queue_one(store, mail)
        report = Mailer.from_settings(store, mail).flush(T0)
    assert (report.sent, report.failed) == (0, 1)
    assert "no answer within 0.3 s ([mail] timeout_seconds)" in str(row(store, mid)["last_error"])
    assert row(store, mid)["status"] == "queued"


def test_the_queue_survives_a_restart_and_sends_once(tmp_path: Path, peer: SmtpPeer) -> None:
    url = f"sqlite:///{tmp_path / 'index.sqlite'}"
    mail = settings(peer.port)
    s1 = Store(url).open()
    ids = [queue_one(s1, mail, ("", f"u{i}@example.org"), subject=f"m{i}") for i in range(3)]
    s1.close()  # "crash" before anything was sent

    s2 = Store(url).open()
    assert Mailer.from_settings(s2, mail).flush(T0).sent == 3
    s2.close()

    s3 = Store(url).open()  # and again: nothing is sent twice
    assert Mailer.from_settings(s3, mail).flush(T0 + dt.timedelta(days=1)).sent == 0
    with s3.begin() as conn:
        assert [m.status for m in list_queue(conn)] == ["sent"] * 3
    s3.close()
    assert sorted(m.subject for m in peer.messages) == [
        "[certdrop] m0",
        "[certdrop] m1",
        "[certdrop] m2",
    ]
    assert len(ids) == 3


def test_admin_alerts_and_dedupe(store: Store, peer: SmtpPeer) -> None:
    mail = settings(peer.port, admin="ops@example.org, Second Admin <two@example.org>")
    assert queue_admin_alert(store, mail, "apache configtest failed", "details\n", T0, key="k1")
    assert not queue_admin_alert(store, mail, "apache configtest failed", "again\n", T0, key="k1")
    with store.begin() as conn:  # inside a caller's transaction
        assert queue_admin_alert(conn, mail, "second", "body\n", T0)
    assert Mailer.from_settings(store, mail).flush(T0).sent == 2
    first = peer.messages[0]
    assert sorted(first.rcpt_tos) == ["ops@example.org", "two@example.org"]
    assert first.subject == "[certdrop] apache configtest failed"
    # mail off, or no admin: not queued (logged)
    assert not queue_admin_alert(store, settings(peer.port, enabled=False), "x", "y", T0)
    assert not queue_admin_alert(store, settings(peer.port, admin=""), "x", "y", T0)


def test_password_bodies_are_scrubbed_after_sending(store: Store, peer: SmtpPeer) -> None:
    mail = settings(peer.port)
    mid = queue_one(store, mail, kind="password", body="the password is abc-def\n")
    Mailer.from_settings(store, mail).flush(T0)
    assert "abc-def" in peer.messages[0].text
    assert row(store, mid)["body"] == PASSWORD_SCRUBBED


# --- TLS and login ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return make_tls_files(tmp_path_factory.mktemp("mailtls"))


def test_starttls_with_login_from_password_file(
    store: Store, tmp_path: Path, tls_files: tuple[Path, Path, Path]
) -> None:
    ca, chain, key = tls_files
    pw = tmp_path / "smtp-password"
    pw.write_text("s3cret pass wörd\n")
    peer = SmtpPeer(security="starttls", tls=(chain, key), login=("certdrop", "s3cret pass wörd"))
    peer.start()
    try:
        mail = settings(
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
        mail = settings(peer.port, security="ssl", ca_file=str(ca), username="mailer")
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
        mail = settings(
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
        mail = settings(peer.port, security="ssl")
        mid = queue_one(store, mail)
        assert Mailer.from_settings(store, mail).flush(T0).failed == 1
        err = str(row(store, mid)["last_error"])
        assert "TLS certificate is not trusted" in err and "[mail] ca_file" in err
        # a server without STARTTLS is not used in clear when starttls is asked for
        mail2 = settings(plain.port, security="starttls", ca_file=str(ca))
        t1 = T0 + dt.timedelta(minutes=5)
        assert Mailer.from_settings(store, mail2).flush(t1).failed == 1
        assert "does not offer STARTTLS" in str(row(store, mid)["last_error"])
        assert plain.messages == [] and peer.messages == []
        # trusted now: delivered
        mail3 = settings(peer.port, security="ssl", ca_file=str(ca))
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
        mail = settings(
            peer.port, security="starttls", ca_file=str(ca), username="u", password_file=str(pw)
        )
        mid = queue_one(store, mail)
        assert Mailer.from_settings(store, mail, environ={}).flush(T0).failed == 1
        err = str(row(store, mid)["last_error"])
        assert "login as 'u' refused (535" in err
        assert row(store, mid)["status"] == "queued" and peer.messages == []
    finally:
        peer.stop()


def test_mail_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[mail\] username = 'u' needs a password"):
        SmtpTransport.from_settings(settings(25, username="u"), environ={})
    with pytest.raises(ConfigError, match=r"\[mail\] password_file = .*cannot read it"):
        SmtpTransport.from_settings(
            settings(25, username="u", password_file=str(tmp_path / "missing")), environ={}
        )
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        SmtpTransport.from_settings(settings(25, password_file=str(empty)), environ={})
    with pytest.raises(ConfigError, match=r"\[mail\] ca_file = .*cannot load it"):
        SmtpTransport.from_settings(
            settings(25, security="starttls", ca_file=str(tmp_path / "nope.pem")), environ={}
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


# --- the index schema ---------------------------------------------------------------------------------
def test_a_version_1_index_migrates(tmp_path: Path) -> None:
    """Schema 1 (no mail tables, no CRL index) is brought to the current schema."""
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    engine = sa.create_engine(url)
    v1_tables = [
        t for t in metadata.sorted_tables if t.name not in ("mail_queue", "expiry_warnings")
    ]
    with engine.begin() as conn:
        metadata.create_all(conn, tables=v1_tables)
        conn.execute(sa.text("DROP INDEX ix_certificates_crl"))  # schema 3
        conn.execute(sa.text("INSERT INTO meta (key, value) VALUES ('schema_version', '1')"))
        conn.execute(sa.text("INSERT INTO meta (key, value) VALUES ('crl_number', '7')"))
        conn.execute(
            sa.text(
                "INSERT INTO journal (at, name, profile, fingerprint, outcome, detail) "
                "VALUES (1, 'old', 'client', '', 'issued', '')"
            )
        )
    engine.dispose()
    assert not sa.inspect(sa.create_engine(url)).has_table("mail_queue")

    store = Store(url).open()
    try:
        insp = sa.inspect(store.engine)
        assert insp.has_table("mail_queue") and insp.has_table("expiry_warnings")
        assert "ix_certificates_crl" in {i["name"] for i in insp.get_indexes("certificates")}
        with store.begin() as conn:
            assert store.get_meta(conn, "schema_version") == str(SCHEMA_VERSION) == "3"
            # the CRL reads the revoked certificates from that index alone
            plan = conn.exec_driver_sql(
                "EXPLAIN QUERY PLAN SELECT serial, revoked_at, revocation_reason FROM "
                "certificates WHERE status = 'revoked' ORDER BY revoked_at"
            ).all()
            assert "COVERING INDEX ix_certificates_crl" in str(plan)
            assert store.get_meta(conn, "crl_number") == "7"
            assert store.outcome_counts(conn) == {"issued": 1}
        mail = settings(25)
        assert queue_one(store, mail) == 1
        assert store.integrity_check() == []
    finally:
        store.close()
    Store(url).open().close()  # opening a current index again changes nothing
