"""The CA over years: the two-tier part of `certdrop init`, `certdrop root-crl`,
`certdrop backup`, `certdrop restore` and `certdrop rollover`.

The offline root's folder (removable media) is opened only here, with its passphrase;
the daemon never reads it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ..errors import CertdropError
from .context import config_option, ctx, finish, operator_result

if TYPE_CHECKING:
    from cryptography import x509

    from ..clock import Clock
    from ..config import Settings

F = TypeVar("F", bound=Callable[..., Any])


def offline_root_options(f: F) -> F:
    """--offline-root DIR and --root-passphrase-file F."""
    f = click.option(
        "--root-passphrase-file",
        type=click.Path(path_type=Path, exists=True, dir_okay=False),
        help="The offline root key's passphrase (first line); asked for when not given.",
    )(f)
    return click.option(
        "--offline-root",
        type=click.Path(path_type=Path, file_okay=False),
        help="The offline root's folder (removable media): a two-tier CA.",
    )(f)


def root_passphrase(path: Path | None, *, new: bool) -> bytes:
    """The offline root's passphrase: the first line of `path`, else asked for on a
    terminal (twice for a new root)."""
    if path is not None:
        try:
            lines = path.read_bytes().splitlines()
        except OSError as exc:
            raise CertdropError(
                f"--root-passphrase-file {path}: cannot read it ({exc.strerror})"
            ) from None
        if not lines or not lines[0]:
            raise CertdropError(f"--root-passphrase-file {path} is empty")
        return lines[0]
    if not sys.stdin.isatty():
        raise CertdropError(
            "the offline root's passphrase is needed: give --root-passphrase-file F "
            "(or run this on a terminal to be asked for it)"
        )
    text: str = click.prompt(
        "passphrase of the offline root key", hide_input=True, confirmation_prompt=new
    )
    if not text:
        raise CertdropError("the offline root key needs a passphrase")
    return text.encode()


def _linters(settings: Settings) -> tuple[Any, Any]:
    """pkilint's certificate and CRL checks, or None each when [policy] lint is off."""
    if not settings.policy.lint:
        return None, None
    from ..authority.lint import shared_linter

    linter = shared_linter()
    return linter.certificate, linter.crl


def init_two_tier(
    settings: Settings,
    clock: Clock,
    folder: Path,
    passphrase_file: Path | None,
    passphrase: bytes | None,
) -> x509.Certificate:
    """`init --offline-root DIR`: the root in DIR (made, or the one there), the issuing
    CA, the chain and the root's first CRL in the state. Returns the issuing CA."""
    from ..authority.lifecycle import ca_exists
    from ..authority.names import subject_text
    from ..authority.offline_root import create_two_tier, root_exists

    if ca_exists(settings.state):
        raise CertdropError(
            f"a CA already exists in {settings.state}; certdrop never overwrites a CA"
        )
    secret = root_passphrase(passphrase_file, new=not root_exists(folder))
    lint_cert, lint_crl = _linters(settings)
    made = create_two_tier(
        settings.state,
        folder,
        settings.ca,
        clock.now(),
        passphrase,
        secret,
        lint_cert,
        lint_crl,
    )
    verb = "created" if made.new_root else "used"
    click.echo(
        f"{verb} the offline root {subject_text(made.root.subject)} in {folder} (its key is "
        f"only there, encrypted), valid until {made.root.not_valid_after_utc:%Y-%m-%d}"
    )
    click.echo(
        f"created the issuing CA {subject_text(made.ca.subject)} ({settings.ca.key_type}) in "
        f"{settings.state}, signed by the root"
    )
    for w in made.warnings:
        click.echo(f"warning: {w}")
    _crl_lines(made.crl, "the root's first CRL")
    click.echo(f"  store {folder} offline now: the daemon never needs it")
    return made.ca


def _crl_lines(crl: x509.CertificateRevocationList, what: str) -> None:
    from ..publish.upstream import due_at, number_of

    click.echo(
        f"  {what}: number {number_of(crl)}, {len(crl)} revoked CA(s), valid until "
        f"{crl.next_update_utc:%Y-%m-%d %H:%M} UTC"
    )
    due = due_at(crl)
    if due is not None:
        click.echo(
            f"  the next root CRL is due by {due:%Y-%m-%d}: certdrop root-crl --offline-root DIR"
        )


