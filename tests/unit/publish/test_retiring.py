"""publish/retiring.py: every publishing CA's CRL after a rollover (a real CA, a real
SQLite index, time on a ManualClock), and Apache's files holding each of them."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certdrop.authority.ca import CertificateAuthority
from certdrop.authority.lifecycle import CHAIN_CRLS, ca_id
from certdrop.authority.rollover import ca_folder, stage_next_ca, switch_issuing
from certdrop.clock import ManualClock
from certdrop.config import ApacheSettings
from certdrop.index import cas
from certdrop.index.store import NewCertificate, Store
from certdrop.publish.apache import ApachePublisher
from certdrop.publish.retiring import CrlSet, load_crls
from certdrop.publish.revocation import Revoker
from conftest import CAEnv, make_env, stock_linter

T0 = dt.datetime.now(dt.UTC).replace(microsecond=0)


def _cert(serial: str, issuer: str, days: int) -> NewCertificate:
    return NewCertificate(
        serial=serial,
        subject=f"CN={serial}",
        common_name=serial,
        email="",
        not_before=T0,
        not_after=T0 + dt.timedelta(days=days),
        profile="client",
        request_name=serial,
        request_fingerprint=serial.rjust(64, "0"),
        issued_at=T0,
        der=b"\x30\x00",
        issuer=issuer,
    )


def _crls(env: CAEnv, store: Store, clock: ManualClock) -> CrlSet:
    ca = CertificateAuthority.load(env.state)
    return load_crls(env.settings.crl, env.state, store, ca, clock, stock_linter(), passphrase=None)


def _rolled_over(env: CAEnv, store: Store, clock: ManualClock) -> tuple[str, str]:
    """The first CA issued one certificate for 100 days and has a CRL; then a rollover."""
    old = _crls(env, store, clock)
    with store.begin() as conn:
        store.add_certificate(conn, _cert("0A", old.issuing.ca.id, 100))
    old.issuing.regenerate("first")
    new = stage_next_ca(env.state, env.settings.ca, clock.now(), None)
    switch_issuing(env.state, ca_id(new))
    return old.issuing.ca.id, ca_id(new)


def test_each_ca_keeps_its_own_crl_until_its_last_certificate_ends(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    clock = ManualClock(T0)
    store = Store(env.settings.database_url).open()
    try:
        old_id, new_id = _rolled_over(env, store, clock)
        crls = _crls(env, store, clock)
        assert crls.issuing.ca.id == new_id
        [retiring] = crls.retiring()
        assert retiring.ca.id == old_id and retiring.folder == ca_folder(env.state, old_id)
        told: list[int] = []
        crls.add_listener(lambda: told.append(1))

        # a certificate of each CA revoked: each lands on its CA's CRL
        with store.begin() as conn:
            store.add_certificate(conn, _cert("0B", new_id, 30))
            store.revoke(conn, "0A", "keyCompromise", clock.now())
            store.revoke(conn, "0B", "superseded", clock.now())
        assert crls.for_issuer(old_id) is retiring
        assert crls.for_issuer(new_id) is crls.issuing
        assert crls.for_issuer(None) is crls.issuing  # no CA claimed it: the current one's
        assert crls.for_issuer("cc" * 32) is None  # a CA that publishes no CRL
        retiring.regenerate("0A revoked")
        crls.issuing.regenerate("0B revoked")
        old_crl = x509.load_der_x509_crl(retiring.der_path.read_bytes())
        new_crl = x509.load_der_x509_crl(crls.issuing.der_path.read_bytes())
        assert [r.serial_number for r in old_crl] == [0x0A]
        assert [r.serial_number for r in new_crl] == [0x0B]
        assert old_crl.is_signature_valid(retiring.ca.cert.public_key())  # type: ignore[arg-type]
        for crl in (old_crl, new_crl):
            assert stock_linter().crl(crl.public_bytes(serialization.Encoding.DER)) == []

        # the periodic job keeps the retiring CA's CRL fresh (7 days, renewed 3 before)
        clock.set(T0 + dt.timedelta(days=5))
        crls.check()
        fresher = x509.load_der_x509_crl(retiring.der_path.read_bytes())
        assert fresher.last_update_utc == clock.now()
        assert [r.serial_number for r in fresher] == [0x0A]
        assert told and crls.retiring() == [retiring]

        # its last certificate ended: retired, no longer published, listeners told
        told.clear()
        clock.set(T0 + dt.timedelta(days=100, seconds=1))
        crls.check()
        assert crls.retiring() == [] and told
        with store.begin() as conn:
            states = {r.id: r.state for r in cas.list_cas(conn)}
        assert states == {new_id: cas.CURRENT, old_id: cas.RETIRED}
        # and it stays retired at the next start
        assert _crls(env, store, clock).retiring() == []
    finally:
        store.close()


def test_apache_files_hold_both_cas_and_both_crls(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    clock = ManualClock(T0)
    store = Store(env.settings.database_url).open()
    try:
        old_id, _ = _rolled_over(env, store, clock)
        crls = _crls(env, store, clock)
        crls.issuing.regenerate("the new CA's first")
        web = tmp_path / "web"
        apache = ApachePublisher(
            ApacheSettings(enabled=True, ca_file=web / "ca.pem", crl_file=web / "crl.pem"),
            crls.issuing,
            crls.issuing.ca,
            store,
            clock,
            env.state / CHAIN_CRLS,
            others=crls.retiring,
        )
        bundle, crl_pem, warnings = apache.contents()
        assert warnings == []
        certs = x509.load_pem_x509_certificates(bundle)
        assert [ca_id(c) for c in certs] == [crls.issuing.ca.id, old_id]
        marker = b"-----BEGIN X509 CRL-----"
        listed = [x509.load_pem_x509_crl(marker + b) for b in crl_pem.split(marker)[1:]]
        assert [c.is_signature_valid(k.public_key()) for c, k in zip(listed, certs)] == [  # type: ignore[arg-type]
            True,
            True,
        ]

        # a retiring CA without a CRL is said, not hidden
        crls.retiring()[0].der_path.unlink()
        _, crl_pem, warnings = apache.contents()
        assert crl_pem.count(marker) == 1
        assert "no CRL of the retiring CA CN=Test CA,O=MyOrg,C=BE" in warnings[0]

        # retired: the bundle and the CRL file hold the current CA alone
        clock.set(T0 + dt.timedelta(days=101))
        crls.retire_finished()
        bundle, crl_pem, _ = apache.contents()
        assert [ca_id(c) for c in x509.load_pem_x509_certificates(bundle)] == [crls.issuing.ca.id]
        assert crl_pem.count(marker) == 1
    finally:
        store.close()


def test_a_retiring_ca_whose_key_is_gone_is_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    env = make_env(tmp_path)
    clock = ManualClock(T0)
    store = Store(env.settings.database_url).open()
    try:
        old_id, _ = _rolled_over(env, store, clock)
        (ca_folder(env.state, old_id) / "ca.key").unlink()
        with caplog.at_level(logging.ERROR, "certdrop.publish"):
            crls = _crls(env, store, clock)
        assert crls.retiring() == []
        assert "the retiring CA CN=Test CA,O=MyOrg,C=BE cannot sign its CRL any more" in (
            caplog.text
        )
        # its certificate is still revoked in the index, and the operator is told where
        # it is not published (not the current CA's CRL, which does not list it)
        before = crls.issuing.der_path.read_bytes() if crls.issuing.der_path.exists() else b""
        line = Revoker(store, clock, crls.issuing, None, crls=crls).revoke("0A")
        assert line.startswith("revoked 0A (CN=0A), reason unspecified; it was issued by the CA ")
        assert f"{old_id}, which publishes no CRL any more" in line
        with store.begin() as conn:
            assert store.get(conn, "0A").status == "revoked"  # type: ignore[union-attr]
        after = crls.issuing.der_path.read_bytes() if crls.issuing.der_path.exists() else b""
        assert after == before
    finally:
        store.close()
