"""The audit log: one JSON object per line, appended to `<state>/audit.log`.

Every decision of the issue layer (issued, rejected, pending, redelivered, denied) and
every operator command (approve, deny, revoke, import, ...) becomes one line with an
ISO 8601 UTC time taken from the injected clock. The file is opened with O_APPEND
and mode 0600, and each line (or each batch of lines, see `AuditLog.batch`) goes out
in a single write(2) followed by fdatasync, so concurrent writers (the daemon and an
operator's CLI) never interleave and a line that was written survives a crash. Nothing ever rewrites or truncates the file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .clock import Clock
from .errors import CertdropError

log = logging.getLogger("certdrop.audit")

AUDIT_FILE = "audit.log"
AUDIT_MODE = 0o600


class AuditLog:
    """An append-only JSON-lines writer; an instance is a `Hooks.audit` callable."""

    def __init__(self, path: Path, clock: Clock, *, actor: str = "") -> None:
        self.path = path
        self.clock = clock
        self.actor = actor
        self._lock = threading.Lock()
        self._local = threading.local()

    @classmethod
    def in_state(cls, state: Path, clock: Clock, *, actor: str = "") -> AuditLog:
        return cls(state / AUDIT_FILE, clock, actor=actor)

    def __call__(self, event: Mapping[str, Any]) -> None:
        self.write(event)

    def write(self, event: Mapping[str, Any]) -> None:
        """Append one event. A failure is logged, never raised: auditing must not stop issuance
        after the index commit (the index journal still has the event)."""
        try:
            self._append(event)
        except (OSError, TypeError, ValueError) as exc:
            log.error("cannot append to the audit log %s: %s", self.path, exc)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Within the block, this thread's events are appended together on exit: one
        write(2) and one fdatasync for a whole batch of requests instead of one each."""
        if getattr(self._local, "lines", None) is not None:
            yield  # already batching
            return
        self._local.lines = []
        try:
            yield
        finally:
            lines, self._local.lines = self._local.lines, None
            if lines:
                try:
                    self._write_lines(b"".join(lines))
                except OSError as exc:
                    log.error("cannot append to the audit log %s: %s", self.path, exc)

    def _append(self, event: Mapping[str, Any]) -> None:
        record: dict[str, Any] = {"time": self.clock.now().isoformat(timespec="milliseconds")}
        if self.actor and "actor" not in event:
            record["actor"] = self.actor
        record.update(event)
        line = (
            json.dumps(record, default=str, ensure_ascii=False, sort_keys=False) + "\n"
        ).encode()
        pending = getattr(self._local, "lines", None)
        if pending is not None:
            pending.append(line)
            return
        self._write_lines(line)

    def _write_lines(self, line: bytes) -> None:
        with self._lock:
            fd = os.open(
                self.path,
                os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                AUDIT_MODE,
            )
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise OSError(f"{self.path} is not a regular file")
                if stat.S_IMODE(st.st_mode) != AUDIT_MODE and st.st_uid == os.geteuid():
                    os.fchmod(fd, AUDIT_MODE)
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view) :]
                os.fdatasync(fd)
            finally:
                os.close(fd)


def operator_actor() -> str:
    """Who runs this CLI: the login name (or uid) for the audit trail."""
    uid = os.getuid()
    try:
        import pwd

        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    sudo = os.environ.get("SUDO_USER")
    return f"{name} (via sudo from {sudo})" if sudo and sudo != name else name


def read_audit(path: Path) -> Iterator[dict[str, Any]]:
    """The events of an audit log (for tests and tools); a torn last line is skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return
    except OSError as exc:
        raise CertdropError(f"cannot read the audit log {path}: {exc.strerror}") from None
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            yield obj
