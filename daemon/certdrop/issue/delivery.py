"""Delivery of results: certificate files, PKCS#12 bundles and their passwords.

Outputs are staged in work/ and moved into outbox/ once the index holds the
certificate (`Delivery.to_outbox`); a key dropped after its certificate was issued
gets its p12 here too (`Delivery.bundle_for_existing`). The p12 password never
travels with the p12: it goes to `<state>/passwords/NAME.txt` (0600, folder 0700)
for the operator, or into the mail queue for the holder (`PasswordChannel`).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Protocol

from cryptography import x509

from ..authority.ca import CertificateAuthority
from ..authority.keys import PrivateKey, load_subject_key, subject_key_matches
from ..clock import Clock
from ..errors import CAError, CertdropError
from ..faults import Crashpoint, no_crash
from ..fsutil import atomic_write, ensure_dir, fsync_dir, sync_filesystem, unique_path
from ..index import journal
from ..index import outputs as delivered
from ..index.store import CertRecord, Store, Transaction
from ..intake.claim import Claim, Claimer, Owner
from ..intake.spool import Spool
from .naming import OutputNames, replaced_path

# no 0/O, 1/l/I: typeable from a printout or a phone screen
PASSWORD_ALPHABET = "23456789abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ"
PASSWORD_GROUPS = 4
PASSWORD_GROUP_LEN = 5  # 20 symbols of a 56-letter alphabet: 116 bits


def new_password() -> str:
    groups = [
        "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(PASSWORD_GROUP_LEN))
        for _ in range(PASSWORD_GROUPS)
    ]
    return "-".join(groups)


def running_as_root() -> bool:
    return os.geteuid() == 0


def output_owner(owner: Owner | None) -> tuple[int, int] | None:
    """chown target for outputs: the requester, when we are root and know them."""
    if owner is None or not running_as_root() or owner.uid == 0:
        return None
    return (owner.uid, owner.gid)


def p12_mode(owner: Owner | None) -> int:
    # as root, the p12 belongs to the requester alone; otherwise other users of the
    # outbox can read it, but it is encrypted under a password sent another way
    return 0o600 if output_owner(owner) is not None else 0o644


# A password channel stores the password durably before the index commit (file) or
# inside the same transaction as the certificate (mail queue).
class PasswordChannel(Protocol):
    """Stores a p12 password for its holder: durable before (file) or inside (mail) the commit."""

    def __call__(
        self,
        conn: Transaction,
        name: str,
        email: str,
        serial: str,
        password: str,
        notes: Sequence[str] = (),
        request: str = "",
    ) -> Path | None:
        """`name` is what the outputs were delivered as (outbox/NAME.p12), `request` the
        request's name when it differs; `notes` are remarks for the holder (say, a key file
        others could read). Returns the password file written, if one was."""


class PasswordFiles:
    """state/passwords/NAME.txt, readable by the CA operator only: the password alone on the
    first line (what `openssl pkcs12 -passin file:`, `pk12util -w` and `keytool
    -storepass:file` read), explanations below it."""

    def __init__(self, state: Path) -> None:
        self.folder = state / "passwords"
        self._unsynced = False

    def __call__(
        self,
        conn: Transaction,
        name: str,
        email: str,
        serial: str,
        password: str,
        notes: Sequence[str] = (),
        request: str = "",
    ) -> Path:
        ensure_dir(self.folder, 0o700)
        text = (
            f"{password}\n"
            f"The line above is the PKCS#12 password of outbox/{name}.p12 (certificate serial "
            f"{serial}"
            + (f", request {request}.req" if request and request != name else "")
            + ").\nGive it to the holder by another channel than the p12 itself.\n"
        )
        for note in notes:
            text += f"Note: {note}\n"
        path = self.path_for(name)
        # made durable by sync(), once per batch, before the index commit
        atomic_write(path, text.encode(), 0o600, durable=False)
        self._unsynced = True
        return path

    def sync(self) -> None:
        if self._unsynced:
            sync_filesystem(self.folder)
            self._unsynced = False

    def path_for(self, name: str) -> Path:
        return self.folder / f"{name}.txt"


def sync_passwords(channel: PasswordChannel) -> None:
    """Make the passwords a channel wrote durable (a file channel syncs; mail needs not)."""
    sync = getattr(channel, "sync", None)
    if sync is not None:
        sync()


class Delivery:
    """Moves staged outputs into outbox/, and bundles keys dropped for issued certificates."""

    def __init__(
        self,
        spool: Spool,
        store: Store,
        ca: CertificateAuthority,
        clock: Clock,
        claimer: Claimer,
        password_channel: PasswordChannel,
        p12_encryption: Callable[[str], str],
        names: OutputNames,
        crashpoint: Crashpoint = no_crash,
    ) -> None:
        self.spool = spool
        self.names = names
        self.passwords = names.passwords  # state/passwords/
        self.store = store
        self.ca = ca
        self.clock = clock
        self.claimer = claimer
        self.password_channel = password_channel
        self.p12_encryption = p12_encryption  # profile -> PKCS#12 preset
        self.crashpoint = crashpoint

    def to_outbox(
        self,
        claim: Claim,
        name: str,
        serial: str,
        *,
        durable: bool = True,
        p12: bool | None = None,
        replacing: Collection[str] | None = None,
    ) -> None:
        """Move the staged outputs to outbox/NAME.*: the .cer and the .p12 if there is one
        (`p12` says whether, when known; else it is looked for), the .cer last: it signals
        "done" to watchers. A file already under that name is moved to the archive first
        unless it is the same (a re-delivery); `replacing` names the kinds known to be there
        (None: look)."""
        for suffix, kind in ((".p12", "p12"), (".cer", "cer")):
            staged = self.spool.staged_path(claim.profile, claim.name, suffix)
            if p12 is None:
                there = os.path.exists(staged)
            else:
                there = suffix == ".cer" or p12
            if there:
                target = self.spool.outbox_path(name + suffix)
                if (replacing is None or kind in replacing) and os.path.lexists(target):
                    self._make_way(Path(target), Path(staged), serial)
                os.rename(staged, target)
                if suffix == ".p12":
                    self.crashpoint("mid-deliver")
        if durable:
            fsync_dir(self.spool.outbox)
            fsync_dir(claim.path.parent)
            if replacing or replacing is None:
                fsync_dir(self.spool.archive)

    def _make_way(self, target: Path, staged: Path | None, serial: str) -> None:
        """Move `target` to the archive, unless it holds what `staged` holds (the same
        certificate delivered again)."""
        if staged is not None:
            try:
                if target.read_bytes() == staged.read_bytes():
                    return
            except OSError:
                pass
        dest = replaced_path(self.spool.archive, target, serial)
        if os.path.lexists(dest):
            dest = unique_path(self.spool.archive, dest.name, "")
        os.rename(target, dest)

    def redelivery_name(self, claim: Claim, rec: CertRecord) -> str:
        """Where a certificate goes when its request comes again: where it went, for the same
        request name (a re-drop, a run a crash interrupted); else under the new request's
        name, placed as a new delivery of that holder's (issue/naming.py)."""
        with self.store.begin() as conn:
            files = delivered.of(conn, [rec.serial]).get(rec.serial, [])
            recorded = next((Path(p).stem for kind, p, _ in files if kind == "cer"), "")
            if recorded and rec.request_name == claim.name:
                return recorded
            if not files and rec.request_name == claim.name:
                return claim.name  # delivered before outputs were recorded
            return self.names.place(conn, claim.name, rec.subject, rec.owner).name

    def delivered_as(self, serial: str, fallback: str) -> str:
        """The name a certificate's outputs were delivered under (outbox/NAME.cer); those
        delivered before outputs were recorded went out under their request's name."""
        with self.store.begin() as conn:
            files = delivered.of(conn, [serial]).get(serial, [])
        return next((Path(p).stem for kind, p, _ in files if kind == "cer"), fallback)

    def subject_key(self, claim: Claim) -> PrivateKey:
        """The private key claimed with a request (CertdropError if it is unusable)."""
        return load_subject_key(self.claimer.read_key(claim))

    def bundle_for_existing(
        self, claim: Claim, serial: str, der: bytes, name: str | None = None
    ) -> str:
        """Deliver NAME.p12 for a certificate already issued, from the key in claim.key_path
        (NAME: where the certificate went, unless given).

        Returns "" when done, else why not (the key does not belong, cannot be read).
        """
        now = self.clock.now()
        stem, profile = claim.name, claim.profile
        try:
            key = self.subject_key(claim)
            cert = x509.load_der_x509_certificate(der)
            if not subject_key_matches(key, cert.public_key()):
                raise CAError(
                    f"{stem}.key does not belong to the certificate issued for {stem}.req; "
                    "the key was deleted"
                )
        except CertdropError as exc:
            return str(exc)
        password = new_password()
        cn = next((a.value for a in cert.subject if a.oid == x509.NameOID.COMMON_NAME), stem)
        p12 = self.ca.pkcs12_bundle(key, cert, str(cn), password, self.p12_encryption(profile))
        staged = self.spool.staged(profile, stem, ".p12")
        atomic_write(staged, p12, p12_mode(claim.owner), owner=output_owner(claim.owner))
        email = next(
            (str(a.value) for a in cert.subject if a.oid == x509.NameOID.EMAIL_ADDRESS), ""
        )
        name = name or self.delivered_as(serial, stem)
        target = self.spool.outbox / f"{name}.p12"
        with self.store.begin() as conn:
            old_password = self.passwords / f"{name}.txt"
            if os.path.lexists(old_password):  # a p12 made before for this certificate
                ensure_dir(self.passwords / "archive", 0o700)
                dest = replaced_path(self.passwords / "archive", old_password, serial)
                os.rename(old_password, unique_path(dest.parent, dest.name, ""))
            written = self.password_channel(
                conn, name, email, serial, password, claim.notes, request=stem
            )
            sync_passwords(self.password_channel)
            delivered.replace_later(
                conn,
                serial,
                [("p12", str(target))] + ([("password", str(written))] if written else []),
            )
            journal.log(conn, now, stem, "p12", profile=profile, serial=serial)
        if os.path.lexists(target):
            self._make_way(target, None, serial)
        os.rename(staged, target)
        fsync_dir(self.spool.outbox)
        return ""
