"""The expiry sweep: warnings to certificate holders and alerts to the operator.

`sweep(store, cfg, ca_certs, now)` is called by the daemon at start and every
`[expiry] sweep_minutes` (and may be called directly, with any `now`). In one
index transaction it

* finds every valid certificate (not revoked, not superseded by a renewal, not
  expired) that has crossed a `[expiry] warn_days` threshold it was not warned
  for; queues one mail to its holder for the tightest threshold crossed, and
  records every crossed threshold in `expiry_warnings` so that no threshold is
  ever warned twice, across restarts too; one digest of all of them goes to the
  admin (`notify_admin`);
* alerts the admin when a CA certificate of the chain comes within 90/30/7/1 days
  of its end, when the CRL was not refreshed in time (index meta key
  `crl_next_update`, written by the CRL publisher; skipped when absent), and
  about pending requests that were never announced (the pending hook normally
  does that at once).

Messages go into the durable mail queue (mail.py); nothing here talks SMTP.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from sqlalchemy.engine import Connection

from ..authority.names import OID_NAMES, subject_text
from ..authority.serials import serial_hex
from ..config import CRLSettings, ExpirySettings, MailSettings, Profile, Settings
from ..fsutil import is_safe_name, sanitize_name
from ..index.store import CertRecord, PendingRecord, Store, expiry_warnings, from_epoch, to_epoch
from .mail import admin_recipients, enqueue, queue_admin_alert

log = logging.getLogger("certdrop.expiry")

CA_WARN_DAYS = (90, 30, 7, 1)
CRL_META_KEY = "crl_next_update"  # epoch seconds or ISO 8601 (UTC), set by the CRL publisher
LAST_SWEEP_META_KEY = "expiry_last_sweep"


@dataclass(frozen=True)
class SweepConfig:
    """The parts of the settings the sweep needs."""

    expiry: ExpirySettings
    mail: MailSettings
    crl: CRLSettings
    profiles: Mapping[str, Profile]
    default_profile: str
    inbox: Path
    password_by_mail: bool

    @classmethod
    def from_settings(cls, settings: Settings) -> SweepConfig:
        return cls(
            expiry=settings.expiry,
            mail=settings.mail,
            crl=settings.crl,
            profiles=dict(settings.profiles),
            default_profile=settings.policy.default_profile,
            inbox=settings.spool / "inbox",
            password_by_mail=settings.mail.enabled and settings.pkcs12.password_delivery != "file",
        )


@dataclass
class SweepReport:
    holder_mails: list[str] = field(default_factory=list)  # serials warned by mail
    digest: list[str] = field(default_factory=list)  # serials in the admin digest
    recorded: list[tuple[str, int]] = field(default_factory=list)  # (serial, threshold)
    alerts: list[str] = field(default_factory=list)  # subjects of queued admin alerts


def sweep(
    store: Store, cfg: SweepConfig, ca_certs: Sequence[x509.Certificate], now: dt.datetime
) -> SweepReport:
    report = SweepReport()
    if not cfg.mail.enabled:
        # nothing could be sent; thresholds stay open so that enabling mail later still warns
        return report
    with store.begin() as conn:
        _certificates(conn, store, cfg, now, report)
        ca_name = subject_text(ca_certs[0].subject) if ca_certs else "the CA"
        for cert in ca_certs:
            _ca_certificate(conn, cfg, cert, now, report)
        _crl(conn, store, cfg, ca_name, now, report)
        for rec in store.list_pending(conn):
            if rec.decision is None and pending_alert(conn, cfg.mail, rec, now):
                report.alerts.append(f"pending {rec.name}")
        store.set_meta(conn, LAST_SWEEP_META_KEY, now.isoformat())
    if report.holder_mails or report.digest or report.alerts:
        log.info(
            "expiry sweep: %d holder warning(s), %d certificate(s) in the admin digest, "
            "%d alert(s)",
            len(report.holder_mails),
            len(report.digest),
            len(report.alerts),
        )
    return report


# --- certificates --------------------------------------------------------------------------------
def _done(conn: Connection, kind: str, serial: str) -> set[int]:
    rows = conn.execute(
        sa.select(expiry_warnings.c.threshold).where(
            expiry_warnings.c.kind == kind, expiry_warnings.c.serial == serial
        )
    )
    return {int(t) for (t,) in rows}


def _record(
    conn: Connection, kind: str, serial: str, thresholds: Sequence[int], now: dt.datetime
) -> None:
    if thresholds:
        conn.execute(
            sa.insert(expiry_warnings),
            [
                {"kind": kind, "serial": serial, "threshold": t, "warned_at": to_epoch(now)}
                for t in thresholds
            ],
        )


def _new_threshold(
    conn: Connection, kind: str, serial: str, left: dt.timedelta, thresholds: Sequence[int]
) -> tuple[int | None, list[int]]:
    """(the threshold to warn for now or None, the thresholds to record as done)."""
    crossed = sorted(t for t in thresholds if left <= dt.timedelta(days=t))
    if not crossed:
        return None, []
    done = _done(conn, kind, serial)
    todo = [t for t in crossed if t not in done]
    tightest = crossed[0]
    if not todo or (done and min(done) <= tightest):
        return None, todo  # warned at this or a tighter threshold already
    return tightest, todo


def _certificates(
    conn: Connection, store: Store, cfg: SweepConfig, now: dt.datetime, report: SweepReport
) -> None:
    thresholds = list(cfg.expiry.warn_days)
    if not thresholds:
        return
    horizon = dt.timedelta(days=max(thresholds))
    admins = admin_recipients(cfg.mail) if cfg.expiry.notify_admin else []
    digest: list[tuple[CertRecord, int, bool]] = []
    for rec in store.list_certs(conn, now=now, expiring_within=horizon):
        threshold, todo = _new_threshold(conn, "cert", rec.serial, rec.not_after - now, thresholds)
        _record(conn, "cert", rec.serial, todo, now)
        report.recorded += [(rec.serial, t) for t in todo]
        if threshold is None:
            continue
        mailed = False
        if cfg.expiry.notify_holder and rec.email:
            subject, body = holder_warning(rec, threshold, cfg, now)
            queued = enqueue(
                conn,
                cfg.mail,
                "expiry",
                [(rec.common_name, rec.email)],
                subject,
                body,
                now,
                dedupe_key=f"expiry:{rec.serial}:{threshold}",
                serial=rec.serial,
            )
            mailed = queued is not None
            if mailed:
                report.holder_mails.append(rec.serial)
        digest.append((rec, threshold, mailed))
    if digest and admins:
        subject, body = admin_digest(digest, cfg, now)
        enqueue(conn, cfg.mail, "digest", admins, subject, body, now)
        report.digest += [rec.serial for rec, _, _ in digest]


def _days_text(left: dt.timedelta) -> str:
    days = left.days
    if days < 1:
        return "in less than a day"
    return f"in {days} day" + ("" if days == 1 else "s")


def _when(t: dt.datetime) -> str:
    return f"{t.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S} UTC"


def holder_warning(
    rec: CertRecord, threshold: int, cfg: SweepConfig, now: dt.datetime
) -> tuple[str, str]:
    """(subject, body) of the warning to a certificate's holder."""
    left = rec.not_after - now
    what = rec.common_name or rec.subject
    subject = f"your certificate {what} expires {_days_text(left)} ({rec.not_after:%Y-%m-%d})"
    hello = f"Hello {rec.common_name}," if rec.common_name else "Hello,"
    body = (
        f"{hello}\n\n"
        f"your certificate expires {_days_text(left)}, on {_when(rec.not_after)}.\n"
        "After that moment it no longer works (for example, web sites that ask for it\n"
        "will refuse you).\n\n"
        f"    Subject:      {rec.subject}\n"
        f"    Serial:       {rec.serial}\n"
        f"    Valid until:  {_when(rec.not_after)} (notAfter)\n"
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


def renewal_instructions(rec: CertRecord, cfg: SweepConfig, now: dt.datetime) -> str:
    """Exactly how to renew: which file, with what content, into which folder."""
    cert = x509.load_der_x509_certificate(rec.der)
    folder, profile_name, profile = _request_folder(cfg, rec.profile)
    name = rec.request_name if is_safe_name(rec.request_name) else ""
    name = name or sanitize_name(rec.common_name.replace(" ", "_") or "renewal")
    pairs = _subject_pairs(cert)
    dns = _dns_names(cert)
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
            f"Renewal opens on {_when(renew_from)} ({profile.renew_before_days} days before "
            f"the end); {later}."
        )
    else:
        lines.append("You can renew now.")
    lines.append("")
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
            + ("by a separate mail." if cfg.password_by_mail else "from the CA operator.")
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
    if profile_name != rec.profile:
        lines.append(
            f"(This certificate's profile {rec.profile!r} is not configured any more; the "
            f"request goes to the default profile {profile_name!r}.)"
        )
    return "\n".join(lines) + "\n"


