"""Apache httpd (Debian's apache2, mod_ssl) checking client certificates with certdrop's
OCSP responder: configured with what `certdrop apache-config --ocsp` prints and no CRL,
a client gets in, is revoked, and is refused within seconds, without a reload of Apache."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from apache_harness import ApacheServer, apache_available
from conftest import DaemonThread, make_env, openssl_csr, wait_for, wait_result
from serve_kit import free_port, serve_config, start_serve

pytestmark = pytest.mark.apache


def test_a_revoked_client_is_refused_at_once_without_a_reload(tmp_path: Path) -> None:
    if not apache_available():
        pytest.fail("Debian's apache2 with mod_ssl is needed: run 'make test-deps' (as root)")
    port = free_port()
    web = tmp_path / "apache"
    bundle = web / "certdrop" / "ca-bundle.pem"
    env = make_env(
        tmp_path / "ca",
        extra=serve_config(port)
        + f'[apache]\nca_file = "{bundle}"\ncrl_file = "{web / "certdrop" / "crl.pem"}"\n',
    )
    code, block, err = env.cli(
        "apache-config", "--ocsp", "--log-file", str(web / "logs" / "clients.log")
    )
    assert code == 0, err
    assert "SSLOCSPEnable leaf" in block and "SSLCARevocation" not in block
    # what the Apache publisher would write (it is off here: nothing may reload Apache)
    bundle.parent.mkdir(parents=True)
    shutil.copy(env.ca_cert, bundle)
    d = DaemonThread(env).start()  # the responder's certificate, the requests
    users = tmp_path / "users"
    keys = {}
    for name in ("alice", "bob"):
        req, keys[name] = openssl_csr(users, name, f"/CN={name}", kind="ec:prime256v1")
        env.drop(req)
    for name in ("alice", "bob"):
        assert wait_result(env, name) == "outbox"
    srv = start_serve(env, port)
    httpd = ApacheServer(web, block)
    try:
        httpd.start()

        def status(name: str) -> int:
            return httpd.status_of(env.outbox / f"{name}.cer", keys[name])

        assert status("alice") == 200, httpd.error_log_text()[-3000:]
        assert status("bob") == 200
        assert httpd.status_of() != 200  # no certificate, no entry
        pid = httpd.pid()
        code, out, err = env.cli("revoke", "alice", "--reason", "keyCompromise")
        assert code == 0, (out, err)
        wait_for(lambda: status("alice") != 200, timeout=5, what="alice refused")
        assert status("bob") == 200
        log = httpd.error_log_text()
        assert "OCSP validation completed, certificate status: revoked" in log, log[-3000:]
        # the same Apache, never reloaded
        assert httpd.pid() == pid and httpd.running()
        assert "graceful restart" not in log.lower(), log[-3000:]
        # the daemon stopped: answers go on, Apache keeps refusing alice and letting bob in
        d.stop()
        assert status("alice") != 200 and status("bob") == 200
    finally:
        httpd.stop()
        assert srv.stop() == 0, srv.output()
        if d.alive():
            d.stop()
