"""Time is injected: everything below the service layer asks a clock, never the OS."""

from __future__ import annotations

import datetime as dt
import threading
from typing import Protocol


class Clock(Protocol):
    def now(self) -> dt.datetime:
        """The current time, timezone-aware UTC."""
        ...


class SystemClock:
    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)


class ManualClock:
    """A clock that only moves when told to (tests, simulations)."""

    def __init__(self, start: dt.datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("ManualClock needs an aware datetime")
        self._now = start.astimezone(dt.UTC)
        self._lock = threading.Lock()

    def now(self) -> dt.datetime:
        with self._lock:
            return self._now

    def set(self, when: dt.datetime) -> None:
        with self._lock:
            self._now = when.astimezone(dt.UTC)

    def advance(self, delta: dt.timedelta) -> None:
        with self._lock:
            self._now += delta


def utc_seconds(when: dt.datetime) -> dt.datetime:
    """`when` in UTC, truncated to whole seconds (what X.509 time fields carry)."""
    if when.tzinfo is None:
        raise ValueError("naive datetime where an aware UTC one was expected")
    return when.astimezone(dt.UTC).replace(microsecond=0)
