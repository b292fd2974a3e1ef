"""The operator's decisions: `certdrop approve`, `deny`, `revoke`, `crl`. Each runs here
when no daemon holds the state lock, else in the running daemon within seconds."""

from __future__ import annotations

import click

from ..authority.reasons import REASONS, parse_reason
from .context import config_option, operator_command


@click.command()
@config_option
@click.argument("name")
def approve(name: str) -> None:
    """Approve a pending request NAME (issued within seconds)."""
    operator_command("approve", {"name": name.removesuffix(".req")})


@click.command()
@config_option
@click.argument("name")
@click.option(
    "--reason", required=True, help="Why; the requester reads it in rejected/NAME.reason."
)
def deny(name: str, reason: str) -> None:
    """Deny a pending request NAME with a reason."""
    operator_command("deny", {"name": name.removesuffix(".req"), "reason": reason})


# --- revoke / crl / apache-config ----------------------------------------------------------------------------
@click.command()
@config_option
@click.argument("ref", metavar="REF")
@click.option(
    "--reason",
    default="unspecified",
    show_default=True,
    help="RFC 5280 reason: " + ", ".join(REASONS) + ".",
)
def revoke(ref: str, reason: str) -> None:
    """Revoke the certificate REF names; the CRL follows at once.

    REF is a serial (hex, any case, colons allowed; 0x before it: only a serial), a
    request name, a CN or an e-mail address (CN and e-mail in any case). Of several
    matches the one still valid is revoked; when several are still valid (of one holder
    or of several), nothing is revoked and they are listed: give the serial of one.
    """
    canonical = parse_reason(reason)  # refuse a bad reason before anything else
    operator_command("revoke", {"ref": ref.removesuffix(".req"), "reason": canonical})


@click.command()
@config_option
def crl() -> None:
    """Regenerate and publish the CRL now (and the Apache files, when enabled)."""
    operator_command("crl", {})
