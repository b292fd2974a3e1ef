"""The daemon needs no root: it runs as an unprivileged user with what certdrop.service gives
it (UMask=0077, only CAP_DAC_READ_SEARCH, a notify socket), and does its whole job."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import make_env, openssl_csr, wait_result
from svc_helpers import NotifySocket

UID = GID = 65534  # nobody / nogroup
SETPRIV = shutil.which("setpriv")

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or SETPRIV is None, reason="needs root and util-linux setpriv"
)


@pytest.fixture
def base() -> Iterator[Path]:
    # pytest's tmp folders are 0700 root: the service user could not even look in
    folder = Path(tempfile.mkdtemp(prefix="certdrop-unpriv-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_daemon_runs_as_an_unprivileged_user(base: Path) -> None:
    env = make_env(base / "env", init=False)
    env.root.chmod(0o755)
    # what tmpfiles.d makes: the state and spool folders, owned by the service user
    for folder, mode in ((env.state, 0o700), (env.spool, 0o755), (env.inbox, 0o1733)):
        folder.mkdir(mode=mode)
        folder.chmod(mode)
        os.chown(folder, UID, GID)
    # root adopts or creates the CA (root may be needed to read an old CA's key); what
    # init makes is handed over to the service user
    res = env.cli_proc("init")
    assert res.returncode == 0, res.stderr
    assert "handed the new files over" in res.stdout
    for path in [env.state, *env.state.rglob("*"), *env.spool.rglob("*")]:
        assert path.stat().st_uid == UID, path
    # root at the keyboard is stopped before it leaves root-owned files in the state
    res = env.cli_proc("status")
    assert res.returncode == 1
    assert (
        "run this command as that user" in res.stderr
        and "sudo -u nobody certdrop status" in res.stderr
    )
    notify = NotifySocket()
    notify.folder.chmod(0o755)
    notify.path.chmod(0o777)  # like systemd's /run/systemd/notify
    e = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_", "WATCHDOG_"))}
    e.update(NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC="2000000", HOME=str(env.root))
    log = env.root / "daemon.log"
    cmd = [
        str(SETPRIV),
        f"--reuid={UID}",
        f"--regid={GID}",
        "--clear-groups",
        # certdrop.service: CapabilityBoundingSet=/AmbientCapabilities=CAP_DAC_READ_SEARCH
        "--inh-caps=-all,+dac_read_search",
        "--ambient-caps=-all,+dac_read_search",
        "--bounding-set=-all,+dac_read_search",
        "--no-new-privs",
        sys.executable,
        "-m",
        "certdrop.cli",
        "--config",
        str(env.config),
        "run",
    ]
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=e, umask=0o077)
    try:
        notify.wait_field("READY=1")
        notify.wait_field("WATCHDOG=1")
        # a user's request and key, made the way openssl makes them (key mode 0600)
        users = base / "alice"
        req, key = openssl_csr(users, "alice", subject="/O=MyOrg/CN=Alice Example")
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        # moved in as it is (mode 0600, owned by its user), not copied
        os.rename(key, env.inbox / "alice.key")
        env.drop(req)
        assert wait_result(env, "alice") == "outbox", log.read_text()
        assert not (env.inbox / "alice.key").exists()
        assert (env.outbox / "alice.p12").exists()
        # the CA rolled over by the operator, as the service user, while the daemon runs
        res = subprocess.run(
            [*cmd[: cmd.index(sys.executable) + 5], "rollover"],
            capture_output=True,
            text=True,
            env=e,
            timeout=90,
        )
        assert res.returncode == 0, res.stderr + log.read_text()
        assert "issues from now on" in res.stdout
        # the operator's commands, as the service user (sudo -u certdrop certdrop status)
        res = subprocess.run(
            [*cmd[: cmd.index(sys.executable) + 5], "status", "--json"],
            capture_output=True,
            text=True,
            env=e,
            timeout=60,
        )
        assert res.returncode == 0, res.stderr
        doc = json.loads(res.stdout)
        assert doc["daemon"]["running"] is True and doc["certificates"]["valid"] == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()
        notify.wait_field("STOPPING=1")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()
    out = log.read_text()
    assert "Traceback" not in out and "ERROR" not in out, out
    # outputs are readable by the user who dropped the request, whatever the UMask
    for name in ("alice.cer", "alice.p12"):
        st = (env.outbox / name).stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (UID, 0o644), name
    # everything the daemon wrote belongs to the service user; secrets stay private
    for path in env.state.rglob("*"):
        assert path.stat().st_uid == UID, path
    for secret in ("audit.log", "passwords/alice.txt", "ca.key"):
        assert stat.S_IMODE((env.state / secret).stat().st_mode) == 0o600, secret
    kept = sorted(env.state.glob("cas/*/ca.key"))
    assert len(kept) == 2  # the CA before the rollover and the one after
    for secret in kept:
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret
    events = [json.loads(line) for line in (env.state / "audit.log").read_text().splitlines()]
    assert any(e["event"] == "issued" and e["name"] == "alice" and e["p12"] for e in events)


def test_serve_answers_as_another_user_from_a_read_only_state(base: Path) -> None:
    """certdrop serve as certdrop-http.service runs it: an unprivileged user without any
    capability, the state folder readable and nothing in it writable, the CA key not even
    readable (only the responder's key is the service user's): it answers OCSP and serves
    the CRL, with the daemon stopped, and writes nothing."""
    from apache_harness import free_port
    from certdrop.authority.responder import RESPONDER_FILE
    from conftest import OPENSSL, DaemonThread
    from serve_kit import curl, serve_config, start_serve

    port = free_port()
    env = make_env(base / "env", extra=serve_config(port))
    env.root.chmod(0o755)
    d = DaemonThread(env).start()  # publishes the CRL, makes the responder certificate
    try:
        for name in ("alice", "bob"):
            req, _ = openssl_csr(base / "users", name, f"/CN={name}", kind="ec:prime256v1")
            env.drop(req)
        for name in ("alice", "bob"):
            assert wait_result(env, name) == "outbox"
        code, out, err = env.cli("revoke", "bob", "--reason", "keyCompromise")
        assert code == 0, (out, err)
    finally:
        d.stop()
    for path in [env.state, *env.state.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)  # root's, readable, not writable
    (env.state / "ca.key").chmod(0o600)  # root's: the service user cannot read it
    responder = env.state / RESPONDER_FILE
    os.chown(responder, UID, GID)  # the responder's key: the service user's alone
    responder.chmod(0o600)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in env.state.rglob("*"))
    prefix = [
        str(SETPRIV),
        f"--reuid={UID}",
        f"--regid={GID}",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--no-new-privs",
    ]
    srv = start_serve(env, port, cmd_prefix=prefix)
    try:
        assert all(os.stat(f"/proc/{pid}").st_uid == UID for pid in [srv.proc.pid, *srv.children()])
        for name, status in (("alice", "good"), ("bob", "revoked")):
            cert = env.outbox / f"{name}.cer"
            res = subprocess.run(
                [
                    OPENSSL,
                    "ocsp",
                    "-issuer",
                    str(env.ca_cert),
                    "-CAfile",
                    str(env.ca_cert),
                    "-cert",
                    str(cert),
                    "-url",
                    f"{srv.url}/ocsp",
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            out = res.stdout + res.stderr
            assert "Response verify OK" in out and f"{cert}: {status}" in out, out
        assert curl(f"{srv.url}/crl.der")[0] == 200
        assert curl(f"{srv.url}/ca.cer")[0] == 200
    finally:
        assert srv.stop() == 0, srv.output()
    assert "Traceback" not in srv.output() and "ERROR" not in srv.output(), srv.output()
    assert sorted((p.name, p.stat().st_mtime_ns) for p in env.state.rglob("*")) == before
    assert [p for p in env.state.rglob("*") if p.stat().st_uid == UID] == [responder]
