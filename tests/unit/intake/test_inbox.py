"""The inbox: requests moved in from another folder, and how `[watch] mode` is chosen.

watchdog reports a file moved in from an unwatched folder as a creation unless the
observer generates full events; a creation in events mode waits for a close-write
that never comes, so the request would wait for the periodic rescan.

`mode = "auto"` reads statfs(2)'s f_type of each watched folder: polling on network and
FUSE shares (changes made by other clients raise no inotify events), events elsewhere.
Network shares cannot be mounted here: the table and the decision are fed their f_type;
local filesystems are real mounts (a tmpfs, /proc, /sys).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from certdrop.config import WatchSettings
from certdrop.intake.inbox import (
    FILESYSTEMS,
    FolderFilesystem,
    Inbox,
    WorkQueue,
    choose_watch_mode,
    decide_watch_mode,
    filesystem_for,
    probe_folders,
    statfs_type,
)
from conftest import DaemonThread, make_env, openssl_csr, openssl_verify, wait_result
from mounts import tmpfs_mounted


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


# --- the statfs table -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("f_type", "name", "mode"),
    [
        (0x6969, "nfs", "polling"),
        (0xFF534D42, "cifs", "polling"),
        (0xFE534D42, "smb2", "polling"),
        (0x517B, "smb", "polling"),
        (0x65735546, "fuse", "polling"),  # sshfs, rclone, s3fs
        (0x01021997, "9p", "polling"),
        (0x00C36400, "ceph", "polling"),
        (0xEF53, "ext2/ext3/ext4", "events"),
        (0x58465342, "xfs", "events"),
        (0x9123683E, "btrfs", "events"),
        (0x01021994, "tmpfs", "events"),
        (0x794C7630, "overlayfs", "events"),
        (0x2FC12FC1, "zfs", "events"),
        (0x9FA0, "proc", "events"),
        (0x62656572, "sysfs", "events"),
    ],
)
def test_the_statfs_table_names_each_type_and_auto_polls_only_on_shares(
    f_type: int, name: str, mode: str
) -> None:
    fs = filesystem_for(f_type)
    assert (fs.name, fs.known, fs.shared) == (name, True, mode == "polling")
    inbox = FolderFilesystem("inbox", Path("/srv/spool/inbox"), Path("/srv"), f_type)
    choice = decide_watch_mode(WatchSettings(mode="auto"), [inbox])
    assert (choice.mode, choice.configured, choice.warning) == (mode, "auto", False)
    assert choice.why.startswith(f"inbox on {name} (/srv): ")


def test_the_table_reads_a_sign_extended_f_type_and_names_an_unknown_one() -> None:
    # f_type is a signed long on most ABIs: CIFS's 0xFF534D42 can come as a negative number
    assert filesystem_for(0xFF534D42 - (1 << 32)).name == "cifs"
    assert filesystem_for(0xFFFFFFFF_FF534D42).name == "cifs"
    unknown = filesystem_for(0x12345678)
    assert (unknown.known, unknown.shared) == (False, False)
    assert "unknown" in unknown.name and "0x12345678" in unknown.name
    assert all(fs.known for fs in FILESYSTEMS.values())
    names = [fs.name for fs in FILESYSTEMS.values()]
    assert len(names) == len(set(names))


# --- the decision, fed with f_type (network shares cannot be mounted here) ----------------------------
SHARE = FolderFilesystem("inbox", Path("/mnt/share/spool/inbox"), Path("/mnt/share"), 0x6969)
LOCAL = FolderFilesystem("inbox", Path("/srv/spool/inbox"), Path("/"), 0xEF53)


def test_auto_polls_on_a_network_share_and_says_why() -> None:
    choice = decide_watch_mode(WatchSettings(mode="auto", poll_seconds=2.0), [SHARE])
    assert choice.mode == "polling" and not choice.warning
    assert choice.why == "inbox on nfs (/mnt/share): polling every 2 s"
    assert choice.as_json() == {
        "mode": "polling",
        "configured": "auto",
        "why": "inbox on nfs (/mnt/share): polling every 2 s",
        "filesystems": [
            {
                "folder": "/mnt/share/spool/inbox",
                "type": "nfs",
                "mount": "/mnt/share",
                "shared": True,
            }
        ],
    }


def test_auto_polls_when_only_a_profile_folder_is_on_a_share() -> None:
    server = FolderFilesystem(
        "profile folder server", Path("/srv/spool/inbox/server"), Path("/mnt/dfs"), 0xFE534D42
    )
    choice = decide_watch_mode(WatchSettings(mode="auto", poll_seconds=0.5), [LOCAL, server])
    assert choice.mode == "polling"
    assert choice.why == "profile folder server on smb2 (/mnt/dfs): polling every 0.5 s"
    local = decide_watch_mode(WatchSettings(mode="auto"), [LOCAL])
    assert (local.mode, local.why) == ("events", "inbox on ext2/ext3/ext4 (/): events (inotify)")


def test_explicit_modes_override_auto_and_events_on_a_share_is_a_warning() -> None:
    polling = decide_watch_mode(WatchSettings(mode="polling"), [LOCAL])
    assert (polling.mode, polling.configured, polling.warning) == ("polling", "polling", False)
    assert polling.why == "polling every 2 s, as configured; inbox on ext2/ext3/ext4 (/)"
    events = decide_watch_mode(WatchSettings(mode="events"), [LOCAL])
    assert (events.mode, events.configured, events.warning) == ("events", "events", False)
    forced = decide_watch_mode(WatchSettings(mode="events", rescan_seconds=60), [SHARE])
    assert (forced.mode, forced.configured, forced.warning) == ("events", "events", True)
    assert forced.why.startswith("events (inotify), as configured, although the inbox is on nfs")
    assert "changes made by other clients" in forced.why and "every 60 s" in forced.why


def test_an_unknown_type_or_a_failing_statfs_means_events_and_says_so() -> None:
    odd = FolderFilesystem("inbox", Path("/x/inbox"), Path("/x"), 0x12345678)
    choice = decide_watch_mode(WatchSettings(mode="auto"), [odd])
    assert (choice.mode, choice.warning) == ("events", True)
    assert "unknown filesystem type 0x12345678" in choice.why
    assert 'set [watch] mode = "polling"' in choice.why
    failed = FolderFilesystem(
        "inbox", Path("/x/inbox"), Path("/x/inbox"), None, "statfs /x/inbox: Permission denied"
    )
    choice = decide_watch_mode(WatchSettings(mode="auto"), [failed])
    assert (choice.mode, choice.warning) == ("events", True)
    assert "statfs /x/inbox: Permission denied" in choice.why
    assert choice.as_json()["filesystems"][0]["error"] == "statfs /x/inbox: Permission denied"


def test_without_inotify_auto_polls() -> None:
    choice = decide_watch_mode(WatchSettings(mode="auto"), [LOCAL], inotify=False)
    assert (choice.mode, choice.why) == (
        "polling",
        "inotify is not available here: polling every 2 s",
    )


# --- real filesystems -------------------------------------------------------------------------------
def test_a_real_tmpfs_mount_means_events(tmp_path: Path) -> None:
    with tmpfs_mounted(tmp_path / "share") as mnt:
        inbox = mnt / "spool" / "inbox"
        inbox.mkdir(parents=True)
        assert statfs_type(inbox) == 0x01021994
        choice = choose_watch_mode(WatchSettings(mode="auto"), [(inbox, "client")])
        assert (choice.mode, choice.configured, choice.warning) == ("events", "auto", False)
        assert choice.why == f"inbox on tmpfs ({mnt}): events (inotify)"
        assert [(p.folder, p.mount) for p in choice.folders] == [(inbox, mnt)]


@pytest.mark.parametrize(("folder", "name"), [("/proc", "proc"), ("/sys", "sysfs")])
def test_other_real_filesystems_are_named(folder: str, name: str) -> None:
    if not os.path.ismount(folder):
        pytest.skip(f"{folder} is not mounted here")
    [probe] = probe_folders([(Path(folder), "client")])
    assert probe.filesystem is not None and probe.filesystem.name == name
    assert probe.mount == Path(folder) and probe.error is None


def test_a_profile_folder_on_another_mount_is_probed_too(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    (inbox / "people").mkdir(parents=True)  # a plain profile folder: same filesystem
    with tmpfs_mounted(inbox / "server") as server:
        probes = probe_folders(
            [
                (inbox, "client"),
                (inbox / "people", "people"),
                (server, "server"),
                (inbox / "x", "x"),
            ]
        )
        assert [p.label for p in probes] == ["inbox", "profile folder server"]
        assert probes[1].filesystem is not None and probes[1].filesystem.name == "tmpfs"
        assert probes[1].mount == server
        inbox_fs = probes[0].filesystem
        if inbox_fs is None or inbox_fs.shared:
            pytest.skip(f"the temp folder is on {probes[0].describe()}")
        choice = choose_watch_mode(
            WatchSettings(mode="auto"), [(inbox, "client"), (server, "server")]
        )
        assert choice.mode == "events"
        assert choice.why.endswith(f", profile folder server on tmpfs ({server}): events (inotify)")


def test_an_inbox_not_made_yet_is_judged_by_the_folder_it_will_be_made_in(tmp_path: Path) -> None:
    with tmpfs_mounted(tmp_path / "share") as mnt:
        [probe] = probe_folders([(mnt / "spool" / "inbox", "client")])
        assert probe.filesystem is not None and probe.filesystem.name == "tmpfs"
        assert (probe.folder, probe.mount) == (mnt / "spool" / "inbox", mnt)


def test_a_failing_statfs_means_events_with_the_reason_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "spool").write_text("a file where the spool folder should be\n")
    root = tmp_path / "spool" / "inbox"
    with pytest.raises(NotADirectoryError):
        statfs_type(root)
    inbox = Inbox(root, ["client"], "client", WatchSettings(mode="auto"), WorkQueue())
    assert (inbox.mode, inbox.choice.warning) == ("events", True)
    assert f"statfs {root}: Not a directory" in inbox.choice.why
    with caplog.at_level(logging.INFO, logger="certdrop.inbox"):
        inbox.start()
        inbox.stop()
    [record] = [r for r in caplog.records if r.getMessage().startswith("watching")]
    assert record.levelno == logging.WARNING
    assert "Not a directory" in record.getMessage() and "(mode auto)" in record.getMessage()


def test_the_inbox_logs_its_choice_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with tmpfs_mounted(tmp_path / "share") as mnt:
        (mnt / "inbox").mkdir()
        for mode, expected in [
            ("auto", f"inbox on tmpfs ({mnt}): events (inotify) (mode auto)"),
            ("polling", f"polling every 2 s, as configured; inbox on tmpfs ({mnt}) (mode polling)"),
        ]:
            caplog.clear()
            settings = WatchSettings(mode=mode)  # type: ignore[arg-type]
            inbox = Inbox(mnt / "inbox", ["client"], "client", settings, WorkQueue())
            with caplog.at_level(logging.INFO, logger="certdrop.inbox"):
                inbox.start()
                inbox.stop()
            [record] = [r for r in caplog.records if r.getMessage().startswith("watching")]
            assert record.levelno == logging.INFO
            assert record.getMessage() == f"watching {mnt / 'inbox'}: {expected}"
