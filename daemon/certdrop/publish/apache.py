"""Apache httpd's client-certificate files, kept current.

`[apache] ca_file` holds the CA and every CA above it, merged; `crl_file` holds this
CA's CRL and those of the CAs above it (from `<state>/chain-crls/`). Both are written
atomically and only when their content changes; then the configtest command runs,
then the graceful-reload command. A failing configtest puts the previous files back
and Apache is not reloaded. In the daemon this runs debounced in a thread of its own.
The last outcome is kept in the index's meta table for `certdrop status`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..authority.ca import CertificateAuthority
from ..clock import Clock
from ..config import ApacheSettings
from ..errors import PublishError
from ..executor import run_command
from ..fsutil import atomic_write
from ..index.store import Store
from .crl import FILE_MODE, CrlPublisher
from .meta import read_meta, write_meta
from .upstream import read_chain_crls

log = logging.getLogger("certdrop.publish")


# meta keys (the index's key/value table)
META_APACHE = "publish.apache"  # the last outcome (JSON), for `certdrop status`
META_APPLIED = "publish.apache_applied"  # digest of the files Apache was last reloaded with


@dataclass(frozen=True)
class ApacheOutcome:
    ok: bool
    action: str  # unchanged, reloaded, written, configtest-failed, reload-failed, error
    detail: str = ""
    warnings: tuple[str, ...] = ()

    def text(self) -> str:
        notes = "; ".join(x for x in (self.detail, *self.warnings) if x)
        return f"{self.action}" + (f" ({notes})" if notes else "")


class Debouncer:
    """Runs `action` once, `delay` seconds after the last of a burst of triggers.

    A steady stream of triggers cannot postpone the action for longer than
    `max_wait` (5 x delay). The action runs in a thread of its own; `flush()` runs a
    pending action right away in the caller's thread, `close()` flushes and stops.
    """

    def __init__(self, delay: float, action: Callable[[], Any], name: str) -> None:
        self.delay = delay
        self.max_wait = max(delay * 5, delay)
        self._action = action
        self._cond = threading.Condition()
        self._due: float | None = None
        self._first: float | None = None
        self._closed = False
        self._running = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    @property
    def pending(self) -> bool:
        with self._cond:
            return self._due is not None

    def trigger(self) -> None:
        with self._cond:
            now = time.monotonic()
            if self._first is None:
                self._first = now
            self._due = min(now + self.delay, self._first + self.max_wait)
            self._cond.notify_all()

    def _take(self) -> bool:
        """Claim a pending action (with the lock held)."""
        if self._due is None:
            return False
        self._due = self._first = None
        return True

    def _run(self) -> None:
        """Run the action; the caller holds `_running`."""
        try:
            self._action()
        except Exception:
            log.exception("%s failed", self._thread.name)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (self._due is None or self._due > time.monotonic()):
                    timeout = None if self._due is None else self._due - time.monotonic()
                    self._cond.wait(timeout)
                if self._closed:
                    return
                self._take()
                self._running.acquire()  # before the claim becomes visible to flush()
            try:
                self._run()
            finally:
                self._running.release()

    def flush(self) -> bool:
        """Run a pending action now (in this thread), or wait for the one in progress.

        True if there was one pending."""
        with self._cond:
            took = self._take()
        with self._running:
            if took:
                self._run()
        return took

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=5)
        self.flush()


class ApachePublisher:
    """Apache's CA and CRL files for one CA (see the module docstring)."""

    def __init__(
        self,
        settings: ApacheSettings,
        crl: CrlPublisher,
        ca: CertificateAuthority,
        store: Store,
        clock: Clock,
        chain_crl_dir: Path,
        *,
        on_failure: Callable[[str, str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.crl = crl
        self.ca = ca
        self.store = store
        self.clock = clock
        self.chain_crl_dir = chain_crl_dir
        # told about a failed publication (subject, body: the service mails the admin)
        self.on_failure = on_failure
        self._lock = threading.Lock()
        self._debouncer: Debouncer | None = None

    # --- life cycle -----------------------------------------------------------------------------------
    def start_background(self) -> None:
        """Debounce publication in a thread (the daemon); else it is immediate."""
        if self._debouncer is None:
            self._debouncer = Debouncer(
                self.settings.debounce_seconds, self.publish, "certdrop-apache"
            )

    @property
    def debounced(self) -> bool:
        return self._debouncer is not None

    def close(self) -> None:
        """Stop the background thread; a publication still waiting is done now."""
        if self._debouncer is not None:
            self._debouncer.close()
            self._debouncer = None

    def changed(self) -> None:
        """The CRL (or CA) changed: publish the files, debounced in the daemon."""
        if self._debouncer is not None:
            self._debouncer.trigger()
        else:
            self.publish()

    def flush(self) -> None:
        """Run a pending (debounced) publication now."""
        if self._debouncer is not None:
            self._debouncer.flush()

    def check(self) -> None:
        """The periodic job's Apache part: publish when the files are out of date.
        Never raises."""
        try:
            if self.out_of_date():
                self.changed()
        except Exception:
            log.exception("Apache file check failed")

    # --- the files' contents ----------------------------------------------------------------------
    def chain_crls(self) -> tuple[list[x509.CertificateRevocationList], list[str]]:
        """The CRLs of the CAs above this one (from <state>/chain-crls/), and warnings."""
        found, warnings = read_chain_crls(self.chain_crl_dir, self.ca.chain, self.clock.now())
        return [u.crl for u in found if u.crl is not None], warnings

    def contents(self) -> tuple[bytes, bytes, list[str]]:
        """What ca_file and crl_file must contain now (PEM), and warnings."""
        pem = serialization.Encoding.PEM
        ca_bundle = b"".join(c.public_bytes(pem) for c in self.ca.bundle_certificates())
        own = self.crl.published_crl()
        if own is None:
            raise PublishError(f"there is no CRL in {self.crl.der_path} yet; run 'certdrop crl'")
        upstream, warnings = self.chain_crls()
        crls = b"".join(c.public_bytes(pem) for c in [own, *upstream])
        return ca_bundle, crls, warnings

    def out_of_date(self) -> bool:
        """The files differ from what they should be, or were never reloaded."""
        try:
            wanted = self.contents()[:2]
        except PublishError:
            return False
        current = [_read_or_none(p) for p in (self.settings.ca_file, self.settings.crl_file)]
        if current != list(wanted):
            return True
        return read_meta(self.store, META_APPLIED) != _digest(wanted)

    # --- publication ------------------------------------------------------------------------------
    def publish(self) -> ApacheOutcome:
        """Write the files if they changed, configtest, reload. Never raises."""
        with self._lock:
            try:
                outcome = self._publish()
            except Exception as exc:
                log.exception("publishing the Apache files failed")
                outcome = ApacheOutcome(False, "error", str(exc))
            self._record(outcome)
            return outcome

    def _publish(self) -> ApacheOutcome:
        try:
            ca_bundle, crls, warnings = self.contents()
        except PublishError as exc:
            return ApacheOutcome(False, "error", str(exc))
        for w in warnings:
            log.warning("Apache CRL file: %s", w)
        wanted = {self.settings.ca_file: ca_bundle, self.settings.crl_file: crls}
        digest = _digest((ca_bundle, crls))
        previous = {p: _read_or_none(p) for p in wanted}
        changed = [p for p, data in wanted.items() if previous[p] != data]
        notes = tuple(warnings)
        if not changed and read_meta(self.store, META_APPLIED) == digest:
            return ApacheOutcome(True, "unchanged", warnings=notes)
        try:
            for path in changed:
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
                atomic_write(path, wanted[path], FILE_MODE)
        except OSError as exc:
            _restore(previous, changed)
            return ApacheOutcome(
                False, "error", f"cannot write {exc.filename}: {exc.strerror}", notes
            )
        timeout = self.settings.command_timeout_seconds
        if self.settings.configtest_command:
            test = run_command(self.settings.configtest_command, timeout)
            if not test.ok:
                _restore(previous, changed)
                log.error(
                    "Apache configtest failed; the previous files are back and Apache was not "
                    "reloaded: %s",
                    test.summary(),
                )
                return ApacheOutcome(
                    False,
                    "configtest-failed",
                    f"{test.summary()}; previous files restored, Apache not reloaded",
                    notes,
                )
        if not self.settings.reload_command:
            write_meta(self.store, META_APPLIED, digest)
            return ApacheOutcome(
                True, "written", "no reload_command: the reload is left to a path unit", notes
            )
        res = run_command(self.settings.reload_command, timeout)
        if not res.ok:
            log.error("Apache reload failed (retried at the next check): %s", res.summary())
            return ApacheOutcome(False, "reload-failed", res.summary(), notes)
        write_meta(self.store, META_APPLIED, digest)
        log.info(
            "Apache files %s; configtest passed, Apache reloaded gracefully",
            "updated" if changed else "unchanged",
        )
        return ApacheOutcome(True, "reloaded", warnings=notes)

    def _record(self, outcome: ApacheOutcome) -> None:
        doc: dict[str, Any] = {
            "at": self.clock.now().isoformat(),
            "ok": outcome.ok,
            "action": outcome.action,
            "detail": outcome.detail,
            "warnings": list(outcome.warnings),
        }
        if outcome.action == "unchanged":
            prev = read_meta(self.store, META_APACHE)
            if prev:
                with contextlib.suppress(ValueError):
                    old = json.loads(prev)
                    if old.get("ok"):
                        # keep the last real publication, with today's warnings
                        doc = {**old, "warnings": list(outcome.warnings)}
        write_meta(self.store, META_APACHE, json.dumps(doc))
        if not outcome.ok and self.on_failure is not None:
            try:
                self.on_failure(
                    f"Apache publication failed: {outcome.action}",
                    "certdrop could not bring Apache's client-certificate files up to date.\n\n"
                    f"What happened: {outcome.action}\n{outcome.detail}\n\n"
                    "The previous files were kept and Apache was not reloaded, so it keeps\n"
                    "serving with them. Fix the problem; certdrop tries again at its next check\n"
                    "(see 'certdrop status').\n",
                )
            except Exception:  # an alert must never break publication
                log.exception("could not queue the alert about the failed publication")

    def last_outcome(self) -> ApacheOutcome | None:
        raw = read_meta(self.store, META_APACHE)
        if not raw:
            return None
        try:
            doc = json.loads(raw)
        except ValueError:
            return None
        return ApacheOutcome(bool(doc.get("ok")), str(doc.get("action")), str(doc.get("detail")))


def _restore(previous: dict[Path, bytes | None], changed: list[Path]) -> None:
    """Put back what `changed` held before (remove what did not exist)."""
    for path in changed:
        old = previous[path]
        try:
            if old is None:
                path.unlink(missing_ok=True)
            else:
                atomic_write(path, old, FILE_MODE)
        except OSError as exc:
            log.error("could not restore %s: %s", path, exc)


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _digest(parts: Sequence[bytes]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "big"))
        h.update(p)
    return h.hexdigest()
