"""Revocation, the CRL, and Apache httpd's client-certificate files.

The `Publisher` is given its dependencies (the [crl] and [apache] settings, the state
folder, the index, the CA, the clock, the linter) and does three things:

* **CRL**: builds a CRL of every revoked certificate (number from the index, strictly
  increasing across restarts and clock jumps), lints it, and publishes it atomically
  as `<state>/crl.pem` and `<state>/crl.der`. A CRL is made on every revocation and
  whenever the published one is missing, not ours, out of date with the index, not yet
  valid (the clock went back) or within `refresh_before_days` of its nextUpdate.
* **Apache files**: `[apache] ca_file` (the CA and every CA above it, merged) and
  `crl_file` (this CA's CRL and those of the CAs above it, from `<state>/chain-crls/`),
  written atomically and only when their content changes; then the configtest command,
  then the graceful-reload command. A failing configtest puts the previous files back
  and Apache is not reloaded. In the daemon this runs debounced in a thread of its own.
* **Revocation**: `revoke(ref, reason)` by serial or request name.

Results (the last publication, the last error) are kept in the index's meta table so
that `certdrop status`, another process, can report them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..authority.ca import CertificateAuthority, CrlEntry
from ..authority.der import pem_armor
from ..authority.lint import Linter
from ..authority.names import subject_text
from ..authority.reasons import parse_reason
from ..clock import Clock
from ..config import ApacheSettings, CRLSettings, Profile, Settings
from ..errors import CertdropError, LintError, NotFoundError, PublishError
from ..executor import CommandResult, run_command
from ..fsutil import atomic_write
from ..index.store import CertRecord, Store

log = logging.getLogger("certdrop.publish")

CRL_PEM = "crl.pem"
CRL_DER = "crl.der"
CHAIN_CRLS = (
    "chain-crls"  # CRLs of the CAs above an adopted intermediate, put there by the operator
)
FILE_MODE = 0o644
CRL_CHECK_SECONDS = 300.0  # how often the daemon checks the CRL and the Apache files
CLOCK_SKEW = dt.timedelta(minutes=5)  # a CRL dated further ahead than this is remade

# meta keys (the index's key/value table)
META_CRL_ERROR = "publish.crl_error"
META_CRL_NEXT_UPDATE = "crl_next_update"  # read by the expiry sweep (CRL close to expiry)
META_APACHE = "publish.apache"
META_APPLIED = "publish.apache_applied"

# The reasons `certdrop revoke --reason` accepts (RFC 5280, 5.3.1). certificateHold is
# left out on purpose: certdrop has no way to take a certificate off hold again, and
# aACompromise is about attribute certificates, which certdrop does not issue.
CommandRunner = Callable[[Sequence[str], float], CommandResult]


def _iso(when: dt.datetime | None) -> str | None:
    return when.isoformat() if when is not None else None


@dataclass(frozen=True)
class CrlFacts:
    number: int
    this_update: dt.datetime
    next_update: dt.datetime
    revoked: int

    @classmethod
    def of(cls, crl: x509.CertificateRevocationList) -> CrlFacts:
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        next_update = crl.next_update_utc
        assert next_update is not None
        return cls(int(number), crl.last_update_utc, next_update, len(crl))


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


class Publisher:
    """CRL and Apache publication for one CA (see the module docstring)."""

    def __init__(
        self,
        *,
        crl: CRLSettings,
        apache: ApacheSettings,
        state: Path,
        store: Store,
        ca: CertificateAuthority,
        clock: Clock,
        linter: Linter | None,
        runner: CommandRunner = run_command,
    ) -> None:
        self.crl_settings = crl
        self.apache = apache
        self.state = state
        self.store = store
        self.ca = ca
        self.clock = clock
        self.linter = linter
        self.runner = runner
        # told about a failed publication (the service sends the admin a mail)
        self.on_failure: Callable[[str, str], None] | None = None
        self._crl_lock = threading.RLock()
        self._apache_lock = threading.Lock()
        self._debouncer: Debouncer | None = None

    # --- locations --------------------------------------------------------------------------------
    @property
    def crl_pem_path(self) -> Path:
        return self.state / CRL_PEM

    @property
    def crl_der_path(self) -> Path:
        return self.state / CRL_DER

    @property
    def chain_crl_dir(self) -> Path:
        return self.state / CHAIN_CRLS

    # --- life cycle -----------------------------------------------------------------------------------
    def start_background(self) -> None:
        """Debounce Apache publication in a thread (the daemon); else it is immediate."""
        if self._debouncer is None and self.apache.enabled:
            self._debouncer = Debouncer(
                self.apache.debounce_seconds, self.publish_apache, "certdrop-apache"
            )

    def close(self) -> None:
        """Stop the background thread; a publication still waiting is done now."""
        if self._debouncer is not None:
            self._debouncer.close()
            self._debouncer = None

    # --- the CRL ------------------------------------------------------------------------------------
    def published_crl(self) -> x509.CertificateRevocationList | None:
        """The CRL in <state>/crl.der if it is one of this CA's, else None."""
        try:
            der = self.crl_der_path.read_bytes()
            crl = x509.load_der_x509_crl(der)
        except (OSError, ValueError):
            return None
        if crl.issuer != self.ca.subject or not self.ca.signed_this_crl(der):
            return None
        try:
            CrlFacts.of(crl)
        except (x509.ExtensionNotFound, AssertionError):
            return None
        return crl

    def crl_problem(self, now: dt.datetime) -> str | None:
        """Why a new CRL must be made now, or None if the published one is good."""
        crl = self.published_crl()
        if crl is None:
            if self.crl_der_path.exists():
                return f"{self.crl_der_path} is not a valid CRL of this CA"
            return "no CRL has been published yet"
        facts = CrlFacts.of(crl)
        refresh_at = facts.next_update - dt.timedelta(days=self.crl_settings.refresh_before_days)
        if now >= facts.next_update:
            return f"CRL {facts.number} expired at {facts.next_update:%Y-%m-%d %H:%M} UTC"
        if now >= refresh_at:
            return (
                f"CRL {facts.number} reaches its nextUpdate {facts.next_update:%Y-%m-%d %H:%M} UTC "
                f"within {self.crl_settings.refresh_before_days:g} days"
            )
        if facts.this_update > now + CLOCK_SKEW:
            return (
                f"CRL {facts.number} is dated {facts.this_update:%Y-%m-%d %H:%M} UTC, in the future "
                "(the clock went back)"
            )
        try:
            pem = x509.load_pem_x509_crl(self.crl_pem_path.read_bytes())
        except (OSError, ValueError):
            return f"{self.crl_pem_path} is missing or unreadable"
        if pem.public_bytes(serialization.Encoding.DER) != crl.public_bytes(
            serialization.Encoding.DER
        ):
            return f"{self.crl_pem_path} and {self.crl_der_path} differ"
        listed = {r.serial_number for r in crl}
        with self.store.begin() as conn:
            revoked = {serial for serial, _at, _reason in self.store.revoked_entries(conn)}
        if listed != revoked:
            return "the CRL does not list exactly the revoked certificates of the index"
        return None

    def regenerate_crl(self, why: str = "requested") -> CrlFacts:
        """Make, lint and publish a new CRL; then bring the Apache files up to date."""
        with self._crl_lock:
            try:
                facts = self._regenerate(why)
            except (CertdropError, OSError) as exc:
                msg = f"{self.clock.now():%Y-%m-%d %H:%M} UTC: {exc}"
                log.error("the CRL could not be published: %s", exc)
                self._set_meta(META_CRL_ERROR, msg)
                if isinstance(exc, OSError):
                    raise PublishError(f"the CRL could not be written: {exc}") from None
                raise
            self._set_meta(META_CRL_ERROR, "")
        self.apache_changed()
        return facts

    def _regenerate(self, why: str) -> CrlFacts:
        now = self.clock.now()
        previous = self.published_crl()
        with self.store.begin() as conn:
            number = self.store.next_crl_number(conn)
            if previous is not None:
                # an index restored from an old backup must not make the number go back
                published = CrlFacts.of(previous).number
                if number <= published:
                    number = published + 1
                    self.store.set_meta(conn, "crl_number", str(number))
            entries = list(self.store.revoked_entries(conn))
        this_update = now
        next_update = now + dt.timedelta(days=self.crl_settings.validity_days)
        der = self.ca.build_crl_der(entries, number, this_update, next_update)
        if self.linter is not None:
            lint_der = der
            if len(entries) > LINT_FULL_CRL_MAX:
                # pkilint takes ~0.3 ms per entry: a large CRL is linted as a CRL of the
                # same frame (same issuer, number, dates, extensions) holding its first
                # and last entries and one entry of every other shape (serial length,
                # time type, reason): every kind of entry the real one has, at a
                # nearly constant cost
                lint_der = self.ca.build_crl_der(
                    _lint_sample(entries), number, this_update, next_update
                )
            findings = self.linter.crl(lint_der)
            if findings:
                raise LintError(
                    f"CRL {number} would not be standards-compliant: " + "; ".join(findings)
                )
        # DER first, PEM last; both are complete or absent (atomic renames)
        atomic_write(self.crl_der_path, der, FILE_MODE)
        atomic_write(self.crl_pem_path, pem_armor("X509 CRL", der), FILE_MODE)
        self._set_meta(META_CRL_NEXT_UPDATE, next_update.isoformat())
        facts = CrlFacts.of(x509.load_der_x509_crl(der))
        log.info(
            "published CRL %d (%d revoked, next update %s UTC): %s",
            facts.number,
            facts.revoked,
            f"{facts.next_update:%Y-%m-%d %H:%M}",
            why,
        )
        return facts

    def refresh_crl(self) -> CrlFacts | None:
        """Make a new CRL if the published one needs it (see `crl_problem`)."""
        with self._crl_lock:
            problem = self.crl_problem(self.clock.now())
            if problem is None:
                return None
            return self.regenerate_crl(problem)

    def check(self) -> None:
        """The periodic job: a fresh CRL, and Apache files matching it. Never raises."""
        try:
            self.refresh_crl()
        except CertdropError as exc:
            log.error("CRL check: %s", exc)
        except Exception:
            log.exception("CRL check failed")
        if self.apache.enabled:
            try:
                if self.apache_out_of_date():
                    self.apache_changed()
            except Exception:
                log.exception("Apache file check failed")

    # --- revocation ---------------------------------------------------------------------------------
    def revoke(self, ref: str, reason: str = "unspecified") -> str:
        """Revoke the certificate `ref` names; publish the CRL. Returns a report line."""
        reason = parse_reason(reason)
        now = self.clock.now()
        with self.store.begin() as conn:
            rec = choose_for_revocation(self.store.find(conn, ref.strip()), ref, now)
            self.store.revoke(conn, rec.serial, reason, now)
            self.store.log(
                conn,
                now,
                rec.request_name or rec.serial,
                "revoked",
                profile=rec.profile,
                serial=rec.serial,
                detail=reason,
            )
        log.warning("revoked %s (%s), reason %s", rec.serial, rec.subject, reason)
        line = f"revoked {rec.serial} ({rec.subject}), reason {reason}"
        try:
            facts = self.regenerate_crl(f"{rec.serial} revoked")
        except CertdropError as exc:
            return (
                f"{line}; but the CRL could not be published ({exc}); the daemon retries, "
                "or run 'certdrop crl'"
            )
        line += f"; CRL {facts.number} published in {self.crl_pem_path}"
        return line + self._apache_note()

    def _apache_note(self) -> str:
        if not self.apache.enabled:
            return ""
        if self._debouncer is not None:
            return f"; Apache files follow within {self.apache.debounce_seconds:g}s"
        outcome = self.last_apache_outcome()
        if outcome is None:
            return ""
        if not outcome.ok:
            return f"; but Apache was NOT updated: {outcome.text()}; see 'certdrop status'"
        return f"; Apache: {outcome.text()}"

    # --- Apache ----------------------------------------------------------------------------------------
    def apache_changed(self) -> None:
        """The CRL (or CA) changed: publish the Apache files, debounced in the daemon."""
        if not self.apache.enabled:
            return
        if self._debouncer is not None:
            self._debouncer.trigger()
        else:
            self.publish_apache()

    def flush(self) -> None:
        """Run a pending (debounced) Apache publication now."""
        if self._debouncer is not None:
            self._debouncer.flush()

    def chain_crls(self) -> tuple[list[x509.CertificateRevocationList], list[str]]:
        """The CRLs of the CAs above this one (from <state>/chain-crls/), and warnings."""
        warnings: list[str] = []
        found: dict[bytes, x509.CertificateRevocationList] = {}
        if not self.ca.chain:
            return [], []
        files = sorted(self.chain_crl_dir.glob("*")) if self.chain_crl_dir.is_dir() else []
        candidates: list[tuple[Path, x509.CertificateRevocationList]] = []
        for path in files:
            if path.name.startswith(".") or not path.is_file():
                continue
            try:
                data = path.read_bytes()
                if b"-----BEGIN" in data:
                    blocks = re.findall(
                        rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", data, re.S
                    )
                    candidates += [(path, x509.load_pem_x509_crl(b)) for b in blocks]
                else:
                    candidates.append((path, x509.load_der_x509_crl(data)))
            except (OSError, ValueError) as exc:
                warnings.append(f"{path} is not a CRL ({exc})")
        now = self.clock.now()
        for ca_cert in self.ca.chain:
            key = ca_cert.subject.public_bytes()
            best: x509.CertificateRevocationList | None = None
            for path, crl in candidates:
                if crl.issuer != ca_cert.subject:
                    continue
                if not crl.is_signature_valid(ca_cert.public_key()):  # type: ignore[arg-type]
                    warnings.append(f"{path}: CRL not signed by {subject_text(ca_cert.subject)}")
                    continue
                if best is None or crl.last_update_utc > best.last_update_utc:
                    best = crl
            if best is None:
                warnings.append(
                    f"no CRL of {subject_text(ca_cert.subject)} in {self.chain_crl_dir}: with "
                    "SSLCARevocationCheck chain, Apache refuses every client until there is one"
                )
                continue
            if best.next_update_utc is not None and best.next_update_utc <= now:
                warnings.append(
                    f"the CRL of {subject_text(ca_cert.subject)} expired at "
                    f"{best.next_update_utc:%Y-%m-%d %H:%M} UTC: Apache refuses every client; "
                    f"put a fresh one in {self.chain_crl_dir}"
                )
            found[key] = best
        return list(found.values()), warnings

    def apache_contents(self) -> tuple[bytes, bytes, list[str]]:
        """What ca_file and crl_file must contain now (PEM), and warnings."""
        pem = serialization.Encoding.PEM
        ca_bundle = b"".join(c.public_bytes(pem) for c in self.ca.bundle_certificates())
        own = self.published_crl()
        if own is None:
            raise PublishError(f"there is no CRL in {self.crl_der_path} yet; run 'certdrop crl'")
        upstream, warnings = self.chain_crls()
        crls = b"".join(c.public_bytes(pem) for c in [own, *upstream])
        return ca_bundle, crls, warnings

    def _targets(self) -> list[Path]:
        return [self.apache.ca_file, self.apache.crl_file]

    def apache_out_of_date(self) -> bool:
        """The Apache files differ from what they should be, or were never reloaded."""
        try:
            wanted = self.apache_contents()[:2]
        except PublishError:
            return False
        current = [_read_or_none(p) for p in self._targets()]
        if current != list(wanted):
            return True
        return self._get_meta(META_APPLIED) != _digest(wanted)

    def publish_apache(self) -> ApacheOutcome:
        """Write the Apache files if they changed, configtest, reload. Never raises."""
        if not self.apache.enabled:
            return ApacheOutcome(True, "disabled")
        with self._apache_lock:
            try:
                outcome = self._publish_apache()
            except Exception as exc:
                log.exception("publishing the Apache files failed")
                outcome = ApacheOutcome(False, "error", str(exc))
            self._record(outcome)
            return outcome

    def _publish_apache(self) -> ApacheOutcome:
        try:
            ca_bundle, crls, warnings = self.apache_contents()
        except PublishError as exc:
            return ApacheOutcome(False, "error", str(exc))
        for w in warnings:
            log.warning("Apache CRL file: %s", w)
        wanted = {self.apache.ca_file: ca_bundle, self.apache.crl_file: crls}
        digest = _digest((ca_bundle, crls))
        previous = {p: _read_or_none(p) for p in wanted}
        changed = [p for p, data in wanted.items() if previous[p] != data]
        notes = tuple(warnings)
        if not changed and self._get_meta(META_APPLIED) == digest:
            return ApacheOutcome(True, "unchanged", warnings=notes)
        try:
            for path in changed:
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
                atomic_write(path, wanted[path], FILE_MODE)
        except OSError as exc:
            self._restore(previous, changed)
            return ApacheOutcome(
                False, "error", f"cannot write {exc.filename}: {exc.strerror}", notes
            )
        timeout = self.apache.command_timeout_seconds
        if self.apache.configtest_command:
            test = self.runner(self.apache.configtest_command, timeout)
            if not test.ok:
                self._restore(previous, changed)
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
        if not self.apache.reload_command:
            self._set_meta(META_APPLIED, digest)
            return ApacheOutcome(
                True, "written", "no reload_command: the reload is left to a path unit", notes
            )
        res = self.runner(self.apache.reload_command, timeout)
        if not res.ok:
            log.error("Apache reload failed (retried at the next check): %s", res.summary())
            return ApacheOutcome(False, "reload-failed", res.summary(), notes)
        self._set_meta(META_APPLIED, digest)
        log.info(
            "Apache files %s; configtest passed, Apache reloaded gracefully",
            "updated" if changed else "unchanged",
        )
        return ApacheOutcome(True, "reloaded", warnings=notes)

    def _restore(self, previous: dict[Path, bytes | None], changed: list[Path]) -> None:
        for path in changed:
            old = previous[path]
            try:
                if old is None:
                    path.unlink(missing_ok=True)
                else:
                    atomic_write(path, old, FILE_MODE)
            except OSError as exc:
                log.error("could not restore %s: %s", path, exc)

    def _record(self, outcome: ApacheOutcome) -> None:
        doc: dict[str, Any] = {
            "at": self.clock.now().isoformat(),
            "ok": outcome.ok,
            "action": outcome.action,
            "detail": outcome.detail,
            "warnings": list(outcome.warnings),
        }
        if outcome.action == "unchanged":
            prev = self._get_meta(META_APACHE)
            if prev:
                with contextlib.suppress(ValueError):
                    old = json.loads(prev)
                    if old.get("ok"):
                        # keep the last real publication, with today's warnings
                        doc = {**old, "warnings": list(outcome.warnings)}
        self._set_meta(META_APACHE, json.dumps(doc))
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

    def last_apache_outcome(self) -> ApacheOutcome | None:
        raw = self._get_meta(META_APACHE)
        if not raw:
            return None
        try:
            doc = json.loads(raw)
        except ValueError:
            return None
        return ApacheOutcome(bool(doc.get("ok")), str(doc.get("action")), str(doc.get("detail")))

    # --- meta helpers ------------------------------------------------------------------------------------
    def _get_meta(self, key: str) -> str | None:
        with self.store.begin() as conn:
            return self.store.get_meta(conn, key)

    def _set_meta(self, key: str, value: str) -> None:
        try:
            with self.store.begin() as conn:
                self.store.set_meta(conn, key, value)
        except Exception:
            log.exception("cannot record %s in the index", key)


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


