"""APScheduler 3, wrapped: jobs are plain functions given their dependencies.

Jobs run in the scheduler's thread pool; each is coalesced (a backlog runs once)
and has a misfire grace time, so a suspended machine or a clock jump neither skips
nor repeats work. Jobs take `now` from the injected clock, never from the OS.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler

log = logging.getLogger("certdrop.scheduler")


class Scheduler:
    def __init__(self) -> None:
        self._sched = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=2)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 3600},
            timezone=dt.UTC,
        )

    def every(
        self,
        job_id: str,
        seconds: float,
        func: Callable[..., Any],
        *args: Any,
        run_now: bool = False,
    ) -> None:
        """Run `func(*args)` every `seconds` (and once right away if `run_now`)."""
        kwargs: dict[str, Any] = {}
        if run_now:
            kwargs["next_run_time"] = dt.datetime.now(dt.UTC)
        self._sched.add_job(
            _guarded(job_id, func),
            "interval",
            args=args,
            seconds=seconds,
            id=job_id,
            replace_existing=True,
            **kwargs,
        )

    def run_soon(self, job_id: str) -> None:
        """Run job `job_id` now (on top of its interval); no-op if it does not exist."""
        job = self._sched.get_job(job_id)
        if job is not None:
            try:
                job.modify(next_run_time=dt.datetime.now(dt.UTC))
            except JobLookupError:
                pass  # removed meanwhile

    def remove(self, job_id: str) -> None:
        if self._sched.get_job(job_id) is not None:
            self._sched.remove_job(job_id)

    def start(self) -> None:
        self._sched.start()

    def shutdown(self) -> None:
        if self._sched.running:
            self._sched.shutdown(wait=True)

    def is_alive(self) -> bool:
        return bool(self._sched.running)

    def job_ids(self) -> list[str]:
        return [j.id for j in self._sched.get_jobs()]


def _guarded(job_id: str, func: Callable[..., Any]) -> Callable[..., Any]:
    def run(*args: Any) -> Any:
        try:
            return func(*args)
        except Exception:
            log.exception("scheduled job %s failed", job_id)
            return None

    run.__name__ = f"job_{job_id}"
    return run
