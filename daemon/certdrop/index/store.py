"""The certificate index: SQLAlchemy Core over SQLite (WAL) by default.

The database URL comes from `[paths] database`; "" means a SQLite file in the state
folder. The schema (schema.py) is created or migrated forward on open. `Transaction`
is the handle of one index transaction, the type other packages name in their hints.
"""

from __future__ import annotations

import datetime as dt
import functools
import sqlite3
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
    cert_attrs,
    certificates,
    from_epoch,
    hosts,
    journal,
    meta,
    pending,
    to_epoch,
)

Transaction: TypeAlias = Connection  # one index transaction (from Store.begin)

IDLE_IN_TRANSACTION_SECONDS = 60.0  # PostgreSQL ends a session idle that long in a transaction


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


def _record(row: Any) -> CertRecord:
    return _record_of(row._mapping)


def _record_of(m: Mapping[str, Any]) -> CertRecord:
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
        der=bytes(m["der"]) if "der" in m else b"",  # b"": not read (list_certs der=False)
        issuer=m["issuer"],
    )


@dataclass(frozen=True)
class Match:
    """A certificate a reference names, and how: "serial", "request name", "CN", "e-mail"."""

    record: CertRecord
    matched_by: tuple[str, ...]


def serial_forms(ref: str) -> set[str]:
    """The index's spellings of the serial `ref` could be (hex, any case, colons or a 0x
    prefix allowed, with or without leading zeros); empty when `ref` is not hex."""
    cleaned = ref.replace(":", "").strip().upper().removeprefix("0X")
    if not cleaned or any(c not in "0123456789ABCDEF" for c in cleaned):
        return set()
    forms = {cleaned, cleaned.lstrip("0") or "0"}
    return forms | {("0" + f) if len(f) % 2 else f for f in forms}


def _contains(text: str) -> sa.ColumnElement[bool]:
    """Serial, request name, CN or an e-mail address contains `text`, in any case."""
    folded = text.strip().casefold()
    pattern = "%" + folded.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    conds: list[sa.ColumnElement[bool]] = [
        sa.func.lower(certificates.c.request_name).like(pattern, escape="\\"),
        certificates.c.serial.in_(
            sa.select(cert_attrs.c.serial).where(
                cert_attrs.c.attr.in_(("CN", EMAIL_ATTR)),
                cert_attrs.c.value.like(pattern, escape="\\"),
            )
        ),
    ]
    hexed = text.replace(":", "").strip().upper().removeprefix("0X")
    if hexed and all(c in "0123456789ABCDEF" for c in hexed):
        conds.append(certificates.c.serial.contains(hexed))
    return sa.or_(*conds)


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


@dataclass(frozen=True)
class PendingRecord:
    name: str
    profile: str
    fingerprint: str
    owner: str
    owner_uid: int | None
    received_at: dt.datetime
    subject: str
    decision: str | None
    decision_reason: str | None


