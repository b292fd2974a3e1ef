"""certdrop as the bench runs it: a real daemon subprocess on a temp config.

`python -m certdrop.cli --config CFG run` with NOTIFY_SOCKET pointing at a datagram
socket the bench binds, so READY=1 is seen exactly when certdrop sends it; the socket
is then read all along, as systemd reads it.
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CONFIG = """\
# written by bench/run
[paths]
spool = "{spool}"
state = "state"
database = "{database}"

[ca]
common_name = "certdrop bench CA"
organization = "Bench"
key_type = "{key_type}"

[policy]
default_profile = "client"
lint = {lint}

[profiles.client]
validity_days = 365

[profiles.client.subject]
CN = {{ required = true, unique = true }}

[pkcs12]
encryption = "aes256"
password_delivery = "file"

[watch]
mode = "events"
"""

CLK_TCK = os.sysconf("SC_CLK_TCK")


class DaemonError(RuntimeError):
    """certdrop did not start, did not stop, or did something the bench did not expect."""


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTDROP_")}
    env.pop("NOTIFY_SOCKET", None)
    return env


def cli(config: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "certdrop.cli", "--config", str(config), *args],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=timeout,
        check=False,
    )


def proc_times(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # after the ")" the fields start at #3 (state): utime is #14, stime #15
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise DaemonError(f"/proc/{pid}/status has no {key}")


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (certdrop's worker processes, for instance)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and all its descendants (those alive now)."""
    total = 0.0
    for p in (pid, *descendants(pid)):
        try:
            total += proc_times(p)
        except (OSError, IndexError, ValueError):
            continue
    return total


def tree_memory_mb(pid: int) -> dict[str, float]:
    """RSS (summed: shared pages counted in each), PSS and peak RSS of a process tree."""
    rss = pss = hwm = 0.0
    procs = (pid, *descendants(pid))
    for p in procs:
        try:
            rss += proc_status_kb(p, "VmRSS") / 1024
            hwm += proc_status_kb(p, "VmHWM") / 1024
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1]) / 1024
        except (OSError, ValueError, RuntimeError):
            continue
    return {
        "processes": float(len(procs)),
        "rss_sum_mb": round(rss, 1),
        "pss_mb": round(pss, 1),
        "peak_rss_sum_mb": round(hwm, 1),
    }


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _kill_all(pids: list[int], wait: float) -> int:
    """SIGKILL those of `pids` still alive after `wait` seconds; returns how many."""
    deadline = time.monotonic() + wait
    while wait and time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    left = [p for p in pids if _alive(p)]
    for p in left:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(left)


