"""Delivery of results (certdrop.issue.delivery): p12 passwords and their files, who owns
the outputs, staged outputs moved to outbox/, and the p12 for a certificate issued before."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from certdrop.errors import CertdropError
from certdrop.intake.claim import Owner
from certdrop.issue.delivery import (
    PASSWORD_ALPHABET,
    PasswordFiles,
    new_password,
    output_owner,
    p12_mode,
)
from certdrop.issue.outcomes import Outcome
from conftest import ec_csr
from issue_kit import Kit, make_kit, open_p12, password_of

NOBODY = 65534
AS_ROOT = os.geteuid() == 0


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    k = make_kit(tmp_path)
    yield k
    k.close()


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def issued(kit: Kit, name: str, pem: bytes) -> tuple[str, bytes]:
    """Issue NAME.req without its key; the serial and the certificate's DER."""
    res = kit.process(name, pem)
    assert res.outcome is Outcome.ISSUED and res.serial is not None
    return res.serial, kit.cert(res.serial).der


# --- passwords ---------------------------------------------------------------------------------------
def test_new_password_is_four_groups_of_unambiguous_letters() -> None:
    pattern = re.compile(f"[{PASSWORD_ALPHABET}]{{5}}(-[{PASSWORD_ALPHABET}]{{5}}){{3}}")
    passwords = {new_password() for _ in range(50)}
    assert len(passwords) == 50  # 116 bits each: never the same twice
    for pw in passwords:
        assert pattern.fullmatch(pw), pw
        assert not set(pw) & set("01lIoO")


def test_password_files_are_for_the_operator_only(kit: Kit) -> None:
    files = PasswordFiles(kit.env.state)
    with kit.store.begin() as conn:
        files(conn, "alice", "alice@example.org", "0A1B", "pw-one", ["keep keys mode 0600"])
    files.sync()
    path = files.path_for("alice")
    assert path == kit.env.state / "passwords" / "alice.txt"
    assert mode(path) == 0o600 and mode(path.parent) == 0o700
    assert path.read_text().splitlines() == [
        "pw-one",  # alone on the first line: what openssl -passin file: reads
        "The line above is the PKCS#12 password of outbox/alice.p12 (certificate serial 0A1B).",
        "Give it to the holder by another channel than the p12 itself.",
        "Note: keep keys mode 0600",
    ]
    with kit.store.begin() as conn:  # a new certificate for the name: its password replaces it
        files(conn, "alice", "", "0C0D", "pw-two")
    assert path.read_text().splitlines()[:2] == [
        "pw-two",
        "The line above is the PKCS#12 password of outbox/alice.p12 (certificate serial 0C0D).",
    ]
    assert not [p for p in path.parent.iterdir() if p.name != "alice.txt"]  # no temporary left


# --- who owns the outputs ------------------------------------------------------------------------------
def test_outputs_belong_to_the_requester_only_when_running_as_root() -> None:
    nobody = Owner(uid=NOBODY, gid=NOBODY, name="nobody")
    root = Owner(uid=0, gid=0, name="root")
    assert output_owner(None) is None and p12_mode(None) == 0o644
    assert output_owner(root) is None and p12_mode(root) == 0o644  # never chown to root
    if AS_ROOT:
        assert output_owner(nobody) == (NOBODY, NOBODY)
        assert p12_mode(nobody) == 0o600  # the requester's alone
    else:
        assert output_owner(nobody) is None  # cannot give files away
        assert p12_mode(nobody) == 0o644  # encrypted; its password goes another way


# --- staged outputs to outbox/ -------------------------------------------------------------------------
def test_to_outbox_moves_what_is_staged(kit: Kit) -> None:
    claim = kit.work("bob", b"request")
    cer = kit.spool.staged("client", "bob", ".cer")
    p12 = kit.spool.staged("client", "bob", ".p12")
    cer.write_bytes(b"the certificate")
    kit.delivery.to_outbox(claim, "bob", "0B")  # looks for what there is: the .cer only
    assert (kit.env.outbox / "bob.cer").read_bytes() == b"the certificate"
    assert not (kit.env.outbox / "bob.p12").exists() and not cer.exists()

    cer.write_bytes(b"certificate 2")
    p12.write_bytes(b"bundle 2")
    kit.delivery.to_outbox(claim, "bob", "0B", durable=False, p12=True)
    assert (kit.env.outbox / "bob.cer").read_bytes() == b"certificate 2"
    assert (kit.env.outbox / "bob.p12").read_bytes() == b"bundle 2"
    assert not list(kit.spool.staging_for("client").iterdir())

    cer.write_bytes(b"certificate 3")
    p12.write_bytes(b"not for delivery")
    kit.delivery.to_outbox(claim, "bob", "0C", p12=False)  # told there is none: the .cer alone
    assert (kit.env.outbox / "bob.cer").read_bytes() == b"certificate 3"
    assert (kit.env.outbox / "bob.p12").read_bytes() == b"bundle 2"
    # what was under the name before went to the archive, named after what replaced it
    archived = {p.name: p.read_bytes() for p in kit.env.archive.iterdir()}
    assert archived == {
        "bob.cer.replaced-by-0B": b"the certificate",
        "bob.cer.replaced-by-0C": b"certificate 2",
    }
    cer.write_bytes(b"certificate 3")  # the same again (a re-delivery): nothing to archive
    kit.delivery.to_outbox(claim, "bob", "0D", p12=False)
    assert len(list(kit.env.archive.iterdir())) == 2