def admin_digest(
    items: Sequence[tuple[CertRecord, int, bool]], cfg: SweepConfig, now: dt.datetime
) -> tuple[str, str]:
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
            f"    valid until {_when(rec.not_after)}: {_days_text(left)} ({threshold}-day warning)",
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
def _ca_certificate(
    conn: Connection,
    cfg: SweepConfig,
    cert: x509.Certificate,
    now: dt.datetime,
    report: SweepReport,
) -> None:
    serial = serial_hex(cert.serial_number)
    not_after = cert.not_valid_after_utc
    left = not_after - now
    threshold, todo = _new_threshold(conn, "ca", serial, left, CA_WARN_DAYS)
    if threshold is None:
        _record(conn, "ca", serial, todo, now)
        return
    name = subject_text(cert.subject)
    if left <= dt.timedelta(0):
        subject = f"the CA certificate {name} has EXPIRED"
        state = f"expired on {_when(not_after)}"
    else:
        subject = f"the CA certificate {name} expires {_days_text(left)}"
        state = f"expires {_days_text(left)}, on {_when(not_after)}"
    body = (
        f"The CA certificate\n\n    {name}\n    serial {serial}\n\n{state}.\n\n"
        "Certificates issued now end no later than the CA itself; when it has expired,\n"
        "no client certificate it issued is accepted any more, and certdrop cannot issue.\n"
        "Plan the change: make a new CA (or have the parent CA issue a new certificate\n"
        "for this one), give it to Apache and to the clients that trust this CA, and\n"
        "re-issue the client certificates before that date.\n"
    )
    if queue_admin_alert(conn, cfg.mail, subject, body, now, key=f"ca-expiry:{serial}:{threshold}"):
        report.alerts.append(subject)
    _record(conn, "ca", serial, todo, now)


