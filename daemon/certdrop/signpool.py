"""Signing (and lint before sign) on every processor: a pool of worker processes.

Each worker loads the CA itself from the state folder (the private key never
travels through a pipe) and builds its own pkilint validator once. The parent
sends plain data (subject, SPKI DER, validity, usages, serial) and gets DER back.
Small batches are signed in the calling process: a round trip to a worker would
only add latency to a single drop.
"""

from __future__ import annotations

import datetime as dt
import logging
import multiprocessing
import os
import select
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .ca import CertificateAuthority, IssueSpec, public_key_bytes
from .errors import LintError, RequestError
from .lint import Linter
from .request import ParsedRequest, parse_many, parse_request

log = logging.getLogger("certdrop.signpool")

# below this many certificates a batch is signed in the calling process
MIN_POOL_BATCH = 16

_worker_ca: CertificateAuthority | None = None
_worker_linter: Linter | None = None

_Plain = tuple[
    list[tuple[str, str]], bytes, float, float, list[str], list[str], list[str], list[str], int, str
]


def _to_plain(spec: IssueSpec) -> _Plain:
    return (
        list(spec.subject),
        public_key_bytes(spec.public_key),
        spec.not_before.timestamp(),
        spec.not_after.timestamp(),
        list(spec.key_usage),
        list(spec.extended_key_usage),
        list(spec.emails),
        list(spec.dns_names),
        spec.serial,
        spec.crl_distribution_point,
    )


def _from_plain(p: _Plain) -> IssueSpec:
    subject, spki, nb, na, ku, eku, emails, dns, serial, dp = p
    return IssueSpec(
        subject=subject,
        public_key=serialization.load_der_public_key(spki),
        not_before=dt.datetime.fromtimestamp(nb, dt.UTC),
        not_after=dt.datetime.fromtimestamp(na, dt.UTC),
        key_usage=ku,
        extended_key_usage=eku,
        emails=emails,
        dns_names=dns,
        serial=serial,
        crl_distribution_point=dp,
    )


def _exit_with_daemon(daemon_pid: int) -> None:
    """End this worker when the daemon that made the pool is gone.

    A daemon killed with SIGKILL runs no shutdown, and the workers (children of the
    pool's fork server, which they keep alive) would otherwise wait forever on a
    queue nobody writes to, each holding the CA key in memory.
    """
    try:
        pidfd = os.pidfd_open(daemon_pid)
    except ProcessLookupError:  # gone already, before this worker even started
        os._exit(0)
    except (OSError, AttributeError):  # not Linux >= 5.3: the service manager cleans up
        return

    def watch() -> None:
        select.select([pidfd], [], [])  # readable when the daemon has exited
        os._exit(0)

    threading.Thread(target=watch, name="certdrop-daemon-watch", daemon=True).start()


def _init_worker(state: str, passphrase: bytes | None, lint: bool, daemon_pid: int) -> None:
    global _worker_ca, _worker_linter
    _exit_with_daemon(daemon_pid)
    _worker_ca = CertificateAuthority.load(Path(state), passphrase)
    _worker_linter = Linter() if lint else None


def _sign_chunk(chunk: list[_Plain], lint: bool) -> list[tuple[bytes, str]]:
    """(DER, "") for a signed certificate, (b"", reason) for a lint refusal."""
    assert _worker_ca is not None
    linter = _worker_linter.certificate if (lint and _worker_linter is not None) else None
    out: list[tuple[bytes, str]] = []
    for plain in chunk:
        try:
            cert = _worker_ca.issue(_from_plain(plain), linter)
            out.append((cert.public_bytes(serialization.Encoding.DER), ""))
        except LintError as exc:
            out.append((b"", str(exc)))
    return out


def _parse_chunk(chunk: list[bytes]) -> list[ParsedRequest | str]:
    """A ParsedRequest, or the RequestError's message."""
    out: list[ParsedRequest | str] = []
    for data in chunk:
        try:
            out.append(parse_request(data)[0])
        except RequestError as exc:
            out.append(str(exc))
        except Exception as exc:  # noqa: BLE001 - never lose a batch to one odd file
            out.append(f"the request cannot be parsed ({exc.__class__.__name__})")
    return out


def _ping() -> bool:
    return _worker_ca is not None


def _forkserver_context() -> Any:
    """The forkserver context, with what the workers need imported once in the fork server.

    Without a preload every worker imports cryptography, pkilint and certdrop itself on
    its own (about 0.9 s of CPU each, on the first burst, competing with the daemon for
    the processors); with it the fork server imports them once and the workers are
    forked ready. multiprocessing also re-runs the daemon's main module in each worker
    (`certdrop.cli` or the `certdrop` script): preloaded too, so that this is cheap.
    """
    ctx = multiprocessing.get_context("forkserver")
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    preload = ["__main__", __name__]
    if spec is not None and spec.name and not spec.name.endswith("__main__"):
        preload.append(spec.name)
    ctx.set_forkserver_preload(preload)
    return ctx


