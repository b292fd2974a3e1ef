"""systemd integration without libsystemd, and the state folder's lock.

* `Notifier`: sd_notify(3) datagrams to $NOTIFY_SOCKET (READY=1, WATCHDOG=1, STATUS=...).
* `StateLock`: an exclusive flock on <state>/certdrop.lock, so that one daemon (or one
  CLI writer when no daemon runs) works on a state folder at a time.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import threading
from pathlib import Path

from ..errors import LockError

log = logging.getLogger("certdrop.service")

LOCK_FILE = "certdrop.lock"


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
