"""A daemon whose index is a real PostgreSQL database: requests issued, revoked, on the CRL.

The server is the tests' own (tests/pgserver.py, a Unix socket); the daemon runs in a
thread, the operator's commands in other processes, as on a host.
"""

from __future__ import annotations

import json
from pathlib import Path

from cryptography import x509

from conftest import (
    CAEnv,
    DaemonThread,
    ec_csr,
    load_cert,
    make_env,
    openssl_verify,
    wait_result,
)


def pg_env(tmp_path: Path, url: str, extra: str = "") -> CAEnv:
    return make_env(
        tmp_path, extra, replace={'state = "state"': f'state = "state"\ndatabase = "{url}"'}
    )


def test_a_daemon_on_postgresql_issues_revokes_and_publishes(tmp_path: Path, pg_url: str) -> None:
    env = pg_env(tmp_path / "ca", pg_url)
    assert not (env.state / "index.sqlite").exists()  # the index is the server's
    d = DaemonThread(env).start()
    try:
        users = tmp_path / "users"
        users.mkdir()
        names = [f"user{i:02d}" for i in range(24)]
        for name in names:
            csr, _ = ec_csr(f"User {name}")
            (users / f"{name}.req").write_bytes(csr)
            env.drop(users / f"{name}.req")
        assert {wait_result(env, n, timeout=60) for n in names} == {"outbox"}
        serials = [load_cert(env.outbox / f"{n}.cer").serial_number for n in names]
        assert len(set(serials)) == len(names)

        crl = x509.load_der_x509_crl((env.state / "crl.der").read_bytes())
        before = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        # the operator, in another process: the command goes through the index's control table
        res = env.cli_proc("revoke", "user07", "--reason", "keyCompromise")
        assert res.returncode == 0, res.stderr
        crl = x509.load_der_x509_crl((env.state / "crl.der").read_bytes())
        assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number > before
        assert [e.serial_number for e in crl] == [serials[7]]
        out = openssl_verify(env.ca_cert, env.outbox / "user07.cer", crl=env.state / "crl.pem")
        assert "certificate revoked" in out, out
        assert openssl_verify(
            env.ca_cert, env.outbox / "user08.cer", crl=env.state / "crl.pem"
        ).endswith("OK")

        res = env.cli_proc("status", "--json")
        assert res.returncode == 0, res.stderr
        counts = json.loads(res.stdout)["certificates"]
        assert (counts["valid"], counts["revoked"]) == (len(names) - 1, 1)
        res = env.cli_proc("show", "user07", "--json")
        assert json.loads(res.stdout)["certificates"][0]["status"] == "revoked"
    finally:
        d.stop()
    assert d.error is None
