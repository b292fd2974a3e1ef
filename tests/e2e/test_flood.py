"""A flood: 10,000 requests dropped at once, more events than inotify's queue holds.

The daemon (a separate process) is frozen with SIGSTOP while 10,000 requests are
written straight into the inbox: a creation and a close-write each, 20,000 events
for a kernel queue of fs.inotify.max_queued_events (16,384 by default), so events
are lost (IN_Q_OVERFLOW) for certain. After SIGCONT every request must still be
processed (the daemon rescans when its queue drains), its memory must stay flat,
and a SIGTERM in the middle of the flood must stop it within seconds; after a
restart the rest is processed and every invariant holds.

The flood runs with the default configuration (lint before sign on, the signing
pool on every processor) and, when the test may mount one, on a tmpfs (no fsync
cost: durability on a real disk is the crash tests' subject, not this one's).
Memory is read from /proc for the daemon and for its worker processes.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import CAEnv, make_env, wait_for
from test_crash import check_invariants
from test_crash_points import assert_no_leftovers, start

N = 10_000
RSS_LIMIT_KB = 250 * 1024


def rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    m = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    assert m, status
    return int(m.group(1))


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            kids = [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            continue
        for kid in kids:
            out += [kid, *children(kid)]
    return out


def tree_rss_kb(pid: int) -> int:
    """The daemon and its worker processes together."""
    total = 0
    for p in [pid, *children(pid)]:
        try:
            total += rss_kb(p)
        except (OSError, AssertionError):
            pass  # gone meanwhile
    return total


def queue_limit() -> int:
    try:
        return int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    except OSError:
        return 16384


@pytest.fixture
def flood_root(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "fast"
    root.mkdir()
    mounted = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1g,mode=0755", "tmpfs", str(root)],
            capture_output=True,
        ).returncode
        == 0
    )
    try:
        yield root
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(root)], check=False)


def make_flood(n: int) -> list[tuple[str, bytes]]:
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(16)]
    out = []
    for i in range(n):
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"flood user {i}")]))
            .sign(keys[i % 16], hashes.SHA256())
        )
        out.append((f"f{i:05d}", csr.public_bytes(serialization.Encoding.PEM)))
    return out


def processed(env: CAEnv) -> int:
    return sum(1 for _ in env.archive.glob("*.req")) + sum(1 for _ in env.rejected.glob("*.req"))


def test_ten_thousand_at_once(flood_root: Path, tmp_path: Path) -> None:
    assert 2 * N > queue_limit(), "the flood would not overflow this kernel's inotify queue"
    env: CAEnv = make_env(
        flood_root / "env",
        replace={"rescan_seconds = 5": "rescan_seconds = 30"},
    )
    flood = make_flood(N)
    names = [name for name, _ in flood]
    log = tmp_path / "flood.log"
    proc = start(env, log, None)
    try:
        wait_for(lambda: "ready" in log.read_text(), 60, what="the daemon ready")
        rss_ready = rss_kb(proc.pid)
        tree_ready = tree_rss_kb(proc.pid)
        os.kill(proc.pid, signal.SIGSTOP)  # it cannot read its inotify queue now
        try:
            for name, data in flood:  # written in place: IN_CREATE + IN_CLOSE_WRITE each
                (env.inbox / f"{name}.req").write_bytes(data)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        # mid-flood: memory twice (the workers are warm by the first), then SIGTERM must
        # stop it promptly
        wait_for(lambda: processed(env) >= 1500, 120, interval=0.2, what="1,500 processed")
        rss_warm, tree_warm = rss_kb(proc.pid), tree_rss_kb(proc.pid)
        wait_for(lambda: processed(env) >= 3500, 120, interval=0.2, what="3,500 processed")
        rss_mid = rss_kb(proc.pid)
        tree_mid = tree_rss_kb(proc.pid)
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        assert proc.wait(timeout=10) == 0
        stop_seconds = time.monotonic() - t0
        done_at_stop = processed(env)
        assert done_at_stop < N, "the flood finished before SIGTERM; nothing was tested"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "queue overflowed" in text, "inotify did not overflow; the test did not test that"
    assert_no_leftovers(proc)
    assert "Traceback" not in text

    proc = start(env, log, None)
    try:
        wait_for(lambda: processed(env) == N, 240, interval=0.5, what="all 10,000 processed")
        rss_end = rss_kb(proc.pid)
        tree_end = tree_rss_kb(proc.pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in log.read_text()
    assert_no_leftovers(proc)
    print(
        f"flood: daemon RSS ready {rss_ready} kB, after 1,500 {rss_warm} kB, after 3,500 "
        f"{rss_mid} kB, after a restart and {N - done_at_stop} more {rss_end} kB; with its "
        f"workers {tree_ready}/{tree_warm}/{tree_mid}/{tree_end} kB; "
        f"SIGTERM took {stop_seconds:.2f} s"
    )
    assert max(rss_ready, rss_warm, rss_mid, rss_end) < RSS_LIMIT_KB
    # flat: 2,000 more requests add no memory worth the name, here or in the workers
    assert rss_mid - rss_warm < 32 * 1024
    assert tree_mid - tree_warm < 64 * 1024
    assert len(list(env.outbox.glob("*.cer"))) == N
    check_invariants(env, names)
