"""`certdrop serve`: the supervisor process and its workers.

The supervisor binds `[http] listen`, forks the worker processes (`[http] workers`, or
one per CPU) that answer on that one socket (serve/http.py), tells systemd READY=1 once
every worker accepts, restarts a worker that dies, and on SIGTERM stops them all and
exits 0. Signal handlers only set flags; the main loop sleeps in select() until a
signal, a worker's message or the next watchdog ping.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import signal
import socket
import time
from types import FrameType
from typing import Any

from ..clock import Clock
from ..config import Settings, split_listen
from ..errors import ServeError
from ..service.systemd import Notifier
from .balance import ConnectionBoard

log = logging.getLogger("certdrop.serve")

START_SECONDS = 30.0  # every worker accepts within this, or start-up fails
STOP_SECONDS = 10.0  # workers still running this long after SIGTERM are killed
RESTART_LIMIT = 5  # workers dying within RESTART_WINDOW of their start: give up
RESTART_WINDOW = 10.0
BACKLOG = 1024


def listening_socket(listen: str) -> socket.socket:
    """The listening socket for `[http] listen` (HOST:PORT), non-blocking."""
    host, port = split_listen(listen)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ServeError(f"[http] listen = {listen!r}: cannot resolve {host!r} ({exc})") from None
    family = infos[0][0]
    try:
        sock = socket.create_server((host, port), family=family, backlog=BACKLOG)
    except OSError as exc:
        hint = {
            errno.EADDRINUSE: "another process listens there",
            errno.EACCES: "a port below 1024 needs CAP_NET_BIND_SERVICE",
            errno.EADDRNOTAVAIL: "no interface of this host has that address",
        }.get(exc.errno or 0, exc.strerror or str(exc))
        raise ServeError(f"[http] listen = {listen!r}: cannot listen there ({hint})") from None
    sock.setblocking(False)
    return sock


class Supervisor:
    """The `certdrop serve` process (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        clock: Clock,
        *,
        notifier: Notifier | None = None,
        workers: int | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.notifier = notifier or Notifier()
        self.workers = workers or settings.http.workers or os.cpu_count() or 1
        self.board = ConnectionBoard(self.workers)
        self.pids: dict[int, int] = {}  # pid -> worker index
        self.started: dict[int, float] = {}  # worker index -> monotonic start
        self.watchdog_usec = Notifier.watchdog_usec() if self.notifier.enabled else 0
        self._stop = False
        self._children_changed = False
        self._quick_deaths: list[float] = []
        self.exit_code = 0
        self._http: Any = None  # serve/http.py, loaded by run()

    # --- signals: handlers only set flags -------------------------------------------------------
    def _on_term(self, signum: int, frame: FrameType | None) -> None:
        self._stop = True

    def _on_child(self, signum: int, frame: FrameType | None) -> None:
        self._children_changed = True

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        pass  # files are re-read when they change; [http] changes need a restart

    # --- life cycle --------------------------------------------------------------------------------
    def run(self) -> int:
        self._check_state()
        try:  # loaded before the fork: each worker has it without importing it again
            from . import http
        except ImportError:
            raise ServeError(
                "certdrop serve needs the Python package aiohttp; install certdrop with the "
                "'serve' extra (pip install 'certdrop[serve]')"
            ) from None
        self._http = http
        sock = listening_socket(self.settings.http.listen)
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        life_r, life_w = os.pipe2(os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_term)
        signal.signal(signal.SIGCHLD, self._on_child)
        signal.signal(signal.SIGHUP, self._on_hup)
        fds = (sock, wake_r, wake_w, ready_r, ready_w, life_r, life_w)
        try:
            for i in range(self.workers):
                self._spawn(i, sock, fds, ready_w, life_r)
            self._await_ready(ready_r)
            where = self.settings.http.listen
            log.info("serving on http://%s with %d worker processes", where, self.workers)
            self.notifier.notify(
                "READY=1", f"STATUS=serving on {where} ({self.workers} worker processes)"
            )
            self._main_loop(sock, fds, wake_r, ready_r, ready_w, life_r)
        finally:
            self.notifier.notify("STOPPING=1")
            self._stop_workers()
            signal.set_wakeup_fd(-1)
            for fd in (wake_r, wake_w, ready_r, ready_w, life_r, life_w):
                os.close(fd)
            sock.close()
            log.info("stopped")
        return self.exit_code

    def _check_state(self) -> None:
        from ..authority.lifecycle import CA_CERT

        if not (self.settings.state / CA_CERT).exists():
            raise ServeError(
                f"no CA in {self.settings.state}: nothing to serve; create one with 'certdrop init'"
            )

    def _spawn(
        self,
        index: int,
        sock: socket.socket,
        fds: tuple[object, ...],
        ready_w: int,
        life_r: int,
    ) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            code = 70
            try:
                code = self._worker(index, sock, fds, ready_w, life_r)
            except BaseException:
                log.exception("worker %d failed", index)
            finally:
                os._exit(code)
        self.pids[pid] = index
        self.started[index] = time.monotonic()

    def _worker(
        self,
        index: int,
        sock: socket.socket,
        fds: tuple[object, ...],
        ready_w: int,
        life_r: int,
    ) -> int:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        for fd in fds:  # only the socket, the ready pipe and the lifeline stay open
            if isinstance(fd, int) and fd not in (ready_w, life_r):
                os.close(fd)
        from .runtime import ServeRuntime

        rt = ServeRuntime.build(self.settings, self.clock)
        code: int = self._http.run_worker(sock, rt, self.board, index, ready_w, life_r)
        return code

    def _await_ready(self, ready_r: int) -> None:
        ready: set[int] = set()
        deadline = time.monotonic() + START_SECONDS
        while len(ready) < self.workers:
            left = deadline - time.monotonic()
            if left <= 0 or self._stop:
                raise ServeError(
                    f"the worker processes did not start within {START_SECONDS:g} s "
                    f"({len(ready)} of {self.workers} ready); see the log above"
                )
            got, _, _ = select.select([ready_r], [], [], min(left, 0.5))
            if got:
                ready.update(os.read(ready_r, 64))
            self._reap(restart=False)

    def _main_loop(
        self,
        sock: socket.socket,
        fds: tuple[object, ...],
        wake_r: int,
        ready_r: int,
        ready_w: int,
        life_r: int,
    ) -> None:
        interval = self.watchdog_usec / 2e6
        next_ping = 0.0
        while not self._stop:
            timeout = max(0.0, next_ping - time.monotonic()) if interval else None
            try:
                got, _, _ = select.select([wake_r, ready_r], [], [], timeout)
            except InterruptedError:
                got = []
            if wake_r in got:
                while True:
                    try:
                        if not os.read(wake_r, 512):
                            break
                    except BlockingIOError:
                        break
            if ready_r in got:
                os.read(ready_r, 64)  # a restarted worker accepts again
            if self._children_changed:
                self._children_changed = False
                for index in self._reap(restart=True):
                    self._spawn(index, sock, fds, ready_w, life_r)
            if interval and time.monotonic() >= next_ping:
                self.notifier.notify("WATCHDOG=1")
                next_ping = time.monotonic() + interval

    def _reap(self, *, restart: bool) -> list[int]:
        """Collect workers that ended; the indexes to start again."""
        again: list[int] = []
        while self.pids:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            index = self.pids.pop(pid, None)
            if index is None:
                continue
            self.board.retire(index)
            if self._stop:
                continue
            code = os.waitstatus_to_exitcode(status)
            log.error(
                "worker %d (pid %d) ended with status %d; starting it again", index, pid, code
            )
            if not restart:
                raise ServeError(f"worker {index} ended with status {code} while starting")
            now = time.monotonic()
            if now - self.started.get(index, 0.0) < RESTART_WINDOW:
                self._quick_deaths = [t for t in self._quick_deaths if now - t < 60] + [now]
                if len(self._quick_deaths) > RESTART_LIMIT:
                    self.exit_code = 1
                    self._stop = True
                    self.notifier.notify("STATUS=failed: the worker processes keep ending")
                    log.error("workers keep ending right after their start: stopping")
                    return []
            again.append(index)
        return again

    def _stop_workers(self) -> None:
        self._stop = True
        for pid in list(self.pids):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + STOP_SECONDS
        while self.pids and time.monotonic() < deadline:
            self._reap(restart=False)
            if self.pids:
                time.sleep(0.02)
        for pid in list(self.pids):
            log.error("worker pid %d did not stop within %g s: killing it", pid, STOP_SECONDS)
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            self.pids.pop(pid, None)
