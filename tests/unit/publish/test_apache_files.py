"""The Apache publisher without Apache: the files, the commands, the outcome, the alert.

The configtest and reload commands are real small programs (/bin/sh scripts that
append to a marker file, and fail while a flag file exists); the CRL comes from a
real CrlPublisher over a real CA and SQLite index. test_apache.py (e2e) runs the
same publication against a real Apache httpd.
"""

from __future__ import annotations

import datetime as dt
import json
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certdrop.authority.ca import CertificateAuthority
from certdrop.authority.lifecycle import CHAIN_CRLS
from certdrop.clock import Clock, ManualClock
from certdrop.config import ApacheSettings
from certdrop.index.store import NewCertificate, Store
from certdrop.publish.apache import META_APACHE, ApacheOutcome, ApachePublisher
from certdrop.publish.crl import CrlPublisher
from conftest import CAEnv, make_env

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def counter(marker: Path, fail_while: Path, message: str = "", code: int = 1) -> list[str]:
    """A program that appends a line to `marker`, and fails while `fail_while` exists."""
    return [
        "/bin/sh",
        "-c",
        f"echo x >> '{marker}'; test ! -e '{fail_while}' || {{ echo '{message}'; exit {code}; }}",
    ]


def runs(marker: Path) -> int:
    return marker.read_text().count("x") if marker.exists() else 0


@dataclass
class Rig:
    env: CAEnv
    store: Store
    crl: CrlPublisher
    apache: ApachePublisher
    marks: Path  # the commands' run counters and failure flags ("broken", "down")
    alerts: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ca_file(self) -> Path:
        return self.apache.settings.ca_file

    @property
    def crl_file(self) -> Path:
        return self.apache.settings.crl_file

    def tests(self) -> int:
        return runs(self.marks / "configtests.txt")

    def reloads(self) -> int:
        return runs(self.marks / "reloads.txt")

    def status_doc(self) -> dict[str, object]:
        with self.store.begin() as conn:
            raw = self.store.get_meta(conn, META_APACHE)
        assert raw is not None
        doc: dict[str, object] = json.loads(raw)
        return doc

    def revoke_one(self, serial: str) -> None:
        now = self.crl.clock.now()
        cert = NewCertificate(
            serial=serial,
            subject=f"CN={serial}",
            common_name=serial,
            email="",
            not_before=now - dt.timedelta(days=1),
            not_after=now + dt.timedelta(days=300),
            profile="client",
            request_name=serial,
            request_fingerprint=serial.rjust(64, "0"),
            issued_at=now - dt.timedelta(days=1),
            der=b"\x30\x00",
            status="revoked",
            revoked_at=now,
            revocation_reason="keyCompromise",
        )
        with self.store.begin() as conn:
            self.store.add_certificate(conn, cert)
        self.crl.regenerate(f"{serial} revoked")


def make_rig(
    env: CAEnv,
    clock: Clock | None = None,
    *,
    reload: bool = True,
    debounce: float = 0,
    crl_file: Path | None = None,
) -> Rig:
    marks = env.root / "apache"
    marks.mkdir()
    web = env.root / "web"
    store = Store(env.settings.database_url).open()
    ca = CertificateAuthority.load(env.state)
    clock = clock or ManualClock(NOW)
    crl = CrlPublisher(env.settings.crl, env.state, store, ca, clock, linter=None)
    settings = ApacheSettings(
        enabled=True,
        ca_file=web / "ca-bundle.pem",
        crl_file=crl_file or web / "crl.pem",
        configtest_command=counter(
            marks / "configtests.txt", marks / "broken", "AH00526: Syntax error on line 3"
        ),
        reload_command=(
            counter(marks / "reloads.txt", marks / "down", "httpd not running", 3) if reload else []
        ),
        debounce_seconds=debounce,
        command_timeout_seconds=30,
    )
    alerts: list[tuple[str, str]] = []
    apache = ApachePublisher(
        settings,
        crl,
        ca,
        store,
        clock,
        env.state / CHAIN_CRLS,
        on_failure=lambda subject, body: alerts.append((subject, body)),
    )
    crl.add_listener(apache.changed)
    return Rig(env, store, crl, apache, marks, alerts)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = make_rig(make_env(tmp_path))
    yield r
    r.apache.close()
    r.store.close()


def test_nothing_is_published_before_there_is_a_crl(rig: Rig) -> None:
    assert rig.apache.out_of_date() is False
    outcome = rig.apache.publish()
    assert outcome == ApacheOutcome(
        False, "error", f"there is no CRL in {rig.crl.der_path} yet; run 'certdrop crl'"
    )
    assert not rig.ca_file.parent.exists() and rig.tests() == 0 and rig.reloads() == 0
    assert rig.apache.last_outcome() == outcome