def read_crl_next_update(value: str | None) -> dt.datetime | None:
    """The CRL's nextUpdate from the meta value (epoch seconds or ISO 8601), or None."""
    if not value:
        return None
    text = value.strip()
    try:
        if text.lstrip("-").isdigit():
            return from_epoch(int(text))
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, OverflowError):
        log.warning("index meta %s = %r is not a time; CRL check skipped", CRL_META_KEY, value)
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


def _crl(
    conn: Connection,
    store: Store,
    cfg: SweepConfig,
    ca_name: str,
    now: dt.datetime,
    report: SweepReport,
) -> None:
    raw = store.get_meta(conn, CRL_META_KEY)
    next_update = read_crl_next_update(raw)
    if next_update is None:
        return
    left = next_update - now
    margin = dt.timedelta(days=cfg.crl.refresh_before_days / 2)
    number = store.get_meta(conn, "crl_number") or "?"
    if left <= dt.timedelta(0):
        subject = f"the CRL of {ca_name} has EXPIRED: Apache refuses every client certificate"
        key = f"crl-expired:{raw}"
        state = f"its nextUpdate was {_when(next_update)}"
    elif left <= margin:
        subject = f"the CRL of {ca_name} was not refreshed; it expires {_days_text(left)}"
        key = f"crl-stale:{raw}"
        state = f"its nextUpdate is {_when(next_update)}"
    else:
        return
    body = (
        f"The current CRL (number {number}) of\n\n    {ca_name}\n\n{state}.\n\n"
        f"certdrop refreshes the CRL {cfg.crl.refresh_before_days:g} days before its nextUpdate, "
        "so the\nrefresh has been failing; see the daemon's log (journalctl -u certdrop).\n"
        "An expired CRL makes mod_ssl refuse every client. 'certdrop crl' makes and\n"
        "publishes a new CRL now.\n"
    )
    if queue_admin_alert(conn, cfg.mail, subject, body, now, key=key):
        report.alerts.append(subject)


# --- pending requests -----------------------------------------------------------------------------
def pending_alert(
    conn: Connection, mail: MailSettings, rec: PendingRecord, now: dt.datetime
) -> bool:
    """Tell the admin that a request waits for approval (once per request)."""
    subject = f"request {rec.name} waits for approval ({rec.profile})"
    body = (
        f"A request waits in pending/ for the CA operator:\n\n"
        f"    name:      {rec.name}.req\n"
        f"    profile:   {rec.profile}\n"
        f"    subject:   {rec.subject}\n"
        f"    owner:     {rec.owner or '?'}"
        + (f" (uid {rec.owner_uid})" if rec.owner_uid is not None else "")
        + "\n"
        f"    received:  {_when(rec.received_at)}\n\n"
        "Check who asked for it, then:\n\n"
        f"    certdrop approve {rec.name}\n"
        f'    certdrop deny {rec.name} --reason "..."\n'
    )
    return queue_admin_alert(
        conn, mail, subject, body, now, key=f"pending:{rec.name}:{rec.fingerprint}"
    )


def announce_pending(store: Store, mail: MailSettings, name: str, now: dt.datetime) -> bool:
    """The pipeline's on_pending hook: alert the admin about request NAME."""
    with store.begin() as conn:
        rec = store.get_pending(conn, name)
        if rec is None or rec.decision is not None:
            return False
        return pending_alert(conn, mail, rec, now)
