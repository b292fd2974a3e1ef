"""serve/keeper.py without a server: what passes over exec, the board it shares with the
workers, its log lines, and that it loads no more than built-in modules."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

from certdrop.serve import balance, keeper
from certdrop.serve.keeper import Keeper


def _keeper(**kw: object) -> Keeper:
    args: dict[str, object] = {
        "workers": {4242: 0, 4343: 1},
        "board_fd": 7,
        "ready_r": 8,
        "life_w": 9,
        "worker_command": ["/usr/bin/python3", "-m", "certdrop.cli", "serve"],
        "worker_fds": (3, 7, 10, 11),
        "log_level": "WARNING",
    }
    args.update(kw)
    return Keeper(**args)  # type: ignore[arg-type]


def test_the_arguments_carry_everything_over_exec() -> None:
    k = _keeper()
    again = Keeper.from_arguments(k.arguments())
    assert again.pids == {4242: 0, 4343: 1}
    assert (again.board_fd, again.ready_r, again.life_w) == (7, 8, 9)
    assert again.worker_fds == (3, 7, 10, 11)
    assert again.worker_command == ["/usr/bin/python3", "-m", "certdrop.cli", "serve"]
    assert again.log_level == keeper.LEVELS["WARNING"]


def test_retire_marks_the_worker_on_the_board_the_workers_map() -> None:
    board = balance.ConnectionBoard(2)
    board.set(0, 1)
    board.set(1, 0)
    assert not board.may_accept(0)  # worker 1 holds fewer
    k = _keeper(board_fd=board.fd)
    k.retire(1)
    assert keeper.RETIRED == balance.RETIRED
    assert board.get(1) == balance.RETIRED
    assert board.may_accept(0)  # the one left is the least busy
    seen = balance.ConnectionBoard(2, fd=board.fd)  # as a worker started later maps it
    assert seen.get(1) == balance.RETIRED and seen.get(0) == 1


@pytest.mark.parametrize(
    ("journal_stream", "style"),
    [(None, "timed"), ("1:2", "plain")],
)
def test_log_lines_follow_the_cli_format(
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    journal_stream: str | None,
    style: str,
) -> None:
    if journal_stream is None:
        monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    else:
        monkeypatch.setenv("JOURNAL_STREAM", journal_stream)
    k = _keeper()
    assert k.log_style == style
    k.log("INFO", "below the level: not written")
    k.log("ERROR", "worker 1 (pid 4343) ended with status -9; starting it again")
    err = capfd.readouterr().err
    assert "below the level" not in err
    line = err.strip()
    assert line.endswith(
        "ERROR certdrop.serve: worker 1 (pid 4343) ended with status -9; starting it again"
    )
    assert (line[:4].isdigit() and line[10] == "T") == (style == "timed")


def test_the_journal_gets_syslog_priorities(capfd: pytest.CaptureFixture[str]) -> None:
    st = os.fstat(2)
    os.environ["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    try:
        k = _keeper()
    finally:
        del os.environ["JOURNAL_STREAM"]
    assert k.log_style == "journal"
    k.log("WARNING", "w")
    assert capfd.readouterr().err == "<4>WARNING certdrop.serve: w\n"


def test_it_imports_nothing_but_built_in_modules() -> None:
    """Run as the supervisor runs it (-I -S): the modules it adds to a bare interpreter."""
    folder = os.path.dirname(keeper.__file__)
    probe = (
        f"import sys; before = set(sys.modules); sys.path.insert(0, {folder!r}); import keeper; "
        "print(sorted(set(sys.modules) - before - {'keeper'}))"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    added = set(ast.literal_eval(out))
    frozen_os = {"os", "os.path", "posixpath", "genericpath", "stat", "_stat", "_collections_abc"}
    assert added <= {"__future__", "_signal", "_socket", "mmap", "select", *frozen_os}, added
