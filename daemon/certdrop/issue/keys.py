"""Keys dropped on their own: NAME.key without NAME.req beside it.

A key whose request was claimed with it never gets here (the claim takes it along).
A key on its own is either late (its certificate was issued moments ago: certdrop
builds the p12 for that certificate), early (its request is still to come: it
waits), or an orphan (refused and deleted after `[pkcs12] orphan_key_minutes`).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from pathlib import Path

from ..clock import Clock
from ..fsutil import is_safe_name, sanitize_name
from ..index import listing
from ..index.store import Store
from ..intake.claim import Claim, Claimer, KeyDrop, owner_of
from ..intake.spool import Spool, remove_quietly
from .delivery import Delivery
from .outcomes import Outcome, Outcomes, Result

log = logging.getLogger("certdrop.pipeline")


class DroppedKeys:
    """Decides what a key dropped on its own is for (see the module docstring)."""

    def __init__(
        self,
        spool: Spool,
        store: Store,
        clock: Clock,
        claimer: Claimer,
        delivery: Delivery,
        outcomes: Outcomes,
        orphan_key_minutes: float,
    ) -> None:
        self.spool = spool
        self.store = store
        self.clock = clock
        self.claimer = claimer
        self.delivery = delivery
        self.outcomes = outcomes
        self.orphan_key_minutes = orphan_key_minutes

    def handle(self, drop: KeyDrop) -> Result:
        path, profile, stem, st = drop.path, drop.profile, drop.stem, drop.st
        if not is_safe_name(stem):
            return self.outcomes.refuse_key(
                path, sanitize_name(stem), "the key file's name is not allowed"
            )
        # the request beside it (or already claimed) takes the key with it
        if os.path.lexists(path.with_name(stem + ".req")) or os.path.lexists(
            self.spool.claimed_path(profile, stem + ".req")
        ):
            return Result(Outcome.SKIPPED, stem)
        problem = self.claimer.unsafe(st)
        if problem:
            return self.outcomes.refuse_key(path, stem, problem)
        now = self.clock.now()
        window = dt.timedelta(minutes=self.orphan_key_minutes)
        # a key that arrives shortly after its request: build the p12 for that certificate;
        # only its holder's (the same Unix owner: on a shared folder, another user's
        # request of the same name may have come just before)
        owner = owner_of(st)
        holder = owner.name or str(owner.uid)
        with self.store.begin() as conn:
            recent = [
                r
                for r in listing.find(conn, stem)
                if r.request_name == stem
                and r.status == "valid"
                and r.not_after > now
                and not r.key_generated
                and now - r.issued_at <= window
                and r.profile == profile
                and r.owner == holder
            ]
        if recent:
            return self._late_key(path, profile, stem, recent[0].serial, recent[0].der, st)
        age = time.time() - st.st_mtime
        if age < window.total_seconds():
            return Result(
                Outcome.RETRY,
                stem,
                reason="key waiting for its request",
                retry_after=max(1.0, window.total_seconds() - age),
            )
        return self.outcomes.refuse_key(
            path,
            stem,
            f"{stem}.key was dropped without {stem}.req and no request came within "
            f"{self.orphan_key_minutes:g} minutes; the key was deleted, not stored. "
            f"Drop {stem}.key together with {stem}.req",
        )

    def _late_key(
        self, path: Path, profile: str, stem: str, serial: str, der: bytes, st: os.stat_result
    ) -> Result:
        now = self.clock.now()
        claimed = self.spool.claimed_path(profile, stem + ".latekey")
        try:
            os.rename(path, claimed)
        except FileNotFoundError:
            return Result(Outcome.SKIPPED, stem)
        claim = Claim(
            path=claimed, name=stem, profile=profile, owner=owner_of(st), st=st, key_path=claimed
        )
        problem = self.delivery.bundle_for_existing(claim, serial, der)
        remove_quietly(claimed)
        if problem:
            return self.outcomes.key_refused(stem, profile, problem, now)
        log.info("delivered %s.p12 for serial=%s (key dropped after its request)", stem, serial)
        return Result(Outcome.REDELIVERED, stem, serial=serial)
