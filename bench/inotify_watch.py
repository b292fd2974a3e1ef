"""A minimal inotify watcher (ctypes) for the bench: when does NAME.cer appear in outbox/?

The bench must see each certificate the moment it is complete without burning a
core on polling (it shares the machine with the daemon it measures). certdrop
renames finished files into outbox/, so IN_MOVED_TO (and IN_CLOSE_WRITE, for tools
that write in place) is the signal. On a queue overflow the watcher falls back to
one directory scan, so a count is never lost.
"""

from __future__ import annotations

import ctypes
import os
import select
import struct
import time
from collections.abc import Callable, Iterable
from pathlib import Path

IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_Q_OVERFLOW = 0x00004000
_EVENT = struct.Struct("iIII")

_libc = ctypes.CDLL(None, use_errno=True)


class BenchWaitError(RuntimeError):
    """The files the bench waits for did not come (no progress for too long)."""


class OutboxWatcher:
    """Collects the names of files completed in one folder, with their arrival times."""

    def __init__(self, folder: Path, suffix: str = ".cer") -> None:
        self.folder = folder
        self.suffix = suffix
        self.seen: dict[str, float] = {}
        self._fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        wd = _libc.inotify_add_watch(
            self._fd, os.fsencode(str(folder)), IN_MOVED_TO | IN_CLOSE_WRITE
        )
        if wd < 0:
            err = ctypes.get_errno()
            os.close(self._fd)
            raise OSError(err, f"inotify_add_watch({folder}) failed")
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLIN)
        self._buf = b""

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> OutboxWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _rescan(self) -> None:
        now = time.perf_counter()
        with os.scandir(self.folder) as it:
            for entry in it:
                if entry.name.endswith(self.suffix) and entry.name not in self.seen:
                    self.seen[entry.name] = now

    def _pump(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for events and record them."""
        if not self._poll.poll(max(0, int(timeout * 1000))):
            return
        now = time.perf_counter()
        try:
            data = os.read(self._fd, 1 << 16)
        except BlockingIOError:
            return
        off = 0
        while off + _EVENT.size <= len(data):
            _wd, mask, _cookie, length = _EVENT.unpack_from(data, off)
            raw = data[off + _EVENT.size : off + _EVENT.size + length]
            off += _EVENT.size + length
            if mask & IN_Q_OVERFLOW:
                self._rescan()
                continue
            name = raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            if name.endswith(self.suffix) and name not in self.seen:
                self.seen[name] = now

    def wait_all(
        self,
        names: Iterable[str],
        *,
        stall_seconds: float = 60.0,
        check: Callable[[], None] | None = None,
    ) -> float:
        """Wait until every name has been seen; returns perf_counter() of the last one.

        `check` runs about once a second (it raises to abort, e.g. on a rejection);
        BenchWaitError when nothing new arrives for `stall_seconds`.
        """
        wanted = set(names)
        missing = wanted - self.seen.keys()
        last_progress = time.perf_counter()
        last_check = last_progress
        while missing:
            before = len(missing)
            self._pump(0.2)
            missing -= self.seen.keys()
            now = time.perf_counter()
            if len(missing) < before:
                last_progress = now
            if now - last_check >= 1.0:
                last_check = now
                self._rescan()  # cheap insurance against a lost event
                missing -= self.seen.keys()
                if check is not None:
                    check()
            if missing and now - last_progress > stall_seconds:
                raise BenchWaitError(
                    f"{len(missing)} of {len(wanted)} files never appeared in {self.folder} "
                    f"(no progress for {stall_seconds:.0f} s), e.g. {sorted(missing)[0]}"
                )
        return max(self.seen[n] for n in wanted) if wanted else time.perf_counter()
