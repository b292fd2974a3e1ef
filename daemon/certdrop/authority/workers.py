"""Worker processes that sign (and lint before signing) on every processor, and run other
work of the caller's in chunks.

Each worker loads the CA itself from the state folder (the private key never travels
through a pipe) and builds its own pkilint validator once. Signing is the pool's own
job: the parent sends plain data (subject, SPKI DER, validity, usages, serial) and gets
DER back. Other work comes as a module-level function that the workers run on chunks
of items (`map_later`: the daemon has them parse dropped requests). Small batches are
done in the calling process: a round trip to a worker would only add latency to a
single drop.
"""

from __future__ import annotations

import datetime as dt
import gc
import logging
import multiprocessing
import os
import select
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ..errors import LintError
from .ca import CertificateAuthority, IssueSpec, Staged, Staging
from .keys import public_key_bytes

if TYPE_CHECKING:  # pkilint is loaded only when certificates are linted
    from .lint import Linter

log = logging.getLogger("certdrop.authority.workers")
T = TypeVar("T")
Item = TypeVar("Item")

# below this many items a batch is done in the calling process
MIN_POOL_BATCH = 16

# a pool found broken (a worker killed by the OOM killer or an operator, a failed start)
# is started anew this long after, on the next batch that needs it
RESTART_BROKEN_SECONDS = 300.0

# the cyclic garbage collector's thresholds once start-up is over (Python's: 700, 10, 10)
GC_THRESHOLDS = (50_000, 20, 100)

_worker_ca: CertificateAuthority | None = None
_worker_linter: Linter | None = None

_Plain = tuple[
    list[tuple[str, str]],
    bytes,
    float,
    float,
    list[str],
    list[str],
    list[str],
    list[str],
    int,
    str,
    str,
    str,
    bool,
]


def _to_plain(spec: IssueSpec) -> _Plain:
    return (
        list(spec.subject),
        public_key_bytes(spec.public_key) if spec.public_key is not None else b"",
        spec.not_before.timestamp(),
        spec.not_after.timestamp(),
        list(spec.key_usage),
        list(spec.extended_key_usage),
        list(spec.emails),
        list(spec.dns_names),
        spec.serial,
        spec.crl_distribution_point,
        spec.ocsp_url,
        spec.ca_issuers_url,
        spec.ocsp_nocheck,
    )


def _from_plain(p: _Plain) -> IssueSpec:
    subject, spki, nb, na, ku, eku, emails, dns, serial, dp, ocsp_url, issuers, nocheck = p
    return IssueSpec(
        subject=subject,
        public_key=spki or None,  # DER: written into the TBS as it is, and compared after
        not_before=dt.datetime.fromtimestamp(nb, dt.UTC),
        not_after=dt.datetime.fromtimestamp(na, dt.UTC),
        key_usage=ku,
        extended_key_usage=eku,
        emails=emails,
        dns_names=dns,
        serial=serial,
        crl_distribution_point=dp,
        ocsp_url=ocsp_url,
        ca_issuers_url=issuers,
        ocsp_nocheck=nocheck,
    )


def settle_heap(*, collect: bool = True) -> None:
    """Once a process has loaded what it keeps (modules, CA, settings, linter): exempt
    that from the cyclic garbage collector and let it run less often.

    With Python's thresholds a burst runs many young collections and several full ones,
    each full one walking everything loaded at start; frozen and with these thresholds
    a burst runs almost none. Almost all garbage here is freed by reference counting;
    cycles still get collected, later.
    """
    if collect:
        gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _exit_with_daemon(daemon_pid: int) -> None:
    """End this worker when the daemon that made the pool is gone.

    A daemon killed with SIGKILL runs no shutdown, and the workers (children of the
    pool's fork server, which they keep alive) would otherwise wait forever on a
    queue nobody writes to, each holding the CA key in memory.
    """
    try:
        pidfd = os.pidfd_open(daemon_pid)
    except ProcessLookupError:  # gone already, before this worker even started
        os._exit(0)
    except (OSError, AttributeError):  # not Linux >= 5.3: the service manager cleans up
        return

    def watch() -> None:
        select.select([pidfd], [], [])  # readable when the daemon has exited
        os._exit(0)

    threading.Thread(target=watch, name="certdrop-daemon-watch", daemon=True).start()


