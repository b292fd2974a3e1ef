"""The OCSP responder certificates of the hosts sharing the index (schema 10).

A host asks for a certificate of its responder's public key (never the private key: it
stays in the host's state folder); the leading host certifies every request with the
CA's key; the host takes its certificate from here. One row per host and CA, replaced by
the host's next request.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from .schema import responders, to_epoch
from .store import Transaction


def request(conn: Transaction, host: str, ca: str, public_key: bytes, now: dt.datetime) -> None:
    """`host` asks CA `ca` to certify `public_key` (a SubjectPublicKeyInfo DER); a request
    for the same key stands as it is (with its certificate, once signed)."""
    where = sa.and_(responders.c.host == host, responders.c.ca == ca)
    found = conn.execute(sa.select(responders.c.public_key).where(where)).first()
    values = {"public_key": public_key, "requested_at": to_epoch(now), "cert": None}
    if found is None:
        conn.execute(sa.insert(responders).values(host=host, ca=ca, signed_by=None, **values))
    elif bytes(found[0]) != public_key:
        conn.execute(sa.update(responders).where(where).values(signed_by=None, **values))


def certificate(conn: Transaction, host: str, ca: str, public_key: bytes) -> bytes | None:
    """The certificate signed for `host`'s request of `public_key`, None before that."""
    row = conn.execute(
        sa.select(responders.c.public_key, responders.c.cert).where(
            responders.c.host == host, responders.c.ca == ca
        )
    ).first()
    if row is None or row[1] is None or bytes(row[0]) != public_key:
        return None
    return bytes(row[1])


def unsigned(conn: Transaction, ca: str) -> list[tuple[str, bytes]]:
    """The requests to CA `ca` not certified yet, (host, public key) each; their rows stay
    locked to the end of the transaction (PostgreSQL: rows another host is signing are
    skipped)."""
    query = (
        sa.select(responders.c.host, responders.c.public_key)
        .where(responders.c.ca == ca, responders.c.cert.is_(None))
        .order_by(responders.c.host)
    )
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return [(str(h), bytes(k)) for h, k in conn.execute(query)]


def any_unsigned(conn: Transaction, ca: str) -> bool:
    """Whether a request to CA `ca` waits to be certified."""
    query = sa.select(responders.c.host).where(responders.c.ca == ca, responders.c.cert.is_(None))
    return conn.execute(query.limit(1)).first() is not None


def certify(
    conn: Transaction, host: str, ca: str, public_key: bytes, der: bytes, signer: str
) -> None:
    """Record the certificate `signer` made for `host`'s request of `public_key`."""
    conn.execute(
        sa.update(responders)
        .where(
            responders.c.host == host,
            responders.c.ca == ca,
            responders.c.public_key == public_key,
        )
        .values(cert=der, signed_by=signer)
    )
