"""APScheduler, wrapped (certdrop.service.scheduler): jobs every N seconds, run soon on
demand, a failing job logged and kept."""

from __future__ import annotations

import threading
import time

import pytest

from certdrop.service.scheduler import Scheduler


def wait(event: threading.Event, what: str) -> None:
    assert event.wait(10), what


def test_jobs_run_now_and_on_demand_and_survive_errors(caplog: pytest.LogCaptureFixture) -> None:
    sched = Scheduler()
    ran: list[str] = []
    first, again, failed = threading.Event(), threading.Event(), threading.Event()

    def job(name: str) -> None:
        ran.append(name)
        (again if first.is_set() else first).set()

    def broken() -> None:
        failed.set()
        raise RuntimeError("a bug in a job")

    sched.every("job", 3600, job, "hourly", run_now=True)
    sched.every("broken", 3600, broken, run_now=True)
    sched.start()
    try:
        assert sched.is_alive()
        wait(first, "the job to run at once")
        wait(failed, "the broken job to run")
        sched.run_soon("job")  # on top of its interval
        wait(again, "the job to run again soon")
        assert ran == ["hourly", "hourly"]
        assert sorted(sched.job_ids()) == ["broken", "job"]
        sched.remove("broken")
        sched.remove("broken")  # gone already: nothing happens
        sched.run_soon("nosuch")
        assert sched.job_ids() == ["job"]
        deadline = time.monotonic() + 5
        while "scheduled job broken failed" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "scheduled job broken failed" in caplog.text
        assert sched.is_alive()
    finally:
        sched.shutdown()
    assert not sched.is_alive()
