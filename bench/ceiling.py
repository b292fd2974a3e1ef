"""Reference ceilings: the same work done with pyca/cryptography in-process.

No files, no index, no daemon: load + verify the CSR, build the certificate certdrop
builds (same extensions), sign; optionally lint with the same pkilint validators
certdrop uses; for p12, generate the key and wrap it as certdrop's "aes256" preset.
Run in one process and in two (one per core), each worker timing its own loop.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from peers import Measure

from certdrop.authority.keys import PKCS12_KDF_ROUNDS
from certdrop.authority.lint import Linter

EKU = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
KU = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)


class Signer:
    """The CA side of the ceiling: CA key and certificate loaded once."""

    def __init__(self, ca_cert_pem: bytes, ca_key_pem: bytes, lint: bool) -> None:
        self.ca = x509.load_pem_x509_certificate(ca_cert_pem)
        self.key: Any = serialization.load_pem_private_key(ca_key_pem, None)
        public: Any = self.key.public_key()
        self.aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(public)
        # pkilint as it ships (its own walk of the document), not certdrop's dispatch
        self.linter = Linter(fast=False) if lint else None
        self.now = dt.datetime.now(dt.UTC).replace(microsecond=0)

    def build(self, subject: x509.Name, public_key: Any, email: str) -> x509.Certificate:
        b = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.ca.subject)
            .public_key(public_key)
            .serial_number(int.from_bytes(os.urandom(16), "big") >> 1)
            .not_valid_before(self.now)
            .not_valid_after(self.now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(KU, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(self.aki, critical=False)
            .add_extension(EKU, critical=False)
        )
        if email:
            b = b.add_extension(
                x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False
            )
        cert = b.sign(self.key, hashes.SHA256())
        if self.linter is not None:
            findings = self.linter.certificate(cert.public_bytes(serialization.Encoding.DER))
            if findings:
                raise RuntimeError(f"ceiling certificate does not lint clean: {findings}")
        return cert

    def from_csr(self, pem: bytes) -> bytes:
        csr = x509.load_pem_x509_csr(pem)
        if not csr.is_signature_valid:
            raise RuntimeError("CSR signature invalid")
        emails = csr.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS)
        cert = self.build(csr.subject, csr.public_key(), str(emails[0].value) if emails else "")
        return cert.public_bytes(serialization.Encoding.PEM)

    def p12(self, i: int) -> bytes:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, f"Bench User {i:05d} p12"),
                x509.NameAttribute(NameOID.EMAIL_ADDRESS, f"user{i:05d}@example.org"),
            ]
        )
        cert = self.build(name, key.public_key(), f"user{i:05d}@example.org")
        enc = (
            serialization.PrivateFormat.PKCS12.encryption_builder()
            .kdf_rounds(PKCS12_KDF_ROUNDS)
            .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
            .hmac_hash(hashes.SHA256())
            .build(os.urandom(12).hex().encode())
        )
        return pkcs12.serialize_key_and_certificates(b"p12", key, cert, [self.ca], enc)


# --- workers (module level: run in forked processes) ---------------------------------------------
def _sign_worker(
    args: tuple[bytes, bytes, bool, Sequence[bytes]],
) -> tuple[int, float, list[float]]:
    ca_cert, ca_key, lint, pems = args
    signer = Signer(ca_cert, ca_key, lint)
    signer.from_csr(pems[0])  # warm-up (lazy initialisation in a fresh process)
    durations = []
    t0 = time.perf_counter()
    for pem in pems:
        s = time.perf_counter()
        signer.from_csr(pem)
        durations.append(time.perf_counter() - s)
    return len(pems), time.perf_counter() - t0, durations


def _p12_worker(args: tuple[bytes, bytes, bool, Sequence[int]]) -> tuple[int, float, list[float]]:
    ca_cert, ca_key, lint, indices = args
    signer = Signer(ca_cert, ca_key, lint)
    signer.p12(indices[0])  # warm-up
    durations = []
    t0 = time.perf_counter()
    for i in indices:
        s = time.perf_counter()
        signer.p12(i)
        durations.append(time.perf_counter() - s)
    return len(indices), time.perf_counter() - t0, durations


def _lint_worker(args: tuple[bool, Sequence[bytes]]) -> tuple[int, float, list[float]]:
    fast, ders = args
    linter = Linter(fast=fast)
    linter.certificate(ders[0])  # warm-up
    durations = []
    t0 = time.perf_counter()
    for der in ders:
        s = time.perf_counter()
        if linter.certificate(der):
            raise RuntimeError("lint findings on a ceiling certificate")
        durations.append(time.perf_counter() - s)
    return len(ders), time.perf_counter() - t0, durations


def _default_signals() -> None:
    # forked from bench/run, whose SIGTERM handler unwinds the bench: not wanted here
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _split(items: Sequence[Any], parts: int) -> list[Sequence[Any]]:
    return [items[i::parts] for i in range(parts)]


def _parallel(
    worker: Callable[[Any], tuple[int, float, list[float]]],
    make_args: Callable[[Sequence[Any]], Any],
    items: Sequence[Any],
    processes: int,
) -> Measure:
    """Run `worker` over `items` split across processes; rate = all done / slowest worker."""
    if processes == 1:
        done, secs, durs = worker(make_args(items))
        return Measure(done, secs, durs)
    ctx = mp.get_context("fork")
    pool = ctx.Pool(processes, initializer=_default_signals)
    try:
        results = pool.map(worker, [make_args(part) for part in _split(items, processes)])
    except BaseException:
        pool.terminate()
        pool.join()
        raise
    pool.close()
    pool.join()
    done = sum(r[0] for r in results)
    secs = max(r[1] for r in results)
    return Measure(done, secs, [d for r in results for d in r[2]])


def sign_rate(
    ca_cert: bytes, ca_key: bytes, pems: Sequence[bytes], lint: bool, processes: int
) -> Measure:
    return _parallel(
        _sign_worker, lambda part: (ca_cert, ca_key, lint, list(part)), pems, processes
    )


def p12_rate(ca_cert: bytes, ca_key: bytes, n: int, lint: bool, processes: int) -> Measure:
    return _parallel(
        _p12_worker, lambda part: (ca_cert, ca_key, lint, list(part)), list(range(n)), processes
    )


def lint_rate(
    ca_cert: bytes, ca_key: bytes, pems: Sequence[bytes], processes: int, fast: bool = False
) -> Measure:
    """pkilint alone on certificates like certdrop's (made beforehand, untimed): as pkilint
    ships (its own walk of the document), or with `fast` through certdrop's dispatch."""
    signer = Signer(ca_cert, ca_key, lint=False)
    ders = [
        x509.load_pem_x509_certificate(signer.from_csr(p)).public_bytes(serialization.Encoding.DER)
        for p in pems
    ]
    return _parallel(_lint_worker, lambda part: (fast, list(part)), ders, processes)


