"""The process that watches `certdrop serve`'s workers once they answer.

The supervisor (serve/server.py) forks the workers from a process that has loaded
everything they need, so they share it. Once they are ready, it replaces itself with
this module (`python -I -S keeper.py`, same pid, so systemd's main process): a lean
interpreter that loads nothing of that heap. Kept in the supervisor, the heap's pages
that both workers write (reference counts) would be held a third time. From here on
this process pings the watchdog, starts a worker that died again (a fresh process,
`certdrop serve --worker`, which loads what it needs), and on SIGTERM stops them all.

Built-in modules only (`_signal`, not `signal`, which imports `enum`; no certdrop, no
`socket`, no `logging`): importing them is what this process exists to avoid. The
supervisor runs it from its cached bytecode, when there is one, so nothing is compiled. Signal handlers only set flags.
"""

from __future__ import annotations

import _socket
import mmap
import os
import select
import sys
import time

TYPE_CHECKING = False  # typing's flag without importing typing; mypy takes it as True
if TYPE_CHECKING:  # the same functions and constants, typed
    import signal as _signal
else:
    import _signal

STOP_SECONDS = 10.0  # workers still running this long after SIGTERM are killed
RESTART_LIMIT = 5  # more worker deaths than this within a minute, each soon after its start:
RESTART_WINDOW = 10.0  # ... (that soon) give up, exit 1 and let systemd restart the service
RETIRED = 1 << 62  # serve/balance.py's count of a worker that is not running
LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40}
JOURNAL_PRIORITY = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3}


