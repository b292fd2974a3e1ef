"""The Store: the uniqueness lookup (right answers, answered from the attribute index),
certificates that collide, CRL numbers, and databases that cannot be used.

The pipeline asks, for every batch, which valid certificates carry the subjects'
unique attributes. A row-value IN on (attr, value) made SQLite walk every valid
certificate; the lookup must be driven by ix_cert_attrs_value whatever the index holds.
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import sqlalchemy as sa

from certdrop.errors import SerialCollision, StoreError
from certdrop.index import listing
from certdrop.index.store import Store
from index_kit import NOW, cert, query_plan, statements


def test_existing_valid_finds_each_attribute_and_skips_expired_and_revoked(store: Store) -> None:
    with store.begin() as conn:
        store.add_certificates(
            conn,
            [
                cert(1, [("CN", "Alice"), ("emailAddress", "Alice@Example.org")]),
                cert(2, [("CN", "Bob"), ("emailAddress", "bob@example.org")]),
                cert(3, [("CN", "Carol")], days=-1),  # expired
                cert(4, [("CN", "Dave")]),
                cert(5, [("CN", "alice")]),  # the same CN, folded
            ],
        )
        store.revoke(conn, "00000000000000000000000000000004", "keyCompromise", NOW)
    keys = [
        ("CN", "alice"),
        ("emailAddress", "bob@example.org"),
        ("CN", "carol"),
        ("CN", "dave"),
        ("CN", "nobody"),
        ("emailAddress", "alice@example.org"),
        ("CN", "alice"),  # asked twice: answered once
    ]
    with store.begin() as conn:
        got = store.existing_valid(conn, keys, NOW)
    assert {k: sorted(r.serial[-1] for r in v) for k, v in got.items()} == {
        ("CN", "alice"): ["1", "5"],
        ("emailAddress", "bob@example.org"): ["2"],
        ("emailAddress", "alice@example.org"): ["1"],
    }


def test_existing_valid_answers_more_keys_than_one_query_takes(store: Store) -> None:
    n = 1_300  # 650 CN and 750 e-mail values: two queries (of at most 500) each
    with store.begin() as conn:
        store.add_certificates(
            conn,
            [cert(i, [("CN", f"u{i}"), ("emailAddress", f"u{i}@example.org")]) for i in range(n)],
        )
    keys = [("CN", f"u{i}") for i in range(0, n, 2)] + [
        ("emailAddress", f"u{i}@example.org") for i in range(1, n + 200, 2)
    ]
    with store.begin() as conn:
        got = store.existing_valid(conn, keys, NOW)
    assert len(got) == n
    assert all(len(v) == 1 for v in got.values())
    assert got[("CN", "u4")][0].serial == f"{4:032X}"
    assert got[("emailAddress", "u5@example.org")][0].serial == f"{5:032X}"


def test_the_uniqueness_lookup_searches_indexes_with_all_its_conditions(store: Store) -> None:
    """The statements existing_valid runs: a search of ix_cert_attrs_value by value and
    attribute, then the certificates by primary key; never a read of every certificate
    (by status or expiry) or of every row of an attribute. On PostgreSQL without
    statistics an index of the attribute alone, or a status condition, was chosen and
    read them all, per batch."""
    with store.begin() as conn:
        store.add_certificates(
            conn, [cert(i, [("CN", f"u{i}"), ("O", "Org")]) for i in range(2_000)]
        )

    def run() -> None:
        with store.begin() as conn:
            keys = [("CN", f"u{i}") for i in range(0, 1_200, 2)] + [("emailAddress", "x@y")]
            assert len(store.existing_valid(conn, keys, NOW)) == 600

    ran = statements(store, run)
    attrs = [r for r in ran if "FROM cert_attrs" in r[0]]
    certs = [r for r in ran if "FROM certificates" in r[0]]
    assert len(attrs) == 3 and len(certs) == 2  # CN in two chunks, emailAddress in one
    for statement, parameters in attrs + certs:
        plan = query_plan(store, statement, parameters)
        text = "\n".join(plan)
        assert "ix_certificates_status" not in text and "ix_certificates_not_after" not in text
        if store.dialect == "sqlite":
            assert not any(s.startswith("SCAN") for s in plan), plan
            assert any(
                "USING INDEX ix_cert_attrs_value (value=? AND attr=?)" in s
                or "USING INDEX sqlite_autoindex_certificates_1 (serial=?)" in s
                for s in plan
            ), plan
        else:
            assert "Seq Scan" not in text and "Filter:" not in text, text
            conds = [s for s in plan if "Index Cond:" in s]
            assert len(conds) == 1, text
            if (statement, parameters) in attrs:
                assert "ix_cert_attrs_value" in text, text
                assert "(value = " in conds[0] and "attr)::text = " in conds[0], text
            else:
                assert "certificates_pkey" in text and "serial)::text = " in conds[0], text


def test_a_serial_already_in_the_index_collides(store: Store) -> None:
    with store.begin() as conn:
        store.add_certificate(conn, cert(7, [("CN", "Alice")]))
    with store.begin() as conn:
        with pytest.raises(SerialCollision) as exc:
            store.add_certificate(conn, cert(7, [("CN", "Mallory")]))
        assert isinstance(exc.value, StoreError)
        assert str(exc.value) == f"{7:032X}"
        # the transaction goes on: the caller draws a new serial
        store.add_certificate(conn, cert(8, [("CN", "Mallory")]))
    with store.begin() as conn:
        assert [r.common_name for r in listing.find(conn, f"{7:032X}")] == ["Alice"]
        assert store.existing_serials(conn, [f"{7:032X}", f"{8:032X}", "09"]) == {
            f"{7:032X}",
            f"{8:032X}",
        }


# --- CRL numbers: several hosts draw them from one index --------------------------------------------------
def _draw(store: Store) -> int:
    with store.begin() as conn:
        return store.claim_crl_number(conn, 0)


def test_a_crl_number_drawn_waits_for_the_one_being_drawn(store: Store) -> None:
    """Host B draws while host A's transaction holds a number it drew: B waits for A's
    commit and gets the number after A's, never the same one."""
    got: list[int] = []
    with store.begin() as conn:
        first = store.claim_crl_number(conn, 0)
        b = threading.Thread(target=lambda: got.append(_draw(store)))
        b.start()
        b.join(0.5)
        assert b.is_alive() and got == []  # waiting for A
    b.join(30)
    assert got == [first + 1]


