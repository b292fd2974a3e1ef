"""This host among the hosts sharing a PostgreSQL index: its id, the lead and its hand-over,
and the claims of a dead host taken over.

Real PostgreSQL (tests/pgserver.py), real time with short leases (a heartbeat of 0.2 s,
a lease of 1 s), real folders.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from certdrop.clock import SystemClock
from certdrop.config import ClusterSettings, PathsSettings, Settings
from certdrop.intake.spool import Spool
from certdrop.service.cluster import Cluster, host_id, read_host_id
from conftest import wait_for


def _settings(tmp_path: Path, name: str, url: str) -> Settings:
    state = tmp_path / name
    state.mkdir(exist_ok=True)
    return Settings(
        paths=PathsSettings(spool=tmp_path / "spool", state=state, database=url),
        cluster=ClusterSettings(heartbeat_seconds=0.2, lease_seconds=1.0),
    )


@pytest.fixture
def hosts(tmp_path: Path, pg_url: str) -> Iterator[list[Cluster]]:
    made: list[Cluster] = []
    for name in ("one", "two"):
        s = _settings(tmp_path, name, pg_url)
        made.append(Cluster(s, SystemClock(), host_id(s.state)))
    yield made
    for c in made:
        if c.is_alive():
            c.stop()


def test_two_state_folders_on_one_machine_are_two_hosts(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    assert read_host_id(a) is None
    first = host_id(a)
    assert host_id(a) == read_host_id(a) == first  # kept
    assert host_id(b) != first
    (b / "host-id").write_text("../../etc\n")
    assert read_host_id(b) is None  # not an id: a new one is made
    assert host_id(b) != "../../etc"


def test_one_leads_and_the_other_takes_over_when_it_dies(hosts: list[Cluster]) -> None:
    one, two = hosts
    led: list[str] = []
    one.on_lead = lambda: led.append(one.host)
    two.on_lead = lambda: led.append(two.host)
    one.start()
    two.start()
    assert one.is_leader() and not two.is_leader()
    assert two.leader == one.host
    time.sleep(1.5)  # several leases: the leader renews its own
    assert one.is_leader() and not two.is_leader()
    # the leader dies: its thread stops, nothing is given up
    one._stop.set()
    assert one._thread is not None
    one._thread.join()
    start = time.monotonic()
    assert wait_for(two.is_leader, timeout=5)
    assert time.monotonic() - start < 1.0 + 0.2 + 0.5  # a lease and a heartbeat
    assert not one.is_leader()  # stopped leading by its own clock
    assert led == [one.host, two.host]


def test_a_host_stopping_hands_the_lead_over_at_once(hosts: list[Cluster]) -> None:
    one, two = hosts
    one.start()
    two.start()
    one.stop()
    assert wait_for(two.is_leader, timeout=1)


def test_the_claims_of_a_dead_host_are_taken_over(tmp_path: Path, hosts: list[Cluster]) -> None:
    one, two = hosts
    one.start()
    two.start()
    spool_one = Spool(tmp_path / "spool", one.host)
    spool_two = Spool(tmp_path / "spool", two.host)
    for spool in (spool_one, spool_two):
        spool.create(["client"], "client")
    (spool_one.work_for("client") / "alice.req").write_bytes(b"req")
    (spool_one.work_for("client") / "alice.key").write_bytes(b"key")
    (spool_one.staging_for("client") / ".alice.cer.staged").write_bytes(b"cer")
    (spool_two.work_for("client") / "bob.req").write_bytes(b"mine")
    (spool_one.work_for("client") / "bob.req").write_bytes(b"same name: waits")
    assert two.take_over(spool_two) == 0  # one is alive
    one._stop.set()
    assert one._thread is not None
    one._thread.join()
    time.sleep(1.5)
    two._next_takeover = 0.0
    assert two.take_over(spool_two) == 3  # alice.req, alice.key, its staged .cer
    assert (spool_two.work_for("client") / "alice.req").read_bytes() == b"req"
    assert (spool_two.work_for("client") / "alice.key").read_bytes() == b"key"
    assert (spool_two.staging_for("client") / ".alice.cer.staged").read_bytes() == b"cer"
    assert (spool_two.work_for("client") / "bob.req").read_bytes() == b"mine"
    assert (spool_one.work_for("client") / "bob.req").exists()
    # once this host's own bob is finished, the other one follows
    (spool_two.work_for("client") / "bob.req").unlink()
    two._next_takeover = 0.0
    assert two.take_over(spool_two) == 1
    # the dead host comes back: it finds itself taken for dead, and joins again only when
    # its worker has dropped the work in hand; then its new claims are its own
    one._stop.clear()
    one.beat()
    assert one.taken_for_dead.is_set() and not one.is_leader()
    one.beat()  # still out until it rejoins
    assert one.taken_for_dead.is_set()
    one.rejoin()
    assert not one.taken_for_dead.is_set()
    two._next_takeover = 0.0
    (spool_one.work_for("client") / "carol.req").write_bytes(b"new claim")
    assert two.take_over(spool_two) == 0
    assert (spool_one.work_for("client") / "carol.req").exists()


def _freeze(c: Cluster) -> None:
    """The heartbeat thread stops where it is, as in a process frozen by SIGSTOP."""
    c._stop.set()
    assert c._thread is not None
    c._thread.join()
    c._stop.clear()


def test_a_frozen_leader_wakes_up_led(hosts: list[Cluster]) -> None:
    one, two = hosts
    one.start()
    two.start()
    assert one.is_leader()
    _freeze(one)
    # by its own monotonic clock, a heartbeat before its lease ends
    wait_for(lambda: not one.is_leader(), timeout=2, what="the frozen leader to stop leading")
    assert wait_for(two.is_leader, timeout=3)
    one.beat()  # it wakes up: the lease is another's now
    assert not one.is_leader() and one.leader == two.host
    assert two.is_leader()


def test_the_leader_keeps_the_lead_when_its_connections_are_cut(
    hosts: list[Cluster], pg_url: str
) -> None:
    """The server ends every session of the database (a restart, a failover proxy): the
    next heartbeat reconnects and renews; the lease is a row, not a session."""
    import sqlalchemy as sa

    from certdrop.index.store import Store

    one, two = hosts
    one.start()
    admin = Store(pg_url)
    with admin.engine.connect() as conn:
        conn.execute(
            sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
        conn.commit()
    admin.close()
    one.beat()
    assert one.is_leader()
    two.start()
    assert two.leader == one.host and not two.is_leader()
