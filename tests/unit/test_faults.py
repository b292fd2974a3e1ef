"""Crash points (certdrop.faults): inert by default, parsed strictly, and every named point
is one the code passes (tests/e2e/test_crash_points.py kills the daemon at each)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from certdrop.errors import ConfigError
from certdrop.faults import CRASH_POINTS, CrashAt, crashpoint_from_environment, no_crash
from conftest import REPO


def test_production_has_no_crash_point() -> None:
    assert crashpoint_from_environment({}) is no_crash
    assert crashpoint_from_environment({"CERTDROP_CRASH_AT": "  "}) is no_crash
    got = crashpoint_from_environment({"CERTDROP_CRASH_AT": "after-sign:2,mid-reject"})
    assert isinstance(got, CrashAt) and got.targets == {"after-sign": 2, "mid-reject": 1}


def test_a_crash_point_counts_before_it_kills() -> None:
    crash = CrashAt({"after-record": 3})
    crash("after-record")
    crash("after-record")
    crash("after-sign")  # not a target
    assert crash.counts == {"after-record": 2}


def test_bad_specs_are_one_clear_line() -> None:
    with pytest.raises(ConfigError, match=r"CERTDROP_CRASH_AT = 'x:1': unknown crash point 'x'"):
        crashpoint_from_environment({"CERTDROP_CRASH_AT": "x:1"})
    with pytest.raises(ConfigError, match="needs a positive count, as in after-record:3"):
        crashpoint_from_environment({"CERTDROP_CRASH_AT": "after-record:-1"})


def test_every_named_point_is_passed_by_the_code() -> None:
    passed: set[str] = set()
    for path in Path(REPO / "daemon" / "certdrop").rglob("*.py"):
        passed |= set(re.findall(r'crashpoint\("([a-z-]+)"\)', path.read_text()))
    assert passed == CRASH_POINTS
