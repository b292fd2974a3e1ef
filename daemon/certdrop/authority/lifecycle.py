"""The CA in the state folder: created, adopted, found, and its certificates read.

    ca.key      the CA's private key (0600; encrypted when a passphrase is configured)
    ca.cer      the CA certificate (PEM); a CA exists once it exists
    chain.pem   the certificates above an intermediate CA (adopted, or under an offline
                root), from its issuer to the root
    chain-crls/ the CRLs of the CAs above it (the offline root's, from `root-crl`)

Nothing here ever overwrites a CA. The CA key is read here only to be created or
adopted (and written as configured); `CertificateAuthority.load` loads it for signing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from ..clock import utc_seconds
from ..errors import CAError, LintError
from ..fsutil import atomic_write, ensure_dir
from .chain import verify_chain
from .files import CA_CERT as CA_CERT  # the file names, also imported from here
from .files import CA_CHAIN as CA_CHAIN
from .files import CA_KEY as CA_KEY
from .files import CHAIN_CRLS as CHAIN_CRLS
from .files import ROOT_CRL_FILE as ROOT_CRL_FILE
from .keys import (
    PrivateKey,
    generate_key,
    load_ca_key,
    private_key_pem,
    public_key_bytes,
    signature_hash,
)
from .serials import random_serial

if TYPE_CHECKING:  # settings are pydantic models: not needed to sign
    from ..config import CASettings

LintFunction = Callable[[bytes], list[str]]
"""Lints a DER document: the findings that refuse it ([] = clean)."""


def ca_id(cert: x509.Certificate) -> str:
    """How the index names a CA: the SHA-256 (hex) of its SubjectPublicKeyInfo. A rollover
    always makes a new key, so every CA of a state folder has its own."""
    return hashlib.sha256(public_key_bytes(cert.public_key())).hexdigest()


def ca_exists(state: Path) -> bool:
    return (state / CA_KEY).exists() or (state / CA_CERT).exists()


def _certificate(data: bytes) -> x509.Certificate:
    """A certificate, PEM or DER (ValueError when it is neither)."""
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def load_ca_certificates(
    state: Path, *, check_key: bool = False
) -> tuple[x509.Certificate, list[x509.Certificate]]:
    """The CA certificate and the chain above it, without touching the key (no
    passphrase needed).

    `check_key`: the CA key must be there too, and a CA key readable by group or others
    is refused (what loading the CA and `certdrop status` check).
    """
    key_path, cert_path, chain_path = state / CA_KEY, state / CA_CERT, state / CA_CHAIN
    if check_key:
        if not cert_path.exists() or not key_path.exists():
            raise CAError(f"no CA in {state}; create one with 'certdrop init'")
        mode = stat.S_IMODE(key_path.stat().st_mode)
        if mode & 0o077:
            raise CAError(
                f"the CA key {key_path} is readable by group or others (mode "
                f"{mode:04o}); run 'chmod 600 {key_path}'"
            )
    try:
        cert = _certificate(cert_path.read_bytes())
        chain = (
            x509.load_pem_x509_certificates(chain_path.read_bytes()) if chain_path.exists() else []
        )
    except FileNotFoundError:
        raise CAError(f"no CA in {state}; create one with 'certdrop init'") from None
    except (OSError, ValueError) as exc:
        raise CAError(f"cannot read the CA certificate in {state}: {exc}") from None
    return cert, chain


def ca_name(settings: CASettings, common_name: str) -> x509.Name:
    """A CA's subject: the [ca] attributes with `common_name`."""
    attrs: list[x509.NameAttribute[str]] = []
    if settings.country:
        attrs.append(x509.NameAttribute(NameOID.COUNTRY_NAME, settings.country))
    if settings.locality:
        attrs.append(x509.NameAttribute(NameOID.LOCALITY_NAME, settings.locality))
    if settings.organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, settings.organization))
    if settings.organizational_unit:
        attrs.append(
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, settings.organizational_unit)
        )
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


def name_constraints(settings: CASettings) -> x509.NameConstraints | None:
    """The [ca] permitted_* domains as name constraints (None when there are none)."""
    permitted: list[x509.GeneralName] = [
        *(x509.RFC822Name(d) for d in settings.permitted_email_domains),
        *(x509.DNSName(d) for d in settings.permitted_dns_domains),
    ]
    if not permitted:
        return None
    return x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=None)


def sign_ca_certificate(
    subject: x509.Name,
    public_key: Any,
    signing_key: PrivateKey,
    now: dt.datetime,
    days: int,
    *,
    issuer: x509.Certificate | None = None,
    path_length: int | None = 0,
    constraints: x509.NameConstraints | None = None,
    linter: LintFunction | None = None,
) -> x509.Certificate:
    """A CA certificate for `public_key`, self-signed by `signing_key` without an
    `issuer`, else signed by it for `issuer` (and ending with it at the latest); linted
    (LintError) when a linter is given."""
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
    if issuer is None:
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    else:
        try:
            aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            )
        except x509.ExtensionNotFound:
            aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(signing_key.public_key())
    start = utc_seconds(now) - dt.timedelta(minutes=5)
    end = start + dt.timedelta(days=days)
    if issuer is not None:
        end = min(end, issuer.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if issuer is None else issuer.subject)
        .public_key(public_key)
        .serial_number(random_serial(start))
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
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
        .add_extension(ski, critical=False)
        .add_extension(aki, critical=False)
    )
    if constraints is not None:
        builder = builder.add_extension(constraints, critical=True)  # RFC 5280 4.2.1.10
    cert = builder.sign(signing_key, signature_hash(signing_key))  # type: ignore[arg-type]
    if linter is not None:
        findings = linter(cert.public_bytes(serialization.Encoding.DER))
        if findings:
            raise LintError("the CA certificate would not lint clean: " + "; ".join(findings))
    return cert


