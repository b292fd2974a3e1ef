"""Fault injection for the crash tests; inert unless asked for.

The issue layer (and the claim) call `crashpoint(NAME)` at the moments where a crash is most
interesting (between signing and recording, between recording and delivery, ...).
In production the crash point is `no_crash`, which does nothing. The service sets
a real one only when the environment variable CERTDROP_CRASH_AT is set when the
daemon starts:

    CERTDROP_CRASH_AT=after-record:3        SIGKILL itself the 3rd time that point is reached
    CERTDROP_CRASH_AT=after-sign:2,mid-reject:1   whichever comes first

SIGKILL is what `kill -9`, the OOM killer or a power cut do: no handler, no
finally block, no flush runs. The guarantees of the spool must survive it.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping

from .errors import ConfigError

Crashpoint = Callable[[str], None]

ENVIRONMENT_VARIABLE = "CERTDROP_CRASH_AT"

# Every named point a request passes (grep certdrop/intake and certdrop/issue for each one).
CRASH_POINTS = frozenset(
    {
        "mid-claim",  # a request renamed into work/, its key (if any) still in the inbox
        "after-claim",  # a batch of requests (and keys) claimed into work/ and durable
        "after-parse",  # the batch parsed, nothing decided
        "after-sign",  # certificates signed, nothing staged or recorded
        "after-stage",  # outputs staged in work/ (synced), the index not yet committed
        "after-record",  # the index committed, nothing delivered
        "mid-deliver",  # NAME.p12 in outbox/, NAME.cer not yet
        "after-deliver",  # outputs in outbox/, the requests still in work/
        "after-archive",  # the requests archived, the run not yet reported
        "after-redeliver-stage",  # re-delivery: the certificate staged again
        "mid-reject",  # rejected/NAME.reason written, the request still in work/
        "after-reject",  # the request in rejected/, the journal not yet written
        "mid-pending",  # the pending row committed, the request still in work/
    }
)


def no_crash(point: str) -> None:
    """The production crash point: nothing happens."""


class CrashAt:
    """Kill the process (SIGKILL) the n-th time a named point is reached."""

    def __init__(self, targets: Mapping[str, int]) -> None:
        self.targets = dict(targets)
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, point: str) -> None:
        target = self.targets.get(point)
        if target is None:
            return
        with self._lock:
            self.counts[point] = self.counts.get(point, 0) + 1
            reached = self.counts[point] >= target
        if reached:
            sys.stderr.write(f"certdrop: crash point {point}:{target} reached, SIGKILL\n")
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)


def parse_crash_spec(value: str) -> dict[str, int]:
    """'point:n[,point:n...]' -> {point: n}; unknown points are a clear error."""
    targets: dict[str, int] = {}
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        point, _, count = part.partition(":")
        if point not in CRASH_POINTS:
            raise ConfigError(
                f"{ENVIRONMENT_VARIABLE} = {value!r}: unknown crash point {point!r}; "
                f"known: {', '.join(sorted(CRASH_POINTS))}"
            )
        try:
            n = int(count) if count else 1
        except ValueError:
            n = 0
        if n < 1:
            raise ConfigError(
                f"{ENVIRONMENT_VARIABLE} = {value!r}: {part!r} needs a positive count, "
                "as in after-record:3"
            )
        targets[point] = n
    return targets


def crashpoint_from_environment(environ: Mapping[str, str]) -> Crashpoint:
    """The crash point the daemon runs with: `no_crash` unless CERTDROP_CRASH_AT is set."""
    value = environ.get(ENVIRONMENT_VARIABLE, "")
    if not value.strip():
        return no_crash
    return CrashAt(parse_crash_spec(value))
