"""The offline root of a two-tier CA, in a folder on removable media.

    root.key         the root's private key, always encrypted (PKCS#8, 0600)
    root.cer         the root certificate (PEM)
    root-index.json  the issuing CAs it signed (revoked or not) and its last CRL number
    root-crl.pem     the last CRL it signed

Only the operator's commands (`init --offline-root`, `rollover`, `root-crl`) open this
folder, with the passphrase; the daemon never reads it. Nothing here overwrites a root.
"""

from __future__ import annotations

import datetime as dt
import json
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..clock import utc_seconds
from ..errors import CAError, LintError
from ..fsutil import atomic_write, ensure_dir
from .ca import crl_number
from .chain import verify_chain
from .keys import PrivateKey, generate_key, load_ca_key, private_key_pem, signature_hash
from .lifecycle import (
    CA_CERT,
    CA_CHAIN,
    CA_KEY,
    LintFunction,
    ca_exists,
    ca_name,
    install_chain_crl,
    name_constraints,
    sign_ca_certificate,
)
from .names import subject_text
from .reasons import parse_reason
from .serials import serial_hex

if TYPE_CHECKING:
    from ..config import CASettings

ROOT_KEY = "root.key"
ROOT_CERT = "root.cer"
ROOT_INDEX = "root-index.json"
ROOT_CRL = "root-crl.pem"
ROOT_PATH_LENGTH = 1  # root -> issuing CA (pathLen 0) -> end entity


@dataclass
class SignedCA:
    """An issuing CA the root signed."""

    serial: str  # hex, as the index writes serials
    subject: str
    not_after: str  # ISO 8601 UTC
    revoked_at: str = ""  # ISO 8601 UTC when revoked
    reason: str = ""


def root_exists(folder: Path) -> bool:
    return (folder / ROOT_KEY).exists() or (folder / ROOT_CERT).exists()


class OfflineRoot:
    """The root in its folder, opened with its passphrase."""

    def __init__(
        self,
        folder: Path,
        cert: x509.Certificate,
        key: PrivateKey,
        signed: list[SignedCA],
        last_crl_number: int,
    ) -> None:
        self.folder = folder
        self.cert = cert
        self.__key = key
        self.signed = signed
        self.last_crl_number = last_crl_number

    # --- creating and opening ----------------------------------------------------------------
    @classmethod
    def create(
        cls,
        folder: Path,
        settings: CASettings,
        now: dt.datetime,
        passphrase: bytes,
        linter: LintFunction | None = None,
    ) -> OfflineRoot:
        """A new root in `folder` (created 0700); never over an existing one."""
        if root_exists(folder):
            raise CAError(f"a root CA already exists in {folder}; certdrop never overwrites a CA")
        if not passphrase:
            raise CAError("the offline root's key needs a passphrase (--root-passphrase-file)")
        key = generate_key(settings.key_type)
        cert = sign_ca_certificate(
            ca_name(settings, settings.root_name),
            key.public_key(),
            key,
            now,
            settings.root_validity_days,
            path_length=ROOT_PATH_LENGTH,
            linter=linter,
        )
        ensure_dir(folder, 0o700)
        root = cls(folder, cert, key, [], 0)
        root._save()
        # key first (0600), certificate last: a root exists once root.cer exists
        atomic_write(folder / ROOT_KEY, private_key_pem(key, passphrase), 0o600)
        atomic_write(folder / ROOT_CERT, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return root

    @classmethod
    def open(cls, folder: Path, passphrase: bytes | None) -> OfflineRoot:
        """The root in `folder`, its key decrypted with `passphrase`."""
        key_path, cert_path = folder / ROOT_KEY, folder / ROOT_CERT
        if not cert_path.exists() or not key_path.exists():
            raise CAError(
                f"no offline root in {folder} (it holds no {ROOT_CERT} and {ROOT_KEY}); is the "
                "right medium mounted?"
            )
        mode = stat.S_IMODE(key_path.stat().st_mode)
        if mode & 0o077:
            raise CAError(
                f"the root key {key_path} is readable by group or others (mode {mode:04o}); "
                f"run 'chmod 600 {key_path}'"
            )
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            doc = (
                json.loads((folder / ROOT_INDEX).read_text())
                if (folder / ROOT_INDEX).exists()
                else {}
            )
            signed = [SignedCA(**item) for item in doc.get("signed", [])]
            last = int(doc.get("last_crl_number", 0))
        except (OSError, ValueError, TypeError) as exc:
            raise CAError(f"cannot read the offline root in {folder}: {exc}") from None
        if passphrase is None:
            raise CAError(f"the root key {key_path} needs its passphrase (--root-passphrase-file)")
        key = load_ca_key(key_path.read_bytes(), passphrase, str(key_path))
        if key.public_key() != cert.public_key():
            raise CAError(f"the root key {key_path} does not belong to {cert_path}")
        return cls(folder, cert, key, signed, last)

    def _save(self) -> None:
        doc = {
            "root": subject_text(self.cert.subject),
            "signed": [asdict(s) for s in self.signed],
            "last_crl_number": self.last_crl_number,
        }
        atomic_write(self.folder / ROOT_INDEX, json.dumps(doc, indent=2).encode() + b"\n", 0o600)

    # --- what the root signs -------------------------------------------------------------------
    def issue_ca(
        self,
        public_key: Any,
        settings: CASettings,
        now: dt.datetime,
        linter: LintFunction | None = None,
    ) -> x509.Certificate:
        """An issuing CA certificate for `public_key` ([ca] names, validity and name
        constraints; pathLen 0), recorded in the root's index."""
        cert = sign_ca_certificate(
            ca_name(settings, settings.common_name),
            public_key,
            self.__key,
            now,
            settings.validity_days,
            issuer=self.cert,
            path_length=0,
            constraints=name_constraints(settings),
            linter=linter,
        )
        self.signed.append(
            SignedCA(
                serial_hex(cert.serial_number),
                subject_text(cert.subject),
                cert.not_valid_after_utc.isoformat(),
            )
        )
        self._save()
        return cert

    def revoke_ca(self, serial: str, reason: str, now: dt.datetime) -> SignedCA:
        """Mark an issuing CA the root signed as revoked (on its next CRL)."""
        wanted = serial.replace(":", "").strip().upper().lstrip("0")
        found = [s for s in self.signed if s.serial.lstrip("0") == wanted]
        if not found:
            known = ", ".join(f"{s.serial} ({s.subject})" for s in self.signed) or "none"
            raise CAError(f"the root signed no CA with serial {serial}; it signed: {known}")
        ca = found[0]
        if ca.revoked_at:
            raise CAError(f"CA {ca.serial} ({ca.subject}) is already revoked since {ca.revoked_at}")
        ca.revoked_at = utc_seconds(now).isoformat()
        ca.reason = parse_reason(reason)
        self._save()
        return ca

    def sign_crl(
        self, now: dt.datetime, days: int, linter: LintFunction | None = None
    ) -> x509.CertificateRevocationList:
        """The root's next CRL (every revoked issuing CA), valid `days`; also kept as
        root-crl.pem in the folder."""
        number = crl_number(now, self.last_crl_number)
        this_update = utc_seconds(now)
        try:
            aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            )
        except x509.ExtensionNotFound:
            aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(self.__key.public_key())
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(this_update)
            .next_update(this_update + dt.timedelta(days=days))
            .add_extension(x509.CRLNumber(number), critical=False)
            .add_extension(aki, critical=False)
        )
        for ca in self.signed:
            if not ca.revoked_at:
                continue
            entry = x509.RevokedCertificateBuilder(
                serial_number=int(ca.serial, 16),
                revocation_date=dt.datetime.fromisoformat(ca.revoked_at),
            )
            if ca.reason and ca.reason != "unspecified":
                # a reason's name is also its x509.ReasonFlags value (reasons.py)
                entry = entry.add_extension(
                    x509.CRLReason(x509.ReasonFlags(ca.reason)), critical=False
                )
            builder = builder.add_revoked_certificate(entry.build())
        crl = builder.sign(self.__key, signature_hash(self.__key))  # type: ignore[arg-type]
        der = crl.public_bytes(serialization.Encoding.DER)
        if linter is not None:
            findings = linter(der)
            if findings:
                raise LintError(
                    f"the root's CRL {number} would not lint clean: " + "; ".join(findings)
                )
        self.last_crl_number = number
        self._save()
        atomic_write(self.folder / ROOT_CRL, crl.public_bytes(serialization.Encoding.PEM), 0o644)
        return crl


