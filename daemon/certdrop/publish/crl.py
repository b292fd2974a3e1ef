"""The CRL: made, linted and published as `<state>/crl.pem` and `<state>/crl.der`.

A CRL lists every revoked certificate of the index; its number is derived from the
time (nanoseconds since the epoch, as Boulder does) and is above every number the index
and the published CRL know of: it strictly increases across restarts, clock jumps and
restores of older backups. A new one is made on every
revocation and whenever the published one is missing, not ours, out of date with
the index, not yet valid (the clock went back) or within `refresh_before_days` of
its nextUpdate. Whoever follows the CRL (the Apache files) is told when it changed.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..authority.ca import CertificateAuthority, CrlEntry, crl_number
from ..authority.der import pem_armor
from ..clock import Clock
from ..config import CRLSettings
from ..errors import CertdropError, LintError, PublishError
from ..fsutil import atomic_write
from .meta import write_meta

if TYPE_CHECKING:  # pkilint and SQLAlchemy: not loaded by certdrop serve
    from ..authority.lint import Linter
    from ..index.store import Store, Transaction

log = logging.getLogger("certdrop.publish")

CRL_PEM = "crl.pem"
CRL_DER = "crl.der"
FILE_MODE = 0o644
CLOCK_SKEW = dt.timedelta(minutes=5)  # a CRL dated further ahead than this is remade

# meta keys (the index's key/value table)
META_CRL_ERROR = "publish.crl_error"
META_CRL_NEXT_UPDATE = "crl_next_update"  # read by the expiry sweep (CRL close to expiry)

LINT_FULL_CRL_MAX = 100  # larger CRLs are linted through a sample of the same shape
_Y2050 = 2524608000  # 2050-01-01 UTC: revocation times from here on are GeneralizedTime


@dataclass(frozen=True)
class CrlFacts:
    number: int
    this_update: dt.datetime
    next_update: dt.datetime
    revoked: int

    @classmethod
    def of(cls, crl: x509.CertificateRevocationList) -> CrlFacts:
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        next_update = crl.next_update_utc
        assert next_update is not None
        return cls(int(number), crl.last_update_utc, next_update, len(crl))


class CrlPublisher:
    """The CRL of one CA (see the module docstring)."""

    def __init__(
        self,
        settings: CRLSettings,
        state: Path,
        store: Store,
        ca: CertificateAuthority,
        clock: Clock,
        linter: Linter | None,
        *,
        folder: Path | None = None,
        issuing: bool = True,
    ) -> None:
        self.settings = settings
        self.state = state
        self.store = store
        self.ca = ca
        self.clock = clock
        self.linter = linter
        # where its CRL goes: the state folder for the issuing CA, cas/<id>/ for another
        self.folder = folder or state
        # the issuing CA's CRL also lists what no CA has claimed yet (index/cas.py)
        self.issuing = issuing
        self._listeners: list[Callable[[], None]] = []
        self._lock = threading.RLock()
        self.host = ""  # this host's id, recorded with the CRLs it signs
        self._followed: int | None = None  # the index's latest CRL number seen by `follow`

    @property
    def pem_path(self) -> Path:
        return self.folder / CRL_PEM

    @property
    def der_path(self) -> Path:
        return self.folder / CRL_DER

    def _revoked(self, conn: Transaction) -> list[CrlEntry]:
        from ..index import listing  # SQLAlchemy: not loaded by certdrop serve

        return list(listing.revoked_entries(conn, self.ca.id, unclaimed=self.issuing))

    def add_listener(self, listener: Callable[[], None]) -> None:
        """`listener()` is called after every new CRL (it must not raise)."""
        self._listeners.append(listener)

    def published_crl(self) -> x509.CertificateRevocationList | None:
        """The CRL in <state>/crl.der if it is one of this CA's, else None."""
        try:
            der = self.der_path.read_bytes()
            crl = x509.load_der_x509_crl(der)
        except (OSError, ValueError):
            return None
        if crl.issuer != self.ca.subject or not self.ca.signed_this_crl(der):
            return None
        try:
            CrlFacts.of(crl)
        except (x509.ExtensionNotFound, AssertionError):
            return None
        return crl

    def crl_problem(self, now: dt.datetime) -> str | None:
        """Why a new CRL must be made now, or None if the published one is good."""
        crl = self.published_crl()
        if crl is None:
            if self.der_path.exists():
                return f"{self.der_path} is not a valid CRL of this CA"
            return "no CRL has been published yet"
        facts = CrlFacts.of(crl)
        refresh_at = facts.next_update - dt.timedelta(days=self.settings.refresh_before_days)
        if now >= facts.next_update:
            return f"CRL {facts.number} expired at {facts.next_update:%Y-%m-%d %H:%M} UTC"
        if now >= refresh_at:
            return (
                f"CRL {facts.number} reaches its nextUpdate {facts.next_update:%Y-%m-%d %H:%M} UTC "
                f"within {self.settings.refresh_before_days:g} days"
            )
        if facts.this_update > now + CLOCK_SKEW:
            return (
                f"CRL {facts.number} is dated {facts.this_update:%Y-%m-%d %H:%M} UTC, in the future "
                "(the clock went back)"
            )
        try:
            pem_bytes = self.pem_path.read_bytes()
            der = self.der_path.read_bytes()
            # as certdrop writes it: no parsing (a CRL of 100,000 entries takes a while);
            # else the PEM's certificate list compared
            if pem_bytes != pem_armor("X509 CRL", der):
                pem = x509.load_pem_x509_crl(pem_bytes)
                if pem.public_bytes(serialization.Encoding.DER) != der:
                    return f"{self.pem_path} and {self.der_path} differ"
        except (OSError, ValueError):
            return f"{self.pem_path} is missing or unreadable"
        listed = {r.serial_number for r in crl}
        with self.store.begin() as conn:
            revoked = {serial for serial, _at, _reason in self._revoked(conn)}
        if listed != revoked:
            return "the CRL does not list exactly the revoked certificates of the index"
        return None

    def regenerate(self, why: str = "requested") -> CrlFacts:
        """Make, lint and publish a new CRL; then tell the listeners."""
        with self._lock:
            try:
                facts = self._regenerate(why)
            except (CertdropError, OSError) as exc:
                msg = f"{self.clock.now():%Y-%m-%d %H:%M} UTC: {exc}"
                log.error("the CRL could not be published: %s", exc)
                write_meta(self.store, META_CRL_ERROR, msg)
                if isinstance(exc, OSError):
                    raise PublishError(f"the CRL could not be written: {exc}") from None
                raise
            write_meta(self.store, META_CRL_ERROR, "")
        for listener in self._listeners:
            listener()
        return facts

    def _regenerate(self, why: str) -> CrlFacts:
        from ..index import membership  # SQLAlchemy: not loaded by certdrop serve

        now = self.clock.now()
        previous = self.published_crl()
        published = CrlFacts.of(previous).number if previous is not None else 0
        # one transaction from the number to the stored DER: the number's row lock orders
        # the hosts sharing the index, and each CRL lists every revocation committed
        # before its number was drawn
        with self.store.begin() as conn:
            # derived from the time, above the published CRL's and the index's last: an
            # index restored from an older backup cannot use a number again
            number = self.store.claim_crl_number(conn, crl_number(now, published))
            entries = self._revoked(conn)
            this_update = now
            next_update = now + dt.timedelta(days=self.settings.validity_days)
            der = self.ca.build_crl_der(entries, number, this_update, next_update)
            self._lint(der, entries, number, this_update, next_update)
            membership.save_crl(conn, self.ca.id, number, der, this_update, self.host)
        facts = self._write_files(der)
        self._followed = facts.number
        if self.issuing:  # status and metrics show the current CA's CRL
            write_meta(self.store, META_CRL_NEXT_UPDATE, next_update.isoformat())
        log.info(
            "published CRL %d (%d revoked, next update %s UTC): %s",
            facts.number,
            facts.revoked,
            f"{facts.next_update:%Y-%m-%d %H:%M}",
            why,
        )
        return facts

    def _lint(
        self,
        der: bytes,
        entries: Sequence[CrlEntry],
        number: int,
        this_update: dt.datetime,
        next_update: dt.datetime,
    ) -> None:
        if self.linter is None:
            return
        lint_der = der
        if len(entries) > LINT_FULL_CRL_MAX:
            # pkilint's cost grows with the entries: a large CRL is linted as a CRL
            # of the same frame (same issuer, number, dates, extensions) holding its
            # first and last entries and one entry of every other shape (serial
            # length, time type, reason): every kind of entry the real one has, at a
            # nearly constant cost
            lint_der = self.ca.build_crl_der(
                _lint_sample(entries), number, this_update, next_update
            )
        findings = self.linter.crl(lint_der)
        if findings:
            raise LintError(
                f"CRL {number} would not be standards-compliant: " + "; ".join(findings)
            )

    def _write_files(self, der: bytes) -> CrlFacts:
        # DER first, PEM last; both are complete or absent (atomic renames)
        atomic_write(self.der_path, der, FILE_MODE)
        atomic_write(self.pem_path, pem_armor("X509 CRL", der), FILE_MODE)
        return CrlFacts.of(x509.load_der_x509_crl(der))

    def follow(self) -> CrlFacts | None:
        """Publish the index's latest CRL of this CA (signed by any host sharing the index)
        to this host's files when it is newer than theirs; then tell the listeners. A CRL
        of this host's files newer than the index's (an index moved over with migrate-db,
        a CRL signed before the index kept them) goes into the index instead."""
        from ..index import membership

        with self._lock:
            with self.store.begin() as conn:
                number = membership.latest_crl_number(conn, self.ca.id)
            if number is not None and number == self._followed:
                return None
            previous = self.published_crl()
            mine = CrlFacts.of(previous).number if previous is not None else None
            if mine is not None and (number is None or mine > number):
                assert previous is not None
                with self.store.begin() as conn:
                    membership.save_crl(
                        conn,
                        self.ca.id,
                        mine,
                        previous.public_bytes(serialization.Encoding.DER),
                        previous.last_update_utc,
                        self.host,
                    )
                self._followed = mine
                return None
            if number is None or (mine is not None and mine >= number):
                self._followed = number
                return None
            with self.store.begin() as conn:
                latest = membership.latest_crl(conn, self.ca.id)
            if latest is None or not self.ca.signed_this_crl(latest[1]):
                log.error("the index's latest CRL is not signed by this CA; not published")
                return None
            try:
                facts = self._write_files(latest[1])
            except OSError as exc:
                raise PublishError(f"the CRL could not be written: {exc}") from None
            self._followed = facts.number
            log.info("published CRL %d from the index (%d revoked)", facts.number, facts.revoked)
        for listener in self._listeners:
            listener()
        return facts

    def refresh(self) -> CrlFacts | None:
        """Make a new CRL if the published one needs it (see `crl_problem`)."""
        with self._lock:
            problem = self.crl_problem(self.clock.now())
            if problem is None:
                return None
            return self.regenerate(problem)

    def check(self) -> None:
        """The periodic job's CRL part: `refresh`, logging what fails. Never raises."""
        try:
            self.refresh()
        except CertdropError as exc:
            log.error("CRL check: %s", exc)
        except Exception:
            log.exception("CRL check failed")


def _lint_sample(entries: Sequence[CrlEntry]) -> list[CrlEntry]:
    """The first and last entries, and the first of every other entry shape.

    An entry's encoding depends only on its shape: the serial's length in octets, the
    time's type (UTCTime until 2049, GeneralizedTime after) and the reason code; the
    sample holds each shape the CRL has, so linting it lints every kind of entry.
    """
    half = LINT_FULL_CRL_MAX // 2
    sample = [*entries[:half], *entries[-half:]]

    def shape(e: CrlEntry) -> tuple[int, bool, str | None]:
        when = e[1] if isinstance(e[1], int) else int(e[1].timestamp())
        return e[0].bit_length() // 8, when >= _Y2050, e[2]

    seen = {shape(e) for e in sample}
    for entry in entries[half:-half]:
        key = shape(entry)
        if key not in seen:
            seen.add(key)
            sample.append(entry)
    return sample