# --- choosing what to revoke ---------------------------------------------------------------------------
def _describe(rec: CertRecord, now: dt.datetime) -> str:
    return (
        f"{rec.serial} ({rec.effective_status(now)}, until {rec.not_after:%Y-%m-%d}, {rec.subject})"
    )


def choose_for_revocation(matches: list[CertRecord], ref: str, now: dt.datetime) -> CertRecord:
    """The one certificate `ref` means, or a NotFoundError that says what to do."""
    if not matches:
        raise NotFoundError(
            f"no certificate with serial or request name {ref!r}; see 'certdrop list'"
        )
    if len(matches) == 1:
        rec = matches[0]
        if rec.status == "revoked":
            raise NotFoundError(
                f"certificate {rec.serial} ({rec.subject}) is already revoked "
                f"(since {rec.revoked_at:%Y-%m-%d %H:%M} UTC, reason "
                f"{rec.revocation_reason or 'unspecified'})"
            )
        return rec
    live = [r for r in matches if r.status != "revoked" and r.not_after > now]
    if len(live) == 1:
        return live[0]
    listing = "; ".join(_describe(r, now) for r in matches)
    if not live:
        if all(r.status == "revoked" for r in matches):
            raise NotFoundError(f"every certificate of {ref!r} is already revoked: {listing}")
        raise NotFoundError(
            f"no certificate of {ref!r} is still valid; to revoke an expired one anyway, "
            f"give its serial: {listing}"
        )
    raise NotFoundError(
        f"{ref!r} matches {len(live)} certificates that are still valid; "
        f"revoke one at a time by serial: {'; '.join(_describe(r, now) for r in live)}"
    )


