"""The certificate index: SQLAlchemy Core over SQLite (WAL) by default.

The database URL comes from `[paths] database`; "" means a SQLite file in the state
folder. The schema (schema.py) is created or migrated forward on open. `Transaction`
is the handle of one index transaction, the type other packages name in their hints.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeAlias

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError, SQLAlchemyError

from ..errors import IndexUnavailable, NotFoundError, SerialCollision, StoreError
from . import schema
from .schema import (
    EMAIL_ATTR,
    FINGERPRINT_KEY_LENGTH,
    cert_attrs,
    certificates,
    fingerprint_key,
    from_epoch,
    hosts,
    meta,
    to_epoch,
)

Transaction: TypeAlias = Connection  # one index transaction (from Store.begin)

IDLE_IN_TRANSACTION_SECONDS = 60.0  # PostgreSQL ends a session idle that long in a transaction
# SQLite with the checkpoint thread: a writer still copies the WAL into the file itself
# once it holds this many pages (~40 MB), should that thread fall behind
WAL_BOUND_PAGES = 10_000

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CertRecord:
    serial: str
    subject: str
    common_name: str
    email: str
    not_before: dt.datetime
    not_after: dt.datetime
    profile: str
    request_name: str
    request_fingerprint: str
    status: str  # stored status: valid, revoked, superseded
    revoked_at: dt.datetime | None
    revocation_reason: str | None
    superseded_by: str | None
    issued_at: dt.datetime
    owner: str
    source: str
    key_generated: bool
    der: bytes
    issuer: str | None = None  # the CA that issued it (cas.id); None: not yet claimed

    def effective_status(self, now: dt.datetime) -> str:
        if self.status == "valid" and self.not_after <= now:
            return "expired"
        return self.status

    def as_json(self, now: dt.datetime) -> dict[str, Any]:
        return {
            "serial": self.serial,
            "subject": self.subject,
            "common_name": self.common_name,
            "email": self.email,
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
            "status": self.effective_status(now),
            "profile": self.profile,
            "request_name": self.request_name,
            "request_fingerprint": self.request_fingerprint,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "revocation_reason": self.revocation_reason,
            "superseded_by": self.superseded_by,
            "issued_at": self.issued_at.isoformat(),
            "owner": self.owner,
            "source": self.source,
            "ca": self.issuer,  # the key id of the CA that issued it (status --json: cas)
        }


def cert_record(row: Any) -> CertRecord:
    return cert_record_of(row._mapping)


def cert_record_of(m: Mapping[str, Any]) -> CertRecord:
    return CertRecord(
        serial=m["serial"],
        subject=m["subject"],
        common_name=m["common_name"],
        email=m["email"],
        not_before=from_epoch(m["not_before"]),  # type: ignore[arg-type]
        not_after=from_epoch(m["not_after"]),  # type: ignore[arg-type]
        profile=m["profile"],
        request_name=m["request_name"],
        request_fingerprint=m["request_fingerprint"],
        status=m["status"],
        revoked_at=from_epoch(m["revoked_at"]),
        revocation_reason=m["revocation_reason"],
        superseded_by=m["superseded_by"],
        issued_at=from_epoch(m["issued_at"]),  # type: ignore[arg-type]
        owner=m["owner"],
        source=m["source"],
        key_generated=bool(m["key_generated"]),
        der=bytes(m["der"]) if "der" in m else b"",  # b"": not read (listing.list_certs der=False)
        issuer=m["issuer"],
    )


@dataclass(frozen=True)
class NewCertificate:
    serial: str
    subject: str
    common_name: str
    email: str
    not_before: dt.datetime
    not_after: dt.datetime
    profile: str
    request_name: str
    request_fingerprint: str
    issued_at: dt.datetime
    der: bytes
    attrs: Sequence[tuple[str, str]] = ()  # the subject's (short name, value) pairs
    # every e-mail address the certificate carries (subject and subjectAltName), for
    # lookups; `email` and the subject's emailAddress values are added to these
    emails: Sequence[str] = ()
    owner: str = ""
    source: str = "issued"
    status: str = "valid"
    revoked_at: dt.datetime | None = None
    revocation_reason: str | None = None
    key_generated: bool = False
    issuer: str | None = None  # the CA that issued it (cas.id)


def _attr_rows(cert: NewCertificate) -> list[dict[str, str]]:
    """The cert_attrs rows of a certificate: its subject, and its e-mail addresses."""
    rows = [{"serial": cert.serial, "attr": a, "value": v.casefold()} for a, v in cert.attrs]
    subject_emails = (v for a, v in cert.attrs if a == "emailAddress")
    emails = dict.fromkeys(e.casefold() for e in (*cert.emails, cert.email, *subject_emails) if e)
    rows += [{"serial": cert.serial, "attr": EMAIL_ATTR, "value": e} for e in emails]
    return rows


# and what to do when a URL names another one that is not installed
_DEFAULT_DRIVERS = {"postgresql": "postgresql+psycopg"}
_DRIVER_HINTS = {
    "postgresql": "certdrop[postgresql] brings psycopg 3: postgresql+psycopg://USER@HOST/DB"
}


def shown_url(url: str) -> str:
    """`url` as the operator wrote it, without its password (for messages)."""
    try:
        password = sa.engine.make_url(url).password
    except (SQLAlchemyError, ValueError):
        return url if "@" not in url else "(an unreadable URL)"
    if not password:
        return url
    scheme, sep, rest = url.partition("://")
    auth, at, host = rest.rpartition("@")
    user = auth.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***{at}{host}" if at else "(a URL with a password)"


def _one_line(error: object) -> str:
    """A driver's message (PostgreSQL's run over several lines) as one line."""
    return " ".join(str(error).split())


class Store:
    def __init__(
        self,
        url: str,
        named: str = "[paths] database",
        idle_in_transaction: float = IDLE_IN_TRANSACTION_SECONDS,
        checkpoint_thread: bool = False,
    ) -> None:
        """The index at `url` (not opened yet); `named`: where the URL came from, for
        the messages about a URL that cannot be used; `idle_in_transaction`: seconds
        after which PostgreSQL ends a session idle inside a transaction;
        `checkpoint_thread`: on SQLite, the WAL is copied into the file by a thread of
        its own (the daemon), not by the transaction whose commit filled it."""
        self.url = url
        shown = shown_url(url)
        try:
            parsed = sa.engine.make_url(url)
            parsed = parsed.set(
                drivername=_DEFAULT_DRIVERS.get(parsed.drivername, parsed.drivername)
            )
            # a server may restart or fail over (Patroni, repmgr): a pooled connection
            # is tried before use; SQLite's file needs no such check
            options: dict[str, Any] = {}
            if parsed.get_backend_name() != "sqlite":
                options["pool_pre_ping"] = True
            if parsed.get_backend_name() == "postgresql" and "options" not in parsed.query:
                # a process frozen inside a transaction (SIGSTOP, a paused VM) would hold
                # its row locks, and keep the other hosts from taking its claims over, for
                # as long as it is frozen: the server ends such a session
                timeout_ms = max(1, round(idle_in_transaction * 1000))
                options["connect_args"] = {
                    "options": f"-c idle_in_transaction_session_timeout={timeout_ms}"
                }
            self.engine: Engine = sa.create_engine(parsed, **options)
        except ImportError as exc:
            hint = _DRIVER_HINTS.get(parsed.get_backend_name(), "")
            raise StoreError(
                f"{named} = {shown!r}: its driver is not installed "
                f"({exc.name or exc})" + (f"; {hint}" if hint else "")
            ) from None
        except (SQLAlchemyError, ValueError) as exc:
            raise StoreError(
                f"{named} = {shown!r}: cannot use it ({exc}); a SQLAlchemy URL is expected, "
                "e.g. postgresql://USER@HOST/DB or sqlite:////PATH/index.sqlite"
            ) from None
        self.dialect = self.engine.dialect.name
        # a daemon sharing the index with other hosts: its id; certificates are recorded
        # only while this host has not been taken for dead (see _fence)
        self.fence_host: str | None = None
        self._checkpointer: _Checkpointer | None = None
        if self.dialect == "sqlite":
            pragmas = _sqlite_pragmas
            if checkpoint_thread:
                self._checkpointer = _Checkpointer(self.engine)
                pragmas = functools.partial(_sqlite_pragmas, wal_pages=WAL_BOUND_PAGES)
            sa.event.listen(self.engine, "connect", pragmas)
            sa.event.listen(self.engine, "begin", _sqlite_begin_immediate)

    # --- lifecycle ---------------------------------------------------------------------------
    def open(self) -> Store:
        """Create or migrate the schema; safe to call from several processes and hosts."""
        try:
            with self.engine.begin() as conn:
                schema.install(conn)
        except (OperationalError, InterfaceError) as exc:
            raise StoreError(
                f"cannot open the index {shown_url(self.url)}: {_one_line(exc.orig)}"
            ) from None
        if self._checkpointer is not None:
            self._checkpointer.start()
        return self

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
        self.engine.dispose()

    @contextmanager
    def begin(self) -> Iterator[Transaction]:
        """One transaction; a full disk or an I/O error becomes `IndexUnavailable`."""
        checkpointer = self._checkpointer
        wrote = False
        try:
            with self.engine.begin() as conn:
                if checkpointer is None:
                    yield conn
                else:
                    before = _sqlite_changes(conn)
                    yield conn
                    wrote = _sqlite_changes(conn) != before
        except OperationalError as exc:
            raise IndexUnavailable(
                f"the index {shown_url(self.url)} cannot be used right now: {_one_line(exc.orig)}"
            ) from None
        if wrote and checkpointer is not None:
            checkpointer.wake()  # committed: its pages are in the WAL

    def integrity_check(self) -> list[str]:
        """SQLite's integrity and foreign-key checks; [] when consistent."""
        problems: list[str] = []
        with self.engine.connect() as conn:
            if self.engine.dialect.name == "sqlite":
                res = [r[0] for r in conn.exec_driver_sql("PRAGMA integrity_check")]
                if res != ["ok"]:
                    problems += res
                problems += [
                    str(tuple(r)) for r in conn.exec_driver_sql("PRAGMA foreign_key_check")
                ]
            orphans = conn.execute(
                sa.select(sa.func.count())
                .select_from(
                    cert_attrs.outerjoin(certificates, cert_attrs.c.serial == certificates.c.serial)
                )
                .where(certificates.c.serial.is_(None))
            ).scalar_one()
            if orphans:
                problems.append(f"{orphans} attribute rows without a certificate")
        return problems

    # --- certificates ------------------------------------------------------------------------
    def add_certificate(self, conn: Transaction, cert: NewCertificate) -> None:
        try:
            with conn.begin_nested():
                conn.execute(
                    sa.insert(certificates).values(
                        serial=cert.serial,
                        subject=cert.subject,
                        common_name=cert.common_name,
                        email=cert.email,
                        not_before=to_epoch(cert.not_before),
                        not_after=to_epoch(cert.not_after),
                        profile=cert.profile,
                        request_name=cert.request_name,
                        request_fingerprint=cert.request_fingerprint,
                        status=cert.status,
                        revoked_at=to_epoch(cert.revoked_at) if cert.revoked_at else None,
                        revocation_reason=cert.revocation_reason,
                        issued_at=to_epoch(cert.issued_at),
                        owner=cert.owner,
                        source=cert.source,
                        key_generated=cert.key_generated,
                        der=cert.der,
                        issuer=cert.issuer,
                    )
                )
        except IntegrityError:
            raise SerialCollision(cert.serial) from None
        rows = _attr_rows(cert)
        if rows:
            conn.execute(sa.insert(cert_attrs), rows)

    def serial_exists(self, conn: Transaction, serial: str) -> bool:
        return (
            conn.execute(
                sa.select(certificates.c.serial).where(certificates.c.serial == serial)
            ).first()
            is not None
        )

    def supersede(self, conn: Transaction, old_serials: Iterable[str], new_serial: str) -> None:
        olds = list(old_serials)
        if olds:
            conn.execute(
                sa.update(certificates)
                .where(certificates.c.serial.in_(olds), certificates.c.status == "valid")
                .values(status="superseded", superseded_by=new_serial)
            )

    def existing_valid(
        self, conn: Transaction, keys: Iterable[tuple[str, str]], now: dt.datetime
    ) -> dict[tuple[str, str], list[CertRecord]]:
        """Valid certificates carrying any of the (attribute, folded value) pairs.

        Per attribute, the serials carrying its values (a search of ix_cert_attrs_value),
        then those certificates by primary key, the valid ones kept here. Each statement
        has one index that answers all of its conditions: no plan that hangs on the
        planner's estimates, which PostgreSQL has none of in a new index during a burst
        (a join, or a status condition, had it read every valid certificate per batch).
        tests/unit/index/test_store.py checks the plans on both backends.
        """
        by_attr: dict[str, list[str]] = {}
        for attr, value in dict.fromkeys(keys):
            by_attr.setdefault(attr, []).append(value)
        out: dict[tuple[str, str], list[CertRecord]] = {}
        cutoff = from_epoch(to_epoch(now))  # whole seconds, as the index keeps times
        for attr, values in by_attr.items():
            for start in range(0, len(values), 500):
                pairs = conn.execute(
                    _SERIALS_WITH_ATTR, {"attr": attr, "values": values[start : start + 500]}
                ).all()
                wanted = list(dict.fromkeys(serial for serial, _value in pairs))
                valid: dict[str, CertRecord] = {}
                for first in range(0, len(wanted), 500):
                    for r in conn.execute(BY_SERIALS, {"serials": wanted[first : first + 500]}):
                        rec = cert_record(r)
                        if rec.status == "valid" and rec.not_after > cutoff:  # type: ignore[operator]
                            valid[rec.serial] = rec
                for serial, value in pairs:
                    if serial in valid:
                        out.setdefault((attr, value), []).append(valid[serial])
        return out

    def by_fingerprints(
        self, conn: Transaction, fingerprints: Iterable[str]
    ) -> dict[str, list[CertRecord]]:
        wanted = list(dict.fromkeys(fingerprints))
        out: dict[str, list[CertRecord]] = {}
        for start in range(0, len(wanted), 500):
            fps = wanted[start : start + 500]
            keys = sorted({f"{p}{fp[:FINGERPRINT_KEY_LENGTH]}" for fp in fps for p in "01"})
            rows = conn.execute(_BY_FINGERPRINTS, {"keys": keys, "fps": fps})
            for r in rows:
                rec = cert_record(r)
                out.setdefault(rec.request_fingerprint, []).append(rec)
        return out

    def fold_fingerprints(self, conn: Transaction, limit: int) -> int:
        """Move up to `limit` of the new certificates' entries of ix_certificates_request_key
        among the others (schema.py): the random writes into a big index that issuing
        them did not make. How many were moved; 0 when none was left."""
        pending = sa.select(certificates.c.serial).where(*_PENDING)
        if conn.dialect.name == "postgresql":
            pending = pending.with_for_update(skip_locked=True)  # another host's are its own
        result = conn.execute(
            sa.update(certificates)
            .where(certificates.c.serial.in_(pending.limit(limit).scalar_subquery()))
            .values(fingerprint_pending=0)
        )
        return int(result.rowcount)

    def pending_fingerprints(self, conn: Transaction) -> int:
        """How many certificates' entries are still among the new ones."""
        return int(
            conn.execute(
                sa.select(sa.func.count()).select_from(certificates).where(*_PENDING)
            ).scalar_one()
        )

    def existing_serials(self, conn: Transaction, serials: Iterable[str]) -> set[str]:
        wanted = list(serials)
        found: set[str] = set()
        for start in range(0, len(wanted), 500):
            found.update(
                conn.execute(EXISTING_SERIALS, {"serials": wanted[start : start + 500]}).scalars()
            )
        return found

    def add_certificates(self, conn: Transaction, certs: Sequence[NewCertificate]) -> None:
        """Insert many certificates with one statement per table (executemany)."""
        if not certs:
            return
        if self.fence_host is not None:
            _fence(conn, self.fence_host)
        insert_many(
            conn,
            certificates,
            [
                {
                    "serial": c.serial,
                    "subject": c.subject,
                    "common_name": c.common_name,
                    "email": c.email,
                    "not_before": to_epoch(c.not_before),
                    "not_after": to_epoch(c.not_after),
                    "profile": c.profile,
                    "request_name": c.request_name,
                    "request_fingerprint": c.request_fingerprint,
                    "status": c.status,
                    "revoked_at": to_epoch(c.revoked_at) if c.revoked_at else None,
                    "revocation_reason": c.revocation_reason,
                    "superseded_by": None,
                    "issued_at": to_epoch(c.issued_at),
                    "owner": c.owner,
                    "source": c.source,
                    "key_generated": c.key_generated,
                    "der": c.der,
                    "issuer": c.issuer,
                    "fingerprint_pending": 1,  # among the new ones until fold_fingerprints
                }
                for c in certs
            ],
        )
        attrs = [row for c in certs for row in _attr_rows(c)]
        if attrs:
            insert_many(conn, cert_attrs, attrs)

    def get(self, conn: Transaction, serial: str) -> CertRecord | None:
        row = conn.execute(sa.select(certificates).where(certificates.c.serial == serial)).first()
        return cert_record(row) if row is not None else None

    def revoke(self, conn: Transaction, serial: str, reason: str, when: dt.datetime) -> CertRecord:
        rec = self.get(conn, serial)
        if rec is None:
            raise NotFoundError(f"no certificate with serial {serial} in the index")
        if rec.status == "revoked":
            raise NotFoundError(
                f"certificate {serial} ({rec.subject}) is already revoked "
                f"(since {rec.revoked_at:%Y-%m-%d %H:%M} UTC, reason {rec.revocation_reason})"
            )
        conn.execute(
            sa.update(certificates)
            .where(certificates.c.serial == serial)
            .values(status="revoked", revoked_at=to_epoch(when), revocation_reason=reason)
        )
        return rec

    # --- CRL numbers ----------------------------------------------------------------------------
    def claim_crl_number(self, conn: Transaction, at_least: int) -> int:
        """The number of the next CRL: `at_least`, or one more than the last one claimed
        when that is larger; recorded as the last one. The row stays locked until the transaction
        ends, so that hosts sharing the index never draw the same number."""
        current = int(
            conn.execute(
                sa.select(meta.c.value).where(meta.c.key == "crl_number").with_for_update()
            ).scalar_one()
        )
        number = max(at_least, current + 1)
        conn.execute(sa.update(meta).where(meta.c.key == "crl_number").values(value=str(number)))
        return number

    def get_meta(self, conn: Transaction, key: str) -> str | None:
        return conn.execute(sa.select(meta.c.value).where(meta.c.key == key)).scalar()

    def set_meta(self, conn: Transaction, key: str, value: str) -> None:
        update = sa.update(meta).where(meta.c.key == key).values(value=value)
        if conn.execute(update).rowcount:
            return
        try:
            with conn.begin_nested():
                conn.execute(sa.insert(meta).values(key=key, value=value))
        except IntegrityError:  # another host inserted it meanwhile
            conn.execute(update)