# the driver certdrop's extras bring for a database that names none ("postgresql://"),
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
    ) -> None:
        """The index at `url` (not opened yet); `named`: where the URL came from, for
        the messages about a URL that cannot be used; `idle_in_transaction`: seconds
        after which PostgreSQL ends a session idle inside a transaction."""
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
        if self.dialect == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
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
        return self

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def begin(self) -> Iterator[Transaction]:
        """One transaction; a full disk or an I/O error becomes `IndexUnavailable`."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except OperationalError as exc:
            raise IndexUnavailable(
                f"the index {shown_url(self.url)} cannot be used right now: {_one_line(exc.orig)}"
            ) from None

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
                    for r in conn.execute(_BY_SERIALS, {"serials": wanted[first : first + 500]}):
                        rec = _record(r)
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
            rows = conn.execute(_BY_FINGERPRINTS, {"fps": wanted[start : start + 500]})
            for r in rows:
                rec = _record(r)
                out.setdefault(rec.request_fingerprint, []).append(rec)
        return out

    def existing_serials(self, conn: Transaction, serials: Iterable[str]) -> set[str]:
        wanted = list(serials)
        found: set[str] = set()
        for start in range(0, len(wanted), 500):
            found.update(
                conn.execute(_EXISTING_SERIALS, {"serials": wanted[start : start + 500]}).scalars()
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
                }
                for c in certs
            ],
        )
        attrs = [row for c in certs for row in _attr_rows(c)]
        if attrs:
            insert_many(conn, cert_attrs, attrs)

    def get(self, conn: Transaction, serial: str) -> CertRecord | None:
        row = conn.execute(sa.select(certificates).where(certificates.c.serial == serial)).first()
        return _record(row) if row is not None else None

    def lookup(self, conn: Transaction, ref: str) -> list[Match]:
        """Every certificate `ref` names, newest first, each with how it matched.

        `ref` is a serial (hex, any case, colons allowed; with a 0x prefix it is only a
        serial), a request name (exact), a CN or an e-mail address (subject or SAN; both
        case-insensitive). Each is a search of an index: the primary key,
        ix_certificates_request_name, ix_cert_attrs_value.
        """
        ref = ref.strip()
        how: dict[str, list[str]] = {}
        serials = serial_forms(ref)
        if serials:
            for serial in conn.execute(_EXISTING_SERIALS, {"serials": sorted(serials)}).scalars():
                how.setdefault(serial, []).append("serial")
        if ref and not (serials and ref.lower().startswith("0x")):
            for serial in conn.execute(_BY_REQUEST_NAME, {"name": ref}).scalars():
                how.setdefault(serial, []).append("request name")
            for serial, attr in conn.execute(_BY_NAME_OR_EMAIL, {"value": ref.casefold()}):
                how.setdefault(serial, []).append("CN" if attr == "CN" else "e-mail")
        if not how:
            return []
        records = [_record(r) for r in conn.execute(_BY_SERIALS, {"serials": list(how)})]
        records.sort(key=lambda r: (r.issued_at, r.serial), reverse=True)
        return [Match(r, tuple(dict.fromkeys(how[r.serial]))) for r in records]

    def find(self, conn: Transaction, ref: str) -> list[CertRecord]:
        """The certificates `ref` names (see `lookup`), newest first."""
        return [m.record for m in self.lookup(conn, ref)]

    def list_certs(
        self,
        conn: Transaction,
        *,
        status: str | None = None,
        now: dt.datetime | None = None,
        expiring_within: dt.timedelta | None = None,
        search: str | None = None,
        limit: int | None = None,
        der: bool = True,
    ) -> list[CertRecord]:
        """Certificates by status and expiry, in order of their end (`expiring_within`: a
        range of ix_certificates_expiry); `search`: those whose serial, request name, CN
        or e-mail address contains that text, in any case (no index answers "contains":
        a walk of the table). der=False: the records' `der` is b"", not read."""
        columns = [c for c in certificates.columns if der or c.name != "der"]
        q = _listing(columns, status, now, expiring_within, search, limit)
        # straight from the driver's cursor: SQLAlchemy's per-row work was most of the
        # time of a listing of tens of thousands
        names = [c.name for c in columns]
        return [_record_of(dict(zip(names, r, strict=True))) for r in _driver_rows(conn, q)]

    def list_lines(
        self,
        conn: Transaction,
        *,
        status: str | None = None,
        now: dt.datetime,
        expiring_within: dt.timedelta | None = None,
        search: str | None = None,
    ) -> list[tuple[str, str, str, str, str, str]]:
        """What `list_certs` selects, as the CLI's table shows it: (serial, status with
        "expired" for a valid one past its end, end date YYYY-MM-DD, profile, request
        name, subject) per certificate; no record built (a listing of a big index has
        tens of thousands)."""
        c = certificates.c
        q = _listing(
            [c.serial, c.status, c.not_after, c.profile, c.request_name, c.subject],
            status,
            now,
            expiring_within,
            search,
            None,
        )
        t = to_epoch(now)
        epoch_day = dt.date(1970, 1, 1).toordinal()
        out = []
        dates: dict[int, str] = {}  # a listing's lines share a few hundred end dates
        for serial, state, end, profile, name, subject in _driver_rows(conn, q):
            state = "expired" if state == "valid" and end <= t else state
            day = end // 86_400
            ymd = dates.get(day)
            if ymd is None:
                ymd = dates[day] = dt.date.fromordinal(epoch_day + day).isoformat()  # UTC
            out.append((serial, state, ymd, profile, name, subject))
        return out

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

    def revoked_entries(
        self, conn: Transaction, issuer: str | None = None, *, unclaimed: bool = False
    ) -> list[tuple[int, int, str | None]]:
        """(serial, revocation time in UTC epoch seconds, reason) of every revoked
        certificate of the CA `issuer` (None: of every CA; `unclaimed`: and those no CA
        claimed yet, which the issuing CA's CRL lists), for the CRL
        (`CertificateAuthority.build_crl` takes the epoch as is).

        Expired certificates stay on the CRL: small CAs issue few, and dropping them
        would need the expiredCertsOnCRL extension to stay correct.
        """
        c = certificates.c
        stmt = sa.select(c.serial, c.revoked_at, c.revocation_reason).where(
            c.status == sa.literal_column("'revoked'")
        )
        if issuer is not None:
            # a literal: the issuer is a hex digest, and the statement goes to the driver
            # as it is (any paramstyle); both tests read ix_certificates_crl alone
            mine = c.issuer == sa.literal_column(f"'{_hex(issuer)}'")
            stmt = stmt.where(sa.or_(mine, c.issuer.is_(None)) if unclaimed else mine)
        stmt = stmt.order_by(c.revoked_at)
        # straight from the driver's cursor, in this transaction: no SQLAlchemy per-row
        # work (the statement has no parameters: any paramstyle)
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(str(stmt.compile(dialect=conn.dialect)))
            rows = cursor.fetchall()
        finally:
            cursor.close()
        return [(int(serial, 16), int(at), reason) for serial, at, reason in rows]

    def counts(self, conn: Transaction, now: dt.datetime) -> dict[str, int]:
        t = to_epoch(now)
        c = certificates.c
        row = conn.execute(
            sa.select(
                sa.func.count(),
                sa.func.sum(sa.case(((c.status == "valid") & (c.not_after > t), 1), else_=0)),
                sa.func.sum(sa.case(((c.status == "valid") & (c.not_after <= t), 1), else_=0)),
                sa.func.sum(sa.case((c.status == "revoked", 1), else_=0)),
                sa.func.sum(sa.case((c.status == "superseded", 1), else_=0)),
            ).select_from(certificates)
        ).one()
        return {
            "total": int(row[0] or 0),
            "valid": int(row[1] or 0),
            "expired": int(row[2] or 0),
            "revoked": int(row[3] or 0),
            "superseded": int(row[4] or 0),
        }

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

    # --- journal -------------------------------------------------------------------------------
    def log(
        self,
        conn: Transaction,
        when: dt.datetime,
        name: str,
        outcome: str,
        *,
        profile: str = "",
        fingerprint: str = "",
        serial: str | None = None,
        detail: str = "",
    ) -> None:
        conn.execute(
            sa.insert(journal).values(
                at=to_epoch(when),
                name=name,
                profile=profile,
                fingerprint=fingerprint,
                outcome=outcome,
                serial=serial,
                detail=detail,
            )
        )

    def log_many(self, conn: Transaction, entries: Sequence[Mapping[str, Any]]) -> None:
        if entries:
            insert_many(
                conn,
                journal,
                [
                    {
                        "at": to_epoch(e["at"]),
                        "name": e["name"],
                        "profile": e.get("profile", ""),
                        "fingerprint": e.get("fingerprint", ""),
                        "outcome": e["outcome"],
                        "serial": e.get("serial"),
                        "detail": e.get("detail", ""),
                    }
                    for e in entries
                ],
            )

    def outcome_counts(self, conn: Transaction) -> dict[str, int]:
        rows = conn.execute(
            sa.select(journal.c.outcome, sa.func.count()).group_by(journal.c.outcome)
        )
        return {o: int(n) for o, n in rows}

    def journal_for(
        self, conn: Transaction, name: str, serials: Iterable[str] = ()
    ) -> list[dict[str, Any]]:
        """The journal of request `name` and of the certificates `serials`, oldest first."""
        cond = journal.c.name == name
        wanted = list(dict.fromkeys(serials))
        if wanted:
            cond = sa.or_(cond, journal.c.serial.in_(wanted))
        rows = conn.execute(sa.select(journal).where(cond).order_by(journal.c.id))
        return [dict(r._mapping) for r in rows]

    # --- pending requests ----------------------------------------------------------------------
    def add_pending(
        self,
        conn: Transaction,
        name: str,
        profile: str,
        fingerprint: str,
        owner: str,
        owner_uid: int | None,
        when: dt.datetime,
        subject: str,
    ) -> None:
        conn.execute(sa.delete(pending).where(pending.c.name == name))
        conn.execute(
            sa.insert(pending).values(
                name=name,
                profile=profile,
                fingerprint=fingerprint,
                owner=owner,
                owner_uid=owner_uid,
                received_at=to_epoch(when),
                subject=subject,
            )
        )

    def get_pending(self, conn: Transaction, name: str) -> PendingRecord | None:
        row = conn.execute(sa.select(pending).where(pending.c.name == name)).first()
        return _pending(row) if row is not None else None

    def pending_by_names(self, conn: Transaction, names: Iterable[str]) -> dict[str, PendingRecord]:
        wanted = list(dict.fromkeys(names))
        out: dict[str, PendingRecord] = {}
        for start in range(0, len(wanted), 500):
            for r in conn.execute(_PENDING_BY_NAMES, {"names": wanted[start : start + 500]}):
                rec = _pending(r)
                out[rec.name] = rec
        return out

    def remove_pending_many(self, conn: Transaction, names: Sequence[str]) -> None:
        conn.execute(sa.delete(pending).where(pending.c.name.in_(list(names))))

    def list_pending(self, conn: Transaction) -> list[PendingRecord]:
        return [
            _pending(r) for r in conn.execute(sa.select(pending).order_by(pending.c.received_at))
        ]

    def decide_pending(
        self, conn: Transaction, name: str, decision: str, reason: str, when: dt.datetime
    ) -> None:
        conn.execute(
            sa.update(pending)
            .where(pending.c.name == name)
            .values(decision=decision, decision_reason=reason, decided_at=to_epoch(when))
        )

    def remove_pending(self, conn: Transaction, name: str) -> None:
        conn.execute(sa.delete(pending).where(pending.c.name == name))


