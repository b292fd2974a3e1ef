"""Where a certificate's outputs go in the shared outbox.

Users of one shared inbox pick the same names (the howto tells everyone to drop
`client.req`). A certificate's outputs (outbox/NAME.cer, NAME.p12 and
state/passwords/NAME.txt) never replace another certificate's: when NAME's files belong to
another holder, the outputs get the first free name NAME-2, NAME-3, ... The same holder
renewing (the same subject, the same Unix owner of the dropped file) takes the name over;
the files it replaces move to archive/ (a password file to passwords/archive/), never
deleted.

A name is judged by its files: three lookups in their folders, whatever the outbox holds.
Only when one of them exists is the index asked whose it is (the delivered files it
recorded, else the certificate in the .cer itself).
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from ..authority.serials import serial_hex
from ..fsutil import MAX_NAME_LENGTH
from ..index import outputs as delivered
from ..index.store import Store, Transaction
from ..intake.spool import Spool

# the serial a password file names (its explanation line, old and new format)
_PASSWORD_SERIAL = re.compile(rb"certificate serial ([0-9A-F]+)")


@dataclass(frozen=True)
class Placement:
    """Where one certificate's outputs go."""

    name: str  # outbox/NAME.cer, outbox/NAME.p12, passwords/NAME.txt
    # the same holder's files under that name, to move to the archive: (serial, kind, path)
    replaced: tuple[tuple[str, str, Path], ...] = ()


def replaced_path(archive: Path, path: Path, new_serial: str) -> Path:
    """Where a replaced file goes in `archive`: named after the certificate that replaced
    it, so that a run interrupted by a crash moves it to the same place when done again."""
    return archive / f"{path.name}.replaced-by-{new_serial}"


class OutputNames:
    """Chooses the name each certificate's outputs are delivered under."""

    def __init__(self, spool: Spool, store: Store, passwords: Path) -> None:
        self.spool = spool
        self.store = store
        self.passwords = passwords

    def files(self, name: str) -> dict[str, Path]:
        """The files the outputs named `name` are."""
        return {
            "cer": self.spool.outbox / f"{name}.cer",
            "p12": self.spool.outbox / f"{name}.p12",
            "password": self.passwords / f"{name}.txt",
        }

    def place(
        self,
        conn: Transaction,
        wanted: str,
        subject: str,
        owner: str,
        taken: Collection[str] = (),
    ) -> Placement:
        """The first name from `wanted`, `wanted`-2, ... that is free or this holder's
        (`taken`: names given to other certificates of the same batch)."""
        n = 1
        while True:
            suffix = "" if n == 1 else f"-{n}"
            name = wanted[: MAX_NAME_LENGTH - len(suffix)] + suffix
            n += 1
            if name in taken:
                continue
            found = self._holder(conn, name, subject, owner)
            if found is not None:
                return Placement(name, found)

    def _holder(
        self, conn: Transaction, name: str, subject: str, owner: str
    ) -> tuple[tuple[str, str, Path], ...] | None:
        """() when `name` is free, the files to replace when they are this holder's, None
        when they are another's (or nobody knows whose)."""
        there = {kind: p for kind, p in self.files(name).items() if os.path.lexists(p)}
        if not there:
            return ()
        cer = there.get("cer")
        cer_serial = None
        if cer is not None:
            cer_serial = delivered.at(conn, str(cer)) or _serial_in(cer)
        mine: list[tuple[str, str, Path]] = []
        for kind, path in there.items():
            serial = cer_serial if kind == "cer" else delivered.at(conn, str(path))
            if serial is None and kind == "password":
                serial = self._password_serial(conn, path)
                if serial == "":
                    continue  # written for a certificate a crash kept from the index
            if serial is None:
                serial = cer_serial  # a p12 delivered with its .cer before outputs were recorded
            if serial is None:
                return None
            rec = self.store.get(conn, serial)
            if rec is None or rec.subject != subject or rec.owner != owner:
                return None
            mine.append((serial, kind, path))
        return tuple(mine)

    def _password_serial(self, conn: Transaction, path: Path) -> str | None:
        """The certificate a password file names: its serial; "" when that certificate is not
        in the index (a crash came between the file, written first, and the commit); None
        when the file names none."""
        try:
            found = _PASSWORD_SERIAL.search(path.read_bytes())
        except OSError:
            return None
        if found is None:
            return None
        serial = found.group(1).decode()
        return serial if self.store.serial_exists(conn, serial) else ""


def _serial_in(path: Path) -> str | None:
    """The serial of the certificate a .cer holds (delivered before the index recorded
    outputs); None when it does not parse."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None
    return serial_hex(cert.serial_number)
