"""Helpers for the notify tests: [mail] settings for a test SMTP peer, the queue's rows,
and real certificates in a real index (made with cryptography, signed by their own key).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certdrop.config import MailSettings
from certdrop.index.schema import mail_queue
from certdrop.index.store import CertRecord, NewCertificate, Store
from certdrop.notify.queue import enqueue

T0 = dt.datetime(2030, 5, 1, 12, 0, tzinfo=dt.UTC)


def mail_settings(port: int, **kw: object) -> MailSettings:
    base: dict[str, object] = {
        "enabled": True,
        "sender": "certdrop CA <certdrop@ca.example.org>",
        "admin": "Ops Team <ops@example.org>",
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
        "timeout_seconds": 5,
    }
    base.update(kw)
    return MailSettings(**base)  # type: ignore[arg-type]


def queue_one(
    store: Store, mail: MailSettings, to: tuple[str, str] = ("", "alice@example.org"), **kw: object
) -> int:
    """Queue one message (an alert unless `kind` says otherwise) in its own transaction."""
    with store.begin() as conn:
        mid = enqueue(
            conn,
            mail,
            str(kw.pop("kind", "alert")),
            [to],
            str(kw.pop("subject", "hello")),
            str(kw.pop("body", "a test message\n")),
            kw.pop("now", T0),  # type: ignore[arg-type]
            **kw,  # type: ignore[arg-type]
        )
    assert mid is not None
    return mid


def row(store: Store, mid: int) -> dict[str, object]:
    """The stored row of message `mid`, as the database holds it."""
    with store.begin() as conn:
        r = conn.execute(sa.select(mail_queue).where(mail_queue.c.id == mid)).one()
    return dict(r._mapping)


_KEY = ec.generate_private_key(ec.SECP256R1())


def certificate(
    subject: Sequence[tuple[x509.ObjectIdentifier, str]],
    not_after: dt.datetime,
    *,
    serial: int = 0x0A,
    dns: Sequence[str] = (),
) -> x509.Certificate:
    """A certificate with this subject and end (self-signed, P-256)."""
    name = x509.Name([x509.NameAttribute(oid, value) for oid, value in subject])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(_KEY.public_key())
        .serial_number(serial)
        .not_valid_before(not_after - dt.timedelta(days=365))
        .not_valid_after(not_after)
    )
    if dns:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(d) for d in dns]), critical=False
        )
    return builder.sign(_KEY, hashes.SHA256())


def index_certificate(
    store: Store,
    cn: str,
    email: str,
    not_after: dt.datetime,
    *,
    serial: int = 0x0A,
    profile: str = "client",
    request_name: str = "",
    key_generated: bool = False,
    dns: Sequence[str] = (),
) -> CertRecord:
    """Put a certificate for CN (and emailAddress, when given) into the index."""
    subject = [(NameOID.COMMON_NAME, cn)]
    if email:
        subject.append((NameOID.EMAIL_ADDRESS, email))
    cert = certificate(subject, not_after, serial=serial, dns=dns)
    hex_serial = f"{serial:02X}"
    with store.begin() as conn:
        store.add_certificates(
            conn,
            [
                NewCertificate(
                    serial=hex_serial,
                    subject=cert.subject.rfc4514_string(),
                    common_name=cn,
                    email=email,
                    not_before=cert.not_valid_before_utc,
                    not_after=cert.not_valid_after_utc,
                    profile=profile,
                    request_name=request_name,
                    request_fingerprint=f"{serial:064x}",
                    issued_at=cert.not_valid_before_utc,
                    der=cert.public_bytes(serialization.Encoding.DER),
                    key_generated=key_generated,
                )
            ],
        )
        rec = store.get(conn, hex_serial)
    assert rec is not None
    return rec