def test_crl_numbers_drawn_at_once_are_unique_and_increasing(store: Store) -> None:
    drawn: list[list[int]] = [[] for _ in range(4)]

    def host(mine: list[int]) -> None:
        for _ in range(25):
            mine.append(_draw(store))

    threads = [threading.Thread(target=host, args=(d,)) for d in drawn]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(n for d in drawn for n in d) == list(range(1, 101))
    assert all(d == sorted(d) for d in drawn)  # each host's own numbers only grow


def test_a_certificate_reads_back_as_written_and_revoked_ones_reach_the_crl(store: Store) -> None:
    """Every column's type on each backend (bytes, booleans, times, NULLs), through the
    single and the batch insert, and the CRL's rows read straight from the driver."""
    der = bytes(range(256)) * 3  # every byte value, NUL included
    one = replace(cert(0x1F, [("CN", "Zoë")]), der=der, key_generated=True, owner="zoë")
    many = [cert(0x20 + i, [("CN", f"u{i}")]) for i in range(3)]
    with store.begin() as conn:
        store.add_certificate(conn, one)
        store.add_certificates(conn, many)
        store.revoke(conn, many[2].serial, "keyCompromise", NOW + dt.timedelta(hours=2))
        store.revoke(conn, one.serial, "superseded", NOW + dt.timedelta(hours=1))
    with store.begin() as conn:
        got = store.get(conn, one.serial)
        plain = store.get(conn, many[0].serial)
        entries = listing.revoked_entries(conn)
    assert got is not None and plain is not None
    assert (got.der, got.key_generated, got.owner, got.common_name) == (der, True, "zoë", "Zoë")
    assert (got.not_after, got.issued_at) == (one.not_after, one.issued_at)
    assert (got.status, got.revoked_at) == ("revoked", NOW + dt.timedelta(hours=1))
    assert (plain.der, plain.key_generated, plain.revoked_at) == (b"\x30\x00", False, None)
    t = int(NOW.timestamp())
    assert entries == [(0x1F, t + 3600, "superseded"), (0x22, t + 7200, "keyCompromise")]


