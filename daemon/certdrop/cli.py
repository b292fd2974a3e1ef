"""The `certdrop` command line.

Errors meant for users (`CertdropError`) are printed as one line without a
traceback; anything else is a bug and is logged with its traceback.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from cryptography.hazmat.primitives import hashes

from . import __version__
from .ca import CertificateAuthority, adopt_ca, create_ca, read_passphrase, subject_text
from .clock import Clock, SystemClock
from .config import Settings, effective_values, load_settings
from .errors import CertdropError
from .lint import shared_linter
from .mail import status_extra as mail_status_extra
from .service import Daemon, StateLock, direct_runtime, execute_control, wait_for_control
from .spool import Spool
from .store import CertRecord, Store

F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger("certdrop")


class Context:
    def __init__(self, config: Path | None, clock: Clock) -> None:
        self.config_path = config
        self.clock = clock
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.config_path)
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


def _ctx() -> Context:
    c = click.get_current_context()
    obj = c.find_root().ensure_object(dict)
    if "context" not in obj:
        obj["context"] = Context(obj.get("config"), obj.get("clock") or SystemClock())
    ctx: Context = obj["context"]
    return ctx


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
        if not os.environ.get("JOURNAL_STREAM"):
            fmt = "%(asctime)s " + fmt
        handler.setFormatter(logging.Formatter(fmt, "%Y-%m-%dT%H:%M:%S"))
        root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("apscheduler", "watchdog"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


# --- init ---------------------------------------------------------------------------------------------
@cli.command()
@config_option
@click.option(
    "--ca-cert",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="Adopt this existing CA certificate (with --ca-key) instead of creating one.",
)
@click.option(
    "--ca-key",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="The private key of --ca-cert (PEM).",
)
@click.option(
    "--ca-chain",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="Certificates above an adopted intermediate CA (PEM), up to the root.",
)
def init(ca_cert: Path | None, ca_key: Path | None, ca_chain: Path | None) -> None:
    """Create the CA (or adopt ca.cer + ca.key) and the folders; never overwrites a CA."""
    c = _ctx()
    s = c.settings
    if (ca_cert is None) != (ca_key is None):
        raise click.UsageError("--ca-cert and --ca-key go together")
    passphrase = read_passphrase(s.ca.key_passphrase_file)
    now = c.clock.now()
    if ca_cert is not None and ca_key is not None:
        cert, warnings = adopt_ca(s.state, ca_cert, ca_key, now, passphrase, ca_chain)
        click.echo(f"adopted CA {subject_text(cert.subject)} into {s.state}")
        for w in warnings:
            click.echo(f"warning: {w}")
    else:
        cert = create_ca(
            s.state, s.ca, now, passphrase, shared_linter().certificate if s.policy.lint else None
        )
        click.echo(f"created CA {subject_text(cert.subject)} ({s.ca.key_type}) in {s.state}")
    click.echo(
        f"  valid until {cert.not_valid_after_utc:%Y-%m-%d}, SHA-256 fingerprint "
        f"{cert.fingerprint(hashes.SHA256()).hex(':').upper()}"
    )
    Store(s.database_url).open().close()
    Spool(s.spool).create(list(s.profiles), s.policy.default_profile)
    click.echo(f"spool ready in {s.spool} (drop requests in {s.spool / 'inbox'})")


# --- run -----------------------------------------------------------------------------------------------
@cli.command()
@config_option
def run() -> None:
    """Run the daemon in the foreground (systemd runs this)."""
    c = _ctx()
    daemon = Daemon(c.settings, c.clock, config_path=c.resolved_config_path)
    sys.exit(daemon.run())


# --- check-config --------------------------------------------------------------------------------------------
@cli.command("check-config")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print the effective values as JSON.")
def check_config(as_json: bool) -> None:
    """Validate the configuration and policy and print the effective values."""
    c = _ctx()
    values = effective_values(c.settings)
    if as_json:
        click.echo(json.dumps(values, indent=2))
        return
    click.echo(
        f"# effective configuration from {c.resolved_config_path} (and CERTDROP_* variables)"
    )
    click.echo(_to_toml(values))
    click.echo("# configuration is valid")


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return (
            "{ "
            + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items() if x is not None)
            + " }"
        )
    if v is None:
        return '""'
    return json.dumps(str(v))


def _to_toml(values: dict[str, Any]) -> str:
    lines: list[str] = []

    def section(name: str, table: dict[str, Any]) -> None:
        lines.append(f"\n[{name}]")
        subs = []
        for k, v in table.items():
            if isinstance(v, dict) and k in ("subject",):
                subs.append((k, v))
            elif v is None:
                continue
            else:
                lines.append(f"{k} = {_toml_value(v)}")
        for k, v in subs:
            lines.append(f"\n[{name}.{k}]")
            for attr, rule in v.items():
                lines.append(f"{attr} = {_toml_value(rule)}")

    for key, table in values.items():
        if key == "profiles":
            for pname, prof in table.items():
                section(f"profiles.{pname}", prof)
        elif isinstance(table, dict):
            section(key, table)
    return "\n".join(lines).lstrip("\n")


# --- status / list / show ---------------------------------------------------------------------------------
def _open_store(s: Settings) -> Store:
    return Store(s.database_url).open()


def _daemon_state(s: Settings) -> dict[str, Any]:
    lock = StateLock(s.state)
    if not s.state.is_dir():
        return {"running": False}
    if lock.acquire():
        lock.release()
        return {"running": False}
    return {"running": True, "pid": lock.holder()}


@cli.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.option("--days", default=30, show_default=True, help="Show expiries within this many days.")
def status(as_json: bool, days: int) -> None:
    """CA, counts, pending requests, CRL and upcoming expiries."""
    c = _ctx()
    s = c.settings
    now = c.clock.now()
    ca = CertificateAuthority.load(s.state, read_passphrase(s.ca.key_passphrase_file))
    store = _open_store(s)
    try:
        with store.begin() as conn:
            counts = store.counts(conn, now)
            outcomes = store.outcome_counts(conn)
            pend = store.list_pending(conn)
            expiring = store.list_certs(conn, now=now, expiring_within=dt.timedelta(days=days))
            extra = _status_extras(store, conn, s, now)
    finally:
        store.close()
    doc: dict[str, Any] = {
        "ca": {
            "subject": subject_text(ca.subject),
            "key": ca.key_algorithm,
            "not_after": ca.not_after.isoformat(),
            "days_left": (ca.not_after - now).days,
        },
        "daemon": _daemon_state(s),
        "certificates": counts,
        "requests": outcomes,
        "pending": [
            {
                "name": p.name,
                "profile": p.profile,
                "subject": p.subject,
                "owner": p.owner,
                "received_at": p.received_at.isoformat(),
            }
            for p in pend
        ],
        "expiring": [r.as_json(now) for r in expiring],
        **extra,
    }
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    d = doc["daemon"]
    click.echo(
        f"CA        {doc['ca']['subject']} ({doc['ca']['key']}), valid until "
        f"{ca.not_after:%Y-%m-%d} ({doc['ca']['days_left']} days)"
    )
    click.echo("daemon    " + (f"running (pid {d['pid']})" if d["running"] else "not running"))
    click.echo("index     " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if outcomes:
        click.echo("requests  " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
    for key, value in extra.items():
        if isinstance(value, dict):
            click.echo(
                f"{key:<9} " + ", ".join(f"{k} {v}" for k, v in value.items() if v is not None)
            )
    click.echo(f"pending   {len(pend)}")
    for p in pend:
        click.echo(
            f"  {p.name:<24} {p.profile:<10} {p.subject}  (since {p.received_at:%Y-%m-%d %H:%M})"
        )
    click.echo(f"expiring within {days} days: {len(expiring)}")
    _print_table(expiring, now)


StatusExtra = Callable[[Store, Any, Settings, dt.datetime], dict[str, Any]]
STATUS_EXTRAS: list[StatusExtra] = []
STATUS_EXTRAS.append(mail_status_extra)


def _status_extras(store: Store, conn: Any, s: Settings, now: dt.datetime) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for fn in STATUS_EXTRAS:
        out.update(fn(store, conn, s, now))
    return out


def _print_table(records: list[CertRecord], now: dt.datetime) -> None:
    if not records:
        return
    rows = [
        (
            r.serial,
            r.effective_status(now),
            f"{r.not_after:%Y-%m-%d}",
            r.profile,
            r.request_name,
            r.subject,
        )
        for r in records
    ]
    headers = ("SERIAL", "STATUS", "NOT AFTER", "PROFILE", "REQUEST", "SUBJECT")
    widths = [max(len(h), *(len(str(row[i])) for row in rows)) for i, h in enumerate(headers)]
    widths[-1] = len(headers[-1])
    fmt = "  ".join(f"{{:<{w}}}" for w in widths[:-1]) + "  {}"
    click.echo(fmt.format(*headers))
    for row in rows:
        click.echo(fmt.format(*row))


@cli.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.option(
    "--status",
    "status_filter",
    default="all",
    show_default=True,
    type=click.Choice(["all", "valid", "expired", "revoked", "superseded"]),
)
@click.option(
    "--expiring",
    type=int,
    default=None,
    metavar="DAYS",
    help="Only valid certificates ending within DAYS days.",
)
def list_cmd(as_json: bool, status_filter: str, expiring: int | None) -> None:
    """The index: issued, expiring, revoked."""
    c = _ctx()
    s = c.settings
    now = c.clock.now()
    store = _open_store(s)
    try:
        with store.begin() as conn:
            records = store.list_certs(
                conn,
                status=None if status_filter == "all" else status_filter,
                now=now,
                expiring_within=dt.timedelta(days=expiring) if expiring is not None else None,
            )
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps({"certificates": [r.as_json(now) for r in records]}, indent=2))
        return
    if not records:
        click.echo("no certificates")
        return
    _print_table(records, now)


@cli.command()
@config_option
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.option("--pem", is_flag=True, help="Print the certificate(s) in PEM.")
def show(ref: str, as_json: bool, pem: bool) -> None:
    """One certificate by serial, or every certificate of a request NAME."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    c = _ctx()
    s = c.settings
    now = c.clock.now()
    store = _open_store(s)
    try:
        with store.begin() as conn:
            records = store.find(conn, ref)
            history = store.journal_for(conn, ref)
    finally:
        store.close()
    if not records:
        raise CertdropError(
            f"no certificate with serial or request name {ref!r}; see 'certdrop list'"
        )
    if pem:
        for r in records:
            click.echo(
                x509.load_der_x509_certificate(r.der)
                .public_bytes(serialization.Encoding.PEM)
                .decode(),
                nl=False,
            )
        return
    if as_json:
        doc = {
            "certificates": [r.as_json(now) for r in records],
            "history": [
                {**h, "at": dt.datetime.fromtimestamp(h["at"], dt.UTC).isoformat()} for h in history
            ],
        }
        click.echo(json.dumps(doc, indent=2, default=str))
        return
    for r in records:
        cert = x509.load_der_x509_certificate(r.der)
        click.echo(f"serial       {r.serial}")
        click.echo(f"subject      {r.subject}")
        click.echo(
            f"status       {r.effective_status(now)}"
            + (
                f" ({r.revocation_reason}, {r.revoked_at:%Y-%m-%d %H:%M} UTC)"
                if r.revoked_at
                else ""
            )
            + (f" (by {r.superseded_by})" if r.superseded_by else "")
        )
        click.echo(
            f"valid        {r.not_before:%Y-%m-%d %H:%M} .. {r.not_after:%Y-%m-%d %H:%M} UTC"
        )
        click.echo(f"profile      {r.profile}")
        click.echo(f"request      {r.request_name}  (sha256 {r.request_fingerprint[:16]}...)")
        click.echo(
            f"issued       {r.issued_at:%Y-%m-%d %H:%M} UTC, owner {r.owner or '-'}, {r.source}"
        )
        fp = cert.fingerprint(hashes.SHA256())
        click.echo(f"fingerprint  SHA256 {fp.hex(':').upper()}")
        click.echo("")


