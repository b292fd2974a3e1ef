"""The index schema: a new index, one written by a newer certdrop, and migrations.

Real SQLite files; an old index is made the way its certdrop made it (the tables of
its schema version), then opened by this one.
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certdrop.errors import StoreError
from certdrop.index import journal, listing, mailqueue
from certdrop.index.schema import SCHEMA_VERSION, metadata
from certdrop.index.store import NewCertificate, Store
from index_kit import cert

T0 = dt.datetime(2030, 5, 1, 12, 0, tzinfo=dt.UTC)
MESSAGE: dict[str, object] = {
    "kind": "alert",
    "recipients": [("", "ops@example.org")],
    "subject": "s",
    "body": "b",
    "message_id": "<1@ca.example.org>",
}


def test_a_new_index(index_url: str) -> None:
    store = Store(index_url).open()
    try:
        insp = sa.inspect(store.engine)
        assert {t.name for t in metadata.sorted_tables} <= set(insp.get_table_names())
        with store.begin() as conn:
            assert store.get_meta(conn, "schema_version") == str(SCHEMA_VERSION)
            assert store.get_meta(conn, "crl_number") == "0"
        assert store.integrity_check() == []
    finally:
        store.close()


def test_an_index_of_a_newer_certdrop_is_refused(index_url: str) -> None:
    url = index_url
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
        assert insp.has_table("outputs")  # schema 5: the files each certificate was delivered as
        assert "ix_outputs_path" in {i["name"] for i in insp.get_indexes("outputs")}
        assert "ix_certificates_crl" in {i["name"] for i in insp.get_indexes("certificates")}
        with store.begin() as conn:
            assert store.get_meta(conn, "schema_version") == str(SCHEMA_VERSION) == "11"
            # the CRL reads the revoked certificates from that index alone
            plan = conn.exec_driver_sql(
                "EXPLAIN QUERY PLAN SELECT serial, revoked_at, revocation_reason FROM "
                "certificates WHERE status = 'revoked' ORDER BY revoked_at"
            ).all()
            assert "COVERING INDEX ix_certificates_crl" in str(plan)
            assert store.get_meta(conn, "crl_number") == "7"
            assert journal.outcome_counts(conn) == {"issued": 1}
        with store.begin() as conn:
            assert mailqueue.add(conn, now=T0, **MESSAGE) == 1
        assert store.integrity_check() == []
    finally:
        store.close()
    Store(url).open().close()  # opening a current index again changes nothing


def test_a_version_2_index_gets_the_crl_index_and_keeps_its_mail(index_url: str) -> None:
    url = index_url
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


def _der(cn: str, subject_email: str | None, san_emails: list[str]) -> bytes:
    """A real certificate (self-signed will do: the migration only reads its fields)."""
    key = ec.generate_private_key(ec.SECP256R1())
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if subject_email:
        attrs.append(x509.NameAttribute(NameOID.EMAIL_ADDRESS, subject_email))
    name = x509.Name(attrs)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(T0)
        .not_valid_after(T0 + dt.timedelta(days=30))
    )
    if san_emails:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.RFC822Name(e) for e in san_emails]), critical=False
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def _v3_cert(
    serial: str, cn: str, email: str, der: bytes, subject_email: str = ""
) -> NewCertificate:
    attrs = [("CN", cn)] + ([("emailAddress", subject_email)] if subject_email else [])
    return NewCertificate(
        serial=serial,
        subject=f"CN={cn}",
        common_name=cn,
        email=email,
        not_before=T0,
        not_after=T0 + dt.timedelta(days=30),
        profile="client",
        request_name=cn.lower(),
        request_fingerprint="",
        issued_at=T0,
        der=der,
        attrs=attrs,
    )


LOOKUP_INDEXES = {"ix_certificates_request_name", "ix_journal_name", "ix_journal_serial"}


def test_a_version_3_index_gets_the_lookup_indexes_and_every_e_mail(index_url: str) -> None:
    """Schema 4: `show` and `revoke` find a certificate by any e-mail address it carries,
    also one an older certdrop recorded (whose index held the first address only)."""
    url = index_url
    store = Store(url).open()
    with store.begin() as conn:
        for cert in (
            # subject emailAddress and two SAN e-mails (issued: every address in the SAN)
            _v3_cert(
                "01",
                "Alice",
                "Alice@Example.org",
                _der("Alice", "Alice@Example.org", ["Alice@Example.org", "a.l@Example.ORG"]),
                subject_email="Alice@Example.org",
            ),
            # SAN e-mails only (an imported certificate)
            _v3_cert(
                "02", "Bob", "bob@example.org", _der("Bob", None, ["bob@example.org", "b@x.io"])
            ),
            # no e-mail at all
            _v3_cert("03", "Carol", "", _der("Carol", None, [])),
            # a DER that cannot be read: the column's address still counts
            _v3_cert("04", "Dave", "Dave@Example.org", b"\x30\x00"),
        ):
            store.add_certificate(conn, cert)
        journal.log(conn, T0, "alice", "issued", serial="01")
        # what schema 3 had: no lookup indexes, no e-mail rows
        for name in LOOKUP_INDEXES:
            conn.exec_driver_sql(f"DROP INDEX {name}")
        conn.exec_driver_sql("DELETE FROM cert_attrs WHERE attr = 'email'")
        store.set_meta(conn, "schema_version", "3")
    store.close()

    store = Store(url).open()
    try:
        insp = sa.inspect(store.engine)
        names = {i["name"] for t in ("certificates", "journal") for i in insp.get_indexes(t)}
        assert names >= LOOKUP_INDEXES
        with store.begin() as conn:
            assert store.get_meta(conn, "schema_version") == str(SCHEMA_VERSION)
            rows = conn.exec_driver_sql(
                "SELECT serial, value FROM cert_attrs WHERE attr = 'email' ORDER BY serial, value"
            ).all()
        assert [tuple(r) for r in rows] == [
            ("01", "a.l@example.org"),
            ("01", "alice@example.org"),
            ("02", "b@x.io"),
            ("02", "bob@example.org"),
            ("04", "dave@example.org"),
        ]
        with store.begin() as conn:
            # found by the second subjectAltName address, which schema 3 did not record
            assert [r.serial for r in listing.find(conn, "A.L@example.org")] == ["01"]
            assert [r.serial for r in listing.find(conn, "B@X.IO")] == ["02"]
        assert store.integrity_check() == []
    finally:
        store.close()
    Store(url).open().close()  # opening it again changes nothing


def test_a_version_5_index_gets_the_cas_and_the_issuer_column(tmp_path: Path) -> None:
    """Schema 6: the CAs of the index, and the issuer of each certificate (NULL in the
    rows written before, until the CA that was issuing claims them) in the CRL's index."""
    url = f"sqlite:///{tmp_path / 'v5.sqlite'}"
    store = Store(url).open()
    with store.begin() as conn:
        store.add_certificate(conn, _v3_cert("01", "Alice", "", _der("Alice", None, [])))
        store.revoke(conn, "01", "keyCompromise", T0)
        # what schema 5 had: no cas table, no issuer column, the CRL index without it
        conn.exec_driver_sql("DROP TABLE cas")
        conn.exec_driver_sql("DROP INDEX ix_certificates_crl")
        conn.exec_driver_sql("DROP INDEX ix_certificates_unclaimed")
        conn.exec_driver_sql("ALTER TABLE certificates DROP COLUMN issuer")
        conn.exec_driver_sql(
            "CREATE INDEX ix_certificates_crl ON certificates "
            "(status, revoked_at, serial, revocation_reason)"
        )
        store.set_meta(conn, "schema_version", "5")
    store.close()

    store = Store(url).open()
    try:
        insp = sa.inspect(store.engine)
        assert insp.has_table("cas")
        [crl_index] = [
            i for i in insp.get_indexes("certificates") if i["name"] == "ix_certificates_crl"
        ]
        assert crl_index["column_names"][-1] == "issuer"
        with store.begin() as conn:
            assert store.get_meta(conn, "schema_version") == str(SCHEMA_VERSION) == "11"
            assert store.get(conn, "01").issuer is None  # type: ignore[union-attr]
            # the issuing CA's CRL lists what no CA has claimed yet; another CA's does not
            assert listing.revoked_entries(conn, "ab" * 32, unclaimed=True) == [
                (1, int(T0.timestamp()), "keyCompromise")
            ]
            assert listing.revoked_entries(conn, "cd" * 32) == []
            plan = conn.exec_driver_sql(
                "EXPLAIN QUERY PLAN SELECT serial, revoked_at, revocation_reason FROM "
                "certificates WHERE status = 'revoked' AND issuer = 'ab' ORDER BY revoked_at"
            ).all()
            assert "COVERING INDEX ix_certificates_crl" in str(plan)
            # schema 9: the issuing CA's claim at each start finds the unclaimed rows by an
            # index of them alone (none, after the first), not by reading the table
            plan = conn.exec_driver_sql(
                "EXPLAIN QUERY PLAN UPDATE certificates SET issuer = 'ab' WHERE issuer IS NULL"
            ).all()
            assert "ix_certificates_unclaimed" in str(plan), plan
        assert store.integrity_check() == []
    finally:
        store.close()


