"""Deciding a batch of parsed requests: what each one gets.

For every request: re-delivery of the certificate it already has, a refusal (the
index, the pending table, a key that does not belong, the policy), waiting for an
operator, or a `Plan` (the certificate to sign). The index is asked once per batch
(fingerprints, pending names, valid certificates with the same unique subject
attributes); later requests of a batch see the earlier ones' plans as certificates.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..authority.ca import CertificateAuthority, CertificateUrls, IssueSpec
from ..authority.keys import PrivateKey, subject_key_matches
from ..authority.serials import random_serial, serial_hex
from ..clock import Clock
from ..config import Profile
from ..errors import CertdropError, IndexUnavailable, RequestError
from ..index import pending as waiting
from ..index.pending import PendingRecord
from ..index.store import CertRecord, Store
from ..intake.claim import Claim
from ..intake.request import ParsedRequest
from . import policy
from .delivery import Delivery, new_password
from .outcomes import Outcomes, Result

Key = tuple[str, str]  # (subject attribute, folded value)


@dataclass
class Prepared:
    """A parsed request about to be decided."""

    index: int  # its place in the batch
    claim: Claim
    req: ParsedRequest
    unique: list[Key]  # what the index is asked about it (policy.unique_keys)


@dataclass
class Plan:
    """A request the policy accepted: what to sign."""

    index: int
    claim: Claim
    req: ParsedRequest
    decision: policy.Decision
    spec: IssueSpec
    subject_key: PrivateKey | None  # dropped beside the request
    was_pending: bool = False
    approved: bool = False  # issued because an operator approved it
    key_type: str = ""  # a key to make with the certificate (server-side generation)
    password: str = ""  # for the p12 of a key made here


Done = list[tuple[Claim, Result]]


class Decider:
    """Decides parsed requests (see the module docstring)."""

    def __init__(
        self,
        profiles: Mapping[str, Profile],
        urls: CertificateUrls,
        store: Store,
        ca: CertificateAuthority,
        clock: Clock,
        outcomes: Outcomes,
        delivery: Delivery,
    ) -> None:
        self.profiles = profiles
        self.urls = urls
        self.store = store
        self.ca = ca
        self.clock = clock
        self.outcomes = outcomes
        self.delivery = delivery

    def prepare(
        self, readable: Sequence[Claim], parsed: Sequence[ParsedRequest | RequestError]
    ) -> tuple[list[Prepared], Done]:
        """The parsed requests, and the refusals of those that did not parse."""
        done: Done = []
        prepared: list[Prepared] = []
        for claim, req in zip(readable, parsed, strict=True):
            if isinstance(req, RequestError):
                done.append((claim, self.outcomes.reject(claim, [str(req)])))
                continue
            if req.kind == "enrollment":
                # one enrollment file asks for one new key; the same text dropped again
                # later is a new request, while a crash-restart sees the same inode
                st = claim.st
                ident = f"|{st.st_dev}:{st.st_ino}:{st.st_mtime_ns}".encode()
                req = replace(req, fingerprint=hashlib.sha256(claim.data + ident).hexdigest())
            unique = policy.unique_keys(req, self.profiles[claim.profile])
            prepared.append(Prepared(len(prepared), claim, req, unique))
        return prepared, done

    def decide(
        self, prepared: Sequence[Prepared], now: dt.datetime, approved: bool
    ) -> list[Plan | Result]:
        """A Plan or a Result for each request, in order."""
        with self.store.begin() as conn:
            previous = self.store.by_fingerprints(conn, [p.req.fingerprint for p in prepared])
            pending = waiting.pending_by_names(conn, [p.claim.name for p in prepared])
            keys = {k for p in prepared for k in p.unique}
            existing = self.store.existing_valid(conn, keys, now)
        seen: dict[Key, list[policy.ExistingCert]] = {
            k: [policy.ExistingCert(r.serial, r.not_after, r.profile, r.subject) for r in v]
            for k, v in existing.items()
        }
        out: list[Plan | Result] = []
        for p in prepared:
            try:
                got = self._decide(p, previous, pending, seen, now, approved)
            except IndexUnavailable:
                raise  # the server's trouble, not the request's: kept, tried again later
            except CertdropError as exc:
                got = self.outcomes.reject(p.claim, [str(exc)], p.req)
            out.append(got)
        return out

    def _decide(
        self,
        p: Prepared,
        previous: dict[str, list[CertRecord]],
        pending: dict[str, PendingRecord],
        seen: dict[Key, list[policy.ExistingCert]],
        now: dt.datetime,
        approved: bool,
    ) -> Plan | Result:
        claim, req = p.claim, p.req
        reject = functools.partial(self.outcomes.reject, req=req)
        profile = self.profiles[claim.profile]
        renews: list[str] = []
        for rec in previous.get(req.fingerprint, ()):
            if rec.status == "revoked":
                return reject(
                    claim,
                    [
                        f"this exact request already got certificate {rec.serial}, which was revoked "
                        f"({rec.revocation_reason or 'unspecified'}); make a new key and a new request"
                    ],
                )
            if rec.status == "valid" and rec.not_after > now:
                held = self.profiles.get(rec.profile, profile)
                if rec.not_after - now > dt.timedelta(days=held.renew_before_days):
                    return self.outcomes.redeliver(claim, rec)
                # the same request inside the certificate's renewal window renews it (RSA
                # requests made again from the same key are byte for byte the same)
                renews.append(rec.serial)

        pend = pending.get(claim.name)
        if pend is not None and pend.fingerprint == req.fingerprint and pend.decision == "approved":
            approved = True
        elif pend is not None and pend.decision is None and self.outcomes.pending_waits(claim.name):
            return reject(
                claim,
                [
                    f"a request named {claim.name}.req is already waiting for the CA operator's "
                    "approval; drop this one under another name"
                ],
            )

        subject_key: PrivateKey | None = None
        if claim.key_path is not None:
            if req.kind == "enrollment":
                return reject(
                    claim,
                    [
                        f"{claim.name}.key was dropped with a key-generation request; certdrop makes "
                        "the key itself for those — drop either a CSR with its key, or the TOML alone"
                    ],
                )
            subject_key = self.delivery.subject_key(claim)
            if not subject_key_matches(subject_key, req.spki):
                return reject(
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
            return reject(claim, list(decision.reasons))
        if decision.needs_approval:
            return self.outcomes.to_pending(claim, req, now)
        extra = [serial for serial in renews if serial not in decision.supersedes]
        if extra:
            decision = replace(
                decision,
                supersedes=(*decision.supersedes, *extra),
                notes=(*decision.notes, "renewal: supersedes " + ", ".join(extra)),
            )

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
            serial=random_serial(decision.not_before),
            crl_distribution_point=self.urls.crl,
            ocsp_url=self.urls.ocsp,
            ca_issuers_url=self.urls.ca_issuers,
        )
        # later requests of this batch see this one as a valid certificate
        for key in p.unique:
            seen.setdefault(key, []).append(
                policy.ExistingCert(serial_hex(spec.serial), decision.not_after, claim.profile, "")
            )
        for serial in decision.supersedes:  # a renewed certificate is renewed once
            for lst in seen.values():
                lst[:] = [e for e in lst if e.serial != serial]
        return Plan(
            p.index,
            claim,
            req,
            decision,
            spec,
            subject_key,
            was_pending=pend is not None,
            approved=approved,
            key_type=key_type,
            password=password,
        )
