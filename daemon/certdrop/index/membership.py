"""Several hosts on one index: the `hosts` rows (heartbeats), the leader's lease, and the
latest signed CRL of each CA key.

A lease is a row updated under its row lock, never a session lock: it outlives a dropped
connection only until it expires, and a frozen or killed leader loses it by the clock
alone. Lease times are milliseconds since the epoch from each host's clock (the hosts'
clocks are kept by NTP; a skew shortens or lengthens a lease by as much).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from .schema import crls, from_epoch, hosts, leases, to_epoch
from .store import Transaction

LEADER = "leader"


def _ms(when: dt.datetime) -> int:
    return int(when.timestamp() * 1000)


@dataclass(frozen=True)
class HostRow:
    id: str
    started: dt.datetime
    last_seen: dt.datetime
    pid: int
    retired: bool


def register(conn: Transaction, host: str, pid: int, now: dt.datetime) -> None:
    """This host starts (or comes back after being taken for dead): alive, not retired."""
    values = {"started": to_epoch(now), "last_seen": _ms(now), "pid": pid, "retired_at": None}
    update = sa.update(hosts).where(hosts.c.id == host).values(**values)
    if conn.execute(update).rowcount:
        return
    try:
        with conn.begin_nested():
            conn.execute(sa.insert(hosts).values(id=host, **values))
    except IntegrityError:  # registered meanwhile by a process with the same id
        conn.execute(update)


def beat(conn: Transaction, host: str, now: dt.datetime) -> bool:
    """This host is alive; False when it was taken for dead (its claims taken over)."""
    res = conn.execute(
        sa.update(hosts)
        .where(hosts.c.id == host, hosts.c.retired_at.is_(None))
        .values(last_seen=_ms(now))
    )
    return bool(res.rowcount)


def list_hosts(conn: Transaction) -> list[HostRow]:
    rows = conn.execute(
        sa.select(
            hosts.c.id, hosts.c.started, hosts.c.last_seen, hosts.c.pid, hosts.c.retired_at
        ).order_by(hosts.c.id)
    )
    out = []
    for hid, started, seen, pid, retired in rows:
        s = from_epoch(started)
        assert s is not None
        last = dt.datetime.fromtimestamp(int(seen) / 1000, dt.UTC)
        out.append(HostRow(str(hid), s, last, int(pid or 0), retired is not None))
    return out


def silent_hosts(conn: Transaction, me: str, now: dt.datetime, lease_seconds: float) -> list[str]:
    """Hosts (not this one) silent for longer than a lease and not retired yet; their rows
    stay locked until the transaction ends (rows another host is retiring are skipped)."""
    cutoff = _ms(now) - int(lease_seconds * 1000)
    query = (
        sa.select(hosts.c.id)
        .where(hosts.c.id != me, hosts.c.retired_at.is_(None), hosts.c.last_seen < cutoff)
        .order_by(hosts.c.id)
    )
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return [str(r[0]) for r in conn.execute(query)]


def retire(conn: Transaction, host: str, now: dt.datetime) -> None:
    conn.execute(sa.update(hosts).where(hosts.c.id == host).values(retired_at=to_epoch(now)))


def try_lead(conn: Transaction, host: str, now: dt.datetime, lease_seconds: float) -> str | None:
    """Take or renew the leader's lease if it is free, expired or ours; the holder of a
    valid lease afterwards (this host or another), None if nobody holds one."""
    now_ms = _ms(now)
    expires = now_ms + int(lease_seconds * 1000)
    unlocked = sa.select(leases.c.holder, leases.c.expires_at).where(leases.c.name == LEADER)
    query = unlocked.with_for_update()
    if conn.dialect.name == "postgresql":
        # never wait for the row: the host holding its lock may be frozen inside its
        # heartbeat; it is being renewed or taken right now, so the lease stands as read
        query = unlocked.with_for_update(skip_locked=True)
    row = conn.execute(query).first()
    if row is None:
        if conn.execute(unlocked).first() is None:
            try:
                with conn.begin_nested():
                    conn.execute(
                        sa.insert(leases).values(
                            name=LEADER, holder=host, acquired_at=to_epoch(now), expires_at=expires
                        )
                    )
                return host
            except IntegrityError:  # another host inserted it meanwhile
                pass
        # another host holds the row (PostgreSQL) or has just made it
        return leader(conn, now)
    holder, expires_at = str(row[0]), int(row[1])
    if holder == host or expires_at <= now_ms:
        values: dict[str, object] = {"holder": host, "expires_at": expires}
        if holder != host:
            values["acquired_at"] = to_epoch(now)
        conn.execute(sa.update(leases).where(leases.c.name == LEADER).values(**values))
        return host
    return holder


def resign(conn: Transaction, host: str) -> None:
    """A host stopping gives the lease up at once (no wait for it to expire)."""
    conn.execute(
        sa.update(leases)
        .where(leases.c.name == LEADER, leases.c.holder == host)
        .values(expires_at=0)
    )


def leader(conn: Transaction, now: dt.datetime) -> str | None:
    """The holder of a valid leader's lease, None if there is none."""
    row = conn.execute(
        sa.select(leases.c.holder, leases.c.expires_at).where(leases.c.name == LEADER)
    ).first()
    if row is None or int(row[1]) <= _ms(now):
        return None
    return str(row[0])


# --- the latest CRL of each CA key -------------------------------------------------------------
def latest_crl_number(conn: Transaction, ca: str) -> int | None:
    value = conn.execute(sa.select(crls.c.number).where(crls.c.ca == ca)).scalar()
    return None if value is None else int(value)


def latest_crl(conn: Transaction, ca: str) -> tuple[int, bytes] | None:
    row = conn.execute(sa.select(crls.c.number, crls.c.der).where(crls.c.ca == ca)).first()
    return None if row is None else (int(row[0]), bytes(row[1]))


def save_crl(
    conn: Transaction, ca: str, number: int, der: bytes, this_update: dt.datetime, host: str
) -> None:
    """A CRL of CA key `ca`, unless the index holds a later one already (a CRL just
    signed is saved in the transaction that drew its number, under that row's lock)."""
    values = {"number": number, "der": der, "this_update": to_epoch(this_update), "signed_by": host}
    update = sa.update(crls).where(crls.c.ca == ca, crls.c.number < number).values(**values)
    if conn.execute(update).rowcount:
        return
    if latest_crl_number(conn, ca) is None:
        try:
            with conn.begin_nested():
                conn.execute(sa.insert(crls).values(ca=ca, **values))
        except IntegrityError:  # another host stored one meanwhile
            conn.execute(update)


def lock_if_gone(conn: Transaction, host: str) -> bool:
    """True when `host` stopped or was taken for dead (or never registered): its claims
    may be taken over; its row then stays locked to the end of the transaction. False
    when it is alive, or another host is taking its claims over right now."""
    query = sa.select(hosts.c.retired_at).where(hosts.c.id == host)
    if conn.dialect.name == "postgresql":
        row = conn.execute(query.with_for_update(skip_locked=True)).first()
        if row is None:
            return conn.execute(query).first() is None  # absent, or locked by another
    else:
        row = conn.execute(query).first()
        if row is None:
            return True
    return row[0] is not None
