"""Root at the keyboard, certdrop as a service user (certdrop.service.ownership): root may
not write into a service-owned state folder, and `init`/`import` hand what they made over."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from certdrop.errors import CertdropError
from certdrop.service.ownership import ROOT_ALLOWED, check_invoking_user, hand_over

NOBODY = 65534
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own files as another user")


def test_root_is_refused_on_a_service_owned_state_folder(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    check_invoking_user(state, "approve")  # root's own folder: fine
    os.chown(state, NOBODY, NOBODY)
    with pytest.raises(
        CertdropError, match=r"run this command as that user .*sudo -u \S+ certdrop approve"
    ):
        check_invoking_user(state, "approve")
    for command in ROOT_ALLOWED:
        check_invoking_user(state, command)  # init, import, check-config may run as root
    check_invoking_user(tmp_path / "nosuch", "status")  # no folder yet: nothing to protect


def test_hand_over_gives_the_state_and_the_spool_folders_but_not_what_users_dropped(
    tmp_path: Path,
) -> None:
    state, spool = tmp_path / "state", tmp_path / "spool"
    (state / "passwords").mkdir(parents=True)
    (state / "index.sqlite").write_bytes(b"")
    (state / "passwords" / "a.txt").write_bytes(b"")
    (spool / "inbox" / "server").mkdir(parents=True)
    (spool / "outbox").mkdir()
    (spool / "outbox" / "a.cer").write_bytes(b"")
    (spool / "inbox" / "user.req").write_bytes(b"")
    (spool / "inbox" / "server" / "web.req").write_bytes(b"")
    assert hand_over(state, spool) == 0  # the state folder is root's: nothing to hand over
    os.chown(state, NOBODY, NOBODY)
    changed = hand_over(state, spool)
    owned = {
        p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.stat().st_uid == NOBODY
    }
    assert owned == {
        "state",
        "state/passwords",
        "state/passwords/a.txt",
        "state/index.sqlite",
        "spool",
        "spool/inbox",
        "spool/inbox/server",
        "spool/outbox",
        "spool/outbox/a.cer",
    }
    assert changed == len(owned) - 1  # the state folder itself was already theirs
    assert hand_over(state, spool) == 0  # nothing left to change