# The statements the issue layer runs for every batch, built once: building a select
# is most of the cost of a small query (SQLAlchemy caches the compiled form by a key
# it computes from the statement object, once for an object that is reused).
_SERIALS_WITH_ATTR = sa.select(cert_attrs.c.serial, cert_attrs.c.value).where(
    cert_attrs.c.value.in_(sa.bindparam("values", expanding=True)),
    cert_attrs.c.attr == sa.bindparam("attr"),
)
_BY_FINGERPRINTS = (
    sa.select(certificates)
    .where(  # ix_certificates_request_key: the new entries and the others, by key
        fingerprint_key.in_(sa.bindparam("keys", expanding=True)),
        certificates.c.request_fingerprint.in_(sa.bindparam("fps", expanding=True)),
    )
    .order_by(certificates.c.issued_at.desc())
)
# the new entries of ix_certificates_request_key: its keys that begin with "1"
_PENDING = (fingerprint_key >= sa.literal_column("'1'"), certificates.c.fingerprint_pending == 1)
EXISTING_SERIALS = sa.select(certificates.c.serial).where(
    certificates.c.serial.in_(sa.bindparam("serials", expanding=True))
)
BY_SERIALS = sa.select(certificates).where(
    certificates.c.serial.in_(sa.bindparam("serials", expanding=True))
)  # EXISTING_SERIALS and BY_SERIALS: listing.lookup runs them too


