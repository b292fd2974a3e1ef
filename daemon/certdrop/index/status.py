"""A certificate's revocation status by serial, read-only: what the OCSP responder asks.

`certdrop serve` may not write the index (its unit makes the state folder read-only).
SQLite reads a WAL database it may not write as long as the `-wal` and `-shm` files
exist, which they do while a writer (the daemon) or a reader (serve itself) has the
database open. When neither exists (every connection closed, the last one checkpointed
and removed them) and they cannot be created, nothing is being written either: the
database file alone is complete, and it is read as immutable until a `-wal` appears
again (the daemon started), then normally. Each lookup is one statement in a
transaction of its own: a revocation committed before it is seen.

A SQLite file is read with the sqlite3 module alone, so that `certdrop serve` does not
load SQLAlchemy (about 12 MB in every process); another database goes through it.
"""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..errors import IndexUnavailable

# the one statement, as SQLAlchemy writes it for `certificates` (index/schema.py); the
# engine path below builds it from the table, tests/unit/index/test_status_lookup.py compares
SQLITE_CACHE_KIB = 256  # each serve worker's SQLite page cache (the default is 2,000 KiB)
SQLITE_STATUS = (
    "SELECT certificates.status, certificates.revoked_at, certificates.revocation_reason, "
    "certificates.issuer \nFROM certificates \nWHERE certificates.serial = ?"
)


@dataclass(frozen=True)
class CertStatus:
    """What the index says of one certificate this CA issued."""

    revoked: bool
    revoked_at: dt.datetime | None = None
    reason: str | None = None
    issuer: str | None = None  # the CA that issued it (cas.id; None: recorded before schema 6)


def sqlite_file(url: str) -> Path | None:
    """The database file of a plain SQLite URL (`sqlite:///PATH`, no query), else None."""
    scheme, sep, rest = url.partition(":///")
    if not sep or scheme.split("+")[0] != "sqlite" or not rest or "?" in rest:
        return None
    if rest == ":memory:":
        return None
    return Path(rest).resolve()


def status_statement() -> Any:
    """The lookup as a SQLAlchemy statement (databases other than a SQLite file)."""
    import sqlalchemy as sa

    from .schema import certificates

    return sa.select(
        certificates.c.status,
        certificates.c.revoked_at,
        certificates.c.revocation_reason,
        certificates.c.issuer,
    ).where(certificates.c.serial == sa.bindparam("serial"))


class StatusReader:
    """Read-only status lookups (see the module docstring)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._sqlite_path = sqlite_file(url)
        self._engine: Any = None  # another database: a SQLAlchemy engine
        self._statement: Any = None
        self._immutable = False
        self._raw: sqlite3.Connection | None = None  # a SQLite file: sqlite3 straight
        self._lock = threading.Lock()

    # --- connections -------------------------------------------------------------------------------
    def _sqlite_uri(self, immutable: bool) -> str:
        assert self._sqlite_path is not None
        query = "mode=ro&immutable=1" if immutable else "mode=ro"
        return f"file:{quote(str(self._sqlite_path))}?{query}"

    def _open(self) -> None:
        if self._sqlite_path is None:
            import sqlalchemy as sa

            self._statement = status_statement()
            self._engine = sa.create_engine(self.url, pool_pre_ping=True)
            return
        if not self._sqlite_path.exists():
            raise IndexUnavailable(f"the index {self._sqlite_path} does not exist (yet)")
        wal = self._sqlite_path.with_name(self._sqlite_path.name + "-wal")
        last: BaseException | None = None
        for immutable in (False, True):
            if immutable and wal.exists():
                break  # a writer is at work: never read the file as immutable then
            try:
                # autocommit (isolation_level None): each statement sees the last commit
                raw = sqlite3.connect(
                    self._sqlite_uri(immutable),
                    uri=True,
                    isolation_level=None,
                    check_same_thread=False,  # used under self._lock
                )
            except sqlite3.Error as exc:
                last = exc
                continue
            try:
                # point lookups by serial: the B-tree's upper pages fit in this, leaves come
                # from the OS page cache; each worker's memory stays the same on a big index
                raw.execute(f"PRAGMA cache_size = -{SQLITE_CACHE_KIB}")
                raw.execute(SQLITE_STATUS, ("",)).fetchall()
            except sqlite3.Error as exc:
                raw.close()
                last = exc
                continue
            self._raw, self._immutable = raw, immutable
            return
        raise IndexUnavailable(f"the index {self._sqlite_path} cannot be read: {last}")

    def _close(self) -> None:
        if self._raw is not None:
            self._raw.close()
        if self._engine is not None:
            self._engine.dispose()
        self._engine = self._raw = None

    def close(self) -> None:
        with self._lock:
            self._close()

    # --- lookups -----------------------------------------------------------------------------------
    def status(self, serial: str) -> CertStatus | None:
        """The status of the certificate with `serial` (upper-case hex, as the index writes
        it), None when this CA never issued it. IndexUnavailable when the index cannot be
        read now."""
        with self._lock:
            if self._immutable and self._wal_exists():
                self._close()  # the daemon started: read it as a WAL database again
            if self._engine is None and self._raw is None:
                self._open()
            try:
                row = self._lookup(serial)
            except _Unreadable as exc:
                self._close()  # opened again on the next lookup
                raise IndexUnavailable(
                    f"the index cannot be read right now: {exc.__cause__}"
                ) from None
        if row is None:
            return None
        status, revoked_at, reason, issuer = row
        if status != "revoked":
            return CertStatus(False, issuer=issuer)
        when = None if revoked_at is None else dt.datetime.fromtimestamp(revoked_at, dt.UTC)
        return CertStatus(True, when, reason, issuer)

    def _lookup(self, serial: str) -> Any:
        if self._raw is not None:
            try:
                return self._raw.execute(SQLITE_STATUS, (serial,)).fetchone()
            except sqlite3.Error as exc:
                raise _Unreadable from exc
        from sqlalchemy.exc import SQLAlchemyError

        assert self._engine is not None
        try:
            with self._engine.connect() as conn:
                return conn.execute(self._statement, {"serial": serial}).first()
        except SQLAlchemyError as exc:
            raise _Unreadable from exc

    def _wal_exists(self) -> bool:
        assert self._sqlite_path is not None
        return os.path.exists(f"{self._sqlite_path}-wal")


class _Unreadable(Exception):
    """A lookup failed in the database (its cause says how)."""
