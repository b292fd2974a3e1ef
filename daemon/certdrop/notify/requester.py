"""Telling requesters by mail what became of their requests.

`RequesterMail` is the issue layer's `RequesterNotices` (refused, waiting for approval,
approved and issued, denied; issue/outcomes.py) and the revoker's `RevocationNotices`
(publish/revocation.py). Each call comes inside the index transaction that records the
event and adds one row to the mail queue (queue.py): the mail is kept or lost with the
event, and the Mailer sends it, retrying while the server is down. service/runtime.py
builds it when [mail] enabled and [mail] notify_requester are both true.

One mail per event, to one address (`requester_address`):

* under a profile with `owner_binding`, the bound address of the file's Unix owner and
  no other: the policy accepts no other address there, so a request that names someone
  else's address tells its dropper, never that someone (an unknown owner: nobody);
* else the first address of the request (the subject's emailAddress, then the SAN
  e-mails) that is a plain valid address at a domain the profile allows: a request the
  policy refused for its address does not make certdrop mail that address;
* an issued certificate's holder: the certificate's address, which the policy accepted.

No usable address, no mail: the reason is still in rejected/NAME.reason.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ..config import Profile, Settings
from ..index.store import CertRecord, NewCertificate, Transaction
from ..intake.spool import Spool
from ..issue.outcomes import Requester
from .messages import (
    requester_approved,
    requester_denied,
    requester_pending,
    requester_refused,
    requester_revoked,
)
from .queue import enqueue
from .smtp import MessageRefused, Recipient, check_address

log = logging.getLogger("certdrop.mail")

# a plain ASCII mailbox (RFC 5322 dot-atom at a DNS name): no quoting, comments or IDN
_ADDRESS = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-]+)*"
    r"@([A-Za-z0-9]([A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]([A-Za-z0-9\-]{0,61}[A-Za-z0-9])?"
)
MAX_ADDRESS = 254  # RFC 5321: the longest path


def usable_address(addr: str) -> bool:
    """`addr` is a plain address certdrop may send to (what this admits, any mail header
    takes: queue.py checks it once more)."""
    return len(addr) <= MAX_ADDRESS and addr.isascii() and _ADDRESS.fullmatch(addr) is not None


def _domain_allowed(addr: str, profile: Profile) -> bool:
    domain = addr.rsplit("@", 1)[1].lower()
    rule = profile.subject.get("emailAddress")
    allowed = [profile.email_domains, rule.domains if rule is not None else None]
    return all(not domains or domain in domains for domains in allowed)


def requester_address(profile: Profile | None, owner: str | None, emails: Sequence[str]) -> str:
    """The one address that hears about a request ("" for none); see the module docstring."""
    if profile is None:
        return ""  # a profile no longer configured: nothing to judge addresses by
    if profile.owner_binding:
        bound = profile.owner_binding.format(owner=owner) if owner else ""
        return bound if usable_address(bound) else ""
    for addr in emails:
        if usable_address(addr) and _domain_allowed(addr, profile):
            return addr
    return ""


class RequesterMail:
    """Queues the requester's mail for each event (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        spool: Spool,
    ) -> None:
        self.mail = settings.mail
        self.profiles: Mapping[str, Profile] = settings.profiles
        self.default_profile = settings.policy.default_profile
        self.spool = spool
        self.password_by_mail = settings.pkcs12.password_delivery != "file"

    @classmethod
    def from_settings(cls, settings: Settings, spool: Spool) -> RequesterMail | None:
        """The notices for these settings; None when requesters are not to be told."""
        if not (settings.mail.enabled and settings.mail.notify_requester):
            return None
        return cls(settings, spool)

    def inbox_for(self, profile: str) -> Path:
        """Where a request for `profile` is dropped."""
        if profile == self.default_profile or profile not in self.profiles:
            return self.spool.inbox
        return self.spool.inbox / profile

    def _to(self, who: Requester) -> str:
        return requester_address(self.profiles.get(who.profile), who.owner, who.emails)

    def _queue(
        self,
        conn: Transaction,
        kind: str,
        to: Recipient,
        text: tuple[str, str],
        now: dt.datetime,
        *,
        once: str | None = None,
        serial: str | None = None,
    ) -> None:
        subject, body = text
        if to[0]:
            try:
                check_address(*to)
            except MessageRefused:  # a display name a header cannot carry: the address alone
                to = ("", to[1])
        enqueue(conn, self.mail, kind, [to], subject, body, now, dedupe_key=once, serial=serial)

    # --- the issue layer's events ---------------------------------------------------------
    def refused(self, conn: Transaction, who: Requester, reason: str, now: dt.datetime) -> None:
        self._with_reason(conn, "requester-refused", requester_refused, who, reason, now)

    def pending(self, conn: Transaction, who: Requester, now: dt.datetime, *, once: str) -> None:
        to = self._to(who)
        if not to:
            return
        text = requester_pending(
            who.name,
            who.profile,
            who.subject,
            now,
            self.spool.pending,
            self.spool.outbox,
            who.notes,
        )
        event = hashlib.sha256(f"{who.profile}/{who.name}:{once}".encode()).hexdigest()
        self._queue(conn, "requester-pending", ("", to), text, now, once=f"requester:{event}")

    def approved(
        self, conn: Transaction, cert: NewCertificate, files: Sequence[Path], now: dt.datetime
    ) -> None:
        if not usable_address(cert.email):
            return
        text = requester_approved(
            cert.request_name,
            cert.profile,
            cert.subject,
            cert.serial,
            cert.not_after,
            files,
            self.password_by_mail,
        )
        self._queue(
            conn,
            "requester-approved",
            (cert.common_name, cert.email),
            text,
            now,
            once=f"requester-approved:{cert.serial}",
            serial=cert.serial,
        )

    def denied(self, conn: Transaction, who: Requester, reason: str, now: dt.datetime) -> None:
        self._with_reason(conn, "requester-denied", requester_denied, who, reason, now)

    def _with_reason(
        self,
        conn: Transaction,
        kind: str,
        message: Callable[..., tuple[str, str]],
        who: Requester,
        reason: str,
        now: dt.datetime,
    ) -> None:
        """A refusal or a denial: the reason, where the request went, what to do."""
        to = self._to(who)
        if not to:
            return
        text = message(
            who.name,
            who.profile,
            reason,
            self.inbox_for(who.profile),
            self.spool.rejected,
            who.notes,
        )
        self._queue(conn, kind, ("", to), text, now)

    # --- the revoker's ----------------------------------------------------------------------
    def revoked(self, conn: Transaction, cert: CertRecord, reason: str, now: dt.datetime) -> None:
        if not usable_address(cert.email):
            return
        text = requester_revoked(
            cert,
            reason,
            now,
            self.inbox_for(cert.profile),
            password_by_mail=self.password_by_mail,
        )
        self._queue(
            conn,
            "requester-revoked",
            (cert.common_name, cert.email),
            text,
            now,
            once=f"requester-revoked:{cert.serial}",
            serial=cert.serial,
        )
