"""StatusReader: a certificate's status by serial, read-only, as `certdrop serve` asks it;
also by a user who may not write the index or its folder (certdrop-http.service), with the
daemon stopped (no -wal, no -shm) and then started again."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from certdrop.index.status import CertStatus, StatusReader
from certdrop.index.store import NewCertificate, Store

NOW = dt.datetime(2031, 3, 1, 12, 0, tzinfo=dt.UTC)
SETPRIV = shutil.which("setpriv")


def _cert(serial: str) -> NewCertificate:
    return NewCertificate(
        serial=serial,
        subject=f"CN={serial}",
        common_name=serial,
        email="",
        not_before=NOW,
        not_after=NOW + dt.timedelta(days=30),
        profile="client",
        request_name=serial.lower(),
        request_fingerprint=serial,
        issued_at=NOW,
        der=b"0",
    )


def _fill(url: str) -> Store:
    store = Store(url).open()
    with store.begin() as conn:
        store.add_certificate(conn, _cert("0A11CE"))
        store.add_certificate(conn, _cert("B0B0"))
        store.revoke(conn, "B0B0", "keyCompromise", NOW + dt.timedelta(hours=1))
    return store


def test_good_revoked_unknown_and_a_revocation_seen_at_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'index.sqlite'}"
    store = _fill(url)
    reader = StatusReader(url)
    try:
        assert reader.status("0A11CE") == CertStatus(False)
        assert reader.status("B0B0") == CertStatus(
            True, NOW + dt.timedelta(hours=1), "keyCompromise"
        )
        assert reader.status("0BAD") is None
        with store.begin() as conn:
            store.revoke(conn, "0A11CE", "superseded", NOW)
        assert reader.status("0A11CE") == CertStatus(True, NOW, "superseded")
    finally:
        reader.close()
        store.close()


# a reader as another user: one serial per line in, one status per line out
_READER = """
import sys
from certdrop.index.status import StatusReader
from certdrop.errors import CertdropError
reader = StatusReader(sys.argv[1])
for line in sys.stdin:
    try:
        st = reader.status(line.strip())
        print("unknown" if st is None else "revoked" if st.revoked else "good", flush=True)
    except CertdropError as exc:
        print(f"error {exc}", flush=True)
"""


@pytest.fixture
def shared() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="certdrop-status-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0 or SETPRIV is None, reason="needs root and setpriv")
def test_a_user_who_may_not_write_reads_with_the_daemon_stopped_and_running(shared: Path) -> None:
    state = shared / "state"
    state.mkdir(mode=0o755)
    url = f"sqlite:///{state / 'index.sqlite'}"
    _fill(url).close()  # every connection closed: no -wal, no -shm left
    assert not (state / "index.sqlite-wal").exists()
    (state / "index.sqlite").chmod(0o644)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [
            SETPRIV,
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            "-c",
            _READER,
            url,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdin is not None and proc.stdout is not None

    def ask(serial: str) -> str:
        proc.stdin.write(serial + "\n")
        proc.stdin.flush()
        return proc.stdout.readline().strip()

    try:
        assert ask("0A11CE") == "good"  # the file alone, read as immutable
        assert ask("B0B0") == "revoked"
        assert ask("0BAD") == "unknown"
        store = Store(url).open()  # the daemon starts: a -wal appears, and writes go there
        try:
            with store.begin() as conn:
                store.revoke(conn, "0A11CE", "keyCompromise", NOW)
            for f in state.iterdir():
                f.chmod(0o644)  # as the daemon's umask would leave them readable
            assert ask("0A11CE") == "revoked"
            with store.begin() as conn:
                store.add_certificate(conn, _cert("0C0C"))
            assert ask("0C0C") == "good"
        finally:
            store.close()
        assert ask("0C0C") == "good"  # the daemon stopped again
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    assert not any(f.stat().st_uid == 65534 for f in state.iterdir())  # nothing written
