"""The spool's folders and the moves between them (certdrop.intake.spool), on real
folders in tmp_path."""

from __future__ import annotations

import datetime as dt
import os
import stat
from pathlib import Path

import pytest

from certdrop.intake.spool import (
    FOLDER_MODES,
    INBOX_MODE,
    Spool,
    archive_path,
    move,
    place_rejected,
    remove_quietly,
)

NOW = dt.datetime(2026, 3, 4, 5, 6, 7, tzinfo=dt.UTC)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    sp = Spool(tmp_path / "spool")
    sp.create(["client", "server"], "client")
    return sp


def test_create_makes_every_folder_with_its_mode(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "spool")
    sp.create(["client", "server"], "client")
    assert mode(sp.root) == 0o755
    assert mode(sp.inbox) == INBOX_MODE == 0o1733  # a drop box
    assert mode(sp.inbox / "server") == 0o1733
    assert not (sp.inbox / "client").exists()  # the default profile's requests go in inbox/
    assert {name: mode(sp.root / name) for name in FOLDER_MODES} == {
        "outbox": 0o755,
        "rejected": 0o755,
        "pending": 0o750,
        "archive": 0o750,
        "work": 0o700,
    }
    for profile in ("client", "server"):
        assert mode(sp.work / profile) == 0o700
        assert mode(sp.work / ".staged" / profile) == 0o700


def test_create_without_a_drop_box_and_repairs_modes(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "spool")
    sp.create(["client", "server"], "client", drop_box=False)
    assert mode(sp.inbox) == 0o755 and mode(sp.inbox / "server") == 0o755
    os.chmod(sp.work, 0o777)  # widened by someone
    os.chmod(sp.outbox, 0o700)
    sp.create(["client", "server"], "client")
    assert mode(sp.work) == 0o700 and mode(sp.outbox) == 0o755
    assert mode(sp.inbox) == 0o1733


def test_where_claimed_and_staged_files_go(spool: Spool) -> None:
    assert spool.work_for("server") == spool.root / "work" / "server"
    assert spool.claimed_path("server", "web.req") == spool.root / "work" / "server" / "web.req"
    assert spool.staging_for("client") == spool.root / "work" / ".staged" / "client"
    staged = spool.staged("client", "alice", ".cer")
    assert staged == spool.root / "work" / ".staged" / "client" / ".alice.cer.staged"
    assert spool.staged_path("client", "alice", ".p12") == str(
        spool.root / "work" / ".staged" / "client" / ".alice.p12.staged"
    )
    assert spool.outbox_path("alice.cer") == str(spool.root / "outbox" / "alice.cer")
    # spools are the same when their roots are
    assert spool == Spool(spool.root) and hash(spool) == hash(Spool(spool.root))
    assert spool != Spool(spool.root / "other")


def test_move_renames_into_another_folder(spool: Spool) -> None:
    src = spool.work_for("client") / "alice.req"
    src.write_bytes(b"request")
    dst = spool.archive / "alice.req"
    move(src, dst)
    assert not src.exists() and dst.read_bytes() == b"request"
    back = spool.work_for("client") / "again.req"
    move(dst, back, durable=False)
    assert not dst.exists() and back.read_bytes() == b"request"
    with pytest.raises(FileNotFoundError):
        move(src, dst)  # gone: nothing to move


def test_archive_path_never_names_an_existing_file(spool: Spool) -> None:
    first = archive_path(spool, "alice.req", NOW)
    assert first == spool.archive / "alice.req"
    first.write_bytes(b"1")
    second = archive_path(spool, "alice.req", NOW)
    assert second == spool.archive / "alice.20260304T050607Z.req"
    second.write_bytes(b"2")
    third = archive_path(spool, "alice.req", NOW)
    assert third == spool.archive / "alice.20260304T050607Z.2.req"
    (spool.archive / "README").write_bytes(b"x")  # a name without an extension
    assert archive_path(spool, "README", NOW) == spool.archive / "README.20260304T050607Z"


def test_place_rejected_writes_the_reason_then_moves_the_request(spool: Spool) -> None:
    src = spool.work_for("client") / "bob.req"
    src.write_bytes(b"not a csr")
    seen: list[tuple[bool, bool]] = []

    def before_move() -> None:  # the crash point between the reason and the move
        seen.append(((spool.rejected / "bob.reason").exists(), src.exists()))

    target = place_rejected(spool, src, "bob", "bad request\n\n", NOW, before_move=before_move)
    assert seen == [(True, True)]
    assert target == spool.rejected / "bob.req" and target.read_bytes() == b"not a csr"
    assert not src.exists()
    reason = spool.rejected / "bob.reason"
    assert reason.read_text() == "bad request\n"
    assert mode(reason) == 0o644


def test_a_crash_before_the_move_leaves_the_request_in_work(spool: Spool) -> None:
    src = spool.work_for("client") / "carl.req"
    src.write_bytes(b"x")

    def crash() -> None:
        raise RuntimeError("killed here")

    with pytest.raises(RuntimeError):
        place_rejected(spool, src, "carl", "why", NOW, before_move=crash)
    assert src.exists() and not (spool.rejected / "carl.req").exists()
    assert (spool.rejected / "carl.reason").read_text() == "why\n"


def test_an_earlier_rejection_of_the_same_name_is_archived_not_overwritten(spool: Spool) -> None:
    for n in (1, 2):
        src = spool.inbox / "dup.req"
        src.write_bytes(f"request {n}".encode())
        place_rejected(spool, src, "dup", f"reason {n}", NOW)
    assert (spool.rejected / "dup.req").read_bytes() == b"request 2"
    assert (spool.rejected / "dup.reason").read_text() == "reason 2\n"
    assert (spool.archive / "rejected-dup.req").read_bytes() == b"request 1"
    assert (spool.archive / "rejected-dup.reason").read_text() == "reason 1\n"


def test_a_link_is_moved_as_it_is_never_followed(spool: Spool, tmp_path: Path) -> None:
    secret = tmp_path / "secret.req"
    secret.write_bytes(b"outside the spool")
    link = spool.inbox / "link.req"
    os.symlink(secret, link)
    place_rejected(spool, link, "link", "it is a symbolic link", NOW)
    moved = spool.rejected / "link.req"
    assert moved.is_symlink() and os.readlink(moved) == str(secret)
    assert secret.read_bytes() == b"outside the spool"


def test_remove_quietly(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x")
    remove_quietly(f)
    assert not f.exists()
    remove_quietly(f)  # already gone: no error
