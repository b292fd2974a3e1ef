"""The CRL publisher: a real CA, a real SQLite index, the files in a temp state folder.

openssl and pkilint judge the CRLs it writes; time is a ManualClock.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certdrop.authority.ca import CertificateAuthority
from certdrop.authority.lint import shared_linter
from certdrop.clock import ManualClock
from certdrop.errors import PublishError
from certdrop.index.store import NewCertificate, Store
from certdrop.publish.crl import (
    CLOCK_SKEW,
    LINT_FULL_CRL_MAX,
    META_CRL_ERROR,
    META_CRL_NEXT_UPDATE,
    CrlFacts,
    CrlPublisher,
)
from conftest import OPENSSL, CAEnv, make_env, stock_linter

T0 = dt.datetime(2031, 3, 1, 12, 0, tzinfo=dt.UTC)
N0 = 1930132800 * 10**9  # T0 in nanoseconds since the epoch: the number of a CRL made at T0


@dataclass
class Rig:
    env: CAEnv
    store: Store
    ca: CertificateAuthority
    clock: ManualClock
    crl: CrlPublisher
    told: list[int] = field(default_factory=list)

    def meta(self, key: str) -> str | None:
        with self.store.begin() as conn:
            return self.store.get_meta(conn, key)

    def facts(self) -> CrlFacts:
        return CrlFacts.of(x509.load_der_x509_crl(self.crl.der_path.read_bytes()))

    def add_revoked(self, serial: str, name: str, reason: str) -> None:
        now = self.clock.now()
        cert = NewCertificate(
            serial=serial,
            subject=f"CN={name}",
            common_name=name,
            email="",
            not_before=now - dt.timedelta(days=1),
            not_after=now + dt.timedelta(days=300),
            profile="client",
            request_name=name,
            request_fingerprint=serial.rjust(64, "0"),
            issued_at=now - dt.timedelta(days=1),
            der=b"\x30\x00",
            status="revoked",
            revoked_at=now,
            revocation_reason=reason,
        )
        with self.store.begin() as conn:
            self.store.add_certificate(conn, cert)


def make_rig(root: Path) -> Rig:
    env = make_env(root, extra="[crl]\nvalidity_days = 7\nrefresh_before_days = 3\n")
    store = Store(env.settings.database_url).open()
    ca = CertificateAuthority.load(env.state)
    clock = ManualClock(T0)
    crl = CrlPublisher(env.settings.crl, env.state, store, ca, clock, linter=None)
    rig = Rig(env, store, ca, clock, crl)
    crl.add_listener(lambda: rig.told.append(rig.facts().number))
    return rig


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = make_rig(tmp_path)
    yield r
    r.store.close()


def test_regenerate_publishes_der_and_pem_and_tells_the_listeners(rig: Rig) -> None:
    rig.add_revoked("0A01", "alice", "keyCompromise")
    facts = rig.crl.regenerate("test")
    assert facts == CrlFacts(N0, T0, T0 + dt.timedelta(days=7), 1)
    assert rig.told == [N0]
    der = rig.crl.der_path.read_bytes()
    pem = x509.load_pem_x509_crl(rig.crl.pem_path.read_bytes())
    assert pem.public_bytes(serialization.Encoding.DER) == der
    for path in (rig.crl.der_path, rig.crl.pem_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [r.serial_number for r in pem] == [0x0A01]
    res = subprocess.run(
        [OPENSSL, "crl", "-in", str(rig.crl.pem_path), "-CAfile", str(rig.env.ca_cert), "-noout"],
        capture_output=True,
        text=True,
    )
    assert "verify OK" in res.stdout + res.stderr, res
    assert stock_linter().crl(der) == []
    assert rig.meta(META_CRL_NEXT_UPDATE) == (T0 + dt.timedelta(days=7)).isoformat()
    assert rig.crl.published_crl() is not None
    assert not list(rig.env.state.glob(".*crl*"))  # no temporary files left behind
    # every regeneration takes a higher number, also within the same nanosecond
    assert rig.crl.regenerate("again").number == N0 + 1
    assert rig.told == [N0, N0 + 1]


def test_crl_problem_says_why_a_new_crl_is_needed(rig: Rig) -> None:
    crl = rig.crl
    assert crl.crl_problem(T0) == "no CRL has been published yet"
    crl.regenerate("first")
    assert crl.crl_problem(T0) is None
    # close to its nextUpdate (refresh_before_days = 3), then past it
    assert crl.crl_problem(T0 + dt.timedelta(days=4) - dt.timedelta(seconds=1)) is None
    assert crl.crl_problem(T0 + dt.timedelta(days=4)) == (
        f"CRL {N0} reaches its nextUpdate 2031-03-08 12:00 UTC within 3 days"
    )
    assert crl.crl_problem(T0 + dt.timedelta(days=7)) == f"CRL {N0} expired at 2031-03-08 12:00 UTC"
    # a revocation the CRL does not list (a crash after the index commit)
    rig.add_revoked("0B02", "bob", "superseded")
    assert crl.crl_problem(T0) == (
        "the CRL does not list exactly the revoked certificates of the index"
    )
    crl.regenerate("bob")
    assert crl.crl_problem(T0) is None
    # a PEM that differs from the DER, then one that is damaged, then none
    good_pem = crl.pem_path.read_bytes()
    crl.regenerate("a newer one")
    crl.pem_path.write_bytes(good_pem)
    assert crl.crl_problem(T0) == f"{crl.pem_path} and {crl.der_path} differ"
    crl.pem_path.write_text("garbage")
    assert crl.crl_problem(T0) == f"{crl.pem_path} is missing or unreadable"
    crl.pem_path.unlink()
    assert crl.crl_problem(T0) == f"{crl.pem_path} is missing or unreadable"
    # a damaged DER is not a CRL of this CA
    crl.der_path.write_bytes(b"\x30\x03\x02\x01\x01")
    assert crl.published_crl() is None
    assert crl.crl_problem(T0) == f"{crl.der_path} is not a valid CRL of this CA"


def test_a_crl_dated_ahead_within_the_clock_skew_is_kept(rig: Rig) -> None:
    rig.crl.regenerate("first")
    assert rig.crl.crl_problem(T0 - CLOCK_SKEW) is None
    assert rig.crl.crl_problem(T0 - CLOCK_SKEW - dt.timedelta(seconds=1)) == (
        f"CRL {N0} is dated 2031-03-01 12:00 UTC, in the future (the clock went back)"
    )


def test_a_crl_of_another_ca_is_not_taken_for_ours(rig: Rig, tmp_path: Path) -> None:
    other = make_rig(tmp_path / "other")
    try:
        other.crl.regenerate("the other CA's")
        shutil.copyfile(other.crl.der_path, rig.crl.der_path)
        shutil.copyfile(other.crl.pem_path, rig.crl.pem_path)
    finally:
        other.store.close()
    assert rig.crl.published_crl() is None
    assert rig.crl.crl_problem(T0) == f"{rig.crl.der_path} is not a valid CRL of this CA"
    # and its number does not count
    assert rig.crl.refresh() == CrlFacts(N0, T0, T0 + dt.timedelta(days=7), 0)


def test_refresh_makes_a_crl_only_when_due(rig: Rig) -> None:
    first = rig.crl.refresh()
    assert first is not None and first.number == N0
    assert rig.crl.refresh() is None
    rig.clock.set(T0 + dt.timedelta(days=4) - dt.timedelta(seconds=1))
    assert rig.crl.refresh() is None
    rig.clock.set(T0 + dt.timedelta(days=4))
    second = rig.crl.refresh()
    assert second is not None and second.number == N0 + 4 * 86400 * 10**9
    assert second.this_update == rig.clock.now()
    assert rig.told == [N0, second.number]


def test_the_crl_number_never_goes_back_with_the_index(rig: Rig, tmp_path: Path) -> None:
    """Numbers come from the time: a copy of the state restored from a backup (index and
    CRL files) uses none of the numbers published after the backup was taken, and a clock
    that went back does not take the number back."""
    rig.crl.regenerate("before the backup")
    backup = tmp_path / "backup"
    backup.mkdir()
    for path in (rig.crl.der_path, rig.crl.pem_path):
        shutil.copy2(path, backup / path.name)
    with rig.store.begin() as conn:
        counter_at_backup = rig.store.get_meta(conn, "crl_number")
    after = []
    for _ in range(100):  # a burst of revocations after the backup, within a second
        after.append(rig.crl.regenerate("after the backup").number)
        rig.clock.advance(dt.timedelta(milliseconds=1))
    assert after == sorted(set(after)) and after[0] > N0
    rig.clock.advance(dt.timedelta(minutes=5))  # the restore, later
    with rig.store.begin() as conn:
        rig.store.set_meta(conn, "crl_number", str(counter_at_backup))
    for path in (rig.crl.der_path, rig.crl.pem_path):
        shutil.copy2(backup / path.name, path)
    restored = rig.crl.regenerate("after the restore").number
    assert restored > max(after)
    assert restored == N0 + 300_100_000_000  # 5 minutes and the burst's 0.1 s later
    rig.clock.set(T0 - dt.timedelta(days=1))  # the clock went back a day
    assert rig.crl.regenerate("clock went back").number == restored + 1
    assert (restored + 1).bit_length() <= 159  # a CRL number has at most 20 octets


def test_a_failed_publication_is_reported_and_recorded(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    rig.crl.der_path.mkdir()  # crl.der cannot be replaced
    with pytest.raises(PublishError, match="the CRL could not be written"):
        rig.crl.regenerate("test")
    error = rig.meta(META_CRL_ERROR)
    assert error is not None and error.startswith("2031-03-01 12:00 UTC: ")
    assert rig.told == []
    # the periodic job logs it and carries on
    with caplog.at_level(logging.ERROR, logger="certdrop.publish"):
        rig.crl.check()
    assert "CRL check: the CRL could not be written" in caplog.text
    rig.crl.der_path.rmdir()
    rig.crl.check()
    assert rig.meta(META_CRL_ERROR) == ""
    assert rig.told == [rig.facts().number]


def test_a_large_crl_is_linted_through_a_sample_of_its_shape(tmp_path: Path) -> None:
    """Thousands of revoked entries: the published CRL lists them all and lints clean."""
    env = make_env(tmp_path)
    store = Store(env.settings.database_url).open()
    try:
        ca = CertificateAuthority.load(env.state)
        crl = CrlPublisher(env.settings.crl, env.state, store, ca, env.clock, shared_linter())
        now = env.clock.now()
        reasons = ["keyCompromise", "affiliationChanged", "superseded", "unspecified"]
        n = LINT_FULL_CRL_MAX + 500
        certs = [
            NewCertificate(
                serial=f"{0x1000 + i:X}",
                subject=f"CN=r{i}",
                common_name=f"r{i}",
                email="",
                not_before=now - dt.timedelta(days=10),
                not_after=now + dt.timedelta(days=300),
                profile="client",
                request_name=f"r{i}",
                request_fingerprint=f"{i:064x}",
                issued_at=now - dt.timedelta(days=10),
                der=b"\x30\x00",
                status="revoked",
                revoked_at=now - dt.timedelta(minutes=i),
                revocation_reason=reasons[i % 4],
            )
            for i in range(n)
        ]
        with store.begin() as conn:
            store.add_certificates(conn, certs)
        crl.regenerate("test")
    finally:
        store.close()
    der = (env.state / "crl.der").read_bytes()
    published = x509.load_der_x509_crl(der)
    assert len(published) == n
    assert {r.serial_number for r in published} == {0x1000 + i for i in range(n)}
    assert stock_linter().crl(der) == []  # the whole CRL, as the sample promised