def create_ca(
    state: Path,
    settings: CASettings,
    now: dt.datetime,
    passphrase: bytes | None = None,
    linter: LintFunction | None = None,
) -> x509.Certificate:
    """Create a new root CA in `state`; never overwrites an existing one."""
    if ca_exists(state):
        raise CAError(f"a CA already exists in {state}; certdrop never overwrites a CA")
    key = generate_key(settings.key_type)
    cert = sign_ca_certificate(
        ca_name(settings, settings.common_name),
        key.public_key(),
        key,
        now,
        settings.validity_days,
        linter=linter,
    )
    ensure_dir(state, 0o700)
    # key first (0600), certificate last: a CA exists once ca.cer exists
    atomic_write(state / CA_KEY, private_key_pem(key, passphrase), 0o600)
    atomic_write(state / CA_CERT, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert


def install_chain_crl(state: Path, crl: x509.CertificateRevocationList) -> Path:
    """Put the CRL of the root above this CA where the publishers read it."""
    ensure_dir(state / CHAIN_CRLS, 0o755)
    path = state / CHAIN_CRLS / ROOT_CRL_FILE
    atomic_write(path, crl.public_bytes(serialization.Encoding.PEM), 0o644)
    return path


def adopt_ca(
    state: Path,
    cert_path: Path,
    key_path: Path,
    now: dt.datetime,
    passphrase: bytes | None = None,
    chain_path: Path | None = None,
) -> tuple[x509.Certificate, list[str]]:
    """Adopt an existing CA (such as the howto's ca.cer + ca.key) with the chain above
    it (`chain_path`, verified up to a self-signed root). Returns warnings."""
    if ca_exists(state):
        raise CAError(f"a CA already exists in {state}; certdrop never overwrites a CA")
    try:
        cert_data, key_data = cert_path.read_bytes(), key_path.read_bytes()
    except OSError as exc:
        raise CAError(f"cannot read {exc.filename}: {exc.strerror}") from None
    try:
        cert = _certificate(cert_data)
    except ValueError as exc:
        raise CAError(f"{cert_path} is not a certificate ({exc})") from None
    key = load_ca_key(key_data, passphrase, str(key_path))
    if public_key_bytes(key.public_key()) != public_key_bytes(cert.public_key()):
        raise CAError(f"{key_path} is not the private key of {cert_path}")
    warnings: list[str] = []
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        raise CAError(
            f"{cert_path} is not a CA certificate (no basicConstraints CA:TRUE)"
        ) from None
    if not bc.value.ca:
        raise CAError(f"{cert_path} is not a CA certificate (basicConstraints CA:FALSE)")
    if not bc.critical:
        warnings.append("basicConstraints is not marked critical (RFC 5280 requires it for CAs)")
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        if not ku.key_cert_sign:
            raise CAError(f"{cert_path} may not sign certificates (keyUsage lacks keyCertSign)")
        if not ku.crl_sign:
            warnings.append("keyUsage lacks cRLSign: relying parties may reject its CRLs")
    except x509.ExtensionNotFound:
        warnings.append("the CA certificate has no keyUsage extension")
    if cert.not_valid_after_utc <= now:
        raise CAError(f"{cert_path} expired on {cert.not_valid_after_utc:%Y-%m-%d}")
    algo = cert.signature_hash_algorithm
    if algo is not None and algo.name in ("sha1", "md5"):
        warnings.append(
            f"the CA certificate is signed with {algo.name.upper()}; certificates certdrop issues "
            "use SHA-256 regardless, but plan to replace this CA"
        )
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < 2048:
        raise CAError(f"the CA key has only {key.key_size} bits; at least 2048 are required")
    given: list[x509.Certificate] = []
    if chain_path is not None:
        try:
            given = x509.load_pem_x509_certificates(chain_path.read_bytes())
        except (OSError, ValueError) as exc:
            raise CAError(f"cannot read the chain {chain_path}: {exc}") from None
    # verified before anything is written: a chain that does not fit leaves no CA behind
    chain, chain_warnings = verify_chain(cert, given, now)
    warnings += chain_warnings
    ensure_dir(state, 0o700)
    atomic_write(state / CA_KEY, private_key_pem(key, passphrase), 0o600)
    if chain:
        atomic_write(
            state / CA_CHAIN,
            b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain),
            0o644,
        )
    atomic_write(state / CA_CERT, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert, warnings
