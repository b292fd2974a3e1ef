"""The Debouncer that runs Apache publication once after a burst of CRL changes."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from certdrop.publish.apache import Debouncer
from conftest import wait_for


def test_debouncer_coalesces_a_burst() -> None:
    calls: list[int] = []
    deb = Debouncer(3600, lambda: calls.append(1), "test-debounce")
    try:
        for _ in range(5):
            deb.trigger()
        assert deb.pending and calls == []
        assert deb.flush() is True
        assert calls == [1] and not deb.pending
        assert deb.flush() is False
        deb.trigger()
    finally:
        deb.close()  # a pending action is not lost at shutdown
    assert calls == [1, 1]
    fast = Debouncer(0.01, lambda: calls.append(2), "test-debounce-fast")
    try:
        fast.trigger()
        wait_for(lambda: 2 in calls, what="the debounced action")
    finally:
        fast.close()
    assert calls.count(2) == 1


def test_a_steady_stream_of_triggers_cannot_postpone_the_action_forever() -> None:
    calls: list[float] = []
    deb = Debouncer(0.1, lambda: calls.append(time.monotonic()), "test-debounce-stream")
    assert deb.max_wait == pytest.approx(0.5)
    try:
        start = time.monotonic()
        while time.monotonic() - start < 3.0:  # a trigger every 20 ms: never 0.1 s of quiet
            deb.trigger()
            time.sleep(0.02)
        assert calls, "the action never ran during the stream"
        assert calls[0] - start < 2.5
    finally:
        deb.close()


def test_a_failing_action_is_logged_and_the_next_one_still_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[int] = []
    ran = threading.Event()

    def action() -> None:
        calls.append(1)
        ran.set()
        if len(calls) == 1:
            raise RuntimeError("boom")

    deb = Debouncer(0.01, action, "test-debounce-failing")
    try:
        with caplog.at_level(logging.ERROR, logger="certdrop.publish"):
            deb.trigger()
            wait_for(ran.is_set, what="the first action")
            ran.clear()
            deb.trigger()
            wait_for(ran.is_set, what="the second action")
        assert calls == [1, 1]
        assert "test-debounce-failing failed" in caplog.text and "boom" in caplog.text
    finally:
        deb.close()
