"""Watching the inbox: watchdog events and scans become queued work items.

No work happens in watchdog callbacks: they only put paths on the `WorkQueue`.
The worker (service/worker.py) takes items off the queue and hands them to the issue
layer's batches.

* events mode (inotify): a close-write or a move into the inbox means the file is
  complete; a creation is only interesting for things that never get a close-write
  (symlinks, FIFOs, devices, hard links, directories). A regular file whose creation
  was seen but not its close-write is still being written: a scan that finds it
  waits for the close-write (or, if that event was lost, for WRITING_GRACE seconds
  without a change), however long the writer pauses.
* polling mode (network shares): a file is taken once its size and mtime have been
  stable for `settle_seconds`.
* `[watch] mode = "auto"` polls when statfs(2) puts a watched folder on NFS, SMB/CIFS,
  FUSE, 9p or another shared filesystem (changes made by other clients raise no inotify
  events there), and uses events elsewhere; `choose_watch_mode` says which and why.
* a full scan runs at start, periodically, and whenever the queue drains after a
  burst (inotify drops events when its queue overflows).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import heapq
import itertools
import logging
import os
import platform
import stat
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from ..config import Settings, WatchSettings
from ..fsutil import is_ignored_name

log = logging.getLogger("certdrop.inbox")

# events mode: how long a file created but never seen closed may stay unchanged before
# it is taken anyway (its close-write event may have been lost in a queue overflow)
WRITING_GRACE = 60.0


class _StopRaceFilter(logging.Filter):
    """watchdog's inotify emitter logs an ERROR when it is stopped between two reads (a
    harmless race at every shutdown or reload); keep it out of the journal."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "called when the thread is inactive" not in record.getMessage()


logging.getLogger("watchdog.observers.inotify").addFilter(_StopRaceFilter())


@dataclass(frozen=True)
class WorkItem:
    path: Path
    profile: str
    complete: bool  # True: an event said the file is complete; False: check it settled


