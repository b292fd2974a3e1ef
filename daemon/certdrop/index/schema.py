"""The index's tables, their version, and the migrations that bring an older index forward.

The schema is versioned in the `meta` table. Times are stored as integer seconds since
the epoch (UTC).
"""

from __future__ import annotations

import datetime as dt
import warnings

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..errors import StoreError

SCHEMA_VERSION = 11  # 2: mail_queue, expiry_warnings; 3: ix_certificates_crl;
# 4: the operator's lookups (LOOKUP_INDEXES, cert_attrs rows of EMAIL_ATTR); 5: outputs;
# 6: cas, certificates.issuer (in ix_certificates_crl)
# 7: hosts, leases, crls (several hosts on one index)
# 8: ix_cert_attrs_value (value, attr) instead of ix_cert_attrs_lookup (attr, value);
# ix_certificates_expiry (status, not_after) instead of ix_certificates_status;
# ix_certificates_crl of the revoked certificates only
# 9: ix_certificates_unclaimed (the rows without an issuer: none after the first start)
# 10: responders (each host's OCSP responder key, certified by the leading host);
# ix_certificates_expiry holds the columns of `list`'s table
# 11: certificates.fingerprint_pending, ix_certificates_request_key (it and a fingerprint's
# first characters) instead of ix_certificates_request_fingerprint

metadata = sa.MetaData()

