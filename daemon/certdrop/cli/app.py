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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from .. import __version__
from ..authority.reasons import REASONS, parse_reason
from ..clock import Clock, SystemClock
from ..errors import CertdropError

# The rest of certdrop is imported by the commands that use it: `certdrop status` does
# not load the daemon, and the daemon's signing workers (which multiprocessing starts by
# re-running this module) do not load what only the CLI needs.
if TYPE_CHECKING:
    from ..config import Settings
    from ..index.store import CertRecord, Store

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
    from cryptography.hazmat.primitives import hashes

    from ..authority.keys import read_passphrase
    from ..authority.lifecycle import adopt_ca, create_ca
    from ..authority.lint import shared_linter
    from ..authority.names import subject_text
    from ..index.store import Store
    from ..intake.spool import Spool
    from ..service.ownership import hand_over

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
    if hand_over(s.state, s.spool):
        click.echo(f"handed the new files over to the owner of {s.state}")
    click.echo(f"spool ready in {s.spool} (drop requests in {s.spool / 'inbox'})")


# --- run -----------------------------------------------------------------------------------------------
@cli.command()
@config_option
def run() -> None:
    """Run the daemon in the foreground (systemd runs this)."""
    from ..service.daemon import Daemon

    c = _ctx()
    daemon = Daemon(c.settings, c.clock, config_path=c.resolved_config_path)
    sys.exit(daemon.run())


# --- check-config --------------------------------------------------------------------------------------------
@cli.command("check-config")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print the effective values as JSON.")
def check_config(as_json: bool) -> None:
    """Validate the configuration and policy and print the effective values."""
    from ..config import effective_values

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
    from ..index.store import Store

    return Store(s.database_url).open()


def _daemon_state(s: Settings) -> dict[str, Any]:
    from ..service.systemd import StateLock

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
    from ..authority.keys import key_algorithm
    from ..authority.lifecycle import load_ca_certificates
    from ..authority.names import subject_text

    c = _ctx()
    s = c.settings
    now = c.clock.now()
    # the certificate is enough: status works without the CA key's passphrase
    ca_cert, _ = load_ca_certificates(s.state, check_key=True)
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
            "subject": subject_text(ca_cert.subject),
            "key": key_algorithm(ca_cert.public_key()),
            "not_after": ca_cert.not_valid_after_utc.isoformat(),
            "days_left": (ca_cert.not_valid_after_utc - now).days,
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
    _print_status(doc, days, now, expiring)


def _print_status(
    doc: dict[str, Any], days: int, now: dt.datetime, expiring: list[CertRecord]
) -> None:
    """`certdrop status` for a person: aligned facts, then tables of what needs attention."""
    ca, d, counts = doc["ca"], doc["daemon"], doc["certificates"]
    rows: list[tuple[str, str]] = [
        ("CA", ca["subject"]),
        ("", f"{ca['key']}, valid until {ca['not_after'][:10]} ({ca['days_left']} days left)"),
        ("daemon", f"running (pid {d['pid']})" if d["running"] else "not running"),
        (
            "index",
            f"total {counts['total']} ("
            + ", ".join(f"{k} {counts[k]}" for k in ("valid", "expired", "revoked", "superseded"))
            + ")",
        ),
    ]
    if doc["requests"]:
        rows.append(("requests", ", ".join(f"{k} {v}" for k, v in sorted(doc["requests"].items()))))
    for key, value in doc.items():
        if key in _STATUS_CORE:
            continue
        if isinstance(value, dict):
            text = ", ".join(f"{k} {v}" for k, v in value.items() if v is not None)
        elif isinstance(value, list):
            text = f"{len(value)}"
        else:
            text = str(value)
        rows.append((key, text))
    width = max(len(k) for k, _ in rows) + 2
    for key, value in rows:
        click.echo(f"{key:<{width}}{value}".rstrip())

    pending = doc["pending"]
    click.echo("")
    click.echo(f"PENDING APPROVAL ({len(pending)})" if pending else "PENDING APPROVAL: none")
    if pending:
        _table(
            ("NAME", "PROFILE", "OWNER", "SINCE (UTC)", "SUBJECT"),
            [
                (
                    p["name"],
                    p["profile"],
                    p["owner"] or "-",
                    p["received_at"][:16].replace("T", " "),
                    p["subject"],
                )
                for p in pending
            ],
        )
        click.echo("  approve with 'certdrop approve NAME', or 'certdrop deny NAME --reason TEXT'")
    click.echo("")
    title = f"EXPIRING WITHIN {days} DAYS"
    click.echo(f"{title} ({len(expiring)})" if expiring else f"{title}: none")
    _print_table(expiring, now)


