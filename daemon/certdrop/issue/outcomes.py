"""How a request ends when it does not get a new certificate: refused, waiting for an
operator, re-delivered the certificate it already has; and the values that report it.

Every end is recorded in the index's journal and the audit log; a refused request is
moved to rejected/ with its reason beside it, a processed one to archive/.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..clock import Clock
from ..faults import Crashpoint, no_crash
from ..fsutil import atomic_write, ensure_dir
from ..index import journal
from ..index import pending as waiting
from ..index.store import CertRecord, NewCertificate, Store, Transaction
from ..intake.claim import Claim, Refusal
from ..intake.request import ParsedRequest
from ..intake.spool import Spool, archive_path, move, place_rejected, remove_quietly
from .delivery import Delivery, output_owner

log = logging.getLogger("certdrop.pipeline")


class Outcome(enum.Enum):
    ISSUED = "issued"
    REDELIVERED = "redelivered"
    REJECTED = "rejected"
    PENDING = "pending"
    SKIPPED = "skipped"  # ignored, gone, or not ours to handle
    RETRY = "retry"  # try again later (name busy, key waiting for its request, ...)


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    name: str
    serial: str | None = None
    reason: str = ""
    retry_after: float = 0.0
    output: str = ""  # the name the outputs were delivered under (outbox/OUTPUT.cer)


AuditHook = Callable[[dict[str, Any]], None]


@dataclass
class Hooks:
    """Ways for the service to hear about what issuance did."""

    on_issued: Callable[[str, list[str]], None] | None = None  # serial, superseded serials
    on_pending: Callable[[str, str, str], None] | None = None  # name, profile, subject
    audit: AuditHook | None = None
    # groups the audit records of one batch into one write (AuditLog.batch)
    audit_batch: Callable[[], contextlib.AbstractContextManager[None]] = field(
        default=contextlib.nullcontext
    )

    def audit_claim(self, event: str, claim: Claim, **fields: Any) -> None:
        if self.audit is not None:
            self.audit(
                {
                    "event": event,
                    "name": claim.name,
                    "profile": claim.profile,
                    "uid": claim.owner.uid,
                    **fields,
                }
            )


@dataclass(frozen=True)
class Requester:
    """Who asked for a request, as far as the issue layer knows: to tell them what became of it."""

    name: str  # NAME of NAME.req
    profile: str
    owner: str | None  # the Unix owner of the dropped file, when known
    emails: tuple[str, ...] = ()  # the request's addresses (subject, then SAN), unchecked
    subject: str = ""  # the request's subject, as text
    notes: tuple[str, ...] = ()  # remarks for the requester (say, a dropped key was deleted)


def requester_of(claim: Claim, req: ParsedRequest | None = None, subject: str = "") -> Requester:
    return Requester(
        claim.name,
        claim.profile,
        claim.owner.name,
        req.emails if req is not None else (),
        subject,
        tuple(claim.notes),
    )


class RequesterNotices(Protocol):
    """Tells requesters what became of their requests (notify/requester.py: by mail).

    Each call is made inside the index transaction that records the event, so that the
    notice is kept or lost with it; it adds at most one row to that transaction.
    """

    def refused(self, conn: Transaction, who: Requester, reason: str, now: dt.datetime) -> None:
        """Refused; `reason` is the text of rejected/NAME.reason."""

    def pending(self, conn: Transaction, who: Requester, now: dt.datetime, *, once: str) -> None:
        """Waiting for an operator; `once` is the same when a crash makes the event repeat."""

    def approved(
        self, conn: Transaction, cert: NewCertificate, files: Sequence[Path], now: dt.datetime
    ) -> None:
        """Issued after an operator's approval; `files` are where it was delivered."""

    def denied(self, conn: Transaction, who: Requester, reason: str, now: dt.datetime) -> None:
        """Denied by an operator, for `reason`."""


MAX_REASONS = 20  # a hostile request can have thousands of problems; the first are enough
MAX_REASON_CHARS = 600


