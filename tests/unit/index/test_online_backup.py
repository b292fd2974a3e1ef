"""index/backup.py: the SQLite file behind a URL, and the online copy of an index."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from certdrop.errors import StoreError
from certdrop.index.backup import backup_index, check_index_copy, sqlite_path
from certdrop.index.store import Store


def test_sqlite_urls_name_their_file_and_other_databases_are_refused() -> None:
    assert sqlite_path("sqlite:////var/lib/certdrop/index.sqlite") == Path(
        "/var/lib/certdrop/index.sqlite"
    )
    assert sqlite_path("sqlite:///rel/index.sqlite") == Path("rel/index.sqlite")
    assert sqlite_path("sqlite+pysqlite:////x/my%20index.sqlite?timeout=5") == Path(
        "/x/my index.sqlite"
    )
    for url in ("sqlite://", "sqlite:///:memory:", "sqlite+aiosqlite:////x.db", "/x.db"):
        with pytest.raises(StoreError, match="is not a SQLite file"):
            sqlite_path(url)
    with pytest.raises(StoreError) as exc:
        sqlite_path("postgresql+psycopg://ca:s3cret@db.example.org/certdrop")
    assert "s3cret" not in str(exc.value) and "pg_dump" in str(exc.value)
    assert "postgresql+psycopg://***@db.example.org/certdrop" in str(exc.value)


def test_the_copy_holds_the_index_and_a_missing_index_is_not_made(tmp_path: Path) -> None:
    db = tmp_path / "index.sqlite"
    store = Store(f"sqlite:///{db}").open()
    store.close()
    copy = backup_index(db, tmp_path / "copy.sqlite")
    assert copy.problems == () and copy.certificates == 0 and copy.size > 0
    import hashlib

    assert copy.sha256 == hashlib.sha256((tmp_path / "copy.sqlite").read_bytes()).hexdigest()
    assert check_index_copy(tmp_path / "copy.sqlite").problems == ()
    # a single file: no -wal beside the copy, and no temporary file left
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("copy")) == [
        "copy.sqlite"
    ]
    with sqlite3.connect(tmp_path / "copy.sqlite") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    with pytest.raises(StoreError, match="cannot be opened"):
        backup_index(tmp_path / "absent.sqlite", tmp_path / "copy2.sqlite")
    assert not (tmp_path / "absent.sqlite").exists()
    assert not (tmp_path / "copy2.sqlite").exists()