meta = sa.Table(
    "meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

certificates = sa.Table(
    "certificates",
    metadata,
    sa.Column("serial", sa.String(42), primary_key=True),  # upper-case hex
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("common_name", sa.Text, nullable=False, default=""),
    sa.Column("email", sa.Text, nullable=False, default=""),
    sa.Column("not_before", sa.BigInteger, nullable=False),
    sa.Column("not_after", sa.BigInteger, nullable=False, index=True),
    sa.Column("profile", sa.String(64), nullable=False),
    sa.Column("request_name", sa.Text, nullable=False, default=""),
    sa.Column("request_fingerprint", sa.String(64), nullable=False, default=""),
    sa.Column("status", sa.String(16), nullable=False, default="valid"),
    sa.Column("revoked_at", sa.BigInteger),
    sa.Column("revocation_reason", sa.String(32)),
    sa.Column("superseded_by", sa.String(42)),
    sa.Column("issued_at", sa.BigInteger, nullable=False),
    sa.Column("owner", sa.Text, nullable=False, default=""),
    sa.Column("source", sa.String(16), nullable=False, default="issued"),
    sa.Column("key_generated", sa.Boolean, nullable=False, default=False),
    sa.Column("der", sa.LargeBinary, nullable=False),
    # schema 6: the CA that issued it (cas.id); NULL in rows written before, until the
    # CA that was issuing then claims them (index/cas.py)
    sa.Column("issuer", sa.String(64)),
    # schema 11: 1 while its entry in ix_certificates_request_key is among the new ones
    sa.Column("fingerprint_pending", sa.SmallInteger, nullable=False, server_default="0"),
)

# A request's fingerprint is looked up for every request (a re-delivery, a renewal, the
# refusal of a request whose certificate was revoked). Its values are random: in one index
# of them all, each new certificate's entry was a page written at a random place of a big
# index. So a new certificate's entry goes among the other new ones (fingerprint_pending =
# 1: a small part of the index, its pages shared by a burst's entries), and is moved among
# the others (0) later, when the daemon is idle (Store.fold_fingerprints), as PostgreSQL's
# GIN indexes keep a pending list. Indexed are the fingerprint's first
# FINGERPRINT_KEY_LENGTH characters (the full value is compared after): a quarter of the
# whole value's size, so each page takes more entries before it splits. (schema 11)
FINGERPRINT_KEY_LENGTH = 8  # 32 bits: a false match among 1,000,000 rows 1 lookup in 4,000
# "1" or "0" (pending or not), then the fingerprint's first characters: one key, so that
# PostgreSQL without statistics (a new index) searches by all of it, not by its first part
fingerprint_key = sa.cast(certificates.c.fingerprint_pending, sa.Text) + sa.func.substr(
    certificates.c.request_fingerprint,
    sa.literal_column("1"),
    sa.literal_column(str(FINGERPRINT_KEY_LENGTH)),
)  # literals, not parameters: a query names the index's expression as it is written
fingerprint_index = sa.Index("ix_certificates_request_key", fingerprint_key)

# the valid certificates ending in a window (list --expiring, the expiry warnings), in
# order of their end: a range of this index, not a walk of every valid certificate. The
# columns of `list`'s table come with it (schema 10): tens of thousands of lines are read
# from the index alone, not from as many pages of the table
expiry_index = sa.Index(
    "ix_certificates_expiry",
    certificates.c.status,
    certificates.c.not_after,
    certificates.c.serial,
    certificates.c.profile,
    certificates.c.request_name,
    certificates.c.subject,
)

# the CRL reads every revoked certificate from this index alone, not from the table's rows
# (which hold the DER): no table scan; each CA's CRL filters on the issuer in it. Only the
# revoked ones are in it (schema 8): an issued certificate's serial is random, and its
# entry was a write at a random place
_REVOKED = certificates.c.status == sa.literal_column("'revoked'")
crl_index = sa.Index(
    "ix_certificates_crl",
    certificates.c.status,
    certificates.c.revoked_at,
    certificates.c.serial,
    certificates.c.revocation_reason,
    certificates.c.issuer,
    sqlite_where=_REVOKED,
    postgresql_where=_REVOKED,
)

# the rows written before schema 6, which the issuing CA claims at each start: without
# this (empty, once claimed) index that UPDATE would read the whole table every time
_UNCLAIMED = certificates.c.issuer.is_(None)
unclaimed_index = sa.Index(
    "ix_certificates_unclaimed",
    certificates.c.serial,
    sqlite_where=_UNCLAIMED,
    postgresql_where=_UNCLAIMED,
)

# A certificate's subject attributes (attr = the short name: CN, emailAddress, ...) and,
# under EMAIL_ATTR, every e-mail address it carries (subject or subjectAltName), for lookups.
cert_attrs = sa.Table(
    "cert_attrs",
    metadata,
    sa.Column("serial", sa.String(42), sa.ForeignKey("certificates.serial"), nullable=False),
    sa.Column("attr", sa.String(32), nullable=False),
    sa.Column("value", sa.Text, nullable=False),  # casefolded
    # value first: a search for values of one attribute has no index of the attribute
    # alone to fall back on, which PostgreSQL, before it has statistics (a burst into a
    # new index), takes to be selective, then reads every row of that attribute
    sa.Index("ix_cert_attrs_value", "value", "attr"),
    sa.Index("ix_cert_attrs_serial", "serial"),
)
attrs_value_index = next(i for i in cert_attrs.indexes if i.name == "ix_cert_attrs_value")
EMAIL_ATTR = "email"  # not a subject attribute's name: it never meets the uniqueness rules

journal = sa.Table(
    "journal",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.BigInteger, nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("profile", sa.String(64), nullable=False, default=""),
    sa.Column("fingerprint", sa.String(64), nullable=False, default=""),
    sa.Column("outcome", sa.String(16), nullable=False, index=True),
    sa.Column("serial", sa.String(42)),
    sa.Column("detail", sa.Text, nullable=False, default=""),
)

pending = sa.Table(
    "pending",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("profile", sa.String(64), nullable=False),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("owner", sa.Text, nullable=False, default=""),
    sa.Column("owner_uid", sa.Integer),
    sa.Column("received_at", sa.BigInteger, nullable=False),
    sa.Column("subject", sa.Text, nullable=False, default=""),
    sa.Column("decision", sa.String(16)),  # None, "approved", "denied"
    sa.Column("decision_reason", sa.Text),
    sa.Column("decided_at", sa.BigInteger),
)

control = sa.Table(
    "control",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("payload", sa.Text, nullable=False, default="{}"),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("done_at", sa.BigInteger),
    sa.Column("result", sa.Text),
)

# --- schema 2: the durable mail queue (mailqueue.py) and the record of expiry warnings (warned.py) ---
mail_queue = sa.Table(
    "mail_queue",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(32), nullable=False),  # password, expiry, digest, alert
    sa.Column("dedupe_key", sa.String(200), unique=True),  # None, or: queued at most once
    sa.Column("recipients", sa.Text, nullable=False),  # JSON [[display name, address], ...]
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("message_id", sa.String(255), nullable=False),
    sa.Column("serial", sa.String(42)),  # the certificate the message is about, if any
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("status", sa.String(16), nullable=False, default="queued", index=True),  # or
    # "sent", or "cancelled" (an expiry warning whose certificate was renewed/revoked/expired)
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_attempt_at", sa.BigInteger, nullable=False, index=True),
    sa.Column("last_error", sa.Text),
    sa.Column("sent_at", sa.BigInteger),
)

expiry_warnings = sa.Table(
    "expiry_warnings",
    metadata,
    sa.Column("kind", sa.String(16), primary_key=True),  # "cert" or "ca"
    sa.Column("serial", sa.String(42), primary_key=True),
    sa.Column("threshold", sa.Integer, primary_key=True),  # days
    sa.Column("warned_at", sa.BigInteger, nullable=False),
)

