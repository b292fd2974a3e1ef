"""The one wiring place (certdrop.service.runtime): what `Runtime.build` makes of the
settings, and the runtime the CLI gets when no daemon holds the state lock."""

from __future__ import annotations

import datetime as dt
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from certdrop.audit import operator_actor, read_audit
from certdrop.clock import ManualClock
from certdrop.index.mailqueue import list_queue
from certdrop.intake.request import ParsedRequest
from certdrop.issue.delivery import PasswordFiles
from certdrop.issue.outcomes import Hooks, Outcome
from certdrop.notify.passwords import MailPasswordChannel
from certdrop.service.runtime import Runtime, direct_runtime
from certdrop.service.systemd import StateLock
from conftest import ec_csr, make_env
from mailpeer import mail_config

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def test_build_wires_one_of_each_around_the_given_hooks(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    heard: list[dict[str, Any]] = []
    issued: list[str] = []
    hooks = Hooks(on_issued=lambda serial, _: issued.append(serial), audit=heard.append)
    rt = Runtime.build(env.settings, ManualClock(NOW), hooks)
    try:
        b = rt.batches
        delivery = b.outcomes.delivery
        # one spool, one index, one delivery, one claimer, shared by every collaborator
        assert b.spool == rt.spool == b.claimer.spool == delivery.spool
        assert b.decider.store is b.recorder.store is b.outcomes.store is rt.store
        assert b.decider.outcomes is b.outcomes and b.recorder.outcomes is b.outcomes
        assert b.decider.delivery is delivery is b.recorder.delivery is b.keys.delivery
        assert delivery.claimer is b.claimer is b.keys.claimer
        assert rt.approvals.batches is b
        assert rt.hooks is hooks is b.hooks is b.outcomes.hooks is b.recorder.hooks
        assert rt.linter is not None and b.recorder.linter is rt.linter  # [policy] lint = true
        assert rt.mailer is None and rt.pool is None and rt.apache is None  # [apache] off
        assert rt.revoker is not None and rt.crl is not None
        assert isinstance(delivery.password_channel, PasswordFiles)
        assert b.recorder.password_channel is delivery.password_channel
        # the spool's folders exist, with their modes
        assert stat.S_IMODE(os.lstat(env.inbox / "server").st_mode) == 0o1733
        assert (env.spool / "work" / "server").is_dir()
        # ... and a request goes all the way through it, heard by the hooks
        (env.inbox / "ann.req").write_bytes(ec_csr("Ann Wired")[0])
        res = b.handle_inbox_file(env.inbox / "ann.req", "client")
        assert res.outcome is Outcome.ISSUED and issued == [res.serial]
        assert [e["event"] for e in heard] == ["issued"]
        assert (env.outbox / "ann.cer").exists()
    finally:
        rt.close()


def test_build_follows_the_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    apache = (
        f'[apache]\nenabled = true\nca_file = "{tmp_path / "apache" / "ca.pem"}"\n'
        f'crl_file = "{tmp_path / "apache" / "crl.pem"}"\n'
        'configtest_command = ["true"]\nreload_command = ["true"]\n'
    )
    env = make_env(
        tmp_path,
        extra=mail_config(2525) + apache,
        replace={"lint = true": "lint = false"},
    )
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    rt = Runtime.build(env.settings, ManualClock(NOW), signing_pool=True)
    try:
        assert rt.linter is None and rt.batches.recorder.linter is None
        assert rt.mailer is not None
        channel = rt.batches.outcomes.delivery.password_channel
        assert isinstance(channel, MailPasswordChannel)
        assert rt.pool is not None
        assert rt.batches.recorder.signer == rt.pool.sign
        # requests are parsed through the pool (a small batch in this process)
        [parsed] = rt.batches.parser([ec_csr("Parsed Through The Pool")[0]])()
        assert isinstance(parsed, ParsedRequest) and parsed.subject == (
            ("CN", "Parsed Through The Pool"),
        )
        # a failed publication alerts the admin by mail
        assert rt.apache is not None and rt.apache.on_failure is not None
        rt.apache.on_failure("Apache configtest failed", "details")
        with rt.store.begin() as conn:
            queued = list_queue(conn)
        assert [(m.kind, m.subject) for m in queued] == [
            ("alert", "[certdrop] Apache configtest failed")
        ]
    finally:
        rt.close()
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    rt = Runtime.build(env.settings, ManualClock(NOW), signing_pool=True)
    try:
        assert rt.pool is None  # one core: signing in this process
    finally:
        rt.close()


def test_direct_runtime_holds_the_lock_and_audits_as_the_operator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SUDO_USER", raising=False)
    env = make_env(tmp_path)
    clock = ManualClock(NOW)
    with direct_runtime(env.settings, clock) as rt:
        assert rt is not None
        assert not StateLock(env.state).acquire()  # no daemon can start meanwhile
        (env.inbox / "bad.req").write_bytes(b"garbage")
        assert rt.batches.handle_inbox_file(env.inbox / "bad.req", "client").outcome is (
            Outcome.REJECTED
        )
    lock = StateLock(env.state)
    assert lock.acquire()  # released
    lock.release()
    [event] = [e for e in read_audit(env.state / "audit.log") if e["event"] == "rejected"]
    assert event["name"] == "bad" and event["actor"] == operator_actor()
    assert event["time"] == NOW.isoformat(timespec="milliseconds")


def test_direct_runtime_is_none_while_a_daemon_holds_the_lock(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    with StateLock(env.state):
        with direct_runtime(env.settings, ManualClock(NOW)) as rt:
            assert rt is None
        assert not StateLock(env.state).acquire()  # still the daemon's
    assert not (env.state / "audit.log").exists()
