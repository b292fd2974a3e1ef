"""What every `certdrop` command shares: `--config`, the settings (loaded once, on use),
the injected clock, the index, and how operator commands reach a running daemon."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ..clock import Clock, SystemClock
from ..errors import CertdropError

# The rest of certdrop is imported by the commands that use it: `certdrop status` does
# not load the daemon, and the daemon's worker processes (which multiprocessing starts by
# re-running the main module) do not load what only the CLI needs.
if TYPE_CHECKING:
    from ..config import Settings
    from ..index.store import Store

F = TypeVar("F", bound=Callable[..., Any])


class Context:
    def __init__(self, config: Path | None, clock: Clock) -> None:
        self.config_path = config
        self.clock = clock
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            from ..config import load_settings
            from ..service.ownership import check_invoking_user

            self._settings = load_settings(self.config_path)
            check_invoking_user(self._settings.state, click.get_current_context().info_name or "")
        return self._settings

    @property
    def resolved_config_path(self) -> Path:
        return self.config_path or Path(
            os.environ.get("CERTDROP_CONFIG") or "/etc/certdrop/certdrop.toml"
        )


def _set_config(ctx: click.Context, _param: click.Parameter, value: Path | None) -> None:
    if value is not None:
        obj = ctx.ensure_object(dict)
        obj["config"] = value


def config_option(f: F) -> F:
    """`--config PATH` on every command (as well as before the command name)."""
    return click.option(
        "--config",
        "config",
        type=click.Path(path_type=Path, dir_okay=False),
        expose_value=False,
        callback=_set_config,
        is_eager=True,
        help="Configuration file (default: $CERTDROP_CONFIG, else /etc/certdrop/certdrop.toml).",
    )(f)


def ctx() -> Context:
    """The command's Context (settings, clock), made on first use."""
    c = click.get_current_context()
    obj = c.find_root().ensure_object(dict)
    if "context" not in obj:
        obj["context"] = Context(obj.get("config"), obj.get("clock") or SystemClock())
    context: Context = obj["context"]
    return context


def open_store(s: Settings) -> Store:
    from ..index.store import Store

    return Store(s.database_url).open()


def operator_command(kind: str, payload: dict[str, Any], timeout: float = 30.0) -> None:
    """Run an operator command directly, or hand it to the running daemon and wait."""
    answer = operator_result(kind, payload, timeout)
    if answer is None:
        click.echo(queued_text(kind, timeout))
        return
    finish(answer)


def operator_result(kind: str, payload: dict[str, Any], timeout: float = 30.0) -> str | None:
    """What `operator_command` prints, unprinted: the result line ('ok: ...' or
    'error: ...'), or None when the running daemon has not answered within `timeout`."""
    from ..audit import operator_actor
    from ..index import control as commands
    from ..service.systemd import StateLock

    c = ctx()
    s = c.settings
    lock = StateLock(s.state)
    if lock.acquire():
        # no daemon: the command runs here (only then is the whole daemon imported)
        lock.release()
        from ..service.control import execute_control
        from ..service.runtime import direct_runtime

        with direct_runtime(s, c.clock) as rt:
            if rt is not None:
                return execute_control(rt, kind, payload)
    from ..service.cluster import read_host_id

    store = open_store(s)
    # on an index shared by several hosts, the daemon of this state folder carries it out
    host = read_host_id(s.state) if s.clustered else None
    extra = {"host": host} if host else {}
    try:
        with store.begin() as conn:
            control_id = commands.push(
                conn, kind, {**payload, "actor": operator_actor(), **extra}, c.clock.now()
            )
        return commands.wait_result(store, control_id, timeout)
    finally:
        store.close()


def queued_text(kind: str, timeout: float) -> str:
    return (
        f"queued: the daemon has not answered within {timeout:g}s; it will carry out "
        f"the {kind} when it gets to it (see 'certdrop status')"
    )


def finish(result: str) -> None:
    if result.startswith("error:"):
        raise CertdropError(result.removeprefix("error:").strip())
    click.echo(result.removeprefix("ok:").strip())
