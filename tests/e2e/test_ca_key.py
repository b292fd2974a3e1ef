"""The CA key at rest: encrypted under a passphrase from a file or a systemd credential."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from conftest import (
    OPENSSL,
    CAEnv,
    DaemonThread,
    make_env,
    openssl_csr,
    openssl_verify,
    wait_result,
)
from svc_helpers import DaemonProcess, NotifySocket

PASSPHRASE = "correct horse battery staple"


def _env_with_passphrase(tmp_path: Path) -> CAEnv:
    (tmp_path).mkdir(parents=True, exist_ok=True)
    pw = tmp_path / "ca-passphrase"
    pw.write_text(PASSPHRASE + "\n")
    pw.chmod(0o600)
    return make_env(
        tmp_path,
        extra="",
        replace={
            'key_type = "ec-p256"': 'key_type = "ec-p256"\nkey_passphrase_file = "ca-passphrase"'
        },
    )


def _openssl_pkey(key: Path, passin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [OPENSSL, "pkey", "-in", str(key), "-passin", passin, "-noout"],
        capture_output=True,
        text=True,
    )


def test_init_with_passphrase_file_writes_an_encrypted_key(tmp_path: Path) -> None:
    env = _env_with_passphrase(tmp_path)
    key = env.state / "ca.key"
    assert key.read_text().startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert key.stat().st_mode & 0o777 == 0o600
    assert _openssl_pkey(key, f"file:{tmp_path / 'ca-passphrase'}").returncode == 0
    assert _openssl_pkey(key, "pass:wrong").returncode != 0


def test_daemon_runs_with_an_encrypted_key(tmp_path: Path) -> None:
    env = _env_with_passphrase(tmp_path)
    d = DaemonThread(env).start()
    try:
        req, _ = openssl_csr(tmp_path / "u", "alice", subject="/O=MyOrg/CN=Alice")
        env.drop(req)
        assert wait_result(env, "alice") == "outbox"
    finally:
        d.stop()
    assert openssl_verify(env.ca_cert, env.outbox / "alice.cer").endswith("OK")


def test_wrong_passphrase_is_a_clear_error(tmp_path: Path) -> None:
    env = _env_with_passphrase(tmp_path)
    (tmp_path / "ca-passphrase").write_text("not it\n")
    notify = NotifySocket()
    try:
        d = DaemonProcess(env, notify, watchdog_usec=None)
        assert d.proc.wait(timeout=60) == 1
        d.stop()
        out = d.output()
        assert "certdrop: error:" in out and "wrong passphrase" in out, out
        assert "Traceback" not in out
        # systemd shows why in `systemctl status`
        notify.wait_field(lambda f: f.startswith("STATUS=cannot start:") and "passphrase" in f)
        assert "READY=1" not in notify.fields()
    finally:
        notify.close()


def test_passphrase_from_a_systemd_credential(tmp_path: Path) -> None:
    env = _env_with_passphrase(tmp_path)
    # the unit's LoadCredential=ca-key-passphrase: no key_passphrase_file in the file
    env.config.write_text(
        env.config.read_text().replace('key_passphrase_file = "ca-passphrase"\n', "")
    )
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "ca-key-passphrase").write_text(PASSPHRASE)
    notify = NotifySocket()
    try:
        d = DaemonProcess(
            env, notify, watchdog_usec=None, extra_env={"CREDENTIALS_DIRECTORY": str(creds)}
        )
        notify.wait_field("READY=1")
        req, _ = openssl_csr(tmp_path / "u", "alice", subject="/O=MyOrg/CN=Alice")
        env.drop(req)
        assert wait_result(env, "alice") == "outbox"
        assert d.stop() == 0
    finally:
        d.kill()
        notify.close()
    # without the credential the daemon cannot sign and says what is missing
    res = env.cli_proc("run")
    assert res.returncode == 1
    assert "is encrypted; set [ca] key_passphrase_file (or the systemd credential)" in res.stderr
    # status needs only the CA certificate: it works for the operator without the secret
    res = env.cli_proc("status", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["ca"]["key"] == "ec-secp256r1"


def test_a_group_readable_ca_key_is_refused(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    key = env.state / "ca.key"
    key.chmod(0o640)
    res = env.cli_proc("run")
    assert res.returncode == 1
    assert f"the CA key {key} is readable by group or others (mode 0640)" in res.stderr
    assert f"chmod 600 {key}" in res.stderr
    assert "Traceback" not in res.stderr


def test_an_empty_passphrase_file_is_refused(tmp_path: Path) -> None:
    env = _env_with_passphrase(tmp_path)
    (tmp_path / "ca-passphrase").write_text("")
    res = env.cli_proc("run")
    assert res.returncode == 1
    assert "key_passphrase_file" in res.stderr and "is empty" in res.stderr
