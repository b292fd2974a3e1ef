"""The worker (certdrop.service.worker.Worker): the batches' Sink, the recovery of work/
with its backoff, and the loop, on a real runtime, inbox and queue. The host is a small
stand-in for the daemon: its flags, and what it heard."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from certdrop.index import control as commands
from certdrop.intake.inbox import Inbox, WorkItem, WorkQueue
from certdrop.issue.outcomes import Outcome, Result
from certdrop.service.control import CONTROL_HANDLERS, wait_for_control
from certdrop.service.runtime import Runtime
from certdrop.service.worker import RECOVER_FIRST_DELAY, Worker
from conftest import ec_csr, wait_for
from issue_kit import Kit, age, make_kit


class Host:
    """What the worker needs of the daemon (service.worker.Host)."""

    def __init__(self, rt: Runtime | None, queue: WorkQueue, inbox: Inbox | None) -> None:
        self.rt = rt
        self.inbox = inbox
        self.cluster = None  # the only host
        self.queue = queue
        self.stop_requested = threading.Event()
        self.reload_requested = threading.Event()
        self.reloads = 0
        self.ready = threading.Event()
        self.outbox_when_ready: list[str] = []

    def reload(self) -> None:
        self.reloads += 1

    def rebuild(self) -> str:
        raise AssertionError("no rollover in these tests")

    def announce_ready(self) -> None:
        assert self.rt is not None
        self.outbox_when_ready = sorted(p.name for p in self.rt.spool.outbox.iterdir())
        self.ready.set()

    def stop(self) -> None:
        self.stop_requested.set()
        self.queue.close()


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    k = make_kit(tmp_path)
    yield k
    k.close()


def host_for(kit: Kit) -> Host:
    settings = kit.rt.settings
    queue = WorkQueue()
    inbox = Inbox(
        settings.spool / "inbox",
        list(settings.profiles),
        settings.policy.default_profile,
        settings.watch,
        queue,
    )
    return Host(kit.rt, queue, inbox)


@pytest.fixture
def running(kit: Kit) -> Iterator[tuple[Worker, Host]]:
    """A worker thread that was started on an empty inbox and is ready."""
    host = host_for(kit)
    worker = Worker(host, host.queue)
    worker.start()
    try:
        assert host.ready.wait(10)
        yield worker, host
    finally:
        host.stop()
        assert worker.join(10)


def drop_settled(kit: Kit, name: str) -> Path:
    path = kit.drop(name, ec_csr(f"Worker {name}")[0])
    age(path, 60)  # dropped a while ago: settled
    return path


# --- the Sink ------------------------------------------------------------------------------------------
def test_results_are_counted_and_real_ones_are_activity(kit: Kit) -> None:
    host = host_for(kit)
    worker = Worker(host, host.queue)
    worker.result(Result(Outcome.SKIPPED, "a"))
    worker.result(Result(Outcome.RETRY, "b"))
    assert not worker.had_activity  # nothing happened that a rescan should follow
    worker.result(Result(Outcome.ISSUED, "c"))
    worker.result(Result(Outcome.REJECTED, "d"))
    worker.result(Result(Outcome.REJECTED, "e"))
    assert worker.had_activity
    assert worker.counts == {
        "issued": 1,
        "redelivered": 0,
        "rejected": 2,
        "pending": 0,
        "skipped": 1,
        "retry": 1,
    }


def test_retry_puts_the_item_back_for_later(kit: Kit) -> None:
    host = host_for(kit)
    worker = Worker(host, host.queue)
    item = WorkItem(kit.env.inbox / "later.req", "client", True)
    worker.retry(item, 30)
    assert host.queue.depth() == (0, 1)
    assert host.queue.get_batch(10, 0) == []  # not due yet


def test_failed_items_wait_and_the_error_is_kept(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="certdrop.service")
    host = host_for(kit)
    worker = Worker(host, host.queue)
    items = [WorkItem(kit.env.inbox / f"{n}.req", "client", True) for n in ("a", "b")]
    worker.failed(items, OSError(28, "No space left on device"))
    assert worker.last_error == "[Errno 28] No space left on device"
    assert host.queue.depth() == (0, 2) and host.queue.get_batch(10, 0) == []
    assert "2 request(s) not processed: [Errno 28] No space left on device" in caplog.text
    worker.failed(items[:1], RuntimeError("a bug"))
    assert worker.last_error == "internal error"
    assert "internal error while processing 1 request(s); will retry in 30 s" in caplog.text
    assert "RuntimeError: a bug" in caplog.text  # with its traceback, for the bug report
    assert host.queue.depth() == (0, 3)


def test_busy_marks_the_task_in_hand(kit: Kit) -> None:
    host = host_for(kit)
    worker = Worker(host, host.queue)
    assert worker.busy_since is None
    with worker.busy():
        assert worker.busy_since is not None
    assert worker.busy_since is None


# --- recovery of work/ -------------------------------------------------------------------------------------
def test_recover_finishes_what_an_interrupted_run_left_in_work(kit: Kit) -> None:
    for name in ("left1", "left2"):
        kit.spool.claimed_path("client", f"{name}.req").write_bytes(ec_csr(f"Left {name}")[0])
    host = host_for(kit)
    worker = Worker(host, host.queue)
    worker.recover(kit.rt)
    assert worker.counts["issued"] == 2
    assert sorted(p.name for p in kit.env.outbox.iterdir()) == ["left1.cer", "left2.cer"]
    assert not list(kit.spool.work_for("client").iterdir())


def test_a_recovery_that_fails_keeps_the_request_and_says_why(kit: Kit) -> None:
    kit.spool.claimed_path("client", "junk.req").write_bytes(b"not a request")
    kit.env.rejected.rmdir()
    kit.env.rejected.write_text("rejected/ is a file now")  # refusals cannot be written
    host = host_for(kit)
    worker = Worker(host, host.queue)
    with pytest.raises(OSError):
        worker.recover(kit.rt)
    assert worker.last_error.startswith("recovery of work/: ")
    assert kit.spool.claimed_path("client", "junk.req").exists()
    kit.env.rejected.unlink()
    kit.env.rejected.mkdir()
    worker.recover(kit.rt)
    assert worker.counts["rejected"] == 1
    assert (kit.env.rejected / "junk.reason").exists()


def test_recovery_is_retried_with_a_growing_delay_until_it_works(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="certdrop.service")
    kit.spool.claimed_path("client", "junk.req").write_bytes(b"not a request")
    kit.env.rejected.rmdir()
    kit.env.rejected.write_text("rejected/ is a file now")
    host = host_for(kit)
    worker = Worker(host, host.queue)
    worker.recover_delay = 0.05  # instead of 5 s
    worker.failed([], OSError(5, "Input/output error"))  # a batch failed: recover later
    worker.start()
    try:
        assert host.ready.wait(10)
        # each failed recovery doubles the delay before the next one
        wait_for(lambda: worker.recover_delay >= 0.2, 10, what="two failed recoveries")
        assert "recovery of work/ failed again" in caplog.text
        assert worker.last_error.startswith("recovery of work/: ")
        assert kit.spool.claimed_path("client", "junk.req").exists()
        kit.env.rejected.unlink()  # the disk is usable again
        kit.env.rejected.mkdir()
        wait_for(lambda: worker.counts["rejected"] == 1, 10, what="a recovery that works")
        assert worker.recover_delay == RECOVER_FIRST_DELAY  # back to the first delay
        assert (kit.env.rejected / "junk.reason").exists()
    finally:
        host.stop()
        assert worker.join(10)


# --- the loop ----------------------------------------------------------------------------------------------------
def test_what_was_dropped_before_the_start_is_done_before_ready(kit: Kit) -> None:
    for name in ("early1", "early2"):
        drop_settled(kit, name)
    host = host_for(kit)
    worker = Worker(host, host.queue)
    worker.start()
    try:
        assert host.ready.wait(10)
        assert host.outbox_when_ready == ["early1.cer", "early2.cer"]
        assert worker.counts["issued"] == 2 and worker.alive()
    finally:
        host.stop()
        assert worker.join(10)
    assert not worker.alive()


def test_the_loop_handles_drops_commands_and_reloads(
    kit: Kit, running: tuple[Worker, Host]
) -> None:
    worker, host = running
    path = drop_settled(kit, "later")
    host.queue.put(WorkItem(path, "client", False))
    wait_for(lambda: (kit.env.outbox / "later.cer").exists(), 10, what="later.cer")
    wait_for(lambda: worker.counts["issued"] == 1, 10, what="the result")
    with kit.store.begin() as conn:  # an operator command through the control table
        control = commands.push(conn, "revoke", {"ref": "later"}, kit.clock.now())
    result = wait_for_control(kit.store, control, 10)
    assert result is not None and result.startswith("ok: revoked ")
    [cert] = kit.certs()
    assert cert.status == "revoked"
    host.reload_requested.set()  # SIGHUP
    wait_for(lambda: host.reloads == 1, 10, what="the reload")
    assert not host.reload_requested.is_set()
    assert worker.alive()


def test_a_bug_in_the_loop_ends_the_thread_with_a_log_line(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="certdrop.service")
    host = host_for(kit)
    host.rt = None  # the daemon's contract broken: no runtime
    worker = Worker(host, host.queue)
    worker.start()
    assert worker.join(10)
    assert not worker.alive() and not host.ready.is_set()
    assert "the worker thread died (this is a bug in certdrop)" in caplog.text


def test_a_failing_operator_command_does_not_kill_the_worker(
    kit: Kit, running: tuple[Worker, Host], monkeypatch: pytest.MonkeyPatch
) -> None:
    worker, host = running

    def explode(rt: Runtime, payload: dict[str, object]) -> str:
        raise RuntimeError("bug")

    monkeypatch.setitem(CONTROL_HANDLERS, "explode", explode)
    with kit.store.begin() as conn:
        cid = commands.push(conn, "explode", {}, kit.clock.now())
    result = wait_for_control(kit.store, cid, 30)
    assert result is not None and result.startswith("error: internal error")
    assert worker.alive() and not host.stop_requested.is_set()
    # ... and it goes on carrying out commands
    with kit.store.begin() as conn:
        cid = commands.push(conn, "crl", {}, kit.clock.now())
    result = wait_for_control(kit.store, cid, 30)
    assert result is not None and result.startswith("ok: CRL ")


def test_new_fingerprints_are_folded_once_the_worker_is_idle(kit: Kit) -> None:
    """A certificate's fingerprint entry stays among the new ones while requests may
    still come (the idle time not reached), and is folded among the others once idle."""
    host = host_for(kit)
    worker = Worker(host, host.queue)
    worker.fold_idle_seconds = 3600.0
    worker.start()
    try:
        assert host.ready.wait(10)
        path = drop_settled(kit, "fold")
        host.queue.put(WorkItem(path, "client", False))
        wait_for(lambda: worker.counts["issued"] == 1, 10, what="the result")
        with kit.store.begin() as conn:
            assert kit.store.pending_fingerprints(conn) == 1
        worker.fold_idle_seconds = 0.0

        def pending() -> int:
            with kit.store.begin() as conn:
                return kit.store.pending_fingerprints(conn)

        wait_for(lambda: pending() == 0, 10, what="the fold")
        [cert] = kit.certs()
        with kit.store.begin() as conn:
            found = kit.store.by_fingerprints(conn, [cert.request_fingerprint])
        assert [r.serial for r in found[cert.request_fingerprint]] == [cert.serial]
    finally:
        host.stop()
        assert worker.join(10)
