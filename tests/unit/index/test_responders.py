"""The hosts' OCSP responder certificates in the index (index/responders.py), on SQLite
and on a real PostgreSQL server."""

from __future__ import annotations

import datetime as dt

from certdrop.index import responders
from certdrop.index.store import Store

T0 = dt.datetime(2031, 3, 1, 12, 0, tzinfo=dt.UTC)
CA = "cd" * 32


def test_a_request_waits_for_the_leader_and_a_new_key_replaces_it(store: Store) -> None:
    with store.begin() as conn:
        responders.request(conn, "a", CA, b"key-a1", T0)
        responders.request(conn, "b", CA, b"key-b1", T0)
        responders.request(conn, "b", "ef" * 32, b"key-b1", T0)  # another CA: its own row
        assert responders.certificate(conn, "a", CA, b"key-a1") is None
        assert responders.unsigned(conn, CA) == [("a", b"key-a1"), ("b", b"key-b1")]
        assert responders.any_unsigned(conn, CA)
        assert not responders.any_unsigned(conn, "00" * 32)
        responders.certify(conn, "a", CA, b"key-a1", b"cert-a1", "leader")
        assert responders.certificate(conn, "a", CA, b"key-a1") == b"cert-a1"
        assert responders.certificate(conn, "a", CA, b"key-a2") is None  # not for another key
        assert responders.unsigned(conn, CA) == [("b", b"key-b1")]
        # asking again for the same key keeps its certificate; a new key starts over
        responders.request(conn, "a", CA, b"key-a1", T0 + dt.timedelta(hours=1))
        assert responders.certificate(conn, "a", CA, b"key-a1") == b"cert-a1"
        responders.request(conn, "a", CA, b"key-a2", T0 + dt.timedelta(days=2))
        assert responders.certificate(conn, "a", CA, b"key-a1") is None
        assert responders.unsigned(conn, CA) == [("a", b"key-a2"), ("b", b"key-b1")]
        # a certificate for a key the host no longer asks for is not recorded
        responders.certify(conn, "a", CA, b"key-a1", b"cert-late", "leader")
        assert responders.certificate(conn, "a", CA, b"key-a2") is None


def test_two_signers_never_take_the_same_request(pg_url: str) -> None:
    """While one leader holds the requests it signs, another (a lease that just changed
    hands) skips them instead of waiting and signing them a second time."""
    s = Store(pg_url).open()
    try:
        with s.begin() as conn:
            responders.request(conn, "a", CA, b"key-a", T0)
        with s.begin() as first:
            assert responders.unsigned(first, CA) == [("a", b"key-a")]
            with s.begin() as second:
                assert responders.unsigned(second, CA) == []
            responders.certify(first, "a", CA, b"key-a", b"cert", "one")
        with s.begin() as conn:
            assert responders.unsigned(conn, CA) == []
            assert responders.certificate(conn, "a", CA, b"key-a") == b"cert"
    finally:
        s.close()