# --- CRL --------------------------------------------------------------------------------------------
def crl_bulk_seconds(
    ca_cert: bytes, ca_key: bytes, entries: Sequence[tuple[int, dt.datetime]]
) -> float:
    """cryptography's bulk CRL builder (all entries passed at once), build + sign + DER."""
    signer = Signer(ca_cert, ca_key, lint=False)
    t0 = time.perf_counter()
    revoked = [
        x509.RevokedCertificateBuilder()
        .serial_number(serial)
        .revocation_date(when)
        .add_extension(x509.CRLReason(x509.ReasonFlags.key_compromise), critical=False)
        .build()
        for serial, when in entries
    ]
    builder = x509.CertificateRevocationListBuilder(
        issuer_name=signer.ca.subject,
        last_update=signer.now,
        next_update=signer.now + dt.timedelta(days=7),
        extensions=[
            x509.Extension(x509.CRLNumber.oid, False, x509.CRLNumber(1)),
            x509.Extension(signer.aki.oid, False, signer.aki),
        ],
        revoked_certificates=revoked,
    )
    builder.sign(signer.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
    return time.perf_counter() - t0


def crl_loop_seconds(
    ca_cert: bytes, ca_key: bytes, entries: Sequence[tuple[int, dt.datetime]]
) -> float:
    """The anti-pattern: add_revoked_certificate in a loop (copies the list each time)."""
    signer = Signer(ca_cert, ca_key, lint=False)
    t0 = time.perf_counter()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(signer.ca.subject)
        .last_update(signer.now)
        .next_update(signer.now + dt.timedelta(days=7))
    )
    for serial, when in entries:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
        )
    builder.sign(signer.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
    return time.perf_counter() - t0
