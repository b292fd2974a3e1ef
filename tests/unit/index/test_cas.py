"""index/cas.py: the CAs of the index, which one is current, and which certificates each
issued (a real index: SQLite, then PostgreSQL)."""

from __future__ import annotations

import datetime as dt

from certdrop.index import cas, listing
from certdrop.index.store import NewCertificate, Store

T0 = dt.datetime(2031, 3, 1, 12, 0, tzinfo=dt.UTC)


def _ca(ident: str, serial: str, start: dt.datetime) -> cas.NewCa:
    return cas.NewCa(
        id=ident * 32,
        subject="CN=Test CA",
        serial=serial,
        not_before=start,
        not_after=start + dt.timedelta(days=3650),
        der=b"\x30\x00",
    )


def _cert(serial: str, issuer: str | None, days: int, status: str = "valid") -> NewCertificate:
    return NewCertificate(
        serial=serial,
        subject=f"CN=user {serial}",
        common_name=f"user {serial}",
        email="",
        not_before=T0,
        not_after=T0 + dt.timedelta(days=days),
        profile="client",
        request_name=f"user{serial}",
        request_fingerprint=serial.rjust(64, "0"),
        issued_at=T0,
        der=b"\x30\x00",
        status=status,
        revoked_at=T0 if status == "revoked" else None,
        revocation_reason="keyCompromise" if status == "revoked" else None,
        issuer=issuer,
    )


def test_the_current_ca_the_retiring_ones_and_their_certificates(index_url: str) -> None:
    store = Store(index_url).open()
    try:
        old, new = _ca("aa", "01", T0), _ca("bb", "02", T0 + dt.timedelta(days=1))
        with store.begin() as conn:
            # rows written before the index knew CAs (schema 5): no issuer
            store.add_certificate(conn, _cert("10", None, 30, "revoked"))
            store.add_certificate(conn, _cert("11", None, 400))
            rows = cas.register_issuing(conn, old, T0)
            assert [(r.id, r.state) for r in rows] == [(old.id, cas.CURRENT)]
            # the CA that issues claims them
            assert store.get(conn, "10").issuer == old.id  # type: ignore[union-attr]
            # registering the same CA again (every start) changes nothing
            assert cas.register_issuing(conn, old, T0 + dt.timedelta(hours=1)) == rows

            store.add_certificate(conn, _cert("12", old.id, 100))
            later = T0 + dt.timedelta(days=1)
            rows = cas.register_issuing(conn, new, later)
            assert [(r.id, r.state, r.since) for r in rows] == [
                (new.id, cas.CURRENT, later),
                (old.id, cas.RETIRING, later),
            ]
            store.add_certificate(conn, _cert("20", new.id, 30, "revoked"))
            # when the last certificate of each CA ends (revoked ones too: still listed)
            assert cas.last_expiry(conn, old.id) == T0 + dt.timedelta(days=400)
            assert cas.last_expiry(conn, new.id) == T0 + dt.timedelta(days=30)
            assert cas.last_expiry(conn, "cc" * 32) is None
            # each CA's CRL lists its own revoked certificates
            assert [e[0] for e in listing.revoked_entries(conn, old.id)] == [0x10]
            assert [e[0] for e in listing.revoked_entries(conn, new.id, unclaimed=True)] == [0x20]

            cas.set_state(conn, old.id, cas.RETIRED, T0 + dt.timedelta(days=401))
            assert [r.state for r in cas.list_cas(conn)] == [cas.CURRENT, cas.RETIRED]
            # going back to the older CA (a restored state folder): it is current again
            rows = cas.register_issuing(conn, old, T0 + dt.timedelta(days=402))
            assert [(r.id, r.state) for r in rows] == [
                (old.id, cas.CURRENT),
                (new.id, cas.RETIRING),
            ]
    finally:
        store.close()
