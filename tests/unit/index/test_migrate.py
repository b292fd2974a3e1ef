"""Copying an index into another database (index/migrate.py): SQLite into PostgreSQL and
back, every table verified by rows and checksums; a target that is not empty refused.

Real SQLite files and a real PostgreSQL server; the rows are written through the index's
own modules, as certdrop writes them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from certdrop.errors import StoreError
from certdrop.index import (
    cas,
    control,
    journal,
    listing,
    mailqueue,
    membership,
    outputs,
    responders,
    warned,
)
from certdrop.index import pending as waiting
from certdrop.index.migrate import copy_index, table_checksums
from certdrop.index.schema import metadata
from certdrop.index.store import NewCertificate, Store

T0 = dt.datetime(2030, 5, 1, 12, 0, tzinfo=dt.UTC)


def _cert(i: int, **kw: object) -> NewCertificate:
    fields: dict[str, object] = {
        "serial": f"{i:032X}",
        "subject": f"CN=User {i},emailAddress=u{i}@example.org",
        "common_name": f"User {i}",
        "email": f"u{i}@example.org",
        "not_before": T0,
        "not_after": T0 + dt.timedelta(days=365),
        "profile": "client",
        "request_name": f"user{i}",
        "request_fingerprint": f"{i:064x}",
        "issued_at": T0,
        "der": bytes([0x30, i % 256, 0, 0xFF]) * 40,
        "attrs": [("CN", f"User {i}"), ("emailAddress", f"u{i}@example.org")],
        "emails": [f"alt{i}@example.org"],
        "owner": "zoë",
    }
    fields.update(kw)
    return NewCertificate(**fields)  # type: ignore[arg-type]


def fill(store: Store, n: int = 120) -> None:
    """Rows in every table, with the values that differ between backends: bytes with NUL,
    booleans, NULLs, non-ASCII text, large integers, the CRL number."""
    with store.begin() as conn:
        store.add_certificates(conn, [_cert(i) for i in range(1, n)])
        store.add_certificate(conn, _cert(n, key_generated=True, der=b"\x00" * 10))
        store.revoke(conn, f"{3:032X}", "keyCompromise", T0 + dt.timedelta(days=1))
        store.supersede(conn, [f"{4:032X}"], f"{5:032X}")
        for i in range(1, 30):
            journal.log(conn, T0, f"user{i}", "issued", profile="client", serial=f"{i:032X}")
        journal.log(conn, T0, "bad", "rejected", detail="the CN is missing — «refusé»")
        waiting.add_pending(conn, "srv", "server", "ab" * 32, "bob", 1001, T0, "CN=srv")
        waiting.add_pending(conn, "srv2", "server", "cd" * 32, "", None, T0, "CN=srv2")
        waiting.decide_pending(conn, "srv2", "denied", "not ours", T0)
        done = control.push(conn, "revoke", {"ref": "user3"}, T0)
        control.finish(conn, done, "ok: revoked", T0)
        control.push(conn, "crl", {}, T0)
        for i in range(5):
            mailqueue.add(
                conn,
                kind="expiry",
                recipients=[("Zoë", f"u{i}@example.org")],
                subject=f"expiring {i}",
                body="body\n",
                message_id=f"<{i}@ca.example.org>",
                now=T0,
                dedupe_key=f"expiry:{i}" if i % 2 else None,
                serial=f"{i + 1:032X}",
            )
        warned.record(conn, "cert", f"{1:032X}", [30, 7], T0)
        outputs.add(conn, [(f"{i:032X}", "cer", f"/spool/outbox/user{i}.cer") for i in range(1, 9)])
        outputs.moved(conn, f"{1:032X}", "cer", "/spool/archive/user1.cer", T0)
        for _ in range(7):
            store.claim_crl_number(conn, 0)
        # two CAs (a rollover): the one before claims the certificates (schema 6)
        for ident, start in (("aa", T0), ("bb", T0 + dt.timedelta(days=2))):
            ca = cas.NewCa(ident * 32, "CN=Zoë's CA", ident, start, start, b"\x30\x00")
            cas.register_issuing(conn, ca, start)
        store.set_meta(conn, "expiry_last_sweep", T0.isoformat())
        membership.register(conn, "ca1-00aa11", 4242, T0)
        membership.try_lead(conn, "ca1-00aa11", T0, 20.0)
        membership.save_crl(conn, "ab" * 32, 7, b"\x30\x00\xff", T0, "ca1-00aa11")
        responders.request(conn, "ca1-00aa11", "bb" * 32, b"\x30\x01", T0)
        responders.certify(conn, "ca1-00aa11", "bb" * 32, b"\x30\x01", b"\x30\x02", "ca1-00aa11")
        responders.request(conn, "ca2-00bb22", "bb" * 32, b"\x30\x03", T0)


@pytest.fixture
def sqlite_index(tmp_path: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path / 'source.sqlite'}").open()
    fill(store)
    yield store
    store.close()


def _checksums(store: Store) -> dict[str, object]:
    with store.begin() as conn:
        return dict(table_checksums(conn))


def test_sqlite_into_postgresql_and_back(sqlite_index: Store, pg_url: str, tmp_path: Path) -> None:
    before = _checksums(sqlite_index)
    pg = Store(pg_url).open()
    try:
        copied = copy_index(sqlite_index, pg)
        assert {t.table for t in copied} == {t.name for t in metadata.sorted_tables}
        assert {t.table: t for t in copied} == before == _checksums(pg)
        assert {t.table: t.rows for t in copied if t.rows}.keys() == {
            t.name for t in metadata.sorted_tables
        }  # every table had rows to copy
        with pg.begin() as conn:
            rec = pg.get(conn, f"{120:032X}")
            assert rec is not None and rec.der == b"\x00" * 10 and rec.key_generated
            assert [r.serial for r in listing.find(conn, "alt7@example.org")] == [f"{7:032X}"]
            assert pg.get_meta(conn, "crl_number") == "7"
            assert pg.claim_crl_number(conn, 0) == 8  # numbers go on from the copied one
            # new rows get ids after the copied ones (PostgreSQL's sequences moved on)
            journal.log(conn, T0, "after", "issued")
            assert control.push(conn, "crl", {}, T0) == 3
            mid = mailqueue.add(
                conn,
                kind="alert",
                recipients=[("", "ops@example.org")],
                subject="s",
                body="b",
                message_id="<new@ca>",
                now=T0,
            )
            assert mid == 6
        # and back into a new SQLite file: the same index as the one it came from, plus
        # what was written since
        back = Store(f"sqlite:///{tmp_path / 'back.sqlite'}").open()
        try:
            again = {t.table: t for t in copy_index(pg, back)}
            assert again == _checksums(pg) == _checksums(back)
            unchanged = {"certificates", "cert_attrs", "pending", "outputs", "expiry_warnings"}
            assert {k: v for k, v in again.items() if k in unchanged} == {
                k: v for k, v in before.items() if k in unchanged
            }
            assert again["journal"].rows == before["journal"].rows + 1  # type: ignore[attr-defined]
        finally:
            back.close()
    finally:
        pg.close()


def test_a_target_that_is_not_empty_is_refused_and_left_as_it_was(
    sqlite_index: Store, index_url: str
) -> None:
    target = Store(index_url).open()
    try:
        with target.begin() as conn:
            journal.log(conn, T0, "someone else's", "issued")
            target.claim_crl_number(conn, 0)
        before = _checksums(target)
        with pytest.raises(StoreError) as exc:
            copy_index(sqlite_index, target)
        assert "is not empty (journal: 1 row; meta: crl_number)" in str(exc.value)
        assert "copies into an empty database only" in str(exc.value)
        assert _checksums(target) == before
    finally:
        target.close()


def test_an_index_that_only_init_opened_is_empty_enough(sqlite_index: Store, pg_url: str) -> None:
    Store(pg_url).open().close()  # `certdrop init` on the new host, with the new URL
    target = Store(pg_url).open()
    try:
        assert {t.table: t for t in copy_index(sqlite_index, target)} == _checksums(sqlite_index)
    finally:
        target.close()


def test_the_index_is_not_copied_into_itself(sqlite_index: Store) -> None:
    with pytest.raises(StoreError) as exc:
        copy_index(sqlite_index, sqlite_index)
    assert "is the index itself" in str(exc.value)


def _set_profile(store: Store, last_digit: str, profile: str) -> None:
    with store.begin() as conn:
        conn.execute(
            sa.text("UPDATE certificates SET profile = :p WHERE serial LIKE :s"),
            {"p": profile, "s": f"%{last_digit}"},
        )


def test_checksums_tell_rows_apart(index_url: str) -> None:
    """A changed value, or a value moved to another row: another checksum; the same rows
    written in another order: the same one."""
    store = Store(index_url).open()
    try:
        with store.begin() as conn:
            store.add_certificates(conn, [_cert(1), _cert(2)])
        first = _checksums(store)["certificates"]
        _set_profile(store, "1", "server")
        one_server = _checksums(store)["certificates"]
        assert one_server != first
        _set_profile(store, "1", "client")
        _set_profile(store, "2", "server")  # the same values in the column, another row
        two_server = _checksums(store)["certificates"]
        assert two_server not in (first, one_server)
        with store.begin() as conn:  # the same rows written again, in the other order
            rows = [dict(r._mapping) for r in conn.execute(sa.text("SELECT * FROM certificates"))]
            conn.execute(sa.text("DELETE FROM cert_attrs"))
            conn.execute(sa.text("DELETE FROM certificates"))
            table = sa.table("certificates", *map(sa.column, rows[0]))
            for row in rows[::-1]:
                conn.execute(table.insert().values(**row))
        assert _checksums(store)["certificates"] == two_server
    finally:
        store.close()
