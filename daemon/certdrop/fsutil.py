"""Atomic, durable file operations with explicit permissions.

Every file certdrop writes goes through `atomic_write`: a temporary file in the
same folder, written, fsynced, given its mode (and owner), renamed over the target,
and the folder fsynced. Readers therefore see the whole file or nothing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

# NAME rules from the spec: letters, digits, '.', '_', '-'; no leading dot.
_SAFE_NAME = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9._\-]{0,127}")
MAX_NAME_LENGTH = 128


def is_safe_name(name: str) -> bool:
    return bool(_SAFE_NAME.fullmatch(name)) and name not in (".", "..")


def is_ignored_name(name: str) -> bool:
    """Temporary and hidden files the spec says to ignore (not to refuse)."""
    return name.startswith(".") or name.endswith((".part", ".tmp", "~")) or name.endswith(".swp")


def sanitize_name(name: str) -> str:
    """A safe stand-in for an unsafe file name (for rejected/...)."""
    cleaned = re.sub(r"[^A-Za-z0-9._\-]", "_", name).lstrip(".") or "unnamed"
    return cleaned[:MAX_NAME_LENGTH]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tmp_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")


def atomic_write(
    path: Path,
    data: bytes,
    mode: int = 0o644,
    *,
    owner: tuple[int, int] | None = None,
    durable: bool = True,
) -> None:
    """Write `data` to `path` atomically with permissions `mode`.

    `durable=False` skips the fsyncs; callers that batch several writes then make
    them durable together (see `sync_filesystem`) before depending on them.
    """
    tmp = _tmp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fchmod(fd, mode)  # the umask must not weaken or widen what we asked for
            if owner is not None:
                os.fchown(fd, owner[0], owner[1])
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def write_staged(
    path: str | Path, data: bytes, mode: int, owner: tuple[int, int] | None = None
) -> None:
    """Write a private temporary file that a later rename publishes.

    This is the first half of an atomic write, for batches: the caller makes many
    staged files durable with one `sync_filesystem`, then renames each into place.
    A staged file left by a crash is never published (recovery removes it).
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fchmod(fd, mode)
        if owner is not None:
            os.fchown(fd, owner[0], owner[1])
    finally:
        os.close(fd)


def sync_filesystem(path: Path) -> None:
    """Flush every dirty page of the filesystem holding `path` (one syncfs call)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _syncfs(fd)
    finally:
        os.close(fd)


def _syncfs(fd: int) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def ensure_dir(path: Path, mode: int) -> None:
    """Create `path` (and parents) if needed and set its mode exactly."""
    path.mkdir(parents=True, exist_ok=True)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(path))
    if stat.S_IMODE(st.st_mode) != mode:
        os.chmod(path, mode)


def unique_path(folder: Path, stem: str, suffix: str) -> Path:
    """folder/stem+suffix, or folder/stem.N+suffix for the first N that is free."""
    candidate = folder / f"{stem}{suffix}"
    n = 1
    while os.path.lexists(candidate):
        n += 1
        candidate = folder / f"{stem}.{n}{suffix}"
    return candidate


def read_limited(fd: int, limit: int) -> bytes:
    """Read at most `limit + 1` bytes from `fd` (so a caller can tell 'too big')."""
    chunks: list[bytes] = []
    remaining = limit + 1
    while remaining > 0:
        chunk = os.read(fd, min(remaining, 1 << 16))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


@contextlib.contextmanager
def open_nofollow(path: Path) -> Iterator[int]:
    """Open a regular file for reading without following a symlink or blocking on a FIFO."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def move_file(src: Path, dst: Path, mode: int) -> None:
    """Rename `src` to `dst` (replacing it), or, across filesystems, copy it durably with
    `mode` and remove `src`; the folder of `dst` is fsynced either way."""
    try:
        os.rename(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        atomic_write(dst, src.read_bytes(), mode)
        os.unlink(src)
        return
    fsync_dir(dst.parent)


def copy_file(src: Path, dst: Path, mode: int) -> tuple[str, int]:
    """Copy `src` (never through a symlink) to `dst` atomically and durably with `mode`;
    returns the SHA-256 (hex) and size of the bytes copied."""
    import hashlib

    digest = hashlib.sha256()
    size = 0
    tmp = _tmp_name(dst)
    with open_nofollow(src) as rfd:
        os.set_blocking(rfd, True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        try:
            try:
                while chunk := os.read(rfd, 1 << 20):
                    digest.update(chunk)
                    size += len(chunk)
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view) :]
                os.fchmod(fd, mode)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, dst)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    fsync_dir(dst.parent)
    return digest.hexdigest(), size
