"""`certdrop import`: adopt certificates issued before certdrop.

Two sources:

* an openssl CA database: `index.txt` (the `database` of `openssl ca`), one line per
  certificate, tab-separated: status (V valid, R revoked, E expired), expiry time,
  revocation time[,reason], serial (hex), file name ("unknown"), subject DN; the
  certificates themselves are SERIAL.pem in the `new_certs_dir`;
* a folder of certificate files (.cer .crt .pem .der), as the howto's
  `openssl x509 -req ... -out client.cer` leaves them.

Every certificate is checked before it enters the index: it must parse, be signed
by this CA, carry the serial the index says, and not be in the index already.
Whatever is skipped is reported with the reason. Imported certificates get
source "imported"; revoked ones keep their revocation time and reason, so that
they appear on certdrop's CRL; all of them are listed, warned about and revocable
like certificates certdrop issued itself.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from ..authority.lifecycle import ca_id
from ..authority.names import OID_NAMES, subject_text
from ..authority.reasons import OPENSSL_REASONS
from ..authority.serials import serial_hex
from ..clock import Clock
from ..errors import CertdropError, SerialCollision
from ..index import journal
from ..index.store import NewCertificate, Store

CERT_SUFFIXES = (".cer", ".crt", ".pem", ".der")


@dataclass(frozen=True)
class Candidate:
    """One certificate to adopt, before any check."""

    where: str  # "index.txt line 3" or the file name, for the report
    name: str  # the request name it gets in the index
    path: Path | None  # the certificate file, None when it was not found
    index_serial: str | None = None  # what index.txt says
    index_status: str | None = None  # V R E
    revoked_at: dt.datetime | None = None
    revocation_reason: str | None = None
    problem: str = ""  # already known to be unusable (a malformed index line)


@dataclass(frozen=True)
class Skipped:
    where: str
    reason: str
    serial: str | None = None


@dataclass(frozen=True)
class Imported:
    where: str
    serial: str
    subject: str
    status: str  # valid, expired, revoked (as of now)
    not_after: dt.datetime


@dataclass
class ImportReport:
    source: str
    profile: str
    dry_run: bool
    imported: list[Imported] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out = {"valid": 0, "expired": 0, "revoked": 0}
        for i in self.imported:
            out[i.status] = out.get(i.status, 0) + 1
        return out

    def as_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "profile": self.profile,
            "dry_run": self.dry_run,
            "imported": [
                {
                    "where": i.where,
                    "serial": i.serial,
                    "subject": i.subject,
                    "status": i.status,
                    "not_after": i.not_after.isoformat(),
                }
                for i in self.imported
            ],
            "skipped": [
                {"where": s.where, "serial": s.serial, "reason": s.reason} for s in self.skipped
            ],
            "counts": {**self.counts(), "skipped": len(self.skipped)},
        }


# --- reading the sources ----------------------------------------------------------------------------------
def parse_openssl_time(text: str) -> dt.datetime:
    """index.txt times: UTCTime YYMMDDHHMMSSZ (years 1950-2049) or GeneralizedTime."""
    t = text.strip()
    if re.fullmatch(r"\d{12}Z", t):
        year = int(t[:2])
        t = f"{1900 + year if year >= 50 else 2000 + year}{t[2:]}"
    if not re.fullmatch(r"\d{14}Z", t):
        raise ValueError(f"{text!r} is not an openssl time (YYMMDDHHMMSSZ)")
    return dt.datetime.strptime(t, "%Y%m%d%H%M%SZ").replace(tzinfo=dt.UTC)


def _revocation(field_text: str) -> tuple[dt.datetime, str]:
    """'YYMMDDHHMMSSZ[,reason[,extra]]' -> (time, certdrop reason name)."""
    parts = field_text.split(",")
    when = parse_openssl_time(parts[0])
    reason = "unspecified"
    if len(parts) > 1 and parts[1]:
        mapped = OPENSSL_REASONS.get(parts[1].strip().lower())
        if mapped is None:
            raise ValueError(f"unknown revocation reason {parts[1]!r}")
        reason = mapped
    return when, reason


def read_openssl_index(index: Path, certs_dir: Path) -> list[Candidate]:
    """The entries of an `openssl ca` database, each with its SERIAL.pem (if found)."""
    try:
        text = index.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise CertdropError(f"cannot read {index}: {exc.strerror}") from None
    if not certs_dir.is_dir():
        raise CertdropError(
            f"the certificate folder {certs_dir} does not exist; pass --certs with the "
            "new_certs_dir of the openssl CA (where SERIAL.pem files are)"
        )
    out: list[Candidate] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{index.name} line {number}"
        fields = line.split("\t")
        if len(fields) < 6 or fields[0] not in ("V", "R", "E"):
            out.append(
                Candidate(
                    where,
                    "",
                    None,
                    problem="not an index.txt line (status, expiry, revocation, serial, "
                    "file, subject, separated by tabs)",
                )
            )
            continue
        status, _expiry, revoked, serial, filename, _subject = fields[:6]
        serial = serial.strip().upper()
        revoked_at: dt.datetime | None = None
        reason: str | None = None
        problem = ""
        if not re.fullmatch(r"[0-9A-F]+", serial):
            problem = f"the serial {serial!r} is not hexadecimal"
        elif status == "R":
            try:
                revoked_at, reason = _revocation(revoked)
            except ValueError as exc:
                problem = f"the revocation field {revoked!r} cannot be read: {exc}"
        path = _find_cert_file(certs_dir, serial, filename) if not problem else None
        if not problem and path is None:
            problem = f"its certificate {serial}.pem is not in {certs_dir}"
        name = _name_for(filename, path, serial)
        out.append(
            Candidate(
                where,
                name,
                path,
                index_serial=serial,
                index_status=status,
                revoked_at=revoked_at,
                revocation_reason=reason,
                problem=problem,
            )
        )
    return out


def _find_cert_file(certs_dir: Path, serial: str, filename: str) -> Path | None:
    names = [f"{serial}.pem", f"{serial.lower()}.pem"]
    if len(serial) % 2:
        names += [f"0{serial}.pem", f"0{serial.lower()}.pem"]
    for n in names:
        p = certs_dir / n
        if p.is_file():
            return p
    if filename and filename != "unknown":
        p = Path(filename)
        if not p.is_absolute():
            p = certs_dir / p
        if p.is_file():
            return p
    return None


def _name_for(filename: str, path: Path | None, serial: str) -> str:
    if filename and filename != "unknown":
        return Path(filename).stem
    return path.stem if path is not None else serial


def read_cert_folder(folder: Path) -> list[Candidate]:
    """Every certificate file in `folder` (not recursive), by name."""
    try:
        entries = sorted(p for p in folder.iterdir() if p.name.lower().endswith(CERT_SUFFIXES))
    except OSError as exc:
        raise CertdropError(f"cannot read the folder {folder}: {exc.strerror}") from None
    return [Candidate(p.name, p.stem, p) for p in entries if not p.name.startswith(".")]


# --- adopting ---------------------------------------------------------------------------------------------
def _load_certs(data: bytes) -> list[x509.Certificate]:
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificates(data)
    return [x509.load_der_x509_certificate(data)]


def _issued_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _subject_pairs(name: x509.Name) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for attr in name:
        short = OID_NAMES.get(attr.oid)
        if short is not None and isinstance(attr.value, str):
            pairs.append((short, attr.value))
    return pairs


def _email_of(cert: x509.Certificate, pairs: list[tuple[str, str]]) -> str:
    email = next((v for n, v in pairs if n == "emailAddress"), "")
    if email:
        return email
    emails = _san_emails(cert)
    return emails[0] if emails else ""


def _san_emails(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        return []
    return san.get_values_for_type(x509.RFC822Name)


class Importer:
    def __init__(
        self,
        store: Store,
        ca_cert: x509.Certificate,
        clock: Clock,
        profile: str,
        *,
        dry_run: bool = False,
        audit: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.store = store
        self.ca_cert = ca_cert
        self.clock = clock
        self.profile = profile
        self.dry_run = dry_run
        self.audit = audit

    def run(
        self,
        source: str,
        candidates: list[Candidate],
        progress: Callable[[int], None] | None = None,
    ) -> ImportReport:
        report = ImportReport(source=source, profile=self.profile, dry_run=self.dry_run)
        seen: set[str] = set()
        for cand in candidates:
            try:
                self._one(cand, report, seen)
            finally:
                if progress is not None:
                    progress(1)
        return report

    def _one(self, cand: Candidate, report: ImportReport, seen: set[str]) -> None:
        def skip(reason: str, serial: str | None = cand.index_serial) -> None:
            report.skipped.append(Skipped(cand.where, reason, serial))

        if cand.problem or cand.path is None:
            skip(cand.problem or "no certificate file")
            return
        try:
            certs = _load_certs(cand.path.read_bytes())
        except OSError as exc:
            skip(f"cannot read {cand.path.name}: {exc.strerror}")
            return
        except ValueError:
            skip(f"unparsable: {cand.path.name} is not a certificate (PEM or DER)")
            return
        if not certs:
            skip(f"unparsable: {cand.path.name} holds no certificate")
            return
        for i, cert in enumerate(certs):
            where = cand.where if len(certs) == 1 else f"{cand.where} #{i + 1}"
            name = cand.name if len(certs) == 1 else f"{cand.name}.{i + 1}"
            self._adopt(cand, cert, where, name, report, seen)

    def _adopt(
        self,
        cand: Candidate,
        cert: x509.Certificate,
        where: str,
        name: str,
        report: ImportReport,
        seen: set[str],
    ) -> None:
        serial = serial_hex(cert.serial_number)

        def skip(reason: str) -> None:
            report.skipped.append(Skipped(where, reason, serial))

        der = cert.public_bytes(serialization.Encoding.DER)
        if der == self.ca_cert.public_bytes(serialization.Encoding.DER):
            skip("this is the CA certificate itself")
            return
        if cand.index_serial is not None and int(cand.index_serial, 16) != cert.serial_number:
            skip(
                f"mismatched serial: index.txt says {cand.index_serial}, the certificate "
                f"{cand.path.name if cand.path else ''} has {serial}"
            )
            return
        if not _issued_by(cert, self.ca_cert):
            skip(f"not signed by this CA (issuer {subject_text(cert.issuer)})")
            return
        if serial in seen:
            skip("listed twice in this import")
            return
        with self.store.begin() as conn:
            if self.store.serial_exists(conn, serial):
                skip("already in the index")
                return
        now = self.clock.now()
        pairs = _subject_pairs(cert.subject)
        revoked = cand.index_status == "R"
        record = NewCertificate(
            serial=serial,
            subject=subject_text(cert.subject),
            common_name=next((v for n, v in pairs if n == "CN"), ""),
            email=_email_of(cert, pairs),
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            profile=self.profile,
            request_name=name,
            request_fingerprint="",
            issued_at=cert.not_valid_before_utc,
            der=der,
            attrs=pairs,
            emails=_san_emails(cert),
            owner="",
            source="imported",
            status="revoked" if revoked else "valid",
            revoked_at=cand.revoked_at if revoked else None,
            revocation_reason=cand.revocation_reason if revoked else None,
            issuer=ca_id(self.ca_cert),
        )
        if not self.dry_run:
            try:
                with self.store.begin() as conn:
                    self.store.add_certificate(conn, record)
                    journal.log(
                        conn,
                        now,
                        name,
                        "imported",
                        profile=self.profile,
                        serial=serial,
                        detail=f"from {where}",
                    )
            except SerialCollision:
                skip("already in the index")
                return
        seen.add(serial)
        status = "revoked" if revoked else ("expired" if record.not_after <= now else "valid")
        report.imported.append(Imported(where, serial, record.subject, status, record.not_after))
        if self.audit is not None and not self.dry_run:
            self.audit(
                {
                    "event": "imported",
                    "name": name,
                    "serial": serial,
                    "subject": record.subject,
                    "status": status,
                    "from": where,
                    "profile": self.profile,
                }
            )


def candidates_for(source: Path, certs_dir: Path | None) -> tuple[str, list[Candidate]]:
    """What `certdrop import SOURCE` reads: an index.txt (file) or a folder of certificates."""
    if source.is_dir():
        if certs_dir is not None:
            raise CertdropError("--certs goes with an index.txt, not with a folder of certificates")
        return f"the folder {source}", read_cert_folder(source)
    if not source.is_file():
        raise CertdropError(
            f"{source} does not exist; give an openssl index.txt or a folder of .cer files"
        )
    if certs_dir is None:
        # openssl.cnf's usual new_certs_dir = $dir/newcerts, beside index.txt
        guess = source.parent / "newcerts"
        certs_dir = guess if guess.is_dir() else source.parent
    return f"{source} (certificates in {certs_dir})", read_openssl_index(source, certs_dir)


def iter_report_lines(report: ImportReport) -> Iterator[str]:
    c = report.counts()
    verb = "would import" if report.dry_run else "imported"
    yield (
        f"{verb} {len(report.imported)} certificate(s) from {report.source} "
        f"into profile {report.profile}: {c['valid']} valid, {c['expired']} expired, "
        f"{c['revoked']} revoked"
    )
    if report.skipped:
        yield f"skipped {len(report.skipped)}:"
        width = max(len(s.where) for s in report.skipped)
        for s in report.skipped:
            serial = f" (serial {s.serial})" if s.serial else ""
            yield f"  {s.where:<{width}}  {s.reason}{serial}"