def reason_text(name: str, profile: str, reasons: list[str]) -> str:
    """The text of rejected/NAME.reason."""
    lines = [f"certdrop refused {name}.req" + (f" (profile {profile})" if profile else "") + ":"]
    for r in reasons[:MAX_REASONS]:
        lines.append(f"- {r if len(r) <= MAX_REASON_CHARS else r[:MAX_REASON_CHARS] + ' [...]'}")
    if len(reasons) > MAX_REASONS:
        lines.append(f"- ... and {len(reasons) - MAX_REASONS} more problems of the same kinds")
    lines.append("")
    lines.append("Fix what is listed above and drop the request again (a new file in the inbox).")
    return "\n".join(lines) + "\n"


class Outcomes:
    """Refusals, pending requests, re-deliveries and the archive."""

    def __init__(
        self,
        spool: Spool,
        store: Store,
        clock: Clock,
        delivery: Delivery,
        hooks: Hooks,
        held_keys: Path,
        crashpoint: Crashpoint = no_crash,
        notices: RequesterNotices | None = None,
    ) -> None:
        self.spool = spool
        self.held_keys = held_keys  # state/pending-keys/: keys of requests waiting for approval
        self.store = store
        self.clock = clock
        self.delivery = delivery
        self.hooks = hooks
        self.crashpoint = crashpoint
        self.notices = notices  # None: requesters are not told

    # --- refusals ---------------------------------------------------------------------------
    def reject(self, claim: Claim, reasons: list[str], req: ParsedRequest | None = None) -> Result:
        """Refuse a claimed request: rejected/NAME.req and NAME.reason (`req`: the request,
        when it could be parsed)."""
        now = self.clock.now()
        text = reason_text(claim.name, claim.profile, reasons)
        for suffix in (".cer", ".p12"):
            remove_quietly(self.spool.staged(claim.profile, claim.name, suffix))
        if claim.key_path is not None:
            remove_quietly(claim.key_path)  # a key is never kept in rejected/
        place_rejected(
            self.spool,
            claim.path,
            claim.name,
            text,
            now,
            before_move=lambda: self.crashpoint("mid-reject"),
        )
        self.crashpoint("after-reject")
        with self.store.begin() as conn:
            journal.log(
                conn, now, claim.name, "rejected", profile=claim.profile, detail=" | ".join(reasons)
            )
            waiting.remove_pending(conn, claim.name)
            if self.notices is not None:
                self.notices.refused(conn, requester_of(claim, req), text, now)
        log.info("rejected %s.req profile=%s: %s", claim.name, claim.profile, " | ".join(reasons))
        self.hooks.audit_claim("rejected", claim, reasons=reasons)
        return Result(Outcome.REJECTED, claim.name, reason=text)

    def reject_unclaimed(self, refusal: Refusal) -> Result:
        """Refuse something in the inbox without opening it (moved as it is)."""
        now = self.clock.now()
        name, reason = refusal.name, refusal.reason
        text = reason_text(name, "", [reason])
        try:
            place_rejected(self.spool, refusal.path, name, text, now)
        except FileNotFoundError:
            # gone before it could be moved: no reason for a file that is not in rejected/
            remove_quietly(self.spool.rejected / f"{name}.reason")
            return Result(Outcome.SKIPPED, name)
        with self.store.begin() as conn:
            journal.log(conn, now, name, "rejected", detail=reason)
        log.info("rejected %r: %s", refusal.path.name, reason)
        if self.hooks.audit:
            self.hooks.audit(
                {"event": "rejected", "name": name, "reasons": [reason], "uid": refusal.st.st_uid}
            )
        return Result(Outcome.REJECTED, name, reason=text)

    def refuse_key(self, path: Path, stem: str, reason: str) -> Result:
        """Refuse a dropped key: deleted (a private key is never kept), the reason written."""
        remove_quietly(path)
        return self.key_refused(stem, "", reason, self.clock.now())

    def key_refused(self, stem: str, profile: str, reason: str, now: dt.datetime) -> Result:
        """rejected/NAME.reason for a key that could not be used."""
        text = reason_text(stem, profile, [reason])
        atomic_write(self.spool.rejected / f"{stem}.reason", text.encode(), 0o644)
        with self.store.begin() as conn:
            journal.log(conn, now, stem, "rejected", profile=profile, detail=reason)
        log.info("refused %s.key: %s", stem, reason)
        return Result(Outcome.REJECTED, stem, reason=text)

    # --- waiting for an operator --------------------------------------------------------------
    def to_pending(self, claim: Claim, req: ParsedRequest, now: dt.datetime) -> Result:
        """Wait for an operator: pending/NAME.req; a key dropped with the request waits in
        the state folder (0600, never in the spool) for the approval to bundle it."""
        subject = ", ".join(f"{n}={v}" for n, v in req.subject)
        target = self.spool.pending / f"{claim.name}.req"
        with self.store.begin() as conn:
            waiting.add_pending(
                conn,
                claim.name,
                claim.profile,
                req.fingerprint,
                claim.owner.name or "",
                claim.owner.uid,
                now,
                subject,
            )
            journal.log(
                conn, now, claim.name, "pending", profile=claim.profile, fingerprint=req.fingerprint
            )
            if self.notices is not None:
                st = claim.st  # the same file when a crash makes this run again
                once = f"{req.fingerprint}:{st.st_dev}:{st.st_ino}:{st.st_mtime_ns}"
                self.notices.pending(conn, requester_of(claim, req, subject), now, once=once)
        self.crashpoint("mid-pending")
        if claim.key_path is not None:
            # a copy of the daemon's own, 0600 (the dropped file is the user's, with the
            # user's mode), then the dropped one removed
            ensure_dir(self.held_keys, 0o700)
            atomic_write(self.held_key(claim.name), claim.key_path.read_bytes(), 0o600)
            remove_quietly(claim.key_path)
        move(claim.path, target)
        log.info(
            "pending %s.req profile=%s subject=%s: waiting for 'certdrop approve %s'",
            claim.name,
            claim.profile,
            subject,
            claim.name,
        )
        self.hooks.audit_claim("pending", claim, subject=subject)
        if self.hooks.on_pending is not None:
            self.hooks.on_pending(claim.name, claim.profile, subject)
        return Result(Outcome.PENDING, claim.name)

    # --- the same request again ---------------------------------------------------------------
    def redeliver(self, claim: Claim, rec: CertRecord) -> Result:
        """The request already has its certificate: deliver that one again."""
        serial, der, key_generated = rec.serial, rec.der, rec.key_generated
        now = self.clock.now()
        staged_cer = self.spool.staged(claim.profile, claim.name, ".cer")
        if not staged_cer.exists():
            cert = x509.load_der_x509_certificate(der)
            atomic_write(
                staged_cer,
                cert.public_bytes(serialization.Encoding.PEM),
                0o644,
                owner=output_owner(claim.owner),
            )
        name = self.delivery.redelivery_name(claim, rec)
        key_problem = ""
        if (
            claim.key_path is not None
            and not key_generated
            and not self.spool.staged(claim.profile, claim.name, ".p12").exists()
        ):
            # the same request again, now with its key: the p12 for the certificate it got
            key_problem = self.delivery.bundle_for_existing(claim, serial, der, name)
        self.crashpoint("after-redeliver-stage")
        self.delivery.to_outbox(claim, name, serial)
        if claim.key_path is not None:
            remove_quietly(claim.key_path)
        if key_problem:
            self.key_refused(claim.name, claim.profile, key_problem, now)
        with self.store.begin() as conn:
            journal.log(conn, now, claim.name, "redelivered", profile=claim.profile, serial=serial)
        self.archive(claim, now)
        log.info(
            "redelivered %s.req serial=%s -> outbox/%s.cer (this request was already issued)",
            claim.name,
            serial,
            name,
        )
        self.hooks.audit_claim("redelivered", claim, serial=serial, output=name)
        return Result(Outcome.REDELIVERED, claim.name, serial=serial, output=name)

    def archive(self, claim: Claim, now: dt.datetime) -> None:
        move(claim.path, archive_path(self.spool, claim.path.name, now))

    def held_key(self, name: str) -> Path:
        """Where the key of pending request NAME waits for the operator's decision."""
        return self.held_keys / f"{name}.key"

    def pending_waits(self, name: str) -> bool:
        """A request of this name waits in pending/."""
        return os.path.lexists(self.spool.pending / f"{name}.req")
