"""The unprivileged setup: the daemon only writes Apache's files, and the root-owned
companion (systemd/certdrop-apache-companion, what certdrop-apache-reload.service runs)
checks them, runs the real `apache2 -t`, reloads, or puts the last good files back.

A real Apache httpd in a temp ServerRoot, a certdrop daemon, aiosmtpd for the admin's
alert, curl as the client."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import pytest

from apache_harness import ApacheServer, apache_available
from conftest import REPO, DaemonThread, make_env, openssl_csr, wait_for, wait_result
from mailpeer import SmtpPeer, mail_config

pytestmark = pytest.mark.apache

COMPANION = REPO / "systemd" / "certdrop-apache-companion"
ADMIN = "admin@example.org"


@pytest.fixture(autouse=True)
def _need_apache() -> None:
    if not apache_available():
        pytest.fail("Debian's apache2 with mod_ssl is needed: run 'make test-deps' (as root)")


def test_companion_restores_the_last_good_files_and_certdrop_reports_it(tmp_path: Path) -> None:
    peer = SmtpPeer().start()
    httpd = ApacheServer(tmp_path / "apache", "# certdrop block goes here\n").start()
    d: DaemonThread | None = None
    files = httpd.root / "certdrop"
    ca_file, crl_file = files / "ca-bundle.pem", files / "crl.pem"
    status_dir = tmp_path / "companion"  # /var/lib/certdrop-apache
    status_file = status_dir / "status.json"

    def companion() -> subprocess.CompletedProcess[str]:
        """One start of certdrop-apache-reload.service (the path unit saw a change)."""
        return subprocess.run(
            [str(COMPANION), "--ca-file", str(ca_file), "--crl-file", str(crl_file),
             "--status-dir", str(status_dir),
             "--configtest", shlex.join(httpd.configtest_command),
             "--reload", shlex.join(httpd.reload_command)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    def status() -> dict[str, object]:
        code, out, err = env.cli("status", "--json")
        assert code == 0, err
        doc: dict[str, object] = json.loads(out)["apache"]
        return doc

    try:
        # the daemon runs unprivileged: it writes the files, the companion does the rest
        extra = f"""
[apache]
enabled = true
ca_file = "{ca_file}"
crl_file = "{crl_file}"
configtest_command = []
reload_command = []
debounce_seconds = 0.2
companion_status = "{status_file}"
"""
        env = make_env(
            tmp_path / "ca", extra=extra + mail_config(peer.port, admin=f"CA Admin <{ADMIN}>")
        )
        code, block, err = env.cli("apache-config", "--log-file", str(httpd.root / "logs/c.log"))
        assert code == 0, err
        d = DaemonThread(env).start()
        wait_for(crl_file.exists, timeout=30, what="the daemon to publish Apache's files")
        httpd.set_client_auth(block)
        res = companion()
        assert res.returncode == 0, res.stderr
        first = json.loads(status_file.read_text())
        assert first["result"] == "ok" and first["action"] == "reloaded"
        wait_for(lambda: httpd.curl()[1] != 0, timeout=30, what="Apache to require certificates")
        req, key = openssl_csr(tmp_path / "users", "alice", "/CN=Alice Example")
        env.drop(req)
        assert wait_result(env, "alice") == "outbox"
        alice = env.outbox / "alice.cer"
        assert httpd.status_of(alice, key) == 200
        good = ca_file.read_bytes(), crl_file.read_bytes()
        pid = httpd.pid()

        # 1. an empty CA bundle: the real `apache2 -t` fails
        ca_file.write_bytes(b"")
        res = companion()
        assert res.returncode == 1
        assert "does not exist or is empty" in res.stderr
        assert (ca_file.read_bytes(), crl_file.read_bytes()) == good  # the last good files
        doc = json.loads(status_file.read_text())
        assert doc["result"] == "failed" and doc["action"] == "configtest-failed"
        assert doc["restored"] is True
        assert (
            f"SSLCACertificateFile: file '{ca_file}' does not exist or is empty"
            in (doc["configtest"])
        )
        assert httpd.running() and httpd.pid() == pid
        assert httpd.status_of(alice, key) == 200  # Apache kept running, on valid files
        st = status()
        assert st["last"] == "FAILED" and st["action"] == "companion configtest-failed"
        assert "the last good files are back" in str(st["detail"])
        companion_doc = st["companion"]
        assert isinstance(companion_doc, dict)
        assert "does not exist or is empty" in companion_doc["output"]
        code, text, _ = env.cli("status")
        line = next(ln for ln in text.splitlines() if ln.startswith("apache"))
        assert "FAILED" in line and "companion FAILED" in line

        # the daemon's periodic check alerts the admin, once for these files
        d.daemon.jobs.crl()
        d.daemon.jobs.mail_flush()
        [mail] = peer.wait_count(1)
        assert ADMIN in mail.rcpt_tos
        assert mail.subject.endswith("Apache refused certdrop's files: configtest-failed")
        assert "does not exist or is empty" in mail.text and "last good files" in mail.text
        d.daemon.jobs.crl()
        d.daemon.jobs.mail_flush()
        assert len(peer.messages) == 1

        # the restore wakes the path unit again: the last good files are left alone
        res = companion()
        assert res.returncode == 0, res.stderr
        assert json.loads(status_file.read_text())["result"] == "failed"

        # 2. a corrupt CRL passes `apache2 -t`, but the reload would kill Apache: the
        # companion's own check refuses it
        corrupt = b"-----BEGIN X509 CRL-----\nAAAAnot a CRL\n-----END X509 CRL-----\n"
        crl_file.write_bytes(corrupt)
        test = subprocess.run(httpd.configtest_command, capture_output=True, text=True)
        assert test.returncode == 0, test.stderr  # configtest alone would let it through
        res = companion()
        assert res.returncode == 1
        doc = json.loads(status_file.read_text())
        assert doc["action"] == "invalid-files" and "CRL file" in doc["detail"]
        assert doc["restored"] is True
        assert (ca_file.read_bytes(), crl_file.read_bytes()) == good
        assert httpd.running() and httpd.pid() == pid
        assert httpd.status_of(alice, key) == 200
        d.daemon.jobs.crl()
        d.daemon.jobs.mail_flush()
        mails = peer.wait_count(2)
        assert mails[1].subject.endswith("Apache refused certdrop's files: invalid-files")

        # 3. good files again: a revocation reaches Apache through the companion
        code, _, err = env.cli("revoke", "alice", "--reason", "keyCompromise")
        assert code == 0, err
        wait_for(lambda: crl_file.read_bytes() != good[1], timeout=30, what="the new CRL")
        res = companion()
        assert res.returncode == 0, res.stderr
        assert json.loads(status_file.read_text())["result"] == "ok"
        wait_for(lambda: httpd.status_of(alice, key) != 200, timeout=30, what="alice refused")
        st = status()
        assert st["last"] == "ok"
        assert isinstance(st["companion"], dict) and st["companion"]["last"] == "ok"
    finally:
        if d is not None:
            d.stop()
        httpd.stop()
        peer.stop()
