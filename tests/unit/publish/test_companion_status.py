"""The root-owned companion's status.json as certdrop reads it (publish/apache.py)."""

from __future__ import annotations

import json
from pathlib import Path

from certdrop.publish.apache import read_companion_status


def test_absent_or_unreadable_status_means_no_companion(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    assert read_companion_status(path) is None
    for junk in (b"", b"{not json", b"[1, 2]", json.dumps({"result": "maybe"}).encode()):
        path.write_bytes(junk)
        assert read_companion_status(path) is None, junk


def test_a_failure_carries_what_the_alert_and_status_need(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    path.write_text(
        json.dumps(
            {
                "result": "failed",
                "action": "configtest-failed",
                "at": "2026-12-03T20:00:00+00:00",
                "detail": "Apache's configtest failed; the last good files are back",
                "configtest": "AH00526: Syntax error on line 2",
                "restored": True,
                "rejected_sha256": "ab" * 32,
            }
        )
    )
    st = read_companion_status(path)
    assert st is not None and not st.ok and st.restored and st.rejected == "ab" * 32
    assert st.as_json() == {
        "last": "FAILED",
        "action": "configtest-failed",
        "at": "2026-12-03T20:00:00+00:00",
        "detail": "Apache's configtest failed; the last good files are back",
        "output": "AH00526: Syntax error on line 2",
        "restored": True,
    }
    subject, body = st.alert(path)
    assert subject == "Apache refused certdrop's files: configtest-failed"
    assert "AH00526: Syntax error on line 2" in body and str(path) in body
    assert "last good files are back in place" in body
    path.write_text(json.dumps({"result": "ok", "action": "reloaded", "at": "x"}))
    ok = read_companion_status(path)
    assert ok is not None and ok.ok and ok.as_json()["last"] == "ok"