# --- the key claimed with a request ---------------------------------------------------------------------
def test_subject_key_reads_the_claimed_key(kit: Kit) -> None:
    pem, key = ec_csr("Carol Key")
    claim = kit.work("carol", pem, key=key)
    loaded = kit.delivery.subject_key(claim)
    csr = x509.load_pem_x509_csr(pem)
    assert loaded.public_key() == csr.public_key()
    assert claim.notes == []
    open_claim = kit.work("carol2", pem, key=key, key_mode=0o640)
    kit.delivery.subject_key(open_claim)
    assert open_claim.notes == [
        "carol2.key was readable by other users (mode 0640); keep private keys mode 0600"
    ]
    junk = kit.work("junk", pem, key=b"-----BEGIN PRIVATE KEY-----\nnonsense\n")
    with pytest.raises(CertdropError, match="the key file is not a PEM private key"):
        kit.delivery.subject_key(junk)


def test_bundle_for_existing_delivers_the_p12_with_its_password_elsewhere(kit: Kit) -> None:
    pem, key = ec_csr("Dave Later")
    serial, der = issued(kit, "dave", pem)
    claim = kit.work("dave", pem, key=key)
    assert kit.delivery.bundle_for_existing(claim, serial, der) == ""
    bundle = open_p12(kit.env, "dave")
    assert bundle.cert is not None and bundle.key is not None
    assert bundle.cert.certificate == x509.load_der_x509_certificate(der)
    assert bundle.cert.friendly_name == b"Dave Later"
    assert bundle.key.public_key() == x509.load_pem_x509_csr(pem).public_key()
    assert mode(kit.env.outbox / "dave.p12") == 0o644  # the request is root's: no chown
    assert f"serial {serial}" in (kit.env.state / "passwords" / "dave.txt").read_text()
    password = password_of(kit.env, "dave").encode()
    assert password not in (kit.env.outbox / "dave.p12").read_bytes()
    assert not list(kit.spool.staging_for("client").iterdir())
    assert [(e["outcome"], e["serial"]) for e in kit.journal("dave")][-1] == ("p12", serial)


def test_bundle_for_existing_refuses_a_key_that_does_not_belong(kit: Kit) -> None:
    pem, _ = ec_csr("Erin Later")
    _, other = ec_csr("Not Erin")
    serial, der = issued(kit, "erin", pem)
    claim = kit.work("erin", pem, key=other)
    why = kit.delivery.bundle_for_existing(claim, serial, der)
    assert why == (
        "erin.key does not belong to the certificate issued for erin.req; the key was deleted"
    )
    junk = kit.work("erin2", pem, key=b"garbage")
    assert "not a PEM private key" in kit.delivery.bundle_for_existing(junk, serial, der)
    assert not list(kit.env.outbox.glob("*.p12"))
    assert not (kit.env.state / "passwords").exists()
    assert kit.outcomes_of("erin") == ["issued"]  # no p12 recorded


@pytest.mark.skipif(not AS_ROOT, reason="giving files to their owner needs root")
def test_bundle_for_existing_gives_the_p12_to_the_requester(kit: Kit) -> None:
    pem, key = ec_csr("Owned Later")
    serial, der = issued(kit, "owned", pem)
    req = kit.spool.work_for("client") / "owned.req"
    req.write_bytes(pem)
    os.chown(req, NOBODY, NOBODY)
    claim = kit.work("owned", pem, key=key)  # the same file, now nobody's
    assert claim.owner.uid == NOBODY
    assert kit.delivery.bundle_for_existing(claim, serial, der) == ""
    st = os.lstat(kit.env.outbox / "owned.p12")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (NOBODY, NOBODY, 0o600)
