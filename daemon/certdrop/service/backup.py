"""`certdrop backup DEST` while the daemon runs, and `certdrop restore SRC` into an empty
state folder.

A backup is a folder:

    MANIFEST.json   written last (a folder without it is an incomplete backup): when, from
                    where, what the index copy holds, the highest CRL numbers published,
                    and every file with its SHA-256, size and mode
    index.sqlite    the index, through SQLite's online backup (index/backup.py), checked
    state/...       every other file of the state folder as it is stored: the CA keys
                    (encrypted stays encrypted), certificates, chain, CRLs, passwords/,
                    pending-keys/, the audit log
    certdrop.toml   the configuration in use (for reference; restore does not install it)

The index is copied first: the backup holds at least what existed when it began.
Restore checks every checksum and the index before it writes anything, writes into an
empty state folder only, the CA certificate last (a CA exists once ca.cer exists), and
leaves the CRLs out: the daemon then publishes a fresh one whose number, derived from
the time, is above every number published before or after the backup.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..authority.lifecycle import CA_CERT, CA_KEY
from ..clock import Clock
from ..config import Settings
from ..errors import CertdropError
from ..fsutil import atomic_write, copy_file, ensure_dir
from ..index.backup import IndexCopy, backup_index, check_index_copy, sqlite_path
from ..index.store import Store
from .systemd import LOCK_FILE, StateLock

MANIFEST = "MANIFEST.json"
FORMAT = "certdrop-backup 1"
INDEX_COPY = "index.sqlite"
STATE_DIR = "state"
CONFIG_COPY = "certdrop.toml"
CRL_FILES = frozenset({"crl.pem", "crl.der"})  # the CA's own CRLs: made afresh after a restore


class BackupError(CertdropError):
    """A backup cannot be taken, or a backup cannot be restored (the reason says which)."""


@dataclass
class BackupReport:
    dest: Path
    index: IndexCopy
    files: int
    size: int
    seconds: float
    crl_numbers: dict[str, int] = field(default_factory=dict)


# --- backup --------------------------------------------------------------------------------------
def _state_files(state: Path, skip: set[Path]) -> Iterator[Path]:
    """The regular files of the state folder worth keeping: not the lock, not the live
    index (copied through its backup API), not temporary files, no symlink."""
    for dirpath, dirnames, filenames in os.walk(state):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not (here / d).is_symlink())
        for name in sorted(filenames):
            path = here / name
            if path in skip or (name.startswith(".") and name.endswith(".tmp")):
                continue
            if here == state and name == LOCK_FILE:
                continue
            if stat.S_ISREG(path.lstat().st_mode):
                yield path


def _index_files(settings: Settings) -> set[Path]:
    try:
        db = sqlite_path(settings.database_url)
    except CertdropError:
        return set()
    return {db, *(db.with_name(db.name + s) for s in ("-wal", "-shm", "-journal"))}


def _empty(folder: Path) -> bool:
    return not folder.exists() or (folder.is_dir() and not any(folder.iterdir()))


def _crl_number(path: Path) -> int | None:
    from cryptography import x509

    try:
        crl = x509.load_der_x509_crl(path.read_bytes())
        return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except (OSError, ValueError, x509.ExtensionNotFound):
        return None


def take_backup(
    settings: Settings, dest: Path, clock: Clock, config_path: Path | None = None
) -> BackupReport:
    """Copy the state into `dest` (absent or empty), the index first; MANIFEST.json last."""
    state = settings.state
    if not (state / CA_CERT).exists():
        raise BackupError(f"no CA in {state}: nothing to back up")
    if not _empty(dest):
        raise BackupError(f"{dest} is not empty: a backup goes into a new or empty folder")
    if dest.resolve().is_relative_to(state.resolve()):
        raise BackupError(f"{dest} is inside the state folder {state}: back up to another place")
    started = time.monotonic()
    created = clock.now()
    ensure_dir(dest, 0o700)
    store = Store(settings.database_url).open()
    try:
        index = backup_index(store, dest / INDEX_COPY)
    finally:
        store.close()
    if index.problems:
        raise BackupError(
            f"the copy of the index fails SQLite's check ({'; '.join(index.problems[:3])}): "
            f"the live index may be damaged; the incomplete backup is in {dest}"
        )
    files: dict[str, dict[str, Any]] = {}
    dirs: dict[str, str] = {}
    total = 0
    ensure_dir(dest / STATE_DIR, 0o700)
    for src in _state_files(state, _index_files(settings)):
        rel = src.relative_to(state)
        for parent in reversed(rel.parents[:-1]):  # the folders above it, outermost first
            if str(parent) not in dirs:
                dirs[str(parent)] = f"{stat.S_IMODE((state / parent).stat().st_mode):04o}"
                ensure_dir(dest / STATE_DIR / parent, 0o700)
        try:
            mode = stat.S_IMODE(src.lstat().st_mode)
            sha, size = copy_file(src, dest / STATE_DIR / rel, mode)
        except FileNotFoundError:
            continue  # removed meanwhile (a password file fetched, a key of a denied request)
        files[str(rel)] = {"sha256": sha, "size": size, "mode": f"{mode:04o}"}
        total += size
    crl_numbers = {
        rel: n for rel in files if Path(rel).name == "crl.der"
        if (n := _crl_number(dest / STATE_DIR / rel)) is not None
    }  # fmt: skip
    config: dict[str, Any] | None = None
    if config_path is not None and config_path.is_file():
        sha, size = copy_file(config_path, dest / CONFIG_COPY, 0o600)
        config = {"path": str(config_path.resolve()), "sha256": sha, "size": size}
    index_sha, index_size = _digest(dest / INDEX_COPY)
    manifest = {
        "format": FORMAT,
        "created_at": created.isoformat(),
        "certdrop": __version__,
        "host": socket.gethostname(),
        "state": str(state),
        "index": {
            "file": INDEX_COPY,
            "sha256": index_sha,
            "size": index_size,
            "schema_version": index.schema_version,
            "certificates": index.certificates,
            "crl_number": index.crl_number,
            "check": "ok",
        },
        "crl_numbers": crl_numbers,
        "config": config,
        "dirs": dirs,
        "files": files,
    }
    atomic_write(dest / MANIFEST, json.dumps(manifest, indent=2).encode() + b"\n", 0o600)
    return BackupReport(
        dest, index, len(files), total + index_size, time.monotonic() - started, crl_numbers
    )


def _digest(path: Path) -> tuple[str, int]:
    import hashlib

    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


# --- restore -------------------------------------------------------------------------------------
@dataclass
class RestoreReport:
    created_at: dt.datetime
    index: IndexCopy
    files: int
    left_out: list[str]  # the CRLs, made afresh by the daemon


def read_manifest(src: Path) -> dict[str, Any]:
    """The backup's manifest, every file checked against it; BackupError naming what is
    wrong otherwise."""
    try:
        manifest: dict[str, Any] = json.loads((src / MANIFEST).read_text())
    except FileNotFoundError:
        raise BackupError(
            f"{src} holds no {MANIFEST}: not a certdrop backup, or one that did not finish"
        ) from None
    except (OSError, ValueError) as exc:
        raise BackupError(f"{src / MANIFEST} cannot be read: {exc}") from None
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{src / MANIFEST} is not a manifest of format {FORMAT!r}")
    bad: list[str] = []
    expected = {str(Path(STATE_DIR) / rel): facts for rel, facts in manifest["files"].items()}
    expected[INDEX_COPY] = manifest["index"]
    for rel, facts in expected.items():
        try:
            sha, size = _digest(src / rel)
        except OSError as exc:
            bad.append(f"{rel} ({exc.strerror})")
            continue
        if (sha, size) != (facts["sha256"], facts["size"]):
            bad.append(f"{rel} (checksum differs)")
    if bad:
        raise BackupError(
            f"the backup in {src} is damaged, nothing was restored: " + ", ".join(bad)
        )
    return manifest


def restore_backup(settings: Settings, src: Path) -> RestoreReport:
    """Put the backup `src` into the empty state folder of `settings`."""
    state = settings.state
    manifest = read_manifest(src)
    index = check_index_copy(src / INDEX_COPY)
    if index.problems:
        raise BackupError(
            f"the index in {src} fails SQLite's integrity check: {'; '.join(index.problems[:3])}"
        )
    db = sqlite_path(settings.database_url)
    leftovers = [p.name for p in state.iterdir() if p.name != LOCK_FILE] if state.is_dir() else []
    if leftovers or (state.exists() and not state.is_dir()):
        raise BackupError(
            f"the state folder {state} is not empty (it holds {', '.join(sorted(leftovers)[:5])}): "
            "restore goes only into an empty state folder, never over a CA; move it aside first"
        )
    if db.exists():
        raise BackupError(f"the index {db} exists: restore never overwrites an index")
    ensure_dir(state, 0o700)
    lock = StateLock(state)
    if not lock.acquire():
        raise BackupError(f"a certdrop daemon holds {state}; stop it first")
    left_out: list[str] = []
    try:
        ensure_dir(db.parent, 0o700)
        copy_file(src / INDEX_COPY, db, 0o600)
        for rel, mode in sorted(manifest["dirs"].items()):
            ensure_dir(state / rel, int(mode, 8))
        # the CA certificate last: a CA exists once ca.cer exists
        order = sorted(manifest["files"], key=lambda r: (r in (CA_KEY, CA_CERT), r == CA_CERT, r))
        restored = 0
        for rel in order:
            if Path(rel).name in CRL_FILES:
                left_out.append(rel)
                continue
            copy_file(src / STATE_DIR / rel, state / rel, int(manifest["files"][rel]["mode"], 8))
            restored += 1
        Store(settings.database_url).open().close()  # an older schema is brought forward
    finally:
        lock.release()
    return RestoreReport(
        dt.datetime.fromisoformat(manifest["created_at"]), index, restored, left_out
    )
