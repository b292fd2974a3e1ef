"""certdrop as a systemd service: sd_notify over a real socket, signals, watchdog, audit log.

The daemon runs as a child process exactly as systemd starts it (NOTIFY_SOCKET,
WATCHDOG_USEC); the test plays systemd's part by binding the datagram socket.
"""

from __future__ import annotations

import datetime as dt
import json
import signal
import stat
import threading
from pathlib import Path

import pytest

from certdrop.audit import read_audit
from certdrop.index import control as commands
from certdrop.index import listing
from certdrop.index.store import Store
from certdrop.service import daemon as service
from certdrop.service import worker as worker_module
from certdrop.service.control import CONTROL_HANDLERS
from certdrop.service.daemon import Daemon
from certdrop.service.systemd import Notifier
from conftest import CAEnv, load_cert, make_env, openssl_csr, wait_for, wait_result
from svc_helpers import DaemonProcess, NotifySocket
from test_crash import check_invariants, make_csrs


@pytest.fixture
def notify() -> NotifySocket:
    sock = NotifySocket()
    yield sock
    sock.close()


def _validity_days(path: Path) -> int:
    cert = load_cert(path)
    return (cert.not_valid_after_utc - cert.not_valid_before_utc).days


def _drop_csr(env: CAEnv, name: str, cn: str) -> None:
    req, _key = openssl_csr(env.root / "user", name, subject=f"/O=MyOrg/CN={cn}")
    env.drop(req)


# --- sd_notify: READY=1, STATUS=, WATCHDOG=1, STOPPING=1 ------------------------------------------
# (the Notifier itself: tests/unit/service/test_systemd.py)
def test_notify_ready_after_first_scan_watchdog_status_stopping(
    tmp_path: Path, notify: NotifySocket
) -> None:
    env = make_env(tmp_path)
    # dropped while the daemon was down: READY=1 only once the first scan has handled it
    _drop_csr(env, "early", "Early Bird")
    d = DaemonProcess(env, notify, watchdog_usec=200_000)
    try:
        notify.wait_field("READY=1")
        assert (env.outbox / "early.cer").exists(), "READY=1 came before the first inbox scan"
        ready_at = notify.index_of("READY=1")
        status = [f for f in notify.fields() if f.startswith("STATUS=")]
        assert any("issued 1" in f for f in status), status
        # the watchdog pings at half of WATCHDOG_USEC while all threads are alive
        notify.wait_field("WATCHDOG=1", start=ready_at)
        pings_before = notify.fields().count("WATCHDOG=1")
        wait_for(lambda: notify.fields().count("WATCHDOG=1") >= pings_before + 3, what="pings")
        # a refused request shows in the next STATUS= line
        (env.root / "junk.req").write_text("not a CSR")
        env.drop(env.root / "junk.req")
        assert wait_result(env, "junk") == "rejected"
        notify.wait_field(lambda f: f.startswith("STATUS=") and "rejected 1" in f)
        mark = notify.count()
        assert d.stop() == 0
        notify.wait_field("STOPPING=1", start=mark)
        assert "WATCHDOG=1" not in notify.fields(notify.index_of("STOPPING=1", mark) + 1)
    finally:
        d.kill()
    out = d.output()
    # one line per decision with the request name, the serial and the outcome
    assert "issued early.req serial=" in out
    assert "rejected junk.req" in out


