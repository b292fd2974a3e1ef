"""Looking at the index: `certdrop status`, `list` and `show`."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import click

from ..errors import CertdropError
from .context import config_option, ctx, open_store

if TYPE_CHECKING:
    from ..config import Settings
    from ..index.store import CertRecord, Store


def _daemon_state(s: Settings) -> dict[str, Any]:
    from ..service.systemd import StateLock

    lock = StateLock(s.state)
    if not s.state.is_dir():
        return {"running": False}
    if lock.acquire():
        lock.release()
        return {"running": False}
    return {"running": True, "pid": lock.holder()}


@click.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.option("--days", default=30, show_default=True, help="Show expiries within this many days.")
def status(as_json: bool, days: int) -> None:
    """CA, counts, pending requests, CRL and upcoming expiries."""
    from ..authority.keys import key_algorithm
    from ..authority.lifecycle import load_ca_certificates
    from ..authority.names import subject_text
    from ..index import journal, listing
    from ..index import pending as waiting

    c = ctx()
    s = c.settings
    now = c.clock.now()
    # the certificate is enough: status works without the CA key's passphrase
    ca_cert, _ = load_ca_certificates(s.state, check_key=True)
    store = open_store(s)
    try:
        with store.begin() as conn:
            counts = listing.counts(conn, now)
            outcomes = journal.outcome_counts(conn)
            pend = waiting.list_pending(conn)
            expiring = listing.list_certs(
                conn, now=now, expiring_within=dt.timedelta(days=days), der=False
            )
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
        if key in _STATUS_TEXT:
            text = _STATUS_TEXT[key](value)
        elif isinstance(value, dict):
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


def _watch_text(value: dict[str, Any]) -> str:
    from .status import watch_text

    return watch_text(value)


def _apache_text(value: dict[str, Any]) -> str:
    from .status import apache_text

    return apache_text(value)


def _cluster_text(value: dict[str, Any]) -> str:
    from .status import cluster_text

    return cluster_text(value)


def _chain_crls_text(value: Any) -> str:
    from .status import chain_crls_text

    return chain_crls_text(value)


def _cas_text(value: Any) -> str:
    from .status import cas_text

    return cas_text(value)


# extras whose text line is not the generic "key value, key value"
_STATUS_TEXT: dict[str, Callable[[Any], str]] = {
    "watch": _watch_text,
    "chain_crls": _chain_crls_text,
    "apache": _apache_text,
    "cas": _cas_text,
    "cluster": _cluster_text,
}


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Left-aligned columns, two spaces apart; the last column is not padded."""
    widths = [max(map(len, map(str, column))) for column in zip(headers, *rows, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths[:-1]) + "  {}"
    # one write: a listing of a big index has tens of thousands of lines
    click.echo("\n".join(fmt.format(*row).rstrip() for row in (headers, *rows)))


StatusExtra = Callable[["Store", Any, "Settings", dt.datetime], dict[str, Any]]
STATUS_EXTRAS: list[StatusExtra] | None = None  # None: watch's, mail's, publish's (on use)


def _status_extras(store: Store, conn: Any, s: Settings, now: dt.datetime) -> dict[str, Any]:
    extras = STATUS_EXTRAS
    if extras is None:
        from .status import ca_status, cluster_status, publication_status, watch_status
        from .status import mail_status as mail_extra

        extras = [ca_status, watch_status, mail_extra, publication_status, cluster_status]
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
            r.not_after.date().isoformat(),  # YYYY-MM-DD; strftime costs 15x more
            r.profile,
            r.request_name,
            r.subject,
        )
        for r in records
    ]
    _table(("SERIAL", "STATUS", "NOT AFTER", "PROFILE", "REQUEST", "SUBJECT"), rows)


@click.command("list")
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
@click.option(
    "--search",
    metavar="TEXT",
    default=None,
    help="Only certificates whose serial, request name, CN or e-mail address contains "
    "TEXT (in any case).",
)
def list_cmd(as_json: bool, status_filter: str, expiring: int | None, search: str | None) -> None:
    """The index: issued, expiring, revoked."""
    from ..index import listing

    c = ctx()
    s = c.settings
    now = c.clock.now()
    store = open_store(s)
    status = None if status_filter == "all" else status_filter
    within = dt.timedelta(days=expiring) if expiring is not None else None
    records: list[CertRecord] = []
    lines: list[tuple[str, str, str, str, str, str]] = []
    try:
        with store.begin() as conn:
            if as_json:
                records = listing.list_certs(
                    conn,
                    status=status,
                    now=now,
                    expiring_within=within,
                    search=search,
                    der=False,
                )
            else:  # the table's columns only: no record built per certificate
                lines = listing.list_lines(
                    conn, status=status, now=now, expiring_within=within, search=search
                )
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps({"certificates": [r.as_json(now) for r in records]}, indent=2))
        return
    if not lines:
        click.echo("no certificates" if search is None else f"no certificate matches {search!r}")
        return
    _table(("SERIAL", "STATUS", "NOT AFTER", "PROFILE", "REQUEST", "SUBJECT"), lines)


@click.command()
@config_option
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.option("--pem", is_flag=True, help="Print the certificate(s) in PEM.")
def show(ref: str, as_json: bool, pem: bool) -> None:
    """Every certificate REF names, newest first, with what matched (--json: and history).

    REF is a serial (hex, any case, colons allowed; 0x before it: only a serial), a
    request name, a CN or an e-mail address (CN and e-mail in any case). Unlike
    `revoke`, which refuses a REF that names several certificates still valid, `show`
    shows them all.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    from ..index import journal, listing
    from ..index import outputs as delivered

    c = ctx()
    s = c.settings
    now = c.clock.now()
    store = open_store(s)
    try:
        with store.begin() as conn:
            matches = listing.lookup(conn, ref)
            history = journal.journal_for(conn, ref.strip(), [m.record.serial for m in matches])
            files = delivered.of(conn, [m.record.serial for m in matches])
    finally:
        store.close()
    if not matches:
        raise CertdropError(
            f"no certificate with serial, request name, CN or e-mail {ref.strip()!r}; "
            "see 'certdrop list --search TEXT'"
        )
    records = [m.record for m in matches]
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
            "certificates": [
                {
                    **m.record.as_json(now),
                    "matched_by": list(m.matched_by),
                    "files": [path for _, path, _ in files.get(m.record.serial, [])],
                }
                for m in matches
            ],
            "history": [
                {**h, "at": dt.datetime.fromtimestamp(h["at"], dt.UTC).isoformat()} for h in history
            ],
        }
        click.echo(json.dumps(doc, indent=2, default=str))
        return
    for m in matches:
        r = m.record
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
        click.echo(f"matched by   {', '.join(m.matched_by)}")
        for i, (_kind, path, replaced) in enumerate(files.get(r.serial, [])):
            label = "files" if i == 0 else ""
            note = " (replaced by a renewal: archived)" if replaced else ""
            click.echo(f"{label:<13}{path}{note}")
        click.echo("")