def _fence(conn: Transaction, host: str) -> None:
    """Refuse to record for a host taken for dead: its claims belong to another host now.

    The host's row is share-locked to the end of the transaction: a host taking over its
    claims waits for this commit, and then sees what it recorded."""
    query = sa.select(hosts.c.id).where(hosts.c.id == host, hosts.c.retired_at.is_(None))
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(read=True)
    if conn.execute(query).first() is None:
        raise IndexUnavailable(
            f"this host ({host}) was taken for dead and its claimed requests were taken "
            "over by another host; nothing is recorded for them here"
        )


def insert_many(conn: Transaction, table: sa.Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """INSERT many rows straight to the driver: one executemany (SQLite), or one
    statement of arrays (PostgreSQL, where each row of an executemany still costs).

    SQLAlchemy's per-row parameter processing is most of the cost of a batch of
    thousands; the values here are plain ints, strings and bytes already, which every
    driver takes as they are. The statement is still compiled for the dialect.
    """
    if conn.dialect.name == "postgresql":
        # one statement whatever the number of rows: the columns as arrays, unnested
        keys = tuple(rows[0])
        conn.exec_driver_sql(
            _unnest_sql(table, keys, conn.dialect), tuple([r[k] for r in rows] for k in keys)
        )
        return
    sql, order = _insert_sql(table, tuple(rows[0]), conn.dialect)
    if order is not None:
        params: list[Any] = [tuple(r[k] for k in order) for r in rows]
    else:
        params = [dict(r) for r in rows]
    conn.exec_driver_sql(sql, params)


@functools.lru_cache(maxsize=64)
def _insert_sql(
    table: sa.Table, keys: tuple[str, ...], dialect: Any
) -> tuple[str, tuple[str, ...] | None]:
    """The INSERT for these columns in the dialect's SQL, and the order of positional
    parameters (None: named parameters)."""
    compiled = sa.insert(table).compile(dialect=dialect, column_keys=list(keys))
    order = tuple(compiled.positiontup or ()) if compiled.positional else None
    return str(compiled), order


@functools.lru_cache(maxsize=64)
def _unnest_sql(table: sa.Table, keys: tuple[str, ...], dialect: Any) -> str:
    """PostgreSQL's INSERT of many rows given as one array per column."""
    arrays = ", ".join(f"%s::{table.c[k].type.compile(dialect=dialect)}[]" for k in keys)
    # names from the schema, values as parameters
    return f"INSERT INTO {table.name} ({', '.join(keys)}) SELECT * FROM unnest({arrays})"  # noqa: S608


def _sqlite_pragmas(dbapi_conn: Any, _record: Any, wal_pages: int | None = None) -> None:
    """`wal_pages`: the WAL's size at which a commit copies it into the file (a
    checkpoint); None: SQLite's 1,000 pages."""
    # let SQLAlchemy manage transactions (pysqlite's own handling is disabled)
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout = 30000")
    _sqlite_wal(cur)
    cur.execute("PRAGMA synchronous = FULL")
    if wal_pages is not None:
        cur.execute(f"PRAGMA wal_autocheckpoint = {int(wal_pages)}")
    cur.execute("PRAGMA foreign_keys = ON")
    cur.close()


def _sqlite_wal(cur: Any) -> None:
    """Switch to WAL. Connections opening a new database at once (hosts starting together)
    can get "database is locked" here without SQLite's busy handler: tried again, for as
    long as the busy timeout."""
    deadline = time.monotonic() + 30.0
    while True:
        try:
            cur.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _sqlite_changes(conn: Transaction) -> int:
    """The rows the SQLite connection has changed since it was opened."""
    return int(conn.connection.driver_connection.total_changes)  # type: ignore[union-attr]


class _Checkpointer:
    """Copies SQLite's WAL into the database file after the commits that wrote to it, in
    a thread and connection of its own (a PASSIVE checkpoint: writers and readers go on
    meanwhile). Into a big file this copy and its fsync cost as much as the commit: the
    transaction that filled the WAL does not wait for it. Should this thread fall
    behind, a writer checkpoints itself at WAL_BOUND_PAGES."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._wanted = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.checkpoints = 0  # done (status --json could show it; the tests read it)

    def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="index-checkpoint", daemon=True)
            self._thread.start()

    def wake(self) -> None:
        self._wanted.set()

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stopping = True
            self._wanted.set()
            thread.join()

    def _run(self) -> None:
        conn = self._engine.raw_connection()  # autocommit (isolation_level None)
        try:
            while True:
                self._wanted.wait()
                self._wanted.clear()
                if self._stopping:
                    return
                try:
                    conn.driver_connection.execute(  # type: ignore[union-attr]
                        "PRAGMA wal_checkpoint(PASSIVE)"
                    ).fetchall()
                    self.checkpoints += 1
                except sqlite3.Error as exc:
                    # the next commit's wakeup tries again; a writer's own at the bound
                    log.warning("copying the index's WAL into its file: %s", exc)
        finally:
            conn.close()


def _sqlite_begin_immediate(conn: Transaction) -> None:
    # take the write lock at BEGIN: two writers queue instead of failing on upgrade
    conn.exec_driver_sql("BEGIN IMMEDIATE")