class WorkQueue:
    """A de-duplicating FIFO of inbox paths, with delayed re-tries."""

    def __init__(self) -> None:
        self._items: OrderedDict[Path, WorkItem] = OrderedDict()
        self._delayed: list[tuple[float, int, WorkItem]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False

    def put(self, item: WorkItem) -> None:
        with self._cond:
            old = self._items.get(item.path)
            if old is None or (item.complete and not old.complete):
                self._items[item.path] = item
                self._cond.notify()

    def put_later(self, item: WorkItem, delay: float) -> None:
        with self._cond:
            heapq.heappush(self._delayed, (time.monotonic() + delay, next(self._seq), item))
            self._cond.notify()

    def get(self, timeout: float) -> WorkItem | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                self._promote_due()
                if self._items:
                    _, item = self._items.popitem(last=False)
                    return item
                if self._closed:
                    return None
                remaining = deadline - time.monotonic()
                if self._delayed:
                    remaining = min(remaining, self._delayed[0][0] - time.monotonic())
                if remaining <= 0 and not self._delayed:
                    return None
                if remaining <= 0:
                    if time.monotonic() >= deadline:
                        return None
                    continue
                self._cond.wait(remaining)

    def get_batch(self, max_items: int, timeout: float) -> list[WorkItem]:
        """Up to `max_items` items: waits up to `timeout` for the first, not for more."""
        first = self.get(timeout)
        if first is None:
            return []
        batch = [first]
        with self._cond:
            self._promote_due()
            while self._items and len(batch) < max_items:
                _, item = self._items.popitem(last=False)
                batch.append(item)
        return batch

    def _promote_due(self) -> None:
        now = time.monotonic()
        while self._delayed and self._delayed[0][0] <= now:
            _, _, item = heapq.heappop(self._delayed)
            if item.path not in self._items:
                self._items[item.path] = item

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def depth(self) -> tuple[int, int]:
        with self._cond:
            return len(self._items), len(self._delayed)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


# --- which mode: the filesystems holding the inbox ------------------------------------------------------
@dataclass(frozen=True)
class Filesystem:
    """A statfs(2) f_type: its name, and whether other machines change it behind our back."""

    name: str
    shared: bool  # network/cluster/FUSE: changes made by other clients raise no inotify events
    known: bool = True


_SHARED: dict[int, str] = {
    0x6969: "nfs",
    0x517B: "smb",
    0xFF534D42: "cifs",
    0xFE534D42: "smb2",
    0x65735546: "fuse",  # sshfs, rclone, s3fs, glusterfs, virtiofs, ...
    0x01021997: "9p",  # v9fs: QEMU/virtfs shares, WSL2's /mnt/c
    0x00C36400: "ceph",
    0x5346414F: "afs",
    0x6B414653: "kafs",
    0x73757245: "coda",
    0x564C: "ncp",
    0x7461636F: "ocfs2",
    0x01161970: "gfs2",
    0x0BD00BD0: "lustre",
    0x47504653: "gpfs",
    0x19830326: "beegfs",
    0x20030528: "orangefs",
    0xAAD7AAEA: "panfs",
    0xBEEFDEAD: "snfs",
    0x61636673: "acfs",
    0x013111A8: "ibrix",
    0xA501FCF5: "vxfs",  # may be clustered
    0x786F4256: "vboxsf",
    0xBACBACBC: "vmhgfs",
    0x7C7C6673: "prl_fs",
}
_LOCAL: dict[int, str] = {
    0xEF53: "ext2/ext3/ext4",
    0x58465342: "xfs",
    0x9123683E: "btrfs",
    0x01021994: "tmpfs",
    0x858458F6: "ramfs",
    0x794C7630: "overlayfs",
    0x2FC12FC1: "zfs",
    0xCA451A4E: "bcachefs",
    0xF2F52010: "f2fs",
    0x52654973: "reiserfs",
    0x3153464A: "jfs",
    0x3434: "nilfs2",
    0x5346544E: "ntfs",
    0x4D44: "vfat",
    0x2011BAB0: "exfat",
    0x482B: "hfsplus",
    0x00011954: "ufs",
    0xF15F: "ecryptfs",
    0x15013346: "udf",
    0x9660: "iso9660",
    0x73717368: "squashfs",
    0xE0F5E1E2: "erofs",
    0x9FA0: "proc",
    0x62656572: "sysfs",
    0x1CD1: "devpts",
    0x64626720: "debugfs",
    0x27E0EB: "cgroup",
    0x63677270: "cgroup2",
}
FILESYSTEMS: Mapping[int, Filesystem] = MappingProxyType(
    {magic: Filesystem(name, shared=True) for magic, name in _SHARED.items()}
    | {magic: Filesystem(name, shared=False) for magic, name in _LOCAL.items()}
)


def filesystem_for(f_type: int) -> Filesystem:
    """The table's entry for a statfs f_type; an unknown type is not taken for a share."""
    f_type &= 0xFFFFFFFF  # f_type is a signed long on most ABIs: CIFS's magic comes negative
    found = FILESYSTEMS.get(f_type)
    return found or Filesystem(f"an unknown filesystem type 0x{f_type:08x}", False, False)


@functools.cache
def _statfs() -> tuple[Any, type[ctypes.c_uint] | type[ctypes.c_ulong]]:
    """libc's statfs (statfs64: no EOVERFLOW on 32-bit ABIs), and the C type of f_type:
    a long (__fsword_t) first in the struct, except on s390x where it is an unsigned int."""
    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "statfs64", None) or libc.statfs
    fn.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
    fn.restype = ctypes.c_int
    return fn, ctypes.c_uint if platform.machine().startswith("s390") else ctypes.c_ulong


