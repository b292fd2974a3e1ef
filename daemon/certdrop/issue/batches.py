"""The batch state machine: every request from the inbox to its end, in batches.

A batch goes through three steps:

1. **start**: each inbox file is claimed (renamed into work/PROFILE/, folders fsynced
   once) or ends at once (skipped, retried later, refused unopened, a key on its own);
   the claimed requests are read and their parsing starts (in the signing workers
   when they are up);
2. **decide**: the parsed requests are decided (`Decider`) and the signing of what the
   policy accepted starts (`Recorder.start_signing`);
3. **finish**: the certificates are recorded, delivered and archived (`Recorder.record`).

In the daemon, three batches are in flight (`push`): while the workers sign batch N-2
(then parse batch N and sign batch N-1), the daemon's thread claims and reads batch N,
decides batch N-1 and records batch N-2; neither waits for the other. Requests of a
batch that touch what a batch in flight is issuing (the same request, the same unique
subject) wait until that one is recorded and are decided then, so every decision sees
the index as if the batches had run one after the other.

Every dropped request ends in exactly one of outbox/ (+ archive/), rejected/ or
pending/, also across a crash at any point: what a crash leaves in work/ is processed
again at start (`recover`).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..clock import Clock
from ..errors import CertdropError, IndexUnavailable, RequestError
from ..faults import Crashpoint, no_crash
from ..fsutil import fsync_dir
from ..intake.claim import Claim, Claimer, KeyDrop, Refusal, Retry, Skip
from ..intake.inbox import WorkItem
from ..intake.request import ParsedRequest, parse_many
from ..intake.spool import Spool, remove_quietly
from .decide import Decider, Done, Key, Plan
from .keys import DroppedKeys
from .outcomes import Hooks, Outcome, Outcomes, Result
from .record import Recorder, SignOutcome

log = logging.getLogger("certdrop.pipeline")

RECOVERY_BATCH = 256  # requests of work/ processed together at start

ParseOutcome = list["ParsedRequest | RequestError"]

Parser = Callable[[Sequence[bytes]], Callable[[], ParseOutcome]]
"""Starts parsing a batch of dropped files (in this process or in the signing workers);
the returned function waits for the outcome."""


@dataclass
class Batch:
    """Claimed requests from `start` (read; parsing started) through `decide` (decided;
    signing started) to `finish` (recorded, delivered)."""

    approved: bool = False  # an operator approved these requests
    done: Done = field(default_factory=list)
    readable: list[Claim] = field(default_factory=list)
    parsing: Callable[[], ParseOutcome] | None = None  # None once decided
    plans: list[Plan] = field(default_factory=list)
    signing: Callable[[], SignOutcome] | None = None
    now: dt.datetime | None = None
    # the same request twice in this batch, and requests of later batches that touch
    # what this one is issuing: decided once this batch is recorded
    after: list[Claim] = field(default_factory=list)
    # what this batch may still change in the index: request fingerprints, unique keys
    fingerprints: set[str] = field(default_factory=set)
    keys: set[Key] = field(default_factory=set)
    serials: set[int] = field(default_factory=set)


@dataclass
class Ticket:
    """A batch of inbox files handed to `start`."""

    items: Sequence[WorkItem]
    immediate: list[tuple[int, Result]]  # index in the items: not claimed (skipped, retry, ...)
    claimed: dict[int, int]  # id(claim) -> index in the items
    batch: Batch | None

    def claimed_items(self) -> list[WorkItem]:
        return [self.items[i] for i in self.claimed.values()]


class Sink(Protocol):
    """Where the daemon hears what became of the work items it pushed."""

    def retry(self, item: WorkItem, after: float) -> None:
        """Look at `item` again in `after` seconds."""

    def result(self, result: Result) -> None:
        """A request (or key) reached an outcome."""

    def failed(self, items: Sequence[WorkItem], exc: Exception) -> None:
        """A step failed for these items: they stay in inbox/ or work/."""


class Batches:
    """Runs batches of requests through claim, decide and record (module docstring)."""

    def __init__(
        self,
        claimer: Claimer,
        decider: Decider,
        recorder: Recorder,
        outcomes: Outcomes,
        keys: DroppedKeys,
        spool: Spool,
        clock: Clock,
        profiles: Collection[str],
        hooks: Hooks,
        *,
        crashpoint: Crashpoint = no_crash,
    ) -> None:
        self.claimer = claimer
        self.decider = decider
        self.recorder = recorder
        self.outcomes = outcomes
        self.keys = keys
        self.spool = spool
        self.clock = clock
        self.profiles = profiles
        self.hooks = hooks
        self.crashpoint = crashpoint
        self.parser: Parser = lambda datas: lambda: parse_many(datas)
        # batches begun and not decided yet (being parsed), and batches decided and not
        # finished yet (being signed), oldest first
        self._parsing: list[Batch] = []
        self._inflight: list[Batch] = []
        # the daemon's batches (`push`): started and not finished, oldest first
        self._started: list[Ticket] = []

    # --- the daemon: three batches in flight ---------------------------------------------------
    @property
    def in_flight(self) -> bool:
        """Batches pushed and not finished yet."""
        return bool(self._started)

    def push(self, items: Sequence[WorkItem], sink: Sink) -> None:
        """Start a batch, decide the one before it, finish the one before that."""
        try:
            try:
                with self.hooks.audit_batch():
                    ticket = self.start(items)
            except Exception as exc:  # noqa: BLE001 - the sink sorts it out
                sink.failed(items, exc)
                return
            for i, res in ticket.immediate:
                sink.result(res)
                if res.outcome is Outcome.RETRY:
                    sink.retry(items[i], max(res.retry_after, 0.05))
            if ticket.batch is not None:
                self._started.append(ticket)
        finally:
            for started in self._started[:-1]:  # all but the newest, being parsed
                self._step_decide(started, sink)
            while len(self._started) > 2:
                self._step_finish(self._started.pop(0), sink)

    def flush(self, sink: Sink) -> None:
        """Finish the batches in flight, oldest first."""
        while self._started:
            self._step_finish(self._started.pop(0), sink)

    def _step_decide(self, ticket: Ticket, sink: Sink) -> None:
        try:
            with self.hooks.audit_batch():
                self.decide(ticket)
        except Exception as exc:  # noqa: BLE001 - the sink sorts it out
            self._started.remove(ticket)  # its claims stay in work/: recovery takes them
            sink.failed(ticket.claimed_items(), exc)

    def _step_finish(self, ticket: Ticket, sink: Sink) -> None:
        try:
            with self.hooks.audit_batch():
                done = self.finish(ticket)
        except Exception as exc:  # noqa: BLE001 - the sink sorts it out
            sink.failed(ticket.claimed_items(), exc)
            return
        for _, res in done:
            sink.result(res)

    # --- one batch at a time (operator commands, tests, recovery) -------------------------------
    def handle_inbox_file(self, path: Path, profile: str) -> Result:
        """A file seen in inbox/ (or inbox/PROFILE/): check, claim, process."""
        return self.handle_batch([(path, profile)])[0]

    def handle_batch(self, items: Sequence[tuple[Path, str]]) -> list[Result]:
        """Files seen in the inbox, processed together: one result per item, in order."""
        self._check_idle()
        ticket = self.start([WorkItem(path, profile, True) for path, profile in items])
        results: dict[int, Result] = dict(ticket.immediate)
        for claim, res in self.finish(ticket):
            results[ticket.claimed[id(claim)]] = res
        return [results[i] for i in range(len(items))]

    def process_claimed(self, path: Path, profile: str, *, approved: bool = False) -> Result:
        """A request already in work/PROFILE/ (an approved one)."""
        self._check_idle()
        claim = self.claimer.load(path, profile)
        if claim is None:
            return Result(Outcome.SKIPPED, path.name[:-4])
        return self._process([claim], approved=approved)[0][1]

    def recover(self) -> list[Result]:
        """Process everything left in work/ by an interrupted run."""
        self._check_idle()  # a batch in flight has its claims in work/ too
        results: list[Result] = []
        if not self.spool.work.is_dir():
            return results
        for profile_dir in sorted(self.spool.work.iterdir()):
            if not profile_dir.is_dir() or profile_dir.name not in self.profiles:
                continue
            claims = []
            for entry in sorted(profile_dir.iterdir()):
                if entry.name.endswith(".req"):
                    claim = self.claimer.load(entry, profile_dir.name)
                    if claim is not None:
                        claims.append(claim)
            for start in range(0, len(claims), RECOVERY_BATCH):
                results += self._recover_batch(claims[start : start + RECOVERY_BATCH])
            # keys whose request is gone: their request was finished; drop them (but not
            # the key of a request still in pending/: an approval was interrupted)
            for entry in sorted(profile_dir.iterdir()):
                if (
                    entry.name.endswith(".key")
                    and not entry.with_name(entry.name[:-4] + ".req").exists()
                    and not self.outcomes.pending_waits(entry.name[:-4])
                ):
                    remove_quietly(entry)
                elif entry.name.endswith((".staged", ".latekey")):
                    remove_quietly(entry)  # .staged: where earlier versions staged
            # outputs staged for requests that are finished now (or were never recorded)
            staging = self.spool.staging_for(profile_dir.name)
            if staging.is_dir():
                for entry in sorted(staging.iterdir()):
                    if entry.name.endswith(".staged"):
                        remove_quietly(entry)
        return results

    def _recover_batch(self, claims: list[Claim]) -> list[Result]:
        """A batch of work/; after an unexpected error, its requests one by one, so that
        one request hitting a bug neither blocks the others nor the daemon's start."""
        try:
            return [res for _, res in self._process(claims)]
        except (OSError, IndexUnavailable):
            raise  # the disk or the index: stop here, all of it is tried later
        except Exception:  # isolated below, request by request
            if len(claims) == 1:
                log.exception(
                    "internal error while recovering %s; it stays in work/", claims[0].path
                )
                return []
        results: list[Result] = []
        for claim in claims:
            fresh = self.claimer.load(claim.path, claim.profile)
            if fresh is not None:
                results += self._recover_batch([fresh])
        return results

    def _check_idle(self) -> None:
        if self._inflight or self._parsing:
            raise RuntimeError("a batch is still in flight; finish it first")

    # --- the steps ------------------------------------------------------------------------------
    def start(self, items: Sequence[WorkItem]) -> Ticket:
        """Step 1: claim and read a batch, and start parsing it."""
        immediate: list[tuple[int, Result]] = []
        claims: list[tuple[int, Claim]] = []
        touched: set[Path] = set()
        names: dict[int, str | None] = {}  # user names by uid, looked up once a batch
        for i, item in enumerate(items):
            found = self.claimer.claim(item.path, item.profile, touched, names)
            if isinstance(found, Claim):
                claims.append((i, found))
            else:
                immediate.append((i, self._unclaimed(found)))
        for folder in touched:
            fsync_dir(folder)
        batch = None
        if claims:
            self.crashpoint("after-claim")
            batch = self._begin([c for _, c in claims])
        return Ticket(items, immediate, {id(c): i for i, c in claims}, batch)

    def _unclaimed(self, found: Refusal | Retry | Skip | KeyDrop) -> Result:
        if isinstance(found, Skip):
            return Result(Outcome.SKIPPED, found.name)
        if isinstance(found, Retry):
            return Result(Outcome.RETRY, found.name, reason=found.reason, retry_after=found.after)
        if isinstance(found, Refusal):
            return self.outcomes.reject_unclaimed(found)
        return self.keys.handle(found)

    def decide(self, ticket: Ticket) -> bool:
        """Step 2: decide a started batch and start signing what the policy accepted; False if
        there was nothing left to decide (decided before, or no batch)."""
        if ticket.batch is None or ticket.batch.parsing is None:
            return False
        self._decide_batch(ticket.batch)
        return True

    def finish(self, ticket: Ticket) -> Done:
        """Step 3: record and deliver a started batch (deciding it first if that is still to do):
        (claim, result) for its requests and for the requests of other batches that
        waited for it."""
        if ticket.batch is None:
            return []
        self.decide(ticket)
        return self._finish_batch(ticket.batch)

    def _process(self, claims: list[Claim], *, approved: bool = False) -> Done:
        """Begin and finish a batch of claimed requests. With no other batch in flight,
        every claim gets its result here; else those that must wait for a batch in
        flight get theirs when that batch is finished."""
        return self._finish_batch(self._decide_batch(self._begin(claims, approved=approved)))

    def _begin(self, claims: list[Claim], *, approved: bool = False) -> Batch:
        """Read; start parsing."""
        batch = Batch(approved=approved)
        for claim in claims:
            try:
                self.claimer.read_request(claim)
                batch.readable.append(claim)
            except CertdropError as exc:
                batch.done.append((claim, self.outcomes.reject(claim, [str(exc)])))
        batch.parsing = self.parser([claim.data for claim in batch.readable])
        self._parsing.append(batch)
        return batch

    def _decide_batch(self, batch: Batch) -> Batch:
        """Decide; start signing what the policy accepted."""
        assert batch.parsing is not None
        try:
            parsed = batch.parsing()
        finally:
            batch.parsing = None
            self._parsing.remove(batch)  # on an error its claims stay in work/
        prepared, refused = self.decider.prepare(batch.readable, parsed)
        batch.done += refused
        # the very same request twice in one batch (dropped under two names): the second
        # waits until the first is decided and recorded, and is then re-delivered its
        # certificate (or refused the same way), exactly as if it had come later
        firsts: dict[str, object] = {}
        fresh = []
        for p in prepared:
            if p.req.fingerprint in firsts:
                batch.after.append(p.claim)
                batch.fingerprints.add(p.req.fingerprint)
                batch.keys.update(p.unique)
            else:
                firsts[p.req.fingerprint] = p
                fresh.append(p)
        prepared = fresh
        self.crashpoint("after-parse")
        if prepared:
            now = batch.now = self.clock.now()
            # what batches in flight may still issue: a request touching it waits for them
            busy_fps = {f for b in self._inflight for f in b.fingerprints}
            busy_keys = {k for b in self._inflight for k in b.keys}
            if busy_fps or busy_keys:
                free = []
                for p in prepared:
                    if p.req.fingerprint in busy_fps or busy_keys.intersection(p.unique):
                        last = self._inflight[-1]
                        last.after.append(p.claim)
                        last.fingerprints.add(p.req.fingerprint)
                        last.keys.update(p.unique)
                    else:
                        free.append(p)
                prepared = free
            decided = self.decider.decide(prepared, now, batch.approved)
            for p, got in zip(prepared, decided, strict=True):
                if isinstance(got, Result):
                    batch.done.append((p.claim, got))
                else:
                    batch.plans.append(got)
                    batch.fingerprints.add(p.req.fingerprint)
                    batch.keys.update(p.unique)
            if batch.plans:
                in_flight = {n for b in self._inflight for n in b.serials}
                batch.signing, batch.serials = self.recorder.start_signing(batch.plans, in_flight)
        self._inflight.append(batch)
        return batch

    def _finish_batch(self, batch: Batch) -> Done:
        """Record and deliver a begun batch, then decide the requests that waited for it."""
        try:
            done = batch.done
            if batch.plans:
                assert batch.now is not None and batch.signing is not None
                results = self.recorder.record(batch.plans, batch.signing, batch.now)
                for plan, res in zip(batch.plans, results, strict=True):
                    done.append((plan.claim, res))
        finally:
            self._inflight.remove(batch)
        if batch.after:
            done += self._process(batch.after, approved=batch.approved)
        return done
