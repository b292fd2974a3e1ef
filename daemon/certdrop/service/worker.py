"""The worker: the only thread that changes spool and index state.

It takes work items off the queue the inbox fills, hands settled ones to the issue
layer's batches (three in flight during a burst), and between batches carries out
operator commands from the index's control table, re-runs the recovery of work/ after
an I/O error, and re-scans the inbox after a burst. What fails is put back on the
queue for later: nothing is lost, and a full disk neither spins nor floods the log.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Protocol

from ..errors import CertdropError, IndexUnavailable
from ..index import control as commands
from ..intake.inbox import Inbox, WorkItem, WorkQueue
from ..issue.outcomes import Outcome, Result
from .cluster import Cluster
from .control import execute_control
from .runtime import Runtime

log = logging.getLogger("certdrop.service")

BATCH_SIZE = 256  # requests taken off the queue and committed together
POOL_IDLE_SECONDS = 60.0  # the signing processes stop after this long without a burst
# after a full disk or an unusable index: first retry of work/, and the longest wait
RECOVER_FIRST_DELAY = 5.0
RECOVER_MAX_DELAY = 300.0
DRAIN_SECONDS = 30.0  # at start, what the first scan found is processed before READY, this long
# the new certificates' fingerprint entries are folded among the others (index/schema.py)
# once no request came for this long, FOLD_CHUNK a transaction: never during a burst
FOLD_IDLE_SECONDS = 5.0
FOLD_CHUNK = 1_000
FOLD_LATER_SECONDS = 60.0  # looked again this often when none was left (rows `import` added)


class Host(Protocol):
    """What the worker needs of the daemon: the current runtime and inbox (both replaced
    on SIGHUP), the stop and reload flags, the reload itself and the READY signal."""

    rt: Runtime | None
    inbox: Inbox | None
    cluster: Cluster | None  # None: the only host
    stop_requested: threading.Event
    reload_requested: threading.Event

    def reload(self) -> None: ...

    def rebuild(self) -> str: ...

    def announce_ready(self) -> None: ...


class Worker:
    """The worker thread (see the module docstring); a `Sink` of the issue layer's batches."""

    def __init__(self, host: Host, queue: WorkQueue) -> None:
        self.host = host
        self.queue = queue
        self.counts: dict[str, int] = {o.value: 0 for o in Outcome}
        self.last_error = ""
        self.had_activity = False  # requests were handled since the last scan
        self.busy_since: float | None = None  # the current task began (monotonic)
        self.recover_delay = RECOVER_FIRST_DELAY  # the next retry of work/ after a failure
        self._recover_at: float | None = None
        self._only_waiting_keys = False
        self._thread: threading.Thread | None = None
        self.fold_idle_seconds = FOLD_IDLE_SECONDS
        self._last_items = time.monotonic()  # requests were last taken off the queue
        self._fold_at = 0.0  # the next fold is tried then (monotonic), once idle

    # --- the thread ---------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="certdrop-worker", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join(self, timeout: float) -> bool:
        """Wait for the thread to end; False if it is still running."""
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            return not self._thread.is_alive()
        return True

    def _loop(self) -> None:
        try:
            self._work()
        except Exception:
            # the main thread sees the dead worker, stops the watchdog pings and exits 1
            log.exception("the worker thread died (this is a bug in certdrop)")

    def _work(self) -> None:
        host = self.host
        assert host.rt is not None and host.inbox is not None
        host.inbox.scan()
        self._drain_initial()
        host.announce_ready()
        last_control = 0.0
        while not host.stop_requested.is_set():
            if host.reload_requested.is_set():
                host.reload_requested.clear()
                assert host.rt is not None
                with self.busy():
                    host.rt.batches.flush(self)
                    host.reload()
            rt = host.rt
            assert rt is not None and host.inbox is not None
            # with a batch in flight, only what is already queued is taken: else that
            # batch is finished right away (a single drop waits for nothing)
            in_flight = rt.batches.in_flight
            items = self.queue.get_batch(BATCH_SIZE, timeout=0.0 if in_flight else 0.25)
            if host.stop_requested.is_set():
                break  # SIGTERM: no new work; what was taken stays in the inbox for next time
            with self.busy():
                if not items and in_flight:
                    # nothing more queued: finish the batch in flight now, then wait for
                    # the next drop as usual (the idle work below is for idle times)
                    rt.batches.flush(self)
                    continue
                now_mono = time.monotonic()
                if not items or now_mono - last_control >= 1.0:
                    self._poll_controls(rt)
                    last_control = now_mono
                if not items:
                    if self.had_activity:
                        # inotify drops events when its queue overflows: look again after a burst
                        self.had_activity = False
                        host.inbox.scan()
                    else:
                        if rt.pool is not None:
                            rt.pool.stop_if_idle(POOL_IDLE_SECONDS)
                        self._fold_if_idle(rt, now_mono)
                    continue
                self._last_items = now_mono
                self._handle(rt, host.inbox, items)
        rt = host.rt
        if rt is not None:
            with self.busy():
                rt.batches.flush(self)  # the batches in flight are claimed: finish them

    def _fold_if_idle(self, rt: Runtime, now: float) -> None:
        """One chunk of Store.fold_fingerprints, once idle for `fold_idle_seconds`."""
        if now < max(self._fold_at, self._last_items + self.fold_idle_seconds):
            return
        try:
            with rt.store.begin() as conn:
                moved = rt.store.fold_fingerprints(conn, FOLD_CHUNK)
        except CertdropError as exc:  # the index cannot be written now: later
            log.warning("cannot fold new fingerprints into the index now: %s", exc)
            moved = 0
        self._fold_at = 0.0 if moved == FOLD_CHUNK else now + FOLD_LATER_SECONDS

    def _drain_initial(self) -> None:
        """Process what the first scan found before declaring READY (bounded by time).

        Files still settling are waited for; keys waiting for their request are not.
        """
        host = self.host
        assert host.rt is not None and host.inbox is not None
        deadline = time.monotonic() + DRAIN_SECONDS
        while not host.stop_requested.is_set() and time.monotonic() < deadline:
            ready, delayed = self.queue.depth()
            if ready == 0 and delayed == 0:
                break
            items = self.queue.get_batch(BATCH_SIZE, timeout=0.05)
            if not items:
                if ready == 0 and self._only_waiting_keys:
                    break
                continue
            self._only_waiting_keys = all(i.path.name.endswith(".key") for i in items)
            with self.busy():
                self._handle(host.rt, host.inbox, items)
        with self.busy():
            host.rt.batches.flush(self)

    def _handle(self, rt: Runtime, inbox: Inbox, items: list[WorkItem]) -> None:
        """Settled items go to the batches; the others wait on the queue."""
        now_wall = time.time()
        ready: list[WorkItem] = []
        for item in items:
            wait = inbox.settled(item, now_wall)
            if wait > 0:
                self.queue.put_later(item, wait)
            else:
                ready.append(item)
        if not ready:
            return
        if rt.pool is not None:  # enough requests queued start the signing processes
            rt.pool.expect(len(ready) + len(self.queue))
        rt.batches.push(ready, self)

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """Marks a task of the worker (the main thread tells a hang from a slow task)."""
        self.busy_since = time.monotonic()
        try:
            yield
        finally:
            self.busy_since = None

    # --- what became of the work (the batches' Sink) --------------------------------------------
    def result(self, result: Result) -> None:
        self.counts[result.outcome.value] = self.counts.get(result.outcome.value, 0) + 1
        if result.outcome not in (Outcome.SKIPPED, Outcome.RETRY):
            self.had_activity = True
            self._fold_at = 0.0  # a certificate issued: its fingerprint entry is new

    def retry(self, item: WorkItem, after: float) -> None:
        self.queue.put_later(item, after)

    def failed(self, items: Sequence[WorkItem], exc: Exception) -> None:
        if isinstance(exc, OSError | IndexUnavailable | CertdropError):
            # a full disk, a vanished share, an index that cannot be written: nothing is
            # lost (each request stays where it is, in inbox/ or work/), and it is tried
            # again later
            self._put_back(items, str(exc), 5.0)
        else:
            log.error(
                "internal error while processing %d request(s); will retry in 30 s",
                len(items),
                exc_info=exc,
            )
            self._put_back(items, "internal error", 30.0, logged=True)

    def _put_back(
        self, items: Sequence[WorkItem], error: str, delay: float, logged: bool = False
    ) -> None:
        self.last_error = error
        if not logged:
            log.error(
                "%d request(s) not processed: %s; will retry in %g s", len(items), error, delay
            )
        for item in items:
            self.queue.put_later(item, delay)
        self.retry_work_later()

    # --- recovery of work/ and operator commands ---------------------------------------------
    def recover(self, rt: Runtime) -> None:
        """Process what an interrupted run left in work/; on a full disk or an unusable
        index, try again later (with a growing delay)."""
        try:
            for res in rt.batches.recover():
                self.result(res)
        except (OSError, IndexUnavailable) as exc:
            self.last_error = f"recovery of work/: {exc}"
            raise

    def retry_work_later(self) -> None:
        """After an I/O error mid-way, re-run recovery of work/ a little later.

        The delay doubles each time the recovery itself fails (5 s up to 5 min), so
        that a disk full for hours neither spins nor floods the log; further failures
        while a recovery is scheduled do not postpone it.
        """
        at = time.monotonic() + self.recover_delay
        if self._recover_at is None or at < self._recover_at:
            self._recover_at = at

    def _take_over(self, rt: Runtime) -> None:
        """The claims of hosts taken for dead, moved into this host's folder, are
        processed as after a crash (the index knows what they recorded already)."""
        cluster = self.host.cluster
        if cluster is not None and cluster.taken_for_dead.is_set():
            # the batches in flight are another host's now: their commits are refused
            # (put back, and gone from this host's folder); then this host joins again
            rt.batches.flush(self)
            try:
                cluster.rejoin()
            except CertdropError as exc:
                log.error("joining the hosts again: %s", exc)
                return
            self.retry_work_later()  # what was claimed meanwhile is processed again
        if cluster is None or not cluster.take_over(rt.spool):
            return
        rt.batches.flush(self)
        try:
            self.recover(rt)
        except (OSError, IndexUnavailable) as exc:
            log.error("the requests taken over could not be processed yet: %s", exc)
            self.retry_work_later()

    def _poll_controls(self, rt: Runtime) -> None:
        """Recovery of work/ when due, and operator commands; a batch in flight is
        finished first only when there is something to do."""
        if self._recover_at is not None and time.monotonic() >= self._recover_at:
            self._recover_at = None
            rt.batches.flush(self)
            try:
                self.recover(rt)
            except (OSError, IndexUnavailable) as exc:
                self.recover_delay = min(self.recover_delay * 2, RECOVER_MAX_DELAY)
                log.error(
                    "recovery of work/ failed again: %s; next try in %.0f s",
                    exc,
                    self.recover_delay,
                )
                self.retry_work_later()
            else:
                self.recover_delay = RECOVER_FIRST_DELAY
        self._take_over(rt)
        cluster = self.host.cluster
        try:
            with rt.store.begin() as conn:
                todo = commands.open_commands(conn, cluster.host if cluster else None)
        except Exception:
            log.exception("cannot read the control table")
            return
        if todo:
            rt.batches.flush(self)
        for control_id, kind, payload in todo:
            result = execute_control(rt, kind, payload)
            if rt.ca_changed:
                # a rollover: the new CA signs from the next batch on; the command is
                # answered once it does
                problem = self.host.rebuild()
                if problem:
                    result = (
                        f"error: {result.removeprefix('ok:').strip()}; but the daemon could "
                        f"not switch to it ({problem}): it stops, and signs with the new CA "
                        "when it starts again"
                    )
                rt = self.host.rt or rt
            log.info("operator command %s %s: %s", kind, payload, result.splitlines()[0])
            with rt.store.begin() as conn:
                commands.finish(conn, control_id, result, rt.clock.now())