# --- `certdrop apache-config` --------------------------------------------------------------------------
_MODSSL_VARS = {
    "CN": "SSL_CLIENT_S_DN_CN",
    "O": "SSL_CLIENT_S_DN_O",
    "OU": "SSL_CLIENT_S_DN_OU",
    "C": "SSL_CLIENT_S_DN_C",
    "L": "SSL_CLIENT_S_DN_L",
    "ST": "SSL_CLIENT_S_DN_ST",
    "emailAddress": "SSL_CLIENT_S_DN_Email",
    "serialNumber": "SSL_CLIENT_S_DN_serialNumber",
    "DC": "SSL_CLIENT_S_DN_DC",
    "title": "SSL_CLIENT_S_DN_T",
    "GN": "SSL_CLIENT_S_DN_G",
    "SN": "SSL_CLIENT_S_DN_S",
    "UID": "SSL_CLIENT_S_DN_UID",
    "street": "SSL_CLIENT_S_DN_street",
    "postalCode": "SSL_CLIENT_S_DN_postalCode",
}


def _expr_string(value: str) -> str:
    """An ap_expr string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


_REGEX_DELIMITERS = "#/%!,;:_"


def _expr_regex(pattern: str, flags: str = "") -> str | None:
    """An ap_expr regex literal m#...# (full match, as the policy uses), or None.

    ap_expr cannot escape the delimiter, so one that the pattern does not contain is
    chosen; None if the pattern contains them all.
    """
    for delim in _REGEX_DELIMITERS:
        if delim not in pattern:
            return f"m{delim}^(?:{pattern})${delim}{flags}"
    return None


def subject_expr(profile: Profile) -> list[str]:
    """ap_expr conditions for a profile's subject rules (what mod_ssl can check)."""
    conds: list[str] = []
    for attr, rule in profile.subject.items():
        var = "%{" + _MODSSL_VARS[attr] + "}"
        parts: list[str] = []
        if rule.forbidden:
            conds.append(f"-z {var}")
            continue
        if rule.equals is not None:
            parts.append(f"{var} == {_expr_string(rule.equals)}")
        if rule.one_of is not None:
            parts.append(f"{var} in {{{', '.join(_expr_string(v) for v in rule.one_of)}}}")
        if rule.pattern is not None:
            regex = _expr_regex(rule.pattern)
            if regex is not None:  # else left to the CA's policy check alone
                parts.append(f"{var} =~ {regex}")
        domains = rule.domains
        if attr == "emailAddress" and domains is None and profile.email_domains:
            domains = profile.email_domains
        if domains:
            alt = "|".join(re.escape(d) for d in domains)
            parts.append(f"{var} =~ {_expr_regex('[^@]+@(?:' + alt + ')', 'i')}")  # no '#' in it
        if not parts:
            if rule.required:
                conds.append(f"-n {var}")
            continue
        joined = " && ".join(parts)
        if rule.required:
            conds.append(joined if len(parts) == 1 else f"({joined})")
        else:
            conds.append(f"(-z {var} || {joined})")
    return conds


