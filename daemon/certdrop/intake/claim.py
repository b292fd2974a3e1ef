"""Claiming a dropped file: judge it by its name and metadata, then rename it into work/.

The `Claimer` decides nothing about certificates and refuses nothing itself: it returns
what it found, and the issue layer acts on it:

* `Claim`: a request renamed into work/PROFILE/ (with NAME.key beside it when one was
  dropped), from now on the daemon's; processed again after a crash;
* `Refusal`: something to move to rejected/ as it is, unopened (a FIFO, a bad name, ...);
* `Retry`: look again later (its key is still arriving, the name is being processed);
* `Skip`: ignored (a temporary file, gone meanwhile, a profile folder);
* `KeyDrop`: a NAME.key on its own (its request was claimed before, or is still to come).

What a claimed file is (symlink, FIFO, hard link, too big) is judged after the claim, on
what the rename actually moved (`unsafe`, `read`): judged before, a file swapped in
between would be moved to rejected/ under the other's reason.
"""

from __future__ import annotations

import errno
import logging
import os
import pwd
import stat
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from ..config import WatchSettings
from ..errors import RequestError
from ..faults import Crashpoint, no_crash
from ..fsutil import is_ignored_name, is_safe_name, open_nofollow, read_limited, sanitize_name
from .spool import Spool

log = logging.getLogger("certdrop.pipeline")


@dataclass(frozen=True)
class Owner:
    """Who dropped a file: its Unix owner."""

    uid: int
    gid: int
    name: str | None


def owner_of(st: os.stat_result, names: dict[int, str | None] | None = None) -> Owner:
    """The owner of a file; `names` caches user names for one batch."""
    uid = st.st_uid
    if names is not None and uid in names:
        return Owner(uid=uid, gid=st.st_gid, name=names[uid])
    try:
        name: str | None = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = None
    if names is not None:
        names[uid] = name
    return Owner(uid=uid, gid=st.st_gid, name=name)


