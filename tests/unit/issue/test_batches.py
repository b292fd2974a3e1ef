"""The batch state machine (certdrop.issue.batches): recovery, batches in flight, the
same request twice; through the Runtime the daemon builds, with real requests."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from certdrop.index import listing
from certdrop.intake.inbox import WorkItem
from conftest import CAEnv, ec_csr, make_env


def test_one_request_failing_in_recovery_does_not_stop_the_rest(
    ca_env: CAEnv, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug hit by one request left in work/ must not keep the daemon from starting,
    nor the other requests of its batch from being processed."""
    from certdrop.clock import SystemClock
    from certdrop.issue import decide as decide_module
    from certdrop.service.runtime import Runtime

    caplog.set_level(logging.ERROR, logger="certdrop")
    rt = Runtime.build(ca_env.settings, SystemClock())
    try:
        work = ca_env.spool / "work" / "client"
        for name in ("first", "second", "third"):
            (work / f"{name}.req").write_bytes(ec_csr(f"{name} user")[0])
        real_evaluate = decide_module.policy.evaluate

        def buggy(req: Any, profile: Any, ctx: Any) -> Any:
            if ("CN", "second user") in req.subject:
                raise RuntimeError("a bug that only the second request hits")
            return real_evaluate(req, profile, ctx)

        monkeypatch.setattr(decide_module.policy, "evaluate", buggy)
        results = rt.batches.recover()
        assert sorted(r.name for r in results) == ["first", "third"]
        assert (work / "second.req").exists()  # kept for a later recovery, not lost
        assert "internal error while recovering" in caplog.text
        monkeypatch.undo()  # the bug is fixed (a new version): the next recovery takes it
        assert [r.name for r in rt.batches.recover()] == ["second"]
        for name in ("first", "second", "third"):
            assert (ca_env.outbox / f"{name}.cer").exists()
    finally:
        rt.close()


@pytest.mark.parametrize("unique_cn", [True, False])
def test_the_same_request_twice_in_one_batch_is_issued_once(
    tmp_path: Path, unique_cn: bool
) -> None:
    """Two names, one CSR, one batch: one certificate, the other name re-delivered it."""
    from certdrop.clock import SystemClock
    from certdrop.issue.outcomes import Outcome
    from certdrop.service.runtime import Runtime

    replace = (
        {} if unique_cn else {"CN = { required = true, unique = true }": "CN = { required = true }"}
    )
    env = make_env(tmp_path / "ca", replace=replace)
    rt = Runtime.build(env.settings, SystemClock())
    try:
        pem, _ = ec_csr("Twice In A Batch")
        other, _ = ec_csr("Someone Else")
        for name, data in (("first", pem), ("other", other), ("second", pem)):
            (env.inbox / f"{name}.req").write_bytes(data)
        results = rt.batches.handle_batch(
            [(env.inbox / f"{n}.req", "client") for n in ("first", "other", "second")]
        )
        outcomes = {r.name: r.outcome for r in results}
        assert outcomes == {
            "first": Outcome.ISSUED,
            "other": Outcome.ISSUED,
            "second": Outcome.REDELIVERED,
        }, results
        assert (env.outbox / "first.cer").read_bytes() == (env.outbox / "second.cer").read_bytes()
        with rt.store.begin() as conn:
            assert sorted(r.request_name for r in listing.list_certs(conn)) == ["first", "other"]
    finally:
        rt.close()


