"""Delivery of results: certificate files, PKCS#12 bundles and their passwords.

The p12 password never travels with the p12: it goes to `<state>/passwords/NAME.txt`
(0600, folder 0700) for the operator, or into the mail queue for the holder.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..fsutil import atomic_write, ensure_dir, sync_filesystem
from ..index.store import Transaction

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


@dataclass(frozen=True)
class Owner:
    uid: int
    gid: int
    name: str | None


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
    ) -> None:
        """`notes` are remarks for the holder (say, a key file others could read)."""


class PasswordFiles:
    """state/passwords/NAME.txt, readable by the CA operator only."""

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
    ) -> None:
        ensure_dir(self.folder, 0o700)
        text = (
            f"PKCS#12 password for outbox/{name}.p12 (certificate serial {serial})\n"
            f"{password}\n"
            "Give it to the holder by another channel than the p12 itself.\n"
        )
        for note in notes:
            text += f"Note: {note}\n"
        # made durable by sync(), once per batch, before the index commit
        atomic_write(self.folder / f"{name}.txt", text.encode(), 0o600, durable=False)
        self._unsynced = True

    def sync(self) -> None:
        if self._unsynced:
            sync_filesystem(self.folder)
            self._unsynced = False

    def path_for(self, name: str) -> Path:
        return self.folder / f"{name}.txt"