def statfs_type(path: Path) -> int:
    """statfs(2)'s f_type for the filesystem holding `path` (OSError when it fails)."""
    if sys.platform != "linux":
        raise OSError(errno.ENOSYS, "statfs f_type is read on Linux only", str(path))
    fn, word = _statfs()
    buf = ctypes.create_string_buffer(512)  # more than struct statfs64 on every Linux ABI
    if fn(os.fsencode(path), buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(path))
    return int(word.from_buffer(buf).value) & 0xFFFFFFFF


@dataclass(frozen=True)
class FolderFilesystem:
    """What statfs said about one watched folder (f_type, or why it could not say)."""

    label: str  # "inbox", "profile folder server"
    folder: Path
    mount: Path  # where that filesystem is mounted (the folder itself if statfs failed)
    f_type: int | None
    error: str | None = None

    @property
    def filesystem(self) -> Filesystem | None:
        return None if self.f_type is None else filesystem_for(self.f_type)

    def describe(self, verb: str = "") -> str:
        """'inbox on nfs (/mnt/share)'; with verb " is": 'the inbox is on nfs (/mnt/share)'."""
        fs = self.filesystem
        if fs is None:
            return f"{self.label}: filesystem unknown ({self.error})"
        return f"{'the ' if verb else ''}{self.label}{verb} on {fs.name} ({self.mount})"


def _mount_point(path: Path, dev: int) -> Path:
    """The highest folder above `path` on the same device: where its filesystem is mounted."""
    here = path
    while here.parent != here:
        try:
            if os.stat(here.parent).st_dev != dev:
                break
        except OSError:
            break
        here = here.parent
    return here


def _probe(label: str, folder: Path) -> tuple[FolderFilesystem, int | None]:
    """statfs of `folder` (or, not made yet, of the folder it will be made in)."""
    target = Path(os.path.abspath(folder))
    try:
        while True:
            try:
                st = os.stat(target)
                break
            except FileNotFoundError:
                if target.parent == target:
                    raise
                target = target.parent
        target = target.resolve()
        f_type = statfs_type(target)
    except OSError as exc:
        return FolderFilesystem(
            label, folder, folder, None, f"statfs {target}: {exc.strerror or exc}"
        ), None
    return FolderFilesystem(label, folder, _mount_point(target, st.st_dev), f_type), st.st_dev


def probe_folders(folders: Sequence[tuple[Path, str]]) -> list[FolderFilesystem]:
    """The filesystem of the inbox (the first folder), and of each profile folder that is
    on another one (a mount point, or a symlink to elsewhere)."""
    (root, _default), *others = folders
    inbox, inbox_dev = _probe("inbox", root)
    out = [inbox]
    seen = {inbox_dev}
    for folder, profile in others:
        try:
            dev = os.stat(folder).st_dev
        except OSError:
            continue  # not made yet: it will be made in the inbox
        if dev in seen:
            continue
        seen.add(dev)
        out.append(_probe(f"profile folder {profile}", folder)[0])
    return out


@dataclass(frozen=True)
class WatchChoice:
    """The watch mode in force, what was configured, and why (for the log and status)."""

    mode: Literal["events", "polling"]
    configured: str
    why: str
    warning: bool = False  # logged as a warning: changes may be missed or found late
    folders: tuple[FolderFilesystem, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "configured": self.configured,
            "why": self.why,
            "filesystems": [
                {
                    "folder": str(p.folder),
                    "type": p.filesystem.name if p.filesystem else None,
                    "mount": str(p.mount),
                    "shared": p.filesystem.shared if p.filesystem else None,
                    **({"error": p.error} if p.error else {}),
                }
                for p in self.folders
            ],
        }


