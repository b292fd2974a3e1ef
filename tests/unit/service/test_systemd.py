"""systemd integration without libsystemd (certdrop.service.systemd): sd_notify datagrams on
real AF_UNIX sockets, $WATCHDOG_USEC/$WATCHDOG_PID, and the state folder's flock."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from certdrop.errors import LockError
from certdrop.service.systemd import LOCK_FILE, Notifier, StateLock
from svc_helpers import NotifySocket


@pytest.fixture
def listener() -> Iterator[NotifySocket]:
    sock = NotifySocket()
    yield sock
    sock.close()


# --- Notifier ---------------------------------------------------------------------------------------------
def test_notify_sends_one_datagram_per_call(listener: NotifySocket) -> None:
    notifier = Notifier(str(listener.path))
    assert notifier.enabled
    notifier.notify("READY=1", "STATUS=ready: issued 0")
    notifier.notify("WATCHDOG=1")
    listener.wait_field("WATCHDOG=1")
    assert listener.messages == [["READY=1", "STATUS=ready: issued 0"], ["WATCHDOG=1"]]
    notifier.close()
    notifier.notify("STOPPING=1")  # after close: a new socket
    listener.wait_field("STOPPING=1")
    notifier.close()


def test_notify_socket_comes_from_the_environment(
    listener: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(listener.path))
    Notifier().notify("STATUS=from the environment")
    assert listener.wait_field(lambda f: f.startswith("STATUS=")) == "STATUS=from the environment"
    monkeypatch.delenv("NOTIFY_SOCKET")
    quiet = Notifier()
    assert not quiet.enabled
    quiet.notify("READY=1")  # not under systemd: nothing is sent, nothing fails
    assert not Notifier("").enabled


def test_a_service_manager_that_is_gone_does_not_stop_us(tmp_path: Path) -> None:
    notifier = Notifier(str(tmp_path / "no-such-socket"))
    assert notifier.enabled
    notifier.notify("READY=1")  # ENOENT, logged at debug level only
    notifier.close()


def test_watchdog_pid_of_another_process_disables_pings() -> None:
    env = {"WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert Notifier.watchdog_usec(env) == 0
    assert Notifier.watchdog_usec({**env, "WATCHDOG_PID": str(os.getpid())}) == 200_000
    assert Notifier.watchdog_usec({"WATCHDOG_USEC": "200000"}) == 200_000
    assert Notifier.watchdog_usec({"WATCHDOG_USEC": "junk"}) == 0
    assert Notifier.watchdog_usec({}) == 0


def test_watchdog_usec_odd_values(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Notifier.watchdog_usec({"WATCHDOG_USEC": "-5"}) == 0
    assert Notifier.watchdog_usec({"WATCHDOG_USEC": "100", "WATCHDOG_PID": "x"}) == 0
    monkeypatch.setenv("WATCHDOG_USEC", "300000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert Notifier.watchdog_usec() == 300_000  # os.environ when none is given


def test_abstract_notify_socket(tmp_path: Path) -> None:
    name = f"certdrop-test-{os.getpid()}-{id(tmp_path)}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(10)
    try:
        Notifier("@" + name).notify("READY=1", "STATUS=ok")
        assert sock.recv(4096) == b"READY=1\nSTATUS=ok"
    finally:
        sock.close()


# --- StateLock ------------------------------------------------------------------------------------------
def test_one_holder_of_the_state_lock_at_a_time(tmp_path: Path) -> None:
    first, second = StateLock(tmp_path), StateLock(tmp_path)
    assert first.acquire()
    path = tmp_path / LOCK_FILE
    assert path == first.path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == f"{os.getpid()}\n"
    assert not second.acquire()  # flock: also another open file of the same process
    assert second.holder() == str(os.getpid())
    first.release()
    first.release()  # twice: harmless
    assert second.acquire()
    second.release()


def test_the_lock_as_a_context_names_the_holder(tmp_path: Path) -> None:
    with StateLock(tmp_path):
        with pytest.raises(LockError) as info, StateLock(tmp_path):
            pass
        assert str(info.value) == (
            f"another certdrop daemon (pid {os.getpid()}) is running on {tmp_path}"
        )
    with StateLock(tmp_path) as lock:  # released on exit: taken again
        assert lock.holder() == str(os.getpid())
    assert StateLock(tmp_path / "nowhere").holder() == "?"
