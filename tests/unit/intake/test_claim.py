"""The Claimer: what it finds in the inbox, what it claims, and how it reads claimed files.

Real files in a real spool (tmp_path); requests made with cryptography.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certdrop.config import WatchSettings
from certdrop.errors import RequestError
from certdrop.intake.claim import Claim, Claimer, KeyDrop, Refusal, Retry, Skip
from certdrop.intake.spool import Spool

PROFILES = ["client", "server"]


def csr(cn: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    req = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return req.public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    sp = Spool(tmp_path / "spool")
    sp.create(PROFILES, "client", drop_box=False)
    return sp


def claimer(spool: Spool, **watch: object) -> Claimer:
    return Claimer(spool, PROFILES, "client", WatchSettings(settle_seconds=0.5, **watch))  # type: ignore[arg-type]


def claim(c: Claimer, path: Path, profile: str = "client") -> object:
    touched: set[Path] = set()
    return c.claim(path, profile, touched, {})


def test_a_request_is_claimed_into_work_with_its_key(spool: Spool) -> None:
    req = spool.inbox / "alice.req"
    req.write_bytes(csr("Alice"))
    key = spool.inbox / "alice.key"
    key.write_bytes(b"key")
    os.utime(key, (0, 0))  # dropped long ago: not still arriving
    touched: set[Path] = set()
    got = claimer(spool).claim(req, "client", touched, {})
    assert isinstance(got, Claim)
    assert got.path == spool.work / "client" / "alice.req" and got.path.exists()
    assert got.key_path == spool.work / "client" / "alice.key" and got.key_path.exists()
    assert got.name == "alice" and got.profile == "client"
    assert got.owner.uid == os.getuid()
    assert not req.exists() and not key.exists()
    assert touched == {spool.inbox, spool.work / "client"}


def test_what_is_not_a_request_is_refused_unopened_or_skipped(spool: Spool) -> None:
    c = claimer(spool)
    (spool.inbox / "notes.txt").write_text("hello")
    got = claim(c, spool.inbox / "notes.txt")
    assert isinstance(got, Refusal) and "is not a request" in got.reason
    (spool.inbox / "bad name.req").write_bytes(csr("x"))
    got = claim(c, spool.inbox / "bad name.req")
    assert isinstance(got, Refusal) and got.name == "bad_name" and "not allowed" in got.reason
    os.mkfifo(spool.inbox / "fifo.key")
    got = claim(c, spool.inbox / "fifo.key")
    assert isinstance(got, Refusal) and "FIFO" in got.reason
    (spool.inbox / "nosuch").mkdir()
    got = claim(c, spool.inbox / "nosuch")
    assert isinstance(got, Refusal) and "profile folders are: server" in got.reason
    assert isinstance(claim(c, spool.inbox / "server"), Skip)  # a profile folder
    assert isinstance(claim(c, spool.inbox / ".hidden.req"), Skip)
    assert isinstance(claim(c, spool.inbox / "gone.req"), Skip)
    # nothing was moved: the issue layer moves what is refused
    assert (spool.inbox / "notes.txt").exists() and (spool.inbox / "fifo.key").exists()


def test_a_key_on_its_own_is_a_key_drop(spool: Spool) -> None:
    (spool.inbox / "late.key").write_bytes(b"key")
    got = claim(claimer(spool), spool.inbox / "late.key")
    assert isinstance(got, KeyDrop) and got.stem == "late" and got.profile == "client"


def test_retry_while_the_key_arrives_or_the_name_is_busy(spool: Spool) -> None:
    c = claimer(spool)
    (spool.inbox / "bob.req").write_bytes(csr("Bob"))
    (spool.inbox / "bob.key").write_bytes(b"being written")  # just now: still arriving
    got = claim(c, spool.inbox / "bob.req")
    assert isinstance(got, Retry) and got.reason == "its key is still arriving"
    assert 0 < got.after <= 0.5
    (spool.inbox / "carol.req").write_bytes(csr("Carol"))
    (spool.work / "client" / "carol.req").write_bytes(csr("Carol"))  # one in progress
    got = claim(c, spool.inbox / "carol.req")
    assert isinstance(got, Retry) and "in progress" in got.reason


def test_load_finds_a_claim_left_in_work(spool: Spool) -> None:
    path = spool.work / "client" / "left.req"
    path.write_bytes(csr("Left"))
    (spool.work / "client" / "left.key").write_bytes(b"key")
    c = claimer(spool)
    got = c.load(path, "client")
    assert got is not None and got.key_path == spool.work / "client" / "left.key"
    assert c.load(spool.work / "client" / "gone.req", "client") is None


def test_unsafe_names_what_cannot_be_read(spool: Spool, tmp_path: Path) -> None:
    c = claimer(spool)
    f = tmp_path / "f"
    f.write_bytes(b"")
    assert "empty" in c.unsafe(os.lstat(f))
    f.write_bytes(b"x" * 70000)
    assert "at most 65536 bytes" in c.unsafe(os.lstat(f))
    os.link(f, tmp_path / "g")
    assert "hard-linked" in c.unsafe(os.lstat(f))
    os.symlink(f, tmp_path / "l")
    assert "symbolic link" in c.unsafe(os.lstat(tmp_path / "l"))


def test_a_key_others_can_read_gets_a_note(spool: Spool) -> None:
    path = spool.work / "client" / "open.req"
    path.write_bytes(csr("Open"))
    key = spool.work / "client" / "open.key"
    key.write_bytes(b"the key")
    key.chmod(0o644)
    c = claimer(spool)
    got = c.load(path, "client")
    assert got is not None
    assert c.read_key(got) == b"the key"
    assert got.notes and "readable by other users (mode 0644)" in got.notes[0]


def test_file_replaced_while_being_read(spool: Spool, tmp_path: Path) -> None:
    """The guards of the read itself: no symlink followed, no other inode read."""
    c = claimer(spool)
    outside = tmp_path / "outside.req"
    outside.write_bytes(csr("Decoy Secret"))
    path = spool.work / "client" / "r.req"
    path.write_bytes(csr("Read Me"))
    st = os.lstat(path)
    os.rename(path, tmp_path / "held")  # kept, so that its inode number is not reused
    os.symlink(outside, path)
    with pytest.raises(RequestError, match="symbolic link"):
        c.read(path, st)
    os.unlink(path)
    path.write_bytes(csr("Another"))  # another inode under the same name
    with pytest.raises(RequestError, match="replaced while it was being read"):
        c.read(path, st)
    st = os.lstat(path)
    with path.open("ab") as fh:  # grows past the limit after it was checked
        fh.write(b"\n" * 70000)
    with pytest.raises(RequestError, match="at most 65536 bytes"):
        c.read(path, st)