def _init_worker(state: str, passphrase: bytes | None, lint: bool, daemon_pid: int) -> None:
    global _worker_ca, _worker_linter
    _exit_with_daemon(daemon_pid)
    _worker_ca = CertificateAuthority.load(Path(state), passphrase)
    if lint:
        from .lint import Linter

        _worker_linter = Linter()
    settle_heap(collect=False)  # a collection would touch (copy) the fork server's pages


def _sign_chunk(chunk: list[tuple[_Plain, Staging]], lint: bool) -> list[Staged | LintError]:
    """Sign and stage; the LintError instead for a lint refusal."""
    assert _worker_ca is not None
    linter = _worker_linter.certificate if (lint and _worker_linter is not None) else None
    specs = [_from_plain(plain) for plain, _ in chunk]
    return _worker_ca.issue_and_stage(specs, [st for _, st in chunk], linter)


def _ping() -> bool:
    return _worker_ca is not None


def _forkserver_context(lint: bool, preload: Sequence[str]) -> Any:
    """The forkserver context, with what the workers need imported once in the fork server.

    Without a preload every worker imports cryptography, pkilint and the signing code on
    its own on the first burst, competing with the daemon for the processors; with it
    the fork server imports them once and the workers are forked ready. multiprocessing
    also re-runs the daemon's main module in each worker (`certdrop.cli`, or the
    `certdrop` script that imports it): it imports little at the top (click; the
    commands import what they use), so that costs nothing much either.
    """
    ctx = multiprocessing.get_context("forkserver")
    linting = ["certdrop.authority.lint"] if lint else []
    ctx.set_forkserver_preload(["__main__", __name__, *linting, *preload, "click"])
    return ctx


def _stop_forkserver() -> None:
    """Stop the fork server with the workers: it holds the preloaded modules in memory.

    multiprocessing has no public way to do this; without one (another Python), the fork
    server stays and is reused by the next pool.
    """
    from multiprocessing import forkserver

    stop = getattr(getattr(forkserver, "_forkserver", None), "_stop", None)
    if stop is not None:
        try:
            stop()
        except OSError as exc:
            log.debug("could not stop the fork server: %s", exc)


def _part(items: Sequence[Item], i: int, j: int) -> Sequence[Item]:
    """items[i:j], or `items` itself when that is all of it."""
    return items if i == 0 and j >= len(items) else items[i:j]


class _Deferred(Generic[T]):
    """Work for the pool asked for while the pool was starting.

    It is handed to the pool as soon as the pool is up (`kick`, from the thread that
    started it), unless its outcome was asked for first: then the caller does it
    (`here`, which itself hands what is left to the pool once it is up). Without this,
    the work of the batches decided while the workers started waited for the daemon to
    ask for it, and the workers idled meanwhile.
    """

    def __init__(
        self,
        submit: Callable[[ProcessPoolExecutor], Callable[[], list[T]]],
        here: Callable[[], list[T]],
    ) -> None:
        self._lock = threading.Lock()
        self._submit = submit
        self._here = here
        self._outcome: Callable[[], list[T]] | None = None
        self._taken = False

    def kick(self, pool: ProcessPoolExecutor) -> None:
        with self._lock:
            if not self._taken and self._outcome is None:
                self._outcome = self._submit(pool)

    def __call__(self) -> list[T]:
        with self._lock:
            outcome = self._outcome
            self._taken = outcome is None
        return outcome() if outcome is not None else self._here()


# the two ways to do items i..j-1 of a batch: here, or (from i onwards) in the pool
_Here = Callable[[int, int], list[T]]
_There = Callable[[ProcessPoolExecutor, int], Callable[[], list[T]]]


