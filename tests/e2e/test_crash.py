"""kill -9 during a burst: nothing lost, nothing issued twice, nothing left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certdrop.index import listing
from certdrop.index.store import Store
from conftest import CAEnv, wait_for


def make_csrs(folder: Path, n: int, prefix: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{prefix} user {i}")])
            )
            .sign(key, hashes.SHA256())
        )
        p = folder / f"{prefix}{i:04d}.req"
        p.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
        out.append(p)
    return out


def start_daemon(env: CAEnv, log: Path) -> subprocess.Popen[bytes]:
    e = dict(os.environ)
    e.pop("NOTIFY_SOCKET", None)
    return subprocess.Popen(
        [sys.executable, "-m", "certdrop.cli", "--config", str(env.config), "run"],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env=e,
    )


def check_invariants(env: CAEnv, names: list[str]) -> None:
    outbox = {p.stem for p in env.outbox.glob("*.cer")}
    rejected = {p.stem for p in env.rejected.glob("*.req")}
    pending = {p.stem for p in env.pending.glob("*.req")}
    archived = {p.name.split(".")[0] for p in env.archive.glob("*.req")}
    for name in names:
        places = [name in outbox, name in rejected, name in pending]
        assert sum(places) == 1, (name, places)
        if name in outbox:
            assert name in archived, name
    leftovers = [p for p in env.inbox.iterdir() if p.is_file() and not p.name.startswith(".")]
    assert leftovers == []
    work = [p for p in (env.spool / "work").rglob("*") if p.is_file()]
    assert work == []
    store = Store(env.settings.database_url)
    try:
        assert store.integrity_check() == []
        with store.begin() as conn:
            records = listing.list_certs(conn)
    finally:
        store.close()
    by_name: dict[str, list[str]] = {}
    for r in records:
        by_name.setdefault(r.request_name, []).append(r.serial)
    assert all(len(v) == 1 for v in by_name.values()), {
        k: v for k, v in by_name.items() if len(v) > 1
    }
    serials = [r.serial for r in records]
    assert len(serials) == len(set(serials))
    ca = x509.load_pem_x509_certificate(env.ca_cert.read_bytes())
    index = {r.request_name: r for r in records}
    ders = {r.der for r in records}
    for name in outbox:
        cert = x509.load_pem_x509_certificate((env.outbox / f"{name}.cer").read_bytes())
        cert.verify_directly_issued_by(ca)
        der = cert.public_bytes(serialization.Encoding.DER)
        if name in index:
            assert der == index[name].der, name
        else:  # a re-delivery: the same request dropped under another name
            assert der in ders, name


def test_kill9_during_burst(ca_env: CAEnv, tmp_path: Path) -> None:
    import threading

    names = [p.stem for p in make_csrs(tmp_path / "csrs", 200, "burst")]
    log = tmp_path / "daemon.log"
    proc = start_daemon(ca_env, log)

    def writer() -> None:
        # users keep dropping while the daemon dies and comes back
        for name in names:
            src = tmp_path / "csrs" / f"{name}.req"
            tmp = ca_env.inbox / f".{name}.part"
            tmp.write_bytes(src.read_bytes())
            os.rename(tmp, ca_env.inbox / f"{name}.req")
            time.sleep(0.005)

    t = threading.Thread(target=writer)
    try:
        wait_for(lambda: "ready" in log.read_text(), 30)
        t.start()
        wait_for(lambda: len(list(ca_env.outbox.glob("*.cer"))) >= 20, 60, what="20 certificates")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        done_before = len(list(ca_env.outbox.glob("*.cer")))
        assert done_before < len(names), "the burst finished before the kill; nothing was tested"
    finally:
        if proc.poll() is None:
            proc.kill()
        t.join()
    proc = start_daemon(ca_env, log)
    try:
        wait_for(
            lambda: len(list(ca_env.outbox.glob("*.cer"))) == len(names),
            120,
            what="all certificates",
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    check_invariants(ca_env, names)
