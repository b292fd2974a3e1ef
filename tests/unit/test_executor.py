"""The one place certdrop runs other programs (certdrop.executor): never a shell, never
an exception, always a bounded time."""

from __future__ import annotations

from pathlib import Path

from certdrop.executor import run_command


def test_success_and_failure_with_their_output() -> None:
    ok = run_command(["sh", "-c", "echo out; echo err >&2"], timeout=10)
    assert ok.ok and ok.returncode == 0 and "out" in ok.output and "err" in ok.output
    bad = run_command(["sh", "-c", "echo one; echo two; echo three; echo four; exit 3"], 10)
    assert not bad.ok and bad.returncode == 3
    assert (
        bad.summary()
        == "sh -c echo one; echo two; echo three; echo four; exit 3 exited 3: two / three / four"
    )


def test_arguments_are_never_a_shell(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    res = run_command(["echo", f"; touch {marker}"], timeout=10)
    assert res.ok and not marker.exists()


def test_missing_unrunnable_and_slow_programs(tmp_path: Path) -> None:
    missing = run_command(["certdrop-no-such-program"], timeout=10)
    assert missing.returncode == 127 and "command not found" in missing.output
    not_a_program = tmp_path / "data.txt"
    not_a_program.write_text("#!/bin/sh\nexit 0\n")
    not_a_program.chmod(0o644)
    unrunnable = run_command([str(not_a_program)], timeout=10)
    assert unrunnable.returncode == 126
    slow = run_command(["sleep", "5"], timeout=0.2)
    assert slow.returncode == 124 and "timed out after 0.2s" in slow.output
