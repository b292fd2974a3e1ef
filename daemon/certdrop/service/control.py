"""Operator commands (approve, deny, revoke, crl) and how they reach a running daemon.

The CLI runs a command itself when no daemon holds the state lock; otherwise it puts
the command into the index's control table, which the daemon's worker reads within a
second (`Worker`), and waits for the result line. Every command is audited with who
asked and what came of it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from ..errors import CertdropError
from ..index import control as commands
from ..index.store import Store
from ..issue.outcomes import Outcome, Result
from .runtime import Runtime

log = logging.getLogger("certdrop.service")

ControlHandler = Callable[[Runtime, dict[str, Any]], str]


def _approve(rt: Runtime, payload: dict[str, Any]) -> str:
    return describe(rt.approvals.approve(str(payload["name"])))


def _deny(rt: Runtime, payload: dict[str, Any]) -> str:
    return describe(rt.approvals.deny(str(payload["name"]), str(payload.get("reason", ""))))


def _revoke(rt: Runtime, payload: dict[str, Any]) -> str:
    reason = str(payload.get("reason") or "unspecified")
    return "ok: " + rt.revoker.revoke(str(payload["ref"]), reason)


def _crl(rt: Runtime, payload: dict[str, Any]) -> str:
    facts = rt.crl.regenerate("requested by the operator")
    line = (
        f"ok: CRL {facts.number} published in {rt.crl.pem_path} and {rt.crl.der_path} "
        f"({facts.revoked} revoked, next update {facts.next_update:%Y-%m-%d %H:%M} UTC)"
    )
    if rt.apache is not None:
        rt.apache.flush()  # the operator asked for it now: no debounce
        outcome = rt.apache.last_outcome()
        if outcome is not None:
            if not outcome.ok:
                return f"error: {line[4:]}; but Apache publication failed: {outcome.text()}"
            line += f"; Apache: {outcome.text()}"
    return line


def _publish(rt: Runtime, payload: dict[str, Any]) -> str:
    """The CRLs and the Apache files, now (after `root-crl` put a new root CRL in place)."""
    rt.crl.check()
    if rt.apache is None:
        return "ok: CRLs checked; Apache publication is off ([apache] enabled = false)"
    rt.apache.changed()
    rt.apache.flush()  # the operator asked for it now: no debounce
    outcome = rt.apache.last_outcome()
    if outcome is None:
        return "ok: CRLs checked"
    if not outcome.ok:
        return f"error: Apache publication failed: {outcome.text()}"
    return f"ok: Apache: {outcome.text()}"


CONTROL_HANDLERS: dict[str, ControlHandler] = {
    "approve": _approve,
    "deny": _deny,
    "revoke": _revoke,
    "crl": _crl,
    "publish": _publish,
}


def describe(res: Result) -> str:
    if res.outcome is Outcome.ISSUED:
        return f"ok: issued {res.name} serial {res.serial} -> outbox/{res.output or res.name}.cer"
    if res.outcome is Outcome.REJECTED:
        return f"ok: {res.name} refused -> rejected/{res.name}.reason\n{res.reason}"
    if res.outcome is Outcome.REDELIVERED:
        return (
            f"ok: {res.name} already had serial {res.serial}; delivered again as "
            f"outbox/{res.output or res.name}.cer"
        )
    if res.outcome is Outcome.PENDING:
        return f"ok: {res.name} is waiting for approval"
    return f"ok: {res.name}: {res.outcome.value} {res.reason}".rstrip()


def execute_control(rt: Runtime, kind: str, payload: dict[str, Any]) -> str:
    """Run one operator command; the result line starts with 'ok:' or 'error:'."""
    handler = CONTROL_HANDLERS.get(kind)
    if handler is None:
        result = f"error: unknown command {kind!r}"
    else:
        try:
            result = handler(rt, payload)
        except CertdropError as exc:
            result = f"error: {exc}"
        except Exception:
            # a bug must not take the worker down with it; the operator sees an error
            log.exception("internal error in operator command %s %s", kind, payload)
            result = f"error: internal error while running {kind}; see the certdrop log"
    _audit_operator(rt, kind, payload, result)
    return result


def _audit_operator(rt: Runtime, kind: str, payload: dict[str, Any], result: str) -> None:
    """Every operator command is in the audit log, with who asked and what came of it."""
    if rt.hooks.audit is None:
        return
    args = {k: v for k, v in payload.items() if k != "actor"}
    event: dict[str, Any] = {
        "event": "operator",
        "command": kind,
        "args": args,
        "ok": not result.startswith("error:"),
        "result": result.split("\n", 1)[0].removeprefix("ok:").removeprefix("error:").strip(),
    }
    if payload.get("actor"):
        event["actor"] = str(payload["actor"])
    rt.hooks.audit(event)


def wait_for_control(store: Store, control_id: int, timeout: float) -> str | None:
    """Wait for a running daemon to carry out an operator command."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with store.begin() as conn:
            result = commands.result(conn, control_id)
        if result is not None:
            return result
        time.sleep(0.1)
    return None
