"""The daemon's scheduled jobs (certdrop.service.jobs.Jobs), run one by one at ManualClock
time against a real runtime, a real inbox and a real SMTP peer; the host is a plain
record of what the daemon would hold."""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certdrop.authority.responder import RESPONDER_FILE, ResponderCredentials
from certdrop.config import MailSettings
from certdrop.index.mailqueue import list_queue
from certdrop.intake.inbox import Inbox, WorkQueue
from certdrop.notify.alerts import queue_admin_alert
from certdrop.notify.mailer import Mailer
from certdrop.service.jobs import Jobs
from certdrop.service.runtime import Runtime
from certdrop.service.scheduler import Scheduler
from conftest import ec_csr, lint_clean
from issue_kit import SERVER, Kit, attrs, make_kit
from mailpeer import SmtpPeer, mail_config


class RecordingScheduler(Scheduler):
    """The real scheduler (never started here), remembering what it was asked to run soon."""

    def __init__(self) -> None:
        super().__init__()
        self.soon: list[str] = []

    def run_soon(self, job_id: str) -> None:
        self.soon.append(job_id)
        super().run_soon(job_id)


@dataclass
class Host:
    """What the jobs ask of the daemon."""

    rt: Runtime | None
    inbox: Inbox | None = None
    scheduler: Scheduler | None = field(default_factory=RecordingScheduler)
    busy: bool = False

    @property
    def busy_with_requests(self) -> bool:
        return self.busy


@pytest.fixture
def peer() -> Iterator[SmtpPeer]:
    p = SmtpPeer().start()
    yield p
    p.stop()


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    k = make_kit(tmp_path)
    yield k
    k.close()


@pytest.fixture
def mail_kit(tmp_path: Path, peer: SmtpPeer) -> Iterator[Kit]:
    k = make_kit(tmp_path, extra=mail_config(peer.port))
    yield k
    k.close()


def jobs_for(kit: Kit) -> tuple[Jobs, Host, RecordingScheduler]:
    host = Host(kit.rt)
    assert isinstance(host.scheduler, RecordingScheduler)
    return Jobs(host, kit.clock), host, host.scheduler


def crl_number(kit: Kit) -> int:
    crl = x509.load_der_x509_crl((kit.env.state / "crl.der").read_bytes())
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


# --- scheduling --------------------------------------------------------------------------------------------
def test_schedule_follows_the_mail_setting(mail_kit: Kit) -> None:
    jobs, _, sched = jobs_for(mail_kit)
    jobs.schedule(sched, mail_kit.rt)
    assert sorted(sched.job_ids()) == [
        "crl",
        "expiry-sweep",
        "mail-flush",
        "ocsp-responder",
        "rescan",
    ]
    no_mail = dataclasses.replace(
        mail_kit.rt, settings=mail_kit.rt.settings.model_copy(update={"mail": MailSettings()})
    )
    jobs.schedule(sched, no_mail)  # a reload turned mail off
    # (a scheduler not started yet keeps a replaced job twice until it starts: a set)
    assert set(sched.job_ids()) == {"crl", "ocsp-responder", "rescan"}
    fresh = RecordingScheduler()
    jobs.schedule(fresh, no_mail)
    assert sorted(fresh.job_ids()) == ["crl", "ocsp-responder", "rescan"]


# --- the OCSP responder's certificate -------------------------------------------------------------------
def test_the_responder_certificate_is_renewed_before_it_ends(kit: Kit) -> None:
    """The job makes the responder's key and certificate (0600) and, by the injected clock,
    a new one before the old one ends; every one is lint-clean and audited."""
    jobs, _, _ = jobs_for(kit)
    path = kit.env.state / RESPONDER_FILE

    def current() -> x509.Certificate:
        assert path.stat().st_mode & 0o777 == 0o600
        return ResponderCredentials.from_pem(path.read_bytes()).cert

    jobs.ocsp_responder()
    first = current()
    assert lint_clean(first.public_bytes(serialization.Encoding.DER)) == []
    first.verify_directly_issued_by(kit.rt.ca.cert)
    jobs.ocsp_responder()
    assert current() == first  # still fresh
    kit.clock.set(first.not_valid_after_utc - dt.timedelta(days=1))  # a day left
    jobs.ocsp_responder()
    second = current()
    assert second.serial_number != first.serial_number
    assert second.public_key() != first.public_key()  # a new key too
    assert second.not_valid_before_utc <= kit.clock.now() < first.not_valid_after_utc
    assert second.not_valid_after_utc > first.not_valid_after_utc
    assert [e["serial"] for e in kit.events("ocsp-responder-issued")] == [
        f"{c.serial_number:X}" for c in (first, second)
    ]
    path.write_bytes(b"damaged")  # anything unusable is replaced
    jobs.ocsp_responder()
    assert current() != second


# --- the CRL ----------------------------------------------------------------------------------------------
def test_the_crl_job_renews_the_crl_when_due_by_the_clock(kit: Kit) -> None:
    jobs, host, _ = jobs_for(kit)
    jobs.crl()  # none published yet: made now
    first = crl_number(kit)
    jobs.crl()
    assert crl_number(kit) == first  # still fresh: nothing to do
    kit.clock.advance(dt.timedelta(days=4, minutes=1))  # 7-day CRL, refreshed 3 days before
    jobs.crl()
    second = crl_number(kit)
    assert second == first + dt.timedelta(days=4, minutes=1) // dt.timedelta(microseconds=1) * 1000
    host.rt = None  # between two runtimes (a reload): nothing happens
    kit.clock.advance(dt.timedelta(days=10))
    jobs.crl()
    assert crl_number(kit) == second


