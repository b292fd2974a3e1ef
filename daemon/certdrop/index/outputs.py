"""The files each certificate was delivered as: the rows of the `outputs` table.

(serial, kind, path): kind "cer", "p12" or "password"; the path is absolute. When the same
holder's renewal takes over the name, the rows follow the files to the archive
(`moved`). Where the outputs go is issue/naming.py's.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence

import sqlalchemy as sa

from .schema import outputs, to_epoch
from .store import Transaction, insert_many


def add(conn: Transaction, rows: Sequence[tuple[str, str, str]]) -> None:
    """Record delivered files: (serial, kind, absolute path) with kind cer, p12 or password."""
    if rows:
        insert_many(
            conn,
            outputs,
            [{"serial": s, "kind": k, "path": p, "replaced_at": None} for s, k, p in rows],
        )


def replace_later(conn: Transaction, serial: str, files: Sequence[tuple[str, str]]) -> None:
    """Record (kind, path) files delivered for a certificate after its issuance (a p12
    for a key dropped later), replacing earlier ones of the same kinds."""
    if files:
        conn.execute(
            sa.delete(outputs).where(
                outputs.c.serial == serial, outputs.c.kind.in_([k for k, _ in files])
            )
        )
        add(conn, [(serial, k, p) for k, p in files])


def of(conn: Transaction, serials: Iterable[str]) -> dict[str, list[tuple[str, str, bool]]]:
    """The delivered files of certificates: serial -> [(kind, path, replaced)]."""
    wanted = list(dict.fromkeys(serials))
    out: dict[str, list[tuple[str, str, bool]]] = {}
    for start in range(0, len(wanted), 500):
        rows = conn.execute(
            sa.select(outputs.c.serial, outputs.c.kind, outputs.c.path, outputs.c.replaced_at)
            .where(outputs.c.serial.in_(wanted[start : start + 500]))
            .order_by(outputs.c.serial, outputs.c.kind)
        )
        for serial, kind, path, replaced in rows:
            out.setdefault(serial, []).append((kind, path, replaced is not None))
    return out


def at(conn: Transaction, path: str) -> str | None:
    """The serial of the certificate whose delivered file is at `path` now, if any."""
    row = conn.execute(
        sa.select(outputs.c.serial)
        .where(outputs.c.path == path, outputs.c.replaced_at.is_(None))
        .limit(1)
    ).first()
    return None if row is None else str(row[0])


def moved(conn: Transaction, serial: str, kind: str, new_path: str, when: dt.datetime) -> None:
    """A delivered file moved to the archive (the same holder's renewal took its name)."""
    conn.execute(
        sa.update(outputs)
        .where(outputs.c.serial == serial, outputs.c.kind == kind)
        .values(path=new_path, replaced_at=to_epoch(when))
    )