# --- SIGHUP ---------------------------------------------------------------------------------------------
def test_sighup_changed_profile_changes_next_certificate(
    tmp_path: Path, notify: NotifySocket
) -> None:
    env = make_env(tmp_path)
    d = DaemonProcess(env, notify, watchdog_usec=None)
    try:
        notify.wait_field("READY=1")
        _drop_csr(env, "before", "Before Reload")
        assert wait_result(env, "before") == "outbox"
        assert _validity_days(env.outbox / "before.cer") == 365

        env.write_config(
            replace={
                "[profiles.client]\nvalidity_days = 365": "[profiles.client]\nvalidity_days = 60"
            }
        )
        mark = notify.count()
        d.signal(signal.SIGHUP)
        notify.wait_field("RELOADING=1", start=mark)
        reloading = notify.index_of("RELOADING=1", mark)
        assert any(f.startswith("MONOTONIC_USEC=") for f in notify.messages[reloading])
        notify.wait_field("READY=1", start=reloading)

        _drop_csr(env, "after", "After Reload")
        assert wait_result(env, "after") == "outbox"
        assert _validity_days(env.outbox / "after.cer") == 60
        assert d.stop() == 0
    finally:
        d.kill()
    events = [e for e in read_audit(env.state / "audit.log") if e["event"] == "reload"]
    assert [e["ok"] for e in events] == [True]


@pytest.mark.parametrize(
    "broken",
    [
        "[profiles.client\nvalidity_days = 60\n",  # not TOML
        "[profiles.client]\nvalidity_days = -5\n",  # not allowed
        "[policy]\ndefault_profile = 'nope'\n[profiles.client]\n",  # inconsistent
    ],
    ids=["syntax", "value", "consistency"],
)
def test_sighup_with_broken_file_keeps_old_policy(
    tmp_path: Path, notify: NotifySocket, broken: str
) -> None:
    env = make_env(tmp_path)
    good = env.config.read_text()
    d = DaemonProcess(env, notify, watchdog_usec=None)
    try:
        notify.wait_field("READY=1")
        env.config.write_text(broken)
        mark = notify.count()
        d.signal(signal.SIGHUP)
        notify.wait_field(lambda f: f.startswith("STATUS=reload refused"), start=mark)
        # READY=1 again (systemd leaves the reloading state), with the old configuration
        notify.wait_field("READY=1", start=notify.index_of("RELOADING=1", mark))
        _drop_csr(env, "still", "Still Old Policy")
        assert wait_result(env, "still") == "outbox"
        assert _validity_days(env.outbox / "still.cer") == 365
        assert d.proc.poll() is None
        # fixing the file and reloading again works
        env.config.write_text(good)
        mark = notify.count()
        d.signal(signal.SIGHUP)
        notify.wait_field("RELOADING=1", start=mark)
        notify.wait_field("READY=1", start=notify.index_of("RELOADING=1", mark))
        assert d.stop() == 0
    finally:
        d.kill()
    out = d.output()
    assert "the new configuration is refused, keeping the old one" in out
    assert "Traceback" not in out
    events = [e for e in read_audit(env.state / "audit.log") if e["event"] == "reload"]
    assert events[0]["ok"] is False and events[0]["error"]


# --- SIGTERM during a burst ---------------------------------------------------------------------------
def test_sigterm_during_burst_loses_nothing(tmp_path: Path, notify: NotifySocket) -> None:
    env = make_env(tmp_path)
    reqs = make_csrs(env.root / "burst", 300, "b")
    names = [p.stem for p in reqs]
    d = DaemonProcess(env, notify, watchdog_usec=None)
    try:
        notify.wait_field("READY=1")
        for p in reqs:
            env.drop(p)
        wait_for(lambda: len(list(env.outbox.glob("*.cer"))) >= 5, what="the burst to start")
        mark = notify.count()
        rc = d.stop(timeout=30)
        assert rc == 0, d.output()
        notify.wait_field("STOPPING=1", start=mark)
    finally:
        d.kill()
    done = {p.stem for p in env.outbox.glob("*.cer")}
    left = {p.stem for p in env.inbox.glob("*.req")}
    assert done | left == set(names), "a request vanished"
    assert not done & left
    assert not [p for p in (env.spool / "work").rglob("*") if p.is_file()], "work/ left behind"
    assert "Traceback" not in d.output()

    # the rest is processed at the next start; nothing twice
    d2 = DaemonProcess(env, None, watchdog_usec=None)
    try:
        # the log file is shared: the second "ready:" is this daemon's
        wait_for(lambda: d2.output().count("ready:") == 2, 60, what="the second daemon ready")
        wait_for(lambda: len(list(env.outbox.glob("*.cer"))) == len(names), 120, what="the rest")
        wait_for(lambda: not list(env.inbox.glob("*.req")), what="an empty inbox")
        assert d2.stop() == 0
    finally:
        d2.kill()
    check_invariants(env, names)


