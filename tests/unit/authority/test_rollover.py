"""authority/rollover.py: the next CA staged in cas/<id>/, the switch that keeps the CA
before, and the completion of a switch a crash interrupted."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certdrop.authority.ca import CertificateAuthority
from certdrop.authority.lifecycle import CA_CERT, CA_CHAIN, CA_KEY, ca_id, create_ca
from certdrop.authority.lint import shared_linter
from certdrop.authority.offline_root import OfflineRoot, create_two_tier
from certdrop.authority.rollover import (
    ca_folder,
    finish_switch,
    keep,
    stage_next_ca,
    switch_issuing,
)
from certdrop.config import CASettings
from certdrop.errors import CAError
from certdrop.fsutil import copy_file
from conftest import lint_clean

NOW = dt.datetime.now(dt.UTC)
SETTINGS = CASettings(common_name="Test CA", organization="MyOrg", country="BE")
PASS = b"ca secret"
ROOT_PASS = b"root secret"


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_the_next_ca_is_staged_beside_the_current_one(tmp_path: Path) -> None:
    state = tmp_path / "state"
    current = create_ca(state, SETTINGS, NOW, PASS)
    (state / "crl.der").write_bytes(b"the current CA's CRL")
    before = _files(state)

    new = stage_next_ca(state, SETTINGS, NOW, PASS, linter=shared_linter().certificate)
    # nothing of the current CA changed: it still issues
    assert _files(state) == before
    folder = ca_folder(state, ca_id(new))
    assert _load(folder / CA_CERT) == new
    assert stat.S_IMODE((folder / CA_KEY).stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert b"ENCRYPTED" in (folder / CA_KEY).read_bytes()  # as the current key is
    assert not (folder / CA_CHAIN).exists()
    # a root CA of its own, with the configured names, another key
    assert new.subject == current.subject == new.issuer
    assert ca_id(new) != ca_id(current)
    assert lint_clean(new.public_bytes(serialization.Encoding.DER)) == []
    CertificateAuthority.load(folder, PASS)  # key and certificate belong together


def test_the_switch_keeps_the_ca_before_and_never_overwrites_it(tmp_path: Path) -> None:
    state = tmp_path / "state"
    old = create_ca(state, SETTINGS, NOW, PASS)
    (state / "crl.der").write_bytes(b"old CRL (DER)")
    (state / "crl.pem").write_bytes(b"old CRL (PEM)")
    old_key = (state / CA_KEY).read_bytes()
    new = stage_next_ca(state, SETTINGS, NOW, PASS)

    was, now = switch_issuing(state, ca_id(new))
    assert (was, now) == (old, new)
    assert _load(state / CA_CERT) == new
    assert CertificateAuthority.load(state, PASS).cert == new
    kept = ca_folder(state, ca_id(old))
    assert (kept / CA_KEY).read_bytes() == old_key and _load(kept / CA_CERT) == old
    assert (kept / "crl.der").read_bytes() == b"old CRL (DER)"
    assert (kept / "crl.pem").read_bytes() == b"old CRL (PEM)"
    assert stat.S_IMODE((kept / CA_KEY).stat().st_mode) == 0o600

    # the CA that issues cannot take over again; keeping it twice changes nothing
    with pytest.raises(CAError, match="already issues"):
        switch_issuing(state, ca_id(new))
    (kept / "crl.der").write_bytes(b"the retiring CA's newer CRL")
    assert keep(state, ca_id(old)) == kept
    assert (kept / "crl.der").read_bytes() == b"the retiring CA's newer CRL"
    # a CA nobody staged
    with pytest.raises(CAError, match="no CA in"):
        switch_issuing(state, "ab" * 32)


def test_an_interrupted_switch_is_completed_at_the_next_start(tmp_path: Path) -> None:
    state = tmp_path / "state"
    old = create_ca(state, SETTINGS, NOW)
    new = stage_next_ca(state, SETTINGS, NOW, None)
    folder = ca_folder(state, ca_id(new))
    assert finish_switch(state) is False  # nothing interrupted
    # the crash: the old CA kept and the new key in place, but ca.cer still the old one's
    keep(state, ca_id(old))
    copy_file(folder / CA_KEY, state / CA_KEY, 0o600)
    with pytest.raises(CAError, match="does not belong"):
        CertificateAuthority.load(state)
    assert finish_switch(state) is True
    assert CertificateAuthority.load(state).cert == new
    assert finish_switch(state) is False
    assert _load(ca_folder(state, ca_id(old)) / CA_CERT) == old


def test_a_two_tier_ca_rolls_over_under_its_root(tmp_path: Path) -> None:
    state, media = tmp_path / "state", tmp_path / "media"
    linter = shared_linter()
    made = create_two_tier(state, media, SETTINGS, NOW, None, ROOT_PASS, linter.certificate)
    with pytest.raises(CAError, match="--offline-root DIR"):
        stage_next_ca(state, SETTINGS, NOW, None)
    other = OfflineRoot.create(tmp_path / "other", SETTINGS, NOW, ROOT_PASS)
    with pytest.raises(CAError, match="is not above the CA"):
        stage_next_ca(state, SETTINGS, NOW, None, other)

    root = OfflineRoot.open(media, ROOT_PASS)
    new = stage_next_ca(state, SETTINGS, NOW, None, root, linter.certificate)
    new.verify_directly_issued_by(made.root)
    bc = new.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca and bc.path_length == 0
    # the root's own index records the CA it signed (root-crl --revoke-ca finds it)
    assert any(s.serial.lstrip("0") == f"{new.serial_number:X}" for s in root.signed)
    switch_issuing(state, ca_id(new))
    assert x509.load_pem_x509_certificates((state / CA_CHAIN).read_bytes()) == [made.root]
    kept = ca_folder(state, ca_id(made.ca))
    assert x509.load_pem_x509_certificates((kept / CA_CHAIN).read_bytes()) == [made.root]