class CertdropDaemon:
    """One certdrop instance in `root` (config, state, spool, log)."""

    def __init__(
        self,
        root: Path,
        *,
        key_type: str = "ec-p256",
        lint: bool = False,
        database: str = "",
        spool: Path | None = None,
    ) -> None:
        """`spool`: a spool another daemon shares (a second host); else root/spool."""
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.config = root / "certdrop.toml"
        self._spool = spool or root / "spool"
        self.config.write_text(
            CONFIG.format(
                key_type=key_type,
                lint="true" if lint else "false",
                database=database,
                spool=self._spool,
            )
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = root / "daemon.log"
        self._sock: socket.socket | None = None
        self._sock_dir: Path | None = None
        self._drainer: threading.Thread | None = None
        self._stop_drain = threading.Event()
        self.notifications: collections.deque[str] = collections.deque(maxlen=200)
        self.leftovers = 0  # processes still alive after a clean stop (killed by the bench)

    # --- paths ------------------------------------------------------------------------------
    @property
    def spool(self) -> Path:
        return self._spool

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def inbox(self) -> Path:
        return self.spool / "inbox"

    @property
    def outbox(self) -> Path:
        return self.spool / "outbox"

    @property
    def rejected(self) -> Path:
        return self.spool / "rejected"

    @property
    def ca_cert(self) -> Path:
        return self.state / "ca.cer"

    @property
    def database(self) -> Path:
        return self.state / "index.sqlite"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise DaemonError("certdrop is not running")
        return self.proc.pid

    # --- lifecycle --------------------------------------------------------------------------
    def init(self, join: CertdropDaemon | None = None) -> None:
        """`certdrop init`; with `join`, a further host of `join`'s CA (its CA files)."""
        args = ["init"]
        if join is not None:
            args += [
                "--ca-cert",
                str(join.state / "ca.cer"),
                "--ca-key",
                str(join.state / "ca.key"),
            ]
        res = cli(self.config, *args)
        if res.returncode != 0:
            raise DaemonError(f"certdrop init failed: {(res.stderr or res.stdout).strip()}")

    def start(self, timeout: float = 120.0) -> float:
        """Start `certdrop run`; returns seconds from spawn to READY=1.

        The filesystem is synced first (untimed): certdrop makes its writes durable with
        syncfs, which would otherwise also write out what the workloads before left
        dirty (the peers' thousands of files, an index just filled), none of which
        fsyncs. The requests a workload then stages stay dirty, as a user's would."""
        os.sync()
        # a short folder of its own: a socket path has at most 107 bytes, and the bench's
        # work folder sits wherever the repository was cloned
        self._sock_dir = Path(tempfile.mkdtemp(prefix="cdn-", dir="/tmp"))
        sock_path = self._sock_dir / "notify.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        sock.bind(str(sock_path))
        self._sock = sock
        env = clean_env()
        env["NOTIFY_SOCKET"] = str(sock_path)
        log = self.log_path.open("ab")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "certdrop.cli", "--config", str(self.config), "run"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
        )
        log.close()
        deadline = t0 + timeout
        while True:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                self.kill()
                raise DaemonError(f"certdrop sent no READY=1 within {timeout:.0f} s; {self.tail()}")
            sock.settimeout(min(remaining, 0.5))
            try:
                msg = sock.recv(4096)
            except TimeoutError:
                if self.proc.poll() is not None:
                    raise DaemonError(
                        f"certdrop exited with {self.proc.returncode} before READY=1; {self.tail()}"
                    ) from None
                continue
            self.notifications.append(msg.decode(errors="replace"))
            if b"READY=1" in msg.split(b"\n"):
                ready = time.perf_counter() - t0
                # keep reading, as systemd does: a full socket would block the daemon
                self._drainer = threading.Thread(target=self._drain, args=(sock,), daemon=True)
                self._drainer.start()
                return ready

    def _drain(self, sock: socket.socket) -> None:
        sock.settimeout(0.2)
        while not self._stop_drain.is_set():
            try:
                self.notifications.append(sock.recv(4096).decode(errors="replace"))
            except TimeoutError:
                continue
            except OSError:
                return

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM, as systemd stops it; worker processes left behind are killed (and counted)."""
        if self.proc is None:
            return
        children = descendants(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise DaemonError(f"certdrop did not stop within {timeout:.0f} s") from None
        self.leftovers += _kill_all(children, wait=2.0)
        self._close_sock()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL the daemon and everything it started (its pool would outlive it)."""
        if self.proc is not None and self.proc.poll() is None:
            children = descendants(self.proc.pid)
            self.proc.kill()
            self.proc.wait()
            _kill_all(children, wait=0.0)
        self._close_sock()

    def _close_sock(self) -> None:
        self._stop_drain.set()
        if self._drainer is not None:
            self._drainer.join()
            self._drainer = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._sock_dir is not None:
            shutil.rmtree(self._sock_dir, ignore_errors=True)
            self._sock_dir = None
        self._stop_drain.clear()

    def __enter__(self) -> CertdropDaemon:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.stop()
        else:
            self.kill()

    # --- observations -----------------------------------------------------------------------
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cpu_seconds(self) -> float:
        """CPU seconds used so far by the daemon and its worker processes."""
        return tree_cpu_seconds(self.pid)

    def memory(self) -> dict[str, float]:
        return tree_memory_mb(self.pid)

    def rss_mb(self) -> float:
        return proc_status_kb(self.pid, "VmRSS") / 1024

    def peak_rss_mb(self) -> float:
        return proc_status_kb(self.pid, "VmHWM") / 1024

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "no daemon log"
        return "daemon log tail:\n  " + "\n  ".join(text[-lines:])

    def check_healthy(self) -> None:
        """Raise if the daemon died or refused a request (a bench must not count refusals)."""
        if not self.alive():
            raise DaemonError(f"certdrop exited during the run; {self.tail()}")
        try:
            reasons = sorted(p for p in self.rejected.iterdir() if p.suffix == ".reason")
        except FileNotFoundError:
            return
        if reasons:
            raise DaemonError(
                f"certdrop rejected {len(reasons)} bench request(s), e.g. "
                f"{reasons[0].name}: {reasons[0].read_text(errors='replace').strip()}"
            )
