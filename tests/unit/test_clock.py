"""Injected time (certdrop.clock): aware UTC, moved only when told to."""

from __future__ import annotations

import datetime as dt
import threading

import pytest

from certdrop.clock import ManualClock, SystemClock, utc_seconds


def test_system_clock_is_aware_utc() -> None:
    now = SystemClock().now()
    assert now.tzinfo is dt.UTC
    assert abs((now - dt.datetime.now(dt.UTC)).total_seconds()) < 5


def test_manual_clock_moves_only_when_told() -> None:
    start = dt.datetime(2030, 1, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    clock = ManualClock(start)
    assert clock.now() == start and clock.now().tzinfo == dt.UTC
    clock.advance(dt.timedelta(days=1))
    assert clock.now() == dt.datetime(2030, 1, 2, 10, tzinfo=dt.UTC)
    clock.set(dt.datetime(2020, 1, 1, tzinfo=dt.UTC))  # back in time too
    assert clock.now().year == 2020
    with pytest.raises(ValueError):
        ManualClock(dt.datetime(2030, 1, 1))  # naive


def test_manual_clock_from_many_threads() -> None:
    clock = ManualClock(dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    threads = [
        threading.Thread(
            target=lambda: [clock.advance(dt.timedelta(seconds=1)) for _ in range(500)]
        )
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert clock.now() == dt.datetime(2030, 1, 1, 0, 33, 20, tzinfo=dt.UTC)


def test_utc_seconds() -> None:
    when = dt.datetime(2030, 5, 6, 7, 8, 9, 999999, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    assert utc_seconds(when) == dt.datetime(2030, 5, 6, 12, 8, 9, tzinfo=dt.UTC)
    with pytest.raises(ValueError, match="naive"):
        utc_seconds(dt.datetime(2030, 1, 1))
