"""Filling certdrop's index with many certificates quickly (for start-up and CRL runs).

One pre-made certificate DER stands in for every row, with distinct serials, request
fingerprints and subjects: what the measurement needs (the index's size) without
signing 100,000 certificates first. The rows go in through `Store.add_certificates`,
the bulk insert a batch of the daemon is recorded with.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from certdrop.authority.ca import CertificateAuthority, IssueSpec
from certdrop.authority.serials import random_serial, serial_hex
from certdrop.index import listing
from certdrop.index.schema import cert_attrs, certificates
from certdrop.index.store import NewCertificate, Store


def sample_der(state: Path, now: dt.datetime) -> bytes:
    """One real certificate from the CA in `state` (its DER stands in for every row)."""
    ca = CertificateAuthority.load(state)
    spec = IssueSpec(
        subject=[("CN", "Bench filler")],
        public_key=ec.generate_private_key(ec.SECP256R1()).public_key(),
        not_before=now,
        not_after=now + dt.timedelta(days=365),
        key_usage=["digital_signature"],
        extended_key_usage=["client_auth"],
        serial=random_serial(now),
    )
    return ca.issue(spec).public_bytes(serialization.Encoding.DER)


def fill(
    database_url: str,
    state: Path,
    n: int,
    *,
    revoked: bool,
    now: dt.datetime | None = None,
) -> tuple[float, list[tuple[int, dt.datetime]]]:
    """Add n certificates (all valid, or all revoked); returns (seconds, [(serial, when)])."""
    now = (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)
    der = sample_der(state, now)
    store = Store(database_url).open()
    records: list[NewCertificate] = []
    entries: list[tuple[int, dt.datetime]] = []
    for i in range(n):
        serial = random_serial(now - dt.timedelta(seconds=n - i))
        revoked_at = now - dt.timedelta(seconds=i) if revoked else None
        cn = f"Filler {i:06d}"
        records.append(
            NewCertificate(
                serial=serial_hex(serial),
                subject=f"CN={cn},O=Bench",
                common_name=cn,
                email=f"filler{i:06d}@example.org",
                not_before=now - dt.timedelta(days=365 - (i % 365)),
                # expiries spread over a year: expiry queries see a realistic index
                not_after=now + dt.timedelta(days=1 + (i % 365)),
                profile="client",
                request_name=f"f{i:06d}",
                request_fingerprint=hashlib.sha256(secrets.token_bytes(16)).hexdigest(),
                issued_at=now - dt.timedelta(days=1),
                der=der,
                attrs=[("CN", cn), ("O", "Bench")],
                owner="bench",
                status="revoked" if revoked else "valid",
                revoked_at=revoked_at,
                revocation_reason="keyCompromise" if revoked else None,
            )
        )
        if revoked_at is not None:
            entries.append((serial, revoked_at))
    t0 = time.perf_counter()
    try:
        with store.begin() as conn:
            store.add_certificates(conn, records)  # the daemon's own bulk insert
            # issued long ago: their fingerprint entries folded as an idle daemon does
            while store.fold_fingerprints(conn, 100_000):
                pass
        with store.begin() as conn:
            total = listing.counts(conn, now)["total"]
        if total != n:
            raise RuntimeError(f"index fill: {total} rows instead of {n}")
    finally:
        store.close()
    return time.perf_counter() - t0, entries


# the mix of a CA that has been issuing for years (fractions of the index): revoked
# (on the CRL), superseded by a renewal, expired; the rest valid, ending over a year
MIX = {"revoked": 0.10, "superseded": 0.05, "expired": 0.10}


def fill_bulk(
    database_url: str,
    der: bytes,
    n: int,
    *,
    now: dt.datetime,
    issuer: str,
    log: Callable[[str], None] | None = None,
) -> dict[str, int]:
    """Load n certificates of MIX, issued by the CA with id `issuer`, into the empty
    index at `database_url`; the counts.

    A bulk load as a DBA would do it: the schema from the index module (Store.open),
    its secondary indexes dropped, the rows written by the driver (SQLite: executemany;
    PostgreSQL: COPY), the indexes created again from the schema's definitions, then on
    PostgreSQL VACUUM ANALYZE (what autovacuum does after such a load by itself: the
    statistics, the hint bits, the visibility map index-only scans need). Each
    certificate has its CN, O and e-mail rows, a distinct request name and fingerprint,
    a serial of its issuance time and random bits (loaded in serial order) and the one DER `der`.
    """
    now = now.replace(microsecond=0)
    t_now = int(now.timestamp())
    revoked_n = int(n * MIX["revoked"])
    superseded_n = int(n * MIX["superseded"])
    expired_n = int(n * MIX["expired"])
    # issued over the past years, as by this version (serials grow with time)
    serials = sorted(random_serial(now - dt.timedelta(minutes=2 * (n - i))) for i in range(n))
    counts = {"revoked": 0, "superseded": 0, "expired": 0, "valid": 0}
    certs: list[tuple[object, ...]] = []
    attrs: list[tuple[str, str, str]] = []
    for i in range(n):
        k = (i * 7919) % n  # statuses and expiries spread through the serials
        if k < revoked_n:
            status, left = "revoked", 1 + k % 365
        elif k < revoked_n + superseded_n:
            status, left = "superseded", 1 + k % 365
        elif k < revoked_n + superseded_n + expired_n:
            status, left = "expired", -(1 + k % 700)
        else:
            status, left = "valid", 1 + k % 365
        counts[status] += 1
        not_after = t_now + left * 86_400 + k % 86_400
        serial = serial_hex(serials[i])
        cn = f"User {i:07d}"
        email = f"user{i:07d}@example.org"
        revoked = status == "revoked"
        certs.append(
            (
                serial,
                f"CN={cn},O=Bench",
                cn,
                email,
                not_after - 365 * 86_400,
                not_after,
                "client",
                f"user{i:07d}",
                hashlib.sha256(i.to_bytes(8, "big")).hexdigest(),
                "valid" if status == "expired" else status,  # expired: valid, past its end
                t_now - k if revoked else None,
                "keyCompromise" if revoked else None,
                None,
                not_after - 365 * 86_400,
                "bench",
                "issued",
                False,
                der,
                issuer,
                0,  # fingerprint_pending: folded long ago
            )
        )
        attrs += [(serial, "CN", cn.casefold()), (serial, "O", "bench"), (serial, "email", email)]
    columns = [c.name for c in certificates.columns]
    if len(columns) != len(certs[0]):
        raise RuntimeError(f"index fill: the certificates table has columns {columns}")
    store = Store(database_url).open()
    try:
        indexes = [*certificates.indexes, *cert_attrs.indexes]
        t0 = time.perf_counter()
        with store.begin() as conn:
            for index in indexes:
                conn.exec_driver_sql(f"DROP INDEX {index.name}")
            if store.dialect == "postgresql":
                # no foreign-key trigger per attribute row: the rows are consistent by
                # construction (the bench's server runs as its superuser)
                conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
            cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
            for table, rows, names in (
                (certificates, certs, columns),
                (cert_attrs, attrs, ["serial", "attr", "value"]),
            ):
                if store.dialect == "sqlite":
                    marks = ", ".join("?" for _ in names)
                    cursor.executemany(
                        f"INSERT INTO {table.name} ({', '.join(names)}) VALUES ({marks})", rows
                    )
                else:
                    with cursor.copy(f"COPY {table.name} ({', '.join(names)}) FROM STDIN") as copy:
                        for start in range(0, len(rows), 20_000):
                            copy.write(_copy_text(rows[start : start + 20_000]))
                if log is not None:
                    log(f"    {table.name} {time.perf_counter() - t0:.1f} s")
            t1 = time.perf_counter()
            for index in indexes:
                index.create(conn)
            t2 = time.perf_counter()
        if store.dialect == "postgresql":  # certdrop never runs ANALYZE on SQLite
            with store.engine.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
                    "VACUUM ANALYZE"
                )
        with store.begin() as conn:
            got = listing.counts(conn, now)
        if log is not None:
            log(
                f"    rows {t1 - t0:.1f} s, indexes {t2 - t1:.1f} s, "
                f"VACUUM ANALYZE and count {time.perf_counter() - t2:.1f} s"
            )
        if got["total"] != n or got["revoked"] != counts["revoked"]:
            raise RuntimeError(f"index fill: {got} instead of {counts}")
    finally:
        store.close()
    return counts


def _copy_text(rows: list[tuple[object, ...]]) -> bytes:
    """Rows in COPY's text format (the bench's values hold no tab, newline or backslash)."""

    def field(v: object) -> str:
        if v is None:
            return "\\N"
        if isinstance(v, bool):
            return "t" if v else "f"
        if isinstance(v, bytes):
            return "\\\\x" + v.hex()
        return str(v)

    return "".join("\t".join(map(field, row)) + "\n" for row in rows).encode()
