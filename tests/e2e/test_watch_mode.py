"""`[watch] mode` through the running daemon, with the spool on a real tmpfs mount.

auto on a local filesystem means inotify events: the log says so and why, `certdrop
status` (another process: it decides from the settings and the folder itself) says the
same, and a request dropped with the periodic rescan out of reach is issued, so the
events arrived. SIGHUP with `mode = "polling"` logs the new choice and polls.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from conftest import DaemonThread, make_env, openssl_csr, wait_for, wait_result
from mounts import tmpfs_mounted


def _watch_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "certdrop.inbox" and r.getMessage().startswith("watching ")
    ]


def test_a_spool_on_tmpfs_is_watched_with_events_and_polls_after_a_reload(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "ca"
    caplog.set_level(logging.INFO, logger="certdrop.inbox")
    with tmpfs_mounted(root / "spool") as spool:
        env = make_env(root, replace={"rescan_seconds = 5": "rescan_seconds = 3600"})
        inbox = spool / "inbox"
        d = DaemonThread(env).start()
        try:
            assert _watch_lines(caplog) == [
                f"watching {inbox}: inbox on tmpfs ({spool}): events (inotify) (mode auto)"
            ]
            code, out, err = env.cli("status", "--json")
            assert code == 0, err
            watch = json.loads(out)["watch"]
            assert (watch["mode"], watch["configured"]) == ("events", "auto")
            assert watch["why"] == f"inbox on tmpfs ({spool}): events (inotify)"
            assert watch["filesystems"] == [
                {"folder": str(inbox), "type": "tmpfs", "mount": str(spool), "shared": False}
            ]
            code, out, err = env.cli("status")
            [line] = [ln for ln in out.splitlines() if ln.startswith("watch ")]
            assert line.split(None, 1)[1] == (
                f"inbox on tmpfs ({spool}): events (inotify) (mode auto)"
            )

            # the rescan is an hour away: only an inotify event can bring this one in
            req, _ = openssl_csr(tmp_path / "home", "alice", subject="/CN=Alice", kind="ec:P-256")
            env.drop(req)
            assert wait_result(env, "alice", timeout=10) == "outbox"

            # SIGHUP with an explicit polling: logged again, and status follows the file
            caplog.clear()
            env.write_config(
                replace={
                    "rescan_seconds = 5": "rescan_seconds = 3600",
                    "[watch]\n": '[watch]\nmode = "polling"\n',
                }
            )
            d.daemon.reload_requested.set()  # what SIGHUP does
            wait_for(lambda: d.daemon.last_reload and d.daemon.last_reload[1], what="reload ok")
            assert _watch_lines(caplog) == [
                f"watching {inbox}: polling every 0.2 s, as configured;"
                f" inbox on tmpfs ({spool}) (mode polling)"
            ]
            code, out, err = env.cli("status", "--json")
            watch = json.loads(out)["watch"]
            assert (watch["mode"], watch["configured"]) == ("polling", "polling")
            bob, _ = openssl_csr(tmp_path / "home", "bob", subject="/CN=Bob", kind="ec:P-256")
            env.drop(bob)
            assert wait_result(env, "bob", timeout=10) == "outbox"
        finally:
            d.stop()