def _hex(value: str) -> str:
    """`value` when it is hex digits (a CA id, a serial): safe inside an SQL literal."""
    if not value or any(ch not in "0123456789abcdefABCDEF" for ch in value):
        raise ValueError(f"not a hex identifier: {value!r}")
    return value


def _pending(row: Any) -> PendingRecord:
    m = row._mapping
    return PendingRecord(
        name=m["name"],
        profile=m["profile"],
        fingerprint=m["fingerprint"],
        owner=m["owner"],
        owner_uid=m["owner_uid"],
        received_at=from_epoch(m["received_at"]),  # type: ignore[arg-type]
        subject=m["subject"],
        decision=m["decision"],
        decision_reason=m["decision_reason"],
    )


# The statements the issue layer runs for every batch, built once: building a select
# is most of the cost of a small query (SQLAlchemy caches the compiled form by a key
# it computes from the statement object, once for an object that is reused).
_SERIALS_WITH_ATTR = sa.select(cert_attrs.c.serial, cert_attrs.c.value).where(
    cert_attrs.c.value.in_(sa.bindparam("values", expanding=True)),
    cert_attrs.c.attr == sa.bindparam("attr"),
)
_BY_FINGERPRINTS = (
    sa.select(certificates)
    .where(certificates.c.request_fingerprint.in_(sa.bindparam("fps", expanding=True)))
    .order_by(certificates.c.issued_at.desc())
)
_EXISTING_SERIALS = sa.select(certificates.c.serial).where(
    certificates.c.serial.in_(sa.bindparam("serials", expanding=True))
)
_BY_SERIALS = sa.select(certificates).where(
    certificates.c.serial.in_(sa.bindparam("serials", expanding=True))
)
_BY_REQUEST_NAME = sa.select(certificates.c.serial).where(
    certificates.c.request_name == sa.bindparam("name")
)
_BY_NAME_OR_EMAIL = sa.select(cert_attrs.c.serial, cert_attrs.c.attr).where(
    cert_attrs.c.attr.in_(("CN", EMAIL_ATTR)), cert_attrs.c.value == sa.bindparam("value")
)
_PENDING_BY_NAMES = sa.select(pending).where(
    pending.c.name.in_(sa.bindparam("names", expanding=True))
)


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


