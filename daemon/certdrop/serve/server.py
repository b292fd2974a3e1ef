"""`certdrop serve`: the supervisor process and its workers.

The supervisor binds `[http] listen`, forks the worker processes (`[http] workers`, or
one per CPU) that answer on that one socket (serve/http.py), tells systemd READY=1 once
every worker accepts, then becomes serve/keeper.py (exec, same pid), which restarts a
worker that dies and on SIGTERM stops them all and exits 0. Signal handlers only set
flags.
"""

from __future__ import annotations

import errno
import gc
import logging
import os
import select
import signal
import socket
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from ..clock import Clock
from ..config import Settings, split_listen
from ..errors import ServeError
from ..service.systemd import Notifier
from . import keeper as keeper_module
from .balance import ConnectionBoard
from .keeper import Keeper

log = logging.getLogger("certdrop.serve")

START_SECONDS = 30.0  # every worker accepts within this, or start-up fails
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
    """The `certdrop serve` process until its workers answer (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        clock: Clock,
        *,
        config_path: Path | None = None,
        notifier: Notifier | None = None,
        workers: int | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.config_path = config_path
        self.notifier = notifier or Notifier()
        self.workers = workers or settings.http.workers or os.cpu_count() or 1
        self.board = ConnectionBoard(self.workers)
        self._stop = False
        self._http: Any = None  # serve/http.py, loaded by run()

    # --- signals: handlers only set flags -------------------------------------------------------
    def _on_term(self, signum: int, frame: FrameType | None) -> None:
        self._stop = True

    # --- life cycle --------------------------------------------------------------------------------
    def run(self) -> int:
        self._check_state()
        self._http = _load_http()
        from .runtime import ServeRuntime

        warm = ServeRuntime.build(self.settings, self.clock)
        try:
            warm.warm_up()
            self._http.warm_up(warm)
        finally:
            warm.close()  # each worker opens the index for itself after the fork
        # the objects loaded so far are shared with the workers: kept out of the garbage
        # collector's passes, which would write to (and so copy) the pages holding them
        gc.collect()
        gc.freeze()
        sock = listening_socket(self.settings.http.listen)
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        life_r, life_w = os.pipe2(os.O_CLOEXEC)
        # blocked until the keeper (or this process, if it cannot start) takes them over
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD, signal.SIGHUP})
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_term)
        keep = (sock.fileno(), self.board.fd, ready_w, life_r)  # what a worker inherits
        keeper = Keeper(
            workers={},
            count=self.workers,
            board_fd=self.board.fd,
            ready_r=ready_r,
            life_w=life_w,
            worker_command=self._worker_command(),
            worker_fds=keep,
            log_level=logging.getLevelName(logging.getLogger().getEffectiveLevel()),
        )
        try:
            for i in range(self.workers):
                keeper.adopt(self._spawn(i, sock, keep, (ready_r, life_w)), i)
            self._await_ready(ready_r, keeper)
        except BaseException:
            keeper.stop_workers()
            raise
        where = self.settings.http.listen
        log.info("serving on http://%s with %d worker processes", where, self.workers)
        self.notifier.notify(
            "READY=1", f"STATUS=serving on {where} ({self.workers} worker processes)"
        )
        self.notifier.close()
        return self._become_keeper(keeper)

    def _become_keeper(self, keeper: Keeper) -> int:
        """Replace this process by serve/keeper.py (same pid); in this process if that fails."""
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        if self._stop:
            keeper.request_stop()  # a SIGTERM came while starting: stop right away
        for fd in (*keeper.worker_fds, keeper.board_fd, keeper.ready_r, keeper.life_w):
            os.set_inheritable(fd, True)
        for handler in logging.getLogger().handlers:
            handler.flush()
        if not keeper.stopping:
            try:  # a fixed argv, no shell
                os.execv(  # noqa: S606
                    sys.executable,
                    [sys.executable, "-I", "-S", _keeper_script(), *keeper.arguments()],
                )
            except OSError as exc:
                log.warning("cannot start the lean supervisor (%s): watching from here", exc)
        return keeper.run()

    def _check_state(self) -> None:
        from ..authority.lifecycle import CA_CERT

        if not (self.settings.state / CA_CERT).exists():
            raise ServeError(
                f"no CA in {self.settings.state}: nothing to serve; create one with 'certdrop init'"
            )

    def _worker_command(self) -> list[str]:
        """`certdrop serve` as this process was started, for a worker started later."""
        cmd = [sys.executable, "-m", "certdrop.cli"]
        if self.config_path is not None:
            cmd += ["--config", str(self.config_path)]
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
        return [*cmd, "--log-level", str(level).lower(), "serve"]

    def _spawn(
        self, index: int, sock: socket.socket, keep: tuple[int, ...], close: tuple[int, ...]
    ) -> int:
        pid = os.fork()
        if pid == 0:  # the worker
            code = 70
            try:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD, signal.SIGHUP})
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
                    signal.signal(sig, signal.SIG_DFL)
                for fd in close:  # the supervisor's ends of the pipes
                    os.close(fd)
                from .runtime import ServeRuntime

                rt = ServeRuntime.build(self.settings, self.clock)
                code = self._http.run_worker(sock, rt, self.board, index, keep[2], keep[3])
            except BaseException:
                log.exception("worker %d failed", index)
            finally:
                os._exit(code)
        return pid

    def _await_ready(self, ready_r: int, keeper: Keeper) -> None:
        ready: set[int] = set()
        deadline = time.monotonic() + START_SECONDS
        while len(ready) < self.workers:
            left = deadline - time.monotonic()
            if left <= 0 or self._stop:
                raise ServeError(
                    f"the worker processes did not start within {START_SECONDS:g} s "
                    f"({len(ready)} of {self.workers} ready); see the log above"
                )
            got, _, _ = select.select([ready_r], [], [], min(left, 0.1))
            if got:
                ready.update(os.read(ready_r, 64))
            ended = keeper.reap(starting=True)
            if ended:
                raise ServeError(f"worker {ended[0]} ended while starting; see the log above")


def run_worker(settings: Settings, clock: Clock, spec: str) -> int:
    """A worker started after the others (`certdrop serve --worker`, by serve/keeper.py):
    `spec` is INDEX:WORKERS:SOCKET:BOARD:READY:LIFELINE, the last four inherited fds."""
    try:
        index, workers, sock_fd, board_fd, ready_w, life_r = (int(x) for x in spec.split(":"))
    except ValueError:
        raise ServeError(f"--worker {spec!r}: not a worker made by certdrop serve") from None
    http = _load_http()
    from .runtime import ServeRuntime

    for fd in (sock_fd, board_fd, ready_w, life_r):
        os.set_inheritable(fd, False)
    sock = socket.socket(fileno=sock_fd)
    board = ConnectionBoard(workers, fd=board_fd)
    rt = ServeRuntime.build(settings, clock)
    code: int = http.run_worker(sock, rt, board, index, ready_w, life_r)
    return code


def _keeper_script() -> str:
    """serve/keeper.py's cached bytecode when it matches the source (the pyc header's
    mtime and size, as the import system checks them), else the source."""
    source = keeper_module.__file__
    spec = keeper_module.__spec__
    cached = spec.cached if spec is not None else None
    try:
        st = os.stat(source)
        with open(cached or "", "rb") as f:
            head = f.read(16)
    except OSError:
        return source
    flags, mtime, size = (int.from_bytes(head[i : i + 4], "little") for i in (4, 8, 12))
    fresh = (
        flags == 0 and mtime == int(st.st_mtime) & 0xFFFFFFFF and size == st.st_size & 0xFFFFFFFF
    )
    return cached if fresh and cached else source


def _load_http() -> Any:
    try:  # loaded before the fork: each worker has it without importing it again
        from . import http
    except ImportError:
        raise ServeError(
            "certdrop serve needs the Python packages aiohttp and uvloop; install certdrop "
            "with the 'serve' extra (pip install 'certdrop[serve]')"
        ) from None
    return http
