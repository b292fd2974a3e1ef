"""The documents `certdrop serve` publishes from the state folder, with their caching facts.

    /crl.der    <state>/crl.der, as the daemon published it      application/pkix-crl
    /crl.pem    <state>/crl.pem                                   application/x-pem-file
    /ca.cer     the CA certificate, DER (RFC 5280 4.2.2.1)        application/pkix-cert
    /chain.pem  the CA certificate and every CA above it, PEM     application/pem-certificate-chain

Each file is read again when it changes (its inode, size or modification time; the daemon
replaces files atomically), so a new CRL is served on the next request, with no reload.
A CRL is served with Last-Modified = its thisUpdate and a freshness lifetime that never
reaches past its nextUpdate.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..authority.lifecycle import CA_CERT, CA_CHAIN
from ..errors import ServeError
from ..publish.crl import CRL_DER, CRL_PEM

CRL_MAX_AGE = 300  # a CRL changes with every revocation: caches ask again after 5 minutes
CA_MAX_AGE = 3600  # the CA certificates change only when the CA does


@dataclass(frozen=True)
class Document:
    """One published document and what HTTP caches are told about it."""

    body: bytes
    media_type: str
    etag: str  # a strong entity tag, quoted
    last_modified: dt.datetime
    max_age: int  # seconds a cache may keep it, at most
    expires: dt.datetime | None = None  # a CRL's nextUpdate: no cache keeps it longer

    def fresh_for(self, now: dt.datetime) -> int:
        """Cache-Control max-age at `now`: `max_age`, cut at `expires` (never negative)."""
        if self.expires is None:
            return self.max_age
        return max(0, min(self.max_age, int((self.expires - now).total_seconds())))


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def _crl_document(data: bytes, pem: bool) -> Document:
    crl = x509.load_pem_x509_crl(data) if pem else x509.load_der_x509_crl(data)
    return Document(
        body=data,
        media_type="application/x-pem-file" if pem else "application/pkix-crl",
        etag=_etag(data),
        last_modified=crl.last_update_utc,
        max_age=CRL_MAX_AGE,
        expires=crl.next_update_utc,
    )


def _certificates(state: Path) -> list[x509.Certificate]:
    """The CA certificate, then those above it (ca.cer, chain.pem): never the key."""
    ca = (state / CA_CERT).read_bytes()
    certs = (
        x509.load_pem_x509_certificates(ca)
        if b"-----BEGIN" in ca
        else [x509.load_der_x509_certificate(ca)]
    )
    chain = state / CA_CHAIN
    if chain.exists():
        certs += x509.load_pem_x509_certificates(chain.read_bytes())
    return certs[:1] + [c for c in certs[1:] if c != certs[0]]


def _mtime(state: Path, names: tuple[str, ...]) -> dt.datetime:
    stamps = [os.stat(state / n).st_mtime for n in names if (state / n).exists()]
    return dt.datetime.fromtimestamp(int(max(stamps)), dt.UTC)


def _ca_document(state: Path) -> Document:
    der = _certificates(state)[0].public_bytes(serialization.Encoding.DER)
    return Document(der, "application/pkix-cert", _etag(der), _mtime(state, (CA_CERT,)), CA_MAX_AGE)


def _chain_document(state: Path) -> Document:
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in _certificates(state))
    return Document(
        pem,
        "application/pem-certificate-chain",
        _etag(pem),
        _mtime(state, (CA_CERT, CA_CHAIN)),
        CA_MAX_AGE,
    )


# what each path is made of: the files it depends on, and how the document is made
_SOURCES: dict[str, tuple[tuple[str, ...], Callable[[Path], Document]]] = {
    "crl.der": ((CRL_DER,), lambda s: _crl_document((s / CRL_DER).read_bytes(), pem=False)),
    "crl.pem": ((CRL_PEM,), lambda s: _crl_document((s / CRL_PEM).read_bytes(), pem=True)),
    "ca.cer": ((CA_CERT,), _ca_document),
    "chain.pem": ((CA_CERT, CA_CHAIN), _chain_document),
}
NAMES = tuple(_SOURCES)

_Stamp = tuple[tuple[int, int, int, int], ...]


def _stamp(state: Path, files: tuple[str, ...]) -> _Stamp:
    """What tells that a file changed: (inode, size, mtime in ns, ctime in ns) of each."""
    out = []
    for name in files:
        try:
            st = os.stat(state / name)
        except FileNotFoundError:
            out.append((0, 0, 0, 0))
            continue
        out.append((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(out)


class PublishedFiles:
    """The documents of the state folder (see the module docstring), read on change."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self._cache: dict[str, tuple[_Stamp, Document]] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> Document:
        """The document `name` (one of NAMES) as it is now. KeyError for another name;
        ServeError (with the reason) when it is missing or unreadable."""
        files, make = _SOURCES[name]
        stamp = _stamp(self.state, files)
        cached = self._cache.get(name)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        if stamp[0] == (0, 0, 0, 0):
            what = "the CRL" if name.startswith("crl") else "the CA certificate"
            raise ServeError(f"{what} has not been published yet ({self.state / files[0]})")
        try:
            doc = make(self.state)
        except (OSError, ValueError) as exc:
            raise ServeError(f"{self.state / files[0]} cannot be read: {exc}") from None
        with self._lock:
            self._cache[name] = (stamp, doc)
        return doc