# --- approve / deny ----------------------------------------------------------------------------------------
def _operator_command(kind: str, payload: dict[str, Any], timeout: float = 30.0) -> None:
    """Run an operator command directly, or hand it to the running daemon and wait."""
    c = _ctx()
    s = c.settings
    with direct_runtime(s, c.clock) as rt:
        if rt is not None:
            result = execute_control(rt, kind, payload)
            _finish(result)
            return
    store = _open_store(s)
    try:
        with store.begin() as conn:
            control_id = store.push_control(conn, kind, payload, c.clock.now())
        answer = wait_for_control(store, control_id, timeout)
    finally:
        store.close()
    if answer is None:
        click.echo(
            f"queued: the daemon has not answered within {timeout:g}s; it will carry out "
            f"the {kind} when it gets to it (see 'certdrop status')"
        )
        return
    _finish(answer)


def _finish(result: str) -> None:
    if result.startswith("error:"):
        raise CertdropError(result.removeprefix("error:").strip())
    click.echo(result.removeprefix("ok:").strip())


@cli.command()
@config_option
@click.argument("name")
def approve(name: str) -> None:
    """Approve a pending request NAME (issued within seconds)."""
    _operator_command("approve", {"name": name.removesuffix(".req")})


@cli.command()
@config_option
@click.argument("name")
@click.option(
    "--reason", required=True, help="Why; the requester reads it in rejected/NAME.reason."
)
def deny(name: str, reason: str) -> None:
    """Deny a pending request NAME with a reason."""
    _operator_command("deny", {"name": name.removesuffix(".req"), "reason": reason})


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
