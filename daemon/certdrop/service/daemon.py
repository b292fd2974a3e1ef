"""The daemon: lifecycle, signals, systemd notifications, health, reload.

`certdrop run` builds a `Daemon`, which takes the state lock, builds the runtime
(service/runtime.py), recovers what an interrupted run left in work/, starts the inbox
observer, the scheduler (service/jobs.py) and the worker thread (service/worker.py),
and then watches them from the main thread: signal flags (handlers only set flags),
health checks, STATUS= lines and watchdog pings. SIGHUP rebuilds the runtime from the
re-read configuration (a bad file changes nothing); SIGTERM lets the worker finish the
batches in hand and stops.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from ..audit import AuditLog
from ..authority.names import subject_text
from ..authority.workers import settle_heap
from ..clock import Clock
from ..config import Settings, load_settings
from ..errors import CertdropError, ConfigError, IndexUnavailable
from ..faults import crashpoint_from_environment
from ..index import listing
from ..index import pending as waiting
from ..intake.inbox import Inbox, WorkQueue
from ..issue.outcomes import Hooks
from .cluster import Cluster, host_id
from .jobs import Jobs
from .runtime import Runtime
from .scheduler import Scheduler
from .systemd import Notifier, StateLock
from .worker import Worker

log = logging.getLogger("certdrop.service")

STALL_SECONDS = 120.0  # one task of the worker longer than this (and WatchdogSec) is a hang


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
        self.stop_requested = threading.Event()
        self.reload_requested = threading.Event()
        self.ready = threading.Event()
        self._wake = threading.Event()
        self.rt: Runtime | None = None
        self.host = ""  # this host's id (service/cluster.py), known once started
        self.cluster: Cluster | None = None
        self.inbox: Inbox | None = None
        self.scheduler: Scheduler | None = None
        self.worker = Worker(self, self.queue)
        self.jobs = Jobs(self, clock)
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

    def _runtime(self, settings: Settings) -> Runtime:
        hooks = Hooks(
            on_issued=self.jobs.on_issued,
            on_pending=self.jobs.on_pending,
            audit=self.audit,
            audit_batch=self.audit.batch,
        )
        rt = Runtime.build(
            settings,
            self.clock,
            hooks,
            signing_pool=True,
            crashpoint=self._crashpoint,
            host=self.host,
            checkpoint_thread=True,
        )
        if settings.clustered:
            rt.store.fence_host = self.host  # nothing recorded once taken for dead
        return rt

    def _start(self) -> None:
        self.notifier.notify("STATUS=joining the hosts sharing the index")
        self.host = host_id(self.settings.state)
        self.cluster = cluster = Cluster(self.settings, self.clock, self.host)
        cluster.on_lead = self.jobs.on_lead
        cluster.on_beat = self._after_beat
        cluster.start()
        self.rt = rt = self._runtime(self.settings)
        self._start_publisher(rt)
        self.metrics_server = self._start_metrics(self.settings)
        self.audit({"event": "daemon-start", "pid": os.getpid(), "config": str(self.config_path)})
        self.notifier.notify("STATUS=recovering interrupted work")
        try:
            self.worker.recover(rt)
        except (OSError, IndexUnavailable) as exc:
            # a full disk at start: start anyway, and try work/ again later
            log.error("recovery of work/ failed: %s; will retry", exc)
            self.worker.retry_work_later()
        if self.own_process:
            settle_heap()
        self.inbox = self._make_inbox(self.settings)
        self.inbox.start()
        self.scheduler = Scheduler()
        self.jobs.schedule(self.scheduler, rt)
        self.scheduler.start()
        self.worker.start()

    def _make_inbox(self, settings: Settings) -> Inbox:
        return Inbox.for_settings(settings, self.queue)

    def _start_publisher(self, rt: Runtime) -> None:
        """A stale or missing CRL is made before anything else; Apache follows, debounced."""
        if rt.apache is not None:
            rt.apache.start_background()
        self.notifier.notify("STATUS=checking the CRL")
        rt.check_publication(lead=self.is_leader())

    def is_leader(self) -> bool:
        """This host leads the CA-wide jobs (always, with SQLite)."""
        return self.cluster is None or self.cluster.is_leader()

    def _after_beat(self) -> None:
        """After each heartbeat: a CRL another host signed, to this host's files; the
        responder job soon when a responder certificate waits to be signed or taken."""
        rt = self.rt
        if rt is None or not rt.settings.clustered:
            return  # the only host asks for and signs its responder certificate in one pass
        rt.follow_crl()
        if self.scheduler is not None and rt.responder.waiting(lead=self.is_leader()):
            self.scheduler.run_soon("ocsp-responder")

    # --- what the worker and the jobs ask of the daemon ------------------------------------------
    def announce_ready(self) -> None:
        """The first scan's requests are done: READY=1."""
        self.ready.set()
        self.notifier.notify("READY=1", f"STATUS={self.status_line()}")
        log.info("ready: %s", self.status_line())

    @property
    def busy_with_requests(self) -> bool:
        return self.worker.had_activity

    # --- the main thread ------------------------------------------------------------------------------
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
            if not self.worker.alive():
                problems.append("the worker thread is not running")
            if self.inbox is None or not self.inbox.is_alive():
                problems.append("the inbox observer thread is not running")
            if self.scheduler is None or not self.scheduler.is_alive():
                problems.append("the scheduler is not running")
            if self.cluster is not None and not self.cluster.is_alive():
                problems.append("the heartbeat thread is not running")
        return problems

    def _stalled(self) -> str:
        """Why the worker looks hung ('' when it does not): one task running longer than
        the watchdog timeout, and at least STALL_SECONDS (a slow task is not a hang)."""
        since = self.worker.busy_since
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
        self.worker.last_error = msg
        self.exit_code = 1
        self.notifier.notify(f"STATUS=failed: {msg}")
        self.audit({"event": "daemon-failed", "problems": problems})
        self.stop_requested.set()

    def _send_status(self) -> None:
        line = self.status_line()
        if line != self._sent_status:
            self._sent_status = line
            self.notifier.notify(f"STATUS={line}")

    def _shutdown(self) -> None:
        self.notifier.notify("STOPPING=1", "STATUS=stopping: finishing the request in hand")
        log.info("stopping: finishing the request in hand")
        self.stop_requested.set()
        if self.inbox is not None:
            self.inbox.stop()
        self.queue.close()
        if not self.worker.join(timeout=60):
            log.error("the worker did not finish within 60 s; exiting anyway")
            self.exit_code = 1
        if self.scheduler is not None:
            self.scheduler.shutdown()
        if self.cluster is not None and self.worker.join(timeout=0):
            self.cluster.stop()  # the claims are all finished: this host stops cleanly
        if self.metrics_server is not None:
            self.metrics_server.stop()
            self.metrics_server = None
        if self.rt is not None:
            self.rt.close()
        self.audit(
            {
                "event": "daemon-stop",
                "pid": os.getpid(),
                "exit_code": self.exit_code,
                **self.worker.counts,
            }
        )
        log.info("stopped (%s)", self.status_line())

    # --- SIGHUP ---------------------------------------------------------------------------------------
    def reload(self) -> None:
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
            rt = self._runtime(new)
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
            if rt.apache is not None:
                rt.apache.start_background()
            self.inbox = self._make_inbox(new)
            self.inbox.start()
        if listen_changed and old_metrics is not None:
            old_metrics.stop()
        if old_rt is not None:
            old_rt.close()
        assert self.scheduler is not None
        self.jobs.schedule(self.scheduler, rt)
        self.inbox.scan()
        log.info(
            "configuration reloaded from %s (profiles: %s)",
            self.config_path,
            ", ".join(sorted(new.profiles)),
        )
        self._reload_done(True, "")
        self.notifier.notify("READY=1", f"STATUS={self.status_line()}")

    def rebuild(self) -> str:
        """After a rollover: a new runtime over the same settings, so that the new CA
        signs (in new signing processes) and every CA's CRL and the Apache files are
        published now. When it cannot be built, the daemon stops with exit status 1: the
        service manager restarts it, and the start loads the new CA from the state.
        Returns why it could not ('' when it could)."""
        old_rt = self.rt
        try:
            rt = self._runtime(self.settings)
        except (CertdropError, OSError) as exc:
            log.error("after the rollover the runtime could not be rebuilt: %s; stopping", exc)
            self.worker.last_error = f"rollover: {exc}"
            self.exit_code = 1
            self.request_stop()
            return str(exc)
        with self._swap_lock:
            self.rt = rt
            if rt.apache is not None:
                rt.apache.start_background()
        if old_rt is not None:
            old_rt.close()
        assert self.scheduler is not None
        self.jobs.schedule(self.scheduler, rt)
        rt.check_publication()
        if rt.apache is not None:
            rt.apache.flush()  # both CAs in Apache's files now, not after the debounce
        log.info("the CA %s signs from now on", subject_text(rt.ca.subject))
        return ""

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
                certs = listing.counts(conn, now)
                pending = len(waiting.list_pending(conn))
                expiring = len(
                    listing.list_certs(
                        conn,
                        now=now,
                        expiring_within=dt.timedelta(days=metrics.EXPIRING_DAYS),
                        der=False,
                    )
                )
            published = rt.crl.published_crl()
            crl_next = published.next_update_utc if published is not None else None
        return metrics.Snapshot(
            now=now,
            requests=dict(self.worker.counts),
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

    def status_line(self) -> str:
        c = self.worker.counts
        line = (
            f"issued {c.get('issued', 0)}, rejected {c.get('rejected', 0)}, "
            f"pending {c.get('pending', 0)}, queue {len(self.queue)}"
        )
        cluster = self.cluster
        if cluster is not None and cluster.clustered:
            line += "; leading" if cluster.is_leader() else f"; {cluster.leader or 'nobody'} leads"
        if self.worker.last_error:
            line += f"; last error: {self.worker.last_error}"
        return line
