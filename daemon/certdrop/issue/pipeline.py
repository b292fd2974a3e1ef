"""The issuance pipeline: claim -> parse -> policy -> sign -> record -> deliver -> archive.

Every dropped request ends in exactly one of outbox/ (+ archive/), rejected/ or
pending/, also across a crash at any point:

* a request is claimed by renaming it into work/PROFILE/ before anything else;
* outputs are staged in work/ and made durable before the index commit;
* the index commit is the point of no return; after it, a re-run of the same
  claimed file finds its certificate by fingerprint and re-delivers it;
* at start, everything still in work/ is processed again.
"""

from __future__ import annotations

import datetime as dt
import enum
import errno
import hashlib
import logging
import os
import pwd
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..authority.ca import CertificateAuthority, IssueSpec, Staged, Staging
from ..authority.keys import PrivateKey, load_subject_key, subject_key_matches
from ..authority.lint import Linter
from ..authority.serials import random_serial, serial_hex
from ..clock import Clock
from ..config import Settings
from ..errors import CAError, CertdropError, IndexUnavailable, LintError, RequestError
from ..faults import Crashpoint, no_crash
from ..fsutil import (
    atomic_write,
    fsync_dir,
    is_ignored_name,
    is_safe_name,
    open_nofollow,
    read_limited,
    sanitize_name,
    sync_filesystem,
    write_staged,
)
from ..index.store import CertRecord, NewCertificate, PendingRecord, Store
from ..intake.request import ParsedRequest, parse_many
from ..intake.spool import Spool, archive_path, move, place_rejected, remove_quietly
from . import policy
from .delivery import Owner, PasswordChannel, new_password, output_owner, p12_mode

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


AuditHook = Callable[[dict[str, Any]], None]


@dataclass
class PipelineHooks:
    """Ways for the service to hear about what the pipeline did."""

    on_issued: Callable[[str, list[str]], None] | None = None  # serial, superseded serials
    on_pending: Callable[[str, str, str], None] | None = None  # name, profile, subject
    audit: AuditHook | None = None


