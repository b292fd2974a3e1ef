"""`certdrop migrate-db URL`: the index copied into another database (SQLite -> PostgreSQL)."""

from __future__ import annotations

import click

from ..errors import LockError
from .context import config_option, ctx


@click.command("migrate-db")
@config_option
@click.argument("url")
def migrate_db(url: str) -> None:
    """Copy the index into the empty database URL, verified table by table.

    The daemon must be stopped (a copy of an index in use would miss what it writes
    next). The configuration is not changed: set [paths] database = URL afterwards.
    """
    from ..index.migrate import copy_index
    from ..index.store import Store, shown_url
    from ..service.systemd import StateLock

    s = ctx().settings
    lock = StateLock(s.state)
    if not lock.acquire():
        raise LockError(
            f"a certdrop daemon (pid {lock.holder()}) is running on {s.state}: stop it first "
            "(a copy of an index in use would miss what it writes next)"
        )
    try:
        source = Store(s.database_url).open()
        try:
            target = Store(url, named="migrate-db URL").open()
            try:
                click.echo(f"copying the index {shown_url(source.url)} into {shown_url(url)}")
                copied = copy_index(source, target)
            finally:
                target.close()
        finally:
            source.close()
    finally:
        lock.release()
    width = max(len(t.table) for t in copied)
    for t in copied:
        click.echo(f"  {t.table:<{width}}  {t.rows:>9} rows  checksum {t.checksum[:16]}  same")
    click.echo(
        f"copied and verified: {sum(t.rows for t in copied)} rows in {len(copied)} tables. "
        f'To use it, set [paths] database = "{shown_url(url)}" (on every host) and start certdrop.'
    )
