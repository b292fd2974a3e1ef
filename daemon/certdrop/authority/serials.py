"""Certificate serial numbers: random, positive, growing with time, and how certdrop writes
them."""

from __future__ import annotations

import datetime as dt
import secrets

RANDOM_BITS = 79  # from the OS CSPRNG: at least 64 (CA/Browser Forum BR 7.1)
TIME_BITS = 48  # milliseconds since the epoch: enough until the year 10889


def random_serial(now: dt.datetime) -> int:
    """A positive serial of at most 16 octets in DER: the milliseconds of `now` since the
    epoch, then RANDOM_BITS random bits. Serials so grow with time: a new certificate's
    entries in the index's B-trees keyed by serial land next to the last ones instead of
    on a random page of a big index (one page written per commit, not one per entry)."""
    ms = max(1, int(now.timestamp() * 1000) & ((1 << TIME_BITS) - 1))
    return (ms << RANDOM_BITS) | secrets.randbits(RANDOM_BITS)


def serial_hex(serial: int) -> str:
    """Upper-case hex, at least two digits: the serial as the index and every command show it."""
    return format(serial, "X").rjust(2, "0") if serial else "00"