def client_profiles(settings: Settings) -> list[str]:
    """Profiles whose certificates can authenticate clients (clientAuth)."""
    return [n for n, p in settings.profiles.items() if "client_auth" in p.extended_key_usage]


def apache_config_text(
    settings: Settings,
    ca_cert: x509.Certificate,
    chain: Sequence[x509.Certificate] = (),
    *,
    log_file: str = "${APACHE_LOG_DIR}/certdrop-clients.log",
    config_path: Path | None = None,
) -> str:
    """The mod_ssl block for client-certificate authentication against this CA."""
    apache = settings.apache
    depth = 1 + len(chain)
    profiles = client_profiles(settings)
    alternatives: list[str] = []
    for name in profiles:
        conds = subject_expr(settings.profiles[name])
        if conds:
            alternatives.append(" && ".join(conds))
        else:
            alternatives = []
            break
    verify = "%{SSL_CLIENT_VERIFY} == 'SUCCESS'"
    issuer = f"%{{SSL_CLIENT_I_DN}} == {_expr_string(_modssl_dn(ca_cert.subject))}"
    if len(alternatives) > 1:
        policy = " || ".join(f"({a})" for a in alternatives)
        expr = f"{verify} && {issuer} && ({policy})"
    elif alternatives:
        expr = f"{verify} && {issuer} && {alternatives[0]}"
    else:
        expr = f"{verify} && {issuer}"
    source = f" from {config_path}" if config_path else ""
    lines = [
        f"# certdrop apache-config{source}",
        f"# Client-certificate authentication with the CA {subject_text(ca_cert.subject)}.",
        "# Put this inside the <VirtualHost *:443> that has SSLEngine on and the server's own",
        "# SSLCertificateFile / SSLCertificateKeyFile; mod_ssl must be enabled (a2enmod ssl).",
        "# certdrop keeps the two files below current and reloads Apache gracefully.",
        "",
        "# the CAs clients chain to: this CA and any CA above it, merged into one file (it is also",
        "# the list of acceptable CAs the server sends, so browsers know which certificate to offer)",
        f'SSLCACertificateFile "{apache.ca_file}"',
        "# the CRL of every CA in that chain, refreshed well before its nextUpdate",
        f'SSLCARevocationFile "{apache.crl_file}"',
        "# check revocation for the client certificate and every CA above it",
        "SSLCARevocationCheck chain",
        "SSLVerifyClient require",
        f"SSLVerifyDepth {depth}",
        "",
        "# who the client certificates are for (the subject rules of the profile(s) "
        + ", ".join(profiles or ["-"])
        + ");",
        "# the modern form of SSLRequire",
        '<Location "/">',
        # mod_authz_core takes the expression raw (only the outer quotes are removed)
        f'    Require expr "{expr}"',
        "</Location>",
        "",
        "# who connected: the e-mail address and serial of each client certificate",
        'LogFormat "%h %l %{SSL_CLIENT_S_DN_Email}x %t \\"%r\\" %>s %b '
        '\\"%{SSL_CLIENT_S_DN_CN}x\\" %{SSL_CLIENT_M_SERIAL}x" certdrop_client',
        f'CustomLog "{log_file}" certdrop_client',
        "",
    ]
    return "\n".join(lines)