def test_batches_in_flight_decide_as_if_one_after_the_other(tmp_path: Path) -> None:
    """The daemon starts batch 2 while batch 1 is being signed: what batch 2 shares with
    batch 1 (the same request, the same unique CN) waits until batch 1 is recorded."""
    from certdrop.clock import SystemClock
    from certdrop.issue.outcomes import Outcome
    from certdrop.service.runtime import Runtime

    env = make_env(tmp_path / "ca")
    rt = Runtime.build(env.settings, SystemClock())
    try:
        alice, _ = ec_csr("Alice Overlap")
        alice_again, _ = ec_csr("Alice Overlap")  # another key, the same unique CN
        files = {
            "a": alice,
            "b": ec_csr("Bob Overlap")[0],
            "a2": alice,  # the very same request as a, in the next batch
            "c": alice_again,
            "d": ec_csr("Dana Overlap")[0],
        }
        for name, data in files.items():
            (env.inbox / f"{name}.req").write_bytes(data)
        p = rt.batches
        first = p.start([WorkItem(env.inbox / f"{n}.req", "client", True) for n in ("a", "b")])
        with pytest.raises(RuntimeError):
            p.handle_batch([])  # claimed and being parsed: in flight already
        p.decide(first)
        second = p.start(
            [WorkItem(env.inbox / f"{n}.req", "client", True) for n in ("a2", "c", "d")]
        )
        p.decide(second)  # while the first is being signed
        work = env.spool / "work" / "client"
        # a2 and c are claimed but wait; nothing is delivered before a batch is finished
        assert {f.name for f in work.glob("*.req")} == {
            "a.req",
            "b.req",
            "a2.req",
            "c.req",
            "d.req",
        }
        assert not list(env.outbox.iterdir()) and not list(env.rejected.iterdir())
        with pytest.raises(RuntimeError):
            p.handle_batch([])  # nothing synchronous while batches are in flight

        done1 = {claim.name: res.outcome for claim, res in p.finish(first)}
        assert done1 == {
            "a": Outcome.ISSUED,
            "b": Outcome.ISSUED,
            "a2": Outcome.REDELIVERED,  # decided after a was recorded
            "c": Outcome.REJECTED,  # CN already has a valid certificate: a's
        }
        assert "already has a valid certificate" in (env.rejected / "c.reason").read_text()
        assert (env.outbox / "a.cer").read_bytes() == (env.outbox / "a2.cer").read_bytes()
        assert {claim.name: res.outcome for claim, res in p.finish(second)} == {"d": Outcome.ISSUED}
        assert not list(work.iterdir())
        with rt.store.begin() as conn:
            certs = listing.list_certs(conn)
        assert sorted(c.request_name for c in certs) == ["a", "b", "d"]
        assert len({c.serial for c in certs}) == 3
    finally:
        rt.close()


def test_a_batch_decided_after_the_one_before_is_recorded_sees_it(tmp_path: Path) -> None:
    """The daemon's order: start batch 2 (claim, read, parse), finish batch 1, then
    decide batch 2: its decisions see batch 1 in the index, nothing has to wait."""
    from certdrop.clock import SystemClock
    from certdrop.issue.outcomes import Outcome
    from certdrop.service.runtime import Runtime

    env = make_env(tmp_path / "ca")
    rt = Runtime.build(env.settings, SystemClock())
    try:
        alice, _ = ec_csr("Alice Next")
        files = {"a": alice, "a2": alice, "c": ec_csr("Alice Next")[0], "d": ec_csr("Dan Next")[0]}
        for name, data in files.items():
            (env.inbox / f"{name}.req").write_bytes(data)
        p = rt.batches
        first = p.start([WorkItem(env.inbox / "a.req", "client", True)])
        p.decide(first)
        second = p.start(
            [WorkItem(env.inbox / f"{n}.req", "client", True) for n in ("a2", "c", "d")]
        )
        assert {claim.name: res.outcome for claim, res in p.finish(first)} == {"a": Outcome.ISSUED}
        p.decide(second)
        assert second.batch is not None and not second.batch.after  # nothing deferred
        assert {claim.name: res.outcome for claim, res in p.finish(second)} == {
            "a2": Outcome.REDELIVERED,
            "c": Outcome.REJECTED,
            "d": Outcome.ISSUED,
        }
        assert (env.outbox / "a.cer").read_bytes() == (env.outbox / "a2.cer").read_bytes()
    finally:
        rt.close()


