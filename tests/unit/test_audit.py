"""The audit log (certdrop.audit): one JSON object per line, appended, never rewritten."""

from __future__ import annotations

import datetime as dt
import os
import stat
import threading
from pathlib import Path

from certdrop.audit import AuditLog, read_audit
from certdrop.clock import ManualClock

T0 = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)


def test_events_are_lines_with_time_and_actor(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    log = AuditLog.in_state(tmp_path, clock, actor="daemon")
    log({"event": "issued", "name": "alice", "serial": "0A"})
    clock.advance(dt.timedelta(seconds=1))
    log({"event": "operator", "command": "revoke", "actor": "root (via sudo from bob)"})
    path = tmp_path / "audit.log"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert list(read_audit(path)) == [
        {
            "time": "2030-01-01T12:00:00.000+00:00",
            "actor": "daemon",
            "event": "issued",
            "name": "alice",
            "serial": "0A",
        },
        {
            "time": "2030-01-01T12:00:01.000+00:00",
            "event": "operator",
            "command": "revoke",
            "actor": "root (via sudo from bob)",
        },
    ]


def test_a_batch_is_one_write_and_appends_to_what_is_there(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_text('{"event": "before"}\n')
    os.chmod(path, 0o644)
    log = AuditLog(path, ManualClock(T0))
    with log.batch():
        log({"event": "a"})
        log({"event": "b"})
        assert path.read_text() == '{"event": "before"}\n'  # nothing yet
        with log.batch():  # nested: the same batch
            log({"event": "c"})
    assert [e["event"] for e in read_audit(path)] == ["before", "a", "b", "c"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_writers_in_threads_never_interleave(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log", ManualClock(T0))

    def write(n: int) -> None:
        with log.batch():
            for i in range(50):
                log({"event": "x", "writer": n, "i": i, "pad": "y" * 200})

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    events = list(read_audit(tmp_path / "audit.log"))
    assert len(events) == 200
    for n in range(4):
        assert [e["i"] for e in events if e["writer"] == n] == list(range(50))


def test_a_torn_last_line_is_skipped_and_a_failing_write_is_logged(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_text('{"event": "ok"}\n{"event": "to')
    assert [e["event"] for e in read_audit(path)] == ["ok"]
    assert list(read_audit(tmp_path / "missing.log")) == []
    folder_log = AuditLog(tmp_path, ManualClock(T0))  # a folder is not a file: logged, not raised
    folder_log({"event": "lost"})
