"""`certdrop serve` in tests: a real child process on a free port of 127.0.0.1, started
as systemd starts it (NOTIFY_SOCKET), stopped with SIGTERM by the test."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from apache_harness import CURL, free_port
from conftest import CAEnv
from svc_helpers import NotifySocket


def serve_config(port: int, extra: str = "") -> str:
    return f'[http]\nlisten = "127.0.0.1:{port}"\nworkers = 2\n{extra}'


class ServeProcess:
    """`certdrop serve` for `env`, whose config has `[http] listen` on `port`."""

    def __init__(
        self,
        env: CAEnv,
        port: int,
        *,
        cmd_prefix: list[str] | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.env = env
        self.port = port
        self.notify = NotifySocket()
        e = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_", "WATCHDOG_"))}
        e.pop("CERTDROP_CONFIG", None)
        e.update(NOTIFY_SOCKET=str(self.notify.path), JOURNAL_STREAM="8:1")
        e.update(extra_env or {})
        self.log = env.root / f"serve-{port}.log"
        self._log_fh = self.log.open("ab")
        self.proc = subprocess.Popen(
            [
                *(cmd_prefix or []),
                sys.executable,
                "-m",
                "certdrop.cli",
                "--config",
                str(env.config),
                "serve",
            ],
            stdout=self._log_fh,
            stderr=subprocess.STDOUT,
            env=e,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 30) -> ServeProcess:
        try:
            self.notify.wait_field("READY=1", timeout=timeout)
        except AssertionError:
            raise AssertionError(f"certdrop serve not ready:\n{self.output()}") from None
        return self

    def stop(self, timeout: float = 30) -> int:
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            return self.proc.wait(timeout=timeout)
        finally:
            self._close()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait(timeout=30)
        self._close()

    def _close(self) -> None:
        self._log_fh.close()
        self.notify.close()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def children(self) -> list[int]:
        """The pids of the worker processes."""
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        try:
            return [int(p) for p in path.read_text().split()]
        except OSError:
            return []


def start_serve(env: CAEnv, port: int, **kw: object) -> ServeProcess:
    srv = ServeProcess(env, port, **kw)  # type: ignore[arg-type]
    try:
        return srv.wait_ready()
    except BaseException:
        srv.kill()  # never left running by a test that failed
        raise


def curl(url: str, *args: str, out: Path | None = None) -> tuple[int, dict[str, str], bytes]:
    """(status, headers with lower-case names, body) of one request made by curl."""
    cmd = [CURL, "--silent", "--show-error", "--max-time", "20", "--dump-header", "-", *args]
    if out is not None:
        cmd += ["--output", str(out)]
    res = subprocess.run([*cmd, url], capture_output=True, timeout=60)
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    head, _, body = res.stdout.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body


__all__ = ["ServeProcess", "curl", "free_port", "serve_config", "start_serve"]