def _modssl_dn(name: x509.Name) -> str:
    """SSL_CLIENT_I_DN as mod_ssl 2.4 formats it: RFC 2253, most specific first."""
    short = {
        "countryName": "C",
        "stateOrProvinceName": "ST",
        "localityName": "L",
        "organizationName": "O",
        "organizationalUnitName": "OU",
        "commonName": "CN",
        "emailAddress": "emailAddress",
    }
    parts = []
    for rdn in reversed(list(name.rdns)):
        for attr in rdn:
            key = short.get(attr.oid._name, attr.oid.dotted_string)
            value = str(attr.value)
            value = re.sub(r'([,+"\\<>;])', r"\\\1", value)
            if value.startswith((" ", "#")):
                value = "\\" + value
            if value.endswith(" "):
                value = value[:-1] + "\\ "
            parts.append(f"{key}={value}")
    return ",".join(parts)


# --- `certdrop status` ------------------------------------------------------------------------------------
def status_extra(store: Store, conn: Any, settings: Settings, now: dt.datetime) -> dict[str, Any]:
    """The CRL and Apache lines of `certdrop status` (read from the state folder and index)."""
    crl_doc: dict[str, Any] = {"number": None, "next_update": None}
    path = settings.state / CRL_DER
    try:
        crl = x509.load_der_x509_crl(path.read_bytes())
        facts = CrlFacts.of(crl)
        refresh_at = facts.next_update - dt.timedelta(days=settings.crl.refresh_before_days)
        crl_doc = {
            "number": facts.number,
            "this_update": facts.this_update.isoformat(),
            "next_update": facts.next_update.isoformat(),
            "revoked": facts.revoked,
            "state": (
                "EXPIRED"
                if now >= facts.next_update
                else "refresh due"
                if now >= refresh_at
                else "fresh"
            ),
        }
    except FileNotFoundError:
        crl_doc["state"] = "none yet (the daemon makes one at start; or run 'certdrop crl')"
    except (OSError, ValueError, x509.ExtensionNotFound, AssertionError) as exc:
        crl_doc["state"] = f"unreadable ({exc})"
    error = store.get_meta(conn, META_CRL_ERROR)
    if error:
        crl_doc["last_error"] = error
    apache_doc: dict[str, Any] = {"enabled": settings.apache.enabled}
    raw = store.get_meta(conn, META_APACHE)
    if raw:
        with contextlib.suppress(ValueError):
            last = json.loads(raw)
            apache_doc.update(
                {
                    "last": "ok" if last.get("ok") else "FAILED",
                    "action": last.get("action"),
                    "at": last.get("at"),
                    "detail": last.get("detail") or None,
                }
            )
            if last.get("warnings"):
                apache_doc["warning"] = "; ".join(last["warnings"])
    return {"crl": crl_doc, "apache": apache_doc}


