"""The one place where certdrop's collaborators are built and wired together.

A `Runtime` is everything needed to process requests and operator commands: the
daemon builds one at start (and a new one on SIGHUP); the CLI builds one when no
daemon holds the state lock and runs the operator command itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..audit import AuditLog, operator_actor
from ..authority.ca import CertificateAuthority, CertificateUrls
from ..authority.keys import read_passphrase
from ..authority.lifecycle import CHAIN_CRLS
from ..authority.lint import Linter, shared_linter
from ..authority.rollover import finish_switch
from ..authority.workers import WorkerPool
from ..clock import Clock
from ..config import Settings
from ..errors import CertdropError
from ..faults import Crashpoint, no_crash
from ..index.store import Store
from ..intake.claim import Claimer
from ..intake.request import parse_chunk, parse_many
from ..intake.spool import HELD_KEYS, Spool
from ..issue.approval import Approvals
from ..issue.batches import Batches
from ..issue.decide import Decider
from ..issue.delivery import Delivery
from ..issue.keys import DroppedKeys
from ..issue.naming import OutputNames
from ..issue.outcomes import Hooks, Outcomes
from ..issue.record import Recorder
from ..notify.alerts import queue_admin_alert
from ..notify.mailer import Mailer
from ..notify.passwords import choose_password_channel
from ..notify.requester import RequesterMail
from ..publish.apache import ApachePublisher
from ..publish.crl import CrlPublisher
from ..publish.responder import ResponderPublisher
from ..publish.retiring import CrlSet, load_crls
from ..publish.revocation import Revoker
from .cluster import host_id, read_host_id
from .systemd import StateLock

LOCAL_HOST = "local"  # this state's name in the index before a daemon gave it a host id

log = logging.getLogger("certdrop.service")


@dataclass
class Runtime:
    """Everything needed to process requests and operator commands."""

    settings: Settings
    clock: Clock
    store: Store
    ca: CertificateAuthority
    spool: Spool
    batches: Batches  # requests from the inbox to their end
    approvals: Approvals
    linter: Linter | None
    crl: CrlPublisher  # the issuing CA's
    revoker: Revoker
    responder: ResponderPublisher  # the OCSP responder's certificate, for `certdrop serve`
    hooks: Hooks = field(default_factory=Hooks)
    mailer: Mailer | None = None  # None when [mail] enabled = false
    apache: ApachePublisher | None = None  # None when [apache] enabled = false
    pool: WorkerPool | None = None
    crls: CrlSet | None = None  # every CA's CRL: the issuing CA's and the retiring ones'
    ca_changed: bool = False  # a rollover switched the CA: the daemon builds a new Runtime

    @classmethod
    def build(
        cls,
        settings: Settings,
        clock: Clock,
        hooks: Hooks | None = None,
        *,
        signing_pool: bool = False,
        crashpoint: Crashpoint = no_crash,
        host: str | None = None,
        checkpoint_thread: bool = False,
    ) -> Runtime:
        """`host`: this host's id (service/cluster.py); on a shared index its claims go
        to the spool's .claims/HOST/ and the CRLs it signs are recorded under it.
        `checkpoint_thread`: the daemon's; on SQLite, the WAL is copied into the file by
        a thread of its own (index/store.py), not by the batch whose commit filled it."""
        hooks = hooks or Hooks()
        store = Store(settings.database_url, checkpoint_thread=checkpoint_thread).open()
        passphrase = read_passphrase(settings.ca.key_passphrase_file)
        finish_switch(settings.state)  # a rollover a crash interrupted
        ca = CertificateAuthority.load(settings.state, passphrase)
        if host is None and settings.clustered:
            host = host_id(settings.state)
        spool = Spool(settings.spool, host if settings.clustered else None)
        spool.create(list(settings.profiles), settings.policy.default_profile)
        linter = shared_linter() if settings.policy.lint else None
        mailer = Mailer.from_settings(store, settings.mail) if settings.mail.enabled else None
        password_channel = choose_password_channel(
            settings.pkcs12.password_delivery, settings.mail, settings.state, spool.outbox, clock
        )
        p12_encryption = settings.profile_pkcs12_encryption
        claimer = Claimer(
            spool,
            list(settings.profiles),
            settings.policy.default_profile,
            settings.watch,
            crashpoint,
        )
        names = OutputNames(spool, store, settings.state / "passwords")
        delivery = Delivery(
            spool,
            store,
            ca,
            clock,
            claimer,
            password_channel,
            p12_encryption,
            names,
            crashpoint,
        )
        # requesters are told by mail; None unless [mail] enabled and notify_requester are true
        requester = RequesterMail.from_settings(settings, spool)
        outcomes = Outcomes(
            spool,
            store,
            clock,
            delivery,
            hooks,
            # the key of a request waiting for approval: where any host may approve it
            spool.claims / HELD_KEYS if settings.clustered else settings.state / "pending-keys",
            crashpoint,
            requester,
        )
        decider = Decider(
            settings.profiles,
            CertificateUrls(settings.crl_url, settings.ocsp_url, settings.ca_issuers_url),
            store,
            ca,
            clock,
            outcomes,
            delivery,
        )
        recorder = Recorder(
            spool,
            store,
            ca,
            outcomes,
            delivery,
            password_channel,
            p12_encryption,
            hooks,
            names,
            linter=linter,
            crashpoint=crashpoint,
            notices=requester,
        )
        keys = DroppedKeys(
            spool, store, clock, claimer, delivery, outcomes, settings.pkcs12.orphan_key_minutes
        )
        batches = Batches(
            claimer,
            decider,
            recorder,
            outcomes,
            keys,
            spool,
            clock,
            list(settings.profiles),
            hooks,
            crashpoint=crashpoint,
        )
        approvals = Approvals(spool, store, clock, batches, outcomes, hooks, requester)
        crls = load_crls(settings.crl, settings.state, store, ca, clock, linter, passphrase)
        crl = crls.issuing
        for pub in crls.all():
            pub.host = host or ""  # recorded with the CRLs it signs (several hosts)
        apache = None
        if settings.apache.enabled:

            def alert(subject: str, body: str, key: str | None = None) -> None:
                queue_admin_alert(store, settings.mail, subject, body, clock.now(), key=key)

            apache = ApachePublisher(
                settings.apache,
                crl,
                ca,
                store,
                clock,
                settings.state / CHAIN_CRLS,
                on_failure=alert if settings.mail.enabled else None,
                others=crls.retiring,
            )
            crls.add_listener(apache.changed)
        revoker = Revoker(store, clock, crl, apache, requester, crls=crls)
        responder = ResponderPublisher(
            settings.state,
            ca,
            clock,
            linter.certificate if linter else None,
            store,
            host or read_host_id(settings.state) or LOCAL_HOST,
            hooks.audit,
        )
        rt = cls(
            settings,
            clock,
            store,
            ca,
            spool,
            batches,
            approvals,
            linter,
            crl,
            revoker,
            responder,
            hooks,
            mailer,
            apache,
            crls=crls,
        )
        if signing_pool and (os.cpu_count() or 1) > 1:
            pool = rt.pool = WorkerPool(
                ca,
                settings.state,
                passphrase,
                lint=settings.policy.lint,
                preload=[parse_chunk.__module__],
            )
            recorder.signer = pool.sign
            batches.parser = lambda datas: pool.map_later(
                parse_chunk, datas, fallback=parse_many, what="parsing"
            )
        return rt

    def check_publication(self, lead: bool = True) -> None:
        """The periodic job: the index's latest CRL in this host's files; fresh CRLs, made
        by the leading host only (retiring CAs whose certificates all ended are retired);
        and Apache files matching them. Never raises."""
        self.follow_crl()
        if lead:
            if self.crls is not None:
                self.crls.check()
            else:
                self.crl.check()
        if self.apache is not None:
            self.apache.check()

    def check_responders(self, lead: bool = True) -> None:
        """The periodic job: the OCSP responder certificate of the current CA and, after a
        rollover, one of each retiring CA (in its cas/<id>/, issued by it), renewed when
        due, and certified by the leading host; `certdrop serve` answers for each. Never
        raises."""
        mine = self.responder
        mine.check(lead)
        if self.crls is None:
            return
        for pub in self.crls.retiring():
            ResponderPublisher(
                pub.folder, pub.ca, self.clock, mine.linter, self.store, mine.host, mine.audit
            ).check(lead)

    def follow_crl(self) -> None:
        """Publish a CRL another host sharing the index signed. Never raises."""
        if not self.settings.clustered:
            return  # the only host signs every CRL itself
        try:
            self.crl.follow()
        except CertdropError as exc:
            log.error("publishing the index's latest CRL: %s", exc)
        except Exception:
            log.exception("publishing the index's latest CRL failed")

    def close(self) -> None:
        if self.apache is not None:
            self.apache.close()  # a debounced Apache publication still waiting is done now
        if self.pool is not None:
            self.pool.close()
        self.store.close()


def operator_hooks(settings: Settings, clock: Clock) -> Hooks:
    """Hooks for a Runtime that the CLI runs itself: audited under the operator's name."""
    return Hooks(audit=AuditLog.in_state(settings.state, clock, actor=operator_actor()))


@contextlib.contextmanager
def direct_runtime(settings: Settings, clock: Clock) -> Iterator[Runtime | None]:
    """A Runtime for the CLI when no daemon holds the state lock, else None."""
    lock = StateLock(settings.state)
    if not lock.acquire():
        yield None
        return
    try:
        rt = Runtime.build(settings, clock, operator_hooks(settings, clock))
        try:
            yield rt
        finally:
            rt.close()
    finally:
        lock.release()
