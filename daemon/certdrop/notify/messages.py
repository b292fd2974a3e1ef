"""The texts of certdrop's mails: expiry warnings, admin alerts, and what requesters are told.

Warnings to certificate holders (with exactly how to renew), the admin's digest of
expiring certificates, alerts about the CA certificate, the CRL and requests that
wait for approval, and the requester's mails (refused, waiting for approval, approved,
denied, revoked; requester.py): each as (subject, body), plain text.
"""

from __future__ import annotations

import datetime as dt
import json
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from ..authority.names import OID_NAMES
from ..config import Profile
from ..fsutil import is_safe_name, sanitize_name
from ..index.pending import PendingRecord
from ..index.store import CertRecord

if TYPE_CHECKING:  # expiry.py builds these texts
    from .expiry import SweepConfig


def days_text(left: dt.timedelta) -> str:
    """in 3 days, in 1 day, in less than a day"""
    days = left.days
    if days < 1:
        return "in less than a day"
    return f"in {days} day" + ("" if days == 1 else "s")


def utc_text(t: dt.datetime) -> str:
    """2030-05-01 12:00:00 UTC"""
    return f"{t.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S} UTC"


def holder_warning(
    rec: CertRecord, threshold: int, cfg: SweepConfig, now: dt.datetime
) -> tuple[str, str]:
    """(subject, body) of the warning to a certificate's holder."""
    left = rec.not_after - now
    what = rec.common_name or rec.subject
    subject = f"your certificate {what} expires {days_text(left)} ({rec.not_after:%Y-%m-%d})"
    hello = f"Hello {rec.common_name}," if rec.common_name else "Hello,"
    body = (
        f"{hello}\n\n"
        f"your certificate expires {days_text(left)}, on {utc_text(rec.not_after)}.\n"
        "After that moment it no longer works (for example, web sites that ask for it\n"
        "will refuse you).\n\n"
        f"    Subject:      {rec.subject}\n"
        f"    Serial:       {rec.serial}\n"
        f"    Valid until:  {utc_text(rec.not_after)} (notAfter)\n"
        f"    Days left:    {max(left.days, 0)}\n\n"
        f"{renewal_instructions(rec, cfg, now)}\n"
        "You get this warning once for each of these moments before the end: "
        + ", ".join(f"{d} day{'s' if d != 1 else ''}" for d in cfg.expiry.warn_days)
        + ".\nIf you no longer need the certificate, ignore this mail.\n"
    )
    return subject, body


def _request_folder(cfg: SweepConfig, profile_name: str) -> tuple[Path, str, Profile]:
    if profile_name not in cfg.profiles:
        profile_name = cfg.default_profile
    folder = cfg.inbox if profile_name == cfg.default_profile else cfg.inbox / profile_name
    return folder, profile_name, cfg.profiles[profile_name]


def _subject_pairs(cert: x509.Certificate) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for attr in cert.subject:
        name = OID_NAMES.get(attr.oid)
        if name is not None and isinstance(attr.value, str):
            pairs.append((name, attr.value))
    return pairs


def _openssl_subject(pairs: Sequence[tuple[str, str]]) -> str:
    def esc(v: str) -> str:
        return "".join("\\" + ch if ch in "\\/+=" else ch for ch in v)

    return "".join(f"/{n}={esc(v)}" for n, v in pairs)


def _newkey(cert: x509.Certificate) -> str:
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return f"rsa:{max(key.key_size, 2048)}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        curve = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}.get(
            key.curve.name, "P-256"
        )
        return f"ec -pkeyopt ec_paramgen_curve:{curve}"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "ed25519"
    return "rsa:3072"


def _dns_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(d) for d in san.get_values_for_type(x509.DNSName)]


def request_file_stem(rec: CertRecord) -> str:
    """NAME for the NAME.req that asks for a new certificate like `rec`."""
    name = rec.request_name if is_safe_name(rec.request_name) else ""
    return name or sanitize_name(rec.common_name.replace(" ", "_") or "renewal")


