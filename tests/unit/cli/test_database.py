"""`certdrop migrate-db URL` (cli/database.py): what an operator is told when the URL
cannot be used. The copy itself: tests/unit/index/test_migrate.py, and the round trip
through a daemon: tests/e2e/test_postgresql.py."""

from __future__ import annotations

from pathlib import Path

from conftest import CAEnv


def test_a_url_that_is_not_one_is_named_with_what_is_expected(ca_env: CAEnv) -> None:
    code, out, err = ca_env.cli("migrate-db", "db.example.org/certdrop")
    assert code == 1 and out == ""
    assert err == (
        "migrate-db URL = 'db.example.org/certdrop': cannot use it (Could not parse "
        "SQLAlchemy URL from given URL string); a SQLAlchemy URL is expected, e.g. "
        "postgresql://USER@HOST/DB or sqlite:////PATH/index.sqlite"
    )


def test_a_server_that_does_not_answer_is_one_line_without_the_password(
    ca_env: CAEnv, tmp_path: Path
) -> None:
    res = ca_env.cli_proc("migrate-db", f"postgresql://ca:s3cret@/certdrop?host={tmp_path}")
    assert res.returncode == 1 and res.stdout == ""
    [line] = res.stderr.splitlines()
    assert line.startswith(
        f"certdrop: error: cannot open the index postgresql://ca:***@/certdrop?host={tmp_path}: "
    )
    assert "s3cret" not in line and "Traceback" not in line
    assert (ca_env.state / "index.sqlite").exists()  # the index is where it was