@dataclass(frozen=True)
class TwoTier:
    """What `create_two_tier` made."""

    root: x509.Certificate
    ca: x509.Certificate
    crl: x509.CertificateRevocationList
    new_root: bool  # False: an existing root in the folder signed the issuing CA
    warnings: tuple[str, ...] = ()


def create_two_tier(
    state: Path,
    folder: Path,
    settings: CASettings,
    now: dt.datetime,
    passphrase: bytes | None,
    root_passphrase: bytes,
    lint_certificate: LintFunction | None = None,
    lint_crl: LintFunction | None = None,
) -> TwoTier:
    """A root in `folder` (or the one already there) and an issuing CA in `state` signed
    by it, with the chain and the root's first CRL; never overwrites a CA."""
    if ca_exists(state):
        raise CAError(f"a CA already exists in {state}; certdrop never overwrites a CA")
    if folder.resolve() == state.resolve() or folder.resolve().is_relative_to(state.resolve()):
        raise CAError(
            f"--offline-root {folder} is inside the state folder {state}: the root key must "
            "stay on removable media, away from the daemon"
        )
    new_root = not root_exists(folder)
    if new_root:
        root = OfflineRoot.create(folder, settings, now, root_passphrase, lint_certificate)
    else:
        root = OfflineRoot.open(folder, root_passphrase)
    key = generate_key(settings.key_type)
    cert = root.issue_ca(key.public_key(), settings, now, lint_certificate)
    chain, warnings = verify_chain(cert, [root.cert], now)  # a self-check of what was made
    crl = root.sign_crl(now, settings.root_crl_days, lint_crl)
    ensure_dir(state, 0o700)
    # key first (0600), certificate last: a CA exists once ca.cer exists
    atomic_write(state / CA_KEY, private_key_pem(key, passphrase), 0o600)
    atomic_write(state / CA_CHAIN, root.cert.public_bytes(serialization.Encoding.PEM), 0o644)
    install_chain_crl(state, crl)
    atomic_write(state / CA_CERT, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return TwoTier(chain[-1], cert, crl, new_root, tuple(warnings))
