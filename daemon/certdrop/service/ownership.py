"""Root at the keyboard, certdrop as a service user: keep the state folder the service's.

On a systemd install the daemon runs as the user `certdrop` and owns the state folder
(CA key, index, CRLs). An operator who runs `certdrop approve` as root would leave
root-owned files there (SQLite's -wal/-shm, passwords/NAME.txt, new folders) that the
daemon can then no longer write. So, as root:

* every command but `init`, `import` and `check-config` refuses to touch a state
  folder that belongs to another user and says how to run it as that user;
* `init`, `import`, `root-crl`, `backup` and `restore` (which may need root to read the
  old CA's files or removable media) hand what they created over to the owner of the
  state folder, as tmpfiles.d made it.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

from ..errors import CertdropError

# the ceremonies read or write removable media that may be root's, and hand over after
ROOT_ALLOWED = frozenset({"init", "import", "check-config", "root-crl", "backup", "restore"})


def _owner(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_uid, st.st_gid


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def check_invoking_user(state: Path, command: str) -> None:
    """Refuse root on a service-owned state folder (see the module docstring)."""
    if os.geteuid() != 0 or command in ROOT_ALLOWED:
        return
    owner = _owner(state)
    if owner is None or owner[0] == 0:
        return
    name = _user_name(owner[0])
    raise CertdropError(
        f"{state} belongs to the user {name}, which the certdrop service runs as; run this "
        f"command as that user so that the files it writes stay theirs: "
        f"sudo -u {name} certdrop {command} ..."
    )


def hand_over(state: Path, spool: Path) -> int:
    """After `init` as root: give the state folder's contents, and the spool's folders, to
    the owner of the state folder. Files in inbox/ (users' drops) are left alone.
    Returns the number of paths changed."""
    if os.geteuid() != 0:
        return 0
    owner = _owner(state)
    if owner is None or owner[0] == 0:
        return 0
    uid, gid = owner
    changed = 0
    for dirpath, dirnames, filenames in os.walk(state):
        for n in dirnames + filenames:
            changed += _chown(Path(dirpath) / n, uid, gid)
    inbox = spool / "inbox"
    for dirpath, dirnames, filenames in os.walk(spool):
        here = Path(dirpath)
        for n in dirnames:
            changed += _chown(here / n, uid, gid)
        if here == inbox:
            dirnames[:] = []  # profile folders: themselves, not what users dropped in them
            continue
        for n in filenames:
            changed += _chown(here / n, uid, gid)
    changed += _chown(spool, uid, gid)
    return changed


def _chown(path: Path, uid: int, gid: int) -> int:
    st = path.lstat()
    if (st.st_uid, st.st_gid) == (uid, gid):
        return 0
    os.chown(path, uid, gid, follow_symlinks=False)
    return 1