def _open_at_once(url: str, hosts: int) -> list[BaseException]:
    """`hosts` threads, each with an engine of its own, open the index at one moment;
    what they raised."""
    barrier = threading.Barrier(hosts)
    errors: list[BaseException] = []

    def host() -> None:
        store = Store(url)
        try:
            barrier.wait()
            store.open()
        except BaseException as exc:
            errors.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=host) for _ in range(hosts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return errors


def test_hosts_that_start_at_once_create_the_schema_once(index_url: str) -> None:
    """Several hosts open one empty index at the same moment: every one of them opens
    it, and it holds one schema."""
    assert _open_at_once(index_url, 8) == []
    store = Store(index_url).open()
    try:
        with store.begin() as conn:
            rows = conn.execute(sa.text("SELECT key, value FROM meta ORDER BY key")).all()
        assert [tuple(r) for r in rows] == [
            ("crl_number", "0"),
            ("schema_version", str(SCHEMA_VERSION)),
        ]
    finally:
        store.close()


def test_hosts_that_start_at_once_migrate_an_old_index_once(index_url: str) -> None:
    """An index of schema 3 opened by several upgraded hosts at once: migrated once
    (the e-mail rows schema 4 adds are not doubled)."""
    store = Store(index_url).open()
    with store.begin() as conn:
        store.add_certificate(
            conn,
            _v3_cert("01", "Alice", "alice@example.org", _der("Alice", None, ["a@example.org"])),
        )
        for name in LOOKUP_INDEXES:
            conn.exec_driver_sql(f"DROP INDEX {name}")
        conn.exec_driver_sql("DELETE FROM cert_attrs WHERE attr = 'email'")
        store.set_meta(conn, "schema_version", "3")
    store.close()
    assert _open_at_once(index_url, 6) == []
    store = Store(index_url).open()
    try:
        with store.begin() as conn:
            assert store.get_meta(conn, "schema_version") == str(SCHEMA_VERSION)
            rows = conn.exec_driver_sql(
                "SELECT value FROM cert_attrs WHERE attr = 'email' ORDER BY value"
            ).all()
        assert [r[0] for r in rows] == ["a@example.org", "alice@example.org"]
    finally:
        store.close()


def test_a_version_5_index_gets_the_schema_6_indexes(index_url: str) -> None:
    """Schema 6: ix_cert_attrs_value (value, attr) replaces ix_cert_attrs_lookup (attr,
    value), ix_certificates_expiry (status, not_after) replaces ix_certificates_status,
    ix_certificates_crl holds the revoked certificates only; the rows stay and the
    lookups find them."""
    store = Store(index_url).open()
    with store.begin() as conn:
        conn.exec_driver_sql("DROP INDEX ix_cert_attrs_value")
        conn.exec_driver_sql("CREATE INDEX ix_cert_attrs_lookup ON cert_attrs (attr, value)")
        conn.exec_driver_sql("DROP INDEX ix_certificates_expiry")
        conn.exec_driver_sql("CREATE INDEX ix_certificates_status ON certificates (status)")
        conn.exec_driver_sql("DROP INDEX ix_certificates_crl")
        conn.exec_driver_sql(
            "CREATE INDEX ix_certificates_crl ON certificates "
            "(status, revoked_at, serial, revocation_reason)"
        )
        store.add_certificates(
            conn,
            [
                NewCertificate(
                    serial="0A",
                    subject="CN=Old",
                    common_name="Old",
                    email="",
                    not_before=T0 - dt.timedelta(days=1),
                    not_after=T0 + dt.timedelta(days=30),
                    profile="client",
                    request_name="old",
                    request_fingerprint="",
                    issued_at=T0 - dt.timedelta(days=1),
                    der=b"0",
                    attrs=[("CN", "Old")],
                )
            ],
        )
        store.set_meta(conn, "schema_version", "5")
    store.close()

    store = Store(index_url).open()
    try:
        names = {i["name"] for i in sa.inspect(store.engine).get_indexes("cert_attrs")}
        assert "ix_cert_attrs_value" in names and "ix_cert_attrs_lookup" not in names
        indexes = {i["name"]: i for i in sa.inspect(store.engine).get_indexes("certificates")}
        assert "ix_certificates_expiry" in indexes and "ix_certificates_status" not in indexes
        where = {k: str(v) for k, v in indexes["ix_certificates_crl"]["dialect_options"].items()}
        assert any(k.endswith("_where") and "revoked" in v for k, v in where.items()), where
        with store.begin() as conn:
            assert store.get_meta(conn, "schema_version") == str(SCHEMA_VERSION)
            assert [m.record.serial for m in listing.lookup(conn, "OLD")] == ["0A"]
            assert list(store.existing_valid(conn, [("CN", "old")], T0)) == [("CN", "old")]
    finally:
        store.close()


def test_a_version_10_index_gets_the_fingerprint_key_index(index_url: str) -> None:
    """Schema 11: certificates.fingerprint_pending and ix_certificates_request_key (it and
    the fingerprint's first characters) replace ix_certificates_request_fingerprint; the
    rows already there are among the folded ones, and found by their fingerprint."""
    store = Store(index_url).open()
    with store.begin() as conn:
        ten = replace(cert(11, [("CN", "Ten")]), request_fingerprint="9" * 64)
        store.add_certificates(conn, [ten])
        conn.exec_driver_sql("DROP INDEX ix_certificates_request_key")
        conn.exec_driver_sql("ALTER TABLE certificates DROP COLUMN fingerprint_pending")
        conn.exec_driver_sql(
            "CREATE INDEX ix_certificates_request_fingerprint ON certificates (request_fingerprint)"
        )
        store.set_meta(conn, "schema_version", "10")
    store.close()

    store = Store(index_url).open()
    try:
        with store.begin() as conn:
            assert store.get_meta(conn, "schema_version") == str(SCHEMA_VERSION) == "11"
            names = {
                r[0]
                for r in conn.exec_driver_sql(
                    "SELECT name FROM sqlite_master WHERE type = 'index'"
                    if store.dialect == "sqlite"
                    else "SELECT indexname FROM pg_indexes WHERE tablename = 'certificates'"
                )
            }
            assert "ix_certificates_request_key" in names
            assert "ix_certificates_request_fingerprint" not in names
            assert store.pending_fingerprints(conn) == 0
            assert [r.serial for r in store.by_fingerprints(conn, ["9" * 64])["9" * 64]] == [
                ten.serial
            ]
    finally:
        store.close()
