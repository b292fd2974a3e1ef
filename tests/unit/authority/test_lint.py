"""Lint before sign: pkilint sees a draft with a throwaway signature; a finding refuses, nothing is signed.

The requests here are made by openssl; the profile settings are valid configuration.
What the CA itself checks before and after the real signature is in test_ca.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certdrop.authority.lint import Linter, shared_linter
from certdrop.authority.serials import serial_hex
from certdrop.clock import SystemClock
from certdrop.index import journal, listing
from certdrop.index.store import Store
from certdrop.issue.outcomes import Outcome
from certdrop.service.runtime import Runtime
from conftest import CAEnv, lint_clean, load_cert, make_env, openssl_csr

# a valid profile: key_encipherment only. Fine for RSA keys; for an EC key certdrop
# must drop the bit (RFC 8813), which leaves a keyUsage with no bit set at all.
ENCIPHER_ONLY = {"[profiles.client]\n": '[profiles.client]\nkey_usage = ["key_encipherment"]\n'}


class RecordingLinter:
    """The real linter, remembering every draft it was shown."""

    def __init__(self, real: Linter) -> None:
        self.real = real
        self.drafts: list[x509.Certificate] = []

    def certificate(self, der: bytes) -> list[str]:
        self.drafts.append(x509.load_der_x509_certificate(der))
        return self.real.certificate(der)


def runtime(env: CAEnv) -> tuple[Runtime, RecordingLinter]:
    rt = Runtime.build(env.settings, SystemClock())
    assert rt.linter is shared_linter() and rt.batches.recorder.linter is rt.linter
    rec = RecordingLinter(rt.linter)
    rt.batches.recorder.linter = rec  # type: ignore[assignment]
    return rt, rec


def drop_and_process(rt: Runtime, env: CAEnv, req: Path, name: str) -> Any:
    env.drop(req, f"{name}.req")
    return rt.batches.handle_inbox_file(env.inbox / f"{name}.req", "client")


def index_of(env: CAEnv) -> tuple[list[Any], list[dict[str, Any]]]:
    store = Store(env.settings.database_url)
    try:
        with store.begin() as conn:
            return listing.list_certs(conn), [
                j for n in ("ecreq", "longmail") for j in journal.journal_for(conn, n)
            ]
    finally:
        store.close()


def test_profile_keyusage_that_empties_for_ec_is_refused_unsigned(
    tmp_path: Path,
) -> None:
    env = make_env(tmp_path / "ca", replace=ENCIPHER_ONLY)
    rt, rec = runtime(env)
    try:
        ec_req, _ = openssl_csr(tmp_path / "u", "ecreq", "/CN=EC User", kind="ec:prime256v1")
        res = drop_and_process(rt, env, ec_req, "ecreq")
        assert res.outcome is Outcome.REJECTED
        reason = (env.rejected / "ecreq.reason").read_text()
        assert "would not be standards-compliant" in reason
        assert "ERROR pkix.no_ku_bits_set" in reason  # pkilint's finding, as the reason
        # what was linted was a draft signed with a throwaway key, never by the CA
        (draft,) = rec.drafts
        ca = load_cert(env.ca_cert)
        with pytest.raises(Exception):  # InvalidSignature (or ValueError)
            draft.verify_directly_issued_by(ca)
        # nothing issued: no certificate, no outputs, the draft's serial unused
        certs, journal = index_of(env)
        assert certs == []
        assert [j["outcome"] for j in journal] == ["rejected"]
        assert not list(env.outbox.iterdir())
        assert not [p for p in (env.spool / "work").rglob("*") if p.is_file()]
        with rt.store.begin() as conn:
            assert not rt.store.serial_exists(conn, serial_hex(draft.serial_number))

        # the same profile with an RSA key: keyEncipherment is set, lint is clean
        rsa_req, _ = openssl_csr(tmp_path / "u", "rsareq", "/CN=RSA User")
        res = drop_and_process(rt, env, rsa_req, "rsareq")
        assert res.outcome is Outcome.ISSUED, res.reason
        cert = load_cert(env.outbox / "rsareq.cer")
        assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_encipherment
        # the certificate the CA signed is the draft that was linted, to the byte
        assert rec.drafts[-1].tbs_certificate_bytes == cert.tbs_certificate_bytes
        assert rec.drafts[-1].signature != cert.signature
        cert.verify_directly_issued_by(load_cert(env.ca_cert))
        assert lint_clean(cert.public_bytes(serialization.Encoding.DER)) == []
    finally:
        rt.close()


def test_overlong_email_local_part_passes_policy_but_not_lint(tmp_path: Path) -> None:
    """RFC 5321 limits a local part to 64 octets; the policy only bounds the address."""
    env = make_env(tmp_path / "ca")
    rt, rec = runtime(env)
    try:
        local = "a" * 65
        req, _ = openssl_csr(
            tmp_path / "u", "longmail", f"/CN=Long Mail/emailAddress={local}@example.org"
        )
        res = drop_and_process(rt, env, req, "longmail")
        assert res.outcome is Outcome.REJECTED
        reason = (env.rejected / "longmail.reason").read_text()
        assert "pkix.invalid_email_address_syntax" in reason
        assert len(rec.drafts) == 1
        certs, _ = index_of(env)
        assert certs == []
    finally:
        rt.close()


def test_lint_off_signs_what_lint_would_refuse(tmp_path: Path) -> None:
    """`[policy] lint = false` really switches it off (and shows what lint protects from)."""
    env = make_env(tmp_path / "ca", replace={**ENCIPHER_ONLY, "lint = true": "lint = false"})
    rt = Runtime.build(env.settings, SystemClock())
    try:
        assert rt.linter is None and rt.batches.recorder.linter is None
        req, _ = openssl_csr(tmp_path / "u", "ecreq", "/CN=EC User", kind="ec:prime256v1")
        res = drop_and_process(rt, env, req, "ecreq")
        assert res.outcome is Outcome.ISSUED
        der = load_cert(env.outbox / "ecreq.cer").public_bytes(serialization.Encoding.DER)
        assert any("no_ku_bits_set" in f for f in lint_clean(der))
    finally:
        rt.close()


def test_the_validator_is_built_once(tmp_path: Path) -> None:
    env = make_env(tmp_path / "ca")
    a = Runtime.build(env.settings, SystemClock())
    b = Runtime.build(env.settings, SystemClock())
    try:
        assert a.linter is b.linter is shared_linter()
        validator = shared_linter().certificate_validator
        ec_req, _ = openssl_csr(tmp_path / "u", "one", "/CN=One", kind="ec:prime256v1")
        drop_and_process(a, env, ec_req, "one")
        assert shared_linter().certificate_validator is validator
    finally:
        a.close()
        b.close()
