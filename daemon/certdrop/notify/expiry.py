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
  `crl_next_update`, written by the CRL publisher; skipped when absent), when the
  CRL of a CA above it (the offline root's) is missing, due (a quarter of its
  validity, at most 30 days, before its nextUpdate), close to its end or expired,
  and about pending requests that were never announced (the pending hook normally
  does that at once).

Messages go into the durable mail queue (queue.py); their texts are in messages.py;
nothing here talks SMTP.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from ..authority.names import subject_text
from ..authority.serials import serial_hex
from ..config import CRLSettings, ExpirySettings, MailSettings, Profile, Settings
from ..index import listing, warned
from ..index import pending as waiting
from ..index.schema import from_epoch
from ..index.store import CertRecord, Store, Transaction
from .alerts import admin_recipients, pending_alert, queue_admin_alert
from .messages import admin_digest, ca_expiry, chain_crl_due, crl_overdue, holder_warning
from .queue import enqueue

log = logging.getLogger("certdrop.expiry")

CA_WARN_DAYS = (90, 30, 7, 1)
CHAIN_CRL_WARN_DAYS = (7, 1, 0)  # after the first alert (when due): these, and expired


@dataclass(frozen=True)
class CrlAbove:
    """The CRL of a CA above the issuing CA, as the sweep needs it (publish/upstream.py
    reads them from the state folder)."""

    ca: str  # the CA's name
    number: int | None  # None: there is no CRL of it
    next_update: dt.datetime | None
    due_at: dt.datetime | None


CRL_META_KEY = "crl_next_update"  # epoch seconds or ISO 8601 (UTC), set by the CRL publisher


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
    store: Store,
    cfg: SweepConfig,
    ca_certs: Sequence[x509.Certificate],
    now: dt.datetime,
    crls_above: Sequence[CrlAbove] = (),
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
        for above in crls_above:
            _crl_above(conn, cfg, above, now, report)
        for rec in waiting.list_pending(conn):
            if rec.decision is None and pending_alert(conn, cfg.mail, rec, now):
                report.alerts.append(f"pending {rec.name}")
        store.set_meta(conn, warned.LAST_SWEEP_META_KEY, now.isoformat())
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
def _new_threshold(
    conn: Transaction, kind: str, serial: str, left: dt.timedelta, thresholds: Sequence[int]
) -> tuple[int | None, list[int]]:
    """(the threshold to warn for now or None, the thresholds to record as done)."""
    crossed = sorted(t for t in thresholds if left <= dt.timedelta(days=t))
    if not crossed:
        return None, []
    done = warned.thresholds_done(conn, kind, serial)
    todo = [t for t in crossed if t not in done]
    tightest = crossed[0]
    if not todo or (done and min(done) <= tightest):
        return None, todo  # warned at this or a tighter threshold already
    return tightest, todo


def _certificates(
    conn: Transaction, store: Store, cfg: SweepConfig, now: dt.datetime, report: SweepReport
) -> None:
    thresholds = list(cfg.expiry.warn_days)
    if not thresholds:
        return
    horizon = dt.timedelta(days=max(thresholds))
    admins = admin_recipients(cfg.mail) if cfg.expiry.notify_admin else []
    digest: list[tuple[CertRecord, int, bool]] = []
    for rec in listing.list_certs(conn, now=now, expiring_within=horizon):
        threshold, todo = _new_threshold(conn, "cert", rec.serial, rec.not_after - now, thresholds)
        warned.record(conn, "cert", rec.serial, todo, now)
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


# --- the CA and the CRL ------------------------------------------------------------------------
def _ca_certificate(
    conn: Transaction,
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
        warned.record(conn, "ca", serial, todo, now)
        return
    subject, body = ca_expiry(subject_text(cert.subject), serial, not_after, now)
    if queue_admin_alert(conn, cfg.mail, subject, body, now, key=f"ca-expiry:{serial}:{threshold}"):
        report.alerts.append(subject)
    warned.record(conn, "ca", serial, todo, now)


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
    conn: Transaction,
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
    if left <= dt.timedelta(0):
        key = f"crl-expired:{raw}"
    elif left <= margin:
        key = f"crl-stale:{raw}"
    else:
        return
    number = store.get_meta(conn, "crl_number") or "?"
    subject, body = crl_overdue(ca_name, number, next_update, cfg.crl.refresh_before_days, now)
    if queue_admin_alert(conn, cfg.mail, subject, body, now, key=key):
        report.alerts.append(subject)


def _crl_above(
    conn: Transaction, cfg: SweepConfig, above: CrlAbove, now: dt.datetime, report: SweepReport
) -> None:
    """One alert when the CRL is due, then at 7 and 1 days before its end and when it has
    ended (those of them inside the due window); one when there is none."""
    if above.number is None or above.next_update is None or above.due_at is None:
        subject, body = chain_crl_due(above.ca, None, None, now)
        if queue_admin_alert(conn, cfg.mail, subject, body, now, key=f"chain-crl-none:{above.ca}"):
            report.alerts.append(subject)
        return
    if now < above.due_at:
        return
    lead_days = max(int((above.next_update - above.due_at).total_seconds() // 86400), 1)
    thresholds = sorted({lead_days, *(d for d in CHAIN_CRL_WARN_DAYS if d < lead_days)})
    # the first threshold is the due date's (in whole days): the first alert comes with it
    left = above.next_update - now
    serial = str(above.number)[-42:]
    threshold, todo = _new_threshold(conn, "chain-crl", serial, left, thresholds)
    if threshold is not None:
        subject, body = chain_crl_due(above.ca, above.number, above.next_update, now)
        key = f"chain-crl:{serial}:{threshold}"
        if queue_admin_alert(conn, cfg.mail, subject, body, now, key=key):
            report.alerts.append(subject)
    warned.record(conn, "chain-crl", serial, todo, now)
