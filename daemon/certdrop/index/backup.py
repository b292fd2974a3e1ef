"""A consistent copy of the index while the daemon writes to it, and putting one back.

SQLite: the database's own online backup API (`sqlite3.Connection.backup`), in one
step: it reads one snapshot of the database (WAL mode lets the daemon keep committing
meanwhile) and writes it into a new file, never a copy of the live file and its -wal.
Other databases have their own tools (pg_dump); certdrop refuses to pretend.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from ..errors import StoreError
from ..fsutil import fsync_dir
from .store import Store


@dataclass(frozen=True)
class IndexCopy:
    """What a copy of the index holds (read from the copy itself)."""

    schema_version: int
    certificates: int
    crl_number: int  # the last CRL number the index had claimed
    problems: tuple[str, ...]  # SQLite's check of the copy: () when it is sound


def sqlite_path(url: str) -> Path:
    """The file of a SQLite index URL (StoreError for another database or :memory:)."""
    parsed = make_url(url)
    if (
        parsed.get_backend_name() != "sqlite"
        or not parsed.database
        or parsed.database == ":memory:"
    ):
        raise StoreError(
            f"the index {parsed.render_as_string(hide_password=True)} is not a SQLite file: back "
            "it up with the database's own tools (pg_dump for PostgreSQL)"
        )
    return Path(parsed.database)


def backup_index(store: Store, dest: Path) -> IndexCopy:
    """Copy the index into the new file `dest` (0600) through SQLite's online backup, and
    check the copy."""
    sqlite_path(store.url)
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    os.close(fd)
    try:
        with store.engine.connect() as conn:
            source = conn.connection.driver_connection
            assert isinstance(source, sqlite3.Connection)
            target = sqlite3.connect(tmp)
            try:
                source.backup(target)  # all pages in one step: one snapshot
                facts = _facts(target, full=False)
                target.execute("PRAGMA journal_mode = DELETE")  # a single file, no -wal
            finally:
                target.close()
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    except sqlite3.Error as exc:
        raise StoreError(f"the online backup of the index failed: {exc}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return facts


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
