"""The issue layer wired as the daemon wires it, for the unit tests of certdrop.issue and
certdrop.service: a real CA made by `certdrop init`, a real SQLite index, real spool
folders, a ManualClock, and hooks that record what they hear.

Every collaborator is reached through public attributes (`rt.batches.decider`, ...),
built by `Runtime.build`, the one wiring place.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from certdrop.clock import ManualClock
from certdrop.index import journal, listing
from certdrop.index.store import CertRecord, Store
from certdrop.intake.claim import Claim, Claimer
from certdrop.intake.request import parse_many
from certdrop.intake.spool import Spool
from certdrop.issue.batches import Batches
from certdrop.issue.decide import Decider, Done, Prepared
from certdrop.issue.delivery import Delivery
from certdrop.issue.keys import DroppedKeys
from certdrop.issue.outcomes import Hooks, Outcomes, Result
from certdrop.issue.record import Recorder
from certdrop.service.runtime import Runtime
from conftest import CAEnv, make_env

# the server profile of conftest's configuration: manual approval, DNS names allowed
SERVER = "server"
CLIENT = "client"


def attrs(cn: str, email: str | None = None) -> list[x509.NameAttribute]:
    out = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if email is not None:
        out.append(x509.NameAttribute(NameOID.EMAIL_ADDRESS, email))
    return out


def age(path: Path, seconds: float) -> None:
    """Give `path` an mtime `seconds` ago (the code reads mtimes to tell what is still
    arriving)."""
    then = time.time() - seconds
    os.utime(path, (then, then), follow_symlinks=False)


def password_of(env: CAEnv, name: str) -> str:
    """The p12 password the file channel wrote for NAME (its first line)."""
    return (env.state / "passwords" / f"{name}.txt").read_text().splitlines()[0]


def open_p12(env: CAEnv, name: str) -> pkcs12.PKCS12KeyAndCertificates:
    data = (env.outbox / f"{name}.p12").read_bytes()
    return pkcs12.load_pkcs12(data, password_of(env, name).encode())


@dataclass
class Kit:
    """A Runtime at clock time with recording hooks (see the module docstring)."""

    env: CAEnv
    clock: ManualClock
    rt: Runtime
    audit: list[dict[str, Any]] = field(default_factory=list)
    issued: list[tuple[str, list[str]]] = field(default_factory=list)
    pending: list[tuple[str, str, str]] = field(default_factory=list)

    # --- the collaborators, as Runtime.build wired them ----------------------------------
    @property
    def store(self) -> Store:
        return self.rt.store

    @property
    def spool(self) -> Spool:
        return self.rt.spool

    @property
    def batches(self) -> Batches:
        return self.rt.batches

    @property
    def claimer(self) -> Claimer:
        return self.rt.batches.claimer

    @property
    def outcomes(self) -> Outcomes:
        return self.rt.batches.outcomes

    @property
    def decider(self) -> Decider:
        return self.rt.batches.decider

    @property
    def recorder(self) -> Recorder:
        return self.rt.batches.recorder

    @property
    def keys(self) -> DroppedKeys:
        return self.rt.batches.keys

    @property
    def delivery(self) -> Delivery:
        return self.rt.batches.outcomes.delivery

    # --- requests ----------------------------------------------------------------------------
    def work(
        self,
        name: str,
        data: bytes,
        *,
        key: bytes | None = None,
        profile: str = CLIENT,
        key_mode: int = 0o600,
    ) -> Claim:
        """NAME.req (and NAME.key) claimed into work/PROFILE/ and read: what `Batches`
        hands the decider after the claim."""
        folder = self.spool.work_for(profile)
        req = folder / f"{name}.req"
        req.write_bytes(data)
        if key is not None:
            key_path = folder / f"{name}.key"
            key_path.write_bytes(key)
            key_path.chmod(key_mode)
        claim = self.claimer.load(req, profile)
        assert claim is not None
        self.claimer.read_request(claim)
        return claim

    def prepare(self, *claims: Claim) -> tuple[list[Prepared], Done]:
        """The claims parsed and prepared for `Decider.decide`."""
        return self.decider.prepare(list(claims), parse_many([c.data for c in claims]))

    def drop(self, name: str, data: bytes, profile: str = CLIENT) -> Path:
        folder = self.env.inbox if profile == CLIENT else self.env.inbox / profile
        path = folder / f"{name}.req"
        path.write_bytes(data)
        return path

    def process(self, name: str, data: bytes, profile: str = CLIENT) -> Result:
        """Drop NAME.req and run it through the batches as the daemon does."""
        return self.batches.handle_inbox_file(self.drop(name, data, profile), profile)

    # --- what came of it ----------------------------------------------------------------------
    def journal(self, name: str) -> list[dict[str, Any]]:
        with self.store.begin() as conn:
            return journal.journal_for(conn, name)

    def outcomes_of(self, name: str) -> list[str]:
        return [str(e["outcome"]) for e in self.journal(name)]

    def cert(self, serial: str) -> CertRecord:
        with self.store.begin() as conn:
            rec = self.store.get(conn, serial)
        assert rec is not None, serial
        return rec

    def certs(self) -> list[CertRecord]:
        with self.store.begin() as conn:
            return listing.list_certs(conn)

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.audit if e["event"] == kind]

    def close(self) -> None:
        self.rt.close()


def make_kit(tmp_path: Path, *, replace: dict[str, str] | None = None, extra: str = "") -> Kit:
    env = make_env(tmp_path / "ca", extra=extra, replace=replace)
    clock = ManualClock(dt.datetime.now(dt.UTC).replace(microsecond=0))
    audit: list[dict[str, Any]] = []
    issued: list[tuple[str, list[str]]] = []
    pending: list[tuple[str, str, str]] = []
    hooks = Hooks(
        on_issued=lambda serial, superseded: issued.append((serial, superseded)),
        on_pending=lambda name, profile, subject: pending.append((name, profile, subject)),
        audit=audit.append,
    )
    rt = Runtime.build(env.settings, clock, hooks)
    return Kit(env, clock, rt, audit, issued, pending)
