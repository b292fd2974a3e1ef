"""A real PostgreSQL server for the tests: started once per session, on a Unix socket only.

Debian's `postgresql` package (make test installs it) keeps initdb and pg_ctl in
/usr/lib/postgresql/<version>/bin. The cluster lives in a temporary folder owned by an
unprivileged user (postgres refuses to run as root: as root the tests run it as
`nobody`), listens on no TCP port, and is stopped and removed at the end of the session.
Each test that asks gets a database of its own (`pg_url`), dropped afterwards.

Registered as a pytest plugin by tests/conftest.py: fixtures `pg_server` (session),
`pg_url` (a fresh database) and `index_url` (parametrized: SQLite, then PostgreSQL).
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

DB_USER = "certdrop"


def find_bindir() -> Path:
    """The newest PostgreSQL server's bin folder (Debian's layout), else initdb on PATH."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1].parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    raise RuntimeError(
        "no PostgreSQL server binaries (initdb, pg_ctl): install Debian's postgresql "
        "package (make test does)"
    )


class PgServer:
    """One PostgreSQL cluster in a temporary folder, reached by its Unix socket."""

    def __init__(self, bindir: Path | None = None, *, durable: bool = False) -> None:
        self.bindir = bindir or find_bindir()
        self.root = Path(tempfile.mkdtemp(prefix="certdrop-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root  # short: a socket path has at most 107 bytes
        self.log = self.root / "server.log"
        self.durable = durable  # fsync as in production (the bench); off for the tests
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            os.chown(self.root, nobody.pw_uid, nobody.pw_gid)
            self._as_user = [
                "setpriv",
                f"--reuid={nobody.pw_uid}",
                f"--regid={nobody.pw_gid}",
                "--clear-groups",
                "--",
            ]
        self._names = itertools.count(1)
        self.running = False

    def _run(self, *cmd: str) -> None:
        res = subprocess.run(
            [*self._as_user, *cmd], capture_output=True, text=True, cwd=self.root, timeout=120
        )
        if res.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{cmd[0]} failed: {res.stdout}{res.stderr}{log}")

    def start(self) -> PgServer:
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            DB_USER,
            "--auth=trust",  # only the socket, in a folder only its owner (and root) enters
            "--encoding=UTF8",
            "--locale=C",
        )
        options = [
            "-c listen_addresses=''",
            f"-c unix_socket_directories='{self.socket_dir}'",
            "-c max_connections=200",
        ]
        if not self.durable:
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        self._run(
            str(self.bindir / "pg_ctl"),
            "start",
            "-w",
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            " ".join(options),
        )
        self.running = True
        return self

    def stop(self) -> None:
        if self.running:
            self._run(str(self.bindir / "pg_ctl"), "stop", "-w", "-m", "fast", "-D", str(self.data))
            self.running = False
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, dbname: str) -> str:
        """The SQLAlchemy URL of database `dbname` (psycopg 3, over the Unix socket)."""
        return f"postgresql+psycopg://{DB_USER}@/{dbname}?host={self.socket_dir}"

    def _admin(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(
            host=str(self.socket_dir), user=DB_USER, dbname="postgres", autocommit=True
        )

    def create_database(self, template: str | None = None) -> str:
        """A new database, empty or a copy of database `template` (file by file: quick
        for a big one); its name."""
        name = f"t{os.getpid()}_{next(self._names)}"
        copy = f' TEMPLATE "{template}" STRATEGY FILE_COPY' if template else ""
        with self._admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"{copy}')  # type: ignore[arg-type]
        return name

    def drop_database(self, name: str) -> None:
        with self._admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    server = PgServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """The URL of a fresh, empty PostgreSQL database, dropped after the test."""
    name = pg_server.create_database()
    yield pg_server.url(name)
    pg_server.drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def index_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty index's URL: a SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'index.sqlite'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def store(index_url: str) -> Iterator[Any]:
    """An empty index (certdrop's Store, opened) on each backend: SQLite, then PostgreSQL."""
    from certdrop.index.store import Store

    s = Store(index_url).open()
    yield s
    s.close()