def renewal_instructions(rec: CertRecord, cfg: SweepConfig, now: dt.datetime) -> str:
    """Exactly how to renew: which file, with what content, into which folder."""
    folder, profile_name, profile = _request_folder(cfg, rec.profile)
    name = request_file_stem(rec)
    renew_from = rec.not_after - dt.timedelta(days=profile.renew_before_days)
    cn_rule = profile.subject.get("CN")
    lines = ["How to renew: drop a new request with the same subject into the certdrop inbox, as"]
    lines.append(f"    {folder / (name + '.req')}")
    lines.append(
        "The new certificate replaces this one (this one is then marked superseded, not revoked)."
    )
    if now < renew_from:
        later = (
            "a request dropped before then is refused while this certificate is valid"
            if cn_rule is not None and cn_rule.unique
            else "a request dropped before then gets a second certificate that does not "
            "replace this one"
        )
        lines.append(
            f"Renewal opens on {utc_text(renew_from)} ({profile.renew_before_days} days before "
            f"the end); {later}."
        )
    else:
        lines.append("You can renew now.")
    lines.append("")
    lines += new_request_lines(rec, folder, name, password_by_mail=cfg.password_by_mail)
    if profile_name != rec.profile:
        lines.append(
            f"(This certificate's profile {rec.profile!r} is not configured any more; the "
            f"request goes to the default profile {profile_name!r}.)"
        )
    return "\n".join(lines) + "\n"


def new_request_lines(
    rec: CertRecord, folder: Path, name: str, *, password_by_mail: bool
) -> list[str]:
    """How to make a new request for the subject of `rec` and drop it into `folder`, as NAME.req."""
    cert = x509.load_der_x509_certificate(rec.der)
    pairs = _subject_pairs(cert)
    dns = _dns_names(cert)
    lines: list[str] = []
    if rec.key_generated:
        lines.append(
            f"Your key was made by certdrop, so ask for a new one the same way: {name}.req is a"
        )
        lines.append("small text file with this content:")
        lines.append("")
        lines.append("    [subject]")
        grouped: dict[str, list[str]] = {}
        for n, v in pairs:
            grouped.setdefault(n, []).append(v)
        for n, values in grouped.items():
            text = (
                json.dumps(values[0], ensure_ascii=False)
                if len(values) == 1
                else json.dumps(values, ensure_ascii=False)
            )
            lines.append(f"    {n} = {text}")
        if dns:
            lines.append("    [san]")
            lines.append(f"    dns = {json.dumps(dns)}")
        lines.append("")
        lines.append(
            f"certdrop then puts {name}.cer and {name}.p12 into the outbox; the password of"
        )
        lines.append(
            f"{name}.p12 comes "
            + ("by a separate mail." if password_by_mail else "from the CA operator.")
        )
    else:
        cmd = (
            f"openssl req -new -utf8 -newkey {_newkey(cert)} -nodes -keyout {name}.key "
            f"-out {name}.req -subj {shlex.quote(_openssl_subject(pairs))}"
        )
        if dns:
            cmd += " -addext " + shlex.quote("subjectAltName=" + ",".join(f"DNS:{d}" for d in dns))
        lines.append("For example, with a new key made by openssl:")
        lines.append("")
        lines.append(f"    {cmd}")
        lines.append(f"    cp {name}.req {folder}/")
        lines.append("")
        lines.append(
            f"Keep {name}.key private. certdrop puts the new certificate into the outbox as "
            f"{name}.cer;"
        )
        lines.append(
            f"drop {name}.key together with {name}.req if you also want a PKCS#12 bundle "
            f"({name}.p12)."
        )
    return lines


