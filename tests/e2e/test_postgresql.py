"""A daemon whose index is a real PostgreSQL database: requests issued, revoked, on the
CRL; `certdrop migrate-db` from SQLite into PostgreSQL and back.

The server is the tests' own (tests/pgserver.py, a Unix socket); the daemon runs in a
thread, the operator's commands in other processes, as on a host.
"""

from __future__ import annotations

import json
from pathlib import Path

from cryptography import x509

from certdrop.index.migrate import table_checksums
from certdrop.index.store import Store
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


def _drop_ec(env: CAEnv, folder: Path, name: str, cn: str) -> None:
    folder.mkdir(exist_ok=True)
    csr, _ = ec_csr(cn)
    (folder / f"{name}.req").write_bytes(csr)
    env.drop(folder / f"{name}.req")


def _crl_number(env: CAEnv) -> int:
    crl = x509.load_der_x509_crl((env.state / "crl.der").read_bytes())
    return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)


def test_migrate_db_round_trip(tmp_path: Path, pg_url: str) -> None:
    """An SQLite index into PostgreSQL with `certdrop migrate-db`, a daemon on the copy,
    and back into a new SQLite file: every table verified each way."""
    env = make_env(tmp_path / "ca")
    users = tmp_path / "users"
    d = DaemonThread(env).start()
    try:
        for i in range(6):
            _drop_ec(env, users, f"user{i}", f"User {i}")
        assert {wait_result(env, f"user{i}", timeout=60) for i in range(6)} == {"outbox"}
        assert env.cli_proc("revoke", "user2").returncode == 0
        number = _crl_number(env)
        # not while the daemon runs: the copy would miss what it writes next
        res = env.cli_proc("migrate-db", pg_url)
        assert res.returncode == 1 and "stop it first" in res.stderr, res.stderr
        assert "Traceback" not in res.stderr
    finally:
        d.stop()

    res = env.cli_proc("migrate-db", pg_url)
    assert res.returncode == 0, res.stderr
    assert "copied and verified" in res.stdout and "certificates" in res.stdout
    # a second time: the target is not empty any more
    res = env.cli_proc("migrate-db", pg_url)
    assert res.returncode == 1 and "is not empty (" in res.stderr, res.stderr

    # the daemon on the copy: what was issued and revoked is there, numbers go on
    sqlite_url = env.settings.database_url
    env.write_config(replace={'state = "state"': f'state = "state"\ndatabase = "{pg_url}"'})
    d = DaemonThread(env).start()
    try:
        doc = json.loads(env.cli_proc("show", "user2", "--json").stdout)
        assert doc["certificates"][0]["status"] == "revoked"
        _drop_ec(env, users, "again1", "User 1")  # CN unique: User 1 holds a valid one
        _drop_ec(env, users, "user9", "User 9")
        assert wait_result(env, "again1", timeout=60) == "rejected"
        assert wait_result(env, "user9", timeout=60) == "outbox"
        assert env.cli_proc("crl").returncode == 0
        assert _crl_number(env) > number
        serial2 = load_cert(env.outbox / "user2.cer").serial_number
        crl = x509.load_der_x509_crl((env.state / "crl.der").read_bytes())
        assert [e.serial_number for e in crl] == [serial2]
    finally:
        d.stop()

    back = f"sqlite:///{tmp_path / 'back.sqlite'}"
    res = env.cli_proc("migrate-db", back)
    assert res.returncode == 0, res.stderr
    sums = []
    for url in (pg_url, back, sqlite_url):
        store = Store(url).open()
        with store.begin() as conn:
            sums.append(table_checksums(conn))
        store.close()
    assert sums[0] == sums[1]  # PostgreSQL and its copy
    assert sums[1]["certificates"].rows == sums[2]["certificates"].rows + 1  # user9