def _stop_forkserver() -> None:
    """Stop the fork server with the workers: it holds the preloaded modules in memory.

    multiprocessing has no public way to do this; without one (another Python), the fork
    server stays and is reused by the next pool.
    """
    from multiprocessing import forkserver

    stop = getattr(getattr(forkserver, "_forkserver", None), "_stop", None)
    if stop is not None:
        try:
            stop()
        except OSError as exc:
            log.debug("could not stop the fork server: %s", exc)


class SigningPool:
    """Worker processes that sign batches of certificates in parallel."""

    def __init__(
        self,
        ca: CertificateAuthority,
        state: Path,
        passphrase: bytes | None,
        *,
        lint: bool,
        workers: int | None = None,
    ) -> None:
        self.ca = ca
        self.lint_enabled = lint
        self.workers = workers or max(1, os.cpu_count() or 1)
        self._initargs = (str(state), passphrase, lint, os.getpid())
        self._pool: ProcessPoolExecutor | None = None
        self._warm: list[Future[bool]] = []
        self._broken = False
        self._last_used = time.monotonic()

    def _start(self) -> None:
        """Start the workers (they load the CA and pkilint) without waiting for them.

        The pool is started on the first batch big enough to need it, and stopped
        again after a quiet spell: an idle CA keeps one small process.
        """
        if self._pool is not None or self._broken:
            return
        self._pool = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=_forkserver_context(),
            initializer=_init_worker,
            initargs=self._initargs,
        )
        self._warm = [self._pool.submit(_ping) for _ in range(self.workers)]
        log.info("started %d signing processes", self.workers)

    @property
    def ready(self) -> bool:
        return self._pool is not None and not self._broken and all(f.done() for f in self._warm)

    def _use(self, n: int) -> ProcessPoolExecutor | None:
        """The pool if it should take a batch of `n` now; else None (do it here)."""
        if n < MIN_POOL_BATCH or self._broken:
            return None
        self._last_used = time.monotonic()
        if not self.ready:
            self._start()  # this batch is done here; the next ones go to the workers
            return None
        return self._pool

    def stop_if_idle(self, idle_seconds: float) -> bool:
        """Stop the workers when no batch needed them for `idle_seconds`."""
        if self._pool is None or time.monotonic() - self._last_used < idle_seconds:
            return False
        pool, self._pool, self._warm = self._pool, None, []
        pool.shutdown(wait=True, cancel_futures=True)
        _stop_forkserver()
        log.info("stopped the signing processes (idle for %g s)", idle_seconds)
        return True

    def sign(
        self, specs: Sequence[IssueSpec], linter: Linter | None
    ) -> list[x509.Certificate | LintError]:
        lint = linter is not None
        pool = self._use(len(specs)) if lint == self.lint_enabled else None
        if pool is None:
            return self._sign_here(specs, linter)
        plain = [_to_plain(s) for s in specs]
        n = min(self.workers * 2, len(plain))
        size = -(-len(plain) // n)
        futures = [
            pool.submit(_sign_chunk, plain[i : i + size], lint) for i in range(0, len(plain), size)
        ]
        out: list[x509.Certificate | LintError] = []
        try:
            for fut in futures:
                for der, reason in fut.result():
                    if reason:
                        out.append(LintError(reason))
                    else:
                        # the worker ran the same post-sign checks as CertificateAuthority.issue
                        out.append(x509.load_der_x509_certificate(der))
        except Exception as exc:  # noqa: BLE001 - a broken pool falls back to this process
            log.error("signing pool failed (%s); signing in the daemon process from now on", exc)
            self._broken = True
            return self._sign_here(specs, linter)
        return out

    def parse(self, datas: Sequence[bytes]) -> list[ParsedRequest | RequestError]:
        """Parse (and verify the signatures of) dropped requests on every processor."""
        pool = self._use(len(datas))
        if pool is None:
            return parse_many(datas)
        items = list(datas)
        n = min(self.workers * 2, len(items))
        size = -(-len(items) // n)
        futures = [
            pool.submit(_parse_chunk, items[i : i + size]) for i in range(0, len(items), size)
        ]
        out: list[ParsedRequest | RequestError] = []
        try:
            for fut in futures:
                out += [RequestError(r) if isinstance(r, str) else r for r in fut.result()]
        except Exception as exc:  # noqa: BLE001 - a broken pool falls back to this process
            log.error("parsing pool failed (%s); parsing in the daemon process from now on", exc)
            self._broken = True
            return parse_many(datas)
        return out

    def _sign_here(
        self, specs: Sequence[IssueSpec], linter: Linter | None
    ) -> list[x509.Certificate | LintError]:
        return self.ca.issue_many(specs, linter.certificate if linter else None)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
            _stop_forkserver()