# --- a dead thread stops the watchdog pings ----------------------------------------------------------
class _Run:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.rc: int | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.rc = self.daemon.run()
        except BaseException as exc:
            self.error = exc


@pytest.mark.parametrize("victim", ["observer", "scheduler", "worker"])
def test_dead_thread_stops_watchdog_pings(
    tmp_path: Path, notify: NotifySocket, victim: str
) -> None:
    env = make_env(tmp_path)
    daemon = Daemon(
        env.settings,
        env.clock,
        config_path=env.config,
        notifier=Notifier(str(notify.path)),
        own_process=False,
        watchdog_usec=100_000,
    )
    run = _Run(daemon)
    try:
        notify.wait_field("READY=1")
        notify.wait_field("WATCHDOG=1", start=notify.index_of("READY=1"))
        assert daemon.health() == []
        if victim == "observer":
            assert daemon.inbox is not None
            daemon.inbox.stop()  # the watchdog observer thread ends
        elif victim == "scheduler":
            assert daemon.scheduler is not None
            daemon.scheduler.shutdown()
        else:

            def boom(timeout: float) -> None:
                raise RuntimeError("simulated bug in the worker")

            daemon.queue.get = boom  # type: ignore[method-assign]
        failed = notify.wait_field(lambda f: f.startswith("STATUS=failed"))
        assert victim in failed
        at = notify.index_of(lambda f: f.startswith("STATUS=failed"))
        notify.wait_field("STOPPING=1", start=at)
        run.thread.join(timeout=60)
        assert not run.thread.is_alive()
        assert run.error is None
        assert run.rc == 1  # a failure exit status: Restart=on-failure brings us back
        assert "WATCHDOG=1" not in notify.fields(at)
    finally:
        daemon.request_stop()
        run.thread.join(timeout=60)


