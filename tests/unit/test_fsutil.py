"""Atomic, durable file operations and the spool's name rules (certdrop.fsutil)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from certdrop.fsutil import (
    atomic_write,
    ensure_dir,
    is_ignored_name,
    is_safe_name,
    open_nofollow,
    read_limited,
    sanitize_name,
    unique_path,
    write_staged,
)


def test_atomic_write_replaces_whole_with_the_mode_asked_for(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    target.write_bytes(b"old")
    old_umask = os.umask(0o077)  # the umask neither weakens nor widens the mode
    try:
        atomic_write(target, b"new contents", 0o644)
    finally:
        os.umask(old_umask)
    assert target.read_bytes() == b"new contents"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    atomic_write(target, b"secret", 0o600, durable=False)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]  # no temporary left


def test_atomic_write_leaves_nothing_when_it_fails(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "f").write_bytes(b"kept")
    with pytest.raises(IsADirectoryError):
        atomic_write(folder, b"x", 0o644)  # the rename over a folder fails
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ro"]
    assert (folder / "f").read_bytes() == b"kept"


def test_write_staged_never_follows_a_link(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_bytes(b"theirs")
    link = tmp_path / "staged"
    os.symlink(outside, link)
    with pytest.raises(OSError):
        write_staged(link, b"ours", 0o644)
    assert outside.read_bytes() == b"theirs"
    write_staged(tmp_path / "fresh", b"ours", 0o640)
    assert stat.S_IMODE((tmp_path / "fresh").stat().st_mode) == 0o640


def test_names() -> None:
    assert is_safe_name("alice.smith-2_x")
    for bad in (".hidden", "..", "a b", "a/b", "é", "x" * 129, ""):
        assert not is_safe_name(bad), bad
    assert is_safe_name("x" * 128)
    for ignored in (".x.req", "a.req.part", "a.tmp", "a.req~", "a.swp"):
        assert is_ignored_name(ignored), ignored
    assert not is_ignored_name("a.req")
    assert sanitize_name("../évil name.req") == "__vil_name.req"
    assert sanitize_name("...") == "unnamed"
    assert len(sanitize_name("y" * 500)) == 128


def test_unique_path_and_ensure_dir(tmp_path: Path) -> None:
    assert unique_path(tmp_path, "a", ".req") == tmp_path / "a.req"
    (tmp_path / "a.req").write_bytes(b"")
    (tmp_path / "a.2.req").write_bytes(b"")
    assert unique_path(tmp_path, "a", ".req") == tmp_path / "a.3.req"
    ensure_dir(tmp_path / "x" / "y", 0o1733)
    assert stat.S_IMODE((tmp_path / "x" / "y").stat().st_mode) == 0o1733
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(FileExistsError):
        ensure_dir(tmp_path / "file", 0o700)
    os.symlink(tmp_path / "x", tmp_path / "link")  # a link to a folder is not the folder
    with pytest.raises(NotADirectoryError):
        ensure_dir(tmp_path / "link", 0o700)


def test_reads_are_bounded_and_never_block(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"z" * 5000)
    with open_nofollow(big) as fd:
        assert len(read_limited(fd, 1000)) == 1001  # one more: the caller can tell "too big"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with open_nofollow(fifo) as fd:  # O_NONBLOCK: no writer, no wait
        assert read_limited(fd, 10) == b""
    os.symlink(big, tmp_path / "link")
    with pytest.raises(OSError), open_nofollow(tmp_path / "link"):
        pass