def admin_digest(
    items: Sequence[tuple[CertRecord, int, bool]], cfg: SweepConfig, now: dt.datetime
) -> tuple[str, str]:
    """(subject, body) of the admin's digest: (certificate, threshold, holder mailed)."""
    n = len(items)
    subject = f"{n} certificate{'s' if n != 1 else ''} expiring soon"
    lines = [
        f"{n} certificate{'s' if n != 1 else ''} crossed an expiry warning threshold "
        f"({', '.join(str(d) for d in cfg.expiry.warn_days)} days):",
        "",
    ]
    for rec, threshold, mailed in sorted(items, key=lambda i: i[0].not_after):
        left = rec.not_after - now
        if mailed:
            holder = f"holder warned at {rec.email}"
        elif not rec.email:
            holder = "NO e-mail address in the certificate: the holder was not warned"
        else:
            holder = f"holder not warned ([expiry] notify_holder = false); e-mail {rec.email}"
        lines += [
            f"- {rec.subject}",
            f"    serial {rec.serial}, profile {rec.profile}, request {rec.request_name or '-'}",
            f"    valid until {utc_text(rec.not_after)}: {days_text(left)} ({threshold}-day warning)",
            f"    {holder}",
        ]
    lines += [
        "",
        "A holder renews by dropping a new request with the same CN into the inbox;",
        "the old certificate is then marked superseded. 'certdrop list --expiring 30'",
        "shows what expires next.",
    ]
    return subject, "\n".join(lines) + "\n"


# --- the CA and the CRL ------------------------------------------------------------------------
def ca_expiry(name: str, serial: str, not_after: dt.datetime, now: dt.datetime) -> tuple[str, str]:
    """(subject, body) of the alert about a CA certificate close to (or past) its end."""
    left = not_after - now
    if left <= dt.timedelta(0):
        subject = f"the CA certificate {name} has EXPIRED"
        state = f"expired on {utc_text(not_after)}"
    else:
        subject = f"the CA certificate {name} expires {days_text(left)}"
        state = f"expires {days_text(left)}, on {utc_text(not_after)}"
    body = (
        f"The CA certificate\n\n    {name}\n    serial {serial}\n\n{state}.\n\n"
        "Certificates issued now end no later than the CA itself; when it has expired,\n"
        "no client certificate it issued is accepted any more, and certdrop cannot issue.\n"
        "Roll the CA over before that date: 'certdrop rollover' (with --offline-root DIR\n"
        "when an offline root signs it). A new CA key and certificate take over issuing;\n"
        "Apache's files then hold both CAs, and the certificates of this one stay valid\n"
        "and revocable until they end. Give the new CA certificate to the other relying\n"
        "parties that trust this CA, and renew the client certificates before that date\n"
        '(docs/operations.md, "Rolling the CA over").\n'
    )
    return subject, body


def crl_overdue(
    ca_name: str,
    number: str,
    next_update: dt.datetime,
    refresh_before_days: float,
    now: dt.datetime,
) -> tuple[str, str]:
    """(subject, body) of the alert about a CRL that was not refreshed (or has expired)."""
    left = next_update - now
    if left <= dt.timedelta(0):
        subject = f"the CRL of {ca_name} has EXPIRED: Apache refuses every client certificate"
        state = f"its nextUpdate was {utc_text(next_update)}"
    else:
        subject = f"the CRL of {ca_name} was not refreshed; it expires {days_text(left)}"
        state = f"its nextUpdate is {utc_text(next_update)}"
    body = (
        f"The current CRL (number {number}) of\n\n    {ca_name}\n\n{state}.\n\n"
        f"certdrop refreshes the CRL {refresh_before_days:g} days before its nextUpdate, "
        "so the\nrefresh has been failing; see the daemon's log (journalctl -u certdrop).\n"
        "An expired CRL makes mod_ssl refuse every client. 'certdrop crl' makes and\n"
        "publishes a new CRL now.\n"
    )
    return subject, body