def describe_type(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


@dataclass
class Claim:
    """A request claimed into work/PROFILE/."""

    path: Path
    name: str  # NAME (without .req)
    profile: str
    owner: Owner
    st: os.stat_result
    data: bytes = b""  # the request's bytes, once read
    key_path: Path | None = None  # NAME.key claimed with it
    notes: list[str] = field(default_factory=list)  # remarks for the holder


@dataclass(frozen=True)
class Refusal:
    """Something in the inbox to move to rejected/ unopened, with the reason."""

    path: Path
    name: str  # a safe stand-in for its name
    st: os.stat_result
    reason: str


@dataclass(frozen=True)
class Retry:
    name: str
    reason: str
    after: float  # seconds


@dataclass(frozen=True)
class Skip:
    name: str


@dataclass(frozen=True)
class KeyDrop:
    """A regular NAME.key file seen in the inbox on its own."""

    path: Path
    profile: str
    stem: str
    st: os.stat_result


Found = Claim | Refusal | Retry | Skip | KeyDrop


class Claimer:
    """Looks at inbox files, claims requests, and reads claimed files safely."""

    def __init__(
        self,
        spool: Spool,
        profiles: Collection[str],
        default_profile: str,
        watch: WatchSettings,
        crashpoint: Crashpoint = no_crash,
    ) -> None:
        self.spool = spool
        self.profiles = profiles
        self.default_profile = default_profile
        self.settle_seconds = watch.settle_seconds
        self.max_bytes = watch.max_request_bytes
        self.crashpoint = crashpoint

    def claim(
        self, path: Path, profile: str, touched: set[Path], names: dict[int, str | None]
    ) -> Found:
        """Judge `path` (in inbox/ or inbox/PROFILE/) and claim it if it is a request.

        The folders a claim renamed from and into are added to `touched` (the caller
        fsyncs them once for a batch); `names` caches user names for the batch.
        """
        filename = path.name
        if is_ignored_name(filename):
            return Skip(filename)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return Skip(filename)
        if filename.endswith(".key") and stat.S_ISREG(st.st_mode):
            return KeyDrop(path, profile, filename[:-4], st)
        if filename.endswith(".key") and filename != ".key":
            # a symlink, FIFO, device, ... named like a key: moved aside as it is, unopened
            return Refusal(
                path,
                sanitize_name(filename),
                st,
                f"{filename!r} is {describe_type(st.st_mode)}, not a regular file; "
                "drop the key file itself (PEM, mode 0600)",
            )
        stem = filename[:-4] if filename.endswith(".req") else filename
        if not filename.endswith(".req") or filename == ".req":
            if stat.S_ISDIR(st.st_mode):
                if filename in self.profiles or path.parent != self.spool.inbox:
                    return Skip(filename)
                known = ", ".join(p for p in self.profiles if p != self.default_profile)
                return Refusal(
                    path,
                    sanitize_name(filename),
                    st,
                    f"inbox/{filename}/ is not a profile folder; "
                    + (
                        f"profile folders are: {known}"
                        if known
                        else "this CA has only the default profile"
                    )
                    + "; drop requests directly in inbox/ or in a profile folder",
                )
            return Refusal(
                path,
                sanitize_name(stem),
                st,
                f"{filename!r} is not a request: only NAME.req files (and NAME.key beside them) "
                "are accepted in the inbox",
            )
        if not is_safe_name(stem):
            safe = sanitize_name(stem)
            return Refusal(
                path,
                safe,
                st,
                f"the name {filename!r} is not allowed: use only letters, digits, '.', '_' and '-' "
                f"(no spaces, no leading dot, at most 128 characters), for example {safe}.req",
            )
        # a key being dropped beside the request right now: let it finish first
        key_src = path.with_name(stem + ".key")
        key_wait, key_there = self._key_still_arriving(key_src)
        if key_wait > 0:
            return Retry(stem, "its key is still arriving", key_wait)
        target = self.spool.claimed_path(profile, filename)
        if os.path.lexists(target):
            return Retry(stem, "a request with this name is in progress", 0.5)
        try:
            os.rename(path, target)
        except FileNotFoundError:
            return Skip(stem)
        touched.add(self.spool.work_for(profile))
        touched.add(path.parent)
        self.crashpoint("mid-claim")
        # the key beside it, if any, is claimed with it (a key that comes only after the
        # claim, also one that came since the look above, is a KeyDrop of a later scan)
        key_path = None
        if key_there:
            try:
                kst = os.lstat(key_src)
                if stat.S_ISREG(kst.st_mode):
                    key_path = self.spool.claimed_path(profile, stem + ".key")
                    os.rename(key_src, key_path)
            except FileNotFoundError:
                key_path = None
        return self._claim_of(target, profile, names, key_path) or Skip(stem)

    def load(
        self, path: Path, profile: str, names: dict[int, str | None] | None = None
    ) -> Claim | None:
        """The claim of `path` in work/PROFILE/, with NAME.key beside it if there is one
        (recovery, approval); None if it is gone."""
        key_path = path.with_name(path.name[:-4] + ".key")
        return self._claim_of(path, profile, names, key_path if os.path.lexists(key_path) else None)

    def _claim_of(
        self,
        path: Path,
        profile: str,
        names: dict[int, str | None] | None,
        key_path: Path | None,
    ) -> Claim | None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        return Claim(
            path=path,
            name=path.name[:-4],
            profile=profile,
            owner=owner_of(st, names),
            st=st,
            key_path=key_path,
        )

    def _key_still_arriving(self, key_path: Path) -> tuple[float, bool]:
        """Seconds to wait for a key being dropped beside a request, and whether there
        is anything named like its key."""
        try:
            kst = os.lstat(key_path)
        except FileNotFoundError:
            return 0.0, False
        age = time.time() - kst.st_mtime
        return (max(self.settle_seconds - age, 0.0) if stat.S_ISREG(kst.st_mode) else 0.0), True

    # --- reading claimed files ------------------------------------------------------------
    def unsafe(self, st: os.stat_result) -> str:
        """A reason to refuse a file by its metadata alone, or ''."""
        if not stat.S_ISREG(st.st_mode):
            return f"it is {describe_type(st.st_mode)}, not a regular file; drop the file itself"
        if st.st_nlink != 1:
            return "it is hard-linked to another file; drop a copy of the file, not a link"
        if st.st_size > self.max_bytes:
            return (
                f"it is {st.st_size} bytes long; requests may be at most {self.max_bytes} bytes "
                "([watch] max_request_bytes)"
            )
        if st.st_size == 0:
            return "the file is empty; drop a certificate signing request (PEM or DER)"
        return ""

    def read(self, path: Path, st: os.stat_result) -> bytes:
        """The bytes of `path`, which must still be the file `st` describes (RequestError)."""
        try:
            with open_nofollow(path) as fd:
                fst = os.fstat(fd)
                if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
                    raise RequestError(
                        "the file was replaced while it was being read; drop it again"
                    )
                problem = self.unsafe(fst)
                if problem:
                    raise RequestError(problem)
                data = read_limited(fd, self.max_bytes)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise RequestError("it is a symbolic link, not a regular file") from None
            if exc.errno == errno.EACCES:
                # certdrop runs unprivileged (systemd unit): a file it may not read is
                # refused with a reason instead of being retried for ever
                raise RequestError(
                    "certdrop may not read it (permission denied); drop a copy that the "
                    "certdrop service can read"
                ) from None
            raise
        if len(data) > self.max_bytes:
            raise RequestError(f"it grew beyond {self.max_bytes} bytes while being read")
        return data

    def read_request(self, claim: Claim) -> None:
        """Read a claimed request into `claim.data` (RequestError: refuse it)."""
        problem = self.unsafe(claim.st)
        if problem:
            raise RequestError(problem)
        claim.data = self.read(claim.path, claim.st)

    def read_key(self, claim: Claim) -> bytes:
        """The bytes of the key claimed with a request; a key others could read gets a
        note for its holder."""
        assert claim.key_path is not None
        kst = os.lstat(claim.key_path)
        problem = self.unsafe(kst)
        if problem:
            raise RequestError(f"{claim.name}.key: {problem}")
        data = self.read(claim.key_path, kst)
        mode = stat.S_IMODE(kst.st_mode)
        if mode & 0o077:
            claim.notes.append(
                f"{claim.name}.key was readable by other users (mode {mode:04o}); "
                "keep private keys mode 0600"
            )
            log.warning("%s.key was group/world readable (mode %04o)", claim.name, mode)
        return data
