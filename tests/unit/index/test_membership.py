"""Several hosts on one index: host rows, the leader's lease, the latest CRL, the fence.

Each test runs on SQLite and on a real PostgreSQL server (tests/pgserver.py); the
concurrent ones race real threads, each with its own connection.
"""

from __future__ import annotations

import datetime as dt
import threading

import pytest

from certdrop.errors import IndexUnavailable
from certdrop.index import membership as cluster
from certdrop.index.store import NewCertificate, Store

T0 = dt.datetime(2031, 3, 1, 12, 0, tzinfo=dt.UTC)
LEASE = 20.0


def _lead(store: Store, host: str, now: dt.datetime) -> str | None:
    with store.begin() as conn:
        return cluster.try_lead(conn, host, now, LEASE)


def test_hosts_register_beat_and_are_listed(store: Store) -> None:
    with store.begin() as conn:
        cluster.register(conn, "b-000002", 22, T0)
        cluster.register(conn, "a-000001", 11, T0 + dt.timedelta(seconds=1))
        assert cluster.beat(conn, "a-000001", T0 + dt.timedelta(seconds=9))
        found = cluster.list_hosts(conn)
    assert [(h.id, h.pid, h.retired) for h in found] == [
        ("a-000001", 11, False),
        ("b-000002", 22, False),
    ]
    assert found[0].last_seen == T0 + dt.timedelta(seconds=9)
    assert found[1].started == found[1].last_seen == T0


def test_a_retired_host_beats_no_more_until_it_registers_again(store: Store) -> None:
    with store.begin() as conn:
        cluster.register(conn, "a-000001", 1, T0)
        cluster.retire(conn, "a-000001", T0)
        assert not cluster.beat(conn, "a-000001", T0 + dt.timedelta(seconds=5))
        cluster.register(conn, "a-000001", 2, T0 + dt.timedelta(seconds=6))
        assert cluster.beat(conn, "a-000001", T0 + dt.timedelta(seconds=7))
        [row] = cluster.list_hosts(conn)
    assert (row.pid, row.retired) == (2, False)


def test_the_lease_is_held_renewed_and_taken_only_once_expired(store: Store) -> None:
    assert _lead(store, "a", T0) == "a"
    assert _lead(store, "b", T0 + dt.timedelta(seconds=1)) == "a"
    # renewed by its holder: valid another lease from then
    assert _lead(store, "a", T0 + dt.timedelta(seconds=15)) == "a"
    assert _lead(store, "b", T0 + dt.timedelta(seconds=34)) == "a"
    with store.begin() as conn:
        assert cluster.leader(conn, T0 + dt.timedelta(seconds=34)) == "a"
        assert cluster.leader(conn, T0 + dt.timedelta(seconds=35)) is None
    assert _lead(store, "b", T0 + dt.timedelta(seconds=35)) == "b"
    assert _lead(store, "a", T0 + dt.timedelta(seconds=36)) == "b"


def test_a_host_resigning_frees_the_lease_at_once(store: Store) -> None:
    assert _lead(store, "a", T0) == "a"
    with store.begin() as conn:
        cluster.resign(conn, "b")  # not the holder: nothing changes
        assert cluster.leader(conn, T0) == "a"
        cluster.resign(conn, "a")
        assert cluster.leader(conn, T0) is None
    assert _lead(store, "b", T0 + dt.timedelta(seconds=1)) == "b"


def test_hosts_racing_for_a_free_lease_agree_on_one_leader(index_url: str) -> None:
    """Eight hosts, each with its own engine, ask at once, ten rounds over expired leases:
    every round exactly one of them takes the lease, and the others name it or, while it
    is being taken (its row locked, PostgreSQL), nobody; never another host."""
    stores = [Store(index_url).open() for _ in range(8)]
    try:
        for round_ in range(10):
            now = T0 + dt.timedelta(seconds=round_ * (LEASE + 1))
            answers: list[str | None] = [None] * len(stores)
            barrier = threading.Barrier(len(stores))

            errors: list[BaseException] = []

            def ask(i: int, now: dt.datetime = now) -> None:
                barrier.wait()
                try:
                    answers[i] = _lead(stores[i], f"host{i}", now)
                except BaseException as exc:  # failed in the test below
                    errors.append(exc)

            threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(stores))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert not errors, errors
            winners = [i for i, a in enumerate(answers) if a == f"host{i}"]
            assert len(winners) == 1, answers
            assert set(answers) <= {f"host{winners[0]}", None}, answers
    finally:
        for s in stores:
            s.close()