def chain_crl_due(
    ca_name: str, number: int | None, next_update: dt.datetime | None, now: dt.datetime
) -> tuple[str, str]:
    """(subject, body) of the alert about the CRL of a CA above the issuing CA (the
    offline root's) that is missing, due for its ceremony, or expired."""
    if number is None or next_update is None:
        subject = f"there is no CRL of {ca_name}: Apache refuses every client certificate"
        state = "certdrop has no CRL of it in its state folder (chain-crls/)"
    elif next_update <= now:
        subject = f"the CRL of {ca_name} has EXPIRED: Apache refuses every client certificate"
        state = f"its current CRL (number {number}) ended at {utc_text(next_update)}"
    else:
        left = next_update - now
        subject = f"the CRL of {ca_name} is due: it expires {days_text(left)}"
        state = (
            f"its current CRL (number {number}) ends {days_text(left)}, at {utc_text(next_update)}"
        )
    body = (
        f"The CA above the issuing CA\n\n    {ca_name}\n\n{state}.\n\n"
        "With SSLCARevocationCheck chain, mod_ssl refuses every client certificate once\n"
        "the CRL of a CA in the chain is missing or past its nextUpdate. certdrop cannot\n"
        "renew it: its key is offline. Mount the root's medium and run\n\n"
        "    certdrop root-crl --offline-root DIR\n\n"
        "(the CRL is published with the rest; 'certdrop status' shows the next due date).\n"
    )
    return subject, body


# --- pending requests -----------------------------------------------------------------------------
def pending_request(rec: PendingRecord) -> tuple[str, str]:
    """(subject, body) of the alert about a request that waits for approval."""
    subject = f"request {rec.name} waits for approval ({rec.profile})"
    body = (
        f"A request waits in pending/ for the CA operator:\n\n"
        f"    name:      {rec.name}.req\n"
        f"    profile:   {rec.profile}\n"
        f"    subject:   {rec.subject}\n"
        f"    owner:     {rec.owner or '?'}"
        + (f" (uid {rec.owner_uid})" if rec.owner_uid is not None else "")
        + "\n"
        f"    received:  {utc_text(rec.received_at)}\n\n"
        "Check who asked for it, then:\n\n"
        f"    certdrop approve {rec.name}\n"
        f'    certdrop deny {rec.name} --reason "..."\n'
    )
    return subject, body


# --- to requesters (requester.py) ---------------------------------------------------------------
def _indented(text: str) -> str:
    return "".join(f"    {line}\n" if line else "\n" for line in text.splitlines())


def _remarks(notes: Sequence[str]) -> str:
    return "".join(f"Please note: {n}\n" for n in notes) + ("\n" if notes else "")


def requester_refused(
    name: str, profile: str, reason: str, inbox: Path, rejected: Path, notes: Sequence[str] = ()
) -> tuple[str, str]:
    """(subject, body) to a requester whose request was refused; `reason` is the text of
    rejected/NAME.reason, given as it is."""
    subject = f"your request {name}.req was refused"
    body = (
        "Hello,\n\n"
        f"certdrop did not issue a certificate for your request {name}.req (profile {profile}).\n"
        "This is what it found, as written in\n\n"
        f"    {rejected / (name + '.reason')}\n\n"
        f"{reason.rstrip()}\n\n"
        + _remarks(notes)
        + "Drop the corrected request as a new file into\n\n"
        f"    {inbox}/\n\n"
        "The refused request was moved to\n\n"
        f"    {rejected / (name + '.req')}\n\n"
        "and is not looked at again. If a reason is unclear, ask the CA operator.\n"
    )
    return subject, body


def requester_pending(
    name: str,
    profile: str,
    request_subject: str,
    received: dt.datetime,
    pending: Path,
    outbox: Path,
    notes: Sequence[str] = (),
) -> tuple[str, str]:
    """(subject, body) to a requester whose request waits for an operator's approval."""
    subject = f"your request {name}.req waits for approval ({profile})"
    body = (
        "Hello,\n\n"
        f"certdrop received your certificate request {name}.req for the profile {profile}:\n\n"
        f"    Subject:   {request_subject or '-'}\n"
        f"    Received:  {utc_text(received)}\n\n"
        f"Certificates of the profile {profile} are issued only after the CA operator has\n"
        "approved the request, so it waits in\n\n"
        f"    {pending / (name + '.req')}\n\n"
        + _remarks(notes)
        + "Nothing is needed from you now; do not drop the request again (another request\n"
        f"named {name}.req is refused while this one waits). When the operator approves it,\n"
        "certdrop issues the certificate into the outbox,\n\n"
        f"    {outbox}/\n\n"
        "and tells you by mail where the files are. If the operator denies it, you get a\n"
        "mail with the operator's reason.\n"
    )
    return subject, body


