"""Revocation: which certificate a reference means, and `Revoker.revoke` with a real
CA, a real SQLite index and the CRL it publishes."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from certdrop.authority.ca import CertificateAuthority
from certdrop.authority.lifecycle import CHAIN_CRLS
from certdrop.clock import ManualClock
from certdrop.config import ApacheSettings
from certdrop.errors import CertdropError, NotFoundError
from certdrop.index import journal, listing
from certdrop.index.store import CertRecord, NewCertificate, Store
from certdrop.publish.apache import ApachePublisher
from certdrop.publish.crl import CrlPublisher
from certdrop.publish.revocation import Revoker, choose_for_revocation
from conftest import CAEnv, make_env

T0 = dt.datetime(2031, 3, 1, 12, 0, tzinfo=dt.UTC)
N0 = 1930132800 * 10**9  # the number of a CRL made at T0 (its time in nanoseconds)


@dataclass
class Rig:
    env: CAEnv
    store: Store
    ca: CertificateAuthority
    clock: ManualClock
    crl: CrlPublisher

    def add(
        self,
        serial: str,
        name: str,
        cn: str,
        *,
        days_left: int = 300,
        revoked: bool = False,
        reason: str | None = None,
        email: str = "",
        superseded: bool = False,
    ) -> None:
        cert = NewCertificate(
            serial=serial,
            subject=f"CN={cn}" + (f", emailAddress={email}" if email else ""),
            common_name=cn,
            email=email,
            not_before=T0 - dt.timedelta(days=10),
            not_after=T0 + dt.timedelta(days=days_left),
            profile="client",
            request_name=name,
            request_fingerprint=serial.rjust(64, "0"),
            issued_at=T0 - dt.timedelta(days=10),
            der=b"\x30\x00",
            attrs=[("CN", cn), *([("emailAddress", email)] if email else [])],
            status="revoked" if revoked else "superseded" if superseded else "valid",
            revoked_at=T0 - dt.timedelta(days=1) if revoked else None,
            revocation_reason=reason,
        )
        with self.store.begin() as conn:
            self.store.add_certificate(conn, cert)

    def find(self, ref: str) -> list[CertRecord]:
        with self.store.begin() as conn:
            return listing.find(conn, ref)

    def get(self, serial: str) -> CertRecord:
        with self.store.begin() as conn:
            rec = self.store.get(conn, serial)
        assert rec is not None
        return rec

    def revoker(self, apache: ApachePublisher | None = None) -> Revoker:
        return Revoker(self.store, self.clock, self.crl, apache)

    def apache(self, configtest: list[str], debounce: float = 0) -> ApachePublisher:
        web = self.env.root / "web"
        settings = ApacheSettings(
            enabled=True,
            ca_file=web / "ca.pem",
            crl_file=web / "crl.pem",
            configtest_command=configtest,
            reload_command=["true"],
            debounce_seconds=debounce,
        )
        pub = ApachePublisher(
            settings, self.crl, self.ca, self.store, self.clock, self.env.state / CHAIN_CRLS
        )
        self.crl.add_listener(pub.changed)
        return pub


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    env = make_env(tmp_path)
    store = Store(env.settings.database_url).open()
    ca = CertificateAuthority.load(env.state)
    clock = ManualClock(T0)
    yield Rig(
        env, store, ca, clock, CrlPublisher(env.settings.crl, env.state, store, ca, clock, None)
    )
    store.close()


# --- choose_for_revocation -----------------------------------------------------------------------------
def test_nothing_matches(rig: Rig) -> None:
    with pytest.raises(NotFoundError) as err:
        choose_for_revocation(rig.find("nobody"), "nobody", T0)
    assert str(err.value) == (
        "no certificate with serial, request name, CN or e-mail 'nobody'; "
        "see 'certdrop list --search TEXT'"
    )


def test_one_match_is_taken_even_expired_but_not_when_revoked(rig: Rig) -> None:
    rig.add("0A01", "old", "Old", days_left=-5)
    assert choose_for_revocation(rig.find("old"), "old", T0).serial == "0A01"
    rig.add("0A02", "gone", "Gone", reason="keyCompromise", revoked=True)
    with pytest.raises(NotFoundError) as err:
        choose_for_revocation(rig.find("0a02"), "0a02", T0)
    assert str(err.value) == (
        "certificate 0A02 (CN=Gone) is already revoked (since 2031-02-28 12:00 UTC, "
        "reason keyCompromise)"
    )
    rig.add("0A03", "quiet", "Quiet", revoked=True)
    with pytest.raises(NotFoundError, match=r"reason unspecified\)$"):
        choose_for_revocation(rig.find("quiet"), "quiet", T0)


def test_of_several_the_one_still_valid_is_taken(rig: Rig) -> None:
    rig.add("0B01", "dave", "Dave One", days_left=-1)
    rig.add("0B02", "dave", "Dave Two", reason="superseded", revoked=True)
    rig.add("0B03", "dave", "Dave Three")
    assert choose_for_revocation(rig.find("dave"), "dave", T0).serial == "0B03"


def test_several_still_valid_are_refused_with_their_serials(rig: Rig) -> None:
    rig.add("0C01", "erin", "Erin One")
    rig.add("0C02", "erin", "Erin Two")
    rig.add("0C03", "erin", "Erin Old", days_left=-1)
    with pytest.raises(NotFoundError) as err:
        choose_for_revocation(rig.find("erin"), "erin", T0)
    msg = str(err.value)
    assert msg.startswith(
        "'erin' matches 2 certificates that are still valid; revoke one at a time by serial: "
    )
    assert "0C01 (valid, until 2031-12-26, CN=Erin One)" in msg
    assert "0C02 (valid, until 2031-12-26, CN=Erin Two)" in msg
    assert "0C03" not in msg


def test_none_still_valid_is_refused(rig: Rig) -> None:
    rig.add("0D01", "fay", "Fay One", reason="superseded", revoked=True)
    rig.add("0D02", "fay", "Fay Two", revoked=True)
    with pytest.raises(NotFoundError) as err:
        choose_for_revocation(rig.find("fay"), "fay", T0)
    assert str(err.value).startswith("every certificate of 'fay' is already revoked: ")
    assert "0D01 (revoked, until" in str(err.value)
    rig.add("0D03", "fay", "Fay Three", days_left=-3)
    with pytest.raises(NotFoundError) as err:
        choose_for_revocation(rig.find("fay"), "fay", T0)
    assert str(err.value).startswith(
        "no certificate of 'fay' is still valid; to revoke an expired one anyway, give its serial: "
    )
    assert "0D03 (expired, until 2031-02-26, CN=Fay Three)" in str(err.value)


# --- Revoker.revoke -------------------------------------------------------------------------------------
def test_revoke_by_serial_records_it_and_publishes_the_crl(rig: Rig) -> None:
    rig.add("0E01", "gina", "Gina")
    line = rig.revoker().revoke("0e:01", "key-compromise")
    assert line == (
        f"revoked 0E01 (CN=Gina), reason keyCompromise; CRL {N0} published in {rig.crl.pem_path}"
    )
    rec = rig.get("0E01")
    assert (rec.status, rec.revocation_reason, rec.revoked_at) == ("revoked", "keyCompromise", T0)
    with rig.store.begin() as conn:
        [entry] = journal.journal_for(conn, "gina")
    assert (entry["outcome"], entry["serial"], entry["detail"]) == (
        "revoked",
        "0E01",
        "keyCompromise",
    )
    crl = x509.load_der_x509_crl(rig.crl.der_path.read_bytes())
    [listed] = list(crl)
    assert listed.serial_number == 0x0E01
    assert listed.extensions.get_extension_for_class(x509.CRLReason).value.reason == (
        x509.ReasonFlags.key_compromise
    )


def test_revoke_by_name_takes_the_one_still_valid(rig: Rig) -> None:
    rig.add("0F01", "hank", "Hank", days_left=-1)
    rig.add("0F02", "hank", "Hank")
    line = rig.revoker().revoke(" hank ")
    assert line.startswith(f"revoked 0F02 (CN=Hank), reason unspecified; CRL {N0} published")
    assert rig.get("0F01").status == "valid"
    assert rig.get("0F02").status == "revoked"


def test_a_refused_revocation_changes_nothing(rig: Rig) -> None:
    rig.add("1001", "ivy", "Ivy")
    with pytest.raises(CertdropError, match="'stolen' is not an RFC 5280 revocation reason"):
        rig.revoker().revoke("ivy", "stolen")
    with pytest.raises(NotFoundError, match="no certificate with serial, request name, CN or"):
        rig.revoker().revoke("nobody")
    assert rig.get("1001").status == "valid"
    assert not rig.crl.der_path.exists()


def test_a_revocation_whose_crl_cannot_be_published_still_counts(rig: Rig) -> None:
    rig.add("1101", "jack", "Jack")
    rig.crl.der_path.mkdir()  # crl.der cannot be replaced
    line = rig.revoker().revoke("jack")
    assert line.startswith("revoked 1101 (CN=Jack), reason unspecified; but the CRL could not be")
    assert line.endswith("); the daemon retries, or run 'certdrop crl'")
    assert rig.get("1101").status == "revoked"


def test_the_report_gives_the_apache_outcome(rig: Rig) -> None:
    rig.add("1201", "kim", "Kim")
    ok = rig.apache(["true"])
    assert rig.revoker(ok).revoke("kim").endswith("; Apache: reloaded")


def test_the_report_says_when_apache_was_not_updated(rig: Rig) -> None:
    rig.add("1202", "lou", "Lou")
    failing = rig.apache(["/bin/sh", "-c", "echo AH00526 bad; exit 1"])
    line = rig.revoker(failing).revoke("lou")
    assert line.endswith(
        "; but Apache was NOT updated: configtest-failed (/bin/sh -c echo AH00526 bad; exit 1 "
        "exited 1: AH00526 bad; previous files restored, Apache not reloaded); "
        "see 'certdrop status'"
    )


def test_the_report_says_when_apache_follows_debounced(rig: Rig) -> None:
    rig.add("1203", "max", "Max")
    debounced = rig.apache(["true"], debounce=2)
    debounced.start_background()
    try:
        assert rig.revoker(debounced).revoke("max").endswith("; Apache files follow within 2s")
    finally:
        debounced.close()
    assert (rig.env.root / "web" / "crl.pem").read_bytes() == rig.crl.pem_path.read_bytes()


# --- by CN or e-mail address: several holders, renewals, names that look like serials ---------------
def _statuses(rig: Rig, *serials: str) -> list[str]:
    return [rig.get(s).status for s in serials]


def test_an_e_mail_of_several_holders_still_valid_is_refused_and_nothing_revoked(rig: Rig) -> None:
    rig.add("2001", "team-one", "Team One", email="team@example.org")
    rig.add("2002", "team-two", "Team Two", email="Team@Example.org")
    rig.add("2003", "team-old", "Team Old", email="team@example.org", days_left=-2)
    with pytest.raises(NotFoundError) as err:
        rig.revoker().revoke("TEAM@example.org", "keyCompromise")
    msg = str(err.value)
    assert msg.startswith(
        "'TEAM@example.org' matches 2 certificates that are still valid; revoke one at a time "
        "by serial: "
    )
    assert "2001 (valid, until 2031-12-26, CN=Team One, emailAddress=team@example.org)" in msg
    assert "2002 (valid, until 2031-12-26, CN=Team Two, emailAddress=Team@Example.org)" in msg
    assert "2003" not in msg
    assert _statuses(rig, "2001", "2002", "2003") == ["valid"] * 3
    assert not rig.crl.der_path.exists()
    with rig.store.begin() as conn:
        assert journal.journal_for(conn, "team-one", ["2001", "2002", "2003"]) == []


def test_a_cn_of_several_holders_still_valid_is_refused(rig: Rig) -> None:
    rig.add("2101", "alice", "Alice Martin", email="alice@example.org")
    rig.add("2102", "amartin", "alice martin", email="a.martin@example.net")
    with pytest.raises(NotFoundError, match=r"^'ALICE MARTIN' matches 2 certificates that are"):
        rig.revoker().revoke("ALICE MARTIN")
    assert _statuses(rig, "2101", "2102") == ["valid", "valid"]
    assert not rig.crl.der_path.exists()
    # each holder's own address is unambiguous
    assert rig.revoker().revoke("A.Martin@example.net").startswith("revoked 2102 (CN=alice martin")
    assert _statuses(rig, "2101", "2102") == ["valid", "revoked"]


def test_of_a_holders_certificates_the_one_still_valid_is_revoked(rig: Rig) -> None:
    """A renewal supersedes: of the expired, revoked, renewed-over and current certificates
    of one address, the current one is revoked; the renewed-over one that has not expired
    is named, since relying parties still accept it."""
    rig.add("2201", "carl", "Carl", email="carl@example.org", days_left=-30)
    rig.add("2202", "carl", "Carl", email="carl@example.org", revoked=True, reason="superseded")
    rig.add("2203", "carl-2", "Carl", email="carl@example.org", superseded=True)
    rig.add("2204", "carl-3", "Carl", email="carl@example.org")
    line = rig.revoker().revoke("Carl@Example.ORG", "keyCompromise")
    assert line.startswith(
        "revoked 2204 (CN=Carl, emailAddress=carl@example.org), reason keyCompromise; "
        f"CRL {N0} published in {rig.crl.pem_path}"
    )
    assert line.endswith(
        "; note: 1 superseded certificate(s) of 'Carl@Example.ORG' have not expired and are "
        "not revoked: 2203 (superseded, until 2031-12-26, CN=Carl, emailAddress=carl@example.org); "
        "revoke each by serial if its key is affected"
    )
    assert _statuses(rig, "2201", "2202", "2203", "2204") == [
        "valid",
        "revoked",
        "superseded",
        "revoked",
    ]
    crl = x509.load_der_x509_crl(rig.crl.der_path.read_bytes())
    assert {e.serial_number for e in crl} == {0x2202, 0x2204}
    # nothing of Carl's is still valid now: the expired and renewed-over ones only by serial
    with pytest.raises(NotFoundError) as err:
        rig.revoker().revoke("carl")
    assert str(err.value).startswith(
        "no certificate of 'carl' is still valid; to revoke an expired or superseded one "
        "anyway, give its serial: "
    )
    assert rig.revoker().revoke("2203").startswith("revoked 2203 (CN=Carl")


def test_a_serial_that_is_also_a_name_is_refused_until_0x_says_which(rig: Rig) -> None:
    rig.add("0ADA", "someone", "Someone Else")
    rig.add("2301", "ada", "Ada", email="ada@example.org")
    for ref in ("ada", "ADA"):
        with pytest.raises(NotFoundError) as err:
            rig.revoker().revoke(ref)
        assert str(err.value) == (
            f"'{ref}' is the serial of 0ADA (valid, until 2031-12-26, CN=Someone Else) and "
            "also the request name, CN or e-mail of 1 other certificate(s): 2301 (valid, until "
            "2031-12-26, CN=Ada, emailAddress=ada@example.org); give the serial as 0x0ADA for "
            "the first, or the serial of another"
        )
    assert _statuses(rig, "0ADA", "2301") == ["valid", "valid"]
    assert rig.revoker().revoke("0x0ADA").startswith("revoked 0ADA (CN=Someone Else)")
    assert rig.revoker().revoke("ada@example.org").startswith("revoked 2301 (CN=Ada")
