"""The Store: the uniqueness lookup (right answers, answered from the attribute index),
and certificates that collide.

The pipeline asks, for every batch, which valid certificates carry the subjects'
unique attributes. A row-value IN on (attr, value) made SQLite walk every valid
certificate; the lookup must be driven by ix_cert_attrs_value whatever the index holds.
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from certdrop.errors import SerialCollision, StoreError
from certdrop.index.store import NewCertificate, Store

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


def _cert(serial: int, attrs: list[tuple[str, str]], *, days: int = 30) -> NewCertificate:
    return NewCertificate(
        serial=f"{serial:032X}",
        subject=", ".join(f"{a}={v}" for a, v in attrs),
        common_name=next((v for a, v in attrs if a == "CN"), ""),
        email=next((v for a, v in attrs if a == "emailAddress"), ""),
        not_before=NOW - dt.timedelta(days=1),
        not_after=NOW + dt.timedelta(days=days),
        profile="client",
        request_name=f"r{serial}",
        request_fingerprint=f"{serial:064x}",
        issued_at=NOW - dt.timedelta(days=1),
        der=b"\x30\x00",
        attrs=attrs,
    )


@pytest.fixture
def store(index_url: str) -> Any:
    """An empty index on each backend: SQLite, then PostgreSQL."""
    s = Store(index_url).open()
    yield s
    s.close()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Any:
    """An empty SQLite index, for the tests that read SQLite's query plans."""
    s = Store(f"sqlite:///{tmp_path / 'index.sqlite'}").open()
    yield s
    s.close()


