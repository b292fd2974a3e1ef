"""The read side of the certificates: the operator's lookups (`show`, `revoke`), the
listings (`list`, `status`, the expiry sweep), the counts and the CRL's entries."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from .schema import EMAIL_ATTR, cert_attrs, certificates, to_epoch
from .store import (
    BY_SERIALS,
    EXISTING_SERIALS,
    CertRecord,
    Transaction,
    cert_record,
    cert_record_of,
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


def lookup(conn: Transaction, ref: str) -> list[Match]:
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
        for serial in conn.execute(EXISTING_SERIALS, {"serials": sorted(serials)}).scalars():
            how.setdefault(serial, []).append("serial")
    if ref and not (serials and ref.lower().startswith("0x")):
        for serial in conn.execute(_BY_REQUEST_NAME, {"name": ref}).scalars():
            how.setdefault(serial, []).append("request name")
        for serial, attr in conn.execute(_BY_NAME_OR_EMAIL, {"value": ref.casefold()}):
            how.setdefault(serial, []).append("CN" if attr == "CN" else "e-mail")
    if not how:
        return []
    records = [cert_record(r) for r in conn.execute(BY_SERIALS, {"serials": list(how)})]
    records.sort(key=lambda r: (r.issued_at, r.serial), reverse=True)
    return [Match(r, tuple(dict.fromkeys(how[r.serial]))) for r in records]


def find(conn: Transaction, ref: str) -> list[CertRecord]:
    """The certificates `ref` names (see `lookup`), newest first."""
    return [m.record for m in lookup(conn, ref)]


def list_certs(
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
    return [cert_record_of(dict(zip(names, r, strict=True))) for r in _driver_rows(conn, q)]


def list_lines(
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


def revoked_entries(
    conn: Transaction, issuer: str | None = None, *, unclaimed: bool = False
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


def counts(conn: Transaction, now: dt.datetime) -> dict[str, int]:
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


def _hex(value: str) -> str:
    """`value` when it is hex digits (a CA id, a serial): safe inside an SQL literal."""
    if not value or any(ch not in "0123456789abcdefABCDEF" for ch in value):
        raise ValueError(f"not a hex identifier: {value!r}")
    return value


# the lookup's statements, built once (as store.py's, for the same reason)
_BY_REQUEST_NAME = sa.select(certificates.c.serial).where(
    certificates.c.request_name == sa.bindparam("name")
)
_BY_NAME_OR_EMAIL = sa.select(cert_attrs.c.serial, cert_attrs.c.attr).where(
    cert_attrs.c.attr.in_(("CN", EMAIL_ATTR)), cert_attrs.c.value == sa.bindparam("value")
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
    """The rows of a SELECT, its SQL compiled once here and run on the driver's cursor: no
    result processing by SQLAlchemy (the columns here need none)."""
    compiled = stmt.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
    params: Any = compiled.params
    if compiled.positional:
        params = tuple(params[name] for name in compiled.positiontup or ())
    result = conn.exec_driver_sql(str(compiled), params)
    try:  # the driver's tuples as they come, no Row made of each
        rows: Sequence[Any] = result.cursor.fetchall()
    finally:
        result.close()
    return rows
