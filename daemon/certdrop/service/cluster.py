"""Several hosts on one index and one spool: this host's id, its heartbeat, the leader.

Each daemon has a host id (`<hostname>-<6 hex>`, kept in `<state>/host-id`: two daemons
on one machine have their own state folders, so their own ids). A thread of its own
renews the host's row in the index every `heartbeat_seconds` and takes or renews the
leader's lease (index/membership.py); the leading host runs the CA-wide jobs (CRL renewal,
expiry sweeps, mail). A leader that dies, is frozen or loses the database stops renewing:
its lease expires after `lease_seconds` and another host takes it at its next heartbeat.
The leader itself stops leading a heartbeat before its lease runs out, by its own
monotonic clock, whether or not it can reach the database. With SQLite there is one
host, which always leads.

The worker asks `take_over` between batches: the claims of hosts silent for a lease
(`.claims/HOST/`) are moved into this host's claim folder and processed as after a
crash; the index decides what was recorded already (index/store.py's fence keeps a
host taken for dead from recording anything until it registers again).
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..clock import Clock
from ..config import Settings
from ..errors import CertdropError, StoreError
from ..fsutil import atomic_write
from ..index import membership as rows
from ..index.store import Store
from ..intake.spool import Spool, adopt_claims

log = logging.getLogger("certdrop.service")

HOST_ID_FILE = "host-id"
_HOST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9.\-]{0,100}-[0-9a-f]{6}")


def read_host_id(state: Path) -> str | None:
    """The host id kept in the state folder; None before the daemon first ran."""
    try:
        text = (state / HOST_ID_FILE).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text if _HOST_ID.fullmatch(text) else None


def host_id(state: Path) -> str:
    """This host's id: the one in the state folder, or a new one kept there."""
    found = read_host_id(state)
    if found is not None:
        return found
    name = re.sub(r"[^A-Za-z0-9.\-]", "-", socket.gethostname().split(".")[0])[:64].strip("-.")
    new = f"{name or 'host'}-{secrets.token_hex(3)}"
    atomic_write(state / HOST_ID_FILE, (new + "\n").encode("ascii"), 0o644)
    return new


class Cluster:
    """This host among the hosts sharing the index (see the module docstring)."""

    def __init__(self, settings: Settings, clock: Clock, host: str) -> None:
        self.host = host
        self.clock = clock
        self.clustered = settings.clustered
        self.heartbeat_seconds = settings.cluster.heartbeat_seconds
        self.lease_seconds = settings.cluster.lease_seconds
        # connections of its own, so that the worker's long transactions never delay a
        # heartbeat; its transactions are short, so a host frozen inside one loses that
        # session (and the lease's row lock) after a heartbeat
        self.store = Store(
            settings.database_url, idle_in_transaction=max(1.0, self.heartbeat_seconds)
        )
        self.leader: str | None = None
        self.on_lead: Callable[[], None] | None = None  # this host has just become the leader
        self.on_beat: Callable[[], None] | None = None  # after each heartbeat (CRL follow)
        self._lead_until = 0.0  # monotonic: this host leads until then
        self._next_takeover = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # set when this host finds itself taken for dead; cleared by `rejoin`
        self.taken_for_dead = threading.Event()

    # --- life cycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Register, take the lead if it is free, and start the heartbeat thread."""
        self.store.open()
        with self.store.begin() as conn:
            rows.register(conn, self.host, os.getpid(), self.clock.now())
        self.beat()
        log.info(
            "host %s: %s",
            self.host,
            "leading" if self.is_leader() else f"{self.leader or 'nobody'} leads",
        )
        self._thread = threading.Thread(target=self._loop, name="certdrop-cluster", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Give the lead up and say this host stopped (its claim folder is empty then)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._lead_until = 0.0
        try:
            with self.store.begin() as conn:
                rows.resign(conn, self.host)
                rows.retire(conn, self.host, self.clock.now())
        except CertdropError as exc:
            log.warning("could not tell the index this host stops: %s", exc)
        self.store.close()

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _loop(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            try:
                self.beat()
            except CertdropError as exc:
                log.error("heartbeat: %s", exc)
            except Exception:
                log.exception("heartbeat failed")
            if self.on_beat is not None and not self._stop.is_set():
                self.on_beat()

    # --- the lead ---------------------------------------------------------------------------
    def is_leader(self) -> bool:
        if not self.clustered:
            return True
        return time.monotonic() < self._lead_until

    def beat(self) -> None:
        """Renew this host's row and take or renew the leader's lease."""
        started = time.monotonic()
        was_leader = self.is_leader()
        now = self.clock.now()
        with self.store.begin() as conn:
            if self.taken_for_dead.is_set() or not rows.beat(conn, self.host, now):
                # frozen or cut off for longer than a lease: another host has its claims
                # now; nothing is recorded for them here (the fence), and this host joins
                # again only once the worker has dropped the work in hand (`rejoin`)
                if not self.taken_for_dead.is_set():
                    log.warning(
                        "host %s was taken for dead (its claims were taken over); joining "
                        "again once the work in hand is dropped",
                        self.host,
                    )
                    self.taken_for_dead.set()
                holder = rows.leader(conn, now)
            else:
                holder = rows.try_lead(conn, self.host, now, self.lease_seconds)
        self.leader = holder
        if holder == self.host:
            # a heartbeat short of the lease: the others take it only once it has expired
            self._lead_until = started + self.lease_seconds - self.heartbeat_seconds
        else:
            self._lead_until = 0.0
        if self.is_leader() and not was_leader and self.clustered:
            log.info("host %s now leads the CA-wide jobs", self.host)
            if self.on_lead is not None:
                self.on_lead()
        elif was_leader and not self.is_leader():
            log.warning("host %s no longer leads; %s does", self.host, holder or "nobody")

    def rejoin(self) -> None:
        """After being taken for dead: the work in hand was dropped (its commits refused);
        this host registers again and records from now on."""
        with self.store.begin() as conn:
            rows.register(conn, self.host, os.getpid(), self.clock.now())
        self.taken_for_dead.clear()
        log.warning("host %s joined the hosts again", self.host)

    # --- the claims of dead hosts -----------------------------------------------------------
    def take_over(self, spool: Spool) -> int:
        """Move the claims of hosts taken for dead into this host's folder (at most once a
        heartbeat); the number of files moved (requests, keys, staged outputs)."""
        if not self.clustered or spool.host != self.host:
            return 0
        mono = time.monotonic()
        if mono < self._next_takeover:
            return 0
        self._next_takeover = mono + self.heartbeat_seconds
        now = self.clock.now()
        try:
            with self.store.begin() as conn:
                for dead in rows.silent_hosts(conn, self.host, now, self.lease_seconds):
                    rows.retire(conn, dead, now)
                    log.warning(
                        "host %s has been silent for %g s: taken for dead", dead, self.lease_seconds
                    )
            others = sorted(
                d.name
                for d in spool.claims.iterdir()
                if d.is_dir() and d.name != self.host and not d.name.startswith(".")
            )
            moved = 0
            for other in others:
                with self.store.begin() as conn:
                    # the row stays locked while its claims move: a host coming back waits
                    if not rows.lock_if_gone(conn, other):
                        continue
                    requests, files = adopt_claims(spool, other)
                if requests:
                    log.warning("took over %d request(s) claimed by host %s", requests, other)
                moved += requests + files  # staged outputs alone: recovery clears them
            return moved
        except (OSError, StoreError) as exc:
            log.error("taking over the claims of dead hosts: %s", exc)
            return 0
