"""The Store: the uniqueness lookup (right answers, answered from the attribute index),
and certificates that collide.

The pipeline asks, for every batch, which valid certificates carry the subjects'
unique attributes. A row-value IN on (attr, value) made SQLite walk every valid
certificate; the lookup must be driven by ix_cert_attrs_lookup whatever the index holds.
"""

from __future__ import annotations

import datetime as dt
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
def store(tmp_path: Path) -> Any:
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


def test_the_lookup_is_driven_by_the_attribute_index(store: Store) -> None:
    """SQLite's plan for the statements existing_valid runs: a search of
    ix_cert_attrs_lookup, then the certificate by serial; never a walk of the
    certificates (by status) or of cert_attrs."""
    with store.begin() as conn:
        store.add_certificates(conn, [_cert(i, [("CN", f"u{i}")]) for i in range(2_000)])
    ran: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        if "cert_attrs" in statement:
            ran.append((statement, parameters))

    sa.event.listen(store.engine, "before_cursor_execute", capture)
    try:
        with store.begin() as conn:
            keys = [("CN", f"u{i}") for i in range(0, 1_200, 2)] + [("emailAddress", "x@y")]
            assert len(store.existing_valid(conn, keys, NOW)) == 600
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", capture)
    assert len(ran) == 3  # CN in two chunks, emailAddress in one
    with store.engine.connect() as conn:
        for statement, parameters in ran:
            plan = [
                row[3]
                for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)
            ]
            assert any("cert_attrs USING INDEX ix_cert_attrs_lookup" in s for s in plan), plan
            assert not any(s.startswith("SCAN") for s in plan), plan
            assert not any("ix_certificates_status" in s for s in plan), plan


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
