"""Helpers for the service tests: a real sd_notify socket and a daemon subprocess."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from conftest import CAEnv, wait_for


class NotifySocket:
    """What systemd listens on: an AF_UNIX datagram socket at a path; records every message."""

    def __init__(self) -> None:
        # sun_path holds at most 107 bytes: keep it short, outside pytest's deep tmp folders
        self.folder = Path(tempfile.mkdtemp(prefix="cdn-"))
        self.path = self.folder / "notify"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.settimeout(0.2)
        self.messages: list[list[str]] = []
        self._lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._recv, daemon=True)
        self._thread.start()

    def _recv(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append(data.decode().split("\n"))

    def fields(self, start: int = 0) -> list[str]:
        """Every field (KEY=VALUE) received, in order, from message number `start` on."""
        with self._lock:
            return [f for msg in self.messages[start:] for f in msg]

    def count(self) -> int:
        with self._lock:
            return len(self.messages)

    def wait_field(
        self, pred: Callable[[str], bool] | str, start: int = 0, timeout: float = 30
    ) -> str:
        test = (lambda f: f == pred) if isinstance(pred, str) else pred
        return str(
            wait_for(
                lambda: next((f for f in self.fields(start) if test(f)), None),
                timeout,
                what=f"sd_notify field {pred}",
            )
        )

    def index_of(self, pred: Callable[[str], bool] | str, start: int = 0) -> int:
        """The number of the first message from `start` on with a matching field, else -1."""
        test = (lambda f: f == pred) if isinstance(pred, str) else pred
        with self._lock:
            for i, msg in enumerate(self.messages[start:], start):
                if any(test(f) for f in msg):
                    return i
        return -1

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=2)
        self.sock.close()
        shutil.rmtree(self.folder, ignore_errors=True)


class DaemonProcess:
    """`certdrop run` as systemd runs it: a child process with NOTIFY_SOCKET and WATCHDOG_USEC."""

    def __init__(
        self,
        env: CAEnv,
        notify: NotifySocket | None,
        watchdog_usec: int | None = 200_000,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        e = dict(os.environ)
        for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "CERTDROP_CONFIG"):
            e.pop(k, None)
        if notify is not None:
            e["NOTIFY_SOCKET"] = str(notify.path)
        if watchdog_usec is not None:
            e["WATCHDOG_USEC"] = str(watchdog_usec)
        e["JOURNAL_STREAM"] = "8:1"  # log lines as journald gets them (no timestamps)
        e.update(extra_env or {})
        self.log = env.root / "daemon.log"
        self._log_fh = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "certdrop.cli", "--config", str(env.config), "run"],
            stdout=self._log_fh,
            stderr=subprocess.STDOUT,
            env=e,
        )

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._log_fh.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._log_fh.close()

    def output(self) -> str:
        return self.log.read_text(errors="replace")
