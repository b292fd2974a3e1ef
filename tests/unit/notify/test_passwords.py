"""The p12 password by mail: queued with the certificate, never with the p12 itself."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from certdrop.clock import ManualClock
from certdrop.index.mailqueue import list_queue
from certdrop.index.store import Store
from certdrop.issue.delivery import PasswordFiles
from certdrop.notify.passwords import (
    MailPasswordChannel,
    choose_password_channel,
    password_mail_body,
)
from notify_helpers import T0, mail_settings


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'index.sqlite'}").open()
    yield s
    s.close()


def test_the_channel_follows_password_delivery_and_mail(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    on, off = mail_settings(25), mail_settings(25, enabled=False)
    state, outbox = tmp_path / "state", tmp_path / "outbox"
    assert isinstance(choose_password_channel("file", on, state, outbox, clock), PasswordFiles)
    assert isinstance(choose_password_channel("auto", off, state, outbox, clock), PasswordFiles)
    assert isinstance(choose_password_channel("mail", off, state, outbox, clock), PasswordFiles)
    for delivery in ("auto", "mail"):
        channel = choose_password_channel(delivery, on, state, outbox, clock)
        assert isinstance(channel, MailPasswordChannel)


def test_the_password_is_mailed_to_the_holder(store: Store, tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    channel = choose_password_channel(
        "auto", mail_settings(25), tmp_path / "state", outbox, ManualClock(T0)
    )
    with store.begin() as conn:
        channel(conn, "alice", "alice@example.org", "0A1B", "abcde-fghij", ["a note"])
    with store.begin() as conn:
        [queued] = list_queue(conn)
    assert queued.kind == "password" and queued.serial == "0A1B"
    assert queued.recipients == [("", "alice@example.org")]
    assert queued.subject == "[certdrop] password for your certificate alice.p12"
    assert queued.created_at == T0
    assert queued.body.startswith("Please note: a note\n\nHello,\n")
    assert f"    {outbox / 'alice.p12'}\n" in queued.body
    assert "    abcde-fghij\n" in queued.body
    assert not (tmp_path / "state" / "passwords").exists()


def test_without_an_address_the_password_goes_to_a_file_and_the_admin_is_told(
    store: Store, tmp_path: Path
) -> None:
    state, outbox = tmp_path / "state", tmp_path / "outbox"
    channel = choose_password_channel("mail", mail_settings(25), state, outbox, ManualClock(T0))
    with store.begin() as conn:
        channel(conn, "kiosk", "", "0C", "secret-words")
    channel.sync()
    path = state / "passwords" / "kiosk.txt"
    assert "secret-words" in path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with store.begin() as conn:
        [alert] = list_queue(conn)
    assert alert.kind == "alert" and alert.recipients == [("Ops Team", "ops@example.org")]
    assert alert.subject == "[certdrop] hand over the p12 password for kiosk"
    assert str(path) in alert.body and "secret-words" not in alert.body


def test_the_password_mail_body(tmp_path: Path) -> None:
    body = password_mail_body("bob", "0F", "pw-pw-pw", tmp_path / "outbox")
    assert body.startswith("Hello,\n\ncertdrop issued a certificate for your request bob.req")
    assert "(serial 0F)" in body
    assert "is NOT attached to this mail" in body
    assert f"    {tmp_path / 'outbox' / 'bob.p12'}\n\nThe password to import bob.p12 is:" in body
    assert "    pw-pw-pw\n" in body
    notes = password_mail_body("bob", "0F", "pw", tmp_path, ["one", "two"])
    assert notes.startswith("Please note: one\n\nPlease note: two\n\nHello,")