def test_a_hung_worker_gets_no_pings_until_it_moves_again(
    tmp_path: Path, notify: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:

    release = threading.Event()

    def hang(rt: object, payload: dict[str, object]) -> str:
        release.wait(60)  # an operator command that blocks the worker
        return "ok: done"

    monkeypatch.setitem(CONTROL_HANDLERS, "hang", hang)
    monkeypatch.setattr(service, "STALL_SECONDS", 0.3)
    env = make_env(tmp_path)
    daemon = Daemon(
        env.settings,
        env.clock,
        config_path=env.config,
        notifier=Notifier(str(notify.path)),
        own_process=False,
        watchdog_usec=100_000,
    )
    run = _Run(daemon)
    try:
        notify.wait_field("READY=1")
        notify.wait_field("WATCHDOG=1", start=notify.index_of("READY=1"))
        store = Store(env.settings.database_url)
        with store.begin() as conn:
            commands.push(conn, "hang", {}, env.clock.now())
        store.close()
        stalled = notify.wait_field(lambda f: f.startswith("STATUS=the worker has been busy"))
        at = notify.index_of(stalled)
        checks = daemon.health_checks
        wait_for(lambda: daemon.health_checks >= checks + 10, what="main loop turns")
        assert "WATCHDOG=1" not in notify.fields(at + 1)
        assert daemon.health() == []  # alive, but hung: only the pings tell systemd
        release.set()  # it moves again: the pings come back
        notify.wait_field("WATCHDOG=1", start=at)
    finally:
        release.set()
        daemon.request_stop()
        run.thread.join(timeout=60)
    assert run.rc == 0


# --- the audit log -----------------------------------------------------------------------------------------
def test_audit_log_records_decisions_and_operator_commands(tmp_path: Path) -> None:
    from conftest import DaemonThread

    env = make_env(tmp_path)
    d = DaemonThread(env).start()
    try:
        _drop_csr(env, "alice", "Alice Example")
        assert wait_result(env, "alice") == "outbox"
        (env.root / "bad.req").write_text("garbage")
        env.drop(env.root / "bad.req")
        assert wait_result(env, "bad") == "rejected"
        req, _ = openssl_csr(
            env.root / "srv",
            "web",
            subject="/CN=www.example.org",
            kind="ec:P-256",
            addext=["subjectAltName=DNS:www.example.org"],
        )
        env.drop(req, profile="server")
        assert wait_result(env, "web") == "pending"
        res = env.cli_proc("approve", "web")
        assert res.returncode == 0, res.stderr
        assert wait_result(env, "web") == "outbox"
    finally:
        d.stop()
    path = env.state / "audit.log"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = path.read_text().splitlines()
    events = [json.loads(line) for line in lines]  # every line is one JSON object
    kinds = [e["event"] for e in events]
    assert kinds[0] == "daemon-start" and kinds[-1] == "daemon-stop"
    issued = [e for e in events if e["event"] == "issued"]
    assert {e["name"] for e in issued} == {"alice", "web"}
    assert all(e["serial"] and e["profile"] for e in issued)
    assert any(e["event"] == "rejected" and e["name"] == "bad" for e in events)
    assert any(e["event"] == "pending" and e["name"] == "web" for e in events)
    op = [e for e in events if e["event"] == "operator"]
    assert op and op[0]["command"] == "approve" and op[0]["args"] == {"name": "web"}
    assert op[0]["ok"] is True and op[0]["actor"]
    for e in events:
        when = dt.datetime.fromisoformat(e["time"])
        assert when.utcoffset() == dt.timedelta(0)


def test_sigint_stops_like_sigterm(tmp_path: Path, notify: NotifySocket) -> None:
    """Ctrl-C on `certdrop run` in a terminal: the same orderly stop, exit status 0."""
    env = make_env(tmp_path)
    d = DaemonProcess(env, notify, watchdog_usec=None)
    try:
        notify.wait_field("READY=1")
        mark = notify.count()
        d.signal(signal.SIGINT)
        assert d.proc.wait(timeout=30) == 0
        notify.wait_field("STOPPING=1", start=mark)
    finally:
        d.kill()
    assert "Traceback" not in d.output() and "KeyboardInterrupt" not in d.output()


def test_a_batch_that_fails_to_be_decided_is_recovered_from_work(
    ca_env: CAEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The index failing while a claimed batch is decided: the request stays in work/ and
    the daemon's recovery issues it later, once; the worker thread goes on."""
    from conftest import DaemonThread

    lookup = Store.by_fingerprints
    failures: list[int] = []

    def failing_once(self: Store, conn: object, fingerprints: object) -> object:
        if not failures:
            failures.append(1)
            raise OSError("injected: the index is unavailable")
        return lookup(self, conn, fingerprints)  # type: ignore[arg-type]

    monkeypatch.setattr(Store, "by_fingerprints", failing_once)
    monkeypatch.setattr(worker_module, "BATCH_SIZE", 1)  # one batch each: one is decided while
    # the next is started, and the failure hits that step (or the last flush)
    d = DaemonThread(ca_env)
    d.daemon.worker.recover_delay = 0.2  # recovery of work/ soon after the failure
    d.start()
    try:
        names = ["late1", "late2", "late3"]
        reqs = [openssl_csr(tmp_path / n, n, subject=f"/CN=Decided {n}")[0] for n in names]
        for req in reqs:
            ca_env.drop(req)
        for name in names:
            assert wait_result(ca_env, name, timeout=30) == "outbox"
        assert failures == [1]
        assert not list((ca_env.spool / "work" / "client").glob("*.req"))
        store = Store(ca_env.settings.database_url)
        try:
            with store.begin() as conn:
                assert sorted(c.request_name for c in listing.list_certs(conn)) == names
        finally:
            store.close()
        assert d.alive()
    finally:
        d.stop()
