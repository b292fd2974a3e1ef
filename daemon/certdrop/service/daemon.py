"""The service layer: wires settings, index, CA, pipeline, inbox and scheduler together.

It owns the threads (watchdog observer, one worker, the scheduler), the signals
(handlers only set flags), the state lock and sd_notify. Operator commands reach a
running daemon through the index's control table; when no daemon runs, the CLI
takes the lock and runs the same operations itself.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

from ..audit import AuditLog, operator_actor
from ..authority.ca import CertificateAuthority
from ..authority.keys import read_passphrase
from ..authority.lint import Linter, shared_linter
from ..authority.signpool import SigningPool, settle_heap
from ..clock import Clock
from ..config import Settings, load_settings
from ..errors import CertdropError, ConfigError, IndexUnavailable, LockError
from ..faults import crashpoint_from_environment
from ..index.store import Store
from ..intake.inbox import Inbox, WorkItem, WorkQueue
from ..intake.request import parse_chunk, parse_many
from ..intake.spool import Spool
from ..issue.pipeline import Outcome, Pipeline, PipelineHooks, Result, Ticket
from ..notify.expiry import SweepConfig, SweepReport, announce_pending, sweep
from ..notify.mail import FlushReport, Mailer, choose_password_channel, queue_admin_alert
from ..publish.publish import CRL_CHECK_SECONDS, Publisher, build_publisher
from .scheduler import Scheduler

T = TypeVar("T")

log = logging.getLogger("certdrop.service")

LOCK_FILE = "certdrop.lock"
BATCH_SIZE = 256  # requests taken off the queue and committed together
POOL_IDLE_SECONDS = 60.0  # the signing processes stop after this long without a burst
# after a full disk or an unusable index: first retry of work/, and the longest wait
RECOVER_FIRST_DELAY = 5.0
RECOVER_MAX_DELAY = 300.0
STALL_SECONDS = 120.0  # one task of the worker longer than this (and WatchdogSec) is a hang


class StateLock:
    """An exclusive flock on <state>/certdrop.lock: one daemon (or one CLI writer) at a time."""

    def __init__(self, state: Path) -> None:
        self.path = state / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def holder(self) -> str:
        try:
            return self.path.read_text().strip() or "?"
        except OSError:
            return "?"

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> StateLock:
        if not self.acquire():
            raise LockError(
                f"another certdrop daemon (pid {self.holder()}) is running on {self.path.parent}"
            )
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Notifier:
    """sd_notify(3) without libsystemd: datagrams to $NOTIFY_SOCKET, if set."""

    def __init__(self, address: str | None = None) -> None:
        addr = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self._addr: str | None = None
        if addr:
            self._addr = "\0" + addr[1:] if addr.startswith("@") else addr
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self._addr is not None

    @staticmethod
    def watchdog_usec(environ: dict[str, str] | None = None) -> int:
        """$WATCHDOG_USEC when the service manager wants pings from this process, else 0.

        Like sd_watchdog_enabled(3): $WATCHDOG_PID, when set, must be our pid (a child
        that inherited the variables must not ping in our name).
        """
        env = os.environ if environ is None else environ
        try:
            usec = int(env.get("WATCHDOG_USEC", "0"))
        except ValueError:
            return 0
        pid = env.get("WATCHDOG_PID", "")
        if pid:
            try:
                if int(pid) != os.getpid():
                    return 0
            except ValueError:
                return 0
        return max(usec, 0)

    def notify(self, *fields: str) -> None:
        if self._addr is None:
            return
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(
                        socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                    )
                # never block: a service manager that stops reading must not freeze us
                self._sock.sendto("\n".join(fields).encode(), socket.MSG_DONTWAIT, self._addr)
            except OSError as exc:
                log.debug("sd_notify failed: %s", exc)

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


@dataclass
class Runtime:
    """Everything needed to process requests and operator commands."""

    settings: Settings
    clock: Clock
    store: Store
    ca: CertificateAuthority
    spool: Spool
    pipeline: Pipeline
    linter: Linter | None
    hooks: PipelineHooks = field(default_factory=PipelineHooks)
    mailer: Mailer | None = None  # None when [mail] enabled = false
    publisher: Publisher | None = None
    pool: SigningPool | None = None

    @classmethod
    def build(
        cls,
        settings: Settings,
        clock: Clock,
        hooks: PipelineHooks | None = None,
        *,
        signing_pool: bool = False,
    ) -> Runtime:
        hooks = hooks or PipelineHooks()
        store = Store(settings.database_url).open()
        passphrase = read_passphrase(settings.ca.key_passphrase_file)
        ca = CertificateAuthority.load(settings.state, passphrase)
        spool = Spool(settings.spool)
        spool.create(list(settings.profiles), settings.policy.default_profile)
        linter = shared_linter() if settings.policy.lint else None
        mailer = Mailer.from_settings(store, settings.mail) if settings.mail.enabled else None
        pipeline = Pipeline(
            settings,
            spool,
            store,
            ca,
            clock,
            linter=linter,
            password_channel=choose_password_channel(
                settings.pkcs12.password_delivery,
                settings.mail,
                settings.state,
                spool.outbox,
                clock,
            ),
            hooks=hooks,
        )
        publisher = build_publisher(settings, store, ca, clock, linter)
        if publisher is not None and settings.mail.enabled:

            def alert(subject: str, body: str) -> None:
                queue_admin_alert(store, settings.mail, subject, body, clock.now())

            publisher.on_failure = alert
        rt = cls(settings, clock, store, ca, spool, pipeline, linter, hooks, mailer, publisher)
        if signing_pool and (os.cpu_count() or 1) > 1:
            pool = rt.pool = SigningPool(
                ca,
                settings.state,
                passphrase,
                lint=settings.policy.lint,
                preload=[parse_chunk.__module__],
            )
            pipeline.signer = pool.sign
            pipeline.parser = lambda datas: pool.map_later(
                parse_chunk, datas, fallback=parse_many, what="parsing"
            )
        return rt

    def close(self) -> None:
        if self.publisher is not None:
            self.publisher.close()  # a debounced Apache publication still waiting is done now
        if self.pool is not None:
            self.pool.close()
        self.store.close()


ControlHandler = Callable[[Runtime, dict[str, Any]], str]


def _approve(rt: Runtime, payload: dict[str, Any]) -> str:
    res = rt.pipeline.approve(str(payload["name"]))
    return _describe(res)


def _deny(rt: Runtime, payload: dict[str, Any]) -> str:
    res = rt.pipeline.deny(str(payload["name"]), str(payload.get("reason", "")))
    return _describe(res)


def _publisher(rt: Runtime) -> Publisher:
    if rt.publisher is None:
        raise CertdropError("CRL publication is not available in this runtime")
    return rt.publisher


def _revoke(rt: Runtime, payload: dict[str, Any]) -> str:
    pub = _publisher(rt)
    return "ok: " + pub.revoke(str(payload["ref"]), str(payload.get("reason") or "unspecified"))


def _crl(rt: Runtime, payload: dict[str, Any]) -> str:
    pub = _publisher(rt)
    facts = pub.regenerate_crl("requested by the operator")
    line = (
        f"ok: CRL {facts.number} published in {pub.crl_pem_path} and {pub.crl_der_path} "
        f"({facts.revoked} revoked, next update {facts.next_update:%Y-%m-%d %H:%M} UTC)"
    )
    if rt.settings.apache.enabled:
        pub.flush()  # the operator asked for it now: no debounce
        outcome = pub.last_apache_outcome()
        if outcome is not None:
            if not outcome.ok:
                return f"error: {line[4:]}; but Apache publication failed: {outcome.text()}"
            line += f"; Apache: {outcome.text()}"
    return line


CONTROL_HANDLERS: dict[str, ControlHandler] = {
    "approve": _approve,
    "deny": _deny,
    "revoke": _revoke,
    "crl": _crl,
}


def _describe(res: Result) -> str:
    if res.outcome is Outcome.ISSUED:
        return f"ok: issued {res.name} serial {res.serial} -> outbox/{res.name}.cer"
    if res.outcome is Outcome.REJECTED:
        return f"ok: {res.name} refused -> rejected/{res.name}.reason\n{res.reason}"
    if res.outcome is Outcome.REDELIVERED:
        return f"ok: {res.name} already had serial {res.serial}; delivered again"
    if res.outcome is Outcome.PENDING:
        return f"ok: {res.name} is waiting for approval"
    return f"ok: {res.name}: {res.outcome.value} {res.reason}".rstrip()


def execute_control(rt: Runtime, kind: str, payload: dict[str, Any]) -> str:
    """Run one operator command; the result line starts with 'ok:' or 'error:'."""
    handler = CONTROL_HANDLERS.get(kind)
    if handler is None:
        result = f"error: unknown command {kind!r}"
    else:
        try:
            result = handler(rt, payload)
        except CertdropError as exc:
            result = f"error: {exc}"
        except Exception:
            # a bug must not take the worker down with it; the operator sees an error
            log.exception("internal error in operator command %s %s", kind, payload)
            result = f"error: internal error while running {kind}; see the certdrop log"
    _audit_operator(rt, kind, payload, result)
    return result


def _audit_operator(rt: Runtime, kind: str, payload: dict[str, Any], result: str) -> None:
    """Every operator command is in the audit log, with who asked and what came of it."""
    if rt.hooks.audit is None:
        return
    args = {k: v for k, v in payload.items() if k != "actor"}
    event: dict[str, Any] = {
        "event": "operator",
        "command": kind,
        "args": args,
        "ok": not result.startswith("error:"),
        "result": result.split("\n", 1)[0].removeprefix("ok:").removeprefix("error:").strip(),
    }
    if payload.get("actor"):
        event["actor"] = str(payload["actor"])
    rt.hooks.audit(event)


def operator_hooks(settings: Settings, clock: Clock) -> PipelineHooks:
    """Hooks for a Runtime that the CLI runs itself: audited under the operator's name."""
    return PipelineHooks(audit=AuditLog.in_state(settings.state, clock, actor=operator_actor()))