def test_existing_valid_finds_each_attribute_and_skips_expired_and_revoked(store: Store) -> None:
    with store.begin() as conn:
        store.add_certificates(
            conn,
            [
                _cert(1, [("CN", "Alice"), ("emailAddress", "Alice@Example.org")]),
                _cert(2, [("CN", "Bob"), ("emailAddress", "bob@example.org")]),
                _cert(3, [("CN", "Carol")], days=-1),  # expired
                _cert(4, [("CN", "Dave")]),
                _cert(5, [("CN", "alice")]),  # the same CN, folded
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
            [_cert(i, [("CN", f"u{i}"), ("emailAddress", f"u{i}@example.org")]) for i in range(n)],
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


def _statements(store: Store, run: Any) -> list[tuple[str, Any]]:
    """The SELECTs `run()` sends to the database, with their parameters."""
    ran: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            ran.append((statement, parameters))

    sa.event.listen(store.engine, "before_cursor_execute", capture)
    try:
        run()
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", capture)
    return ran


def _plan(store: Store, statement: str, parameters: Any) -> list[str]:
    """The database's plan of a statement, one line per step. PostgreSQL's is planned
    as the index is searched when it is big (no sequential scan, which a table this
    small would get) and without statistics, as in a burst into a new index."""
    with store.engine.connect() as conn:
        if store.dialect == "sqlite":
            rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)
            return [row[3] for row in rows]
        conn.exec_driver_sql("SET enable_seqscan = off")
        return [row[0] for row in conn.exec_driver_sql("EXPLAIN " + statement, parameters)]


def test_the_uniqueness_lookup_searches_indexes_with_all_its_conditions(store: Store) -> None:
    """The statements existing_valid runs: a search of ix_cert_attrs_value by value and
    attribute, then the certificates by primary key; never a read of every certificate
    (by status or expiry) or of every row of an attribute. On PostgreSQL without
    statistics an index of the attribute alone, or a status condition, was chosen and
    read them all, per batch."""
    with store.begin() as conn:
        store.add_certificates(
            conn, [_cert(i, [("CN", f"u{i}"), ("O", "Org")]) for i in range(2_000)]
        )

    def run() -> None:
        with store.begin() as conn:
            keys = [("CN", f"u{i}") for i in range(0, 1_200, 2)] + [("emailAddress", "x@y")]
            assert len(store.existing_valid(conn, keys, NOW)) == 600

    ran = _statements(store, run)
    attrs = [r for r in ran if "FROM cert_attrs" in r[0]]
    certs = [r for r in ran if "FROM certificates" in r[0]]
    assert len(attrs) == 3 and len(certs) == 2  # CN in two chunks, emailAddress in one
    for statement, parameters in attrs + certs:
        plan = _plan(store, statement, parameters)
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


def test_the_expiring_listing_is_a_range_of_the_expiry_index(store: Store) -> None:
    """`list --expiring` and the expiry warnings read the valid certificates ending in a
    window from ix_certificates_expiry (status, not_after), already in order: neither a
    walk of every valid certificate nor a sort."""
    with store.begin() as conn:
        store.add_certificates(
            conn, [_cert(i, [("CN", f"u{i}")], days=1 + i % 365) for i in range(2_000)]
        )

    def run() -> None:
        with store.begin() as conn:
            got = store.list_certs(conn, now=NOW, expiring_within=dt.timedelta(days=30), der=False)
            assert len(got) == sum(1 + i % 365 <= 30 for i in range(2_000)) and got[0].der == b""
            assert [r.not_after for r in got] == sorted(r.not_after for r in got)

    ran = _statements(store, run)
    assert len(ran) == 1
    plan = _plan(store, *ran[0])
    text = "\n".join(plan)
    if store.dialect == "sqlite":
        assert plan == [
            "SEARCH certificates USING INDEX ix_certificates_expiry "
            "(status=? AND not_after>? AND not_after<?)"
        ], plan
    else:
        # an index scan, or at scale a bitmap of this index read in the table's order
        # then sorted: either way a range of the index, never the status alone
        conds = [s for s in plan if "Index Cond:" in s]
        assert "ix_certificates_expiry" in text and len(conds) == 1, text
        assert "not_after >" in conds[0] and "not_after <=" in conds[0], text


def test_the_expiring_table_is_read_from_the_expiry_index_alone(store: Store) -> None:
    """`list --expiring`'s table (Store.list_lines) comes from ix_certificates_expiry
    alone, in order: SQLite's covering index, PostgreSQL's index-only scan; no row of the
    table (which holds the DER) is read, nothing sorted."""
    with store.begin() as conn:
        store.add_certificates(
            conn, [_cert(i, [("CN", f"u{i}")], days=1 + i % 365) for i in range(2_000)]
        )
    if store.dialect == "postgresql":  # the visibility map, as autovacuum leaves it
        with store.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
                "VACUUM ANALYZE certificates"
            )

    def run() -> None:
        with store.begin() as conn:
            got = store.list_lines(conn, now=NOW, expiring_within=dt.timedelta(days=30))
            assert len(got) == sum(1 + i % 365 <= 30 for i in range(2_000))
            assert [line[2] for line in got] == sorted(line[2] for line in got)

    ran = _statements(store, run)
    assert len(ran) == 1
    plan = _plan(store, *ran[0])
    text = "\n".join(plan)
    if store.dialect == "sqlite":
        assert plan == [
            "SEARCH certificates USING COVERING INDEX ix_certificates_expiry "
            "(status=? AND not_after>? AND not_after<?)"
        ], plan
    else:
        # a table this small is read by a bitmap of whichever index; what the test shows is
        # that the index covers the statement in its order (the 1,000,000 bench rows show
        # the planner choosing it at scale)
        with store.engine.connect() as conn:
            conn.exec_driver_sql("SET enable_seqscan = off")
            conn.exec_driver_sql("SET enable_bitmapscan = off")
            plan = [row[0] for row in conn.exec_driver_sql("EXPLAIN " + ran[0][0], ran[0][1])]
        text = "\n".join(plan)
        assert "Index Only Scan using ix_certificates_expiry" in text, text
        assert "Sort" not in text, text


def test_the_crl_reads_the_revoked_certificates_from_the_crl_index_alone(store: Store) -> None:
    """The CRL's read (Store.revoked_entries' statement) is a range of ix_certificates_crl
    in revocation order, answered by that index without the table's rows (which hold
    the DER): SQLite's covering index, PostgreSQL's index-only scan."""
    with store.begin() as conn:
        store.add_certificates(conn, [_cert(i, [("CN", f"u{i}")]) for i in range(2_000)])
        for i in range(0, 2_000, 10):
            store.revoke(conn, f"{i:032X}", "keyCompromise", NOW + dt.timedelta(seconds=i))
        entries = store.revoked_entries(conn)
    assert [serial for serial, _at, _reason in entries] == list(range(0, 2_000, 10))
    if store.dialect == "postgresql":  # as autovacuum leaves a table: statistics, and the
        # visibility map an index-only scan needs
        with store.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
                "VACUUM ANALYZE certificates"
            )
    statement = (
        "SELECT certificates.serial, certificates.revoked_at, certificates.revocation_reason "
        "FROM certificates WHERE certificates.status = 'revoked' "
        "ORDER BY certificates.revoked_at"
    )
    plan = _plan(store, statement, ())
    text = "\n".join(plan)
    if store.dialect == "sqlite":
        assert plan == [
            "SEARCH certificates USING COVERING INDEX ix_certificates_crl (status=?)"
        ], plan
    else:
        assert "Index Only Scan using ix_certificates_crl" in text and "Sort" not in text, text


