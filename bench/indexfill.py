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
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from certdrop.authority.ca import CertificateAuthority, IssueSpec
from certdrop.authority.serials import random_serial, serial_hex
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
        serial=random_serial(),
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
        serial = random_serial()
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
        with store.begin() as conn:
            total = store.counts(conn, now)["total"]
        if total != n:
            raise RuntimeError(f"index fill: {total} rows instead of {n}")
    finally:
        store.close()
    return time.perf_counter() - t0, entries
