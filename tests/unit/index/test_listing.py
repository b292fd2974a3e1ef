"""The index's read side (index/listing.py): the operator's lookups (`show`, `revoke`),
`list --search`, the expiring listing and the CRL's entries, each answered from an index
(the plans are checked on SQLite and PostgreSQL).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from certdrop.index import journal, listing
from certdrop.index.store import NewCertificate, Store
from index_kit import NOW, cert, query_plan, statements


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Any:
    """An empty SQLite index, for the tests that read SQLite's query plans."""
    s = Store(f"sqlite:///{tmp_path / 'index.sqlite'}").open()
    yield s
    s.close()


def test_the_expiring_listings_are_ranges_of_the_expiry_index(store: Store) -> None:
    """`list --expiring` and the expiry warnings read the valid certificates ending in a
    window from ix_certificates_expiry (status, not_after, ...), already in order: neither
    a walk of every valid certificate nor a sort. The table of `list` (listing.list_lines)
    comes from that index alone: SQLite's covering index, PostgreSQL's index-only scan; no
    row of the table (which holds the DER) is read."""
    with store.begin() as conn:
        store.add_certificates(
            conn, [cert(i, [("CN", f"u{i}")], days=1 + i % 365) for i in range(2_000)]
        )
    if store.dialect == "postgresql":  # the visibility map, as autovacuum leaves it
        with store.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
                "VACUUM ANALYZE certificates"
            )
    expected = sum(1 + i % 365 <= 30 for i in range(2_000))
    window = dt.timedelta(days=30)

    def records() -> None:
        with store.begin() as conn:
            got = listing.list_certs(conn, now=NOW, expiring_within=window, der=False)
            assert len(got) == expected and got[0].der == b""
            assert [r.not_after for r in got] == sorted(r.not_after for r in got)

    def lines() -> None:
        with store.begin() as conn:
            got = listing.list_lines(conn, now=NOW, expiring_within=window)
            assert len(got) == expected
            assert [line[2] for line in got] == sorted(line[2] for line in got)

    for run, covered in ((records, False), (lines, True)):
        [ran] = statements(store, run)
        if store.dialect == "sqlite":
            how = "COVERING INDEX" if covered else "INDEX"
            assert query_plan(store, *ran) == [
                f"SEARCH certificates USING {how} ix_certificates_expiry "
                "(status=? AND not_after>? AND not_after<?)"
            ]
            continue
        # a table this small is read by a bitmap of whichever index it likes: what the
        # test shows is that this index answers the statement in its order (the 1,000,000
        # bench rows show the planner choosing it at scale)
        with store.engine.connect() as conn:
            conn.exec_driver_sql("SET enable_seqscan = off")
            conn.exec_driver_sql("SET enable_bitmapscan = off")
            text = "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + ran[0], ran[1]))
        scan = "Index Only Scan" if covered else "Index Scan"
        assert f"{scan} using ix_certificates_expiry" in text and "Sort" not in text, text


def test_the_crl_reads_the_revoked_certificates_from_the_crl_index_alone(store: Store) -> None:
    """The CRL's read (listing.revoked_entries' statement) is a range of ix_certificates_crl
    in revocation order, answered by that index without the table's rows (which hold
    the DER): SQLite's covering index, PostgreSQL's index-only scan."""
    with store.begin() as conn:
        store.add_certificates(conn, [cert(i, [("CN", f"u{i}")]) for i in range(2_000)])
        for i in range(0, 2_000, 10):
            store.revoke(conn, f"{i:032X}", "keyCompromise", NOW + dt.timedelta(seconds=i))
        entries = listing.revoked_entries(conn)
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
    plan = query_plan(store, statement, ())
    text = "\n".join(plan)
    if store.dialect == "sqlite":
        assert plan == [
            "SEARCH certificates USING COVERING INDEX ix_certificates_crl (status=?)"
        ], plan
    else:
        assert "Index Only Scan using ix_certificates_crl" in text and "Sort" not in text, text


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
        return [(m.record.serial, m.matched_by) for m in listing.lookup(conn, ref)]


def test_lookup_by_serial_request_name_cn_and_e_mail(store: Store) -> None:
    with store.begin() as conn:
        store.add_certificates(conn, PEOPLE[:3])
        for person in PEOPLE[3:]:
            store.add_certificate(conn, person)  # the single insert writes the same rows
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
        assert [r.serial for r in listing.find(conn, "Ed")] == ["0E44", "ED"]


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
        journal.log_many(
            conn,
            [
                {"at": NOW, "name": f"r{i}", "outcome": "issued", "serial": f"{i:04X}"}
                for i in range(1, 2_000)
            ],
        )

    def run() -> None:
        with store.begin() as conn:
            for ref in ("0101", "r7", "user 9", "U11@example.org"):
                matches = listing.lookup(conn, ref)
                assert len(matches) == 1, ref
                assert len(journal.journal_for(conn, ref, [m.record.serial for m in matches])) == 1

    ran = statements(store, run)
    assert len(ran) >= 4 * 4
    used: set[str] = set()
    for statement, parameters in ran:
        plan = query_plan(store, statement, parameters)
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
        return sorted(r.serial for r in listing.list_certs(conn, search=text, now=NOW, **kw))


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
