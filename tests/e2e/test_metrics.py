"""The optional Prometheus endpoint, scraped over HTTP on a free loopback port."""

from __future__ import annotations

import datetime as dt
import re
import socket
import urllib.request
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from certdrop.authority.ca import CertificateAuthority
from certdrop.clock import ManualClock
from conftest import DaemonThread, make_env, openssl_csr, wait_for, wait_result


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        m = re.fullmatch(r"(\S+) (\S+)", line)
        assert m, line
        out[m.group(1)] = float(m.group(2))
    return out


def test_metrics_endpoint(tmp_path: Path) -> None:
    port = _free_port()
    clock = ManualClock(dt.datetime.now(dt.UTC).replace(microsecond=0))
    env = make_env(tmp_path, extra=f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
    env.clock = clock
    # a CRL in the state folder, as the CRL job leaves it (nextUpdate in 7 days)
    ca = CertificateAuthority.load(env.state)
    now = clock.now()
    crl = ca.build_crl([], 1, now, now + dt.timedelta(days=7))
    (env.state / "crl.pem").write_bytes(crl.public_bytes(serialization.Encoding.PEM))

    d = DaemonThread(env, clock).start()
    try:
        m = _scrape(port)
        assert m["certdrop_up"] == 1 and m["certdrop_ready"] == 1
        assert m['certdrop_requests_total{outcome="issued"}'] == 0
        assert m["certdrop_crl_next_update_seconds"] == 7 * 86400
        assert m["certdrop_last_reload_success"] == 1

        req, _ = openssl_csr(tmp_path / "u", "alice", subject="/O=MyOrg/CN=Alice")
        env.drop(req)
        assert wait_result(env, "alice") == "outbox"
        (tmp_path / "bad.req").write_text("nope")
        env.drop(tmp_path / "bad.req")
        assert wait_result(env, "bad") == "rejected"
        web, _ = openssl_csr(
            tmp_path / "u",
            "web",
            subject="/CN=web.example.org",
            kind="ec:P-256",
            addext=["subjectAltName=DNS:web.example.org"],
        )
        env.drop(web, profile="server")
        assert wait_result(env, "web") == "pending"

        m = wait_for(
            lambda: (
                s
                if (s := _scrape(port))['certdrop_requests_total{outcome="pending"}'] == 1
                else None
            ),
            what="counts",
        )
        assert m['certdrop_requests_total{outcome="issued"}'] == 1
        assert m['certdrop_requests_total{outcome="rejected"}'] == 1
        assert m["certdrop_pending_requests"] == 1
        assert m['certdrop_certificates{status="valid"}'] == 1
        assert m['certdrop_queue_depth{state="ready"}'] == 0
        assert m['certdrop_certificates_expiring{within_days="30"}'] == 0

        # 340 days on: alice's certificate is within 30 days of its end; the CRL is overdue
        clock.advance(dt.timedelta(days=340))
        m = _scrape(port)
        assert m['certdrop_certificates_expiring{within_days="30"}'] == 1
        assert m["certdrop_crl_next_update_seconds"] == (7 - 340) * 86400

        # a refused reload shows, and so does the next good one
        good = env.config.read_text()
        env.config.write_text(good.replace("validity_days = 365", "validity_days = -1"))
        d.daemon.reload_requested.set()  # what SIGHUP does
        wait_for(lambda: d.daemon.last_reload is not None, what="the reload")
        m = _scrape(port)
        assert m["certdrop_last_reload_success"] == 0
        assert m["certdrop_last_reload_timestamp_seconds"] == clock.now().timestamp()
        env.config.write_text(good)
        d.daemon.reload_requested.set()
        wait_for(lambda: d.daemon.last_reload and d.daemon.last_reload[1], what="reload ok")
        assert _scrape(port)["certdrop_last_reload_success"] == 1
    finally:
        d.stop()
    # the endpoint is gone with the daemon
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_metrics_port_in_use_is_a_clear_startup_error(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = make_env(tmp_path, extra=f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
        res = env.cli_proc("run", timeout=60)
    assert res.returncode == 78, res.stderr
    assert f"[metrics] listen = '127.0.0.1:{port}': cannot listen there" in res.stderr
    assert "Traceback" not in res.stderr


def test_metrics_listen_is_validated(tmp_path: Path) -> None:
    env = make_env(tmp_path, extra='[metrics]\nlisten = "9102"\n', init=False)
    res = env.cli_proc("check-config")
    assert res.returncode == 78
    assert "metrics.listen = '9102': must be HOST:PORT" in res.stderr


def test_metrics_are_off_by_default(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    assert env.settings.metrics.listen == ""
    d = DaemonThread(env).start()
    try:
        assert d.daemon.metrics_server is None
    finally:
        d.stop()
