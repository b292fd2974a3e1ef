"""`certdrop serve` as relying parties meet it: curl fetches the CRL and the CA
certificates, openssl reads them; caching headers, conditional requests, HTTP/1.0; a new
CRL is served without a reload; it answers with the daemon stopped and without the CA
key; SIGTERM stops it and its workers cleanly."""

from __future__ import annotations

import datetime as dt
import email.utils
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from conftest import OPENSSL, DaemonThread, make_env, openssl_csr, wait_for, wait_result
from serve_kit import curl, free_port, serve_config, start_serve


@pytest.fixture
def served(tmp_path: Path):  # type: ignore[no-untyped-def]
    port = free_port()
    env = make_env(tmp_path, extra=serve_config(port))
    assert env.cli("crl")[0] == 0
    srv = start_serve(env, port)
    yield env, srv
    if srv.proc.poll() is None:
        assert srv.stop() == 0, srv.output()


def test_curl_fetches_the_crl_and_the_ca_and_openssl_reads_them(served, tmp_path: Path) -> None:
    env, srv = served
    status, h, _ = curl(f"{srv.url}/crl.der", out=tmp_path / "crl.der")
    assert status == 200 and h["content-type"] == "application/pkix-crl"
    text = subprocess.run(
        [OPENSSL, "crl", "-inform", "DER", "-in", str(tmp_path / "crl.der"), "-noout", "-text"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "Test CA" in text and "No Revoked Certificates" in text
    assert (tmp_path / "crl.der").read_bytes() == (env.state / "crl.der").read_bytes()
    status, h, body = curl(f"{srv.url}/crl.pem")
    assert status == 200 and body == (env.state / "crl.pem").read_bytes()
    status, h, _ = curl(f"{srv.url}/ca.cer", out=tmp_path / "ca.cer")
    assert status == 200 and h["content-type"] == "application/pkix-cert"
    subject = subprocess.run(
        [OPENSSL, "x509", "-inform", "DER", "-in", str(tmp_path / "ca.cer"), "-noout", "-subject"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "Test CA" in subject
    status, h, body = curl(f"{srv.url}/chain.pem")
    assert status == 200 and h["content-type"] == "application/pem-certificate-chain"
    assert x509.load_pem_x509_certificates(body) == [
        x509.load_pem_x509_certificate(env.ca_cert.read_bytes())
    ]


def test_caching_headers_and_conditional_requests(served) -> None:
    env, srv = served
    crl = x509.load_der_x509_crl((env.state / "crl.der").read_bytes())
    status, h, _ = curl(f"{srv.url}/crl.der")
    assert email.utils.parsedate_to_datetime(h["last-modified"]) == crl.last_update_utc
    max_age = int(h["cache-control"].split("max-age=")[1].split(",")[0])
    assert crl.next_update_utc is not None
    left = (crl.next_update_utc - dt.datetime.now(dt.UTC)).total_seconds()
    assert 0 < max_age <= min(300, left)
    etag = h["etag"]
    status, h2, body = curl(f"{srv.url}/crl.der", "-H", f"If-None-Match: {etag}")
    assert status == 304 and body == b"" and h2["etag"] == etag
    status, _, _ = curl(f"{srv.url}/crl.der", "-H", f"If-Modified-Since: {h['last-modified']}")
    assert status == 304
    status, _, _ = curl(f"{srv.url}/crl.der", "-H", 'If-None-Match: "other"')
    assert status == 200
    # HTTP/1.0, as mod_ssl's client speaks it; and HEAD
    status, h, body = curl(f"{srv.url}/ca.cer", "--http1.0")
    assert status == 200 and len(body) == int(h["content-length"]) > 0
    status, h, body = curl(f"{srv.url}/ca.cer", "--head")
    assert status == 200 and body.strip() == b""
    # what is not there
    assert curl(f"{srv.url}/ca.key")[0] == 404
    assert curl(f"{srv.url}/crl.der", "-X", "POST")[0] == 405


def test_a_new_crl_is_served_without_a_reload_and_without_the_daemon(tmp_path: Path) -> None:
    port = free_port()
    env = make_env(tmp_path, extra=serve_config(port))
    d = DaemonThread(env).start()
    srv = start_serve(env, port)
    try:
        req, _ = openssl_csr(tmp_path / "u", "alice", "/CN=Alice")
        env.drop(req)
        assert wait_result(env, "alice") == "outbox"
        first = curl(f"{srv.url}/crl.der")[1]["etag"]
        d.stop()  # the daemon stops; serve goes on
        code, out, err = env.cli("revoke", "alice")  # the CLI revokes by itself
        assert code == 0, (out, err)
        status, _h, body = wait_for(
            lambda: (r := curl(f"{srv.url}/crl.der"))[1]["etag"] != first and r, 10
        )
        assert status == 200 and len(x509.load_der_x509_crl(body)) == 1
        # the CA key is never needed: serve answers with it gone
        shutil.move(env.state / "ca.key", tmp_path / "ca.key")
        assert curl(f"{srv.url}/ca.cer")[0] == 200
        assert curl(f"{srv.url}/crl.der")[0] == 200
    finally:
        assert srv.stop() == 0, srv.output()


def test_sigterm_stops_the_workers_and_frees_the_port(served) -> None:
    _env, srv = served
    workers = srv.children()
    assert len(workers) == 2
    start = srv.notify.count()
    assert srv.stop() == 0, srv.output()
    assert "STOPPING=1" in srv.notify.fields(0)
    for pid in workers:
        assert (
            not os.path.exists(f"/proc/{pid}")
            or "zombie" in open(f"/proc/{pid}/status").read().lower()
        )
    with socket.socket() as s:  # the port is free again
        s.bind(("127.0.0.1", srv.port))
    assert start >= 1


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def test_a_dead_worker_is_replaced(served) -> None:
    """Once the workers answer, the supervisor is serve/keeper.py (same pid, a lean
    interpreter); a worker that dies is replaced by a fresh `certdrop serve --worker`
    that takes connections like the first ones."""
    _env, srv = served
    # READY=1 comes just before the exec
    wait_for(lambda: any(a.endswith(("keeper.py", ".pyc")) for a in _cmdline(srv.proc.pid)), 10)
    first = srv.children()
    os.kill(first[0], 9)
    wait_for(lambda: len(srv.children()) == 2 and first[0] not in srv.children(), 15)
    again = [pid for pid in srv.children() if pid not in first]
    assert len(again) == 1 and "--worker" in _cmdline(again[0])
    wait_for(lambda: "ended with status -9; starting it again" in srv.output(), 15)
    if SS is not None:  # the new worker accepts: two keep-alive connections, one each
        wait_for(lambda: _both_workers_answer(srv), 20)


def _both_workers_answer(srv) -> bool:  # type: ignore[no-untyped-def]
    import http.client

    conns = [http.client.HTTPConnection("127.0.0.1", srv.port, timeout=20) for _ in range(2)]
    try:
        for c in conns:
            c.request("GET", "/ca.cer")
            r = c.getresponse()
            assert r.status == 200 and r.read()
        return _holders(srv.port) == sorted(srv.children())
    finally:
        for c in conns:
            c.close()
        wait_for(lambda: _holders(srv.port, "connected") == [], 15)


def test_the_keeper_pings_the_watchdog_and_stops_workers_that_keep_dying(tmp_path: Path) -> None:
    """systemd's watchdog is pinged after READY=1 (by the keeper); workers that die right
    after their start again and again make the service give up: status 1, STATUS=failed,
    one line in the log (systemd then restarts it)."""
    port = free_port()
    env = make_env(tmp_path, extra=serve_config(port))
    assert env.cli("crl")[0] == 0
    srv = start_serve(env, port, extra_env={"WATCHDOG_USEC": "200000"})
    try:
        ready = srv.notify.fields().index("READY=1")
        wait_for(lambda: srv.notify.fields()[ready:].count("WATCHDOG=1") >= 3, 10)
        killed: set[int] = set()

        def kill_workers() -> bool:
            for pid in srv.children():
                if pid not in killed:
                    killed.add(pid)
                    os.kill(pid, 9)
            return srv.proc.poll() is not None

        wait_for(kill_workers, 60)
        assert srv.proc.returncode == 1, srv.output()
        assert "STATUS=failed: the worker processes keep ending" in srv.notify.fields()
        assert "workers keep ending right after their start: stopping" in srv.output()
        assert "Traceback" not in srv.output()
    finally:
        srv.kill()


def test_bad_listen_and_busy_port_are_one_line_each(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    env.write_config('[http]\nlisten = "localhost"\n')
    res = env.cli_proc("serve")
    assert res.returncode == 78
    assert "http.listen = 'localhost'" in res.stderr and "HOST:PORT" in res.stderr
    assert "Traceback" not in res.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env.write_config(serve_config(port))
        res = env.cli_proc("serve")
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [
        f"certdrop: error: [http] listen = '127.0.0.1:{port}': cannot listen there "
        "(another process listens there)"
    ]


SS = shutil.which("ss")


def _holders(port: int, state: str = "established") -> list[int]:
    """The pids holding the server side of the connections on `port` in `state` (ss's
    names; "connected" includes those the client closed and the server has not yet)."""
    assert SS is not None
    out = subprocess.run(
        [SS, "-tnpH", "state", state, f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sorted(
        int(line.split("pid=")[1].split(",")[0]) for line in out.splitlines() if "pid=" in line
    )


@pytest.mark.skipif(SS is None, reason="needs iproute2's ss")
def test_keepalive_connections_are_spread_over_the_workers(served) -> None:
    """Two long-lived connections land in two workers, round after round (serve/balance.py:
    a worker takes a connection only while it holds no more than the other)."""
    import http.client

    _env, srv = served
    workers = sorted(srv.children())
    assert len(workers) == 2
    for _ in range(3):
        conns = [http.client.HTTPConnection("127.0.0.1", srv.port, timeout=20) for _ in range(2)]
        for c in conns:
            c.request("GET", "/ca.cer")
            r = c.getresponse()
            assert r.status == 200 and r.read()
        assert _holders(srv.port) == workers
        for c in conns:
            c.close()
        # the server closed its ends too (not just the client): each worker counted its own
        # connections down before the next round
        wait_for(lambda: _holders(srv.port, "connected") == [], 15)