def test_silent_hosts_and_who_may_be_taken_over(store: Store) -> None:
    with store.begin() as conn:
        cluster.register(conn, "me", 1, T0)
        cluster.register(conn, "quiet", 2, T0)
        cluster.register(conn, "busy", 3, T0)
        cluster.beat(conn, "busy", T0 + dt.timedelta(seconds=25))
        cluster.beat(conn, "me", T0 + dt.timedelta(seconds=25))
        later = T0 + dt.timedelta(seconds=LEASE + 5)
        assert cluster.silent_hosts(conn, "me", later, LEASE) == ["quiet"]
        assert not cluster.lock_if_gone(conn, "quiet")  # silent, not retired yet
        cluster.retire(conn, "quiet", later)
        assert cluster.silent_hosts(conn, "me", later, LEASE) == []
        assert cluster.lock_if_gone(conn, "quiet")
        assert not cluster.lock_if_gone(conn, "busy")
        assert cluster.lock_if_gone(conn, "never-registered")


def test_the_latest_crl_is_never_replaced_by_an_earlier_one(store: Store) -> None:
    with store.begin() as conn:
        assert cluster.latest_crl(conn, "ca1") is None
        cluster.save_crl(conn, "ca1", 3, b"three", T0, "a")
        cluster.save_crl(conn, "ca1", 5, b"five", T0, "b")
        cluster.save_crl(conn, "ca1", 4, b"four", T0, "a")
        cluster.save_crl(conn, "ca2", 1, b"other", T0, "a")
        assert cluster.latest_crl(conn, "ca1") == (5, b"five")
        assert cluster.latest_crl_number(conn, "ca2") == 1


def _cert(serial: int) -> NewCertificate:
    return NewCertificate(
        serial=f"{serial:032X}",
        subject=f"CN=u{serial}",
        common_name=f"u{serial}",
        email="",
        not_before=T0,
        not_after=T0 + dt.timedelta(days=30),
        profile="client",
        request_name=f"u{serial}",
        request_fingerprint=f"{serial:064x}",
        issued_at=T0,
        der=b"\x30\x00",
    )


def test_a_host_taken_for_dead_records_nothing(store: Store) -> None:
    store.fence_host = "a"
    with store.begin() as conn:
        cluster.register(conn, "a", 1, T0)
    with store.begin() as conn:
        store.add_certificates(conn, [_cert(1)])
    with store.begin() as conn:
        cluster.retire(conn, "a", T0)
    with pytest.raises(IndexUnavailable, match=r"this host \(a\) was taken for dead"):
        with store.begin() as conn:
            store.add_certificates(conn, [_cert(2)])
    with store.begin() as conn:
        assert store.existing_serials(conn, [f"{1:032X}", f"{2:032X}"]) == {f"{1:032X}"}


def test_a_session_frozen_in_a_transaction_is_ended_by_the_server(pg_url: str) -> None:
    """A host frozen inside a transaction keeps its row locks only a minute (a heartbeat
    in the heartbeat's own connections): the server ends the session (and the others can
    take its claims, or the lease, over)."""
    import sqlalchemy as sa

    for store, shown in ((Store(pg_url), "1min"), (Store(pg_url, idle_in_transaction=1.0), "1s")):
        store.open()
        try:
            with store.begin() as conn:
                value = conn.execute(sa.text("SHOW idle_in_transaction_session_timeout")).scalar()
            assert value == shown
        finally:
            store.close()


def test_a_lease_row_locked_by_a_frozen_host_is_not_waited_for(pg_url: str) -> None:
    """Host a froze inside its heartbeat, the lease's row locked: b's heartbeat reads the
    lease as it stands instead of waiting (for as long as a's session lives)."""
    import sqlalchemy as sa

    s = Store(pg_url).open()
    try:
        assert _lead(s, "a", T0) == "a"
        with s.begin() as frozen:
            assert cluster.try_lead(frozen, "a", T0 + dt.timedelta(seconds=1), LEASE) == "a"
            with s.begin() as conn:
                conn.execute(sa.text("SET LOCAL lock_timeout = '2s'"))  # a wait fails the test
                assert cluster.try_lead(conn, "b", T0 + dt.timedelta(seconds=5), LEASE) == "a"
                later = T0 + dt.timedelta(seconds=LEASE + 1)  # the committed lease expired
                assert cluster.try_lead(conn, "b", later, LEASE) is None
        assert _lead(s, "b", T0 + dt.timedelta(seconds=LEASE + 22)) == "b"
    finally:
        s.close()
