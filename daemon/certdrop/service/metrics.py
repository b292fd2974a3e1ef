"""The optional Prometheus endpoint (`[metrics] listen`), the only user of prometheus_client.

Values are computed when Prometheus scrapes, from a `Snapshot` the daemon builds
(counts since start, the index, the queue, the published CRL); nothing is kept in
global registries, so a reload or a second daemon in the same process (tests) does
not collide.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from ..config import split_listen
from ..errors import ConfigError

log = logging.getLogger("certdrop.metrics")

EXPIRING_DAYS = 30


@dataclass(frozen=True)
class Snapshot:
    now: dt.datetime
    requests: dict[str, int] = field(default_factory=dict)  # outcomes since the daemon started
    certificates: dict[str, int] = field(default_factory=dict)  # the index by status
    pending: int = 0
    queue_ready: int = 0
    queue_delayed: int = 0
    expiring: int = 0  # valid certificates ending within EXPIRING_DAYS
    crl_next_update: dt.datetime | None = None
    last_reload: tuple[dt.datetime, bool, str] | None = None
    ready: bool = False
    healthy: bool = True


class _Collector(Collector):
    def __init__(self, source: Callable[[], Snapshot]) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        try:
            snap = self.source()
        except Exception:
            log.exception("cannot collect metrics")
            up = GaugeMetricFamily("certdrop_up", "1 when certdrop could report its state")
            up.add_metric([], 0)
            yield up
            return
        up = GaugeMetricFamily("certdrop_up", "1 when certdrop could report its state")
        up.add_metric([], 1)
        yield up
        ready = GaugeMetricFamily(
            "certdrop_ready", "1 after the first inbox scan, while all threads are alive"
        )
        ready.add_metric([], 1 if snap.ready and snap.healthy else 0)
        yield ready

        requests = CounterMetricFamily(
            "certdrop_requests",
            "Requests handled since the daemon started, by outcome",
            labels=["outcome"],
        )
        for outcome in ("issued", "rejected", "pending", "redelivered"):
            requests.add_metric([outcome], snap.requests.get(outcome, 0))
        yield requests

        certs = GaugeMetricFamily(
            "certdrop_certificates", "Certificates in the index, by status", labels=["status"]
        )
        for status in ("valid", "expired", "revoked", "superseded"):
            certs.add_metric([status], snap.certificates.get(status, 0))
        yield certs

        pending = GaugeMetricFamily(
            "certdrop_pending_requests", "Requests waiting for an operator's approval"
        )
        pending.add_metric([], snap.pending)
        yield pending

        queue = GaugeMetricFamily(
            "certdrop_queue_depth", "Inbox files waiting for the worker", labels=["state"]
        )
        queue.add_metric(["ready"], snap.queue_ready)
        queue.add_metric(["waiting"], snap.queue_delayed)
        yield queue

        expiring = GaugeMetricFamily(
            "certdrop_certificates_expiring",
            f"Valid certificates that expire within {EXPIRING_DAYS} days",
            labels=["within_days"],
        )
        expiring.add_metric([str(EXPIRING_DAYS)], snap.expiring)
        yield expiring

        if snap.crl_next_update is not None:
            crl = GaugeMetricFamily(
                "certdrop_crl_next_update_seconds",
                "Seconds until the current CRL's nextUpdate (negative: the CRL has expired "
                "and mod_ssl refuses every client)",
            )
            crl.add_metric([], (snap.crl_next_update - snap.now).total_seconds())
            yield crl

        reload_ok = GaugeMetricFamily(
            "certdrop_last_reload_success",
            "1 if the last SIGHUP reload was accepted, 0 if it was refused",
        )
        reload_ts = GaugeMetricFamily(
            "certdrop_last_reload_timestamp_seconds", "When the last SIGHUP reload was tried"
        )
        if snap.last_reload is not None:
            when, ok, _reason = snap.last_reload
            reload_ok.add_metric([], 1 if ok else 0)
            reload_ts.add_metric([], when.timestamp())
        else:
            reload_ok.add_metric([], 1)
        yield reload_ok
        if snap.last_reload is not None:
            yield reload_ts


class MetricsServer:
    """prometheus_client's HTTP server on HOST:PORT, with its own registry."""

    def __init__(self, listen: str, source: Callable[[], Snapshot]) -> None:
        try:
            self.host, self.port = split_listen(listen)
        except ValueError as exc:
            raise ConfigError(f"[metrics] listen = {listen!r}: {exc}") from None
        self.listen = listen
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(source))
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        try:
            self._server, self._thread = start_http_server(
                self.port, addr=self.host, registry=self.registry
            )
        except OSError as exc:
            raise ConfigError(
                f"[metrics] listen = {self.listen!r}: cannot listen there ({exc.strerror or exc}); "
                'choose a free port, or set listen = "" to turn metrics off'
            ) from None

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
