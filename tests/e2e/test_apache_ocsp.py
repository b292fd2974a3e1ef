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


def test_after_a_rollover_both_cas_clients_are_checked_by_ocsp(tmp_path: Path) -> None:
    """A rollover while the daemon runs: Apache (OCSP variant, both CA certificates in its
    bundle) lets in a client of the old CA and one of the new; the old one revoked is
    refused at once (answered by the old CA's responder), the new one still gets in."""
    if not apache_available():
        pytest.fail("Debian's apache2 with mod_ssl is needed: run 'make test-deps' (as root)")
    from certdrop.authority.lifecycle import ca_id
    from certdrop.authority.rollover import ca_folder
    from conftest import load_cert

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
    old_ca = load_cert(env.ca_cert)
    d = DaemonThread(env).start()
    users = tmp_path / "users"
    keys = {}
    req, keys["alice"] = openssl_csr(users, "alice", "/CN=alice", kind="ec:prime256v1")
    env.drop(req)
    assert wait_result(env, "alice") == "outbox"
    res = env.cli_proc("rollover")
    assert res.returncode == 0, res.stderr
    req, keys["carol"] = openssl_csr(users, "carol", "/CN=carol", kind="ec:prime256v1")
    env.drop(req)
    assert wait_result(env, "carol") == "outbox"
    # what the Apache publisher would write (it is off here: nothing may reload Apache)
    bundle.parent.mkdir(parents=True)
    old_cer = ca_folder(env.state, ca_id(old_ca)) / "ca.cer"
    bundle.write_bytes(env.ca_cert.read_bytes() + old_cer.read_bytes())
    srv = start_serve(env, port)
    httpd = ApacheServer(web, block)
    try:
        httpd.start()

        def status(name: str) -> int:
            return httpd.status_of(env.outbox / f"{name}.cer", keys[name])

        assert status("alice") == 200, httpd.error_log_text()[-3000:]
        assert status("carol") == 200, httpd.error_log_text()[-3000:]
        code, out, err = env.cli("revoke", "alice", "--reason", "keyCompromise")
        assert code == 0, (out, err)
        wait_for(lambda: status("alice") != 200, timeout=5, what="alice refused")
        assert status("carol") == 200
        log = httpd.error_log_text()
        assert "OCSP validation completed, certificate status: revoked" in log, log[-3000:]
    finally:
        httpd.stop()
        assert srv.stop() == 0, srv.output()
        d.stop()
