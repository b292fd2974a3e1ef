"""Operator commands (certdrop.service.control): each handler on a real runtime, the result
lines, the audit events, and the control table a running daemon reads."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from certdrop.index import control as commands
from certdrop.issue.outcomes import Outcome, Result
from certdrop.service.control import (
    CONTROL_HANDLERS,
    describe,
    execute_control,
    wait_for_control,
)
from certdrop.service.runtime import Runtime
from conftest import ec_csr
from issue_kit import SERVER, Kit, make_kit


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    k = make_kit(tmp_path)
    yield k
    k.close()


def crl(kit: Kit) -> x509.CertificateRevocationList:
    return x509.load_der_x509_crl((kit.env.state / "crl.der").read_bytes())


def crl_number(kit: Kit) -> int:
    return crl(kit).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def operator_events(kit: Kit) -> list[dict[str, Any]]:
    return kit.events("operator")


def test_the_commands_a_daemon_carries_out() -> None:
    assert sorted(CONTROL_HANDLERS) == ["approve", "crl", "deny", "publish", "revoke"]


def test_describe_gives_one_line_per_outcome() -> None:
    assert describe(Result(Outcome.ISSUED, "a", serial="0A")) == (
        "ok: issued a serial 0A -> outbox/a.cer"
    )
    assert describe(Result(Outcome.REJECTED, "b", reason="why\n")) == (
        "ok: b refused -> rejected/b.reason\nwhy\n"
    )
    assert describe(Result(Outcome.REDELIVERED, "c", serial="0C")) == (
        "ok: c already had serial 0C; delivered again as outbox/c.cer"
    )
    assert describe(Result(Outcome.ISSUED, "f", serial="0F", output="f-2")) == (
        "ok: issued f serial 0F -> outbox/f-2.cer"
    )
    assert describe(Result(Outcome.PENDING, "d")) == "ok: d is waiting for approval"
    assert describe(Result(Outcome.SKIPPED, "e")) == "ok: e: skipped"
    assert describe(Result(Outcome.RETRY, "f", reason="busy")) == "ok: f: retry busy"


def test_approve_issues_and_is_audited_with_who_asked(kit: Kit) -> None:
    assert kit.process("web", ec_csr("www.example.org")[0], SERVER).outcome is Outcome.PENDING
    result = execute_control(kit.rt, "approve", {"name": "web", "actor": "alice (via sudo)"})
    [row] = kit.certs()
    assert result == f"ok: issued web serial {row.serial} -> outbox/web.cer"
    assert (kit.env.outbox / "web.cer").exists()
    assert operator_events(kit) == [
        {
            "event": "operator",
            "command": "approve",
            "args": {"name": "web"},
            "ok": True,
            "result": f"issued web serial {row.serial} -> outbox/web.cer",
            "actor": "alice (via sudo)",
        }
    ]


def test_deny_gives_the_reason_file_in_the_result(kit: Kit) -> None:
    kit.process("mail", ec_csr("mail.example.org")[0], SERVER)
    result = execute_control(kit.rt, "deny", {"name": "mail", "reason": "not ours"})
    first, rest = result.split("\n", 1)
    assert first == "ok: mail refused -> rejected/mail.reason"
    assert rest == (kit.env.rejected / "mail.reason").read_text()
    assert "the CA operator denied the request: not ours" in rest
    [event] = operator_events(kit)
    assert event["result"] == "mail refused -> rejected/mail.reason" and "actor" not in event


def test_revoke_publishes_the_crl(kit: Kit) -> None:
    res = kit.process("rev", ec_csr("Rev Oked")[0])
    assert res.serial is not None
    assert not (kit.env.state / "crl.der").exists()  # the daemon's start publishes the first
    result = execute_control(kit.rt, "revoke", {"ref": "rev", "reason": "keyCompromise"})
    assert result.startswith(f"ok: revoked {res.serial} (CN=Rev Oked), reason keyCompromise; ")
    assert f"CRL {crl_number(kit)} published in {kit.env.state / 'crl.pem'}" in result
    assert kit.cert(res.serial).status == "revoked"
    entry = crl(kit).get_revoked_certificate_by_serial_number(int(res.serial, 16))
    assert entry is not None and entry.revocation_date_utc == kit.clock.now()
    assert operator_events(kit)[0]["ok"] is True


def test_crl_makes_a_new_crl_now(kit: Kit) -> None:
    assert execute_control(kit.rt, "crl", {}).startswith("ok: CRL ")
    before = crl_number(kit)
    result = execute_control(kit.rt, "crl", {})
    assert crl_number(kit) == before + 1  # the same time (a ManualClock): the next number
    next_update = crl(kit).next_update_utc
    assert next_update is not None
    assert result == (
        f"ok: CRL {before + 1} published in {kit.env.state / 'crl.pem'} and "
        f"{kit.env.state / 'crl.der'} (0 revoked, next update {next_update:%Y-%m-%d %H:%M} UTC)"
    )


def test_errors_are_result_lines_not_exceptions(
    kit: Kit, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert execute_control(kit.rt, "frobnicate", {}) == "error: unknown command 'frobnicate'"
    assert execute_control(kit.rt, "approve", {"name": "nosuch"}) == (
        "error: no pending request named nosuch; see 'certdrop status'"
    )

    def explode(rt: Runtime, payload: dict[str, Any]) -> str:
        raise RuntimeError("a bug")

    monkeypatch.setitem(CONTROL_HANDLERS, "explode", explode)
    caplog.set_level(logging.ERROR, logger="certdrop.service")
    assert execute_control(kit.rt, "explode", {"x": 1}) == (
        "error: internal error while running explode; see the certdrop log"
    )
    assert "internal error in operator command explode" in caplog.text
    assert [(e["command"], e["ok"], e["result"]) for e in operator_events(kit)] == [
        ("frobnicate", False, "unknown command 'frobnicate'"),
        ("approve", False, "no pending request named nosuch; see 'certdrop status'"),
        ("explode", False, "internal error while running explode; see the certdrop log"),
    ]


def test_wait_for_control_reads_the_result_from_the_index(kit: Kit) -> None:
    store, now = kit.store, kit.clock.now()
    with store.begin() as conn:
        done = commands.push(conn, "crl", {}, now)
        waiting = commands.push(conn, "crl", {}, now)
        assert [c[0] for c in commands.open_commands(conn)] == [done, waiting]
        commands.finish(conn, done, "ok: done", now)
    assert wait_for_control(store, done, 5) == "ok: done"
    assert wait_for_control(store, waiting, 0.01) is None  # no daemon answered in time