def test_a_serial_already_in_the_index_collides(store: Store) -> None:
    with store.begin() as conn:
        store.add_certificate(conn, _cert(7, [("CN", "Alice")]))
    with store.begin() as conn:
        with pytest.raises(SerialCollision) as exc:
            store.add_certificate(conn, _cert(7, [("CN", "Mallory")]))
        assert isinstance(exc.value, StoreError)
        assert str(exc.value) == f"{7:032X}"
        # the transaction goes on: the caller draws a new serial
        store.add_certificate(conn, _cert(8, [("CN", "Mallory")]))
    with store.begin() as conn:
        assert [r.common_name for r in store.find(conn, f"{7:032X}")] == ["Alice"]
        assert store.existing_serials(conn, [f"{7:032X}", f"{8:032X}", "09"]) == {
            f"{7:032X}",
            f"{8:032X}",
        }


# --- the operator's lookups (`show`, `revoke`) and `list --search` ------------------------------------
def _person(
    serial: str,
    name: str,
    cn: str,
    *,
    email: str = "",
    san: tuple[str, ...] = (),
    days: int = 30,
    issued_days_ago: int = 1,
) -> NewCertificate:
    attrs = [("CN", cn)] + ([("emailAddress", email)] if email else [])
    return NewCertificate(
        serial=serial,
        subject=", ".join(f"{a}={v}" for a, v in attrs),
        common_name=cn,
        email=email or (san[0] if san else ""),
        not_before=NOW - dt.timedelta(days=issued_days_ago),
        not_after=NOW + dt.timedelta(days=days),
        profile="client",
        request_name=name,
        request_fingerprint=serial.rjust(64, "0"),
        issued_at=NOW - dt.timedelta(days=issued_days_ago),
        der=b"\x30\x00",
        attrs=attrs,
        emails=(*([email] if email else []), *san),
    )


PEOPLE = [
    _person("0A11", "alice", "Alice Example", email="Alice@Example.org", issued_days_ago=3),
    # one request name for everybody, as the old procedure told people to use
    _person("0B22", "client", "Bob Builder", san=("bob@example.org", "B.Builder@Example.ORG")),
    _person("0C33", "client", "Jürgen Groß", email="jg@example.org", issued_days_ago=2),
    # a CN that is also hex, and a serial that spells it
    _person("ED", "ed_request", "Someone Else", issued_days_ago=5),
    _person("0E44", "eddie", "Ed", days=-1),
]


def _lookup(store: Store, ref: str) -> list[tuple[str, tuple[str, ...]]]:
    with store.begin() as conn:
        return [(m.record.serial, m.matched_by) for m in store.lookup(conn, ref)]


def test_lookup_by_serial_request_name_cn_and_e_mail(store: Store) -> None:
    with store.begin() as conn:
        store.add_certificates(conn, PEOPLE[:3])
        for cert in PEOPLE[3:]:
            store.add_certificate(conn, cert)  # the single insert writes the same rows
    serial = [("0A11", ("serial",))]
    for ref in ("0A11", "0a11", "a11", "0x0a11", "0A:11", " 0a:11 ", "000A11"):
        assert _lookup(store, ref) == serial, ref
    assert _lookup(store, "alice") == [("0A11", ("request name",))]
    assert _lookup(store, "Alice") == []  # a request name is a file name: exact
    for ref in ("alice example", "ALICE EXAMPLE", "Alice Example"):
        assert _lookup(store, ref) == [("0A11", ("CN",))], ref
    # the subject's e-mail address, and each of the subjectAltName's, in any case
    assert _lookup(store, "alice@EXAMPLE.org") == [("0A11", ("e-mail",))]
    assert _lookup(store, "bob@example.org") == [("0B22", ("e-mail",))]
    assert _lookup(store, "b.builder@example.org") == [("0B22", ("e-mail",))]
    assert _lookup(store, "JÜRGEN GROSS") == [("0C33", ("CN",))]  # casefolded: ß = ss
    # several: newest first
    assert _lookup(store, "client") == [("0B22", ("request name",)), ("0C33", ("request name",))]
    assert _lookup(store, "nobody") == [] and _lookup(store, "") == []
    # hex that is a serial and a CN: both, each with how it matched; 0x means the serial
    assert _lookup(store, "ed") == [("0E44", ("CN",)), ("ED", ("serial",))]
    assert _lookup(store, "0xED") == [("ED", ("serial",))]
    with store.begin() as conn:
        assert [r.serial for r in store.find(conn, "Ed")] == ["0E44", "ED"]