# --- schema 5: the files each certificate was delivered as (outbox/NAME-2.cer, its p12,
# passwords/NAME-2.txt), and where they went when the same holder's renewal replaced them
outputs = sa.Table(
    "outputs",
    metadata,
    sa.Column("serial", sa.String(42), sa.ForeignKey("certificates.serial"), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # "cer", "p12", "password"
    sa.Column("path", sa.Text, nullable=False),  # absolute
    sa.Column("replaced_at", sa.BigInteger),  # moved to the archive by a renewal
    sa.PrimaryKeyConstraint("serial", "kind"),
    sa.Index("ix_outputs_path", "path"),
)


# --- schema 6: the CAs of this index: the current one (it issues), those retiring (their certificates
# are still valid: their CRLs are kept fresh) and those retired (their last certificate expired)
cas = sa.Table(
    "cas",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),  # SHA-256 (hex) of the CA's public key
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("serial", sa.String(42), nullable=False),
    sa.Column("not_before", sa.BigInteger, nullable=False),
    sa.Column("not_after", sa.BigInteger, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # current, retiring, retired
    sa.Column("since", sa.BigInteger, nullable=False),  # in this state since
    sa.Column("der", sa.LargeBinary, nullable=False),  # the CA certificate
)


# --- schema 7: several hosts on one index (cluster.py): who is alive, who leads, and the
# latest signed CRL of each CA key, which every host publishes to its own files
hosts = sa.Table(
    "hosts",
    metadata,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("started", sa.BigInteger, nullable=False),
    sa.Column("last_seen", sa.BigInteger, nullable=False),  # milliseconds since the epoch
    sa.Column("pid", sa.Integer, nullable=False, default=0),
    sa.Column("retired_at", sa.BigInteger),  # silent too long: its claims were taken over
)

leases = sa.Table(
    "leases",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),  # "leader"
    sa.Column("holder", sa.String(128), nullable=False),
    sa.Column("acquired_at", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=False),  # milliseconds since the epoch
)

crls = sa.Table(
    "crls",
    metadata,
    sa.Column("ca", sa.String(64), primary_key=True),  # the CA key's id (SHA-256 of its SPKI)
    sa.Column("number", sa.BigInteger, nullable=False),
    sa.Column("this_update", sa.BigInteger, nullable=False),
    sa.Column("signed_by", sa.String(128), nullable=False, default=""),
    sa.Column("der", sa.LargeBinary, nullable=False),
)


# --- schema 10: the OCSP responder certificates. Each host keeps its responder key and asks
# here for a certificate of its public key; the leading host signs them all
responders = sa.Table(
    "responders",
    metadata,
    sa.Column("host", sa.String(128), primary_key=True),
    sa.Column("ca", sa.String(64), primary_key=True),  # the CA that is to certify it (cas.id)
    sa.Column("public_key", sa.LargeBinary, nullable=False),  # SubjectPublicKeyInfo DER
    sa.Column("requested_at", sa.BigInteger, nullable=False),
    sa.Column("cert", sa.LargeBinary),  # DER, once the leading host signed it
    sa.Column("signed_by", sa.String(128)),
)


# --- schema 4: `show` and `revoke` find certificates by request name and show their history
# by request name or serial, each with a search of an index
LOOKUP_INDEXES = (
    sa.Index("ix_certificates_request_name", certificates.c.request_name),
    sa.Index("ix_journal_name", journal.c.name),
    sa.Index("ix_journal_serial", journal.c.serial),
)


def to_epoch(when: dt.datetime) -> int:
    if when.tzinfo is None:
        raise ValueError("naive datetime")
    return int(when.timestamp())


def from_epoch(value: int | None) -> dt.datetime | None:
    return None if value is None else dt.datetime.fromtimestamp(value, dt.UTC)


# PostgreSQL's advisory lock around install and migrate ("certdrop" in ASCII): hosts that
# start at once create or upgrade the schema one after the other, each seeing what the
# one before committed (SQLite's BEGIN IMMEDIATE does this for one file)
INSTALL_LOCK = 0x6365727464726F70