# --- root-crl ----------------------------------------------------------------------------------------
@click.command("root-crl")
@config_option
@offline_root_options
@click.option(
    "--revoke-ca",
    "revoke_ca",
    metavar="SERIAL",
    help="First revoke this issuing CA the root signed (a compromised or abandoned one).",
)
@click.option(
    "--reason",
    default="cessationOfOperation",
    show_default=True,
    help="With --revoke-ca: the RFC 5280 reason (keyCompromise, cACompromise, ...).",
)
def root_crl(
    offline_root: Path | None,
    root_passphrase_file: Path | None,
    revoke_ca: str | None,
    reason: str,
) -> None:
    """Sign the offline root's next CRL and publish it with the rest (a ceremony,
    every [ca] root_crl_days)."""
    from ..authority.lifecycle import install_chain_crl, load_ca_certificates
    from ..authority.names import subject_text
    from ..authority.offline_root import OfflineRoot
    from ..service.ownership import hand_over

    if offline_root is None:
        raise click.UsageError("--offline-root DIR is required: the folder of the root key")
    c = ctx()
    s = c.settings
    ca_cert, chain = load_ca_certificates(s.state)
    root = OfflineRoot.open(offline_root, root_passphrase(root_passphrase_file, new=False))
    if root.cert not in chain:
        raise CertdropError(
            f"the root in {offline_root} ({subject_text(root.cert.subject)}) is not above the "
            f"CA in {s.state}; is the right medium mounted?"
        )
    now = c.clock.now()
    if revoke_ca is not None:
        if revoke_ca.replace(":", "").strip().upper().lstrip("0") == format(
            ca_cert.serial_number, "X"
        ):
            raise CertdropError(
                f"{revoke_ca} is the issuing CA of {s.state}: roll over first "
                "('certdrop rollover --offline-root DIR'), then revoke it"
            )
        revoked = root.revoke_ca(revoke_ca, reason, now)
        click.echo(f"revoked the issuing CA {revoked.serial} ({revoked.subject}), {revoked.reason}")
    _, lint_crl = _linters(s)
    crl = root.sign_crl(now, s.ca.root_crl_days, lint_crl)
    path = install_chain_crl(s.state, crl)
    hand_over(s.state, s.spool)
    click.echo(f"signed the root's CRL; kept in {offline_root} and published from {path}")
    _crl_lines(crl, "root CRL")
    answer = operator_result("publish", {})
    if answer is None:
        click.echo("the daemon has not answered yet; it publishes the CRL at its next check")
    elif answer.startswith("error:"):
        raise CertdropError(f"the root CRL was not published: {answer[6:].strip()}")
    else:
        click.echo(answer.removeprefix("ok:").strip())


# --- backup / restore --------------------------------------------------------------------------------
@click.command()
@config_option
@click.argument("dest", type=click.Path(path_type=Path, file_okay=False))
def backup(dest: Path) -> None:
    """A consistent copy of the state in DEST (new or empty), taken while the daemon runs:
    the index through SQLite's online backup, the CA keys as stored, chain, CRLs,
    passwords/, the audit log, and a manifest with checksums."""
    from ..service.backup import take_backup
    from ..service.ownership import hand_over

    c = ctx()
    s = c.settings
    report = take_backup(s, dest, c.clock, c.resolved_config_path)
    _audit(s, c.clock, "backup", {"dest": str(dest)}, f"{report.index.certificates} certificates")
    hand_over(s.state, s.spool)  # an index opened as root: its -wal/-shm stay the service's
    click.echo(
        f"backed up {s.state} into {dest} in {report.seconds:.1f}s: the index "
        f"({report.index.certificates} certificates, checked) and {report.files} files, "
        f"{report.size / 1e6:.1f} MB; MANIFEST.json lists them with their SHA-256"
    )
    if _encrypted_key(dest / "state" / "ca.key") is False:
        click.echo(
            "  note: the CA key is stored unencrypted, and so it is in the backup: keep the "
            "backup as safe as the CA host (or set [ca] key_passphrase_file)"
        )


def _audit(
    settings: Settings, clock: Clock, command: str, args: dict[str, str], result: str
) -> None:
    from ..audit import AuditLog, operator_actor

    log = AuditLog.in_state(settings.state, clock, actor=operator_actor())
    log({"event": "operator", "command": command, "args": args, "ok": True, "result": result})


def _encrypted_key(path: Path) -> bool | None:
    try:
        return b"ENCRYPTED" in path.read_bytes()
    except OSError:
        return None


@click.command()
@config_option
@click.argument("src", type=click.Path(path_type=Path, exists=True, file_okay=False))
def restore(src: Path) -> None:
    """Put the backup SRC into the empty state folder (never over a live one); every
    checksum and the index are checked first."""
    from ..service.backup import restore_backup
    from ..service.ownership import hand_over

    c = ctx()
    s = c.settings
    report = restore_backup(s, src)
    _audit(
        s,
        c.clock,
        "restore",
        {"src": str(src)},
        f"backup of {report.created_at.isoformat()}, {report.index.certificates} certificates",
    )
    hand_over(s.state, s.spool)
    click.echo(
        f"restored the backup of {report.created_at:%Y-%m-%d %H:%M} UTC into {s.state}: the "
        f"index ({report.index.certificates} certificates, integrity checked) and "
        f"{report.files} files"
    )
    if report.left_out:
        click.echo(
            f"  left out {', '.join(report.left_out)}: the daemon publishes a fresh CRL at "
            "start, numbered above every CRL published before"
        )
    click.echo(
        "  certificates issued after the backup are in the spool's outbox/: adopt them with "
        "'certdrop import SPOOL/outbox'; repeat the revocations made since (the old audit log "
        "lists them)"
    )