_FILE_ROLES = {
    ".cer": "the certificate (PEM)",
    ".p12": "PKCS#12 bundle: your key, the certificate, the CA chain",
}


def requester_approved(
    name: str,
    profile: str,
    cert_subject: str,
    serial: str,
    not_after: dt.datetime,
    files: Sequence[Path],
    password_by_mail: bool,
) -> tuple[str, str]:
    """(subject, body) to a requester whose request was approved and issued; `files` are
    where the outputs were delivered. The p12 password is never in this mail."""
    subject = f"your request {name}.req was approved: certificate {serial} issued"
    width = max((len(str(f)) for f in files), default=0)
    listing = "".join(
        f"    {str(f).ljust(width)}   {_FILE_ROLES.get(f.suffix, '')}".rstrip() + "\n"
        for f in files
    )
    p12 = [f for f in files if f.suffix == ".p12"]
    password = ""
    if p12:
        password = f"\nThe password of {p12[0].name} is not in this mail: " + (
            "it comes in a separate mail.\n"
            if password_by_mail
            else "the CA operator gives it to you\nby another channel.\n"
        )
    body = (
        "Hello,\n\n"
        f"the CA operator approved your request {name}.req (profile {profile}), and certdrop\n"
        "issued your certificate:\n\n"
        f"    Subject:      {cert_subject}\n"
        f"    Serial:       {serial}\n"
        f"    Valid until:  {utc_text(not_after)}\n\n"
        "Collect the files from the outbox:\n\n"
        f"{listing}{password}\n"
        "If you did not ask for this certificate, tell the CA operator.\n"
    )
    return subject, body


def requester_denied(
    name: str,
    profile: str,
    reason: str,
    inbox: Path,
    rejected: Path,
    notes: Sequence[str] = (),
) -> tuple[str, str]:
    """(subject, body) to a requester whose request the CA operator denied."""
    subject = f"your request {name}.req was denied"
    body = (
        "Hello,\n\n"
        f"the CA operator denied your certificate request {name}.req (profile {profile}),\n"
        "for this reason:\n\n"
        f"{_indented(reason.strip() or '(none given)')}\n"
        "No certificate was issued. The request was moved to\n\n"
        f"    {rejected / (name + '.req')}\n\n"
        f"with the reason beside it in {name}.reason.\n\n"
        + _remarks(notes)
        + "If the reason names something to change, make a new request and drop it into\n\n"
        f"    {inbox}/\n\n"
        "otherwise talk to the CA operator before asking again.\n"
    )
    return subject, body


def requester_revoked(
    rec: CertRecord,
    reason: str,
    when: dt.datetime,
    folder: Path,
    *,
    password_by_mail: bool,
) -> tuple[str, str]:
    """(subject, body) to the holder of a certificate that was revoked; `folder` is where a
    new request goes."""
    what = rec.common_name or rec.subject
    subject = f"your certificate {what} (serial {rec.serial}) was revoked"
    hello = f"Hello {rec.common_name}," if rec.common_name else "Hello,"
    compromised = (
        "Its private key is considered compromised: never use that key again.\n\n"
        if reason == "keyCompromise"
        else ""
    )
    body = (
        f"{hello}\n\n"
        "the CA operator revoked your certificate:\n\n"
        f"    Subject:  {rec.subject}\n"
        f"    Serial:   {rec.serial}\n"
        f"    Reason:   {reason}\n"
        f"    Revoked:  {utc_text(when)}\n\n"
        "It no longer works: servers that check certdrop's revocation list (CRL) refuse it\n"
        "as soon as they have fetched the new list.\n\n"
        f"{compromised}"
        "What to do: if you still need a certificate, make a NEW key (do not reuse the old\n"
        "one) and a new request, and drop it into the inbox; the same request file dropped\n"
        "again is refused.\n\n"
        + "\n".join(
            new_request_lines(
                rec, folder, request_file_stem(rec), password_by_mail=password_by_mail
            )
        )
        + "\n\nIf you did not expect this, ask the CA operator why.\n"
    )
    return subject, body
