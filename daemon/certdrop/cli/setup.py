"""Setting up and running: `certdrop init`, `run`, `serve`, `check-config`, `apache-config`,
`import`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from ..errors import CertdropError
from .context import (
    config_option,
    ctx,
    open_store,
    operator_command,
    operator_result,
    queued_text,
)
from .lifecycle import init_two_tier, offline_root_options


# --- init ---------------------------------------------------------------------------------------------
@click.command()
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
@offline_root_options
def init(
    ca_cert: Path | None,
    ca_key: Path | None,
    ca_chain: Path | None,
    offline_root: Path | None,
    root_passphrase_file: Path | None,
) -> None:
    """Create the CA (or adopt ca.cer + ca.key) and the folders; never overwrites a CA.

    With --offline-root DIR: a two-tier CA, a root whose key is written only to DIR
    (encrypted) and the online issuing CA it signs."""
    from cryptography.hazmat.primitives import hashes

    from ..authority.keys import read_passphrase
    from ..authority.lifecycle import adopt_ca, create_ca
    from ..authority.lint import shared_linter
    from ..authority.names import subject_text
    from ..index.store import Store
    from ..intake.spool import Spool
    from ..service.ownership import hand_over

    c = ctx()
    s = c.settings
    if (ca_cert is None) != (ca_key is None):
        raise click.UsageError("--ca-cert and --ca-key go together")
    if offline_root is not None and ca_cert is not None:
        raise click.UsageError("--offline-root creates the CA; it does not go with --ca-cert")
    if offline_root is None and root_passphrase_file is not None:
        raise click.UsageError("--root-passphrase-file goes with --offline-root")
    passphrase = read_passphrase(s.ca.key_passphrase_file)
    now = c.clock.now()
    if offline_root is not None:
        cert = init_two_tier(s, c.clock, offline_root, root_passphrase_file, passphrase)
    elif ca_cert is not None and ca_key is not None:
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
@click.command()
@config_option
def run() -> None:
    """Run the daemon in the foreground (systemd runs this)."""
    from ..service.daemon import Daemon

    c = ctx()
    daemon = Daemon(c.settings, c.clock, config_path=c.resolved_config_path)
    sys.exit(daemon.run())


# --- serve ----------------------------------------------------------------------------------------------
@click.command()
@config_option
@click.option("--worker", "worker_spec", hidden=True, help="Started by certdrop serve itself.")
def serve(worker_spec: str | None) -> None:
    """Answer relying parties over HTTP: CRL, CA certificates, OCSP ([http] listen)."""
    from ..serve.server import Supervisor, run_worker

    c = ctx()
    if worker_spec is not None:
        sys.exit(run_worker(c.settings, c.clock, worker_spec))
    sys.exit(Supervisor(c.settings, c.clock, config_path=c.resolved_config_path).run())


# --- check-config --------------------------------------------------------------------------------------------
@click.command("check-config")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print the effective values as JSON.")
def check_config(as_json: bool) -> None:
    """Validate the configuration and policy and print the effective values."""
    from ..config import effective_values

    c = ctx()
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


@click.command("apache-config")
@config_option
@click.option(
    "--log-file",
    default="${APACHE_LOG_DIR}/certdrop-clients.log",
    show_default=True,
    help="Where Apache logs who connected (e-mail and serial of each client certificate).",
)
@click.option(
    "--ocsp",
    is_flag=True,
    help="Check revocation with certdrop's OCSP responder (certdrop serve) instead of the CRL "
    "file: a revocation counts at once, without a reload of Apache.",
)
def apache_config(log_file: str, ocsp: bool) -> None:
    """Print the mod_ssl configuration that matches this setup."""
    from ..authority.lifecycle import load_ca_certificates
    from ..publish import modssl

    c = ctx()
    s = c.settings
    ca_cert, chain = load_ca_certificates(s.state)
    click.echo(
        modssl.apache_config_text(
            s, ca_cert, chain, log_file=log_file, config_path=c.resolved_config_path, ocsp=ocsp
        ),
        nl=False,
    )


# --- import ---------------------------------------------------------------------------------------------------
@click.command("import")
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

    c = ctx()
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
    store = open_store(s)
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
    # the adopted revocations must be on the CRL (and Apache's copy) right away
    publish = bool(report.counts()["revoked"]) and not dry_run
    if not as_json:
        for line in iter_report_lines(report):
            click.echo(line)
        if publish:
            operator_command("crl", {})
        return
    # one JSON document on stdout: what became of the CRL is in it; a failure also
    # makes the exit status 1 with the reason on stderr, as in the text mode
    doc = report.as_json()
    error = None
    if not publish:
        doc["crl"] = {
            "status": "unchanged",
            "detail": "dry run" if dry_run else "no revoked certificate was imported",
        }
    else:
        try:
            answer = operator_result("crl", {})
        except CertdropError as exc:  # the CA or the index could not be opened for it
            answer = f"error: {exc}"
        if answer is None:
            doc["crl"] = {"status": "queued", "detail": queued_text("crl", 30.0)}
        elif answer.startswith("error:"):
            error = answer.removeprefix("error:").strip()
            doc["crl"] = {"status": "failed", "detail": error}
        else:
            doc["crl"] = {"status": "published", "detail": answer.removeprefix("ok:").strip()}
    click.echo(json.dumps(doc, indent=2))
    if error is not None:
        raise CertdropError(f"the CRL was not published: {error}")
