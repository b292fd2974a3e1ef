"""The index schema: a new index, one written by a newer certdrop, and migrations.

Real SQLite files; an old index is made the way its certdrop made it (the tables of
its schema version), then opened by this one.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import sqlalchemy as sa

from certdrop.errors import StoreError
from certdrop.index import mailqueue
from certdrop.index.schema import SCHEMA_VERSION, metadata
from certdrop.index.store import Store

T0 = dt.datetime(2030, 5, 1, 12, 0, tzinfo=dt.UTC)
MESSAGE: dict[str, object] = {
    "kind": "alert",
    "recipients": [("", "ops@example.org")],
    "subject": "s",
    "body": "b",
    "message_id": "<1@ca.example.org>",
}


def test_a_new_index(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'new.sqlite'}").open()
    try:
        insp = sa.inspect(store.engine)
        assert {t.name for t in metadata.sorted_tables} <= set(insp.get_table_names())
        with store.begin() as conn:
            assert store.get_meta(conn, "schema_version") == str(SCHEMA_VERSION)
            assert store.get_meta(conn, "crl_number") == "0"
        assert store.integrity_check() == []
    finally:
        store.close()


def test_an_index_of_a_newer_certdrop_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'future.sqlite'}"
    Store(url).open().close()
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE meta SET value = '99' WHERE key = 'schema_version'"))
    engine.dispose()
    with pytest.raises(StoreError) as exc:
        Store(url).open()
    assert str(exc.value) == (
        f"the index was written by a newer certdrop (schema 99 > {SCHEMA_VERSION}); "
        "upgrade certdrop"
    )


def test_a_version_1_index_migrates(tmp_path: Path) -> None:
    """Schema 1 (no mail tables, no CRL index) is brought to the current schema."""
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    engine = sa.create_engine(url)
    v1_tables = [
        t for t in metadata.sorted_tables if t.name not in ("mail_queue", "expiry_warnings")
    ]
    with engine.begin() as conn:
        metadata.create_all(conn, tables=v1_tables)
        conn.execute(sa.text("DROP INDEX ix_certificates_crl"))  # schema 3
        conn.execute(sa.text("INSERT INTO meta (key, value) VALUES ('schema_version', '1')"))
        conn.execute(sa.text("INSERT INTO meta (key, value) VALUES ('crl_number', '7')"))
        conn.execute(
            sa.text(
                "INSERT INTO journal (at, name, profile, fingerprint, outcome, detail) "
                "VALUES (1, 'old', 'client', '', 'issued', '')"
            )
        )
    engine.dispose()
    assert not sa.inspect(sa.create_engine(url)).has_table("mail_queue")

    store = Store(url).open()
    try:
        insp = sa.inspect(store.engine)
        assert insp.has_table("mail_queue") and insp.has_table("expiry_warnings")
        assert "ix_certificates_crl" in {i["name"] for i in insp.get_indexes("certificates")}
        with store.begin() as conn:
            assert store.get_meta(conn, "schema_version") == str(SCHEMA_VERSION) == "4"
            # the CRL reads the revoked certificates from that index alone
            plan = conn.exec_driver_sql(
                "EXPLAIN QUERY PLAN SELECT serial, revoked_at, revocation_reason FROM "
                "certificates WHERE status = 'revoked' ORDER BY revoked_at"
            ).all()
            assert "COVERING INDEX ix_certificates_crl" in str(plan)
            assert store.get_meta(conn, "crl_number") == "7"
            assert store.outcome_counts(conn) == {"issued": 1}
        with store.begin() as conn:
            assert mailqueue.add(conn, now=T0, **MESSAGE) == 1
        assert store.integrity_check() == []
    finally:
        store.close()
    Store(url).open().close()  # opening a current index again changes nothing


def test_a_version_2_index_gets_the_crl_index_and_keeps_its_mail(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'v2.sqlite'}"
    store = Store(url).open()
    with store.begin() as conn:
        assert mailqueue.add(conn, now=T0, **MESSAGE) == 1
        conn.exec_driver_sql("DROP INDEX ix_certificates_crl")
        store.set_meta(conn, "schema_version", "2")
    store.close()

    store = Store(url).open()
    try:
        indexes = {i["name"] for i in sa.inspect(store.engine).get_indexes("certificates")}
        assert "ix_certificates_crl" in indexes
        with store.begin() as conn:
            assert store.get_meta(conn, "schema_version") == str(SCHEMA_VERSION)
            assert [m.subject for m in mailqueue.list_queue(conn)] == ["s"]
    finally:
        store.close()