class WorkerPool:
    """Worker processes that hold the CA (and the linter): they sign batches of
    certificates in parallel, and run the caller's functions on batches of other work.

    The workers are started in the background on the first batch big enough to need
    them, and stopped again after a quiet spell (`stop_if_idle`); work asked for while
    they start is handed to them once they are up. A pool found broken (a worker
    killed) leaves the work to the calling process, and is started anew after
    `restart_after` seconds.
    """

    def __init__(
        self,
        ca: CertificateAuthority,
        state: Path,
        passphrase: bytes | None,
        *,
        lint: bool,
        workers: int | None = None,
        preload: Sequence[str] = (),
    ) -> None:
        """`preload`: the modules of the functions given to `map_later`, imported once in
        the fork server rather than in every worker."""
        self.ca = ca
        self.lint_enabled = lint
        self.workers = workers or max(1, os.cpu_count() or 1)
        self._initargs = (str(state), passphrase, lint, os.getpid())
        self._preload = tuple(preload)
        self._pool: ProcessPoolExecutor | None = None
        self._starter: threading.Thread | None = None
        self._broken = False
        self._broken_at = 0.0
        self.restart_after = RESTART_BROKEN_SECONDS
        self._last_used = time.monotonic()
        # work deferred while the pool starts, handed to it once it is up
        self._lock = threading.Lock()
        self._waiting: list[_Deferred[Any]] = []

    # --- the workers -------------------------------------------------------------------------
    def _start(self) -> None:
        """Start the workers in the background; batches are done here until they are up.

        The pool is started on the first batch big enough to need it, and stopped
        again after a quiet spell: an idle CA keeps one small process. Starting takes
        the fork server's imports, so it runs in its own thread.
        """
        if self._pool is not None or self._broken or self._starter is not None:
            return
        self._starter = threading.Thread(
            target=self._start_workers, name="certdrop-pool-start", daemon=True
        )
        self._starter.start()

    def _start_workers(self) -> None:
        pool = None
        try:
            pool = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=_forkserver_context(self.lint_enabled, self._preload),
                initializer=_init_worker,
                initargs=self._initargs,
            )
            for fut in [pool.submit(_ping) for _ in range(self.workers)]:
                fut.result()
        except Exception as exc:  # noqa: BLE001 - the daemon process signs everything then
            log.error(
                "the signing processes did not start (%s); signing in the daemon process", exc
            )
            with self._lock:
                self._mark_broken()
                self._waiting = []  # done in the daemon process when asked for
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
            return
        with self._lock:
            self._pool = pool
            waiting, self._waiting = self._waiting, []
        log.info("started %d signing processes", self.workers)
        for deferred in waiting:
            deferred.kick(pool)

    def _defer(self, deferred: _Deferred[T]) -> Callable[[], list[T]]:
        """`deferred`, handed to the pool when it is up (now, if it came up meanwhile)."""
        with self._lock:
            pool = None if self._broken else self._pool
            if pool is None and not self._broken:
                self._waiting.append(deferred)
        if pool is not None:
            deferred.kick(pool)
        return deferred

    def wait_started(self) -> None:
        """Wait for a start under way to end: the workers are up, and the work deferred
        while they started has been handed to them; or the start failed."""
        if self._starter is not None:
            self._starter.join()
            self._starter = None

    @property
    def ready(self) -> bool:
        return self._pool is not None and not self._broken

    def _mark_broken(self) -> None:
        self._broken = True
        self._broken_at = time.monotonic()

    def _restart_if_due(self) -> None:
        """Put a broken pool away and allow a new one, `restart_after` seconds after it
        broke: one killed worker must not leave the daemon signing alone until it is
        restarted. Called before a batch that wants the pool, from the daemon's thread."""
        if not self._broken or time.monotonic() - self._broken_at < self.restart_after:
            return
        self.wait_started()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)  # its processes are gone or ended
        _stop_forkserver()
        self._broken = False
        log.info(
            "starting the signing processes again (they failed %.0f s ago)",
            time.monotonic() - self._broken_at,
        )

    def _use(self, n: int) -> ProcessPoolExecutor | None:
        """The pool if it should take a batch of `n` now; else None (do it here). A
        batch big enough starts the workers if they are not up (or, once due, again)."""
        if n < MIN_POOL_BATCH:
            return None
        self._restart_if_due()
        if self._broken:
            return None
        self._last_used = time.monotonic()
        if not self.ready:
            self._start()  # this batch is done here; the next ones go to the workers
            return None
        return self._pool

    def expect(self, n: int) -> None:
        """`n` requests are waiting: start the workers now if that many need them, so that
        they are up sooner (the batch at hand may be small: the first events of a burst)."""
        self._use(n)

    def stop_if_idle(self, idle_seconds: float) -> bool:
        """Stop the workers when no batch needed them for `idle_seconds`."""
        if self._pool is None or time.monotonic() - self._last_used < idle_seconds:
            return False
        self.wait_started()
        pool, self._pool = self._pool, None
        pool.shutdown(wait=True, cancel_futures=True)
        _stop_forkserver()
        log.info("stopped the signing processes (idle for %g s)", idle_seconds)
        return True

    def close(self) -> None:
        self.wait_started()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
            _stop_forkserver()

    # --- signing -------------------------------------------------------------------------------
    def sign(
        self, specs: Sequence[IssueSpec], stagings: Sequence[Staging], linter: Linter | None
    ) -> Callable[[], list[Staged | LintError]]:
        """Start signing and staging `specs`; the returned function waits for the outcome.

        In the pool, the work starts now (the daemon goes on with other work meanwhile);
        in this process (a small batch, a pool not ready yet), it runs when asked for.
        """
        if (linter is not None) != self.lint_enabled:
            return lambda: self._sign_here(specs, stagings, linter)
        here, there = self._signing(specs, stagings, linter)
        return self._later(len(specs), here, there)

    def sign_in_steps(
        self, specs: Sequence[IssueSpec], stagings: Sequence[Staging], linter: Linter | None
    ) -> list[Staged | LintError]:
        """Sign here, a few at a time, and hand what is left to the workers as soon as they
        are up; never starts them. What a `sign` asked for while they start does."""
        return self._in_steps(len(specs), *self._signing(specs, stagings, linter))

    def _signing(
        self, specs: Sequence[IssueSpec], stagings: Sequence[Staging], linter: Linter | None
    ) -> tuple[_Here[Staged | LintError], _There[Staged | LintError]]:
        lint = linter is not None

        def there(pool: ProcessPoolExecutor, i: int) -> Callable[[], list[Staged | LintError]]:
            rest, staged = _part(specs, i, len(specs)), _part(stagings, i, len(stagings))
            # the worker runs the same checks as this process (CertificateAuthority.issue)
            jobs = [(_to_plain(s), st) for s, st in zip(rest, staged, strict=True)]
            return self._run(
                pool,
                _sign_chunk,
                jobs,
                (lint,),
                lambda: self._sign_here(rest, staged, linter),
                "signing",
            )

        return (
            lambda i, j: self._sign_here(_part(specs, i, j), _part(stagings, i, j), linter),
            there,
        )

    def _sign_here(
        self, specs: Sequence[IssueSpec], stagings: Sequence[Staging], linter: Linter | None
    ) -> list[Staged | LintError]:
        return self.ca.issue_and_stage(specs, stagings, linter.certificate if linter else None)

    # --- other work ----------------------------------------------------------------------------
    def map_later(
        self,
        fn: Callable[..., list[T]],
        items: Sequence[Item],
        *,
        fallback: Callable[[Sequence[Item]], list[T]],
        args: tuple[Any, ...] = (),
        what: str = "work",
    ) -> Callable[[], list[T]]:
        """Start `fn(chunk, *args)` on chunks of `items`; the returned function waits for
        the results, in order (as `sign`).

        `fn` is a module-level function (the workers import it by name) that gives one
        result per item; `fallback(items)` gives the same results in this process, for
        a small batch, while the workers start, and when the pool is broken. `what`
        names the work in the log ("parsing").
        """
        return self._later(len(items), *self._mapping(fn, items, fallback, args, what))

    def map_in_steps(
        self,
        fn: Callable[..., list[T]],
        items: Sequence[Item],
        *,
        fallback: Callable[[Sequence[Item]], list[T]],
        args: tuple[Any, ...] = (),
        what: str = "work",
    ) -> list[T]:
        """`fallback` here a few items at a time, and what is left to the workers as soon
        as they are up; never starts them. What a `map_later` asked for while they start
        does."""
        return self._in_steps(len(items), *self._mapping(fn, items, fallback, args, what))

    def _mapping(
        self,
        fn: Callable[..., list[T]],
        items: Sequence[Item],
        fallback: Callable[[Sequence[Item]], list[T]],
        args: tuple[Any, ...],
        what: str,
    ) -> tuple[_Here[T], _There[T]]:
        def there(pool: ProcessPoolExecutor, i: int) -> Callable[[], list[T]]:
            rest = _part(items, i, len(items))
            return self._run(pool, fn, list(rest), args, lambda: fallback(rest), what)

        return lambda i, j: fallback(_part(items, i, j)), there

    # --- where a batch is done -----------------------------------------------------------------
    def _later(self, n: int, here: _Here[T], there: _There[T]) -> Callable[[], list[T]]:
        """A batch of `n` items: in the pool when it is up; deferred while it starts;
        here for a small batch or a broken pool."""
        pool = self._use(n)
        if pool is None:
            if n < MIN_POOL_BATCH or self._broken:
                return lambda: here(0, n)
            # the workers are starting: they do it once up, unless it is asked for before
            # (then here, a few at a time, the rest by them once they are up)
            return self._defer(
                _Deferred(lambda p: there(p, 0), lambda: self._in_steps(n, here, there))
            )
        return there(pool, 0)

    def _in_steps(self, n: int, here: _Here[T], there: _There[T]) -> list[T]:
        """Items 0..n-1 done here (`here(i, j)`: items i..j-1), a few at a time; what is
        left when the pool comes up goes to it (`there(pool, i)`: items i.. onwards).
        The pool often comes up in the middle of a batch."""
        out: list[T] = []
        step = MIN_POOL_BATCH
        for i in range(0, n, step):
            pool = self._pool
            if pool is not None and not self._broken and n - i >= step:
                return out + there(pool, i)()
            out += here(i, i + step)
        return out

    def _run(
        self,
        pool: ProcessPoolExecutor,
        fn: Callable[..., list[T]],
        items: list[Any],
        args: tuple[Any, ...],
        fallback: Callable[[], list[T]],
        what: str,
    ) -> Callable[[], list[T]]:
        """Start `fn` on `items` in the pool; the returned function waits for the results
        (in order). If the pool is broken (a worker was killed, ...), this process does
        the work instead (`fallback`), and all the work until a new pool is started
        (`restart_after`)."""

        def broken(exc: Exception) -> list[T]:
            if self._pool is pool:  # not a pool put away since, nor its successor
                log.error(
                    "%s pool failed (%s); %s in the daemon process for the next %.0f s",
                    what,
                    exc,
                    what,
                    self.restart_after,
                )
                self._mark_broken()
            return fallback()

        try:
            futures = self._spread(pool, fn, items, *args)
        except Exception as exc:  # noqa: BLE001 - BrokenProcessPool, a pool shut down, ...
            failure = exc
            return lambda: broken(failure)

        def outcome() -> list[T]:
            out: list[T] = []
            try:
                for fut in futures:
                    out += fut.result()
            except Exception as exc:  # noqa: BLE001 - a broken pool falls back to this process
                return broken(exc)
            return out

        return outcome

    def _spread(
        self, pool: ProcessPoolExecutor, fn: Callable[..., Any], items: list[Any], *args: Any
    ) -> list[Future[Any]]:
        """`fn(chunk, *args)` in the pool for two chunks of `items` per worker, in order."""
        size = -(-len(items) // min(self.workers * 2, len(items)))
        return [pool.submit(fn, items[i : i + size], *args) for i in range(0, len(items), size)]