_STATUS_CORE = frozenset({"ca", "daemon", "certificates", "requests", "pending", "expiring"})


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Left-aligned columns, two spaces apart; the last column is not padded."""
    widths = [max(len(h), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths[:-1]) + "  {}"
    click.echo(fmt.format(*headers).rstrip())
    for row in rows:
        click.echo(fmt.format(*row).rstrip())


StatusExtra = Callable[["Store", Any, "Settings", dt.datetime], dict[str, Any]]
STATUS_EXTRAS: list[StatusExtra] | None = None  # None: mail's and publish's (loaded on use)


def _status_extras(store: Store, conn: Any, s: Settings, now: dt.datetime) -> dict[str, Any]:
    extras = STATUS_EXTRAS
    if extras is None:
        from .status import mail_status as mail_extra
        from .status import publication_status

        extras = [mail_extra, publication_status]
    out: dict[str, Any] = {}
    for fn in extras:
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
    _table(("SERIAL", "STATUS", "NOT AFTER", "PROFILE", "REQUEST", "SUBJECT"), rows)


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
    from cryptography.hazmat.primitives import hashes, serialization

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
    from ..audit import operator_actor
    from ..service.control import execute_control, wait_for_control
    from ..service.runtime import direct_runtime

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
            control_id = store.push_control(
                conn, kind, {**payload, "actor": operator_actor()}, c.clock.now()
            )
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


# --- revoke / crl / apache-config ----------------------------------------------------------------------------
@cli.command()
@config_option
@click.argument("ref", metavar="SERIAL|NAME")
@click.option(
    "--reason",
    default="unspecified",
    show_default=True,
    help="RFC 5280 reason: " + ", ".join(REASONS) + ".",
)
def revoke(ref: str, reason: str) -> None:
    """Revoke a certificate by serial (hex) or request NAME; the CRL follows at once."""
    canonical = parse_reason(reason)  # refuse a bad reason before anything else
    _operator_command("revoke", {"ref": ref.removesuffix(".req"), "reason": canonical})


@cli.command()
@config_option
def crl() -> None:
    """Regenerate and publish the CRL now (and the Apache files, when enabled)."""
    _operator_command("crl", {})


@cli.command("apache-config")
@config_option
@click.option(
    "--log-file",
    default="${APACHE_LOG_DIR}/certdrop-clients.log",
    show_default=True,
    help="Where Apache logs who connected (e-mail and serial of each client certificate).",
)
def apache_config(log_file: str) -> None:
    """Print the mod_ssl configuration that matches this setup."""
    from ..authority.lifecycle import load_ca_certificates
    from ..publish import modssl

    c = _ctx()
    s = c.settings
    ca_cert, chain = load_ca_certificates(s.state)
    click.echo(
        modssl.apache_config_text(
            s, ca_cert, chain, log_file=log_file, config_path=c.resolved_config_path
        ),
        nl=False,
    )


# --- import ---------------------------------------------------------------------------------------------------
@cli.command("import")
@config_option
@click.argument("source", type=click.Path(path_type=Path, exists=True))
@click.option(
    "--certs",
    "certs_dir",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    help="With an index.txt: the openssl CA's new_certs_dir holding SERIAL.pem "
    "(default: newcerts/ beside index.txt, else its folder).",
)
@click.option(
    "--profile",
    default=None,
    help="The profile the adopted certificates belong to (default: [policy] default_profile).",
)
@click.option("--dry-run", is_flag=True, help="Check and report, change nothing.")
@click.option("--json", "as_json", is_flag=True, help="The report as one JSON document.")
def import_cmd(
    source: Path, certs_dir: Path | None, profile: str | None, dry_run: bool, as_json: bool
) -> None:
    """Adopt certificates issued before certdrop: an openssl index.txt (SOURCE) with its
    certificate folder, or a folder of .cer files signed by this CA."""
    from cryptography import x509

    from ..audit import AuditLog, operator_actor
    from ..authority.lifecycle import CA_CERT
    from ..issue.importer import Importer, candidates_for, iter_report_lines
    from ..service.ownership import hand_over

    c = _ctx()
    s = c.settings
    profile = profile or s.policy.default_profile
    if profile not in s.profiles:
        raise CertdropError(
            f"--profile {profile!r} names no profile; defined: {', '.join(sorted(s.profiles))}"
        )
    ca_path = s.state / CA_CERT
    if not ca_path.exists():
        raise CertdropError(
            f"no CA in {s.state}; adopt the openssl CA first: "
            "certdrop init --ca-cert ca.cer --ca-key ca.key"
        )
    ca_cert = x509.load_pem_x509_certificate(ca_path.read_bytes())
    label, candidates = candidates_for(source, certs_dir)
    audit = AuditLog.in_state(s.state, c.clock, actor=operator_actor())
    store = _open_store(s)
    try:
        importer = Importer(
            store, ca_cert, c.clock, profile, dry_run=dry_run, audit=None if dry_run else audit
        )
        if sys.stdout.isatty() and not as_json and candidates:
            with click.progressbar(length=len(candidates), label="importing", show_pos=True) as bar:
                report = importer.run(label, candidates, bar.update)
        else:
            report = importer.run(label, candidates)
    finally:
        store.close()
        hand_over(s.state, s.spool)
    if not dry_run:
        audit(
            {
                "event": "operator",
                "command": "import",
                "args": {"source": str(source), "profile": profile},
                "ok": True,
                "result": f"imported {len(report.imported)}, skipped {len(report.skipped)}",
            }
        )
        hand_over(s.state, s.spool)
    if as_json:
        click.echo(json.dumps(report.as_json(), indent=2))
        return
    for line in iter_report_lines(report):
        click.echo(line)
    if report.counts()["revoked"] and not dry_run:
        # the adopted revocations must be on the CRL (and Apache's copy) right away
        _operator_command("crl", {})


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
