"""Revocation: `certdrop revoke REF`, recorded in the index, then a new CRL.

REF is a serial, a request name, a CN or an e-mail address (`index.listing.lookup`).
`choose_for_revocation` decides which certificate it means, and never guesses: several
still-valid matches (of one holder or of several) are refused with their list, and so
is a serial that also names other certificates by name or address.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from typing import Protocol

from ..authority.names import subject_text
from ..authority.reasons import parse_reason
from ..authority.serials import serial_hex
from ..clock import Clock
from ..errors import CertdropError, NotFoundError
from ..index import journal, listing
from ..index.listing import serial_forms
from ..index.store import CertRecord, Store, Transaction
from .apache import ApachePublisher
from .crl import CrlPublisher
from .retiring import CrlSet

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
        *,
        crls: CrlSet | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.crl = crl  # the issuing CA's
        self.apache = apache  # None when [apache] enabled = false
        self.notices = notices  # None: holders are not told
        self.crls = crls  # every CA's: a certificate goes on the CRL of the CA that issued it

    def revoke(self, ref: str, reason: str = "unspecified") -> str:
        """Revoke the certificate `ref` names; publish the CRL. Returns a report line."""
        reason = parse_reason(reason)
        now = self.clock.now()
        with self.store.begin() as conn:
            matches = listing.find(conn, ref.strip())
            rec = choose_for_revocation(matches, ref, now)
            self.store.revoke(conn, rec.serial, reason, now)
            journal.log(
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
        crl = self.crls.for_issuer(rec.issuer) if self.crls is not None else self.crl
        if crl is None:
            return (
                f"{line}; it was issued by the CA {rec.issuer}, which publishes no CRL any "
                "more (retired, or its key in cas/ cannot be loaded: see the certdrop log)"
            ) + _superseded_note(matches, rec, ref, now)
        try:
            facts = crl.regenerate(f"{rec.serial} revoked")
        except CertdropError as exc:
            return (
                f"{line}; but the CRL could not be published ({exc}); the daemon retries, "
                "or run 'certdrop crl'"
            ) + _superseded_note(matches, rec, ref, now)
        line += f"; CRL {facts.number} published in {crl.pem_path}"
        if crl is not self.crl:
            line += (
                f" (the CRL of the retiring CA {subject_text(crl.ca.subject)} serial "
                f"{serial_hex(crl.ca.cert.serial_number)})"
            )
        return line + self._apache_note() + _superseded_note(matches, rec, ref, now)

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


def _live(rec: CertRecord, now: dt.datetime) -> bool:
    """Still valid: not revoked, not expired, not superseded by a renewal."""
    return rec.effective_status(now) == "valid"


def _superseded_note(
    matches: Sequence[CertRecord], chosen: CertRecord, ref: str, now: dt.datetime
) -> str:
    """Renewed-over certificates of `ref` that have not expired: relying parties still
    accept them (they are on no CRL), which the operator must know when a key is lost."""
    left = [
        r
        for r in matches
        if r.serial != chosen.serial and r.status == "superseded" and r.not_after > now
    ]
    if not left:
        return ""
    return (
        f"; note: {len(left)} superseded certificate(s) of {ref.strip()!r} have not expired "
        f"and are not revoked: {'; '.join(_describe(r, now) for r in left)}; "
        "revoke each by serial if its key is affected"
    )


def choose_for_revocation(matches: Sequence[CertRecord], ref: str, now: dt.datetime) -> CertRecord:
    """The one certificate `ref` means, or a NotFoundError that says what to do.

    One match is taken unless it is revoked already. Of several, the one still valid is
    taken (the certificates it renewed, the expired and the revoked ones need nothing);
    several still valid are refused, whoever holds them. A serial that also names other
    certificates (a CN or request name that looks like hex) is refused too.
    """
    ref = ref.strip()
    if not matches:
        raise NotFoundError(
            f"no certificate with serial, request name, CN or e-mail {ref!r}; "
            "see 'certdrop list --search TEXT'"
        )
    forms = serial_forms(ref)
    by_serial = [r for r in matches if r.serial in forms]
    if by_serial and len(by_serial) < len(matches):
        others = [r for r in matches if r.serial not in forms]
        raise NotFoundError(
            f"{ref!r} is the serial of {_describe(by_serial[0], now)} and also the request "
            f"name, CN or e-mail of {len(others)} other certificate(s): "
            f"{'; '.join(_describe(r, now) for r in others)}; give the serial as "
            f"0x{by_serial[0].serial} for the first, or the serial of another"
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
    live = [r for r in matches if _live(r, now)]
    if len(live) == 1:
        return live[0]
    listing = "; ".join(_describe(r, now) for r in matches)
    if not live:
        if all(r.status == "revoked" for r in matches):
            raise NotFoundError(f"every certificate of {ref!r} is already revoked: {listing}")
        kinds = " or ".join(sorted({r.effective_status(now) for r in matches} - {"revoked"}))
        article = "an" if kinds.startswith("e") else "a"
        raise NotFoundError(
            f"no certificate of {ref!r} is still valid; to revoke {article} {kinds} one "
            f"anyway, give its serial: {listing}"
        )
    raise NotFoundError(
        f"{ref!r} matches {len(live)} certificates that are still valid; "
        f"revoke one at a time by serial: {'; '.join(_describe(r, now) for r in live)}"
    )
