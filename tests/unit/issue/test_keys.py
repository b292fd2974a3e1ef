"""Keys dropped on their own (certdrop.issue.keys.DroppedKeys): a late key gets the p12 of
the certificate issued moments ago, an early key waits, an orphan is refused and deleted."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from certdrop.intake.claim import KeyDrop
from certdrop.issue.outcomes import Outcome, Result
from conftest import ec_csr
from issue_kit import SERVER, Kit, age, make_kit, open_p12

WINDOW = 10 * 60  # [pkcs12] orphan_key_minutes, the default


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    k = make_kit(tmp_path)
    yield k
    k.close()


def key_drop(kit: Kit, name: str, data: bytes, profile: str = "client") -> KeyDrop:
    """NAME.key dropped in the inbox on its own, as the Claimer reports it."""
    folder = kit.env.inbox if profile == "client" else kit.env.inbox / profile
    path = folder / f"{name}.key"
    path.write_bytes(data)
    path.chmod(0o600)
    found = kit.claimer.claim(path, profile, set(), {})
    assert isinstance(found, KeyDrop), found
    return found


def look_again(kit: Kit, drop: KeyDrop) -> KeyDrop:
    """The same key looked at again (its metadata now)."""
    found = kit.claimer.claim(drop.path, drop.profile, set(), {})
    assert isinstance(found, KeyDrop)
    return found


def key_left(kit: Kit, name: str) -> list[Path]:
    return [p for p in kit.spool.root.rglob(f"{name}.*key") if p.exists()]


def test_a_late_key_gets_the_p12_of_the_certificate_just_issued(kit: Kit) -> None:
    pem, key = ec_csr("Late Lucy")
    first = kit.process("lucy", pem)
    assert first.outcome is Outcome.ISSUED
    kit.clock.advance(dt.timedelta(minutes=9))  # still within the window
    res = kit.keys.handle(key_drop(kit, "lucy", key))
    assert res == Result(Outcome.REDELIVERED, "lucy", serial=first.serial)
    bundle = open_p12(kit.env, "lucy")
    assert bundle.cert is not None and first.serial is not None
    assert bundle.cert.certificate.serial_number == int(first.serial, 16)
    assert key_left(kit, "lucy") == []  # neither in the inbox nor claimed in work/
    assert kit.outcomes_of("lucy") == ["issued", "p12"]


def test_a_late_key_that_does_not_belong_is_refused_and_deleted(kit: Kit) -> None:
    pem, _ = ec_csr("Mia Mismatch")
    _, other = ec_csr("Someone Else")
    assert kit.process("mia", pem).outcome is Outcome.ISSUED
    res = kit.keys.handle(key_drop(kit, "mia", other))
    assert res.outcome is Outcome.REJECTED
    assert "mia.key does not belong to the certificate issued for mia.req" in res.reason
    assert (kit.env.rejected / "mia.reason").read_text() == res.reason
    assert not (kit.env.outbox / "mia.p12").exists()
    assert key_left(kit, "mia") == []
    assert (kit.env.outbox / "mia.cer").exists()  # the certificate stays delivered


def test_an_early_key_waits_for_its_request(kit: Kit) -> None:
    _, key = ec_csr("Early Ed")
    drop = key_drop(kit, "ed", key)
    age(drop.path, 60)
    res = kit.keys.handle(look_again(kit, drop))
    assert res.outcome is Outcome.RETRY and res.reason == "key waiting for its request"
    assert WINDOW - 60 - 5 < res.retry_after <= WINDOW - 60
    assert (kit.env.inbox / "ed.key").exists()  # left where it is
    assert kit.journal("ed") == []


def test_an_orphan_key_is_refused_and_deleted_after_the_window(kit: Kit) -> None:
    _, key = ec_csr("Olga Orphan")
    drop = key_drop(kit, "olga", key)
    age(drop.path, WINDOW + 1)
    res = kit.keys.handle(look_again(kit, drop))
    assert res.outcome is Outcome.REJECTED
    reason = (kit.env.rejected / "olga.reason").read_text()
    assert (
        "olga.key was dropped without olga.req and no request came within 10 minutes; "
        "the key was deleted, not stored" in reason
    )
    assert not os.path.lexists(drop.path) and key_left(kit, "olga") == []
    assert kit.outcomes_of("olga") == ["rejected"]


def test_a_key_is_late_only_within_the_window_of_its_certificate(kit: Kit) -> None:
    pem, key = ec_csr("Pete Too Late")
    assert kit.process("pete", pem).outcome is Outcome.ISSUED
    kit.clock.advance(dt.timedelta(minutes=11))  # the certificate is older than the window
    drop = key_drop(kit, "pete", key)
    age(drop.path, WINDOW + 1)
    res = kit.keys.handle(look_again(kit, drop))
    assert res.outcome is Outcome.REJECTED and "without pete.req" in res.reason
    assert not (kit.env.outbox / "pete.p12").exists()


def test_a_key_for_another_profile_is_not_late(kit: Kit) -> None:
    pem, key = ec_csr("Quinn Client")
    assert kit.process("quinn", pem).outcome is Outcome.ISSUED
    res = kit.keys.handle(key_drop(kit, "quinn", key, profile=SERVER))
    assert res.outcome is Outcome.RETRY  # waits for a server request named quinn
    assert not (kit.env.outbox / "quinn.p12").exists()


def test_a_key_beside_its_request_is_left_to_the_request(kit: Kit) -> None:
    pem, key = ec_csr("Rita Beside")
    drop = key_drop(kit, "rita", key)
    kit.drop("rita", pem)
    assert kit.keys.handle(drop) == Result(Outcome.SKIPPED, "rita")
    (kit.env.inbox / "rita.req").rename(kit.spool.claimed_path("client", "rita.req"))
    assert kit.keys.handle(drop) == Result(Outcome.SKIPPED, "rita")  # claimed: being processed
    assert drop.path.read_bytes() == key


def test_keys_that_cannot_be_used_are_refused_at_once(kit: Kit, tmp_path: Path) -> None:
    _, key = ec_csr("Hard Link")
    drop = key_drop(kit, "linked", key)
    os.link(drop.path, tmp_path / "elsewhere.key")
    res = kit.keys.handle(look_again(kit, drop))
    assert res.outcome is Outcome.REJECTED and "hard-linked" in res.reason
    assert not drop.path.exists() and (tmp_path / "elsewhere.key").exists()

    bad = key_drop(kit, "bad name", key)
    res = kit.keys.handle(bad)
    assert res.outcome is Outcome.REJECTED and res.name == "bad_name"
    assert (
        "the key file's name is not allowed" in (kit.env.rejected / "bad_name.reason").read_text()
    )
    assert not bad.path.exists()