def test_files_are_written_once_per_change_then_configtested_and_reloaded(rig: Rig) -> None:
    rig.crl.regenerate("first")  # the listener publishes at once (no debounce)
    assert rig.ca_file.read_bytes() == rig.env.ca_cert.read_bytes()
    assert rig.crl_file.read_bytes() == rig.crl.pem_path.read_bytes()
    for path in (rig.ca_file, rig.crl_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert (rig.tests(), rig.reloads()) == (1, 1)
    assert rig.apache.last_outcome() == ApacheOutcome(True, "reloaded", "")
    assert rig.apache.out_of_date() is False
    ca_inode = rig.ca_file.stat().st_ino

    # nothing changed: no write, no command; the status keeps the last real publication
    assert rig.apache.publish() == ApacheOutcome(True, "unchanged")
    assert (rig.tests(), rig.reloads()) == (1, 1)
    assert rig.status_doc()["action"] == "reloaded"

    # a revocation: the CRL file is replaced, the CA file is not touched
    rig.revoke_one("0C03")
    assert rig.crl_file.read_bytes() == rig.crl.pem_path.read_bytes()
    assert rig.ca_file.stat().st_ino == ca_inode
    assert (rig.tests(), rig.reloads()) == (2, 2)
    assert not list(rig.ca_file.parent.glob(".*"))  # no temporary files left behind
    assert rig.alerts == []


def test_a_failing_configtest_restores_the_files_and_alerts(rig: Rig) -> None:
    rig.crl.regenerate("first")
    old_ca, old_crl = rig.ca_file.read_bytes(), rig.crl_file.read_bytes()
    (rig.marks / "broken").touch()
    rig.revoke_one("0D04")
    outcome = rig.apache.last_outcome()
    assert outcome is not None and not outcome.ok and outcome.action == "configtest-failed"
    assert "AH00526: Syntax error on line 3" in outcome.detail
    assert outcome.detail.endswith("; previous files restored, Apache not reloaded")
    assert (rig.ca_file.read_bytes(), rig.crl_file.read_bytes()) == (old_ca, old_crl)
    assert (rig.tests(), rig.reloads()) == (2, 1)
    [(subject, body)] = rig.alerts
    assert subject == "Apache publication failed: configtest-failed"
    assert "AH00526" in body and "Apache was not reloaded" in body
    assert rig.status_doc()["ok"] is False
    assert rig.apache.out_of_date() is True

    # fixed: the periodic check publishes what is pending
    (rig.marks / "broken").unlink()
    rig.apache.check()
    assert rig.crl_file.read_bytes() == rig.crl.pem_path.read_bytes()
    assert rig.reloads() == 2 and rig.apache.out_of_date() is False
    assert rig.apache.last_outcome() == ApacheOutcome(True, "reloaded", "")


def test_a_failing_first_configtest_leaves_no_files(rig: Rig) -> None:
    (rig.marks / "broken").touch()
    rig.crl.regenerate("first")
    assert not rig.ca_file.exists() and not rig.crl_file.exists()
    assert rig.reloads() == 0 and len(rig.alerts) == 1


def test_a_failed_reload_is_tried_again_at_the_next_check(rig: Rig) -> None:
    (rig.marks / "down").touch()
    rig.crl.regenerate("first")
    outcome = rig.apache.last_outcome()
    assert outcome is not None and outcome.action == "reload-failed"
    assert "exited 3: httpd not running" in outcome.detail
    assert rig.crl_file.read_bytes() == rig.crl.pem_path.read_bytes()  # written, kept
    assert rig.alerts[0][0] == "Apache publication failed: reload-failed"
    # the files are right but Apache never loaded them
    assert rig.apache.out_of_date() is True
    (rig.marks / "down").unlink()
    rig.apache.check()
    assert rig.reloads() == 2 and rig.tests() == 2
    assert rig.apache.out_of_date() is False


def test_without_a_reload_command_the_files_are_only_written(tmp_path: Path) -> None:
    rig = make_rig(make_env(tmp_path), reload=False)
    try:
        rig.crl.regenerate("first")
        assert rig.apache.last_outcome() == ApacheOutcome(
            True, "written", "no reload_command: the reload is left to a path unit"
        )
        assert rig.crl_file.read_bytes() == rig.crl.pem_path.read_bytes()
        assert rig.tests() == 1 and rig.apache.out_of_date() is False
    finally:
        rig.store.close()


def test_a_file_that_cannot_be_written_takes_the_other_back(tmp_path: Path) -> None:
    # a name whose temporary sibling (".NAME.<random>.tmp") is too long for the file system
    long_name = tmp_path / "web" / ("c" * 250)
    rig = make_rig(make_env(tmp_path / "ca"), crl_file=long_name)
    try:
        rig.crl.regenerate("first")
        outcome = rig.apache.last_outcome()
        assert outcome is not None and outcome.action == "error"
        assert outcome.detail.startswith("cannot write ")
        assert outcome.detail.endswith(": File name too long")
        assert not rig.ca_file.exists()  # written first, then taken back
        assert rig.tests() == 0 and rig.reloads() == 0
        assert rig.alerts[0][0] == "Apache publication failed: error"
    finally:
        rig.store.close()


def test_debounced_publication_runs_on_flush_or_at_close(tmp_path: Path) -> None:
    rig = make_rig(make_env(tmp_path), debounce=3600)
    try:
        rig.apache.start_background()
        assert rig.apache.debounced
        rig.crl.regenerate("first")
        rig.crl.regenerate("second")  # one burst
        assert not rig.crl_file.exists()
        rig.apache.flush()
        assert rig.reloads() == 1
        assert rig.crl_file.read_bytes() == rig.crl.pem_path.read_bytes()
        rig.revoke_one("0E05")
        assert rig.reloads() == 1
        rig.apache.close()  # a publication still waiting is done now
        assert not rig.apache.debounced
        assert rig.reloads() == 2
        assert rig.crl_file.read_bytes() == rig.crl.pem_path.read_bytes()
    finally:
        rig.apache.close()
        rig.store.close()


# --- an adopted intermediate: the CRLs of the CAs above it ----------------------------------------
def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "BE"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "MyOrg"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _ca_cert(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    path_length: int,
) -> x509.Certificate:
    start = NOW - dt.timedelta(days=1)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False
        )
        .sign(issuer_key, hashes.SHA256())
    )


