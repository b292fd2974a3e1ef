"""A rollover: a new CA key and certificate take over issuing; the CA before keeps its
files in `cas/<id>/` to sign its CRLs until its last certificate has expired.

    cas/<id>/ca.key, ca.cer, chain.pem   every CA that issued or will issue, as stored
    cas/<id>/crl.der, crl.pem            a retiring CA's CRL (publish/retiring.py)
    cas/<id>/ocsp-responder.pem          its OCSP responder (publish/responder.py)

`stage_next_ca` makes the next CA in `cas/<new id>/` (it does not issue yet); then
`switch_issuing`, between two batches of the daemon, keeps the current CA in
`cas/<old id>/` and copies the new one over ca.key, chain.pem and, last, ca.cer. A
crash between those copies leaves ca.key of the new CA beside ca.cer of the old one:
`finish_switch` completes the switch from `cas/` at the next start.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..errors import CAError
from ..fsutil import atomic_write, copy_file, ensure_dir
from .keys import generate_key, private_key_pem
from .lifecycle import (
    CA_CERT,
    CA_CHAIN,
    CA_KEY,
    LintFunction,
    ca_id,
    ca_name,
    load_ca_certificates,
    sign_ca_certificate,
)
from .names import subject_text

if TYPE_CHECKING:
    from ..config import CASettings
    from .offline_root import OfflineRoot

log = logging.getLogger("certdrop.authority")

CAS = "cas"
CRL_FILES = ("crl.der", "crl.pem")


def ca_folder(state: Path, ident: str) -> Path:
    """Where the files of the CA `ident` are kept."""
    return state / CAS / ident


def stage_next_ca(
    state: Path,
    settings: CASettings,
    now: dt.datetime,
    passphrase: bytes | None,
    root: OfflineRoot | None = None,
    linter: LintFunction | None = None,
) -> x509.Certificate:
    """Make the next CA (the [ca] names, key type and validity): signed by the offline
    `root` when the CA in `state` is under one, else a new self-signed root. Its files go
    to cas/<id>/ (the key encrypted with `passphrase`, as the current one); it does not
    issue until `switch_issuing`. It has the [ca] names as configured, usually the current
    CA's: the issuer rule of `apache-config` keeps matching, and OpenSSL tells the two apart
    by their key identifiers (every certificate and CRL names its CA's key)."""
    current, chain = load_ca_certificates(state, check_key=True)
    if root is None and chain:
        raise CAError(
            f"the CA in {state} is signed by '{subject_text(current.issuer)}': give its offline "
            "root with --offline-root DIR (a CA adopted under another's root cannot roll over "
            "here yet)"
        )
    if root is not None and (not chain or chain[-1] != root.cert):
        raise CAError(
            f"the root in {root.folder} ('{subject_text(root.cert.subject)}') is not above the CA "
            f"in {state}; is the right medium mounted?"
        )
    key = generate_key(settings.key_type)
    if root is not None:
        cert = root.issue_ca(key.public_key(), settings, now, linter)
        new_chain = [root.cert]
    else:
        cert = sign_ca_certificate(
            ca_name(settings, settings.common_name),
            key.public_key(),
            key,
            now,
            settings.validity_days,
            linter=linter,
        )
        new_chain = []
    folder = ca_folder(state, ca_id(cert))
    ensure_dir(state / CAS, 0o700)
    ensure_dir(folder, 0o700)
    atomic_write(folder / CA_KEY, private_key_pem(key, passphrase), 0o600)
    pem = serialization.Encoding.PEM
    if new_chain:
        atomic_write(folder / CA_CHAIN, b"".join(c.public_bytes(pem) for c in new_chain), 0o644)
    atomic_write(folder / CA_CERT, cert.public_bytes(pem), 0o644)
    return cert


def switch_issuing(state: Path, new_id: str) -> tuple[x509.Certificate, x509.Certificate]:
    """The staged CA `new_id` issues from now on; the current one's files (and its CRL)
    are kept in cas/<old id>/. Returns (old, new) CA certificates."""
    new_folder = ca_folder(state, new_id)
    new_cert, _ = load_ca_certificates(new_folder, check_key=True)
    old_cert, _ = load_ca_certificates(state, check_key=True)
    old_id = ca_id(old_cert)
    if old_id == new_id:
        raise CAError(f"the CA {new_id[:16]} already issues")
    keep(state, old_id)
    # the new CA takes over: key first, the certificate last (a CA is its ca.cer)
    copy_file(new_folder / CA_KEY, state / CA_KEY, 0o600)
    if (new_folder / CA_CHAIN).exists():
        copy_file(new_folder / CA_CHAIN, state / CA_CHAIN, 0o644)
    else:
        (state / CA_CHAIN).unlink(missing_ok=True)
    copy_file(new_folder / CA_CERT, state / CA_CERT, 0o644)
    return old_cert, new_cert


def keep(state: Path, ident: str) -> Path:
    """The issuing CA's files, copied as stored into cas/<ident>/ (once), with its CRL."""
    folder = ca_folder(state, ident)
    if (folder / CA_CERT).exists():
        return folder
    ensure_dir(state / CAS, 0o700)
    ensure_dir(folder, 0o700)
    copy_file(state / CA_KEY, folder / CA_KEY, 0o600)
    for name in (CA_CHAIN, *CRL_FILES):
        if (state / name).exists():
            copy_file(state / name, folder / name, 0o644)
    copy_file(state / CA_CERT, folder / CA_CERT, 0o644)
    return folder


def finish_switch(state: Path) -> bool:
    """Complete a switch a crash interrupted: ca.key is a staged CA's (byte for byte) while
    ca.cer is still the old one's. True when something was completed."""
    key_path = state / CA_KEY
    if not key_path.exists() or not (state / CAS).is_dir():
        return False
    key = key_path.read_bytes()
    for folder in sorted((state / CAS).iterdir()):
        if not (folder / CA_KEY).exists() or (folder / CA_KEY).read_bytes() != key:
            continue
        if (folder / CA_CERT).read_bytes() == (state / CA_CERT).read_bytes():
            return False  # the files agree
        log.warning("completing an interrupted rollover: %s issues from now on", folder.name)
        if (folder / CA_CHAIN).exists():
            copy_file(folder / CA_CHAIN, state / CA_CHAIN, 0o644)
        else:
            (state / CA_CHAIN).unlink(missing_ok=True)
        copy_file(folder / CA_CERT, state / CA_CERT, 0o644)
        return True
    return False