LINT_FULL_CRL_MAX = 100  # larger CRLs are linted through a sample of the same shape
_Y2050 = 2524608000  # 2050-01-01 UTC: revocation times from here on are GeneralizedTime


def _lint_sample(entries: Sequence[CrlEntry]) -> list[CrlEntry]:
    """The first and last entries, and the first of every other entry shape.

    An entry's encoding depends only on its shape: the serial's length in octets, the
    time's type (UTCTime until 2049, GeneralizedTime after) and the reason code; the
    sample holds each shape the CRL has, so linting it lints every kind of entry.
    """
    half = LINT_FULL_CRL_MAX // 2
    sample = [*entries[:half], *entries[-half:]]

    def shape(e: CrlEntry) -> tuple[int, bool, str | None]:
        when = e[1] if isinstance(e[1], int) else int(e[1].timestamp())
        return e[0].bit_length() // 8, when >= _Y2050, e[2]

    seen = {shape(e) for e in sample}
    for entry in entries[half:-half]:
        key = shape(entry)
        if key not in seen:
            seen.add(key)
            sample.append(entry)
    return sample


def build_publisher(
    settings: Settings,
    store: Store,
    ca: CertificateAuthority,
    clock: Clock,
    linter: Linter | None,
) -> Publisher:
    return Publisher(
        crl=settings.crl,
        apache=settings.apache,
        state=settings.state,
        store=store,
        ca=ca,
        clock=clock,
        linter=linter,
    )