class Daemon:
    def __init__(
        self,
        settings: Settings,
        clock: Clock,
        *,
        config_path: Path | None = None,
        notifier: Notifier | None = None,
        own_process: bool = True,
        watchdog_usec: int | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.config_path = config_path
        self.notifier = notifier or Notifier()
        # the daemon is the process (not a thread of a test): it installs the signal
        # handlers and tunes the garbage collector
        self.own_process = own_process
        self.queue = WorkQueue()
        # batches started and not finished, oldest first: ticket and their work items
        self._started: list[tuple[Ticket, list[WorkItem]]] = []
        self.stop_requested = threading.Event()
        self.reload_requested = threading.Event()
        self.ready = threading.Event()
        self._wake = threading.Event()
        self._worker: threading.Thread | None = None
        self._worker_error: BaseException | None = None
        self.rt: Runtime | None = None
        self.inbox: Inbox | None = None
        self.scheduler: Scheduler | None = None
        self.counts: dict[str, int] = {o.value: 0 for o in Outcome}
        self.crl_check_seconds = CRL_CHECK_SECONDS
        self.last_error = ""
        self._had_activity = False
        self.sweeps = 0  # expiry sweeps completed
        self.last_mail_error = ""
        # systemd integration: watchdog pings only while every thread is alive
        self.watchdog_usec = (
            Notifier.watchdog_usec() if watchdog_usec is None else max(watchdog_usec, 0)
        )
        if not self.notifier.enabled:
            self.watchdog_usec = 0
        self.watchdog_pings = 0
        self.health_checks = 0
        self.exit_code = 0
        self.audit = AuditLog.in_state(settings.state, clock, actor="daemon")
        self.last_reload: tuple[dt.datetime, bool, str] | None = None
        self.metrics_server: Any = None  # metrics.MetricsServer when [metrics] listen is set
        self._swap_lock = threading.RLock()  # held while the inbox/runtime are swapped
        self._busy_since: float | None = None  # the worker's current task began (monotonic)
        self._stall_logged = False
        self._sent_status = ""
        # fault injection for the crash tests: read once, inert unless CERTDROP_CRASH_AT is set
        self._crashpoint = crashpoint_from_environment(os.environ)

    # --- signals: handlers only set flags ---------------------------------------------------------
    def _on_term(self, signum: int, frame: FrameType | None) -> None:
        self.stop_requested.set()
        self._wake.set()

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self.reload_requested.set()
        self._wake.set()

    def request_stop(self) -> None:
        self.stop_requested.set()
        self._wake.set()
        self.queue.close()

    # --- life cycle -----------------------------------------------------------------------------------
    def run(self) -> int:
        settings = self.settings
        lock = StateLock(settings.state)
        if not settings.state.is_dir():
            raise CertdropError(
                f"the state folder {settings.state} does not exist; run 'certdrop init'"
            )
        with lock:
            if self.own_process:
                signal.signal(signal.SIGTERM, self._on_term)
                signal.signal(signal.SIGINT, self._on_term)
                signal.signal(signal.SIGHUP, self._on_hup)
            try:
                try:
                    self._start()
                except CertdropError as exc:
                    self.exit_code = 1
                    self.notifier.notify(f"STATUS=cannot start: {exc}")
                    raise
                self._main_loop()
            finally:
                self._shutdown()
        return self.exit_code

    def _start(self) -> None:
        self.rt = Runtime.build(self.settings, self.clock, self._hooks(), signing_pool=True)
        self.rt.pipeline.crashpoint = self._crashpoint
        self._start_publisher(self.rt)
        self.metrics_server = self._start_metrics(self.settings)
        self.audit({"event": "daemon-start", "pid": os.getpid(), "config": str(self.config_path)})
        self.notifier.notify("STATUS=recovering interrupted work")
        try:
            for res in self.rt.pipeline.recover():
                self._count(res)
        except (OSError, IndexUnavailable) as exc:
            # a full disk at start: start anyway, and try work/ again later
            self.last_error = f"recovery of work/: {exc}"
            log.error("recovery of work/ failed: %s; will retry", exc)
            self._retry_work_later()
        if self.own_process:
            settle_heap()
        self.inbox = self._make_inbox(self.settings)
        self.inbox.start()
        self.scheduler = Scheduler()
        self._schedule_jobs()
        self.scheduler.start()
        self._worker = threading.Thread(target=self._work_loop, name="certdrop-worker", daemon=True)
        self._worker.start()

    def _make_inbox(self, settings: Settings) -> Inbox:
        return Inbox(
            settings.spool / "inbox",
            list(settings.profiles),
            settings.policy.default_profile,
            settings.watch,
            self.queue,
        )

    def _schedule_jobs(self) -> None:
        assert self.scheduler is not None and self.inbox is not None
        self.scheduler.every("rescan", self.settings.watch.rescan_seconds, self._rescan)
        self._schedule_mail_jobs()
        self.scheduler.every("crl", self.crl_check_seconds, self.crl_job, run_now=True)

    # --- mail: the expiry sweep and the mail queue ----------------------------------------------------
    mail_flush_seconds = 5.0  # the queue is also flushed right after something is queued

    def _schedule_mail_jobs(self) -> None:
        assert self.scheduler is not None
        if not self.settings.mail.enabled:
            self.scheduler.remove("expiry-sweep")
            self.scheduler.remove("mail-flush")
            return
        self.scheduler.every(
            "expiry-sweep",
            self.settings.expiry.sweep_minutes * 60,
            self.run_expiry_sweep,
            run_now=True,
        )
        self.scheduler.every(
            "mail-flush", self.mail_flush_seconds, self.run_mail_flush, run_now=True
        )

    def run_expiry_sweep(self) -> SweepReport | None:
        rt = self.rt
        if rt is None:
            return None
        report = sweep(
            rt.store,
            SweepConfig.from_settings(rt.settings),
            rt.ca.bundle_certificates(),
            self.clock.now(),
        )
        self.sweeps += 1
        if report.holder_mails or report.digest or report.alerts:
            self._kick_mail()
        return report

    def run_mail_flush(self) -> FlushReport | None:
        rt = self.rt
        if rt is None or rt.mailer is None:
            return None
        report = rt.mailer.flush(self.clock.now())
        if report.errors:
            self.last_mail_error = report.errors[-1]
        elif report.sent:
            self.last_mail_error = ""
        if report.sent + report.failed + report.cancelled >= Mailer.BATCH:
            self._kick_mail()  # more are due
        return report

    def _kick_mail(self) -> None:
        rt = self.rt
        if rt is None or rt.mailer is None or self.scheduler is None:
            return
        if not rt.mailer.busy:  # a running flush is followed by the next interval anyway
            self.scheduler.run_soon("mail-flush")

    def _on_issued(self, serial: str, superseded: list[str]) -> None:
        self._kick_mail()  # a p12 password may be waiting in the queue

    def _on_pending(self, name: str, profile: str, subject: str) -> None:
        rt = self.rt
        if rt is None or not rt.settings.mail.enabled:
            return
        try:
            if announce_pending(rt.store, rt.settings.mail, name, self.clock.now()):
                self._kick_mail()
        except Exception:  # the next expiry sweep announces it again
            log.exception("could not queue the alert for pending request %s", name)

    def _start_publisher(self, rt: Runtime) -> None:
        """A stale or missing CRL is made before anything else; Apache follows, debounced."""
        if rt.publisher is None:
            return
        rt.publisher.start_background()
        self.notifier.notify("STATUS=checking the CRL")
        rt.publisher.check()

    def crl_job(self) -> None:
        """Scheduled: renew the CRL when due (by the injected clock), fix the Apache files."""
        rt = self.rt
        if rt is not None and rt.publisher is not None:
            rt.publisher.check()

    def _rescan(self) -> None:
        """The periodic full scan (inotify drops events when its queue overflows).

        During a burst the worker scans anyway once the queue drains, and a scan now
        would queue every file of the burst a second time: it is skipped then, unless
        the daemon has been busy without a pause for ten scan intervals.
        """
        if self.inbox is None:
            return
        busy_for = time.monotonic() - self.inbox.last_scan
        if self._had_activity and busy_for < 10 * self.settings.watch.rescan_seconds:
            return
        self.inbox.scan()

    def _hooks(self) -> PipelineHooks:
        return PipelineHooks(
            on_issued=self._on_issued, on_pending=self._on_pending, audit=self.audit
        )

    def _main_loop(self) -> None:
        """The main thread: signals, health checks, STATUS= updates and watchdog pings."""
        interval = self.watchdog_usec / 2e6  # sd_watchdog_enabled(3): ping at half the timeout
        tick = min(1.0, interval / 2) if interval else 1.0
        next_ping = 0.0
        if interval:
            log.info("systemd watchdog: pinging every %.3g s", interval)
        while not self.stop_requested.is_set():
            self._wake.wait(timeout=tick)
            self._wake.clear()
            if self.stop_requested.is_set():
                break
            problems = self.health()
            self.health_checks += 1
            if problems and not self.stop_requested.is_set():
                self._fail(problems)
                break
            self._send_status()
            if interval and time.monotonic() >= next_ping:
                stalled = self._stalled()
                if stalled:
                    if not self._stall_logged:
                        log.warning("%s; withholding the watchdog ping", stalled)
                        self.notifier.notify(f"STATUS={stalled}")
                        self._stall_logged = True
                    continue
                if self._stall_logged:
                    log.info("the worker is making progress again")
                    self._stall_logged = False
                self.notifier.notify("WATCHDOG=1")
                self.watchdog_pings += 1
                next_ping = time.monotonic() + interval

    def health(self) -> list[str]:
        """What is wrong with the daemon's threads ([] when the observer, the worker and
        the scheduler are all alive)."""
        problems: list[str] = []
        with self._swap_lock:
            if self._worker is None or not self._worker.is_alive():
                problems.append("the worker thread is not running")
            if self.inbox is None or not self.inbox.is_alive():
                problems.append("the inbox observer thread is not running")
            if self.scheduler is None or not self.scheduler.is_alive():
                problems.append("the scheduler is not running")
        return problems

    def _stalled(self) -> str:
        """Why the worker looks hung ('' when it does not): one task running longer than
        the watchdog timeout, and at least STALL_SECONDS (a slow task is not a hang)."""
        since = self._busy_since
        if since is None or not self.watchdog_usec:
            return ""
        busy = time.monotonic() - since
        if busy <= max(self.watchdog_usec / 1e6, STALL_SECONDS):
            return ""
        return f"the worker has been busy with one task for {busy:.0f} s"

    def _fail(self, problems: list[str]) -> None:
        """A thread died: no more watchdog pings; stop with an error so systemd restarts us."""
        msg = "; ".join(problems)
        log.error(
            "%s: stopping with exit status 1 so that the service manager restarts certdrop", msg
        )
        self.last_error = msg
        self.exit_code = 1
        self.notifier.notify(f"STATUS=failed: {msg}")
        self.audit({"event": "daemon-failed", "problems": problems})
        self.stop_requested.set()

    def _send_status(self) -> None:
        line = self.status_line()
        if line != self._sent_status:
            self._sent_status = line
            self.notifier.notify(f"STATUS={line}")

    @contextlib.contextmanager
    def _busy(self) -> Iterator[None]:
        self._busy_since = time.monotonic()
        try:
            yield
        finally:
            self._busy_since = None

    def _shutdown(self) -> None:
        self.notifier.notify("STOPPING=1", "STATUS=stopping: finishing the request in hand")
        log.info("stopping: finishing the request in hand")
        self.stop_requested.set()
        if self.inbox is not None:
            self.inbox.stop()
        self.queue.close()
        if self._worker is not None:
            self._worker.join(timeout=60)
            if self._worker.is_alive():
                log.error("the worker did not finish within 60 s; exiting anyway")
                self.exit_code = 1
        if self.scheduler is not None:
            self.scheduler.shutdown()
        if self.metrics_server is not None:
            self.metrics_server.stop()
            self.metrics_server = None
        if self.rt is not None:
            self.rt.close()
        self.audit(
            {"event": "daemon-stop", "pid": os.getpid(), "exit_code": self.exit_code, **self.counts}
        )
        log.info("stopped (%s)", self.status_line())

    # --- the worker: the only thread that changes spool and index state ----------------------------------
    def _work_loop(self) -> None:
        try:
            self._work()
        except Exception:
            # the main thread sees the dead worker, stops the watchdog pings and exits 1
            log.exception("the worker thread died (this is a bug in certdrop)")

    def _work(self) -> None:
        assert self.rt is not None and self.inbox is not None
        self.inbox.scan()
        self._drain_initial()
        self.ready.set()
        self.notifier.notify("READY=1", f"STATUS={self.status_line()}")
        log.info("ready: %s", self.status_line())
        last_control = 0.0
        while not self.stop_requested.is_set():
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                with self._busy():
                    self._flush()
                    self._reload()
            # with a batch in flight, only what is already queued is taken: else that
            # batch is finished right away (a single drop waits for nothing)
            items = self.queue.get_batch(BATCH_SIZE, timeout=0.0 if self._started else 0.25)
            if self.stop_requested.is_set():
                break  # SIGTERM: no new work; what was taken stays in the inbox for next time
            with self._busy():
                if not items and self._started:
                    # nothing more queued: finish the batch in flight now, then wait for
                    # the next drop as usual (the idle work below is for idle times)
                    self._flush()
                    continue
                now_mono = time.monotonic()
                if not items or now_mono - last_control >= 1.0:
                    self._poll_controls()
                    last_control = now_mono
                if not items:
                    if self._had_activity:
                        # inotify drops events when its queue overflows: look again after a burst
                        self._had_activity = False
                        self.inbox.scan()
                    elif self.rt.pool is not None:
                        self.rt.pool.stop_if_idle(POOL_IDLE_SECONDS)
                    continue
                self._handle(items)
        with self._busy():
            self._flush()  # the batches in flight are claimed: decide, record and deliver them

    def _drain_initial(self) -> None:
        """Process what the first scan found before declaring READY (bounded by time).

        Files still settling are waited for; keys waiting for their request are not.
        """
        assert self.inbox is not None
        deadline = time.monotonic() + 30
        while not self.stop_requested.is_set() and time.monotonic() < deadline:
            ready, delayed = self.queue.depth()
            if ready == 0 and delayed == 0:
                break
            items = self.queue.get_batch(BATCH_SIZE, timeout=0.05)
            if not items:
                if ready == 0 and self._only_waiting_keys:
                    break
                continue
            self._only_waiting_keys = all(i.path.name.endswith(".key") for i in items)
            with self._busy():
                self._handle(items)
        with self._busy():
            self._flush()

    _only_waiting_keys = False

    def _handle(self, items: list[WorkItem]) -> None:
        """Start a batch, decide the one before it, finish the one before that.

        Three batches are in flight, so that neither this thread nor the signing pool
        waits for the other: while the pool signs batch N-2 (and then parses batch N
        and signs batch N-1), this thread claims and reads batch N (its parsing
        starts), decides batch N-1 (its signing starts; requests touching what N-2 is
        issuing wait for it) and records and delivers batch N-2.
        """
        assert self.rt is not None and self.inbox is not None
        now_wall = time.time()
        ready: list[WorkItem] = []
        for item in items:
            wait = self.inbox.settled(item, now_wall)
            if wait > 0:
                self.queue.put_later(item, wait)
            else:
                ready.append(item)
        if not ready:
            return
        if self.rt.pool is not None:  # enough requests queued start the signing processes
            self.rt.pool.expect(len(ready) + len(self.queue))
        try:
            try:
                with self.audit.batch():
                    ticket = self.rt.pipeline.start([(i.path, i.profile) for i in ready])
            except Exception as exc:  # noqa: BLE001 - sorted out in _failed_batch
                self._failed_batch(ready, exc)
                return
            for i, res in ticket.immediate:
                self._count(res)
                if res.outcome is Outcome.RETRY:
                    self.queue.put_later(ready[i], max(res.retry_after, 0.05))
                elif res.outcome is not Outcome.SKIPPED:
                    self._had_activity = True
            if ticket.batch is not None:
                self._started.append((ticket, ready))
        finally:
            for started in self._started[:-1]:  # all but the newest, being parsed
                self._decide(started)
            while len(self._started) > 2:
                self._finish(self._started.pop(0))

    def _step(
        self, started: tuple[Ticket, list[WorkItem]], step: Callable[[Ticket], T]
    ) -> T | None:
        """`step(ticket)`, the batch's audit records written together; None if it failed
        (its requests are then sorted out by _failed_batch)."""
        ticket, items = started
        try:
            with self.audit.batch():
                return step(ticket)
        except Exception as exc:  # noqa: BLE001 - sorted out in _failed_batch
            self._failed_batch([items[i] for i in ticket.claimed.values()], exc)
            return None

    def _decide(self, started: tuple[Ticket, list[WorkItem]]) -> None:
        assert self.rt is not None
        if self._step(started, self.rt.pipeline.decide) is None:
            self._started.remove(started)  # its claims stay in work/: recovery takes them

    def _flush(self) -> None:
        """Finish the batches in flight, oldest first."""
        while self._started:
            self._finish(self._started.pop(0))

    def _finish(self, started: tuple[Ticket, list[WorkItem]]) -> None:
        assert self.rt is not None
        done = self._step(started, self.rt.pipeline.finish)
        if done is None:
            return
        for _, res in done:
            self._count(res)
            if res.outcome is not Outcome.SKIPPED:
                self._had_activity = True

    def _failed_batch(self, items: list[WorkItem], exc: Exception) -> None:
        if isinstance(exc, OSError | IndexUnavailable | CertdropError):
            # a full disk, a vanished share, an index that cannot be written: nothing is
            # lost (each request stays where it is, in inbox/ or work/), and it is tried
            # again later
            self._failed(items, str(exc), 5.0)
        else:
            log.error(
                "internal error while processing %d request(s); will retry in 30 s",
                len(items),
                exc_info=exc,
            )
            self._failed(items, "internal error", 30.0, logged=True)

    def _failed(
        self, items: list[WorkItem], error: str, delay: float, logged: bool = False
    ) -> None:
        self.last_error = error
        if not logged:
            log.error(
                "%d request(s) not processed: %s; will retry in %g s", len(items), error, delay
            )
        for item in items:
            self.queue.put_later(item, delay)
        self._retry_work_later()

    def _retry_work_later(self) -> None:
        """After an I/O error mid-way, re-run recovery of work/ a little later.

        The delay doubles each time the recovery itself fails (5 s up to 5 min), so
        that a disk full for hours neither spins nor floods the log; further failures
        while a recovery is scheduled do not postpone it.
        """
        at = time.monotonic() + self._recover_delay
        if self._recover_at is None or at < self._recover_at:
            self._recover_at = at

    _recover_at: float | None = None
    _recover_delay = RECOVER_FIRST_DELAY

    def _poll_controls(self) -> None:
        """Recovery of work/ when due, and operator commands; a batch in flight is
        finished first only when there is something to do."""
        assert self.rt is not None
        if self._recover_at is not None and time.monotonic() >= self._recover_at:
            self._recover_at = None
            self._flush()
            try:
                for res in self.rt.pipeline.recover():
                    self._count(res)
            except (OSError, IndexUnavailable) as exc:
                self.last_error = f"recovery of work/: {exc}"
                self._recover_delay = min(self._recover_delay * 2, RECOVER_MAX_DELAY)
                log.error(
                    "recovery of work/ failed again: %s; next try in %.0f s",
                    exc,
                    self._recover_delay,
                )
                self._retry_work_later()
            else:
                self._recover_delay = RECOVER_FIRST_DELAY
        try:
            with self.rt.store.begin() as conn:
                todo = self.rt.store.open_controls(conn)
        except Exception:
            log.exception("cannot read the control table")
            return
        if todo:
            self._flush()
        for control_id, kind, payload in todo:
            result = execute_control(self.rt, kind, payload)
            log.info("operator command %s %s: %s", kind, payload, result.splitlines()[0])
            with self.rt.store.begin() as conn:
                self.rt.store.finish_control(conn, control_id, result, self.clock.now())

    def _reload(self) -> None:
        """SIGHUP: re-read configuration and policy; a bad new file changes nothing."""
        if self.config_path is None:
            log.warning("SIGHUP: no configuration file to re-read")
            return
        self.notifier.notify(
            "RELOADING=1",
            f"MONOTONIC_USEC={time.monotonic_ns() // 1000}",
            "STATUS=reloading the configuration",
        )
        log.info("SIGHUP: re-reading %s", self.config_path)
        new_metrics: Any = None
        rt: Runtime | None = None
        try:
            new = load_settings(self.config_path)
            if new.paths != self.settings.paths:
                raise CertdropError("[paths] cannot change on reload; restart certdrop instead")
            rt = Runtime.build(new, self.clock, self._hooks(), signing_pool=True)
            rt.pipeline.crashpoint = self._crashpoint
            if new.metrics.listen != self.settings.metrics.listen:
                new_metrics = self._start_metrics(new)
        except (CertdropError, OSError) as exc:
            if rt is not None:
                rt.close()
            reason = str(exc)
            log.error("SIGHUP: the new configuration is refused, keeping the old one: %s", reason)
            self._reload_done(False, reason)
            self.notifier.notify("READY=1", f"STATUS=reload refused: {reason}")
            return
        old_rt = self.rt
        old_metrics = self.metrics_server
        listen_changed = new.metrics.listen != self.settings.metrics.listen
        with self._swap_lock:
            assert self.inbox is not None
            self.inbox.stop()
            self.settings = new
            self.rt = rt
            if listen_changed:
                self.metrics_server = new_metrics
            if rt.publisher is not None:
                rt.publisher.start_background()
            self.inbox = self._make_inbox(new)
            self.inbox.start()
        if listen_changed and old_metrics is not None:
            old_metrics.stop()
        if old_rt is not None:
            old_rt.close()
        assert self.scheduler is not None
        self._schedule_jobs()
        self.inbox.scan()
        log.info(
            "configuration reloaded from %s (profiles: %s)",
            self.config_path,
            ", ".join(sorted(new.profiles)),
        )
        self._reload_done(True, "")
        self.notifier.notify("READY=1", f"STATUS={self.status_line()}")

    def _reload_done(self, ok: bool, reason: str) -> None:
        self.last_reload = (self.clock.now(), ok, reason)
        event: dict[str, Any] = {"event": "reload", "ok": ok, "config": str(self.config_path)}
        if reason:
            event["error"] = reason
        self.audit(event)

    # --- metrics (optional: prometheus_client is an extra) ---------------------------------------
    def _start_metrics(self, settings: Settings) -> Any:
        if not settings.metrics.listen:
            return None
        try:
            from . import metrics
        except ImportError:
            raise ConfigError(
                f"[metrics] listen = {settings.metrics.listen!r} needs the Python package "
                "prometheus_client; install certdrop with the 'metrics' extra, or set listen = \"\""
            ) from None
        server = metrics.MetricsServer(settings.metrics.listen, self._metrics_snapshot)
        server.start()
        log.info("metrics on http://%s/metrics", settings.metrics.listen)
        return server

    def _metrics_snapshot(self) -> Any:
        from . import metrics

        rt = self.rt
        now = self.clock.now()
        ready, delayed = self.queue.depth()
        certs: dict[str, int] = {}
        pending = expiring = 0
        crl_next: dt.datetime | None = None
        if rt is not None:
            with rt.store.begin() as conn:
                certs = rt.store.counts(conn, now)
                pending = len(rt.store.list_pending(conn))
                expiring = len(
                    rt.store.list_certs(
                        conn, now=now, expiring_within=dt.timedelta(days=metrics.EXPIRING_DAYS)
                    )
                )
            published = rt.publisher.published_crl() if rt.publisher is not None else None
            crl_next = published.next_update_utc if published is not None else None
        return metrics.Snapshot(
            now=now,
            requests=dict(self.counts),
            certificates=certs,
            pending=pending,
            queue_ready=ready,
            queue_delayed=delayed,
            expiring=expiring,
            crl_next_update=crl_next,
            last_reload=self.last_reload,
            ready=self.ready.is_set(),
            healthy=not self.health(),
        )

    def _count(self, res: Result) -> None:
        self.counts[res.outcome.value] = self.counts.get(res.outcome.value, 0) + 1

    def status_line(self) -> str:
        c = self.counts
        line = (
            f"issued {c.get('issued', 0)}, rejected {c.get('rejected', 0)}, "
            f"pending {c.get('pending', 0)}, queue {len(self.queue)}"
        )
        if self.last_error:
            line += f"; last error: {self.last_error}"
        return line


def wait_for_control(store: Store, control_id: int, timeout: float) -> str | None:
    """Wait for a running daemon to carry out an operator command."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with store.begin() as conn:
            result = store.control_result(conn, control_id)
        if result is not None:
            return result
        time.sleep(0.1)
    return None


@contextlib.contextmanager
def direct_runtime(settings: Settings, clock: Clock) -> Any:
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