def _describe_type(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def _owner_of(st: os.stat_result, names: dict[int, str | None] | None = None) -> Owner:
    """Who dropped the file; `names` caches user names for one batch."""
    uid = st.st_uid
    if names is not None and uid in names:
        return Owner(uid=uid, gid=st.st_gid, name=names[uid])
    try:
        name: str | None = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = None
    if names is not None:
        names[uid] = name
    return Owner(uid=uid, gid=st.st_gid, name=name)


@dataclass
class _Claim:
    """A request claimed into work/PROFILE/."""

    path: Path
    name: str  # NAME (without .req)
    profile: str
    owner: Owner
    st: os.stat_result
    data: bytes = b""
    key_path: Path | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class _Prepared:
    index: int
    claim: _Claim
    req: ParsedRequest


@dataclass
class _Plan:
    """A request the policy accepted: what to sign."""

    index: int
    claim: _Claim
    req: ParsedRequest
    decision: policy.Decision
    spec: IssueSpec
    subject_key: PrivateKey | None  # dropped beside the request
    was_pending: bool = False
    key_type: str = ""  # a key to make with the certificate (server-side generation)
    password: str = ""  # for the p12 of a key made here


@dataclass
class _Signed:
    plan: _Plan
    staged: Staged
    serial: str
    password: str = ""


RECOVERY_BATCH = 256

ParseOutcome = list["ParsedRequest | RequestError"]

Parser = Callable[[Sequence[bytes]], Callable[[], ParseOutcome]]
"""Starts parsing a batch of dropped files (in this process or in a pool); the returned
function waits for the outcome."""

SignOutcome = list["Staged | LintError"]

Signer = Callable[
    [Sequence[IssueSpec], Sequence[Staging], "Linter | None"], Callable[[], SignOutcome]
]
"""Starts signing and staging a batch of specs (in this process or in a pool) and
returns the way to wait for the outcome: a Staged or a LintError each."""

Done = list[tuple[_Claim, Result]]


@dataclass
class _Batch:
    """Claimed requests from `_begin` (read; parsing started) through `_decide` (decided;
    signing started) to `_finish`."""

    done: Done = field(default_factory=list)
    readable: list[_Claim] = field(default_factory=list)
    parsing: Callable[[], ParseOutcome] | None = None  # None once decided
    plans: list[_Plan] = field(default_factory=list)
    signing: Callable[[], SignOutcome] | None = None
    now: dt.datetime | None = None
    approved: bool = False
    # the same request twice in this batch, and requests of later batches that touch
    # what this one is issuing: decided once this batch is recorded
    after: list[_Claim] = field(default_factory=list)
    # what this batch may still change in the index: request fingerprints, unique keys
    fingerprints: set[str] = field(default_factory=set)
    keys: set[tuple[str, str]] = field(default_factory=set)
    serials: set[int] = field(default_factory=set)


@dataclass
class Ticket:
    """A batch of inbox files handed to `Pipeline.start`."""

    immediate: list[tuple[int, Result]]  # index in the items: not claimed (skipped, retry, ...)
    claimed: dict[int, int]  # id(claim) -> index in the items
    batch: _Batch | None


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        spool: Spool,
        store: Store,
        ca: CertificateAuthority,
        clock: Clock,
        *,
        linter: Linter | None,
        password_channel: PasswordChannel,
        hooks: PipelineHooks | None = None,
    ) -> None:
        self.settings = settings
        self.spool = spool
        self.store = store
        self.ca = ca
        self.clock = clock
        self.linter = linter if settings.policy.lint else None
        self.password_channel = password_channel
        self.hooks = hooks or PipelineHooks()
        self.max_bytes = settings.watch.max_request_bytes
        self.signer: Signer = self._sign_here
        self.parser: Parser = lambda datas: lambda: parse_many(datas)
        # fault injection for the crash tests (faults.py); does nothing in production
        self.crashpoint: Crashpoint = no_crash
        # batches begun and not decided yet (being parsed), and batches decided and not
        # finished yet (being signed), oldest first (in the daemon: one being parsed, at
        # most two being signed)
        self._parsing: list[_Batch] = []
        self._inflight: list[_Batch] = []

    def _sign_here(
        self, specs: Sequence[IssueSpec], stagings: Sequence[Staging], linter: Linter | None
    ) -> Callable[[], SignOutcome]:
        return lambda: self.ca.issue_and_stage(
            specs, stagings, linter.certificate if linter else None
        )

    # --- entry points --------------------------------------------------------------------------
    def handle_inbox_file(self, path: Path, profile: str) -> Result:
        """A file seen in inbox/ (or inbox/PROFILE/): check, claim, process."""
        return self.handle_batch([(path, profile)])[0]

    def handle_batch(self, items: Sequence[tuple[Path, str]]) -> list[Result]:
        """Files seen in the inbox, processed together: one result per item, in order.

        Claims are renamed first (their folders fsynced once), requests are parsed and
        decided one by one, certificates are signed, staged and made durable together
        (one syncfs), recorded in one index transaction, then delivered and archived
        with one fsync per folder. A crash anywhere leaves each request in inbox/,
        work/ (processed again at start) or its final place.
        """
        self.flush_check()
        ticket = self.start(items)
        results: dict[int, Result] = dict(ticket.immediate)
        for claim, res in self.finish(ticket):
            results[ticket.claimed[id(claim)]] = res
        return [results[i] for i in range(len(items))]

    def start(self, items: Sequence[tuple[Path, str]]) -> Ticket:
        """Claim and read a batch, and start parsing it (in the pool).

        Then `decide` decides it and starts signing it, and `finish` records and
        delivers it; meanwhile the caller may start, decide and finish other batches
        (the daemon keeps three in flight: Daemon._handle). Requests of a batch decided
        while another one is being signed that touch what that one is issuing (the
        same request, the same unique subject) wait until it is recorded, so every
        decision sees the index as if the batches had run one after the other.
        """
        immediate: list[tuple[int, Result]] = []
        claims: list[tuple[int, _Claim]] = []
        touched: set[Path] = set()
        names: dict[int, str | None] = {}  # user names by uid, looked up once a batch
        for i, (path, profile) in enumerate(items):
            got = self._precheck_and_claim(path, profile, touched, names)
            if isinstance(got, _Claim):
                claims.append((i, got))
            else:
                immediate.append((i, got))
        for folder in touched:
            fsync_dir(folder)
        batch = None
        if claims:
            self.crashpoint("after-claim")
            batch = self._begin([c for _, c in claims])
        return Ticket(immediate, {id(c): i for i, c in claims}, batch)

    def decide(self, ticket: Ticket) -> bool:
        """Decide a started batch and start signing what the policy accepted; False if
        there was nothing left to decide (decided before, or no batch)."""
        if ticket.batch is None or ticket.batch.parsing is None:
            return False
        self._decide_batch(ticket.batch)
        return True

    def finish(self, ticket: Ticket) -> Done:
        """Record and deliver a started batch (deciding it first if that is still to do):
        (claim, result) for its requests and for the requests of other batches that
        waited for it."""
        if ticket.batch is None:
            return []
        self.decide(ticket)
        return self._finish(ticket.batch)

    def flush_check(self) -> None:
        if self._inflight or self._parsing:
            raise RuntimeError("a batch is still in flight; finish it first")

    def _precheck_and_claim(
        self, path: Path, profile: str, touched: set[Path], names: dict[int, str | None]
    ) -> Result | _Claim:
        filename = path.name
        if is_ignored_name(filename):
            return Result(Outcome.SKIPPED, filename)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return Result(Outcome.SKIPPED, filename)
        if filename.endswith(".key") and stat.S_ISREG(st.st_mode):
            return self._handle_key(path, profile, st)
        if filename.endswith(".key") and filename != ".key":
            # a symlink, FIFO, device, ... named like a key: moved aside as it is, unopened
            return self._reject_unclaimed(
                path,
                sanitize_name(filename),
                st,
                f"{filename!r} is {_describe_type(st.st_mode)}, not a regular file; "
                "drop the key file itself (PEM, mode 0600)",
            )
        stem = filename[:-4] if filename.endswith(".req") else filename
        if not filename.endswith(".req") or filename == ".req":
            if stat.S_ISDIR(st.st_mode):
                if filename in self.settings.profiles or path.parent != self.spool.inbox:
                    return Result(Outcome.SKIPPED, filename)
                known = ", ".join(
                    p for p in self.settings.profiles if p != self.settings.policy.default_profile
                )
                return self._reject_unclaimed(
                    path,
                    sanitize_name(filename),
                    st,
                    f"inbox/{filename}/ is not a profile folder; "
                    + (
                        f"profile folders are: {known}"
                        if known
                        else "this CA has only the default profile"
                    )
                    + "; drop requests directly in inbox/ or in a profile folder",
                )
            return self._reject_unclaimed(
                path,
                sanitize_name(stem),
                st,
                f"{filename!r} is not a request: only NAME.req files (and NAME.key beside them) "
                "are accepted in the inbox",
            )
        if not is_safe_name(stem):
            safe = sanitize_name(stem)
            return self._reject_unclaimed(
                path,
                safe,
                st,
                f"the name {filename!r} is not allowed: use only letters, digits, '.', '_' and '-' "
                f"(no spaces, no leading dot, at most 128 characters), for example {safe}.req",
            )
        # What the file is (symlink, FIFO, hard link, too big, ...) is judged after the
        # claim, on what the rename actually moved into work/: judged here, a file
        # swapped in between would be moved to rejected/ under the other's reason.
        # a key being dropped beside the request right now: let it finish first
        key_src = path.with_name(stem + ".key")
        key_wait, key_there = self._key_still_arriving(key_src)
        if key_wait > 0:
            return Result(
                Outcome.RETRY, stem, reason="its key is still arriving", retry_after=key_wait
            )
        target = self.spool.claimed_path(profile, filename)
        if os.path.lexists(target):
            return Result(
                Outcome.RETRY,
                stem,
                reason="a request with this name is in progress",
                retry_after=0.5,
            )
        try:
            os.rename(path, target)
        except FileNotFoundError:
            return Result(Outcome.SKIPPED, stem)
        touched.add(self.spool.work_for(profile))
        touched.add(path.parent)
        self.crashpoint("mid-claim")
        # the key beside it, if any, is claimed with it (a key that comes only after
        # the claim, also one that came since the look above, is a late key:
        # `_handle_key` after the next scan)
        key_path = None
        if key_there:
            try:
                kst = os.lstat(key_src)
                if stat.S_ISREG(kst.st_mode):
                    key_path = self.spool.claimed_path(profile, stem + ".key")
                    os.rename(key_src, key_path)
            except FileNotFoundError:
                key_path = None
        return self._claim_of(target, profile, names, key_path) or Result(Outcome.SKIPPED, stem)

    def _load_claim(
        self, path: Path, profile: str, names: dict[int, str | None] | None = None
    ) -> _Claim | None:
        """The claim of `path` in work/PROFILE/, with NAME.key beside it if there is one
        (recovery, approval)."""
        key_path = path.with_name(path.name[:-4] + ".key")
        return self._claim_of(path, profile, names, key_path if os.path.lexists(key_path) else None)

    def _claim_of(
        self,
        path: Path,
        profile: str,
        names: dict[int, str | None] | None,
        key_path: Path | None,
    ) -> _Claim | None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        return _Claim(
            path=path,
            name=path.name[:-4],
            profile=profile,
            owner=_owner_of(st, names),
            st=st,
            key_path=key_path,
        )

    def recover(self) -> list[Result]:
        """Process everything left in work/ by an interrupted run."""
        self.flush_check()  # a batch in flight has its claims in work/ too
        results: list[Result] = []
        if not self.spool.work.is_dir():
            return results
        for profile_dir in sorted(self.spool.work.iterdir()):
            if not profile_dir.is_dir() or profile_dir.name not in self.settings.profiles:
                continue
            claims = []
            for entry in sorted(profile_dir.iterdir()):
                if entry.name.endswith(".req"):
                    claim = self._load_claim(entry, profile_dir.name)
                    if claim is not None:
                        claims.append(claim)
            for start in range(0, len(claims), RECOVERY_BATCH):
                results += self._recover_batch(claims[start : start + RECOVERY_BATCH])
            # keys whose request is gone: their request was finished; drop them
            for entry in sorted(profile_dir.iterdir()):
                if (
                    entry.name.endswith(".key")
                    and not entry.with_name(entry.name[:-4] + ".req").exists()
                ):
                    remove_quietly(entry)
                elif entry.name.endswith(
                    (".staged", ".latekey")
                ):  # .staged: where earlier versions staged
                    remove_quietly(entry)
            # outputs staged for requests that are finished now (or were never recorded)
            staging = self.spool.staging_for(profile_dir.name)
            if staging.is_dir():
                for entry in sorted(staging.iterdir()):
                    if entry.name.endswith(".staged"):
                        remove_quietly(entry)
        return results

    def _recover_batch(self, claims: list[_Claim]) -> list[Result]:
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
            fresh = self._load_claim(claim.path, claim.profile)
            if fresh is not None:
                results += self._recover_batch([fresh])
        return results

    def process_claimed(self, path: Path, profile_name: str, *, approved: bool = False) -> Result:
        self.flush_check()
        claim = self._load_claim(path, profile_name)
        if claim is None:
            return Result(Outcome.SKIPPED, path.name[:-4])
        return self._process([claim], approved=approved)[0][1]

    # --- the main path --------------------------------------------------------------------------
    def _process(self, claims: list[_Claim], *, approved: bool = False) -> Done:
        """Begin and finish a batch of claimed requests. With no other batch in flight,
        every claim gets its result here; else those that must wait for a batch in
        flight get theirs when that batch is finished."""
        return self._finish(self._decide_batch(self._begin(claims, approved=approved)))

    def _begin(self, claims: list[_Claim], *, approved: bool = False) -> _Batch:
        """Read; start parsing."""
        batch = _Batch(approved=approved)
        for claim in claims:
            try:
                problem = self._unsafe(claim.st)
                if problem:
                    raise RequestError(problem)
                claim.data = self._read(claim.path, claim.st)
                batch.readable.append(claim)
            except CertdropError as exc:
                batch.done.append((claim, self._reject(claim, [str(exc)])))
        batch.parsing = self.parser([claim.data for claim in batch.readable])
        self._parsing.append(batch)
        return batch

    def _decide_batch(self, batch: _Batch) -> _Batch:
        """Decide; start signing what the policy accepted."""
        assert batch.parsing is not None
        try:
            parsed = batch.parsing()
        finally:
            batch.parsing = None
            self._parsing.remove(batch)  # on an error its claims stay in work/
        done = batch.done
        prepared: list[_Prepared] = []
        for claim, req in zip(batch.readable, parsed, strict=True):
            if isinstance(req, RequestError):
                done.append((claim, self._reject(claim, [str(req)])))
                continue
            if req.kind == "enrollment":
                # one enrollment file asks for one new key; the same text dropped again
                # later is a new request, while a crash-restart sees the same inode
                st = claim.st
                ident = f"|{st.st_dev}:{st.st_ino}:{st.st_mtime_ns}".encode()
                req = replace(req, fingerprint=hashlib.sha256(claim.data + ident).hexdigest())
            prepared.append(_Prepared(len(prepared), claim, req))
        # the very same request twice in one batch (dropped under two names): the second
        # waits until the first is decided and recorded, and is then re-delivered its
        # certificate (or refused the same way), exactly as if it had come later
        unique = {
            id(p): policy.unique_keys(p.req, self.settings.profiles[p.claim.profile])
            for p in prepared
        }
        firsts: dict[str, _Prepared] = {}
        for p in prepared:
            if p.req.fingerprint in firsts:
                batch.after.append(p.claim)
                batch.fingerprints.add(p.req.fingerprint)
                batch.keys.update(unique[id(p)])
            else:
                firsts[p.req.fingerprint] = p
        prepared = list(firsts.values())
        self.crashpoint("after-parse")
        if prepared:
            now = batch.now = self.clock.now()
            # what batches in flight may still issue: a request touching it waits for them
            busy_fps = {f for b in self._inflight for f in b.fingerprints}
            busy_keys = {k for b in self._inflight for k in b.keys}
            if busy_fps or busy_keys:
                free = []
                for p in prepared:
                    if p.req.fingerprint in busy_fps or busy_keys.intersection(unique[id(p)]):
                        last = self._inflight[-1]
                        last.after.append(p.claim)
                        last.fingerprints.add(p.req.fingerprint)
                        last.keys.update(unique[id(p)])
                    else:
                        free.append(p)
                prepared = free
            with self.store.begin() as conn:
                previous = self.store.by_fingerprints(conn, [p.req.fingerprint for p in prepared])
                pending = self.store.pending_by_names(conn, [p.claim.name for p in prepared])
                keys = {k for p in prepared for k in unique[id(p)]}
                existing = self.store.existing_valid(conn, keys, now)
            seen: dict[tuple[str, str], list[policy.ExistingCert]] = {
                k: [policy.ExistingCert(r.serial, r.not_after, r.profile, r.subject) for r in v]
                for k, v in existing.items()
            }
            for p in prepared:
                try:
                    got = self._decide(p, previous, pending, seen, now, batch.approved)
                except IndexUnavailable:
                    raise  # the server's trouble, not the request's: kept, tried again later
                except CertdropError as exc:
                    got = self._reject(p.claim, [str(exc)])
                if isinstance(got, Result):
                    done.append((p.claim, got))
                else:
                    batch.plans.append(got)
                    batch.fingerprints.add(p.req.fingerprint)
                    batch.keys.update(unique[id(p)])
            if batch.plans:
                self._start_signing(batch)
        self._inflight.append(batch)
        return batch

    def _finish(self, batch: _Batch) -> Done:
        """Record and deliver a begun batch, then decide the requests that waited for it."""
        try:
            done = batch.done
            if batch.plans:
                assert batch.now is not None
                for plan, res in zip(batch.plans, self._issue(batch), strict=True):
                    done.append((plan.claim, res))
        finally:
            self._inflight.remove(batch)
        if batch.after:
            done += self._process(batch.after, approved=batch.approved)
        return done

    def _decide(
        self,
        p: _Prepared,
        previous: dict[str, list[CertRecord]],
        pending: dict[str, PendingRecord],
        seen: dict[tuple[str, str], list[policy.ExistingCert]],
        now: dt.datetime,
        approved: bool,
    ) -> Result | _Plan:
        claim, req = p.claim, p.req
        profile = self.settings.profiles[claim.profile]
        for rec in previous.get(req.fingerprint, ()):
            if rec.status == "revoked":
                return self._reject(
                    claim,
                    [
                        f"this exact request already got certificate {rec.serial}, which was revoked "
                        f"({rec.revocation_reason or 'unspecified'}); make a new key and a new request"
                    ],
                )
            if rec.status == "valid" and rec.not_after > now:
                return self._redeliver(claim, rec.serial, rec.der, rec.key_generated)

        pend = pending.get(claim.name)
        if pend is not None and pend.fingerprint == req.fingerprint and pend.decision == "approved":
            approved = True
        elif (
            pend is not None
            and pend.decision is None
            and os.path.lexists(self.spool.pending / f"{claim.name}.req")
        ):
            return self._reject(
                claim,
                [
                    f"a request named {claim.name}.req is already waiting for the CA operator's "
                    "approval; drop this one under another name"
                ],
            )

        subject_key: PrivateKey | None = None
        if claim.key_path is not None:
            if req.kind == "enrollment":
                return self._reject(
                    claim,
                    [
                        f"{claim.name}.key was dropped with a key-generation request; certdrop makes "
                        "the key itself for those — drop either a CSR with its key, or the TOML alone"
                    ],
                )
            subject_key = self._read_key(claim)
            if not subject_key_matches(subject_key, req.spki):
                return self._reject(
                    claim,
                    [
                        f"{claim.name}.key does not belong to {claim.name}.req (the public keys differ); "
                        "drop the key the request was made with"
                    ],
                )

        ctx = policy.PolicyContext(
            now=now,
            ca_not_after=self.ca.not_after,
            owner=claim.owner.name,
            existing=seen,
            approved=approved,
        )
        decision = policy.evaluate(req, profile, ctx)
        if not decision.accepted:
            return self._reject(claim, list(decision.reasons))
        if decision.needs_approval:
            return self._to_pending(claim, req, now)

        public_key: Any = None  # an enrollment's key is made by the signer
        key_type = password = ""
        if req.kind == "enrollment":
            key_type = req.enrollment_key_type or profile.key_type
            password = new_password()
        else:
            public_key = req.spki  # the CSR's key, as DER: the signer loads it
        assert decision.not_before is not None and decision.not_after is not None
        spec = IssueSpec(
            subject=decision.subject,
            public_key=public_key,
            not_before=decision.not_before,
            not_after=decision.not_after,
            key_usage=profile.key_usage,
            extended_key_usage=profile.extended_key_usage,
            emails=decision.emails,
            dns_names=decision.dns_names,
            serial=random_serial(),
            crl_distribution_point=self.settings.crl.distribution_point,
        )
        # later requests of this batch see this one as a valid certificate
        for key in policy.unique_keys(req, profile):
            seen.setdefault(key, []).append(
                policy.ExistingCert(serial_hex(spec.serial), decision.not_after, claim.profile, "")
            )
        for serial in decision.supersedes:  # a renewed certificate is renewed once
            for lst in seen.values():
                lst[:] = [e for e in lst if e.serial != serial]
        return _Plan(
            p.index,
            claim,
            req,
            decision,
            spec,
            subject_key,
            was_pending=pend is not None,
            key_type=key_type,
            password=password,
        )

    def _start_signing(self, batch: _Batch) -> None:
        plans = batch.plans
        # serials: random, checked against the index in one query and against the
        # batches in flight
        with self.store.begin() as conn:
            taken = self.store.existing_serials(conn, [serial_hex(p.spec.serial) for p in plans])
        used: set[int] = {n for b in self._inflight for n in b.serials}
        for plan in plans:
            while serial_hex(plan.spec.serial) in taken or plan.spec.serial in used:
                plan.spec = replace(plan.spec, serial=random_serial())
            used.add(plan.spec.serial)
            batch.serials.add(plan.spec.serial)
        stagings = []
        for plan in plans:
            claim = plan.claim
            cn = next((v for n, v in plan.decision.subject if n == "CN"), claim.name)
            stagings.append(
                Staging(
                    cer_path=self.spool.staged_path(claim.profile, claim.name, ".cer"),
                    owner=output_owner(claim.owner),
                    p12_path=self.spool.staged_path(claim.profile, claim.name, ".p12"),
                    p12_mode=p12_mode(claim.owner),
                    key_type=plan.key_type,
                    password=plan.password,
                    friendly_name=cn,
                    p12_preset=self.settings.profile_pkcs12_encryption(claim.profile),
                )
            )
        batch.signing = self.signer([p.spec for p in plans], stagings, self.linter)

    def _issue(self, batch: _Batch) -> list[Result]:
        plans, now = batch.plans, batch.now
        assert batch.signing is not None and now is not None
        signed = batch.signing()
        self.crashpoint("after-sign")
        results: dict[int, Result] = {}
        ready: list[_Signed] = []
        for plan, out in zip(plans, signed, strict=True):
            if isinstance(out, LintError):
                results[plan.index] = self._reject(plan.claim, [str(out)])
                continue
            ready.append(self._staged(plan, out))
        if ready:
            sync_filesystem(self.spool.root)
            self.crashpoint("after-stage")
            self._record(ready, now)
            self.crashpoint("after-record")
            for item in ready:
                p12 = item.staged.p12 or item.plan.subject_key is not None
                self._publish_outputs(item.plan.claim, durable=False, p12=p12)
            fsync_dir(self.spool.outbox)
            self.crashpoint("after-deliver")
            profiles: set[str] = set()  # claims are in work/PROFILE/
            for item in ready:
                claim = item.plan.claim
                if claim.key_path is not None:
                    remove_quietly(claim.key_path)  # the key now lives only inside the p12
                target = archive_path(self.spool, claim.path.name, now)
                os.rename(claim.path, target)
                profiles.add(claim.profile)
            fsync_dir(self.spool.archive)
            for profile in profiles:
                fsync_dir(self.spool.work_for(profile))
            self.crashpoint("after-archive")
            for item in ready:
                results[item.plan.index] = self._announce(item)
        return [results[p.index] for p in plans]

    def _staged(self, plan: _Plan, staged: Staged) -> _Signed:
        """The signer staged the .cer (and the p12 of a key it made); a key dropped
        beside the request is bundled here (not yet durable: one syncfs covers the batch)."""
        password = plan.password
        if plan.subject_key is not None:
            claim = plan.claim
            password = new_password()
            cn = next((v for n, v in plan.decision.subject if n == "CN"), claim.name)
            p12 = self.ca.pkcs12_bundle(
                plan.subject_key,
                x509.load_der_x509_certificate(staged.der),
                cn,
                password,
                self.settings.profile_pkcs12_encryption(claim.profile),
            )
            write_staged(
                self.spool.staged(claim.profile, claim.name, ".p12"),
                p12,
                p12_mode(claim.owner),
                output_owner(claim.owner),
            )
        plan.password = ""
        return _Signed(plan, staged, serial_hex(plan.spec.serial), password)

    def _record(self, ready: list[_Signed], now: dt.datetime) -> None:
        """One index transaction for the whole batch: the point of no return."""
        records: list[NewCertificate] = []
        for item in ready:
            plan, staged = item.plan, item.staged
            decision = plan.decision
            records.append(
                NewCertificate(
                    serial=item.serial,
                    subject=staged.subject,
                    common_name=next((v for n, v in decision.subject if n == "CN"), ""),
                    email=decision.emails[0] if decision.emails else "",
                    not_before=staged.not_before,
                    not_after=staged.not_after,
                    profile=plan.claim.profile,
                    request_name=plan.claim.name,
                    request_fingerprint=plan.req.fingerprint,
                    issued_at=now,
                    der=staged.der,
                    attrs=list(decision.subject),
                    owner=plan.claim.owner.name or str(plan.claim.owner.uid),
                    key_generated=plan.req.kind == "enrollment",
                )
            )
        with self.store.begin() as conn:
            wrote_password = False
            for item, record in zip(ready, records, strict=True):
                if item.password:
                    # durable before (file) or inside (mail queue) the commit: a crash
                    # can never leave a delivered p12 whose password is lost
                    self.password_channel(
                        conn,
                        item.plan.claim.name,
                        record.email,
                        item.serial,
                        item.password,
                        item.plan.claim.notes,
                    )
                    wrote_password = True
            self.store.add_certificates(conn, records)
            for item in ready:
                if item.plan.decision.supersedes:
                    self.store.supersede(conn, item.plan.decision.supersedes, item.serial)
            pending_names = [i.plan.claim.name for i in ready if i.plan.was_pending]
            if pending_names:
                self.store.remove_pending_many(conn, pending_names)
            self.store.log_many(
                conn,
                [
                    {
                        "at": now,
                        "name": i.plan.claim.name,
                        "outcome": "issued",
                        "profile": i.plan.claim.profile,
                        "fingerprint": i.plan.req.fingerprint,
                        "serial": i.serial,
                        "detail": "; ".join(i.plan.decision.notes),
                    }
                    for i in ready
                ],
            )
            if wrote_password:
                sync = getattr(self.password_channel, "sync", None)
                if sync is not None:
                    sync()
        for item in ready:
            item.password = ""

    def _announce(self, item: _Signed) -> Result:
        claim, decision = item.plan.claim, item.plan.decision
        notes = list(decision.notes) + claim.notes
        subject = item.staged.subject
        log.info(
            "issued %s.req serial=%s profile=%s subject=%s%s",
            claim.name,
            item.serial,
            claim.profile,
            subject,
            f" ({'; '.join(notes)})" if notes else "",
        )
        self._audit(
            "issued",
            claim,
            serial=item.serial,
            subject=subject,
            supersedes=list(decision.supersedes),
            p12=item.staged.p12 or item.plan.subject_key is not None,
        )
        if self.hooks.on_issued is not None:
            self.hooks.on_issued(item.serial, list(decision.supersedes))
        return Result(Outcome.ISSUED, claim.name, serial=item.serial)

    def _publish_outputs(
        self, claim: _Claim, *, durable: bool = True, p12: bool | None = None
    ) -> None:
        """Move the staged outputs to outbox/: the .cer and the .p12 if there is one (`p12`
        says whether, when known; else it is looked for), the .cer last: it signals
        "done" to watchers."""
        for suffix in (".p12", ".cer"):
            staged = self.spool.staged_path(claim.profile, claim.name, suffix)
            if p12 is None:
                there = os.path.exists(staged)
            else:
                there = suffix == ".cer" or p12
            if there:
                os.rename(staged, self.spool.outbox_path(claim.name + suffix))
                if suffix == ".p12":
                    self.crashpoint("mid-deliver")
        if durable:
            fsync_dir(self.spool.outbox)
            fsync_dir(claim.path.parent)

    def _redeliver(self, claim: _Claim, serial: str, der: bytes, key_generated: bool) -> Result:
        """The request already has its certificate: deliver that one again."""
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
        key_problem = ""
        if (
            claim.key_path is not None
            and not key_generated
            and not self.spool.staged(claim.profile, claim.name, ".p12").exists()
        ):
            # the same request again, now with its key: the p12 for the certificate it got
            key_problem = self._bundle_for_existing(claim, serial, der)
        self.crashpoint("after-redeliver-stage")
        self._publish_outputs(claim)
        if claim.key_path is not None:
            remove_quietly(claim.key_path)
        if key_problem:
            self._key_refusal_reason(claim.name, claim.profile, key_problem, now)
        with self.store.begin() as conn:
            self.store.log(
                conn, now, claim.name, "redelivered", profile=claim.profile, serial=serial
            )
        self._archive(claim, now)
        log.info(
            "redelivered %s.req serial=%s (this request was already issued)", claim.name, serial
        )
        self._audit("redelivered", claim, serial=serial)
        return Result(Outcome.REDELIVERED, claim.name, serial=serial)

    # --- refusals, pending, archive -------------------------------------------------------------
    def _reject(self, claim: _Claim, reasons: list[str]) -> Result:
        now = self.clock.now()
        text = _reason_text(claim.name, claim.profile, reasons)
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
            self.store.log(
                conn, now, claim.name, "rejected", profile=claim.profile, detail=" | ".join(reasons)
            )
            self.store.remove_pending(conn, claim.name)
        log.info("rejected %s.req profile=%s: %s", claim.name, claim.profile, " | ".join(reasons))
        self._audit("rejected", claim, reasons=reasons)
        return Result(Outcome.REJECTED, claim.name, reason=text)

    def _reject_unclaimed(self, path: Path, name: str, st: os.stat_result, reason: str) -> Result:
        """Refuse something in the inbox without opening it (moved as it is)."""
        now = self.clock.now()
        text = _reason_text(name, "", [reason])
        try:
            place_rejected(self.spool, path, name, text, now)
        except FileNotFoundError:
            return Result(Outcome.SKIPPED, name)
        with self.store.begin() as conn:
            self.store.log(conn, now, name, "rejected", detail=reason)
        log.info("rejected %r: %s", path.name, reason)
        if self.hooks.audit:
            self.hooks.audit(
                {"event": "rejected", "name": name, "reasons": [reason], "uid": st.st_uid}
            )
        return Result(Outcome.REJECTED, name, reason=text)

    def _to_pending(self, claim: _Claim, req: ParsedRequest, now: dt.datetime) -> Result:
        if claim.key_path is not None:
            # a private key does not wait in pending/; the holder drops it again after approval
            remove_quietly(claim.key_path)
            claim.notes.append(
                "the dropped key was deleted; it is not kept while the request waits"
            )
        subject = ", ".join(f"{n}={v}" for n, v in req.subject)
        target = self.spool.pending / f"{claim.name}.req"
        with self.store.begin() as conn:
            self.store.add_pending(
                conn,
                claim.name,
                claim.profile,
                req.fingerprint,
                claim.owner.name or "",
                claim.owner.uid,
                now,
                subject,
            )
            self.store.log(
                conn, now, claim.name, "pending", profile=claim.profile, fingerprint=req.fingerprint
            )
        self.crashpoint("mid-pending")
        move(claim.path, target)
        log.info(
            "pending %s.req profile=%s subject=%s: waiting for 'certdrop approve %s'",
            claim.name,
            claim.profile,
            subject,
            claim.name,
        )
        self._audit("pending", claim, subject=subject)
        if self.hooks.on_pending is not None:
            self.hooks.on_pending(claim.name, claim.profile, subject)
        return Result(Outcome.PENDING, claim.name)

    def _archive(self, claim: _Claim, now: dt.datetime) -> None:
        move(claim.path, archive_path(self.spool, claim.path.name, now))

    # --- operator decisions ---------------------------------------------------------------------
    def approve(self, name: str) -> Result:
        """Issue a pending request (the approval is recorded before the move)."""
        now = self.clock.now()
        with self.store.begin() as conn:
            rec = self.store.get_pending(conn, name)
            if rec is None:
                raise CertdropError(f"no pending request named {name}; see 'certdrop status'")
            self.store.decide_pending(conn, name, "approved", "", now)
            self.store.log(
                conn, now, name, "approved", profile=rec.profile, fingerprint=rec.fingerprint
            )
        src = self.spool.pending / f"{name}.req"
        target = self.spool.claimed_path(rec.profile, f"{name}.req")
        if os.path.lexists(target):
            raise CertdropError(
                f"a request named {name}.req is being processed right now; try again"
            )
        try:
            move(src, target)
        except FileNotFoundError:
            raise CertdropError(
                f"pending/{name}.req is missing; the request cannot be approved"
            ) from None
        return self.process_claimed(target, rec.profile, approved=True)

    def deny(self, name: str, reason: str) -> Result:
        now = self.clock.now()
        with self.store.begin() as conn:
            rec = self.store.get_pending(conn, name)
            if rec is None:
                raise CertdropError(f"no pending request named {name}; see 'certdrop status'")
            self.store.decide_pending(conn, name, "denied", reason, now)
        src = self.spool.pending / f"{name}.req"
        text = _reason_text(name, rec.profile, [f"the CA operator denied the request: {reason}"])
        if os.path.lexists(src):
            place_rejected(self.spool, src, name, text, now)
        with self.store.begin() as conn:
            self.store.remove_pending(conn, name)
            self.store.log(conn, now, name, "denied", profile=rec.profile, detail=reason)
        log.info("denied %s.req: %s", name, reason)
        if self.hooks.audit:
            self.hooks.audit({"event": "denied", "name": name, "reason": reason})
        return Result(Outcome.REJECTED, name, reason=text)

    # --- keys dropped beside requests ------------------------------------------------------------
    def _handle_key(self, path: Path, profile: str, st: os.stat_result) -> Result:
        stem = path.name[:-4]
        if not is_safe_name(stem):
            return self._refuse_key(path, sanitize_name(stem), "the key file's name is not allowed")
        # the request beside it (or already claimed) takes the key with it
        if os.path.lexists(path.with_name(stem + ".req")) or os.path.lexists(
            self.spool.claimed_path(profile, stem + ".req")
        ):
            return Result(Outcome.SKIPPED, stem)
        problem = self._unsafe(st)
        if problem:
            return self._refuse_key(path, stem, problem)
        now = self.clock.now()
        window = dt.timedelta(minutes=self.settings.pkcs12.orphan_key_minutes)
        # a key that arrives shortly after its request: build the p12 for that certificate
        with self.store.begin() as conn:
            recent = [
                r
                for r in self.store.find(conn, stem)
                if r.request_name == stem
                and r.status == "valid"
                and r.not_after > now
                and not r.key_generated
                and now - r.issued_at <= window
                and r.profile == profile
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
        return self._refuse_key(
            path,
            stem,
            f"{stem}.key was dropped without {stem}.req and no request came within "
            f"{self.settings.pkcs12.orphan_key_minutes:g} minutes; the key was deleted, not stored. "
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
        claim = _Claim(
            path=claimed, name=stem, profile=profile, owner=_owner_of(st), st=st, key_path=claimed
        )
        problem = self._bundle_for_existing(claim, serial, der)
        remove_quietly(claimed)
        if problem:
            return self._key_refusal_reason(stem, profile, problem, now)
        log.info("delivered %s.p12 for serial=%s (key dropped after its request)", stem, serial)
        return Result(Outcome.REDELIVERED, stem, serial=serial)

    def _bundle_for_existing(self, claim: _Claim, serial: str, der: bytes) -> str:
        """Deliver NAME.p12 for a certificate already issued, from the key in claim.key_path.

        Returns "" when done, else why not (the key does not belong, cannot be read).
        """
        now = self.clock.now()
        stem, profile = claim.name, claim.profile
        try:
            key = self._read_key(claim)
            cert = x509.load_der_x509_certificate(der)
            if not subject_key_matches(key, cert.public_key()):
                raise CAError(
                    f"{stem}.key does not belong to the certificate issued for {stem}.req; "
                    "the key was deleted"
                )
        except CertdropError as exc:
            return str(exc)
        password = new_password()
        cn = next((a.value for a in cert.subject if a.oid == x509.NameOID.COMMON_NAME), stem)
        p12 = self.ca.pkcs12_bundle(
            key, cert, str(cn), password, self.settings.profile_pkcs12_encryption(profile)
        )
        staged = self.spool.staged(profile, stem, ".p12")
        atomic_write(staged, p12, p12_mode(claim.owner), owner=output_owner(claim.owner))
        email = next(
            (str(a.value) for a in cert.subject if a.oid == x509.NameOID.EMAIL_ADDRESS), ""
        )
        with self.store.begin() as conn:
            self.password_channel(conn, stem, email, serial, password, claim.notes)
            sync = getattr(self.password_channel, "sync", None)
            if sync is not None:
                sync()
            self.store.log(conn, now, stem, "p12", profile=profile, serial=serial)
        os.rename(staged, self.spool.outbox / f"{stem}.p12")
        fsync_dir(self.spool.outbox)
        return ""

    def _refuse_key(self, path: Path, stem: str, reason: str) -> Result:
        remove_quietly(path)  # a private key is never kept in rejected/ or archive/
        return self._key_refusal_reason(stem, "", reason, self.clock.now())

    def _key_refusal_reason(self, stem: str, profile: str, reason: str, now: dt.datetime) -> Result:
        text = _reason_text(stem, profile, [reason])
        atomic_write(self.spool.rejected / f"{stem}.reason", text.encode(), 0o644)
        with self.store.begin() as conn:
            self.store.log(conn, now, stem, "rejected", profile=profile, detail=reason)
        log.info("refused %s.key: %s", stem, reason)
        return Result(Outcome.REJECTED, stem, reason=text)

    def _read_key(self, claim: _Claim) -> PrivateKey:
        assert claim.key_path is not None
        kst = os.lstat(claim.key_path)
        problem = self._unsafe(kst)
        if problem:
            raise RequestError(f"{claim.name}.key: {problem}")
        data = self._read(claim.key_path, kst)
        if stat.S_IMODE(kst.st_mode) & 0o077:
            claim.notes.append(
                f"{claim.name}.key was readable by other users (mode {stat.S_IMODE(kst.st_mode):04o}); "
                "keep private keys mode 0600"
            )
            log.warning(
                "%s.key was group/world readable (mode %04o)", claim.name, stat.S_IMODE(kst.st_mode)
            )
        return load_subject_key(data)

    def _key_still_arriving(self, key_path: Path) -> tuple[float, bool]:
        """Seconds to wait for a key being dropped beside a request, and whether there
        is anything named like its key."""
        try:
            kst = os.lstat(key_path)
        except FileNotFoundError:
            return 0.0, False
        age = time.time() - kst.st_mtime
        settle = self.settings.watch.settle_seconds
        return (max(settle - age, 0.0) if stat.S_ISREG(kst.st_mode) else 0.0), True

    # --- file safety ----------------------------------------------------------------------------------
    def _unsafe(self, st: os.stat_result) -> str:
        """A reason to refuse a file by its metadata alone, or ''."""
        if not stat.S_ISREG(st.st_mode):
            return f"it is {_describe_type(st.st_mode)}, not a regular file; drop the file itself"
        if st.st_nlink != 1:
            return "it is hard-linked to another file; drop a copy of the file, not a link"
        if st.st_size > self.max_bytes:
            return (
                f"it is {st.st_size} bytes long; requests may be at most {self.max_bytes} bytes "
                "([watch] max_request_bytes)"
            )
        if st.st_size == 0:
            return "the file is empty; drop a certificate signing request (PEM or DER)"
        return ""

    def _read(self, path: Path, st: os.stat_result) -> bytes:
        try:
            with open_nofollow(path) as fd:
                fst = os.fstat(fd)
                if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
                    raise RequestError(
                        "the file was replaced while it was being read; drop it again"
                    )
                problem = self._unsafe(fst)
                if problem:
                    raise RequestError(problem)
                data = read_limited(fd, self.max_bytes)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise RequestError("it is a symbolic link, not a regular file") from None
            if exc.errno == errno.EACCES:
                # certdrop runs unprivileged (systemd unit): a file it may not read is
                # refused with a reason instead of being retried for ever
                raise RequestError(
                    "certdrop may not read it (permission denied); drop a copy that the "
                    "certdrop service can read"
                ) from None
            raise
        if len(data) > self.max_bytes:
            raise RequestError(f"it grew beyond {self.max_bytes} bytes while being read")
        return data

    def _audit(self, event: str, claim: _Claim, **fields: Any) -> None:
        if self.hooks.audit is not None:
            self.hooks.audit(
                {
                    "event": event,
                    "name": claim.name,
                    "profile": claim.profile,
                    "uid": claim.owner.uid,
                    **fields,
                }
            )


MAX_REASONS = 20  # a hostile request can have thousands of problems; the first are enough
MAX_REASON_CHARS = 600


def _reason_text(name: str, profile: str, reasons: list[str]) -> str:
    lines = [f"certdrop refused {name}.req" + (f" (profile {profile})" if profile else "") + ":"]
    for r in reasons[:MAX_REASONS]:
        lines.append(f"- {r if len(r) <= MAX_REASON_CHARS else r[:MAX_REASON_CHARS] + ' [...]'}")
    if len(reasons) > MAX_REASONS:
        lines.append(f"- ... and {len(reasons) - MAX_REASONS} more problems of the same kinds")
    lines.append("")
    lines.append("Fix what is listed above and drop the request again (a new file in the inbox).")
    return "\n".join(lines) + "\n"
