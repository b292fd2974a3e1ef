"""The expiry sweep: which warnings and alerts it queues, once each, on a real index.

Time is a ManualClock; certificates are real (tests/notify_helpers.py); the sweep only
queues (index/mailqueue.py), so what it did is read from the queue. The end-to-end
scenarios (the pipeline, renewal, the daemon) are in tests/e2e/test_expiry_mail.py.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.x509.oid import NameOID

from certdrop.clock import ManualClock
from certdrop.index import pending as waiting
from certdrop.index.mailqueue import QueuedMail, list_queue
from certdrop.index.store import Store
from certdrop.notify.expiry import CrlAbove, SweepConfig, read_crl_next_update, sweep
from conftest import make_env
from mailpeer import mail_config
from notify_helpers import T0, certificate, index_certificate, mail_settings

ADMIN = "admin@example.org"
ALICE = "alice@example.org"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'index.sqlite'}").open()
    yield s
    s.close()


@pytest.fixture
def cfg(tmp_path: Path) -> SweepConfig:
    env = make_env(tmp_path / "ca", init=False, extra=mail_config(25, admin=ADMIN))
    return SweepConfig.from_settings(env.settings)


def queued(store: Store) -> list[QueuedMail]:
    with store.begin() as conn:
        return list_queue(conn)


def subjects(store: Store, to: str) -> list[str]:
    return [m.subject for m in queued(store) if any(a == to for _, a in m.recipients)]


# --- certificates --------------------------------------------------------------------------------
def test_each_threshold_is_warned_once(store: Store, cfg: SweepConfig) -> None:
    end = T0 + dt.timedelta(days=40)
    rec = index_certificate(store, "Alice", ALICE, end, request_name="alice")
    clock = ManualClock(T0)
    report = sweep(store, cfg, [], clock.now())
    assert (report.holder_mails, report.digest, report.recorded) == ([], [], [])

    clock.set(end - dt.timedelta(days=29))
    report = sweep(store, cfg, [], clock.now())
    assert report.holder_mails == [rec.serial] and report.digest == [rec.serial]
    assert report.recorded == [(rec.serial, 30)]
    assert subjects(store, ALICE) == [
        f"[certdrop] your certificate Alice expires in 29 days ({end:%Y-%m-%d})"
    ]
    assert subjects(store, ADMIN) == ["[certdrop] 1 certificate expiring soon"]

    clock.advance(dt.timedelta(hours=12))  # the same threshold: nothing new
    report = sweep(store, cfg, [], clock.now())
    assert (report.holder_mails, report.digest, report.recorded) == ([], [], [])

    for days_left, threshold in ((6, 7), (0.5, 1)):
        clock.set(end - dt.timedelta(days=days_left))
        report = sweep(store, cfg, [], clock.now())
        assert report.holder_mails == [rec.serial]
        assert report.recorded == [(rec.serial, threshold)]
    assert len(subjects(store, ALICE)) == 3
    assert subjects(store, ALICE)[-1].endswith(f"expires in less than a day ({end:%Y-%m-%d})")

    clock.set(end + dt.timedelta(hours=1))  # expired: no more warnings
    assert sweep(store, cfg, [], clock.now()).holder_mails == []
    assert len(queued(store)) == 6


def test_a_late_first_sweep_warns_for_the_tightest_threshold_only(
    store: Store, cfg: SweepConfig
) -> None:
    end = T0 + dt.timedelta(days=3)
    rec = index_certificate(store, "Alice", ALICE, end)
    report = sweep(store, cfg, [], T0)
    assert report.holder_mails == [rec.serial]
    assert sorted(report.recorded) == [(rec.serial, 7), (rec.serial, 30)]
    [warning] = [m for m in queued(store) if m.kind == "expiry"]
    assert warning.serial == rec.serial
    assert "expires in 3 days" in warning.subject
    # a jump back in time does not warn for the looser thresholds again
    assert sweep(store, cfg, [], end - dt.timedelta(days=20)).holder_mails == []
    assert sweep(store, cfg, [], end - dt.timedelta(hours=2)).holder_mails == [rec.serial]


def test_who_is_told(store: Store, cfg: SweepConfig) -> None:
    end = T0 + dt.timedelta(days=5)
    index_certificate(store, "Alice", ALICE, end, serial=0x0A)
    nomail = index_certificate(store, "Kiosk", "", end + dt.timedelta(hours=1), serial=0x0B)
    report = sweep(store, cfg, [], T0)
    assert report.holder_mails == ["0A"] and sorted(report.digest) == ["0A", "0B"]
    [digest] = [m for m in queued(store) if m.kind == "digest"]
    assert digest.subject == "[certdrop] 2 certificates expiring soon"
    assert f"holder warned at {ALICE}" in digest.body
    assert "NO e-mail address in the certificate: the holder was not warned" in digest.body
    assert digest.body.index("CN=Alice") < digest.body.index(nomail.subject)


def test_holder_and_admin_can_each_be_left_out(store: Store, cfg: SweepConfig) -> None:
    index_certificate(store, "Alice", ALICE, T0 + dt.timedelta(days=5))
    quiet = cfg.expiry.model_copy(update={"notify_holder": False, "notify_admin": False})
    report = sweep(store, dataclasses.replace(cfg, expiry=quiet), [], T0)
    assert (report.holder_mails, report.digest) == ([], [])
    assert report.recorded == [("0A", 7), ("0A", 30)]
    assert queued(store) == []


def test_nothing_is_recorded_while_mail_is_off(store: Store, cfg: SweepConfig) -> None:
    rec = index_certificate(store, "Alice", ALICE, T0 + dt.timedelta(days=5))
    off = dataclasses.replace(cfg, mail=mail_settings(25, enabled=False))
    report = sweep(store, off, [], T0)
    assert (report.holder_mails, report.recorded, report.alerts) == ([], [], [])
    with store.begin() as conn:
        assert store.get_meta(conn, "expiry_last_sweep") is None
    # mail enabled later: the warning still goes out
    assert sweep(store, cfg, [], T0).holder_mails == [rec.serial]
    with store.begin() as conn:
        assert store.get_meta(conn, "expiry_last_sweep") == T0.isoformat()


# --- the CA, the CRL and pending requests ----------------------------------------------------------
def test_the_ca_certificate_close_to_its_end(store: Store, cfg: SweepConfig) -> None:
    end = T0 + dt.timedelta(days=25)
    ca = certificate([(NameOID.COMMON_NAME, "Test CA")], end, serial=0x1234)
    report = sweep(store, cfg, [ca], T0)
    assert report.alerts == ["the CA certificate CN=Test CA expires in 25 days"]
    assert sweep(store, cfg, [ca], T0 + dt.timedelta(days=1)).alerts == []
    assert sweep(store, cfg, [ca], end - dt.timedelta(days=6)).alerts == [
        "the CA certificate CN=Test CA expires in 6 days"
    ]
    assert sweep(store, cfg, [ca], end + dt.timedelta(days=1)).alerts == [
        "the CA certificate CN=Test CA has EXPIRED"
    ]
    alerts = [m for m in queued(store) if m.kind == "alert"]
    assert [m.recipients for m in alerts] == [[("", ADMIN)]] * 3
    assert "serial 1234" in alerts[0].body


def _crl_next_update(store: Store, value: str) -> None:
    with store.begin() as conn:
        store.set_meta(conn, "crl_next_update", value)


def test_a_crl_that_was_not_refreshed(store: Store, cfg: SweepConfig) -> None:
    ca = certificate([(NameOID.COMMON_NAME, "Test CA")], T0 + dt.timedelta(days=900))
    # refresh_before_days = 3: an alert once less than half of that is left
    _crl_next_update(store, str(int((T0 + dt.timedelta(days=2)).timestamp())))
    assert sweep(store, cfg, [ca], T0).alerts == []
    _crl_next_update(store, str(int((T0 + dt.timedelta(days=1)).timestamp())))
    assert sweep(store, cfg, [ca], T0).alerts == [
        "the CRL of CN=Test CA was not refreshed; it expires in 1 day"
    ]
    assert sweep(store, cfg, [ca], T0 + dt.timedelta(hours=1)).alerts == []  # once per CRL
    _crl_next_update(store, (T0 - dt.timedelta(hours=1)).isoformat())
    assert sweep(store, cfg, [ca], T0).alerts == [
        "the CRL of CN=Test CA has EXPIRED: Apache refuses every client certificate"
    ]
    _crl_next_update(store, "not a time")
    assert sweep(store, cfg, [ca], T0).alerts == []
    [expired] = [m for m in queued(store) if "EXPIRED" in m.subject]
    assert "The current CRL (number 0) of\n\n    CN=Test CA\n" in expired.body


def test_the_crl_of_the_offline_root_is_announced_when_due(store: Store, cfg: SweepConfig) -> None:
    """A 365-day root CRL: due 30 days before its end, then at 7 and 1 days, then expired;
    each once. A new CRL (another number) starts over; a missing one is one alert."""
    end = T0 + dt.timedelta(days=365)
    due = end - dt.timedelta(days=30)
    crl = CrlAbove("CN=Root", 1000, end, due)
    clock = ManualClock(due - dt.timedelta(hours=1))
    assert sweep(store, cfg, [], clock.now(), [crl]).alerts == []
    seen: list[str] = []
    for at, expected in (
        (due, "is due: it expires in 30 days"),
        (due + dt.timedelta(days=1), None),
        (end - dt.timedelta(days=6), "is due: it expires in 6 days"),
        (end - dt.timedelta(hours=12), "is due: it expires in less than a day"),
        (end + dt.timedelta(hours=1), "has EXPIRED: Apache refuses every client certificate"),
        (end + dt.timedelta(days=3), None),
    ):
        clock.set(at)
        alerts = sweep(store, cfg, [], clock.now(), [crl]).alerts
        assert alerts == ([f"the CRL of CN=Root {expected}"] if expected else []), at
        seen += alerts
    assert subjects(store, ADMIN) == [f"[certdrop] {a}" for a in seen]
    body = queued(store)[0].body
    assert "certdrop root-crl --offline-root DIR" in body
    # the ceremony: a fresh CRL, not due for a year
    fresh = CrlAbove(
        "CN=Root", 2000, clock.now() + dt.timedelta(days=365), clock.now() + dt.timedelta(days=335)
    )
    assert sweep(store, cfg, [], clock.now(), [fresh]).alerts == []
    # none at all: once
    missing = CrlAbove("CN=Root", None, None, None)
    assert sweep(store, cfg, [], clock.now(), [missing]).alerts == [
        "there is no CRL of CN=Root: Apache refuses every client certificate"
    ]
    assert sweep(store, cfg, [], clock.now(), [missing]).alerts == []


def test_a_short_lived_root_crl_is_not_announced_at_once(store: Store, cfg: SweepConfig) -> None:
    """root_crl_days = 8: due two days before its end (a quarter), not at issuance."""
    start = T0
    end = start + dt.timedelta(days=8)
    crl = CrlAbove("CN=Root", 5, end, end - dt.timedelta(days=2))
    for days, expected in (
        (0, []),
        (5.9, []),
        (6, ["the CRL of CN=Root is due: it expires in 2 days"]),
    ):
        assert sweep(store, cfg, [], start + dt.timedelta(days=days), [crl]).alerts == expected


def test_pending_requests_that_were_never_announced(store: Store, cfg: SweepConfig) -> None:
    with store.begin() as conn:
        waiting.add_pending(conn, "web", "server", "f" * 64, "bob", None, T0, "CN=www")
        waiting.add_pending(conn, "old", "server", "e" * 64, "bob", None, T0, "CN=old")
        waiting.decide_pending(conn, "old", "denied", "no", T0)
    assert sweep(store, cfg, [], T0).alerts == ["pending web"]
    assert sweep(store, cfg, [], T0 + dt.timedelta(hours=1)).alerts == []
    assert subjects(store, ADMIN) == ["[certdrop] request web waits for approval (server)"]


def test_reading_the_crl_next_update() -> None:
    when = dt.datetime(2030, 5, 1, 12, 0, tzinfo=dt.UTC)
    assert read_crl_next_update(None) is None and read_crl_next_update("") is None
    assert read_crl_next_update(str(int(when.timestamp()))) == when
    assert read_crl_next_update("2030-05-01T12:00:00Z") == when
    assert read_crl_next_update("2030-05-01T12:00:00") == when  # no zone: UTC
    assert read_crl_next_update("2030-05-01T14:00:00+02:00") == when
    assert read_crl_next_update("soon") is None
