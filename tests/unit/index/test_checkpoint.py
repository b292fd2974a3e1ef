"""The daemon's SQLite index: its WAL is copied into the database file by a thread of
the Store's own (a checkpoint), not by the commits that filled it; a writer still does
it itself past a bound, should that thread fall behind.

What is checked is what reaches the file: a copy of the database file alone (no WAL)
holds the committed rows once the thread has run, while the Store is still open.
"""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time
from pathlib import Path

from certdrop.index.store import WAL_BOUND_PAGES, Store
from index_kit import cert


def _rows_in_file(db: Path, scratch: Path) -> int:
    """The certificates a copy of the database file alone holds (what was checkpointed)."""
    copy = scratch / "file-alone.sqlite"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{copy}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(db, copy)
    conn = sqlite3.connect(copy)
    try:
        if not conn.execute("SELECT 1 FROM sqlite_schema WHERE name = 'certificates'").fetchone():
            return 0  # not even the schema is in the file yet (the WAL holds it)
        return int(conn.execute("SELECT count(*) FROM certificates").fetchone()[0])
    except sqlite3.DatabaseError:
        return -1  # copied while a checkpoint was writing into it: a torn copy
    finally:
        conn.close()


def _wait_for_rows(db: Path, scratch: Path, wanted: int) -> int:
    """What the file alone holds once it holds `wanted` rows, or after 30 s."""
    deadline = time.monotonic() + 30
    while (got := _rows_in_file(db, scratch)) != wanted and time.monotonic() < deadline:
        time.sleep(0.02)
    return got


def _record(store: Store, first: int, n: int) -> None:
    with store.begin() as conn:
        store.add_certificates(conn, [cert(i, [("CN", f"u{i}")]) for i in range(first, first + n)])


def _checkpoint_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "index-checkpoint"]


def test_the_checkpoint_thread_copies_each_commit_into_the_file(tmp_path: Path) -> None:
    db = tmp_path / "index.sqlite"
    store = Store(f"sqlite:///{db}", checkpoint_thread=True).open()
    try:
        # a writer checkpoints itself only at the bound (SQLite's 1,000 pages otherwise)
        with store.engine.connect() as conn:
            bound = conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar()
        assert bound == WAL_BOUND_PAGES
        for batch in range(3):
            _record(store, 1 + 10 * batch, 10)  # a few pages: far below any bound
            assert _wait_for_rows(db, tmp_path, 10 * (batch + 1)) == 10 * (batch + 1)
        assert len(_checkpoint_threads()) == 1
    finally:
        store.close()
    assert _checkpoint_threads() == []  # stopped with the Store


def test_without_the_thread_small_commits_stay_in_the_wal(tmp_path: Path) -> None:
    """The CLI's Store: SQLite's own checkpoints (at 1,000 pages); a few pages stay in
    the WAL until then, which is what the test above tells apart."""
    db = tmp_path / "index.sqlite"
    store = Store(f"sqlite:///{db}").open()
    try:
        _record(store, 1, 10)
        time.sleep(0.2)
        assert _rows_in_file(db, tmp_path) == 0
        assert _checkpoint_threads() == []
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 1000
    finally:
        store.close()
