"""Copying a whole index into another database (`certdrop migrate-db`): SQLite to
PostgreSQL, or any URL to any other.

The target must be empty (a new database, or one only `certdrop init` has opened). Every
table is copied in one transaction of the target, read from one transaction of the
source (a consistent picture), and verified before that transaction commits: the same
number of rows and the same checksum per table, computed from the values each database
gives back. A copy that does not verify leaves the target as it was.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from ..errors import StoreError
from .schema import SCHEMA_VERSION, meta, metadata
from .store import Store, Transaction, insert_many, shown_url

_MOD = 1 << 256


@dataclass(frozen=True)
class TableCopy:
    """One table as copied: its rows and their checksum (the same in both databases)."""

    table: str
    rows: int
    checksum: str  # hex: the sum of each row's SHA-256, so the rows' order does not matter


def _value_bytes(value: Any) -> bytes:
    """A column value as checksummed: its kind and its bytes (1 and True differ)."""
    if value is None:
        return b"N"
    if isinstance(value, bool):
        return b"B1" if value else b"B0"
    if isinstance(value, int):
        return b"I" + str(value).encode()
    if isinstance(value, str):
        return b"S" + value.encode()
    if isinstance(value, bytes | bytearray | memoryview):
        return b"X" + bytes(value)
    raise StoreError(f"the index holds a value of an unexpected type: {type(value).__name__}")


def _row_digest(row: Iterable[Any]) -> int:
    h = hashlib.sha256()
    for value in row:
        data = _value_bytes(value)
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return int.from_bytes(h.digest(), "big")


class _Tally:
    def __init__(self) -> None:
        self.rows = 0
        self.total = 0

    def add(self, row: Iterable[Any]) -> None:
        self.rows += 1
        self.total = (self.total + _row_digest(row)) % _MOD

    @property
    def checksum(self) -> str:
        return f"{self.total:064x}"


def table_checksums(conn: Transaction, chunk: int = 5_000) -> dict[str, TableCopy]:
    """Rows and checksum of every table of the index, as this database gives them back."""
    out: dict[str, TableCopy] = {}
    for table in metadata.sorted_tables:
        tally = _Tally()
        result = conn.execution_options(yield_per=chunk).execute(sa.select(table))
        for row in result:
            tally.add(row)
        out[table.name] = TableCopy(table.name, tally.rows, tally.checksum)
    return out


def _fresh_meta() -> dict[str, str]:
    return {"schema_version": str(SCHEMA_VERSION), "crl_number": "0"}


def refuse_unless_empty(conn: Transaction, url: str) -> None:
    """StoreError unless the index holds nothing but what a new one holds."""
    held: list[str] = []
    for table in metadata.sorted_tables:
        if table is meta:
            continue
        n = conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
        if n:
            held.append(f"{table.name}: {n} row{'s' if n != 1 else ''}")
    rows = {str(k): str(v) for k, v in conn.execute(sa.select(meta.c.key, meta.c.value))}
    if rows != _fresh_meta():
        changed = sorted(
            k for k in rows.keys() | _fresh_meta().keys() if rows.get(k) != _fresh_meta().get(k)
        )
        held.append("meta: " + ", ".join(changed))
    if held:
        raise StoreError(
            f"the database {shown_url(url)} is not empty ({'; '.join(held)}); migrate-db "
            "copies into an empty database only (a new one, or one only 'certdrop init' opened)"
        )


def copy_index(source: Store, target: Store, chunk: int = 5_000) -> list[TableCopy]:
    """Copy every table of `source` into the empty index `target`, verified by rows and
    checksums per table before the target's transaction commits; what was copied."""
    if sa.engine.make_url(source.url) == sa.engine.make_url(target.url):
        raise StoreError(f"{shown_url(target.url)} is the index itself: name another database")
    with source.begin() as src, target.begin() as dst:
        refuse_unless_empty(dst, target.url)
        dst.execute(sa.delete(meta))
        copied: dict[str, TableCopy] = {}
        for table in metadata.sorted_tables:
            tally = _Tally()
            names = [c.name for c in table.columns]
            batch: list[Mapping[str, Any]] = []
            for row in src.execution_options(yield_per=chunk).execute(sa.select(table)):
                tally.add(row)
                batch.append(dict(zip(names, row, strict=True)))
                if len(batch) >= chunk:
                    insert_many(dst, table, batch)
                    batch = []
            if batch:
                insert_many(dst, table, batch)
            copied[table.name] = TableCopy(table.name, tally.rows, tally.checksum)
        _advance_sequences(dst)
        landed = table_checksums(dst, chunk)
        differ = [
            f"{name}: {copied[name].rows} rows (checksum {copied[name].checksum[:12]}) "
            f"became {landed[name].rows} (checksum {landed[name].checksum[:12]})"
            for name in copied
            if copied[name] != landed[name]
        ]
        if differ:
            raise StoreError(
                f"the copy does not match the index ({'; '.join(differ)}); nothing was written"
            )
    return list(copied.values())


def _advance_sequences(conn: Transaction) -> None:
    """PostgreSQL's id sequences past the ids copied in (SQLite takes the largest + 1)."""
    if conn.dialect.name != "postgresql":
        return
    for table in metadata.sorted_tables:
        pk = list(table.primary_key.columns)
        if len(pk) != 1 or not isinstance(pk[0].type, sa.Integer) or pk[0].autoincrement is False:
            continue
        column = pk[0]
        conn.execute(
            sa.select(
                sa.func.setval(
                    sa.func.pg_get_serial_sequence(table.name, column.name),
                    sa.select(sa.func.coalesce(sa.func.max(column), 0) + 1).scalar_subquery(),
                    False,
                )
            )
        )
