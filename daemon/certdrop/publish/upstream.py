"""The CRLs of the CAs above the issuing CA (the offline root's, from `certdrop root-crl`,
or what the operator of an adopted intermediate puts there), read from
`<state>/chain-crls/`: for Apache's CRL file, `certdrop status` and the admin alerts.

With `SSLCARevocationCheck chain`, mod_ssl refuses every client once one of these is
missing or past its nextUpdate, so each is due for renewal well before that.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from ..authority.names import subject_text

DUE_LEAD_MAX = dt.timedelta(days=30)  # a CRL is due this long before its nextUpdate at most


@dataclass(frozen=True)
class UpstreamCrl:
    """The newest valid CRL of one CA above the issuing CA (None when there is none)."""

    ca: x509.Certificate
    crl: x509.CertificateRevocationList | None
    path: Path | None = None

    @property
    def name(self) -> str:
        return subject_text(self.ca.subject)

    @property
    def number(self) -> int | None:
        return None if self.crl is None else number_of(self.crl)

    @property
    def next_update(self) -> dt.datetime | None:
        return None if self.crl is None else self.crl.next_update_utc

    @property
    def due_at(self) -> dt.datetime | None:
        return None if self.crl is None else due_at(self.crl)


def number_of(crl: x509.CertificateRevocationList) -> int | None:
    try:
        return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except x509.ExtensionNotFound:
        return None


def due_at(crl: x509.CertificateRevocationList) -> dt.datetime | None:
    """When the CA's next CRL should be signed: a quarter of this one's validity, at most
    DUE_LEAD_MAX, before its nextUpdate."""
    if crl.next_update_utc is None:
        return None
    lead = min((crl.next_update_utc - crl.last_update_utc) / 4, DUE_LEAD_MAX)
    return crl.next_update_utc - lead


def read_chain_crls(
    folder: Path, chain: Sequence[x509.Certificate], now: dt.datetime
) -> tuple[list[UpstreamCrl], list[str]]:
    """One UpstreamCrl per CA of `chain` (the newest CRL it signed in `folder`), and
    warnings: files that are no CRL or not signed by the CA they name, CAs without a
    CRL, CRLs past their nextUpdate."""
    if not chain:
        return [], []
    warnings: list[str] = []
    candidates: list[tuple[Path, x509.CertificateRevocationList]] = []
    files = sorted(folder.glob("*")) if folder.is_dir() else []
    for path in files:
        if path.name.startswith(".") or not path.is_file():
            continue
        try:
            data = path.read_bytes()
            if b"-----BEGIN" in data:
                blocks = re.findall(
                    rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", data, re.S
                )
                candidates += [(path, x509.load_pem_x509_crl(b)) for b in blocks]
            else:
                candidates.append((path, x509.load_der_x509_crl(data)))
        except (OSError, ValueError) as exc:
            warnings.append(f"{path} is not a CRL ({exc})")
    found: list[UpstreamCrl] = []
    for ca_cert in chain:
        best: tuple[Path, x509.CertificateRevocationList] | None = None
        for path, crl in candidates:
            if crl.issuer != ca_cert.subject:
                continue
            if not crl.is_signature_valid(ca_cert.public_key()):  # type: ignore[arg-type]
                warnings.append(f"{path}: CRL not signed by {subject_text(ca_cert.subject)}")
                continue
            if best is None or crl.last_update_utc > best[1].last_update_utc:
                best = (path, crl)
        if best is None:
            warnings.append(
                f"no CRL of {subject_text(ca_cert.subject)} in {folder}: with "
                "SSLCARevocationCheck chain, Apache refuses every client until there is one"
            )
            found.append(UpstreamCrl(ca_cert, None))
            continue
        upstream = UpstreamCrl(ca_cert, best[1], best[0])
        if upstream.next_update is not None and upstream.next_update <= now:
            warnings.append(
                f"the CRL of {upstream.name} expired at {upstream.next_update:%Y-%m-%d %H:%M} UTC: "
                f"Apache refuses every client; {renew_hint(folder)}"
            )
        found.append(upstream)
    return found, warnings


def renew_hint(folder: Path) -> str:
    """What to do about a root CRL that is due: the ceremony, or a fresh file."""
    return f"run 'certdrop root-crl --offline-root DIR' (or put a fresh CRL in {folder})"
