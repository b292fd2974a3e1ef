"""A CA certificate's chain up to a self-signed root, verified before it is trusted.

`verify_chain` is what adopting a CA (and making a two-tier one) checks: every
certificate above the CA is signed by the next, is a CA that may sign certificates,
is valid now, allows the CAs below it (pathLenConstraint), and the last one is a
self-signed root. Anything that does not fit is refused with the reason: a wrong
chain would otherwise go into every p12 and into Apache's CA bundle.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from ..errors import CAError
from .names import subject_text


def _name(cert: x509.Certificate) -> str:
    return f"'{subject_text(cert.subject)}'"


def signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether `issuer` names and signs `cert` (its key verifies the signature).

    Checked with the public key directly, not `verify_directly_issued_by`, which refuses
    SHA-1: the howto's CA is signed with it, and adopting it is only a warning."""
    if cert.issuer != issuer.subject:
        return False
    key: Any = issuer.public_key()
    params: Any = cert.signature_algorithm_parameters
    try:
        if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            key.verify(cert.signature, cert.tbs_certificate_bytes)
        elif isinstance(key, rsa.RSAPublicKey) and cert.signature_hash_algorithm is not None:
            key.verify(
                cert.signature, cert.tbs_certificate_bytes, params, cert.signature_hash_algorithm
            )
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(cert.signature, cert.tbs_certificate_bytes, params)
        else:
            return False
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def is_self_signed(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject and signed_by(cert, cert)


def _check_issuer(cert: x509.Certificate, below: int, now: dt.datetime, root: bool) -> list[str]:
    """`cert` may sign the `below` CA certificates under it; warnings (CAError if not)."""
    warnings: list[str] = []
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        if not root:
            raise CAError(
                f"{_name(cert)} in the chain is not a CA certificate (no basicConstraints)"
            ) from None
        bc = None
        warnings.append(f"the root {_name(cert)} has no basicConstraints (a version 1 root)")
    if bc is not None:
        if not bc.ca:
            raise CAError(
                f"{_name(cert)} in the chain is not a CA certificate (basicConstraints CA:FALSE)"
            )
        if bc.path_length is not None and below > bc.path_length:
            raise CAError(
                f"{_name(cert)} allows {bc.path_length} CA certificate(s) below it "
                f"(pathLenConstraint), but {below} would be"
            )
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        if not ku.key_cert_sign:
            raise CAError(
                f"{_name(cert)} in the chain may not sign certificates (keyUsage lacks keyCertSign)"
            )
    except x509.ExtensionNotFound:
        pass
    _check_validity(cert, now)
    return warnings


def _check_validity(cert: x509.Certificate, now: dt.datetime) -> None:
    if cert.not_valid_after_utc <= now:
        raise CAError(f"{_name(cert)} in the chain expired on {cert.not_valid_after_utc:%Y-%m-%d}")
    if cert.not_valid_before_utc > now:
        raise CAError(
            f"{_name(cert)} in the chain is not valid before "
            f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
        )


def verify_chain(
    cert: x509.Certificate, chain: Sequence[x509.Certificate], now: dt.datetime
) -> tuple[list[x509.Certificate], list[str]]:
    """The certificates above the CA `cert`, in order from its issuer to the root, and
    warnings; CAError with the reason when `chain` does not lead `cert` to a
    self-signed root, or holds certificates that are not on that path."""
    path: list[x509.Certificate] = []
    warnings: list[str] = []
    remaining = list(dict.fromkeys(chain))  # the same certificate twice is harmless
    current = cert
    while not is_self_signed(current):
        named = [c for c in remaining if c.subject == current.issuer]
        issuer = next((c for c in named if signed_by(current, c)), None)
        if issuer is None:
            issuer_name = f"'{subject_text(current.issuer)}'"
            if named:
                raise CAError(
                    f"{_name(current)} is not signed by the {issuer_name} in the chain "
                    "(its signature does not verify with that key): the chain belongs to "
                    "another CA"
                )
            if current is cert and not chain:
                raise CAError(
                    f"{_name(cert)} is not self-signed (its issuer is {issuer_name}): give the "
                    "certificates above it, up to the root, with --ca-chain"
                )
            raise CAError(
                f"the chain has no certificate of {issuer_name}, the issuer of "
                f"{_name(current)}: it must lead to a self-signed root"
            )
        remaining.remove(issuer)
        path.append(issuer)
        warnings += _check_issuer(issuer, len(path), now, root=is_self_signed(issuer))
        current = issuer
    if remaining:
        raise CAError(
            "the chain holds certificates that are not on the path from the CA to its root: "
            + ", ".join(_name(c) for c in remaining)
        )
    if path:
        ends = min(path, key=lambda c: c.not_valid_after_utc)
        if ends.not_valid_after_utc < cert.not_valid_after_utc:
            warnings.append(
                f"{_name(ends)} above this CA ends on {ends.not_valid_after_utc:%Y-%m-%d}, "
                f"before the CA itself ({cert.not_valid_after_utc:%Y-%m-%d}): certificates "
                "issued after that do not verify; plan its renewal"
            )
    return path, warnings