def _crl_of(
    issuer: x509.Name, key: ec.EllipticCurvePrivateKey, last: dt.datetime, days: int = 30
) -> x509.CertificateRevocationList:
    return (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer)
        .last_update(last)
        .next_update(last + dt.timedelta(days=days))
        .add_extension(x509.CRLNumber(1), critical=False)
        .sign(key, hashes.SHA256())
    )


def _pem(crl: x509.CertificateRevocationList) -> bytes:
    return crl.public_bytes(serialization.Encoding.PEM)


def test_the_crls_of_the_cas_above_are_merged_with_warnings(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    root_key, inter_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(2))
    root = _ca_cert(_name("Root CA"), root_key, _name("Root CA"), root_key, 1)
    inter = _ca_cert(_name("Issuing CA"), inter_key, root.subject, root_key, 0)
    (pki / "root.pem").write_bytes(root.public_bytes(serialization.Encoding.PEM))
    (pki / "inter.pem").write_bytes(inter.public_bytes(serialization.Encoding.PEM))
    (pki / "inter.key").write_bytes(
        inter_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    env = make_env(tmp_path / "ca", init=False)
    code, _, err = env.cli(
        "init",
        "--ca-cert", str(pki / "inter.pem"),
        "--ca-key", str(pki / "inter.key"),
        "--ca-chain", str(pki / "root.pem"),
    )  # fmt: skip
    assert code == 0, err
    clock = ManualClock(NOW)
    rig = make_rig(env, clock)
    chain_dir = env.state / CHAIN_CRLS
    try:
        rig.crl.regenerate("first")
        # the CA file: the issuing CA and the root above it, merged
        bundle = x509.load_pem_x509_certificates(rig.ca_file.read_bytes())
        assert [c.subject for c in bundle] == [inter.subject, root.subject]
        # no CRL of the root yet: published anyway, with the warning
        outcome = rig.apache.publish()
        assert outcome.ok and outcome.action == "unchanged"
        [warning] = outcome.warnings
        assert warning.startswith("no CRL of ") and "Root CA" in warning
        assert warning.endswith(
            f"in {chain_dir}: with SSLCARevocationCheck chain, Apache refuses every client "
            "until there is one"
        )
        assert rig.status_doc()["warnings"] == [warning]  # what `certdrop status` shows

        # what the operator drops there: junk, a forgery, an old and a newer real CRL
        chain_dir.mkdir()
        (chain_dir / "notes.txt").write_text("not a CRL")
        forged = _crl_of(root.subject, ec.generate_private_key(ec.SECP256R1()), NOW)
        (chain_dir / "forged.crl").write_bytes(_pem(forged))
        older = _crl_of(root.subject, root_key, NOW - dt.timedelta(days=2))
        newer = _crl_of(root.subject, root_key, NOW - dt.timedelta(days=1))
        (chain_dir / "root-old.der").write_bytes(older.public_bytes(serialization.Encoding.DER))
        (chain_dir / "root.pem").write_bytes(_pem(newer))
        (chain_dir / ".hidden.crl").write_text("skipped: hidden")
        crls, warnings = rig.apache.chain_crls()
        assert crls == [newer]
        assert len(warnings) == 2
        assert warnings[0].startswith(f"{chain_dir / 'notes.txt'} is not a CRL (")
        assert warnings[1].startswith(f"{chain_dir / 'forged.crl'}: CRL not signed by ")
        assert rig.apache.out_of_date() is True
        rig.apache.check()
        merged = rig.crl_file.read_bytes()
        assert merged == rig.crl.pem_path.read_bytes() + _pem(newer)
        assert rig.reloads() == 2

        # the root's CRL expires: Apache would refuse everybody, and the warning says so
        clock.set(NOW + dt.timedelta(days=30))
        (chain_dir / "notes.txt").unlink()
        (chain_dir / "forged.crl").unlink()
        [expired] = rig.apache.chain_crls()[1]
        assert "expired at" in expired and f"put a fresh CRL in {chain_dir}" in expired
    finally:
        rig.store.close()
