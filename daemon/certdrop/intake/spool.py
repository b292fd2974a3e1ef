"""The spool's folders and the moves between them.

    inbox/NAME.req, inbox/PROFILE/NAME.req   dropped by users (a drop-box, mode 1733)
    work/PROFILE/NAME.req                    claimed, being processed (0700)
    work/.staged/PROFILE/                    outputs written before the index commit
    .claims/HOST/PROFILE/, .claims/HOST/.staged/PROFILE/
                                             work/ of one host when several share the spool
    .claims/.held-keys/                      their keys of requests waiting for approval
    outbox/ rejected/ pending/ archive/      results

A request is claimed by renaming it into work/PROFILE/, so the profile survives a
crash and the user can no longer swap the file under us. Every move is a rename
within one filesystem followed by an fsync of the folders involved.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from collections.abc import Callable
from pathlib import Path

from ..fsutil import atomic_write, ensure_dir, fsync_dir, unique_path

INBOX_MODE = 0o1733  # drop-box: anyone may add, nobody but the owner lists or removes
FOLDER_MODES = {
    "outbox": 0o755,
    "rejected": 0o755,
    "pending": 0o750,
    "archive": 0o750,
    "work": 0o700,
}
CLAIMS = ".claims"  # the hosts' own work/ folders on a shared spool
HELD_KEYS = ".held-keys"  # in .claims/: keys of pending requests, for whichever host approves


class Spool:
    """The spool's folders (paths computed once: they are used for every request)."""

    def __init__(self, root: Path, host: str | None = None) -> None:
        """`host`: this host's id when several hosts share the spool; its claims then go
        to .claims/HOST/ (renames are exclusive: a request moved there is this host's)."""
        self.root = root
        self.host = host
        self.claims = root / CLAIMS
        self.inbox = root / "inbox"
        self.outbox = root / "outbox"
        self.rejected = root / "rejected"
        self.pending = root / "pending"
        self.archive = root / "archive"
        self.work = root / "work" if host is None else self.claims / host
        self._work_profiles: dict[str, Path] = {}
        self._staging: dict[str, Path] = {}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Spool) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)

    def __repr__(self) -> str:
        return f"Spool({self.root!r})"

    def create(self, profiles: list[str], default_profile: str, *, drop_box: bool = True) -> None:
        ensure_dir(self.root, 0o755)
        ensure_dir(self.inbox, INBOX_MODE if drop_box else 0o755)
        for name, mode in FOLDER_MODES.items():
            ensure_dir(self.root / name, mode)
        if self.host is not None:
            ensure_dir(self.claims, 0o700)
            ensure_dir(self.work, 0o700)
        for profile in profiles:
            ensure_dir(self.work / profile, 0o700)
            ensure_dir(self.staging_for(profile), 0o700)
            if profile != default_profile:
                ensure_dir(self.inbox / profile, INBOX_MODE if drop_box else 0o755)

    def work_for(self, profile: str) -> Path:
        folder = self._work_profiles.get(profile)
        if folder is None:
            folder = self._work_profiles[profile] = self.work / profile
        return folder

    def claimed_path(self, profile: str, filename: str) -> Path:
        return self.work_for(profile) / filename

    def staging_for(self, profile: str) -> Path:
        """Where a profile's outputs are staged: not work/PROFILE/ itself, whose entries
        are renamed in and out all through a burst; files created in a folder that is
        renamed in at the same time take ten times as long (the folder's lock)."""
        folder = self._staging.get(profile)
        if folder is None:
            folder = self._staging[profile] = self.work / ".staged" / profile
        return folder

    def staged(self, profile: str, name: str, suffix: str) -> Path:
        """Outputs written before the index commit, moved to outbox/ after it."""
        return Path(self.staged_path(profile, name, suffix))

    def staged_path(self, profile: str, name: str, suffix: str) -> str:
        """`staged` as a string (no Path objects for every file of a burst)."""
        return f"{self.staging_for(profile)}/.{name}{suffix}.staged"

    def outbox_path(self, filename: str) -> str:
        return f"{self.outbox}/{filename}"


def move(src: Path, dst: Path, *, durable: bool = True) -> None:
    """Rename `src` to `dst` (same filesystem) and make both folders durable."""
    os.rename(src, dst)
    if durable:
        fsync_dir(dst.parent)
        if src.parent != dst.parent:
            fsync_dir(src.parent)


def archive_path(spool: Spool, filename: str, now: dt.datetime) -> Path:
    stem, dot, ext = filename.rpartition(".")
    if not dot:
        stem, ext = filename, ""
    suffix = f".{ext}" if ext else ""
    candidate = spool.archive / filename
    if not os.path.lexists(candidate):
        return candidate
    return unique_path(spool.archive, f"{stem}.{now:%Y%m%dT%H%M%SZ}", suffix)


def place_rejected(
    spool: Spool,
    src: Path,
    name: str,
    reason: str,
    now: dt.datetime,
    owner: tuple[int, int] | None = None,
    before_move: Callable[[], None] | None = None,
) -> Path:
    """Move `src` to rejected/NAME.req with rejected/NAME.reason beside it.

    An earlier rejection under the same name is moved to archive/ first, so nothing
    is ever overwritten. The reason is written before the request is moved: after a
    crash in between, the request is still in work/ and is processed again.
    """
    target = spool.rejected / f"{name}.req"
    reason_path = spool.rejected / f"{name}.reason"
    for old in (target, reason_path):
        if os.path.lexists(old) and old != src:
            os.rename(old, archive_path(spool, f"rejected-{old.name}", now))
    text = reason.rstrip("\n") + "\n"
    atomic_write(reason_path, text.encode("utf-8"), 0o644, owner=owner)
    if before_move is not None:
        before_move()
    try:
        move(src, target)
    except FileNotFoundError:
        # gone meanwhile (taken over by another host while this one was frozen): no
        # reason without its request
        remove_quietly(reason_path)
        raise
    return target


def remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def adopt_claims(spool: Spool, other: str) -> tuple[int, int]:
    """Move the claims another host left in .claims/OTHER/ (requests, their keys, staged
    outputs) into this host's folders, to be processed as after a crash; the numbers of
    requests and of other files moved. A name this host holds already stays where it is
    (tried again later)."""
    source = spool.claims / other
    moved = others = 0
    touched: set[Path] = set()
    for folder in sorted(source.iterdir()):
        if folder.name == ".staged":
            pairs = [(p, spool.staging_for(p.name)) for p in sorted(folder.iterdir()) if p.is_dir()]
        elif folder.is_dir() and not folder.name.startswith("."):
            pairs = [(folder, spool.work_for(folder.name))]
        else:
            continue
        for src_dir, dst_dir in pairs:
            ensure_dir(dst_dir, 0o700)
            for entry in sorted(src_dir.iterdir()):
                dst = dst_dir / entry.name
                if os.path.lexists(dst):
                    continue
                try:
                    os.rename(entry, dst)
                except FileNotFoundError:  # its host came back and finished it
                    continue
                touched.update((src_dir, dst_dir))
                if entry.name.endswith(".req"):
                    moved += 1
                else:
                    others += 1
    for folder in touched:
        fsync_dir(folder)
    return moved, others
