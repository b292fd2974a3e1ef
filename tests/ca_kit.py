"""CA certificates built in the tests: roots, intermediates and what is wrong with them."""

from __future__ import annotations

import datetime as dt
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

NOW = dt.datetime.now(dt.UTC)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def cert_of(
    name: str,
    key: Any,
    issuer: x509.Certificate | None = None,
    issuer_key: Any = None,
    *,
    ca: bool | None = True,
    path_length: int | None = None,
    cert_sign: bool | None = True,
    days: int = 365,
    starts: dt.timedelta = dt.timedelta(days=-1),
) -> x509.Certificate:
    """A certificate for `name` signed by `issuer_key` (self-signed without one)."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    b = x509.CertificateBuilder(
        issuer_name=issuer.subject if issuer is not None else subject,
        subject_name=subject,
        public_key=key.public_key(),
        serial_number=x509.random_serial_number(),
        not_valid_before=NOW + starts,
        not_valid_after=NOW + starts + dt.timedelta(days=days),
    )
    if ca is not None:
        b = b.add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
    if cert_sign is not None:
        b = b.add_extension(
            x509.KeyUsage(False, False, False, False, False, cert_sign, True, False, False),
            critical=True,
        )
    return b.sign(issuer_key if issuer_key is not None else key, hashes.SHA256())
