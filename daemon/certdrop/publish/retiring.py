"""The CRLs of every CA still publishing: the issuing CA's and, after a rollover, those of
the retiring CAs, until the last certificate of each has expired; then it is retired.

`load_crls` reads which CAs there are from the index (after making the index follow
the state folder: `register_issuing`) and loads each retiring CA from `cas/<id>/`.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..authority.ca import CertificateAuthority
from ..authority.lifecycle import ca_id
from ..authority.lint import Linter
from ..authority.names import subject_text
from ..authority.rollover import ca_folder
from ..authority.serials import serial_hex
from ..clock import Clock
from ..config import CRLSettings
from ..errors import CertdropError
from ..index import cas
from ..index.store import Store
from .crl import CrlFacts, CrlPublisher

log = logging.getLogger("certdrop.publish")


def ca_record(cert: x509.Certificate) -> cas.NewCa:
    """What the index keeps of a CA certificate."""
    return cas.NewCa(
        id=ca_id(cert),
        subject=subject_text(cert.subject),
        serial=serial_hex(cert.serial_number),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        der=cert.public_bytes(serialization.Encoding.DER),
    )


@dataclass
class Retiring:
    publisher: CrlPublisher
    until: dt.datetime | None  # when its last certificate ends (None: it issued none)


class CrlSet:
    """The issuing CA's CRL publisher and the retiring CAs' (see the module docstring)."""

    def __init__(
        self, issuing: CrlPublisher, retiring: Sequence[Retiring], store: Store, clock: Clock
    ) -> None:
        self.issuing = issuing
        self._retiring = list(retiring)
        self.store = store
        self.clock = clock
        self._lock = threading.Lock()
        self._on_retired: list[Callable[[], None]] = []

    def retiring(self) -> list[CrlPublisher]:
        with self._lock:
            return [r.publisher for r in self._retiring]

    def all(self) -> list[CrlPublisher]:
        return [self.issuing, *self.retiring()]

    def for_issuer(self, issuer: str | None) -> CrlPublisher | None:
        """The CRL that lists the certificates of the CA `issuer` (the issuing CA's for
        a certificate no CA has claimed yet); None when that CA publishes none any more
        (retired, or its key could not be loaded)."""
        if issuer is None or issuer == self.issuing.ca.id:
            return self.issuing
        for pub in self.retiring():
            if pub.ca.id == issuer:
                return pub
        return None

    def add_listener(self, listener: Callable[[], None]) -> None:
        """`listener()` after every new CRL of any CA, and when a CA is retired."""
        for pub in self.all():
            pub.add_listener(listener)
        self._on_retired.append(listener)

    def check(self) -> None:
        """The periodic job: every CRL fresh, the CAs whose certificates all ended retired.
        Never raises."""
        for pub in self.all():
            pub.check()
        try:
            self.retire_finished()
        except Exception:
            log.exception("the retirement check failed")

    def regenerate_retiring(self, why: str) -> list[CrlFacts]:
        return [pub.regenerate(why) for pub in self.retiring()]

    def retire_finished(self) -> list[str]:
        """Retire the retiring CAs whose last certificate has expired: their CRL is no
        longer published nor their certificate trusted by Apache. Their ids."""
        now = self.clock.now()
        with self._lock:
            done = [r for r in self._retiring if r.until is None or r.until <= now]
        if not done:
            return []
        with self.store.begin() as conn:
            for r in done:
                cas.set_state(conn, r.publisher.ca.id, cas.RETIRED, now)
        with self._lock:
            self._retiring = [r for r in self._retiring if r not in done]
        for r in done:
            log.warning(
                "the CA %s is retired: its last certificate ended%s",
                subject_text(r.publisher.ca.subject),
                f" at {r.until:%Y-%m-%d %H:%M} UTC" if r.until else " (it issued none)",
            )
        for listener in self._on_retired:
            listener()
        return [r.publisher.ca.id for r in done]


def load_crls(
    settings: CRLSettings,
    state: Path,
    store: Store,
    ca: CertificateAuthority,
    clock: Clock,
    linter: Linter | None,
    passphrase: bytes | None,
) -> CrlSet:
    """The issuing CA `ca` recorded as such in the index, and the CRL publishers of it
    and of every retiring CA (a retiring CA whose key cannot be loaded is logged: its
    CRL can then no longer be renewed)."""
    with store.begin() as conn:
        rows = cas.register_issuing(conn, ca_record(ca.cert), clock.now())
        retiring_rows = [(r, cas.last_expiry(conn, r.id)) for r in rows if r.state == cas.RETIRING]
    retiring: list[Retiring] = []
    for row, until in retiring_rows:
        folder = ca_folder(state, row.id)
        try:
            other = CertificateAuthority.load(folder, passphrase)
        except CertdropError as exc:
            log.error("the retiring CA %s cannot sign its CRL any more: %s", row.subject, exc)
            continue
        pub = CrlPublisher(
            settings, state, store, other, clock, linter, folder=folder, issuing=False
        )
        retiring.append(Retiring(pub, until))
    issuing = CrlPublisher(settings, state, store, ca, clock, linter)
    return CrlSet(issuing, retiring, store, clock)
