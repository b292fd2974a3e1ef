"""Recording a decided batch: sign, stage, commit, deliver, archive.

* serials are drawn at random and checked against the index and the batches in flight;
* the signer (this process, or the signing workers) signs and stages each certificate
  (and the p12 of a key it made); a key dropped beside a request is bundled here;
* one syncfs makes every staged output durable before the index commit;
* one index transaction records the whole batch, with the p12 passwords (durable before
  it, or inside it): the point of no return;
* then the outputs move to outbox/ and the requests to archive/, one fsync per folder.

A crash before the commit leaves the requests in work/ (processed again at start); after
it, a re-run finds each certificate by its request's fingerprint and re-delivers it.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography import x509

from ..authority.ca import CertificateAuthority, IssueSpec, Staged, Staging
from ..authority.lint import Linter
from ..authority.serials import random_serial, serial_hex
from ..errors import LintError
from ..faults import Crashpoint, no_crash
from ..fsutil import ensure_dir, fsync_dir, sync_filesystem, write_staged
from ..index import journal
from ..index import outputs as delivered
from ..index import pending as waiting
from ..index.store import NewCertificate, Store, Transaction
from ..intake.spool import Spool, archive_path, remove_quietly
from .decide import Plan
from .delivery import (
    Delivery,
    PasswordChannel,
    new_password,
    output_owner,
    p12_mode,
    sync_passwords,
)
from .naming import OutputNames, replaced_path
from .outcomes import Hooks, Outcome, Outcomes, RequesterNotices, Result

log = logging.getLogger("certdrop.pipeline")

SignOutcome = list["Staged | LintError"]

Signer = Callable[
    [Sequence[IssueSpec], Sequence[Staging], "Linter | None"], Callable[[], SignOutcome]
]
"""Starts signing and staging a batch of specs (in this process or in the signing workers)
and returns the way to wait for the outcome: a Staged or a LintError each."""


@dataclass
class Signed:
    plan: Plan
    staged: Staged
    serial: str
    password: str = ""
    output: str = ""  # the name it is delivered under (outbox/OUTPUT.cer)
    replacing: tuple[str, ...] = ()  # kinds of the same holder's files under that name

    @property
    def p12(self) -> bool:
        return self.staged.p12 or self.plan.subject_key is not None


class Recorder:
    """Signs, stages, records, delivers and archives decided requests."""

    def __init__(
        self,
        spool: Spool,
        store: Store,
        ca: CertificateAuthority,
        outcomes: Outcomes,
        delivery: Delivery,
        password_channel: PasswordChannel,
        p12_encryption: Callable[[str], str],
        hooks: Hooks,
        names: OutputNames,
        *,
        linter: Linter | None,
        crashpoint: Crashpoint = no_crash,
        notices: RequesterNotices | None = None,
    ) -> None:
        self.spool = spool
        self.names = names
        self.passwords_archive = names.passwords / "archive"
        self.store = store
        self.ca = ca
        self.outcomes = outcomes
        self.delivery = delivery
        self.password_channel = password_channel
        self.p12_encryption = p12_encryption  # profile -> PKCS#12 preset
        self.hooks = hooks
        self.linter = linter  # shown every certificate before the CA key signs it; None: off
        self.crashpoint = crashpoint
        self.notices = notices  # None: requesters are not told
        self.signer: Signer = self._sign_here

    def _sign_here(
        self, specs: Sequence[IssueSpec], stagings: Sequence[Staging], linter: Linter | None
    ) -> Callable[[], SignOutcome]:
        return lambda: self.ca.issue_and_stage(
            specs, stagings, linter.certificate if linter else None
        )

    def start_signing(
        self, plans: Sequence[Plan], in_flight: set[int]
    ) -> tuple[Callable[[], SignOutcome], set[int]]:
        """Draw the serials (unique in the index and among `in_flight`, the serials of
        the batches being signed) and start signing; the way to wait for the outcome,
        and the serials drawn."""
        with self.store.begin() as conn:
            taken = self.store.existing_serials(conn, [serial_hex(p.spec.serial) for p in plans])
        used = set(in_flight)
        serials: set[int] = set()
        for plan in plans:
            while serial_hex(plan.spec.serial) in taken or plan.spec.serial in used:
                plan.spec = replace(plan.spec, serial=random_serial(plan.spec.not_before))
            used.add(plan.spec.serial)
            serials.add(plan.spec.serial)
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
                    p12_preset=self.p12_encryption(claim.profile),
                )
            )
        return self.signer([p.spec for p in plans], stagings, self.linter), serials

    def record(
        self, plans: Sequence[Plan], signing: Callable[[], SignOutcome], now: dt.datetime
    ) -> list[Result]:
        """Wait for the signer, then stage, commit, deliver and archive: a Result per plan."""
        signed = signing()
        self.crashpoint("after-sign")
        results: dict[int, Result] = {}
        ready: list[Signed] = []
        for plan, out in zip(plans, signed, strict=True):
            if isinstance(out, LintError):
                results[plan.index] = self.outcomes.reject(plan.claim, [str(out)], plan.req)
                continue
            ready.append(self._staged(plan, out))
        if ready:
            sync_filesystem(self.spool.root)
            self.crashpoint("after-stage")
            self._commit(ready, now)
            self.crashpoint("after-record")
            for item in ready:
                # the same holder's files under the name go to the archive, also a p12
                # the renewal does not replace with one of its own
                for kind in item.replacing:
                    if kind != "password":
                        old = Path(self.spool.outbox_path(f"{item.output}.{kind}"))
                        if os.path.lexists(old):
                            os.rename(old, replaced_path(self.spool.archive, old, item.serial))
                self.delivery.to_outbox(
                    item.plan.claim,
                    item.output,
                    item.serial,
                    durable=False,
                    p12=item.p12,
                    replacing=(),
                )
            fsync_dir(self.spool.outbox)
            self.crashpoint("after-deliver")
            profiles: set[str] = set()  # claims are in work/PROFILE/
            for item in ready:
                claim = item.plan.claim
                if claim.key_path is not None:
                    remove_quietly(claim.key_path)  # the key now lives only inside the p12
                os.rename(claim.path, archive_path(self.spool, claim.path.name, now))
                profiles.add(claim.profile)
            fsync_dir(self.spool.archive)
            for profile in profiles:
                fsync_dir(self.spool.work_for(profile))
            self.crashpoint("after-archive")
            for item in ready:
                results[item.plan.index] = self._announce(item)
        return [results[p.index] for p in plans]

    def _staged(self, plan: Plan, staged: Staged) -> Signed:
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
                self.p12_encryption(claim.profile),
            )
            write_staged(
                self.spool.staged(claim.profile, claim.name, ".p12"),
                p12,
                p12_mode(claim.owner),
                output_owner(claim.owner),
            )
        plan.password = ""
        return Signed(plan, staged, serial_hex(plan.spec.serial), password)

    def _commit(self, ready: list[Signed], now: dt.datetime) -> None:
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
                    emails=decision.emails,
                    owner=plan.claim.owner.name or str(plan.claim.owner.uid),
                    key_generated=plan.req.kind == "enrollment",
                    issuer=self.ca.id,
                )
            )
        with self.store.begin() as conn:
            self._place(conn, ready, records, now)
            wrote_password = False
            files: list[tuple[str, str, str]] = []
            for item, record in zip(ready, records, strict=True):
                claim = item.plan.claim
                files.append((item.serial, "cer", self.spool.outbox_path(item.output + ".cer")))
                if item.p12:
                    files.append((item.serial, "p12", self.spool.outbox_path(item.output + ".p12")))
                if item.password:
                    # durable before (file) or inside (mail queue) the commit: a crash
                    # can never leave a delivered p12 whose password is lost
                    written = self.password_channel(
                        conn,
                        item.output,
                        record.email,
                        item.serial,
                        item.password,
                        claim.notes,
                        request=claim.name,
                    )
                    if written is not None:
                        files.append((item.serial, "password", str(written)))
                    wrote_password = True
            self.store.add_certificates(conn, records)
            delivered.add(conn, files)
            for item in ready:
                if item.plan.decision.supersedes:
                    self.store.supersede(conn, item.plan.decision.supersedes, item.serial)
            pending_names = [i.plan.claim.name for i in ready if i.plan.was_pending]
            if pending_names:
                waiting.remove_pending_many(conn, pending_names)
            if self.notices is not None:
                for item, record in zip(ready, records, strict=True):
                    if item.plan.approved:
                        self.notices.approved(conn, record, self._delivered(item), now)
            journal.log_many(
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
                sync_passwords(self.password_channel)
        for item in ready:
            item.password = ""

    def _place(
        self,
        conn: Transaction,
        ready: list[Signed],
        records: list[NewCertificate],
        now: dt.datetime,
    ) -> None:
        """Choose each certificate's output name (issue/naming.py); the same holder's files
        it takes over are recorded as moved to the archive, a password file is moved there
        now (the new one is written in its place before the commit)."""
        taken: set[str] = set()
        for item, record in zip(ready, records, strict=True):
            placement = self.names.place(
                conn, item.plan.claim.name, record.subject, record.owner, taken
            )
            taken.add(placement.name)
            item.output = placement.name
            item.replacing = tuple(kind for _, kind, _ in placement.replaced)
            for old_serial, kind, path in placement.replaced:
                folder = self.passwords_archive if kind == "password" else self.spool.archive
                dest = replaced_path(folder, path, item.serial)
                if kind == "password":
                    ensure_dir(folder, 0o700)
                    os.rename(path, dest)
                delivered.moved(conn, old_serial, kind, str(dest), now)

    def _delivered(self, item: Signed) -> list[Path]:
        """Where `Delivery.to_outbox` puts the outputs of `item`: the .cer, and the .p12."""
        files = [self.spool.outbox / f"{item.output}.cer"]
        if item.p12:
            files.append(self.spool.outbox / f"{item.output}.p12")
        return files

    def _announce(self, item: Signed) -> Result:
        claim, decision = item.plan.claim, item.plan.decision
        notes = list(decision.notes) + claim.notes
        subject = item.staged.subject
        if item.output != claim.name:
            notes.append(
                f"delivered as outbox/{item.output}.cer: outbox/{claim.name}.* holds "
                "another holder's certificate"
            )
        log.info(
            "issued %s.req serial=%s profile=%s subject=%s -> outbox/%s.cer%s",
            claim.name,
            item.serial,
            claim.profile,
            subject,
            item.output,
            f" ({'; '.join(notes)})" if notes else "",
        )
        self.hooks.audit_claim(
            "issued",
            claim,
            serial=item.serial,
            subject=subject,
            supersedes=list(decision.supersedes),
            p12=item.p12,
            output=item.output,
        )
        if self.hooks.on_issued is not None:
            self.hooks.on_issued(item.serial, list(decision.supersedes))
        return Result(Outcome.ISSUED, claim.name, serial=item.serial, output=item.output)