def decide_watch_mode(
    watch: WatchSettings, probes: Sequence[FolderFilesystem], inotify: bool = True
) -> WatchChoice:
    """auto: polling when a watched folder is on a network/FUSE share (other clients'
    changes raise no inotify events there), events elsewhere; events/polling as set."""
    polling = f"polling every {watch.poll_seconds:g} s"
    events = "events (inotify)"
    shared = [p for p in probes if p.filesystem is not None and p.filesystem.shared]
    where = ", ".join(p.describe() for p in probes)
    folders = tuple(probes)
    if watch.mode == "polling":
        return WatchChoice(
            "polling", "polling", f"{polling}, as configured; {where}", False, folders
        )
    if watch.mode == "events":
        if not shared:
            return WatchChoice(
                "events", "events", f"{events}, as configured; {where}", False, folders
            )
        why = (
            f"{events}, as configured, although "
            + ", ".join(p.describe(" is") for p in shared)
            + ": changes made by other clients raise no events and are missed until the"
            f' rescan (every {watch.rescan_seconds:g} s); set [watch] mode = "auto" or "polling"'
        )
        return WatchChoice("events", "events", why, True, folders)
    if not inotify:
        return WatchChoice(
            "polling", "auto", f"inotify is not available here: {polling}", False, folders
        )
    if shared:
        why = ", ".join(p.describe() for p in shared) + f": {polling}"
        return WatchChoice("polling", "auto", why, False, folders)
    unsure = [p for p in probes if p.filesystem is None or not p.filesystem.known]
    if not unsure:
        return WatchChoice("events", "auto", f"{where}: {events}", False, folders)
    why = (
        f"{where}: {events}; if that is a network share (changes made elsewhere raise no"
        ' events), set [watch] mode = "polling"'
    )
    return WatchChoice("events", "auto", why, True, folders)


def _inotify_available() -> bool:
    try:
        from watchdog.observers.inotify import InotifyObserver  # noqa: F401
    except ImportError:
        return False
    return True


def choose_watch_mode(watch: WatchSettings, folders: Sequence[tuple[Path, str]]) -> WatchChoice:
    """The watch mode for these inbox folders (the daemon's inbox and `certdrop status`)."""
    inotify = watch.mode != "auto" or _inotify_available()
    return decide_watch_mode(watch, probe_folders(folders), inotify)


def inbox_folders(
    root: Path, profiles: Sequence[str], default_profile: str
) -> list[tuple[Path, str]]:
    """The folders watched: the inbox (the default profile's) and one per other profile."""
    out = [(root, default_profile)]
    for p in profiles:
        if p != default_profile:
            out.append((root / p, p))
    return out


def watch_choice(settings: Settings) -> WatchChoice:
    """What the daemon's inbox for these settings watches with, and why."""
    return Inbox.for_settings(settings, WorkQueue()).choice


def _drop_box_observer(handler: FileSystemEventHandler) -> BaseObserver:
    """An inotify observer for a drop box: close-write, moved-in and created only.

    Three things differ from watchdog's default:
    * full events: a file moved in from outside the inbox is a move (complete), not a
      creation (still being written);
    * no IN_MOVED_FROM: certdrop's own claims move files *out* of the inbox, and
      watchdog holds every IN_MOVED_FROM for half a second to pair it with an
      IN_MOVED_TO, delaying every event queued behind it. A drop box only needs to
      know what arrives, so moved-out events are not even asked from the kernel
      (which also halves the events a burst puts in inotify's queue);
    * each event goes to `handler` in the thread that read it: the handler only queues
      work (thread-safe), so the hop through watchdog's dispatcher thread (a queue, a
      lock, a thread switch per event) is skipped.
    """
    from watchdog.observers.inotify import (
        InotifyFullEmitter,
        InotifyObserver,
        InotifyWatchGroup,
    )
    from watchdog.observers.inotify_c import InotifyConstants
    from watchdog.observers.inotify_move_event_grouper import InotifyMoveEventGrouper

    class ArrivalsOnly(InotifyMoveEventGrouper):
        """Nothing to pair: without IN_MOVED_FROM every IN_MOVED_TO comes from outside.

        watchdog's grouper searches its whole queue for a partner on every IN_MOVED_TO
        (twice), under a lock: quadratic in a burst of files renamed into the inbox.
        """

        def _group_moved_to_event(self, to_event: Any) -> Any:
            return to_event

        def get_queued_moved_from_event(self, cookie: int) -> Any:
            return None

    @dataclass
    class DropBoxWatchGroup(InotifyWatchGroup):
        _move_event_grouper: InotifyMoveEventGrouper = field(
            default_factory=ArrivalsOnly, init=False
        )

    class DropBoxEmitter(InotifyFullEmitter):
        def get_event_mask_from_filter(self) -> Any:
            return (
                InotifyConstants.IN_CLOSE_WRITE
                | InotifyConstants.IN_MOVED_TO
                | InotifyConstants.IN_CREATE
                | InotifyConstants.IN_DELETE_SELF
            )

        def queue_event(self, event: Any) -> None:
            if self._event_filter is None or isinstance(event, tuple(self._event_filter)):
                handler.dispatch(event)

        def on_thread_start(self) -> None:
            self._inotify = DropBoxWatchGroup(
                self._inotify_fd,
                os.fsencode(self.watch.path),
                is_recursive=self.watch.is_recursive,
                event_mask=self.get_event_mask_from_filter(),
                follow_symlink=self.watch.follow_symlink,
            )

    observer = InotifyObserver(generate_full_events=True)
    observer._emitter_class = DropBoxEmitter
    return observer


