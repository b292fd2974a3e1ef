"""How many connections each worker process of `certdrop serve` holds open, in memory the
workers share (a memory file mapped before they fork; a worker started later maps it too).

The workers accept on one listening socket. Left alone, whichever wakes first takes a
new connection, and a few long-lived keep-alive connections (a reverse proxy, a load
generator) can all land in one process while the other CPUs idle. So a worker accepts
only while it holds no more connections than the least busy worker.
"""

from __future__ import annotations

import mmap
import os

RETIRED = 1 << 62  # the count of a worker that is not running: never the least busy


class ConnectionBoard:
    """One counter per worker (see the module docstring)."""

    def __init__(self, workers: int, fd: int | None = None) -> None:
        """A new board, or (`fd`) the one a worker started later inherited."""
        self.workers = workers
        if fd is None:  # a memory file: kept over fork, and over exec for workers started later
            fd = os.memfd_create("certdrop-serve-board", os.MFD_CLOEXEC)
            os.ftruncate(fd, 8 * workers)
            fresh = True
        else:
            fresh = False
        self.fd = fd
        self._map = mmap.mmap(fd, 8 * workers)  # MAP_SHARED
        self._counts = memoryview(self._map).cast("q")
        if fresh:
            for i in range(workers):
                self._counts[i] = RETIRED

    def set(self, worker: int, connections: int) -> None:
        self._counts[worker] = connections

    def get(self, worker: int) -> int:
        return int(self._counts[worker])

    def retire(self, worker: int) -> None:
        """`worker` stopped: the others must not wait for it to take connections."""
        self._counts[worker] = RETIRED

    def may_accept(self, worker: int) -> bool:
        """Whether `worker` holds no more connections than the least busy worker."""
        mine = self._counts[worker]
        return all(mine <= c for c in self._counts)