# --- rollover ----------------------------------------------------------------------------------------
@click.command()
@config_option
@offline_root_options
def rollover(offline_root: Path | None, root_passphrase_file: Path | None) -> None:
    """A new CA key and certificate take over issuing (signed by the offline root when
    the CA is two-tier: --offline-root DIR). The CA before is kept in the state's cas/
    and stays trusted and revocable until its last certificate ends."""
    from ..authority.lifecycle import load_ca_certificates
    from ..service.ownership import hand_over
    from ..service.systemd import StateLock

    c = ctx()
    s = c.settings
    _, chain = load_ca_certificates(s.state, check_key=True)
    _refuse_with_other_hosts(s)
    if chain and offline_root is None:
        raise click.UsageError(
            f"the CA in {s.state} is under a root: give its folder with --offline-root DIR"
        )
    # a CA under the offline root is made here (the root's key never reaches the daemon);
    # else the daemon (or, without one, this process) makes the next CA itself
    payload: dict[str, Any] = {}
    if offline_root is not None:
        payload["ca"] = _stage_under_root(s, c.clock, offline_root, root_passphrase_file)
        hand_over(s.state, s.spool)  # made as root: the service reads it
    lock = StateLock(s.state)
    running = not lock.acquire()
    lock.release()
    if running:
        answer = operator_result("rollover", payload, timeout=60.0)
    else:
        answer = _rollover_here(s, c.clock, payload)
        hand_over(s.state, s.spool)
    if answer is None:
        click.echo(
            "the daemon has not answered within 60 s; it switches to the new CA when it gets "
            "to it (see 'certdrop status')"
        )
        return
    finish(answer)


def _refuse_with_other_hosts(settings: Settings) -> None:
    """A rollover changes the CA files of this state folder only: while other hosts share
    the index, they would go on signing with the CA before (and say it is the current
    one), so it is refused until they are stopped."""
    if not settings.clustered:
        return
    from ..index import membership
    from ..service.cluster import read_host_id
    from .context import open_store

    me = read_host_id(settings.state)
    store = open_store(settings)
    try:
        with store.begin() as conn:
            others = [h.id for h in membership.list_hosts(conn) if h.id != me and not h.retired]
    finally:
        store.close()
    if others:
        raise click.ClickException(
            f"other hosts share this index ({', '.join(others)}): a rollover changes this "
            "host's CA files only, and several hosts do not roll over together yet; stop "
            "certdrop on the others first ('certdrop status' lists the hosts) and see "
            "docs/operations.md, 'Two (or more) CA hosts'"
        )


def _stage_under_root(
    settings: Settings, clock: Clock, folder: Path, passphrase_file: Path | None
) -> str:
    """The next issuing CA, signed by the offline root in `folder`: its id."""
    from ..authority.keys import read_passphrase
    from ..authority.lifecycle import ca_id
    from ..authority.names import subject_text
    from ..authority.offline_root import OfflineRoot
    from ..authority.rollover import stage_next_ca

    root = OfflineRoot.open(folder, root_passphrase(passphrase_file, new=False))
    lint_cert, _ = _linters(settings)
    passphrase = read_passphrase(settings.ca.key_passphrase_file)
    cert = stage_next_ca(settings.state, settings.ca, clock.now(), passphrase, root, lint_cert)
    click.echo(
        f"made the next CA {subject_text(cert.subject)} ({settings.ca.key_type}, valid until "
        f"{cert.not_valid_after_utc:%Y-%m-%d}), signed by the offline root in {folder}"
    )
    return ca_id(cert)


def _rollover_here(settings: Settings, clock: Clock, payload: dict[str, Any]) -> str | None:
    """No daemon runs: the rollover in this process, then every CA's CRL and Apache's
    files published as the daemon would at its start. None when a daemon started meanwhile
    (it is then handed the command)."""
    from ..service.control import execute_control
    from ..service.runtime import Runtime, direct_runtime, operator_hooks

    with direct_runtime(settings, clock) as rt:
        if rt is None:
            return operator_result("rollover", payload, timeout=60.0)
        answer = execute_control(rt, "rollover", payload)
        if answer.startswith("error:"):
            return answer
        fresh = Runtime.build(settings, clock, operator_hooks(settings, clock))
        try:
            fresh.check_publication()
        finally:
            fresh.close()
    return answer + "; the daemon signs with it from its next start"