def _listing(
    columns: Sequence[sa.ColumnElement[Any]],
    status: str | None,
    now: dt.datetime | None,
    expiring_within: dt.timedelta | None,
    search: str | None,
    limit: int | None,
) -> sa.Select[Any]:
    """The SELECT of `list_certs` and `list_lines`."""
    q = sa.select(*columns).order_by(certificates.c.not_after)
    if search is not None:
        q = q.where(_contains(search))
    if status == "expired":
        assert now is not None
        q = q.where(certificates.c.status == "valid", certificates.c.not_after <= to_epoch(now))
    elif status == "valid":
        assert now is not None
        q = q.where(certificates.c.status == "valid", certificates.c.not_after > to_epoch(now))
    elif status is not None:
        q = q.where(certificates.c.status == status)
    if expiring_within is not None:
        assert now is not None
        q = q.where(
            certificates.c.status == "valid",
            certificates.c.not_after > to_epoch(now),
            certificates.c.not_after <= to_epoch(now + expiring_within),
        )
    if limit is not None:
        q = q.limit(limit)
    return q


def _driver_rows(conn: Transaction, stmt: sa.Select[Any]) -> Sequence[Any]:
    """The rows of a SELECT, its SQL compiled once here and run as the driver's SQL: no
    result processing by SQLAlchemy (the columns here need none)."""
    compiled = stmt.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
    params: Any = compiled.params
    if compiled.positional:
        params = tuple(params[name] for name in compiled.positiontup or ())
    return conn.exec_driver_sql(str(compiled), params).all()


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


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # let SQLAlchemy manage transactions (pysqlite's own handling is disabled)
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout = 30000")
    _sqlite_wal(cur)
    cur.execute("PRAGMA synchronous = FULL")
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


def _sqlite_begin_immediate(conn: Transaction) -> None:
    # take the write lock at BEGIN: two writers queue instead of failing on upgrade
    conn.exec_driver_sql("BEGIN IMMEDIATE")