class _Handler(FileSystemEventHandler):
    def __init__(self, inbox: Inbox) -> None:
        self.inbox = inbox

    def on_any_event(self, event: FileSystemEvent) -> None:  # runs in watchdog's thread
        try:
            if isinstance(event, FileClosedEvent):
                self.inbox.offer(Path(os.fsdecode(event.src_path)), complete=True)
            elif isinstance(event, FileMovedEvent | DirMovedEvent):
                if event.dest_path:  # "" when moved out of the inbox (our own claims)
                    self.inbox.offer(Path(os.fsdecode(event.dest_path)), complete=True)
            elif isinstance(event, FileCreatedEvent | DirCreatedEvent):
                self.inbox.offer_created(Path(os.fsdecode(event.src_path)))
            elif isinstance(event, FileModifiedEvent):
                self.inbox.offer(Path(os.fsdecode(event.src_path)), complete=False)
        except Exception:
            log.exception("error while queueing %r", event)


class Inbox:
    """The inbox folder(s): one watch per profile folder, feeding a WorkQueue."""

    def __init__(
        self,
        root: Path,
        profiles: list[str],
        default_profile: str,
        settings: WatchSettings,
        queue: WorkQueue,
    ) -> None:
        self.root = root
        self.profiles = profiles
        self.default_profile = default_profile
        self.settings = settings
        self.queue = queue
        self.choice = choose_watch_mode(settings, self.folders())
        self.mode = self.choice.mode
        self._observer: BaseObserver | None = None
        self.last_scan = 0.0  # time.monotonic() of the last full scan
        # polling mode: last (size, mtime_ns) seen per path, for the settle check
        self._seen: dict[Path, tuple[int, int, float]] = {}
        # events mode: files created (opened for writing) whose close-write is not seen yet
        self._writing: dict[Path, float] = {}

    @classmethod
    def for_settings(cls, settings: Settings, queue: WorkQueue) -> Inbox:
        """The spool's inbox as these settings describe it (the daemon's, and status's)."""
        return cls(
            settings.spool / "inbox",
            list(settings.profiles),
            settings.policy.default_profile,
            settings.watch,
            queue,
        )

    # --- folders -----------------------------------------------------------------------------------
    def folders(self) -> list[tuple[Path, str]]:
        return inbox_folders(self.root, self.profiles, self.default_profile)

    def profile_for(self, path: Path) -> str | None:
        parent = path.parent
        if parent == self.root:
            return self.default_profile
        if (
            parent.parent == self.root
            and parent.name in self.profiles
            and parent.name != self.default_profile
        ):
            return parent.name
        return None

    # --- observers ----------------------------------------------------------------------------------
    def start(self) -> None:
        handler = _Handler(self)
        if self.mode == "polling":
            observer: BaseObserver = PollingObserver(timeout=self.settings.poll_seconds)
            event_filter = None
        else:
            observer = _drop_box_observer(handler)
            event_filter = [
                FileClosedEvent,
                FileMovedEvent,
                DirMovedEvent,
                FileCreatedEvent,
                DirCreatedEvent,
            ]
        for folder, _profile in self.folders():
            if folder.is_dir():
                observer.schedule(handler, str(folder), recursive=False, event_filter=event_filter)
        observer.daemon = True
        observer.start()
        self._observer = observer
        level = logging.WARNING if self.choice.warning else logging.INFO
        log.log(
            level, "watching %s: %s (mode %s)", self.root, self.choice.why, self.choice.configured
        )

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=10)
            self._observer = None

    def is_alive(self) -> bool:
        return self._observer is not None and self._observer.is_alive()

    # --- feeding the queue ---------------------------------------------------------------------------
    def offer(self, path: Path, complete: bool) -> None:
        if is_ignored_name(path.name):
            return
        profile = self.profile_for(path)
        if profile is None:
            return
        if self.mode == "polling":
            complete = False  # network shares: only a stable size and mtime say "complete"
        elif complete:
            self._writing.pop(path, None)  # closed after writing, or moved in whole
        self.queue.put(WorkItem(path, profile, complete))

    def offer_created(self, path: Path) -> None:
        """Created: only things that never get a close-write are queued now."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
            if self.mode == "polling":
                self.offer(path, complete=False)
            elif not is_ignored_name(path.name) and self.profile_for(path) is not None:
                self._writing[path] = time.time()
            return  # wait for close-write
        self.offer(path, complete=True)

    def scan(self) -> int:
        """Queue everything in the inbox folders (found, not announced: settle first)."""
        self.last_scan = time.monotonic()
        n = 0
        found: set[Path] = set()
        for path, profile in self._entries():
            self.queue.put(WorkItem(path, profile, complete=False))
            found.add(path)
            n += 1
        for path in [p for p in list(self._writing) if p not in found]:
            self._writing.pop(path, None)  # gone (renamed away, deleted) before its close
        return n

    def _entries(self) -> Iterator[tuple[Path, str]]:
        for folder, profile in self.folders():
            try:
                with os.scandir(folder) as it:
                    for entry in it:
                        if is_ignored_name(entry.name):
                            continue
                        if (
                            folder == self.root
                            and entry.name in self.profiles
                            and entry.is_dir(follow_symlinks=False)
                        ):
                            continue  # a profile folder
                        yield Path(entry.path), profile
            except FileNotFoundError:
                continue

    def settled(self, item: WorkItem, now_wall: float) -> float:
        """0 if `item` may be read now, else seconds to wait before looking again."""
        if item.complete:
            return 0.0
        try:
            st = os.lstat(item.path)
        except FileNotFoundError:
            self._seen.pop(item.path, None)
            self._writing.pop(item.path, None)
            return 0.0  # gone: the claim will skip it
        if not stat.S_ISREG(st.st_mode):
            return 0.0  # refused without reading; nothing to wait for
        settle = self.settings.settle_seconds
        age = now_wall - st.st_mtime
        key = (st.st_size, st.st_mtime_ns)
        prev = self._seen.get(item.path)
        if self.mode == "polling":
            if prev is None or (prev[0], prev[1]) != key:
                self._seen[item.path] = (key[0], key[1], now_wall)
                return max(settle, 0.05)
            if now_wall - prev[2] < settle:
                return max(settle - (now_wall - prev[2]), 0.05)
            self._seen.pop(item.path, None)
            return 0.0
        if age < settle:
            return max(settle - age, 0.05)
        if item.path in self._writing:
            # created, not yet closed: a writer that pauses; wait for its close-write
            if age < WRITING_GRACE:
                return max(settle, 0.5)
            log.warning(
                "%r was never seen closed and has not changed for %.0f s; taking it",
                item.path.name,
                age,
            )
            self._writing.pop(item.path, None)
        return 0.0