# --- expiry warnings and the mail queue ----------------------------------------------------------------------
def test_the_expiry_sweep_queues_warnings_and_kicks_the_flush(mail_kit: Kit) -> None:
    jobs, host, sched = jobs_for(mail_kit)
    res = mail_kit.process("ann", ec_csr("", attrs("Ann Expiring", "ann@example.org"))[0])
    assert res.serial is not None
    assert jobs.expiry_sweep() is not None and sched.soon == []  # nothing due yet
    mail_kit.clock.set(mail_kit.cert(res.serial).not_after - dt.timedelta(days=6))
    report = jobs.expiry_sweep()
    assert report is not None and report.holder_mails == [res.serial]
    assert jobs.sweeps == 2
    assert sched.soon == ["mail-flush"]
    with mail_kit.store.begin() as conn:
        queued = [m for m in list_queue(conn) if m.kind == "expiry"]
    assert [m.recipients[0][1] for m in queued] == ["ann@example.org"]
    host.rt = None
    assert jobs.expiry_sweep() is None and jobs.sweeps == 2


def test_mail_flush_sends_and_remembers_the_last_error(mail_kit: Kit, peer: SmtpPeer) -> None:
    jobs, host, sched = jobs_for(mail_kit)
    settings = mail_kit.rt.settings.mail
    queue_admin_alert(mail_kit.store, settings, "first alert", "body", mail_kit.clock.now())
    report = jobs.mail_flush()
    assert report is not None and report.sent == 1 and jobs.last_mail_error == ""
    assert [m.subject for m in peer.messages] == ["[certdrop] first alert"]
    assert sched.soon == []  # nothing more due
    peer.stop()  # the SMTP server goes away
    queue_admin_alert(mail_kit.store, settings, "second alert", "body", mail_kit.clock.now())
    report = jobs.mail_flush()
    assert report is not None and report.sent == 0 and report.errors
    assert jobs.last_mail_error == report.errors[-1]
    host.rt = None
    assert jobs.mail_flush() is None


def test_a_full_flush_batch_asks_for_the_next_one_at_once(mail_kit: Kit, peer: SmtpPeer) -> None:
    jobs, _, sched = jobs_for(mail_kit)
    settings = mail_kit.rt.settings.mail
    for i in range(Mailer.BATCH + 1):
        queue_admin_alert(mail_kit.store, settings, f"alert {i}", "body", mail_kit.clock.now())
    report = jobs.mail_flush()
    assert report is not None and report.sent == Mailer.BATCH
    assert sched.soon == ["mail-flush"]  # one more is due
    report = jobs.mail_flush()
    assert report is not None and report.sent == 1 and sched.soon == ["mail-flush"]
    assert len(peer.messages) == Mailer.BATCH + 1


def test_without_mail_the_mail_jobs_do_nothing(kit: Kit) -> None:
    jobs, _, sched = jobs_for(kit)
    assert kit.rt.mailer is None
    assert jobs.mail_flush() is None
    jobs.kick_mail()
    jobs.on_issued("0A", [])
    kit.process("web", ec_csr("web.example.org")[0], SERVER)
    jobs.on_pending("web", SERVER, "CN=web.example.org")
    assert sched.soon == []
    with kit.store.begin() as conn:
        assert list_queue(conn) == []


# --- the issue layer's hooks --------------------------------------------------------------------------------
def test_a_pending_request_alerts_the_admin_once(mail_kit: Kit) -> None:
    jobs, host, sched = jobs_for(mail_kit)
    mail_kit.process("web", ec_csr("web.example.org")[0], SERVER)
    jobs.on_pending("web", SERVER, "CN=web.example.org")
    jobs.on_pending("web", SERVER, "CN=web.example.org")  # the same request: queued once
    with mail_kit.store.begin() as conn:
        subjects = [m.subject for m in list_queue(conn)]
    assert subjects == ["[certdrop] request web waits for approval (server)"]
    assert sched.soon == ["mail-flush"]
    jobs.on_pending("nosuch", SERVER, "CN=x")  # not pending (any more): nothing
    jobs.on_issued("0A", [])  # a password mail may wait: flush soon
    assert sched.soon == ["mail-flush", "mail-flush"]
    host.scheduler = None
    jobs.kick_mail()  # no scheduler (stopping): nothing to kick, no error


# --- the rescan --------------------------------------------------------------------------------------------------
def test_rescan_queues_the_inbox_unless_a_burst_is_being_handled(kit: Kit) -> None:
    settings = kit.rt.settings
    queue = WorkQueue()
    inbox = Inbox(
        settings.spool / "inbox",
        list(settings.profiles),
        settings.policy.default_profile,
        settings.watch,
        queue,
    )
    jobs, host, _ = jobs_for(kit)
    jobs.rescan()  # no inbox yet: nothing
    host.inbox = inbox
    kit.drop("one", b"x")
    jobs.rescan()
    assert queue.depth() == (1, 0)
    kit.drop("two", b"x")
    host.busy = True  # the worker scans after the burst anyway
    jobs.rescan()
    assert queue.depth() == (1, 0)
    inbox.last_scan = time.monotonic() - 10 * settings.watch.rescan_seconds - 1
    jobs.rescan()  # busy for ten intervals without a pause: scanned all the same
    assert queue.depth() == (2, 0)
    assert sorted(i.path.name for i in queue.get_batch(10, 0)) == ["one.req", "two.req"]
