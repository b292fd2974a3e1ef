"""`certdrop backup` while the daemon issues a burst of 1,000 requests, then `certdrop
restore` into a fresh state folder: the index passes SQLite's integrity check, holds at
least what existed when the backup began, the CA issues from it, and its first CRL is
numbered above every CRL published before (also after the backup)."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certdrop.index import listing
from certdrop.index.store import Store
from conftest import (
    CAEnv,
    DaemonThread,
    make_env,
    openssl_csr,
    openssl_verify,
    wait_for,
    wait_result,
)

N = 1000


def burst_requests(n: int) -> list[tuple[str, bytes]]:
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(8)]
    return [
        (
            f"b{i:04d}",
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"burst user {i}")]))
            .sign(keys[i % 8], hashes.SHA256())
            .public_bytes(serialization.Encoding.PEM),
        )
        for i in range(n)
    ]


def indexed(env: CAEnv) -> int:
    store = Store(env.settings.database_url).open()
    try:
        with store.begin() as conn:
            return listing.counts(conn, env.clock.now())["total"]
    finally:
        store.close()


def crl_number(env: CAEnv) -> int:
    crl = x509.load_der_x509_crl((env.state / "crl.der").read_bytes())
    return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)


def test_backup_during_a_burst_restores_into_a_fresh_state(tmp_path: Path) -> None:
    env = make_env(tmp_path / "ca")
    requests = burst_requests(N)

    def drop_all() -> None:  # users dropping requests for four seconds or so
        for start in range(0, N, 25):
            for name, pem in requests[start : start + 25]:
                tmp = env.inbox / f".{name}.part"
                tmp.write_bytes(pem)
                os.rename(tmp, env.inbox / f"{name}.req")
            time.sleep(0.1)

    d = DaemonThread(env).start()
    try:
        dropper = threading.Thread(target=drop_all)
        dropper.start()
        wait_for(lambda: indexed(env) >= 50, timeout=60, what="the burst to be under way")
        before = indexed(env)
        assert dropper.is_alive() and before < N  # the backup begins in the middle of it
        dest = tmp_path / "backup"
        res = env.cli_proc("backup", str(dest))
        assert res.returncode == 0, res.stderr
        dropper.join()
        wait_for(lambda: len(list(env.archive.glob("*.req"))) == N, timeout=120, what="the burst")
        # revocations after the backup: CRLs the backup does not know of
        for name in ("b0001", "b0002"):
            code, _, err = env.cli("revoke", name, "--reason", "keyCompromise")
            assert code == 0, err
        published = crl_number(env)
    finally:
        d.stop()
    manifest = json.loads((dest / "MANIFEST.json").read_text())
    assert before <= manifest["index"]["certificates"] <= N
    assert manifest["crl_numbers"]["crl.der"] < published

    fresh = make_env(tmp_path / "restored", init=False)
    code, _, err = fresh.cli("restore", str(dest))
    assert code == 0, err
    store = Store(fresh.settings.database_url).open()
    try:
        assert store.integrity_check() == []
        with store.begin() as conn:
            restored = listing.counts(conn, fresh.clock.now())["total"]
    finally:
        store.close()
    assert before <= restored == manifest["index"]["certificates"]
    assert fresh.ca_cert.read_bytes() == env.ca_cert.read_bytes()

    d = DaemonThread(fresh).start()
    try:
        assert crl_number(fresh) > published  # never a number used before, or after the backup
        req, _ = openssl_csr(tmp_path / "users", "after", subject="/CN=After The Restore")
        fresh.drop(req)
        assert wait_result(fresh, "after") == "outbox"
        assert openssl_verify(env.ca_cert, fresh.outbox / "after.cer").endswith("OK")
    finally:
        d.stop()
