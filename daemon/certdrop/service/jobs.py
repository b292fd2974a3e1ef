"""The daemon's scheduled jobs: CRL check, OCSP responder certificate, expiry sweep, mail
queue flush, inbox rescan.

The CA-wide ones (CRL renewal, expiry sweep, mail flush) run on the leading host only
(service/cluster.py; with SQLite the one host leads); every host publishes the index's
latest CRL to its own files and keeps its Apache files matching. Each host keeps its own OCSP
responder key (it never leaves the host's state folder) and asks for its certificates;
the leading host signs them (publish/responder.py).

Each job asks the current runtime (replaced on SIGHUP) for what it needs and takes
`now` from the injected clock. The issue layer's hooks land here too: an issued p12
password or a pending request may be waiting in the mail queue, so the flush runs soon.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

from ..authority.lifecycle import CHAIN_CRLS
from ..clock import Clock
from ..intake.inbox import Inbox
from ..notify.alerts import announce_pending
from ..notify.expiry import CrlAbove, SweepConfig, SweepReport, sweep
from ..notify.mailer import FlushReport, Mailer
from ..publish.upstream import read_chain_crls
from .runtime import Runtime
from .scheduler import Scheduler

log = logging.getLogger("certdrop.service")

MAIL_FLUSH_SECONDS = 5.0  # the queue is also flushed right after something is queued
CRL_CHECK_SECONDS = 300.0  # how often the CRL and the Apache files are checked
# how often the responder certificate is checked, and the leader certifies what other
# hosts asked for (a new host's `certdrop serve` waits for its first one)
RESPONDER_CHECK_SECONDS = 60.0


class Host(Protocol):
    """What the jobs need of the daemon: the current runtime, inbox and scheduler, and
    whether the worker handled requests since its last scan."""

    rt: Runtime | None
    inbox: Inbox | None
    scheduler: Scheduler | None

    @property
    def busy_with_requests(self) -> bool: ...

    def is_leader(self) -> bool: ...


class Jobs:
    """The scheduled jobs (see the module docstring)."""

    def __init__(self, host: Host, clock: Clock) -> None:
        self.host = host
        self.clock = clock
        self.crl_check_seconds = CRL_CHECK_SECONDS
        self.mail_flush_seconds = MAIL_FLUSH_SECONDS
        self.sweeps = 0  # expiry sweeps completed
        self.last_mail_error = ""

    def schedule(self, scheduler: Scheduler, rt: Runtime) -> None:
        """(Re)schedule every job for the settings of `rt`."""
        scheduler.every("rescan", rt.settings.watch.rescan_seconds, self.rescan)
        if rt.settings.mail.enabled:
            scheduler.every(
                "expiry-sweep",
                rt.settings.expiry.sweep_minutes * 60,
                self.expiry_sweep,
                run_now=True,
            )
            scheduler.every("mail-flush", self.mail_flush_seconds, self.mail_flush, run_now=True)
        else:
            scheduler.remove("expiry-sweep")
            scheduler.remove("mail-flush")
        scheduler.every("crl", self.crl_check_seconds, self.crl, run_now=True)
        scheduler.every(
            "ocsp-responder", RESPONDER_CHECK_SECONDS, self.ocsp_responder, run_now=True
        )

    # --- the jobs ---------------------------------------------------------------------------
    def crl(self) -> None:
        """Renew the CRL when due (by the injected clock), fix the Apache files."""
        rt = self.host.rt
        if rt is not None:
            rt.check_publication(lead=self.host.is_leader())

    def ocsp_responder(self) -> None:
        """Renew the OCSP responder's certificates (for `certdrop serve`: the current CA's,
        and each retiring CA's) before they end."""
        rt = self.host.rt
        if rt is not None:
            rt.check_responders(lead=self.host.is_leader())

    def expiry_sweep(self) -> SweepReport | None:
        rt = self.host.rt
        if rt is None or not self.host.is_leader():
            return None
        now = self.clock.now()
        above, _ = read_chain_crls(rt.settings.state / CHAIN_CRLS, rt.ca.chain, now)
        report = sweep(
            rt.store,
            SweepConfig.from_settings(rt.settings),
            rt.ca.bundle_certificates(),
            now,
            [CrlAbove(u.name, u.number, u.next_update, u.due_at) for u in above],
        )
        self.sweeps += 1
        if report.holder_mails or report.digest or report.alerts:
            self.kick_mail()
        return report

    def mail_flush(self) -> FlushReport | None:
        rt = self.host.rt
        if rt is None or rt.mailer is None or not self.host.is_leader():
            return None
        report = rt.mailer.flush(self.clock.now())
        if report.errors:
            self.last_mail_error = report.errors[-1]
        elif report.sent:
            self.last_mail_error = ""
        if report.sent + report.failed + report.cancelled >= Mailer.BATCH:
            self.kick_mail()  # more are due
        return report

    def rescan(self) -> None:
        """The periodic full scan (inotify drops events when its queue overflows).

        During a burst the worker scans anyway once the queue drains, and a scan now
        would queue every file of the burst a second time: it is skipped then, unless
        the daemon has been busy without a pause for ten scan intervals.
        """
        inbox, rt = self.host.inbox, self.host.rt
        if inbox is None or rt is None:
            return
        busy_for = time.monotonic() - inbox.last_scan
        if self.host.busy_with_requests and busy_for < 10 * rt.settings.watch.rescan_seconds:
            return
        inbox.scan()

    def kick_mail(self) -> None:
        """Flush the mail queue soon (on top of its interval)."""
        rt, scheduler = self.host.rt, self.host.scheduler
        if rt is None or rt.mailer is None or scheduler is None:
            return
        if not rt.mailer.busy:  # a running flush is followed by the next interval anyway
            scheduler.run_soon("mail-flush")

    def on_lead(self) -> None:
        """This host has just become the leader: the CA-wide jobs run now."""
        scheduler = self.host.scheduler
        if scheduler is not None:
            for job in ("crl", "expiry-sweep", "mail-flush", "ocsp-responder"):
                scheduler.run_soon(job)

    # --- the issue layer's hooks ---------------------------------------------------------------
    def on_issued(self, serial: str, superseded: list[str]) -> None:
        self.kick_mail()  # a p12 password may be waiting in the queue

    def on_pending(self, name: str, profile: str, subject: str) -> None:
        rt = self.host.rt
        if rt is None or not rt.settings.mail.enabled:
            return
        try:
            if announce_pending(rt.store, rt.settings.mail, name, self.clock.now()):
                self.kick_mail()
        except Exception:  # the next expiry sweep announces it again
            log.exception("could not queue the alert for pending request %s", name)
