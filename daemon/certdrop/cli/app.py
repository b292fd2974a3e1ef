"""The `certdrop` command line: the command group, logging, and the entry point.

Errors meant for users (`CertdropError`) are printed as one line without a
traceback; anything else is a bug and is logged with its traceback.
"""

from __future__ import annotations

import logging
import os
import sys

import click

from .. import __version__
from ..clock import Clock
from ..errors import CertdropError
from . import database, lifecycle, operate, query, setup
from .context import config_option


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="certdrop")
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="Log verbosity.",
)
@config_option
def cli(log_level: str) -> None:
    """certdrop: a small certificate authority behind a watch folder."""
    _setup_logging(log_level)


def _setup_logging(level: str) -> None:
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        fmt = "%(levelname)s %(name)s: %(message)s"
        if _stderr_is_journal():
            # sd-daemon(3): a "<N>" prefix gives journald the syslog priority of each line
            fmt = "<%(syslog_priority)d>" + fmt
            handler.addFilter(_add_syslog_priority)
        elif not os.environ.get("JOURNAL_STREAM"):
            fmt = "%(asctime)s " + fmt
        handler.setFormatter(logging.Formatter(fmt, "%Y-%m-%dT%H:%M:%S"))
        root.addHandler(handler)
        # this format shows neither where a line was logged from nor which thread or
        # process: skip collecting that for every record (the logging HOWTO's "Optimization")
        logging._srcfile = None
        logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root.setLevel(level.upper())
    for noisy in ("apscheduler", "watchdog"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def _stderr_is_journal() -> bool:
    """True when systemd connected stderr to the journal ($JOURNAL_STREAM = dev:inode)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    try:
        st = os.fstat(sys.stderr.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (ValueError, OSError):
        return False


def _add_syslog_priority(record: logging.LogRecord) -> bool:
    levels = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))
    record.syslog_priority = next((p for lvl, p in levels if record.levelno >= lvl), 7)
    return True


for _command in (
    setup.init,
    setup.run,
    setup.serve,
    setup.check_config,
    query.status,
    query.list_cmd,
    query.show,
    operate.approve,
    operate.deny,
    operate.revoke,
    operate.crl,
    setup.apache_config,
    setup.import_cmd,
    database.migrate_db,
    lifecycle.root_crl,
    lifecycle.backup,
    lifecycle.restore,
):
    cli.add_command(_command)


# --- entry point ----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None, clock: Clock | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="certdrop", standalone_mode=False, obj={"clock": clock})
    except CertdropError as exc:
        click.echo(f"certdrop: error: {exc}", err=True)
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 1
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    except Exception:
        logging.getLogger("certdrop").exception("internal error (this is a bug in certdrop)")
        return 70
    return 0


if __name__ == "__main__":
    sys.exit(main())
