"""An operator's decision on a request waiting in pending/: approve or deny."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..clock import Clock
from ..errors import CertdropError, RequestError
from ..fsutil import move_file, open_nofollow, read_limited
from ..index import journal
from ..index import pending as waiting
from ..index.pending import PendingRecord
from ..index.store import Store
from ..intake.request import parse_many
from ..intake.spool import Spool, move, place_rejected, remove_quietly
from .batches import Batches
from .outcomes import Hooks, Outcome, Outcomes, Requester, RequesterNotices, Result, reason_text

MAX_WAITING_BYTES = 16 * 1024 * 1024  # the largest [watch] max_request_bytes

log = logging.getLogger("certdrop.pipeline")


class Approvals:
    """`certdrop approve NAME` and `certdrop deny NAME --reason TEXT`."""

    def __init__(
        self,
        spool: Spool,
        store: Store,
        clock: Clock,
        batches: Batches,
        outcomes: Outcomes,
        hooks: Hooks,
        notices: RequesterNotices | None = None,
    ) -> None:
        self.spool = spool
        self.store = store
        self.clock = clock
        self.batches = batches
        self.outcomes = outcomes  # knows where the keys of pending requests wait
        self.hooks = hooks
        self.notices = notices  # None: requesters are not told

    def approve(self, name: str) -> Result:
        """Issue a pending request (the approval is recorded before the move). A key that
        came with it goes beside it into work/ first, so that the p12 is made also when a
        crash interrupts the approval."""
        now = self.clock.now()
        with self.store.begin() as conn:
            rec = waiting.get_pending(conn, name)
            if rec is None:
                raise CertdropError(f"no pending request named {name}; see 'certdrop status'")
            waiting.decide_pending(conn, name, "approved", "", now)
            journal.log(
                conn, now, name, "approved", profile=rec.profile, fingerprint=rec.fingerprint
            )
        src = self.spool.pending / f"{name}.req"
        target = self.spool.claimed_path(rec.profile, f"{name}.req")
        if os.path.lexists(target):
            raise CertdropError(
                f"a request named {name}.req is being processed right now; try again"
            )
        if not os.path.lexists(src):
            raise CertdropError(f"pending/{name}.req is missing; the request cannot be approved")
        held = self.outcomes.held_key(name)
        if os.path.lexists(held):
            move_file(held, target.with_name(f"{name}.key"), 0o600)
        try:
            move(src, target)
        except FileNotFoundError:
            raise CertdropError(
                f"pending/{name}.req is missing; the request cannot be approved"
            ) from None
        return self.batches.process_claimed(target, rec.profile, approved=True)

    def deny(self, name: str, reason: str) -> Result:
        now = self.clock.now()
        with self.store.begin() as conn:
            rec = waiting.get_pending(conn, name)
            if rec is None:
                raise CertdropError(f"no pending request named {name}; see 'certdrop status'")
            waiting.decide_pending(conn, name, "denied", reason, now)
        src = self.spool.pending / f"{name}.req"
        text = reason_text(name, rec.profile, [f"the CA operator denied the request: {reason}"])
        who = waiting_requester(rec, src) if self.notices is not None else None
        if os.path.lexists(src):
            place_rejected(self.spool, src, name, text, now)
        remove_quietly(self.outcomes.held_key(name))  # a denied request's key is destroyed
        with self.store.begin() as conn:
            waiting.remove_pending(conn, name)
            journal.log(conn, now, name, "denied", profile=rec.profile, detail=reason)
            if self.notices is not None and who is not None:
                self.notices.denied(conn, who, reason, now)
        log.info("denied %s.req: %s", name, reason)
        if self.hooks.audit:
            self.hooks.audit({"event": "denied", "name": name, "reason": reason})
        return Result(Outcome.REJECTED, name, reason=text)


def waiting_requester(rec: PendingRecord, path: Path) -> Requester:
    """Who asked for the request waiting in `path`; its addresses are read from the file
    (none when it cannot be read or parsed: the owner's bound address may still do)."""
    emails: tuple[str, ...] = ()
    try:
        with open_nofollow(path) as fd:
            [req] = parse_many([read_limited(fd, MAX_WAITING_BYTES)])
        if not isinstance(req, RequestError):
            emails = req.emails
    except OSError:
        pass
    return Requester(rec.name, rec.profile, rec.owner or None, emails, rec.subject)
