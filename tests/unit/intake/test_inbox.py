"""A request moved into inbox/ from another folder (`mv ~/x.req spool/inbox/`).

watchdog reports a file moved in from an unwatched folder as a creation unless the
observer generates full events; a creation in events mode waits for a close-write
that never comes, so the request would wait for the periodic rescan.
"""

from __future__ import annotations

import os
from pathlib import Path

from conftest import DaemonThread, make_env, openssl_csr, openssl_verify, wait_result


def test_request_moved_in_from_another_folder_is_issued_before_any_rescan(
    tmp_path: Path,
) -> None:
    env = make_env(tmp_path / "ca", replace={"rescan_seconds = 5": "rescan_seconds = 3600"})
    d = DaemonThread(env).start()
    try:
        # written in the user's own folder on the same filesystem, then moved in
        req, _key = openssl_csr(tmp_path / "home", "moved", kind="ec:P-256")
        os.rename(req, env.inbox / "moved.req")
        assert wait_result(env, "moved", timeout=10) == "outbox"
        assert openssl_verify(env.ca_cert, env.outbox / "moved.cer").endswith("OK")
    finally:
        d.stop()
