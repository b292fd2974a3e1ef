"""A certificate's revocation status by serial, read-only: what the OCSP responder asks.

`certdrop serve` may not write the index (its unit makes the state folder read-only).
SQLite reads a WAL database it may not write as long as the `-wal` and `-shm` files
exist, which they do while a writer (the daemon) or a reader (serve itself) has the
database open. When neither exists (every connection closed, the last one checkpointed
and removed them) and they cannot be created, nothing is being written either: the
database file alone is complete, and it is read as immutable until a `-wal` appears
again (the daemon started), then normally. Each lookup is one statement in a
transaction of its own: a revocation committed before it is seen.
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

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from ..errors import IndexUnavailable
from .schema import certificates, from_epoch

_STATUS = sa.select(
    certificates.c.status, certificates.c.revoked_at, certificates.c.revocation_reason
).where(certificates.c.serial == sa.bindparam("serial"))


@dataclass(frozen=True)
class CertStatus:
    """What the index says of one certificate this CA issued."""

    revoked: bool
    revoked_at: dt.datetime | None = None
    reason: str | None = None


class StatusReader:
    """Read-only status lookups (see the module docstring)."""

    def __init__(self, url: str) -> None:
        self.url = sa.make_url(url)
        self._sqlite_path: Path | None = None
        if self.url.get_backend_name() == "sqlite" and self.url.database not in (
            None,
            "",
            ":memory:",
        ):
            self._sqlite_path = Path(self.url.database).resolve()
        self._engine: sa.Engine | None = None
        self._immutable = False
        self._raw: Any = None  # SQLite: the DB-API connection, statements straight to it
        self._sql = ""
        self._lock = threading.Lock()

    # --- connections -------------------------------------------------------------------------------
    def _sqlite_url(self, immutable: bool) -> str:
        assert self._sqlite_path is not None
        query = "mode=ro&immutable=1" if immutable else "mode=ro"
        return f"sqlite:///file:{quote(str(self._sqlite_path))}?{query}&uri=true"

    def _open(self) -> None:
        if self._sqlite_path is None:
            self._engine = sa.create_engine(self.url, pool_pre_ping=True)
            return
        if not self._sqlite_path.exists():
            raise IndexUnavailable(f"the index {self._sqlite_path} does not exist (yet)")
        wal = self._sqlite_path.with_name(self._sqlite_path.name + "-wal")
        for immutable in (False, True):
            if immutable and wal.exists():
                break  # a writer is at work: never read the file as immutable then
            engine = sa.create_engine(
                self._sqlite_url(immutable),
                poolclass=sa.pool.StaticPool,
                connect_args={"check_same_thread": False},  # used under self._lock
            )
            try:
                raw = engine.raw_connection().driver_connection
                assert raw is not None
                raw.isolation_level = None  # autocommit: each statement sees the last commit
                self._sql = str(_STATUS.compile(dialect=engine.dialect))
                raw.execute(self._sql, ("",)).fetchall()
            except (SQLAlchemyError, sqlite3.Error) as exc:
                engine.dispose()
                last: BaseException = exc
                continue
            self._engine, self._raw, self._immutable = engine, raw, immutable
            return
        raise IndexUnavailable(f"the index {self._sqlite_path} cannot be read: {last}")

    def _close(self) -> None:
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
            if self._engine is None:
                self._open()
            try:
                row = self._lookup(serial)
            except (SQLAlchemyError, sqlite3.Error) as exc:
                self._close()  # opened again on the next lookup
                raise IndexUnavailable(f"the index cannot be read right now: {exc}") from None
        if row is None:
            return None
        status, revoked_at, reason = row
        if status != "revoked":
            return CertStatus(False)
        return CertStatus(True, from_epoch(revoked_at), reason)

    def _lookup(self, serial: str) -> Any:
        if self._raw is not None:
            return self._raw.execute(self._sql, (serial,)).fetchone()
        assert self._engine is not None
        with self._engine.connect() as conn:
            return conn.execute(_STATUS, {"serial": serial}).first()

    def _wal_exists(self) -> bool:
        assert self._sqlite_path is not None
        return os.path.exists(f"{self._sqlite_path}-wal")