class Keeper:
    """Watches the workers (see the module docstring). `argv` is what `arguments` made."""

    def __init__(
        self,
        *,
        workers: dict[int, int],  # pid -> worker index
        board_fd: int,
        ready_r: int,
        life_w: int,
        worker_command: list[str],
        worker_fds: tuple[int, ...],
        log_level: str = "INFO",
        count: int | None = None,
    ) -> None:
        """`count`: the workers there are to be (default: those in `workers`); the
        supervisor adds each it forks with `adopt`."""
        self.pids = dict(workers)
        self.count = count if count is not None else len(workers)
        self.started = {index: time.monotonic() for index in workers.values()}
        self.board_fd = board_fd
        self.ready_r = ready_r
        self.life_w = life_w  # held open: the workers stop when it closes (we died)
        self.worker_command = worker_command
        self.worker_fds = worker_fds
        self.log_style = log_style()
        self.log_level = LEVELS.get(log_level, 20)
        self.exit_code = 0
        self._stop = False
        self._children_changed = False
        self._quick_deaths: list[float] = []
        self._board: mmap.mmap | None = None
        self._notify_sock: _socket.socket | None = None

    # --- what the supervisor passes over exec -------------------------------------------------------
    def arguments(self) -> list[str]:
        pairs = ",".join(f"{pid}:{index}" for pid, index in self.pids.items())
        fds = ",".join(str(fd) for fd in self.worker_fds)
        return [
            f"workers={pairs}",
            f"board={self.board_fd}",
            f"ready={self.ready_r}",
            f"life={self.life_w}",
            f"fds={fds}",
            f"log={logging_name(self.log_level)}",
            "--",
            *self.worker_command,
        ]

    @classmethod
    def from_arguments(cls, argv: list[str]) -> Keeper:
        cut = argv.index("--")
        opts = dict(a.split("=", 1) for a in argv[:cut])
        workers = {
            int(pid): int(index)
            for pid, index in (p.split(":") for p in opts["workers"].split(",") if p)
        }
        return cls(
            workers=workers,
            board_fd=int(opts["board"]),
            ready_r=int(opts["ready"]),
            life_w=int(opts["life"]),
            worker_command=argv[cut + 1 :],
            worker_fds=tuple(int(fd) for fd in opts["fds"].split(",") if fd),
            log_level=opts["log"],
        )

    def adopt(self, pid: int, index: int) -> None:
        """Worker `index`, forked by the supervisor as `pid`."""
        self.pids[pid] = index
        self.started[index] = time.monotonic()

    @property
    def stopping(self) -> bool:
        return self._stop

    def request_stop(self) -> None:
        self._stop = True

    # --- signals: handlers only set flags -------------------------------------------------------------
    def _on_term(self, signum: int, frame: object) -> None:
        self._stop = True

    def _on_child(self, signum: int, frame: object) -> None:
        self._children_changed = True

    # --- the loop --------------------------------------------------------------------------------------
    def run(self) -> int:
        # workers started from here inherit the socket and the board, not these: a worker
        # holding the lifeline's write end would never see this process die
        for fd in (self.ready_r, self.life_w):
            os.set_inheritable(fd, False)
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        _signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        for sig in (_signal.SIGTERM, _signal.SIGINT):
            _signal.signal(sig, self._on_term)
        _signal.signal(_signal.SIGCHLD, self._on_child)
        _signal.signal(_signal.SIGHUP, _signal.SIG_IGN)  # [http] changes need a restart
        # the supervisor blocked these across exec: what came meanwhile is delivered now
        _signal.pthread_sigmask(
            _signal.SIG_UNBLOCK, {_signal.SIGTERM, _signal.SIGINT, _signal.SIGCHLD, _signal.SIGHUP}
        )
        self._children_changed = True  # a worker may have ended during the exec
        usec = watchdog_usec()
        interval = usec / 2e6
        next_ping = 0.0
        try:
            while not self._stop:
                timeout = max(0.0, next_ping - time.monotonic()) if interval else None
                try:
                    got, _, _ = select.select([wake_r, self.ready_r], [], [], timeout)
                except InterruptedError:
                    got = []
                if wake_r in got:
                    _drain(wake_r)
                if self.ready_r in got:
                    os.read(self.ready_r, 64)  # a restarted worker accepts
                if self._children_changed:
                    self._children_changed = False
                    for index in self.reap():
                        self.spawn(index)
                if interval and time.monotonic() >= next_ping:
                    self.notify("WATCHDOG=1")
                    next_ping = time.monotonic() + interval
        finally:
            self.notify("STOPPING=1")
            self.stop_workers()
            _signal.set_wakeup_fd(-1)
            os.close(wake_r)
            os.close(wake_w)
            self.log("INFO", "stopped")
        return self.exit_code

    def reap(self, *, starting: bool = False) -> list[int]:
        """Collect workers that ended; the indexes to start again (`starting`: the
        supervisor still waits for every worker to accept, and fails if one ended)."""
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
            self.retire(index)
            if self._stop:
                continue
            code = os.waitstatus_to_exitcode(status)
            if starting:
                self.log("ERROR", f"worker {index} (pid {pid}) ended with status {code} at start")
                again.append(index)
                continue
            self.log(
                "ERROR", f"worker {index} (pid {pid}) ended with status {code}; starting it again"
            )
            now = time.monotonic()
            if now - self.started.get(index, 0.0) < RESTART_WINDOW:
                self._quick_deaths = [t for t in self._quick_deaths if now - t < 60] + [now]
                if len(self._quick_deaths) > RESTART_LIMIT:
                    self.exit_code = 1
                    self._stop = True
                    self.notify("STATUS=failed: the worker processes keep ending")
                    self.log("ERROR", "workers keep ending right after their start: stopping")
                    return []
            again.append(index)
        return again

    def spawn(self, index: int) -> None:
        """A fresh worker `index` (`certdrop serve --worker`), on the inherited socket."""
        spec = ":".join(str(x) for x in (index, self.count, *self.worker_fds))
        try:
            pid = os.posix_spawn(
                self.worker_command[0],
                [*self.worker_command, "--worker", spec],
                os.environ,
            )
        except OSError as exc:
            self.log("ERROR", f"cannot start worker {index} again: {exc}; stopping")
            self.exit_code = 1
            self._stop = True
            return
        self.pids[pid] = index
        self.started[index] = time.monotonic()

    def retire(self, index: int) -> None:
        """Mark `index` as not running on the workers' connection board (serve/balance.py)."""
        if self._board is None:
            self._board = mmap.mmap(self.board_fd, 8 * self.count)
        self._board[8 * index : 8 * index + 8] = RETIRED.to_bytes(8, sys.byteorder, signed=True)

    def stop_workers(self) -> None:
        self._stop = True
        for pid in list(self.pids):
            try:
                os.kill(pid, _signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + STOP_SECONDS
        while self.pids and time.monotonic() < deadline:
            self.reap()
            if self.pids:
                time.sleep(0.02)
        for pid in list(self.pids):
            self.log(
                "ERROR", f"worker pid {pid} did not stop within {STOP_SECONDS:g} s: killing it"
            )
            try:
                os.kill(pid, _signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            self.pids.pop(pid, None)

    # --- systemd and the log, without their modules ------------------------------------------------
    def notify(self, *fields: str) -> None:
        """sd_notify(3): one datagram to $NOTIFY_SOCKET, never blocking."""
        addr = os.environ.get("NOTIFY_SOCKET", "")
        if not addr:
            return
        if addr.startswith("@"):
            addr = "\0" + addr[1:]
        try:
            if self._notify_sock is None:
                self._notify_sock = _socket.socket(
                    _socket.AF_UNIX, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC
                )
            self._notify_sock.sendto("\n".join(fields).encode(), _socket.MSG_DONTWAIT, addr)
        except OSError:
            pass

    def log(self, level: str, message: str) -> None:
        """One line on stderr in the CLI's format (cli/app.py): journal, plain or timed."""
        if LEVELS[level] < self.log_level:
            return
        line = f"{level} certdrop.serve: {message}\n"
        if self.log_style == "journal":
            line = f"<{JOURNAL_PRIORITY[level]}>{line}"
        elif self.log_style == "timed":
            line = time.strftime("%Y-%m-%dT%H:%M:%S ") + line
        try:
            os.write(2, line.encode(errors="replace"))
        except OSError:
            pass


def log_style() -> str:
    """The CLI's choice (cli/app.py): "journal" when stderr is the journal's stream
    ($JOURNAL_STREAM names it), "plain" under another service manager, else "timed"."""
    value = os.environ.get("JOURNAL_STREAM", "")
    if not value:
        return "timed"
    dev, _, ino = value.partition(":")
    try:
        st = os.fstat(2)
        return "journal" if (st.st_dev, st.st_ino) == (int(dev), int(ino)) else "plain"
    except (ValueError, OSError):
        return "plain"


def watchdog_usec() -> int:
    """$WATCHDOG_USEC when systemd wants pings from this pid (sd_watchdog_enabled(3))."""
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", "0"))
        pid = os.environ.get("WATCHDOG_PID", "")
        if pid and int(pid) != os.getpid():
            return 0
    except ValueError:
        return 0
    return max(usec, 0)


def logging_name(level: int) -> str:
    return next((name for name, n in LEVELS.items() if n >= level), "ERROR")


def _drain(fd: int) -> None:
    while True:
        try:
            if not os.read(fd, 512):
                return
        except BlockingIOError:
            return


if __name__ == "__main__":
    sys.exit(Keeper.from_arguments(sys.argv[1:]).run())