class RecordingSink:
    """The daemon's side of `Batches.push` (the worker), reduced to what it heard."""

    def __init__(self) -> None:
        self.results: list[Any] = []
        self.retries: list[tuple[WorkItem, float]] = []
        self.failures: list[tuple[list[WorkItem], Exception]] = []

    def result(self, result: Any) -> None:
        self.results.append(result)

    def retry(self, item: WorkItem, after: float) -> None:
        self.retries.append((item, after))

    def failed(self, items: Any, exc: Exception) -> None:
        self.failures.append((list(items), exc))


def test_push_keeps_three_batches_in_flight_and_flush_finishes_them(tmp_path: Path) -> None:
    """Batch N is finished when batch N+2 is pushed; flush finishes the rest, in order."""
    from certdrop.issue.outcomes import Outcome
    from conftest import ec_csr
    from issue_kit import make_kit

    kit = make_kit(tmp_path)
    try:
        sink = RecordingSink()
        for name in ("p1", "p2", "p3", "p4"):
            kit.drop(name, ec_csr(f"Pushed {name}")[0])

        def push(name: str) -> None:
            kit.batches.push([WorkItem(kit.env.inbox / f"{name}.req", "client", True)], sink)

        push("p1")
        push("p2")
        assert sink.results == [] and kit.batches.in_flight
        assert not list(kit.env.outbox.iterdir())  # claimed, decided: nothing delivered yet
        push("p3")
        assert [(r.name, r.outcome) for r in sink.results] == [("p1", Outcome.ISSUED)]
        push("p4")
        assert [r.name for r in sink.results] == ["p1", "p2"]
        kit.batches.flush(sink)
        assert [r.name for r in sink.results] == ["p1", "p2", "p3", "p4"]
        assert not kit.batches.in_flight
        assert sorted(p.name for p in kit.env.outbox.iterdir()) == [
            "p1.cer",
            "p2.cer",
            "p3.cer",
            "p4.cer",
        ]
        assert sink.retries == [] and sink.failures == []
    finally:
        kit.close()


def test_push_reports_what_ends_at_once_and_what_fails(tmp_path: Path) -> None:
    from certdrop.issue.outcomes import Outcome
    from conftest import ec_csr
    from issue_kit import make_kit

    kit = make_kit(tmp_path)
    try:
        sink = RecordingSink()
        inbox = kit.env.inbox
        (inbox / "notes.txt").write_text("hello")
        kit.drop("waits", ec_csr("Waits")[0])
        (inbox / "waits.key").write_bytes(ec_csr("Waits")[1])  # still arriving
        items = [
            WorkItem(inbox / "notes.txt", "client", True),
            WorkItem(inbox / "waits.req", "client", True),
            WorkItem(inbox / "gone.req", "client", True),
        ]
        kit.batches.push(items, sink)
        assert [(r.name, r.outcome) for r in sink.results] == [
            ("notes.txt", Outcome.REJECTED),
            ("waits", Outcome.RETRY),
            ("gone.req", Outcome.SKIPPED),  # gone before it was looked at
        ]
        [(item, after)] = sink.retries
        assert item is items[1] and 0.05 <= after <= 1.0
        assert (kit.env.rejected / "notes.txt.req").read_text() == "hello"
        assert not kit.batches.in_flight

        # work/client/ unusable (a file where the folder was): the claim fails, the sink
        # hears it, and the request stays in the inbox for a later try
        work = kit.spool.work_for("client")
        work.rmdir()
        work.write_text("not a folder")
        kit.drop("later", ec_csr("Later")[0])
        later = [WorkItem(inbox / "later.req", "client", True)]
        kit.batches.push(later, sink)
        [(failed_items, exc)] = sink.failures
        assert failed_items == later and isinstance(exc, OSError)
        assert (inbox / "later.req").exists()
    finally:
        kit.close()
