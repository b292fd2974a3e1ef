"""A consistent copy of the index while the daemon writes to it, and putting one back.

SQLite: the database's own online backup API (`sqlite3.Connection.backup`), in one
step: it reads one snapshot of the database (WAL mode lets the daemon keep committing
meanwhile) and writes it into a new file, never a copy of the live file and its -wal.
Other databases have their own tools (pg_dump); certdrop refuses to pretend.

The stdlib's sqlite3 only, no SQLAlchemy: `certdrop backup` is a short-lived process
that often runs beside a busy daemon, and its start-up is most of its time there.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from ..errors import StoreError
from ..fsutil import fsync_dir


@dataclass(frozen=True)
class IndexCopy:
    """What a copy of the index holds (read from the copy itself)."""

    schema_version: int
    certificates: int
    crl_number: int  # the last CRL number the index had claimed
    problems: tuple[str, ...]  # SQLite's check of the copy: () when it is sound
    sha256: str = ""  # of the copy's bytes (set by backup_index)
    size: int = 0


def sqlite_path(url: str) -> Path:
    """The file of a SQLite index URL (StoreError for another database or :memory:)."""
    scheme, sep, rest = url.partition("://")
    driver = scheme.split("+", 1)
    path = unquote(rest[1:].split("?", 1)[0]) if rest.startswith("/") else ""
    if (
        not sep
        or driver[0] != "sqlite"
        or driver[1:] not in ([], ["pysqlite"])
        or not path
        or path == ":memory:"
    ):
        shown = f"{scheme}://***@{url.rsplit('@', 1)[1]}" if "@" in url else url  # no password
        raise StoreError(
            f"the index {shown} is not a SQLite file: back it up with the database's own "
            "tools (pg_dump for PostgreSQL)"
        )
    return Path(path)


def backup_index(db: Path, dest: Path) -> IndexCopy:
    """Copy the SQLite index `db` into the new file `dest` (0600) through SQLite's online
    backup; then check the copy and take its SHA-256, the two side by side."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    os.close(fd)
    try:
        try:
            # mode=rw: an index that is not there is an error, never a new empty one
            source = sqlite3.connect(f"file:{db}?mode=rw", uri=True)
        except sqlite3.Error as exc:
            raise StoreError(f"the index {db} cannot be opened: {exc}") from None
        try:
            target = sqlite3.connect(tmp)
            try:
                # made durable once below: no journal or sync of its own while it is copied
                target.execute("PRAGMA journal_mode = OFF")
                target.execute("PRAGMA synchronous = OFF")
                source.backup(target)  # all pages in one step: one snapshot
                target.execute("PRAGMA journal_mode = DELETE")  # a single file, no -wal
            finally:
                target.close()
        finally:
            source.close()
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        facts = _check_and_digest(tmp)
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    except sqlite3.Error as exc:
        raise StoreError(f"the online backup of the index failed: {exc}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return facts


def _check_and_digest(path: Path) -> IndexCopy:
    """SQLite's quick check of the copy, and its SHA-256, in two threads (both let go of
    the GIL): beside a busy daemon the backup gets a second core's share."""
    digest = hashlib.sha256()
    size = 0

    def read() -> None:
        nonlocal size
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)

    reader = threading.Thread(target=read, name="certdrop-backup-digest")
    reader.start()
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            facts = _facts(conn, full=False)
        finally:
            conn.close()
    finally:
        reader.join()
    return IndexCopy(
        facts.schema_version,
        facts.certificates,
        facts.crl_number,
        facts.problems,
        digest.hexdigest(),
        size,
    )


def check_index_copy(path: Path) -> IndexCopy:
    """Open a copy read-only and run SQLite's full integrity check on it."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise StoreError(f"{path} cannot be opened as a SQLite database: {exc}") from None
    try:
        return _facts(conn, full=True)
    except sqlite3.Error as exc:
        raise StoreError(f"{path} is not a certdrop index: {exc}") from None
    finally:
        conn.close()


def _facts(conn: sqlite3.Connection, *, full: bool) -> IndexCopy:
    check = "integrity_check" if full else "quick_check"
    problems = [str(r[0]) for r in conn.execute(f"PRAGMA {check}")]
    problems = [] if problems == ["ok"] else problems
    problems += [str(tuple(r)) for r in conn.execute("PRAGMA foreign_key_check")]
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    (count,) = conn.execute("SELECT count(*) FROM certificates").fetchone()
    return IndexCopy(
        schema_version=int(meta.get("schema_version", 0)),
        certificates=int(count),
        crl_number=int(meta.get("crl_number", 0)),
        problems=tuple(problems),
    )
