"""PublishedFiles: the CRL and CA documents of a real state folder, their caching facts,
read again when the daemon replaces a file, and never the CA key."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certdrop.clock import ManualClock
from certdrop.errors import ServeError
from certdrop.serve.published import CRL_MAX_AGE, PublishedFiles
from conftest import make_env


def test_documents_and_their_caching_facts(tmp_path: Path) -> None:
    env = make_env(tmp_path / "env")
    start = dt.datetime(2031, 5, 1, 12, 0, tzinfo=dt.UTC)
    assert env.cli("crl", clock=ManualClock(start))[0] == 0
    files = PublishedFiles(env.state)
    crl = files.get("crl.der")
    assert crl.media_type == "application/pkix-crl"
    assert crl.last_modified == start
    assert crl.expires == start + dt.timedelta(days=7)
    assert crl.fresh_for(start) == CRL_MAX_AGE
    # a cache never keeps a CRL past its nextUpdate
    assert crl.fresh_for(start + dt.timedelta(days=7) - dt.timedelta(seconds=42)) == 42
    assert crl.fresh_for(start + dt.timedelta(days=8)) == 0
    assert files.get("crl.pem").body == (env.state / "crl.pem").read_bytes()
    ca = x509.load_pem_x509_certificate(env.ca_cert.read_bytes())
    assert files.get("ca.cer").body == ca.public_bytes(serialization.Encoding.DER)
    assert files.get("ca.cer").media_type == "application/pkix-cert"
    assert x509.load_pem_x509_certificates(files.get("chain.pem").body) == [ca]
    with pytest.raises(KeyError):
        files.get("ca.key")


def test_a_replaced_crl_is_read_again_and_a_missing_one_is_a_reason(tmp_path: Path) -> None:
    env = make_env(tmp_path / "env")
    files = PublishedFiles(env.state)
    with pytest.raises(ServeError, match="the CRL has not been published yet"):
        files.get("crl.der")
    start = dt.datetime(2031, 5, 1, 12, 0, tzinfo=dt.UTC)
    assert env.cli("crl", clock=ManualClock(start))[0] == 0
    first = files.get("crl.der")
    assert files.get("crl.der") is first  # unchanged: not read again
    assert env.cli("crl", clock=ManualClock(start + dt.timedelta(hours=1)))[0] == 0
    second = files.get("crl.der")
    assert second.etag != first.etag
    assert second.last_modified == start + dt.timedelta(hours=1)
    (env.state / "crl.der").write_bytes(b"garbage")
    with pytest.raises(ServeError, match="cannot be read"):
        files.get("crl.der")


def test_the_ca_key_is_never_needed(tmp_path: Path) -> None:
    env = make_env(tmp_path / "env")
    assert env.cli("crl")[0] == 0
    shutil.move(env.state / "ca.key", tmp_path / "ca.key")
    files = PublishedFiles(env.state)
    for name in ("crl.der", "crl.pem", "ca.cer", "chain.pem"):
        assert files.get(name).body