def test_a_database_that_cannot_be_used_is_named_without_its_password(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as exc:
        Store("postgresql+nosuchdriver://ca:s3cret@db.example.org/certdrop")
    assert "s3cret" not in str(exc.value)
    assert str(exc.value).startswith(
        "[paths] database = 'postgresql+nosuchdriver://ca:***@db.example.org/certdrop': "
    )
    with pytest.raises(StoreError) as exc:
        Store("postgresql+psycopg2://ca:s3cret@db.example.org/certdrop")
    assert str(exc.value) == (
        "[paths] database = 'postgresql+psycopg2://ca:***@db.example.org/certdrop': its driver "
        "is not installed (psycopg2); certdrop[postgresql] brings psycopg 3: "
        "postgresql+psycopg://USER@HOST/DB"
    )
    # no server at that socket: the index cannot be opened, and the message says where
    nowhere = tmp_path / "nowhere"
    store = Store(f"postgresql://ca:s3cret@/certdrop?host={nowhere}")
    with pytest.raises(StoreError) as exc:
        store.open()
    message = str(exc.value)
    assert message.startswith(
        f"cannot open the index postgresql://ca:***@/certdrop?host={nowhere}: "
    ), message
    assert "s3cret" not in message and "\n" not in message
    assert str(nowhere) in message.split(": ", 1)[1]  # the driver's words: where it looked


def test_a_request_is_found_by_its_whole_fingerprint(store: Store) -> None:
    """by_fingerprints: every certificate of each fingerprint asked, newest first; one
    whose fingerprint only begins like an asked one (the indexed key) is not taken for it;
    more fingerprints than one query takes."""
    a, b = "ab12cd34" + "0" * 56, "ab12cd34" + "f" * 56  # the same indexed first characters
    certs = [
        replace(cert(1, [("CN", "a1")]), request_fingerprint=a, issued_at=NOW - dt.timedelta(2)),
        replace(cert(2, [("CN", "a2")]), request_fingerprint=a),
        replace(cert(3, [("CN", "b")]), request_fingerprint=b),
        *(
            replace(cert(10 + i, [("CN", f"u{i}")]), request_fingerprint=f"{i:064x}")
            for i in range(600)
        ),
    ]
    with store.begin() as conn:
        store.add_certificates(conn, certs)
    with store.begin() as conn:
        got = store.by_fingerprints(
            conn, [a, "c" * 64, a, *(f"{i:064x}" for i in range(0, 600, 1))]
        )
        assert [r.serial for r in got[a]] == [f"{2:032X}", f"{1:032X}"]
        assert b not in got and "c" * 64 not in got
        assert len(got) == 601 and got[f"{599:064x}"][0].serial == f"{609:032X}"
        assert [r.serial for r in store.by_fingerprints(conn, [b])[b]] == [f"{3:032X}"]


def test_the_fingerprint_lookup_searches_its_index(store: Store) -> None:
    """The statement by_fingerprints runs searches ix_certificates_request_key by the
    fingerprint's first characters: never a read of every certificate."""
    with store.begin() as conn:
        store.add_certificates(conn, [cert(i, [("CN", f"u{i}")]) for i in range(200)])
    fps = [f"{i:064x}" for i in range(0, 200, 3)]
    ran = statements(store, lambda: _lookup(store, fps))
    assert len(ran) == 1
    plan = query_plan(store, *ran[0])
    text = "\n".join(plan)
    if store.dialect == "sqlite":
        assert not any(s.startswith("SCAN") for s in plan), plan
        assert "USING INDEX ix_certificates_request_key (<expr>=?)" in text, plan
    else:
        assert "Seq Scan" not in text and "ix_certificates_request_key" in text, text
        [cond] = [s for s in plan if "Index Cond:" in s]
        assert "(fingerprint_pending)::text || substr((request_fingerprint)" in cond, text
        assert "= ANY" in cond, text


def _lookup(store: Store, fps: list[str]) -> None:
    with store.begin() as conn:
        assert len(store.by_fingerprints(conn, fps)) == len(fps)


def test_new_fingerprints_are_folded_among_the_others_and_still_found(store: Store) -> None:
    """A new certificate's entry is among the new ones (pending) until fold_fingerprints
    moves it, a chunk at a time; found by its fingerprint before and after; the fold
    finds the pending rows through the index, not by reading every certificate."""
    with store.begin() as conn:
        store.add_certificates(conn, [cert(i, [("CN", f"u{i}")]) for i in range(1, 8)])
        assert store.pending_fingerprints(conn) == 7
    fps = [f"{i:064x}" for i in range(1, 8)]
    ran: list[tuple[str, object]] = []

    def capture(
        conn: object, cursor: object, statement: str, parameters: object, *a: object
    ) -> None:
        if statement.lstrip().upper().startswith("UPDATE"):
            ran.append((statement, parameters))

    sa.event.listen(store.engine, "before_cursor_execute", capture)
    try:
        with store.begin() as conn:
            assert store.fold_fingerprints(conn, 3) == 3
            assert store.pending_fingerprints(conn) == 4
            assert sorted(store.by_fingerprints(conn, fps)) == fps  # folded or not
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", capture)
    with store.begin() as conn:
        assert store.fold_fingerprints(conn, 100) == 4
        assert store.fold_fingerprints(conn, 100) == 0
        assert store.pending_fingerprints(conn) == 0
        got = store.by_fingerprints(conn, fps)
        assert [got[fp][0].serial for fp in fps] == [f"{i:032X}" for i in range(1, 8)]
    plan = "\n".join(query_plan(store, *ran[0]))
    if store.dialect == "sqlite":
        assert "ix_certificates_request_key (<expr>>?)" in plan, plan
        assert "SCAN certificates" not in plan, plan
    else:
        assert "ix_certificates_request_key" in plan and "Seq Scan" not in plan, plan