def test_one_certificate_matched_several_ways_is_listed_once(store: Store) -> None:
    with store.begin() as conn:
        store.add_certificate(conn, _person("0ABC", "abc", "ABC", email="abc@example.org"))
        store.add_certificate(conn, _person("0F01", "f01", "other", email="abc@example.org"))
    assert _lookup(store, "abc") == [("0ABC", ("serial", "request name", "CN"))]
    assert _lookup(store, "ABC@example.org") == [("0F01", ("e-mail",)), ("0ABC", ("e-mail",))]


def test_the_lookups_and_the_history_are_searches_of_indexes(sqlite_store: Store) -> None:
    """Every statement `show` runs (the lookup, the journal) is answered from an index:
    SQLite's plan searches an index and never walks a table."""
    store = sqlite_store
    with store.begin() as conn:
        store.add_certificates(
            conn,
            [
                _person(f"{i:04X}", f"r{i}", f"User {i}", email=f"u{i}@example.org")
                for i in range(1, 2_000)
            ],
        )
        store.log_many(
            conn,
            [
                {"at": NOW, "name": f"r{i}", "outcome": "issued", "serial": f"{i:04X}"}
                for i in range(1, 2_000)
            ],
        )

    def run() -> None:
        with store.begin() as conn:
            for ref in ("0101", "r7", "user 9", "U11@example.org"):
                matches = store.lookup(conn, ref)
                assert len(matches) == 1, ref
                assert len(store.journal_for(conn, ref, [m.record.serial for m in matches])) == 1

    ran = _statements(store, run)
    assert len(ran) >= 4 * 4
    used: set[str] = set()
    for statement, parameters in ran:
        plan = _plan(store, statement, parameters)
        assert not any(s.startswith("SCAN") for s in plan), (statement, plan)
        used.update(s.split(" USING ")[1].removeprefix("COVERING ") for s in plan if " USING " in s)
    assert {
        "INDEX sqlite_autoindex_certificates_1 (serial=?)",
        "INDEX ix_certificates_request_name (request_name=?)",
        "INDEX ix_cert_attrs_value (value=? AND attr=?)",
        "INDEX ix_journal_name (name=?)",
        "INDEX ix_journal_serial (serial=?)",
    } <= used, used


def _search(store: Store, text: str, **kw: Any) -> list[str]:
    with store.begin() as conn:
        return sorted(r.serial for r in store.list_certs(conn, search=text, now=NOW, **kw))


def test_search_finds_text_in_serial_name_cn_and_e_mail(store: Store) -> None:
    with store.begin() as conn:
        store.add_certificates(conn, PEOPLE)
        store.revoke(conn, "0C33", "keyCompromise", NOW)
    assert _search(store, "EXAMPLE") == ["0A11", "0B22", "0C33"]  # e-mail, any case
    assert _search(store, "builder@") == ["0B22"]  # the second subjectAltName e-mail
    assert _search(store, "BUILD") == ["0B22"]  # CN and e-mail: listed once
    assert _search(store, "groß") == _search(store, "GROSS") == ["0C33"]
    assert _search(store, "lien") == ["0B22", "0C33"]  # request name "client"
    assert _search(store, "a1") == ["0A11"]  # serial
    assert _search(store, "0a:11") == ["0A11"]
    assert _search(store, "ED") == ["0E44", "ED"]  # serial ED, CN Ed, name ed_request
    assert _search(store, "nobody") == []
    # the wildcards of LIKE are text like any other
    assert _search(store, "_") == _search(store, "D_R") == ["ED"]  # in "ed_request" only
    assert _search(store, "%") == []
    # with the other filters
    assert _search(store, "example", status="revoked") == ["0C33"]
    assert _search(store, "example", status="valid") == ["0A11", "0B22"]
    assert _search(store, "e", status="expired") == ["0E44"]
    assert _search(store, "example", expiring_within=dt.timedelta(days=60)) == ["0A11", "0B22"]


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
    one = replace(_cert(0x1F, [("CN", "Zoë")]), der=der, key_generated=True, owner="zoë")
    many = [_cert(0x20 + i, [("CN", f"u{i}")]) for i in range(3)]
    with store.begin() as conn:
        store.add_certificate(conn, one)
        store.add_certificates(conn, many)
        store.revoke(conn, many[2].serial, "keyCompromise", NOW + dt.timedelta(hours=2))
        store.revoke(conn, one.serial, "superseded", NOW + dt.timedelta(hours=1))
    with store.begin() as conn:
        got = store.get(conn, one.serial)
        plain = store.get(conn, many[0].serial)
        entries = store.revoked_entries(conn)
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