def install(conn: Connection) -> None:
    """Create the schema in an empty database, or migrate an older one to SCHEMA_VERSION."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(INSTALL_LOCK)))
    version = installed_version(conn)
    if version is None:
        metadata.create_all(conn)
        conn.execute(sa.insert(meta).values(key="schema_version", value=str(SCHEMA_VERSION)))
        conn.execute(sa.insert(meta).values(key="crl_number", value="0"))
    elif version > SCHEMA_VERSION:
        raise StoreError(
            f"the index was written by a newer certdrop (schema {version} > "
            f"{SCHEMA_VERSION}); upgrade certdrop"
        )
    elif version < SCHEMA_VERSION:
        migrate(conn, version)


def installed_version(conn: Connection) -> int | None:
    """The schema version of the database; None when it has no index yet."""
    if not sa.inspect(conn).has_table("meta"):
        return None
    value = conn.execute(sa.select(meta.c.value).where(meta.c.key == "schema_version")).scalar()
    return int(value) if value is not None else None


def migrate(conn: Connection, version: int) -> None:
    """Bring an index of schema `version` to SCHEMA_VERSION."""
    with warnings.catch_warnings():
        # checkfirst reads the table's indexes; SQLAlchemy reads no expression's (SQLite)
        warnings.filterwarnings(
            "ignore", "Skipped unsupported reflection of expression-based index", sa.exc.SAWarning
        )
        _migrate(conn, version)


def _migrate(conn: Connection, version: int) -> None:
    metadata.create_all(conn)  # new tables; column changes get explicit steps here
    if version < 4:
        for index in LOOKUP_INDEXES:
            index.create(conn, checkfirst=True)
        _add_email_rows(conn)
    if version < 6:
        # the issuer column (create_all adds no column to a table)
        columns = {c["name"] for c in sa.inspect(conn).get_columns("certificates")}
        if "issuer" not in columns:
            conn.exec_driver_sql("ALTER TABLE certificates ADD COLUMN issuer VARCHAR(64)")
    if version < 8:
        conn.exec_driver_sql("DROP INDEX IF EXISTS ix_cert_attrs_lookup")
        attrs_value_index.create(conn, checkfirst=True)
        conn.exec_driver_sql("DROP INDEX IF EXISTS ix_certificates_status")
        expiry_index.create(conn, checkfirst=True)
        # schema 3's CRL index (made here for an older one: create_all skips the indexes
        # of tables that exist), now with the issuer and of the revoked certificates only
        conn.exec_driver_sql("DROP INDEX IF EXISTS ix_certificates_crl")
        crl_index.create(conn)
    if version < 9:
        unclaimed_index.create(conn, checkfirst=True)
    if version < 10:
        conn.exec_driver_sql("DROP INDEX IF EXISTS ix_certificates_expiry")
        expiry_index.create(conn)
    if version < 11:
        columns = {c["name"] for c in sa.inspect(conn).get_columns("certificates")}
        if "fingerprint_pending" not in columns:
            conn.exec_driver_sql(
                "ALTER TABLE certificates "
                "ADD COLUMN fingerprint_pending SMALLINT NOT NULL DEFAULT 0"
            )
        conn.exec_driver_sql("DROP INDEX IF EXISTS ix_certificates_request_fingerprint")
        # created with the table when schema 1 was: IF NOT EXISTS (never reflected)
        conn.execute(sa.schema.CreateIndex(fingerprint_index, if_not_exists=True))
    conn.execute(
        sa.update(meta).where(meta.c.key == "schema_version").values(value=str(SCHEMA_VERSION))
    )


def _add_email_rows(conn: Connection) -> None:
    """The EMAIL_ATTR rows of the certificates an older certdrop recorded: the subject's
    emailAddress rows, the `email` column, and the subjectAltName e-mails of the DER."""
    from cryptography import x509  # only here: the index reads no certificate otherwise

    conn.execute(sa.delete(cert_attrs).where(cert_attrs.c.attr == EMAIL_ATTR))
    subject_emails: dict[str, set[str]] = {}
    for serial, value in conn.execute(
        sa.select(cert_attrs.c.serial, cert_attrs.c.value).where(
            cert_attrs.c.attr == "emailAddress"
        )
    ):
        subject_emails.setdefault(serial, set()).add(value)
    rows: list[dict[str, str]] = []
    for serial, email, der in conn.execute(
        sa.select(certificates.c.serial, certificates.c.email, certificates.c.der)
    ):
        found = set(subject_emails.get(serial, ()))
        if email:
            found.add(email.casefold())
        try:
            san = x509.load_der_x509_certificate(bytes(der)).extensions.get_extension_for_class(
                x509.SubjectAlternativeName
            )
            found.update(e.casefold() for e in san.value.get_values_for_type(x509.RFC822Name))
        except (
            ValueError,
            x509.ExtensionNotFound,
            x509.DuplicateExtension,
            x509.UnsupportedGeneralNameType,
        ):
            pass  # no readable subjectAltName: the subject's and the column's addresses
        rows += [{"serial": serial, "attr": EMAIL_ATTR, "value": v} for v in sorted(found)]
    for start in range(0, len(rows), 5_000):
        conn.execute(sa.insert(cert_attrs), rows[start : start + 5_000])
