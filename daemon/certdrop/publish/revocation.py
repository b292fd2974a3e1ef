"""Revocation: `certdrop revoke SERIAL|NAME`, recorded in the index, then a new CRL.

`choose_for_revocation` decides which certificate a reference means; it never
guesses: several still-valid matches are refused with the list of their serials.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Protocol

from ..authority.reasons import parse_reason
from ..clock import Clock
from ..errors import CertdropError, NotFoundError
from ..index.store import CertRecord, Store, Transaction
from .apache import ApachePublisher
from .crl import CrlPublisher

log = logging.getLogger("certdrop.publish")


class RevocationNotices(Protocol):
    """Tells a certificate's holder of its revocation (notify/requester.py: by mail), inside
    the transaction that records it."""

    def revoked(self, conn: Transaction, cert: CertRecord, reason: str, now: dt.datetime) -> None:
        """`cert` (as it was before) is revoked as of `now` for `reason`."""


class Revoker:
    """Revokes one certificate at a time and publishes the CRL that lists it."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        crl: CrlPublisher,
        apache: ApachePublisher | None,
        notices: RevocationNotices | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.crl = crl
        self.apache = apache  # None when [apache] enabled = false
        self.notices = notices  # None: holders are not told

    def revoke(self, ref: str, reason: str = "unspecified") -> str:
        """Revoke the certificate `ref` names; publish the CRL. Returns a report line."""
        reason = parse_reason(reason)
        now = self.clock.now()
        with self.store.begin() as conn:
            rec = choose_for_revocation(self.store.find(conn, ref.strip()), ref, now)
            self.store.revoke(conn, rec.serial, reason, now)
            self.store.log(
                conn,
                now,
                rec.request_name or rec.serial,
                "revoked",
                profile=rec.profile,
                serial=rec.serial,
                detail=reason,
            )
            if self.notices is not None:
                self.notices.revoked(conn, rec, reason, now)
        log.warning("revoked %s (%s), reason %s", rec.serial, rec.subject, reason)
        line = f"revoked {rec.serial} ({rec.subject}), reason {reason}"
        try:
            facts = self.crl.regenerate(f"{rec.serial} revoked")
        except CertdropError as exc:
            return (
                f"{line}; but the CRL could not be published ({exc}); the daemon retries, "
                "or run 'certdrop crl'"
            )
        line += f"; CRL {facts.number} published in {self.crl.pem_path}"
        return line + self._apache_note()

    def _apache_note(self) -> str:
        """What became of the Apache files (published by the CRL's listener)."""
        if self.apache is None:
            return ""
        if self.apache.debounced:
            return f"; Apache files follow within {self.apache.settings.debounce_seconds:g}s"
        outcome = self.apache.last_outcome()
        if outcome is None:
            return ""
        if not outcome.ok:
            return f"; but Apache was NOT updated: {outcome.text()}; see 'certdrop status'"
        return f"; Apache: {outcome.text()}"


def _describe(rec: CertRecord, now: dt.datetime) -> str:
    return (
        f"{rec.serial} ({rec.effective_status(now)}, until {rec.not_after:%Y-%m-%d}, {rec.subject})"
    )


def choose_for_revocation(matches: list[CertRecord], ref: str, now: dt.datetime) -> CertRecord:
    """The one certificate `ref` means, or a NotFoundError that says what to do."""
    if not matches:
        raise NotFoundError(
            f"no certificate with serial or request name {ref!r}; see 'certdrop list'"
        )
    if len(matches) == 1:
        rec = matches[0]
        if rec.status == "revoked":
            raise NotFoundError(
                f"certificate {rec.serial} ({rec.subject}) is already revoked "
                f"(since {rec.revoked_at:%Y-%m-%d %H:%M} UTC, reason "
                f"{rec.revocation_reason or 'unspecified'})"
            )
        return rec
    live = [r for r in matches if r.status != "revoked" and r.not_after > now]
    if len(live) == 1:
        return live[0]
    listing = "; ".join(_describe(r, now) for r in matches)
    if not live:
        if all(r.status == "revoked" for r in matches):
            raise NotFoundError(f"every certificate of {ref!r} is already revoked: {listing}")
        raise NotFoundError(
            f"no certificate of {ref!r} is still valid; to revoke an expired one anyway, "
            f"give its serial: {listing}"
        )
    raise NotFoundError(
        f"{ref!r} matches {len(live)} certificates that are still valid; "
        f"revoke one at a time by serial: {'; '.join(_describe(r, now) for r in live)}"
    )
