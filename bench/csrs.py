"""Bench inputs: one pool of EC P-256 CSRs (cached), enrollments, and the peers' CA.

Every tool signs the very same CSR files: `pool(n)` returns the first n of a pool
kept under bench/out/csrs/, made once with cryptography (EC P-256 subject keys,
SHA-256, CN unique per CSR, the e-mail address in the subject as in the howto).
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

BENCH = Path(__file__).resolve().parent
OUT = BENCH / "out"
POOL = OUT / "csrs"


def req_name(i: int) -> str:
    return f"u{i:05d}"


def subject_of(i: int) -> tuple[str, str]:
    """(CN, e-mail) of pool entry i."""
    return f"Bench User {i:05d}", f"user{i:05d}@example.org"


def _make_csr(i: int) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    cn, email = subject_of(i)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Bench"),
            x509.NameAttribute(NameOID.EMAIL_ADDRESS, email),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def pool(n: int) -> list[tuple[str, bytes]]:
    """The first n CSRs of the pool as (NAME, PEM), made and cached on first use."""
    POOL.mkdir(parents=True, exist_ok=True)
    out: list[tuple[str, bytes]] = []
    for i in range(n):
        name = req_name(i)
        path = POOL / f"{name}.req"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            data = _make_csr(i)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        out.append((name, data))
    return out


def enrollment(i: int) -> bytes:
    """A server-side key generation request (TOML) for pool entry i."""
    cn, email = subject_of(i)
    return (f'[subject]\nCN = "{cn} p12"\nemailAddress = "{email}"\nO = "Bench"\n').encode()


@dataclass(frozen=True)
class PeerCA:
    """An equivalent CA for the peers: same key type as certdrop's, SHA-256, v3 CA extensions."""

    key_type: str  # ec-p256 | rsa-2048
    cert_pem: bytes
    key_pem: bytes  # "traditional" PEM (SEC1 / PKCS#1): every peer reads it

    def write(self, folder: Path) -> tuple[Path, Path]:
        folder.mkdir(parents=True, exist_ok=True)
        cert, key = folder / "ca.cer", folder / "ca.key"
        cert.write_bytes(self.cert_pem)
        key.write_bytes(self.key_pem)
        key.chmod(0o600)
        return cert, key


def make_peer_ca(key_type: str) -> PeerCA:
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if key_type == "ec-p256":
        key = ec.generate_private_key(ec.SECP256R1())
    elif key_type == "rsa-2048":
        key = rsa.generate_private_key(65537, 2048)
    else:
        raise ValueError(key_type)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Bench"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"Bench peer CA ({key_type})"),
        ]
    )
    now = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return PeerCA(
        key_type,
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ),
    )
