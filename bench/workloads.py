"""The workloads (rows of the table) and how each tool (column) is measured on them."""

from __future__ import annotations

import datetime as dt
import importlib
import json
import math
import os
import resource
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ceiling
import csrs
import indexfill
import peers
import serve_bench
from cd_daemon import CertdropDaemon, DaemonError, tree_cpu_seconds, tree_memory_mb
from cd_daemon import cli as cd_cli
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from inotify_watch import BenchWaitError, OutboxWatcher
from peers import Measure, PeerError
from report import PEERS, Cell, Row

from certdrop.authority.ca import CertificateAuthority
from certdrop.authority.lint import shared_linter
from certdrop.clock import SystemClock
from certdrop.config import load_settings
from certdrop.errors import CertdropError
from certdrop.index.listing import revoked_entries
from certdrop.index.store import Store
from certdrop.publish.crl import CrlPublisher

BENCH = Path(__file__).resolve().parent

# workload ids, in run order (--only takes these, or a prefix of them)
WORKLOADS = [
    "folder-burst-ec-lint-off",
    "folder-burst-ec-lint-on",
    "folder-burst-rsa-lint-off",
    "folder-burst-ec-lint-off-100k",
    "folder-burst-ec-lint-off-outbox",
    "backup-100k",
    "folder-burst-ec-lint-off-postgresql",
    "folder-burst-ec-lint-off-two-hosts",
    "index-1m-sqlite",
    "index-1m-postgresql",
    "latency",
    "p12",
    "crl",
    "startup",
    "idle",
    "serve",
    "rollover",
]


@dataclass
class Params:
    n: int = 5000  # CSRs per folder burst
    peer_seconds: float = 12.0  # time cap per peer and workload (sequential tools)
    latency_drops: int = 200
    latency_gap: float = 0.0  # pause between single drops (0: one right after the other)
    warmup: int = 10
    p12_n: int = 1000
    crl_n: int = 100_000
    index_n: int = 100_000
    big_index_n: int = 1_000_000  # the index-1m rows: certificates in the index (MIX)
    outbox_n: int = 100_000  # files in the outbox before the full-outbox burst
    idle_seconds: float = 5.0
    serve_seconds: float = 3.0  # each OCSP and GET /crl.der measurement (certdrop serve)
    serve_rounds: int = 5  # certdrop serve and openssl ocsp in turns, this many times each
    rollovers: int = 3  # rollovers in one running daemon: the cell is the median
    # "outside": staged in another folder, renamed into inbox/; "inside": staged as
    # inbox/.NAME.req, renamed to NAME.req; "copy": written straight into inbox/
    drop: str = "outside"
    stall_seconds: float = 30.0
    # each certdrop folder burst runs this many times (a fresh daemon each): the cell is
    # the median, the details list them all (this VM's speed moves by +-15% in minutes)
    bursts: int = 3
    tools: tuple[str, ...] = ("certdrop", *PEERS)
    keep: bool = False

    @classmethod
    def quick(cls) -> Params:
        return cls(
            n=100,
            peer_seconds=2.0,
            latency_drops=20,
            warmup=3,
            p12_n=40,
            crl_n=10_000,
            index_n=10_000,
            big_index_n=20_000,
            outbox_n=10_000,
            idle_seconds=2.0,
            bursts=1,
            serve_seconds=1.0,
            serve_rounds=1,
            rollovers=1,
        )


@dataclass(frozen=True)
class Drop:
    """One request dropped into inbox/: renamed from where it was staged, or written."""

    src: Path | None  # None: written straight into inbox/ (like cp)
    dst: Path
    data: bytes

    def do(self) -> None:
        if self.src is None:
            with open(self.dst, "wb") as f:
                f.write(self.data)
        else:
            os.rename(self.src, self.dst)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Bench:
    params: Params
    work: Path
    log: Callable[[str], None]
    peer_cas: dict[str, csrs.PeerCA] = field(default_factory=dict)
    _peer_runs: dict[tuple[str, str, int], Measure | Exception] = field(default_factory=dict)
    _cfssl_idle: dict[str, float] | Exception | None = None
    # the big index, loaded once per backend and run: a SQLite file, or a template database
    _big_index: dict[str, str] = field(default_factory=dict)
    _big_ca: dict[str, CertdropDaemon] = field(default_factory=dict)  # whose CA issued it
    _pg: Any = None  # the bench's PostgreSQL server (tests/pgserver.py), once started

    def __post_init__(self) -> None:
        p = self.params
        self.pool = csrs.pool(max(p.n, p.latency_drops + p.warmup, p.rollovers + 20))

    def wants(self, tool: str) -> bool:
        return tool in self.params.tools

    def peer_ca(self, key_type: str) -> csrs.PeerCA:
        if key_type not in self.peer_cas:
            self.peer_cas[key_type] = csrs.make_peer_ca(key_type)
        return self.peer_cas[key_type]

    # --- certdrop ---------------------------------------------------------------------------------
    @contextmanager
    def daemon(
        self,
        label: str,
        key_type: str,
        lint: bool,
        database: str = "",
        join: CertdropDaemon | None = None,
    ) -> Iterator[CertdropDaemon]:
        """A certdrop instance, initialised (`join`: with that instance's CA files)."""
        d = CertdropDaemon(
            self.work / f"certdrop-{label}", key_type=key_type, lint=lint, database=database
        )
        d.init(join=join)
        try:
            yield d
        except BaseException:
            d.kill()
            raise
        try:
            d.stop()
        except BaseException:
            d.kill()
            raise
        if d.leftovers:
            self.log(f"  certdrop left {d.leftovers} process(es) running after SIGTERM")

    def _stage(self, d: CertdropDaemon, files: Sequence[tuple[str, bytes]]) -> list[Drop]:
        """Prepare the drops (untimed): staged files for the rename modes."""
        mode = self.params.drop
        staging = d.inbox if mode == "inside" else d.root / "staging"
        staging.mkdir(exist_ok=True)
        drops = []
        for name, data in files:
            dst = d.inbox / f"{name}.req"
            if mode == "copy":
                drops.append(Drop(None, dst, data))
                continue
            # inside: hidden names certdrop ignores, renamed in place;
            # outside: another folder on the same filesystem, renamed into inbox/
            src = staging / (f".{name}.req" if mode == "inside" else f"{name}.req")
            src.write_bytes(data)
            drops.append(Drop(src, dst, data))
        return drops

    def _wait(
        self,
        d: CertdropDaemon,
        watcher: OutboxWatcher,
        names: Sequence[str],
        t_drop: float,
        stall: float,
    ) -> float:
        """Wait for NAME.cer of every name; fail fast when certdrop picks nothing up."""
        pickup_deadline = min(10.0, stall)

        def check() -> None:
            d.check_healthy()
            if (
                not watcher.seen
                and time.perf_counter() - t_drop > pickup_deadline
                and all((d.inbox / f"{n}.req").exists() for n in names)
            ):
                raise DaemonError(
                    f"certdrop picked up none of the {len(names)} requests dropped into inbox/ "
                    f"within {pickup_deadline:.0f} s (drop mode '{self.params.drop}')"
                )

        try:
            return watcher.wait_all([f"{n}.cer" for n in names], stall_seconds=stall, check=check)
        except BenchWaitError as exc:
            raise DaemonError(f"{exc}; {d.tail(5)}") from None

    def _burst(
        self, d: CertdropDaemon, files: Sequence[tuple[str, bytes]]
    ) -> tuple[float, dict[str, Any]]:
        """Drop all files at once; seconds from the first drop to the last NAME.cer."""
        drops = self._stage(d, files)
        names = [name for name, _ in files]
        time.sleep(0.2)  # let the staging writes' events (inside mode) pass
        with OutboxWatcher(d.outbox) as watcher:
            cpu0 = d.cpu_seconds()
            t0 = time.perf_counter()
            for drop in drops:
                drop.do()
            t_dropped = time.perf_counter()
            t_last = self._wait(d, watcher, names, t0, self.params.stall_seconds)
            cpu = d.cpu_seconds() - cpu0
            first = min(watcher.seen[f"{n}.cer"] for n in names)
        seconds = t_last - t0
        sample = [d.outbox / f"{n}.cer" for n in (names[0], names[len(names) // 2], names[-1])]
        peers.verify(d.ca_cert, sample)
        return seconds, {
            "n": len(files),
            "seconds": round(seconds, 4),
            "drop_seconds": round(t_dropped - t0, 4),
            "first_cert_ms": round((first - t0) * 1000, 1),
            "daemon_cpu_seconds": round(cpu, 3),  # with its worker processes
            "daemon_cores_used": round(cpu / seconds, 2) if seconds > 0 else None,
            "daemon_peak_rss_mb": round(d.peak_rss_mb(), 1),  # the main process
            "daemon_tree": d.memory(),
        }

    def certdrop_burst(
        self,
        label: str,
        key_type: str,
        lint: bool,
        prepare: Callable[[CertdropDaemon], dict[str, Any]] | None = None,
    ) -> tuple[Cell, dict[str, Any]]:
        """A folder burst through a fresh daemon, `bursts` times; `prepare` runs before each
        daemon starts (and returns details to record). The cell is the median burst (the
        lower one of an even count), its note the range; the details are the median
        burst's, with every burst's rate and CPU seconds (daemon and workers) in
        `runs_per_second` and `runs_cpu_seconds` (in the order they ran)."""
        files = self.pool[: self.params.n]
        runs: list[tuple[float, dict[str, Any]]] = []
        for i in range(self.params.bursts):
            with self.daemon(
                label if self.params.bursts == 1 else f"{label}-{i + 1}", key_type, lint
            ) as d:
                prepared = prepare(d) if prepare is not None else {}
                ready = d.start()
                seconds, details = self._burst(d, files)
            details |= prepared
            details["ready_seconds"] = round(ready, 3)
            rate = len(files) / seconds
            runs.append((rate, details))
            self.log(f"  certdrop: {len(files)} certificates in {seconds:.2f} s = {rate:,.0f}/s")
        rate, details = sorted(runs, key=lambda r: r[0])[(len(runs) - 1) // 2]
        if len(runs) == 1:
            return Cell(rate), details
        rates = [r for r, _ in runs]
        details["runs_per_second"] = [round(r, 1) for r in rates]
        details["runs_cpu_seconds"] = [d["daemon_cpu_seconds"] for _, d in runs]
        note = f"median of {len(runs)} bursts ({min(rates):,.0f}-{max(rates):,.0f}/s)"
        return Cell(rate, note=note), details

    # --- peers ------------------------------------------------------------------------------------
    def peer_measure(self, column: str, key_type: str, index_n: int = 0) -> Measure:
        """One peer on the CSR pool with the time cap (cached per column, CA key type and
        `index_n`: `openssl ca` with an index.txt of that many valid lines first)."""
        key = (column, key_type, index_n)
        if key not in self._peer_runs:
            try:
                self._peer_runs[key] = self._run_peer(column, key_type, index_n)
            except (PeerError, OSError) as exc:
                self._peer_runs[key] = exc
        result = self._peer_runs[key]
        if isinstance(result, Exception):
            raise result
        return result

    def _run_peer(self, column: str, key_type: str, index_n: int = 0) -> Measure:
        if index_n and column != "openssl-ca":
            raise ValueError(f"{column} keeps no index")
        ca = self.peer_ca(key_type)
        folder = self.work / (f"{column}-{key_type}" + (f"-index-{index_n}" if index_n else ""))
        items = self.pool[: self.params.n]
        cap = self.params.peer_seconds
        ca_cert = folder / "ca.cer"
        m: Measure
        if column == "openssl-x509":
            m = peers.OpensslX509(ca, folder).run(items, cap)
        elif column == "openssl-ca":
            oca = peers.OpensslCA(ca, folder)
            if index_n:
                peers.openssl_index(folder / "index.txt", index_n, revoked=False)
            m = oca.run(items, cap)
        elif column == "easy-rsa":
            e = peers.EasyRSA(key_type, folder)
            ca_cert = e.ca_cert
            m = e.run(items, cap)
        elif column == "cfssl-sign":
            m = peers.CfsslSign(ca, folder).run(items, cap)
        elif column in ("cfssl-serve-1", "cfssl-serve-2"):
            with peers.CfsslServe(ca, folder) as serve:
                m = serve.run(items, cap, clients=int(column[-1]))
        else:
            raise ValueError(column)
        peers.verify(ca_cert, [m.outputs[0], m.outputs[-1]] if m.outputs else [])
        index = f", {index_n:,}-line index.txt" if index_n else ""
        self.log(f"  {column} ({key_type}{index}): {m.done} in {m.seconds:.2f} s = {m.rate:,.1f}/s")
        return m

    def peer_cells(self, key_type: str, cells: dict[str, Cell]) -> None:
        for column in ("openssl-x509", "openssl-ca", "easy-rsa", "cfssl-sign"):
            if self.wants(column):
                cells[column] = self._rate_cell(column, key_type)
        for column in ("cfssl-serve-1", "cfssl-serve-2"):
            if self.wants(column):
                cells[column] = self._rate_cell(column, key_type)

    def _rate_cell(self, column: str, key_type: str, index_n: int = 0) -> Cell:
        if not self._installed(column):
            return Cell(note="not installed")
        try:
            m = self.peer_measure(column, key_type, index_n)
        except (PeerError, OSError) as exc:
            return Cell(error=str(exc))
        notes = [f"index.txt of {index_n:,} lines first"] if index_n else []
        if m.done < self.params.n:
            notes.append(
                f"{m.done} of {self.params.n} CSRs in the {self.params.peer_seconds:g} s cap"
            )
        return Cell(m.rate, note="; ".join(notes))

    def _installed(self, column: str) -> bool:
        have = peers.available()
        if column.startswith("openssl"):
            return have["openssl"]
        if column == "easy-rsa":
            return have["easy-rsa"]
        if column.startswith("cfssl"):
            return have["cfssl"]
        return True

    # --- the workloads ------------------------------------------------------------------------------
    def folder_burst(self, key_type: str, lint: bool) -> Row:
        kt = "EC P-256" if key_type == "ec-p256" else "RSA-2048"
        n = self.params.n
        row = Row(
            id=f"folder-burst-{key_type.split('-')[0]}-lint-{'on' if lint else 'off'}",
            label=f"folder burst {n:,} CSRs, {kt} CA, lint {'on' if lint else 'off'}",
            unit="rate",
        )
        if self.wants("certdrop"):
            try:
                row.cells["certdrop"], row.details["certdrop"] = self.certdrop_burst(
                    row.id, key_type, lint
                )
            except (DaemonError, PeerError, OSError) as exc:
                row.cells["certdrop"] = Cell(error=str(exc))
        if not lint:
            self.peer_cells(key_type, row.cells)
        if self.wants("ceiling"):
            ca = self.peer_ca(key_type)
            pems = [pem for _, pem in self.pool[: min(n, 5000)]]
            if lint:
                two = ceiling.lint_rate(ca.cert_pem, ca.key_pem, pems[:1000], processes=2)
                own = ceiling.lint_rate(
                    ca.cert_pem, ca.key_pem, pems[:1000], processes=2, fast=True
                )
                one = ceiling.sign_rate(ca.cert_pem, ca.key_pem, pems[:300], True, processes=1)
                row.cells["ceiling"] = Cell(
                    two.rate,
                    note=(
                        "pkilint alone (as it ships) on 2 processes; certdrop's pkilint "
                        f"dispatch alone {own.rate:,.0f}/s; build+sign+lint in 1 process "
                        f"{one.rate:,.0f}/s"
                    ),
                )
                row.details["ceiling"] = {
                    "pkilint_alone_2": round(two.rate, 1),
                    "certdrop_dispatch_alone_2": round(own.rate, 1),
                    "build_sign_lint_1": round(one.rate, 1),
                }
                row.target = f">= 80% of pkilint alone ({0.8 * two.rate:,.0f}/s)"
                row.target_value = 0.8 * two.rate
            else:
                one = ceiling.sign_rate(ca.cert_pem, ca.key_pem, pems, False, processes=1)
                two = ceiling.sign_rate(ca.cert_pem, ca.key_pem, pems, False, processes=2)
                row.cells["ceiling"] = Cell(
                    two.rate, note=f"2 processes; 1 process {one.rate:,.0f}/s"
                )
            self.log(f"  ceiling: {row.cells['ceiling'].value:,.0f}/s")
        if not lint:
            row.target_value = 2000.0 if key_type == "ec-p256" else 1200.0
            row.target = f">= {row.target_value:,.0f}/s"
        return row

    def folder_burst_big_index(self) -> Row:
        """The EC lint-off burst into an index that already holds `index_n` certificates
        (a CA that has been issuing for a while), beside `openssl ca` with an index.txt
        of as many lines: what each does per request must not grow with the index."""
        p = self.params
        row = Row(
            id="folder-burst-ec-lint-off-100k"
            if p.index_n == 100_000
            else f"folder-burst-ec-lint-off-{p.index_n}",
            label=f"folder burst {p.n:,} CSRs, EC P-256 CA, lint off, {p.index_n:,} certs in index",
            unit="rate",
        )

        def fill(d: CertdropDaemon) -> dict[str, Any]:
            fill_s, _ = indexfill.fill(f"sqlite:///{d.database}", d.state, p.index_n, revoked=False)
            self.log(f"  index filled with {p.index_n:,} certificates in {fill_s:.1f} s")
            return {"index_n": p.index_n, "index_fill_seconds": round(fill_s, 1)}

        if self.wants("certdrop"):
            try:
                cell, row.details["certdrop"] = self.certdrop_burst(
                    row.id, "ec-p256", False, prepare=fill
                )
                cell.note = "; ".join(
                    n for n in (f"{p.index_n:,} valid certificates first", cell.note) if n
                )
                row.cells["certdrop"] = cell
            except (DaemonError, PeerError, OSError) as exc:
                row.cells["certdrop"] = Cell(error=str(exc))
        if self.wants("openssl-ca"):
            row.cells["openssl-ca"] = self._rate_cell("openssl-ca", "ec-p256", p.index_n)
        return row

    def folder_burst_full_outbox(self) -> Row:
        """The EC lint-off burst into an outbox that already holds `outbox_n` files (a
        shared folder in use for years) against the same burst into an empty outbox:
        choosing each certificate's output name looks its name up, never lists the folder,
        so the rate must stay within 10% of the empty-outbox one. The two alternate,
        `bursts` pairs through fresh daemons, so that both see the machine alike."""
        p = self.params
        row = Row(
            id="folder-burst-ec-lint-off-outbox",
            label=f"folder burst {p.n:,} CSRs, EC P-256 CA, lint off, {p.outbox_n:,} files in outbox",
            unit="rate",
        )

        def fill(d: CertdropDaemon) -> float:
            t0 = time.perf_counter()
            outbox = d.spool / "outbox"
            outbox.mkdir(parents=True, exist_ok=True)
            for i in range(p.outbox_n):  # what users' earlier certificates left there
                (outbox / f"user{i:06d}{'.cer' if i % 2 else '.p12'}").write_bytes(b"x" * 700)
            os.sync()  # untimed, as the daemon's own syncfs would write them out otherwise
            return time.perf_counter() - t0

        if not self.wants("certdrop"):
            return row
        files = self.pool[: p.n]
        runs: dict[str, list[tuple[float, float]]] = {"empty": [], "full": []}
        try:
            for i in range(p.bursts):
                for kind in ("empty", "full"):
                    with self.daemon(f"{row.id}-{kind}-{i + 1}", "ec-p256", False) as d:
                        if kind == "full":
                            self.log(
                                f"  outbox filled with {p.outbox_n:,} files in {fill(d):.1f} s"
                            )
                        d.start()
                        seconds, details = self._burst(d, files)
                    rate = len(files) / seconds
                    runs[kind].append((rate, details["daemon_cpu_seconds"]))
                    self.log(
                        f"  certdrop, {kind} outbox: {len(files)} in {seconds:.2f} s = {rate:,.0f}/s"
                    )
        except (DaemonError, PeerError, OSError) as exc:
            row.cells["certdrop"] = Cell(error=str(exc))
            return row
        full = [r for r, _ in runs["full"]]
        empty = [r for r, _ in runs["empty"]]
        ratios = [f / e for f, e in zip(full, empty, strict=True)]
        mid = (len(full) - 1) // 2
        full_median = sorted(full)[mid]
        empty_median = sorted(empty)[mid]
        row.cells["certdrop"] = Cell(
            full_median,
            note=(
                f"{p.outbox_n:,} files in outbox/ first; {len(full)} bursts each into a full and an "
                f"empty outbox, alternating: empty {empty_median:,.0f}/s; full/empty "
                f"{sorted(ratios)[mid]:.0%} (pairs {min(ratios):.0%}-{max(ratios):.0%})"
            ),
        )
        row.target = ">= 90% of the empty-outbox burst"
        row.target_value = 0.9 * empty_median
        row.details["certdrop"] = {
            "n": len(files),
            "outbox_n": p.outbox_n,
            "full_per_second": [round(r, 1) for r in full],
            "empty_per_second": [round(r, 1) for r in empty],
            "full_cpu_seconds": [c for _, c in runs["full"]],
            "empty_cpu_seconds": [c for _, c in runs["empty"]],
        }
        return row

    def backup_during_burst(self) -> list[Row]:
        """`certdrop backup` of an index of `index_n` certificates while a folder burst runs,
        against the same burst without a backup: the burst must keep >= 80% of its rate and
        the backup (the command, start to finish) take <= 5 s. The two alternate, `bursts`
        pairs through fresh daemons each with the index filled (untimed) first."""
        p = self.params
        suffix = "100k" if p.index_n == 100_000 else str(p.index_n)
        rate_row = Row(
            id=f"backup-{suffix}-burst",
            label=f"folder burst {p.n:,} CSRs, EC P-256, lint off, during a backup of "
            f"{p.index_n:,} certs",
            unit="rate",
        )
        time_row = Row(
            id=f"backup-{suffix}-seconds",
            label=f"certdrop backup of {p.index_n:,} certs during a {p.n:,}-CSR burst",
            unit="seconds",
        )
        if not self.wants("certdrop"):
            return [rate_row, time_row]
        files = self.pool[: p.n]
        runs: dict[str, list[float]] = {"alone": [], "backup": []}
        backups: list[dict[str, Any]] = []
        try:
            for i in range(p.bursts):
                for kind in ("alone", "backup"):
                    with self.daemon(f"backup-{kind}-{i + 1}", "ec-p256", False) as d:
                        fill_s, _ = indexfill.fill(
                            f"sqlite:///{d.database}", d.state, p.index_n, revoked=False
                        )
                        d.start()
                        done: dict[str, Any] = {}
                        thread = None
                        if kind == "backup":
                            dest = d.root / "backup"

                            thread = threading.Thread(
                                target=self._backup_when_under_way, args=(d, dest, done)
                            )
                            thread.start()
                        seconds, _ = self._burst(d, files)
                        if thread is not None:
                            thread.join()
                            if done["rc"] != 0:
                                raise DaemonError(f"certdrop backup failed: {done['out']}")
                            manifest = json.loads((dest / "MANIFEST.json").read_text())
                            backups.append(
                                {
                                    "seconds": round(done["seconds"], 3),
                                    "cpu_seconds": round(done["cpu"], 3),
                                    "index_certificates": manifest["index"]["certificates"],
                                    "index_mb": round(manifest["index"]["size"] / 1e6, 1),
                                }
                            )
                    rate = len(files) / seconds
                    runs[kind].append(rate)
                    extra = (
                        f", backup {done['seconds']:.2f} s ({done['cpu']:.2f} CPU-s)"
                        if kind == "backup"
                        else ""
                    )
                    self.log(
                        f"  certdrop ({p.index_n:,} in index, filled in {fill_s:.1f} s), {kind}: "
                        f"{len(files)} in {seconds:.2f} s = {rate:,.0f}/s{extra}"
                    )
        except (DaemonError, PeerError, OSError) as exc:
            rate_row.cells["certdrop"] = time_row.cells["certdrop"] = Cell(error=str(exc))
            return [rate_row, time_row]
        mid = (p.bursts - 1) // 2
        alone, during = sorted(runs["alone"])[mid], sorted(runs["backup"])[mid]
        ratios = [b / a for a, b in zip(runs["alone"], runs["backup"], strict=True)]
        rate_row.cells["certdrop"] = Cell(
            during,
            note=(
                f"{p.bursts} bursts each with and without a backup, alternating: without "
                f"{alone:,.0f}/s; with/without {sorted(ratios)[mid]:.0%} "
                f"(pairs {min(ratios):.0%}-{max(ratios):.0%})"
            ),
        )
        rate_row.target = ">= 80% of the burst without a backup"
        rate_row.target_value = 0.8 * alone
        rate_row.details["certdrop"] = {
            "n": len(files),
            "index_n": p.index_n,
            "alone_per_second": [round(r, 1) for r in runs["alone"]],
            "backup_per_second": [round(r, 1) for r in runs["backup"]],
        }
        secs = sorted(b["seconds"] for b in backups)
        time_row.cells["certdrop"] = Cell(
            secs[mid],
            note=f"the command start to finish, median of {len(secs)} "
            f"({secs[0]:.2f}-{secs[-1]:.2f} s), "
            f"{sorted(b['cpu_seconds'] for b in backups)[mid]:.2f} CPU-s; "
            f"index copy {backups[0]['index_mb']} MB",
        )
        time_row.target, time_row.target_value = "<= 5 s", 5.0
        time_row.details["certdrop"] = {"backups": backups}
        return [rate_row, time_row]

    @staticmethod
    def _backup_when_under_way(d: CertdropDaemon, dest: Path, done: dict[str, Any]) -> None:
        """`certdrop backup DEST` once the burst's first certificate is out, timed."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(os.scandir(d.outbox)):
            time.sleep(0.02)
        t0, ru0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        res = cd_cli(d.config, "backup", str(dest))
        done["seconds"] = time.perf_counter() - t0
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the daemon is reaped later
        done["cpu"] = ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime
        done["rc"], done["out"] = res.returncode, res.stdout + res.stderr

    def folder_burst_postgresql(self) -> Row:
        """The EC lint-off burst through a daemon whose index is PostgreSQL (a server of
        Debian's postgresql on this machine, its Unix socket, fsync on as in production)
        against the same burst on SQLite; the two alternate, `bursts` pairs through fresh
        daemons (each PostgreSQL daemon on a new database)."""
        p = self.params
        row = Row(
            id="folder-burst-ec-lint-off-postgresql",
            label=f"folder burst {p.n:,} CSRs, EC P-256 CA, lint off, index on PostgreSQL",
            unit="rate",
        )
        if not self.wants("certdrop"):
            return row
        files = self.pool[: p.n]
        runs: dict[str, list[tuple[float, float]]] = {"sqlite": [], "postgresql": []}
        try:
            server = self.pg_server()
            for i in range(p.bursts):
                for kind in ("sqlite", "postgresql"):
                    url = server.url(server.create_database()) if kind == "postgresql" else ""
                    with self.daemon(f"{row.id}-{kind}-{i + 1}", "ec-p256", False, url) as d:
                        d.start()
                        seconds, details = self._burst(d, files)
                    rate = len(files) / seconds
                    runs[kind].append((rate, details["daemon_cpu_seconds"]))
                    self.log(
                        f"  certdrop on {kind}: {len(files)} in {seconds:.2f} s = {rate:,.0f}/s"
                    )
        except (DaemonError, PeerError, OSError, RuntimeError) as exc:
            row.cells["certdrop"] = Cell(error=str(exc))
            return row
        pg = [r for r, _ in runs["postgresql"]]
        lite = [r for r, _ in runs["sqlite"]]
        ratios = [a / b for a, b in zip(pg, lite, strict=True)]
        mid = (len(pg) - 1) // 2
        pg_median, lite_median = sorted(pg)[mid], sorted(lite)[mid]
        row.cells["certdrop"] = Cell(
            pg_median,
            note=(
                f"{len(pg)} bursts each on PostgreSQL (local socket) and on SQLite, alternating: "
                f"SQLite {lite_median:,.0f}/s; PostgreSQL/SQLite {sorted(ratios)[mid]:.0%} "
                f"(pairs {min(ratios):.0%}-{max(ratios):.0%})"
            ),
        )
        row.target = ">= 75% of the SQLite burst"
        row.target_value = 0.75 * lite_median
        row.details["certdrop"] = {
            "n": len(files),
            "postgresql_per_second": [round(r, 1) for r in pg],
            "sqlite_per_second": [round(r, 1) for r in lite],
            "postgresql_cpu_seconds": [c for _, c in runs["postgresql"]],
            "sqlite_cpu_seconds": [c for _, c in runs["sqlite"]],
        }
        return row

    def folder_burst_two_hosts(self) -> Row:
        """The EC lint-off burst into one spool that two daemons share (two hosts on one
        PostgreSQL database, the second joined with init --ca-cert/--ca-key) against the
        same burst through one daemon on PostgreSQL; alternating, `bursts` pairs, each on
        a new database and spool."""
        p = self.params
        row = Row(
            id="folder-burst-ec-lint-off-two-hosts",
            label=f"folder burst {p.n:,} CSRs, EC P-256 CA, lint off, two hosts on one spool",
            unit="rate",
        )
        if not self.wants("certdrop"):
            return row
        files = self.pool[: p.n]
        runs: dict[str, list[float]] = {"one": [], "two": []}
        shares: list[float] = []
        try:
            server = self.pg_server()
            for i in range(p.bursts):
                for kind in ("one", "two"):
                    url = server.url(server.create_database())
                    label = f"{row.id}-{kind}-{i + 1}"
                    with self.daemon(f"{label}-a", "ec-p256", False, url) as d:
                        if kind == "one":
                            d.start()
                            seconds, _ = self._burst(d, files)
                        else:
                            other = CertdropDaemon(
                                self.work / f"certdrop-{label}-b",
                                key_type="ec-p256",
                                database=url,
                                spool=d.spool,
                            )
                            other.init(join=d)
                            with other:
                                d.start()
                                other.start()
                                seconds, _ = self._burst(d, files)
                                other.check_healthy()
                            shares.append(_issued_by_first(d, len(files)))
                    rate = len(files) / seconds
                    runs[kind].append(rate)
                    self.log(
                        f"  certdrop, {kind} host(s): {len(files)} in {seconds:.2f} s = {rate:,.0f}/s"
                    )
        except (DaemonError, PeerError, OSError, RuntimeError) as exc:
            row.cells["certdrop"] = Cell(error=str(exc))
            return row
        two, one = runs["two"], runs["one"]
        ratios = [a / b for a, b in zip(two, one, strict=True)]
        mid = (len(two) - 1) // 2
        two_median, one_median = sorted(two)[mid], sorted(one)[mid]
        row.cells["certdrop"] = Cell(
            two_median,
            note=(
                f"{len(two)} bursts each through two daemons on one spool and through one, "
                f"alternating, on PostgreSQL (local socket): one {one_median:,.0f}/s; two/one "
                f"{sorted(ratios)[mid]:.0%} (pairs {min(ratios):.0%}-{max(ratios):.0%}); the "
                f"first host issued {min(shares):.0%}-{max(shares):.0%} of each burst"
            ),
        )
        row.target = ">= the rate of one daemon"
        row.target_value = one_median
        row.details["certdrop"] = {
            "n": len(files),
            "two_hosts_per_second": [round(r, 1) for r in two],
            "one_host_per_second": [round(r, 1) for r in one],
            "first_host_share": [round(x, 3) for x in shares],
            "cores": os.cpu_count(),
        }
        return row

    # --- the big index (issue 21): a burst, start-up, list --expiring, the CRL --------------
    def pg_server(self) -> Any:
        """The bench's PostgreSQL server (Debian's postgresql, Unix socket, fsync on as in
        production), started once per run; stopped by `close`."""
        if self._pg is None:
            sys.path.insert(0, str(BENCH.parent / "tests"))
            from pgserver import PgServer  # the tests' server: initdb + pg_ctl, socket only

            server = PgServer(durable=True)
            server.start()
            self._pg = server
            self.log(f"  PostgreSQL from {server.bindir} on {server.socket_dir}")
        return self._pg

    def close(self) -> None:
        if self._pg is not None:
            self._pg.stop()
            self._pg = None

    def _big_template(self, backend: str) -> str:
        """The big index of `backend`, loaded on first use (once per run): the SQLite
        file's path, or the name of the template database."""
        if backend not in self._big_index:
            n = self.params.big_index_n
            with self.daemon(f"big-index-{backend}-template", "ec-p256", False) as d:
                der = indexfill.sample_der(d.state, dt.datetime.now(dt.UTC))
                issuer = CertificateAuthority.load(d.state).id
                self._big_ca[backend] = d
            if backend == "sqlite":
                path = self.work / "big-index.sqlite"
                url = f"sqlite:///{path}"
                where = str(path)
            else:
                server = self.pg_server()
                where = server.create_database()
                url = server.url(where)
            t0 = time.perf_counter()
            counts = indexfill.fill_bulk(
                url, der, n, now=dt.datetime.now(dt.UTC), issuer=issuer, log=self.log
            )
            self.log(f"  {backend}: {n:,} certificates loaded in {time.perf_counter() - t0:.1f} s")
            self.log(f"    {counts}")
            self._big_index[backend] = where
        return self._big_index[backend]

    def big_index(self, backend: str) -> list[Row]:
        """Issue 21's targets on an index of `big_index_n` certificates (indexfill.MIX:
        10% revoked, 5% superseded, 10% expired, the rest valid, ending over a year), on
        SQLite or PostgreSQL: the EC lint-off burst against the same burst into an empty
        index (alternating, `bursts` pairs through fresh daemons), start-up to READY,
        `certdrop list --expiring 30` (the command, interpreter start included, the
        daemon running) and the CRL's regeneration (CrlPublisher.regenerate, lint off,
        before the daemon starts: its start-up then checks a current CRL, as a restart
        does). Each full daemon gets its own copy of the index, loaded once per run."""
        p = self.params
        size = "1m" if p.big_index_n == 1_000_000 else str(p.big_index_n)
        where = "PostgreSQL (local socket)" if backend == "postgresql" else "SQLite"
        of = f"{p.big_index_n:,} certs in index, {where}"
        burst = Row(
            id=f"folder-burst-ec-lint-off-{size}-{backend}",
            label=f"folder burst {p.n:,} CSRs, EC P-256 CA, lint off, {of}",
            unit="rate",
        )
        start = Row(
            id=f"startup-{size}-{backend}",
            label=f"start-up to READY=1, {of}",
            unit="seconds",
            target="<= 2 s",
            target_value=2.0,
        )
        listing = Row(
            id=f"list-expiring-30-{size}-{backend}",
            label=f"certdrop list --expiring 30, {of}",
            unit="seconds",
            target="<= 1 s",
            target_value=1.0,
        )
        revoked_n = int(p.big_index_n * indexfill.MIX["revoked"])
        crl = Row(
            id=f"crl-{size}-{backend}",
            label=f"CRL regeneration, {revoked_n:,} revoked, lint off, {of}",
            unit="seconds",
            target="<= 0.5 s",
            target_value=0.5,
        )
        rows = [burst, start, listing, crl]
        if not self.wants("certdrop"):
            return rows
        files = self.pool[: p.n]
        runs: dict[str, list[dict[str, Any]]] = {"empty": [], "full": []}
        try:
            template = self._big_template(backend)
            for i in range(p.bursts):
                for kind in ("empty", "full"):
                    url = ""
                    if backend == "postgresql":
                        server = self.pg_server()
                        url = server.url(
                            server.create_database(template if kind == "full" else None)
                        )
                    label = f"big-index-{backend}-{kind}-{i + 1}"
                    # the CA of the index's certificates (a restart's state, not a new CA)
                    join = self._big_ca[backend]
                    with self.daemon(label, "ec-p256", False, url, join) as d:
                        run: dict[str, Any] = {}
                        if kind == "full" and backend == "sqlite":
                            for suffix in ("-wal", "-shm"):
                                Path(f"{d.database}{suffix}").unlink(missing_ok=True)
                            shutil.copyfile(template, d.database)
                            # on disk before the daemon starts, as PostgreSQL's copy of its
                            # template is (CREATE DATABASE ... FILE_COPY fsyncs the files):
                            # else the burst's first checkpoint flushes the 1.4 GB copy
                            _fsync(d.database)
                        # the CRL from the index as the daemon makes it; published, so the
                        # start is a restart's (a current CRL checked, not made)
                        run["crl_seconds"], run["crl_cpu"], entries = self._regenerate_crl(d)
                        if entries != (revoked_n if kind == "full" else 0):
                            raise DaemonError(f"the CRL has {entries} entries")
                        ready = d.start()
                        seconds, details = self._burst(d, files)
                        run |= {"rate": len(files) / seconds, "ready": ready, **details}
                        if kind == "full":
                            run["list_seconds"], run["list_cpu"], run["list_lines"] = (
                                self._list_expiring(d)
                            )
                    runs[kind].append(run)
                    self.log(
                        f"  {backend}, {kind} index: READY {ready:.2f} s, {len(files)} in "
                        f"{seconds:.2f} s = {run['rate']:,.0f}/s"
                        + (
                            f"; list --expiring 30 {run['list_seconds']:.2f} s "
                            f"({run['list_lines']:,} lines); CRL {run['crl_seconds']:.2f} s"
                            if kind == "full"
                            else ""
                        )
                    )
        except (DaemonError, PeerError, OSError, RuntimeError, CertdropError) as exc:
            for row in rows:
                row.cells["certdrop"] = Cell(error=str(exc))
            return rows
        mid = (len(runs["full"]) - 1) // 2

        def median(kind: str, key: str) -> float:
            return float(sorted(r[key] for r in runs[kind])[mid])

        full, empty = [r["rate"] for r in runs["full"]], [r["rate"] for r in runs["empty"]]
        ratios = sorted(f / e for f, e in zip(full, empty, strict=True))
        burst.cells["certdrop"] = Cell(
            median("full", "rate"),
            note=f"{len(full)} bursts each into the full and an empty index, alternating: "
            f"empty {median('empty', 'rate'):,.0f}/s; full/empty {ratios[mid]:.0%} "
            f"(pairs {ratios[0]:.0%}-{ratios[-1]:.0%})",
        )
        burst.target = ">= 90% of the empty-index burst"
        burst.target_value = 0.9 * median("empty", "rate")
        start.cells["certdrop"] = Cell(
            median("full", "ready"),
            note=f"median of {len(full)}; empty index {median('empty', 'ready'):.2f} s",
        )
        lines = runs["full"][0]["list_lines"]
        listing.cells["certdrop"] = Cell(
            median("full", "list_seconds"),
            note=f"median of {len(full)}; {lines:,} lines; daemon running; "
            f"CPU {median('full', 'list_cpu'):.2f} s",
        )
        crl.cells["certdrop"] = Cell(
            median("full", "crl_seconds"),
            note=f"median of {len(full)}; CrlPublisher.regenerate; "
            f"CPU {median('full', 'crl_cpu'):.2f} s",
        )
        keys = (
            "rate",
            "ready",
            "list_seconds",
            "list_cpu",
            "crl_seconds",
            "crl_cpu",
            "daemon_cpu_seconds",
        )
        details = {
            kind: {k: [round(float(r[k]), 3) for r in runs[kind] if k in r] for k in keys}
            for kind in runs
        }
        for row in rows:
            row.details["certdrop"] = {"big_index_n": p.big_index_n, **details}
        return rows

    @staticmethod
    def _list_expiring(d: CertdropDaemon) -> tuple[float, float, int]:
        """`certdrop list --expiring 30` as an operator runs it: (seconds, CPU seconds,
        lines out)."""
        # as an operator types it: after the burst's tail (the daemon's last batches,
        # syncs and the signing pool going idle), not racing it for the two cores
        _wait_quiet(d, 10.0)
        t0 = time.perf_counter()
        cpu0 = _children_cpu()
        res = cd_cli(d.config, "list", "--expiring", "30")
        seconds = time.perf_counter() - t0
        cpu = _children_cpu() - cpu0
        if res.returncode != 0:
            raise DaemonError(f"certdrop list failed: {(res.stderr or res.stdout).strip()}")
        return seconds, cpu, res.stdout.count("\n")

    @staticmethod
    def _regenerate_crl(d: CertdropDaemon) -> tuple[float, float, int]:
        """The CRL regenerated from the index as the daemon does it, lint off:
        (seconds, CPU seconds of this process, entries)."""
        settings = load_settings(d.config)
        ca = CertificateAuthority.load(d.state)
        store = Store(settings.database_url).open()
        try:
            pub = CrlPublisher(settings.crl, settings.state, store, ca, SystemClock(), None)
            t0, cpu0 = time.perf_counter(), time.process_time()
            facts = pub.regenerate("bench")
            return time.perf_counter() - t0, time.process_time() - cpu0, facts.revoked
        finally:
            store.close()

    def latency(self) -> list[Row]:
        p = self.params
        p50 = Row(
            id="latency-p50", label=f"single drop -> .cer, lint on{self._gap()}: p50", unit="ms"
        )
        p99 = Row(
            id="latency-p99", label=f"single drop -> .cer, lint on{self._gap()}: p99", unit="ms"
        )
        p50.target, p50.target_value = "<= 10 ms", 10.0
        p99.target, p99.target_value = "<= 50 ms", 50.0
        if self.wants("certdrop"):
            try:
                samples = self.certdrop_latency()
                p50.cells["certdrop"] = Cell(percentile(samples, 50))
                p99.cells["certdrop"] = Cell(percentile(samples, 99))
                p50.details["certdrop"] = {
                    "drops": len(samples),
                    "warmup_drops": p.warmup,
                    "gap_seconds": p.latency_gap,
                    "mean_ms": round(statistics.fmean(samples), 2),
                    "max_ms": round(max(samples), 2),
                }
                self.log(
                    f"  certdrop: p50 {p50.value('certdrop'):.1f} ms, p99 {p99.value('certdrop'):.1f} ms"
                )
            except (DaemonError, PeerError, OSError) as exc:
                p50.cells["certdrop"] = Cell(error=str(exc))
                p99.cells["certdrop"] = Cell(error=str(exc))
        # peers: the per-CSR times of their EC runs (one request, one certificate)
        for column in ("openssl-x509", "openssl-ca", "easy-rsa", "cfssl-sign", "cfssl-serve-1"):
            if not self.wants(column):
                continue
            if not self._installed(column):
                p50.cells[column] = p99.cells[column] = Cell(note="not installed")
                continue
            try:
                m = self.peer_measure(column, "ec-p256")
            except (PeerError, OSError) as exc:
                p50.cells[column] = p99.cells[column] = Cell(error=str(exc))
                continue
            ms = [d * 1000 for d in m.durations]
            p50.cells[column] = Cell(percentile(ms, 50))
            p99.cells[column] = Cell(percentile(ms, 99), note=f"{len(ms)} requests, no lint")
        if self.wants("ceiling"):
            ca = self.peer_ca("ec-p256")
            pems = [pem for _, pem in self.pool[: min(p.n, 300)]]
            m = ceiling.sign_rate(ca.cert_pem, ca.key_pem, pems, True, processes=1)
            ms = [d * 1000 for d in m.durations]
            p50.cells["ceiling"] = Cell(percentile(ms, 50))
            p99.cells["ceiling"] = Cell(percentile(ms, 99), note="build+sign+lint in-process")
        return [p50, p99]

    def _gap(self) -> str:
        gap = self.params.latency_gap
        return f", {gap:g} s apart" if gap else ""

    def certdrop_latency(self) -> list[float]:
        p = self.params
        files = self.pool[: p.warmup + p.latency_drops]
        samples: list[float] = []
        with self.daemon("latency", "ec-p256", lint=True) as d:
            d.start()
            with OutboxWatcher(d.outbox) as watcher:
                for i, (name, data) in enumerate(files):
                    [drop] = self._stage(d, [(name, data)])
                    t0 = time.perf_counter()
                    drop.do()
                    t1 = self._wait(d, watcher, [name], t0, min(15.0, p.stall_seconds))
                    if p.latency_gap:
                        time.sleep(p.latency_gap)
                    if i >= p.warmup:
                        samples.append((t1 - t0) * 1000)
            peers.verify(d.ca_cert, [d.outbox / f"{files[-1][0]}.cer"])
        return samples

    def p12(self) -> Row:
        p = self.params
        row = Row(
            id="p12-ec-aes256",
            label=f"p12, server-side EC keygen, aes256, lint on ({p.p12_n:,})",
            unit="rate",
            target=">= 250/s",
            target_value=250.0,
        )
        if self.wants("certdrop"):
            try:
                files = [(f"p{i:05d}", csrs.enrollment(i)) for i in range(p.p12_n)]
                with self.daemon("p12", "ec-p256", lint=True) as d:
                    d.start()
                    seconds, details = self._burst(d, files)
                    missing = [n for n, _ in files if not (d.outbox / f"{n}.p12").exists()]
                    if missing:
                        raise DaemonError(f"{len(missing)} p12 files missing, e.g. {missing[0]}")
                    self._check_p12(d, files[-1][0])
                rate = len(files) / seconds
                row.cells["certdrop"] = Cell(rate)
                row.details["certdrop"] = details
                self.log(f"  certdrop: {len(files)} p12 in {seconds:.2f} s = {rate:,.0f}/s")
            except (DaemonError, PeerError, OSError) as exc:
                row.cells["certdrop"] = Cell(error=str(exc))
        cap = p.peer_seconds
        for column in ("openssl-x509", "openssl-ca", "easy-rsa"):
            if not self.wants(column):
                continue
            if not self._installed(column):
                row.cells[column] = Cell(note="not installed")
                continue
            try:
                ca = self.peer_ca("ec-p256")
                folder = self.work / f"{column}-p12"
                runner: peers.OpensslP12 | peers.EasyRSAP12
                if column == "openssl-x509":
                    runner = peers.OpensslP12(peers.OpensslX509(ca, folder))
                elif column == "openssl-ca":
                    runner = peers.OpensslP12(peers.OpensslCA(ca, folder))
                else:
                    runner = peers.EasyRSAP12(peers.EasyRSA("ec-p256", folder))
                m = runner.run(p.p12_n, cap)
                note = "genpkey+req, sign, pkcs12 -export: 3 processes per p12"
                if column == "easy-rsa":
                    note = "build-client-full + export-p12"
                if m.done < p.p12_n:
                    note += f"; {m.done} of {p.p12_n} in the {cap:g} s cap"
                row.cells[column] = Cell(m.rate, note=note)
                self.log(f"  {column}: {m.done} p12 in {m.seconds:.2f} s = {m.rate:,.1f}/s")
            except (PeerError, OSError) as exc:
                row.cells[column] = Cell(error=str(exc))
        if self.wants("ceiling"):
            ca = self.peer_ca("ec-p256")
            n = min(p.p12_n, 600)
            two = ceiling.p12_rate(ca.cert_pem, ca.key_pem, n, True, processes=2)
            one = ceiling.p12_rate(ca.cert_pem, ca.key_pem, max(n // 2, 1), True, processes=1)
            row.cells["ceiling"] = Cell(
                two.rate, note=f"keygen+sign+lint+p12, 2 processes; 1 process {one.rate:,.0f}/s"
            )
        return row

    @staticmethod
    def _check_p12(d: CertdropDaemon, name: str) -> None:
        lines = (d.state / "passwords" / f"{name}.txt").read_text().splitlines()
        key, cert, _ = pkcs12.load_key_and_certificates(
            (d.outbox / f"{name}.p12").read_bytes(), lines[1].strip().encode()
        )
        if key is None or cert is None:
            raise DaemonError(f"{name}.p12 lacks its key or certificate")

    def crl(self) -> list[Row]:
        p = self.params
        size = "100k" if p.crl_n == 100_000 else str(p.crl_n)
        off = Row(
            id=f"crl-{size}-lint-off",
            label=f"CRL regeneration, {p.crl_n:,} revoked, lint off",
            unit="seconds",
            target="<= 0.5 s",
            target_value=0.5,
        )
        on = Row(
            id=f"crl-{size}-lint-on",
            label=f"CRL regeneration, {p.crl_n:,} revoked, lint on",
            unit="seconds",
            target="<= 0.5 s",
            target_value=0.5,
        )
        entries: list[tuple[int, dt.datetime]] = []
        if self.wants("certdrop"):
            try:
                d = CertdropDaemon(self.work / "certdrop-crl")
                d.init()
                fill_s, entries = indexfill.fill(
                    f"sqlite:///{d.database}", d.state, p.crl_n, revoked=True
                )
                self.log(f"  index filled with {p.crl_n:,} revoked in {fill_s:.1f} s")
                t_off, t_on, how, details = self._certdrop_crl(d, p.crl_n)
                off.cells["certdrop"] = Cell(t_off, note=how)
                on.cells["certdrop"] = Cell(t_on, note=how + ", pkilint on the CRL")
                off.details["certdrop"] = on.details["certdrop"] = details
                self.log(f"  certdrop: {t_off:.2f} s, with lint {t_on:.2f} s ({details})")
            except (DaemonError, PeerError, OSError, RuntimeError, CertdropError) as exc:
                off.cells["certdrop"] = on.cells["certdrop"] = Cell(error=str(exc))
        if self.wants("openssl-ca"):
            try:
                ca = self.peer_ca("ec-p256")
                oca = peers.OpensslCA(ca, self.work / "openssl-ca-crl")
                peers.openssl_index(oca.folder / "index.txt", p.crl_n, revoked=True)
                t0 = time.perf_counter()
                oca.gencrl()
                off.cells["openssl-ca"] = Cell(time.perf_counter() - t0, note="openssl ca -gencrl")
            except (PeerError, OSError) as exc:
                off.cells["openssl-ca"] = Cell(error=str(exc))
        if self.wants("ceiling"):
            ca = self.peer_ca("ec-p256")
            if not entries:
                now = dt.datetime.now(dt.UTC).replace(microsecond=0)
                entries = [
                    (int.from_bytes(os.urandom(16), "big") >> 1, now) for _ in range(p.crl_n)
                ]
            bulk = ceiling.crl_bulk_seconds(ca.cert_pem, ca.key_pem, entries)
            loop_n = min(p.crl_n, 10_000)
            loop = ceiling.crl_loop_seconds(ca.cert_pem, ca.key_pem, entries[:loop_n])
            off.cells["ceiling"] = Cell(
                bulk,
                note=f"bulk builder, build+sign+DER; add_revoked_certificate in a loop: "
                f"{loop:.2f} s for {loop_n:,} (quadratic)",
            )
        return [off, on]

    @staticmethod
    def _certdrop_crl(d: CertdropDaemon, n: int) -> tuple[float, float, str, dict[str, Any]]:
        """certdrop's CRL regeneration, without and with lint: (off, on, what, details).

        With `certdrop.publish.crl` (the daemon's path): `CrlPublisher.regenerate` — index
        read, build_crl, lint when given a linter, crl.der + crl.pem written atomically.
        Without it: the index read, `CertificateAuthority.build_crl_der` (older certdrop:
        `build_crl` + DER) (+ lint).
        """
        settings = load_settings(d.config)
        ca = CertificateAuthority.load(d.state)
        store = Store(settings.database_url).open()
        details: dict[str, Any] = {}
        try:
            now = dt.datetime.now(dt.UTC)
            t0 = time.perf_counter()
            with store.begin() as conn:
                revoked = list(revoked_entries(conn))
            t1 = time.perf_counter()
            if hasattr(ca, "build_crl_der"):
                der = ca.build_crl_der(revoked, 1, now, now + dt.timedelta(days=7))
            else:
                crl = ca.build_crl(revoked, 1, now, now + dt.timedelta(days=7))
                der = crl.public_bytes(serialization.Encoding.DER)
            t2 = time.perf_counter()
            if len(revoked) != n:
                raise DaemonError(f"the index has {len(revoked)} revoked entries, expected {n}")
            details |= {
                "index_read_seconds": round(t1 - t0, 3),
                "build_crl_der_seconds": round(t2 - t1, 3),
                "crl_bytes": len(der),
            }
            try:
                publish: Any = importlib.import_module("certdrop.publish.crl")
            except ImportError:
                publish = None
            if publish is not None and hasattr(publish, "CrlPublisher"):
                times = []
                for linter in (None, shared_linter()):
                    pub = publish.CrlPublisher(
                        settings.crl, settings.state, store, ca, SystemClock(), linter
                    )
                    t = time.perf_counter()
                    facts = pub.regenerate("bench")
                    times.append(time.perf_counter() - t)
                    if facts.revoked != n:
                        raise DaemonError(f"the published CRL has {facts.revoked} entries, not {n}")
                details["publisher_seconds"] = [round(x, 3) for x in times]
                return times[0], times[1], "CrlPublisher.regenerate", details
            t3 = time.perf_counter()
            findings = shared_linter().crl(der)
            lint_s = time.perf_counter() - t3
            if findings:
                raise DaemonError(f"the CRL does not lint clean: {findings[:3]}")
            return t2 - t0, t2 - t0 + lint_s, "index read + build_crl + DER", details
        finally:
            store.close()

    def startup(self) -> list[Row]:
        p = self.params
        start = Row(
            id="startup-100k" if p.index_n == 100_000 else f"startup-{p.index_n}",
            label=f"start-up to READY=1, {p.index_n:,} certs in index",
            unit="seconds",
            target="<= 2 s",
            target_value=2.0,
        )
        rss = Row(
            id="memory-after-start",
            label="memory after start (PSS, with workers)",
            unit="mb",
            target="<= 100 MB",
            target_value=100.0,
        )
        if self.wants("certdrop"):
            try:
                with self.daemon("startup-empty", "ec-p256", lint=True) as d:
                    empty = d.start()
                    _settle(d.pid)
                    empty_mem = d.memory()
                with self.daemon("startup", "ec-p256", lint=True) as d:
                    fill_s, _ = indexfill.fill(
                        f"sqlite:///{d.database}", d.state, p.index_n, revoked=False
                    )
                    self.log(f"  index filled with {p.index_n:,} certificates in {fill_s:.1f} s")
                    ready = d.start()
                    settle_s, settle_cpu = _settle(d.pid)  # worker processes finish loading
                    main_mb = d.rss_mb()
                    mem = d.memory()
                start.cells["certdrop"] = Cell(ready, note=f"empty index: {empty:.2f} s")
                start.details["certdrop"] = {
                    "ready_seconds_empty_index": round(empty, 3),
                    "after_ready_settle_seconds": round(settle_s, 2),
                    "after_ready_cpu_seconds": round(settle_cpu, 2),
                }
                rss.cells["certdrop"] = Cell(
                    mem["pss_mb"],
                    note=f"{p.index_n:,} certs in index; {mem['processes']:.0f} processes; RSS of "
                    f"the main process {main_mb:.0f} MB, RSS summed over all "
                    f"{mem['rss_sum_mb']:.0f} MB (counts shared pages once per process)",
                )
                rss.details["certdrop"] = {
                    "main_rss_mb": round(main_mb, 1),
                    **mem,
                    "empty_index": empty_mem,
                }
                self.log(
                    f"  certdrop: READY in {ready:.2f} s (empty index {empty:.2f} s), "
                    f"RSS {main_mb:.0f} MB main, {mem['rss_sum_mb']:.0f} MB with workers"
                )
            except (DaemonError, OSError, RuntimeError) as exc:
                start.cells["certdrop"] = Cell(error=str(exc))
                rss.cells["certdrop"] = Cell(error=str(exc))
        cf = self.cfssl_idle()
        if isinstance(cf, Exception):
            rss.cells["cfssl-serve-1"] = Cell(error=str(cf))
        elif cf:
            rss.cells["cfssl-serve-1"] = Cell(cf["pss_mb"], note="no index; after start")
        return [start, rss]

    def idle(self) -> Row:
        p = self.params
        row = Row(
            id="idle-cpu",
            label=f"idle CPU over {p.idle_seconds:g} s, with worker processes",
            unit="cpu",
            target="~0 (< 1%)",
            target_value=1.0,
        )
        if self.wants("certdrop"):
            try:
                with self.daemon("idle", "ec-p256", lint=True) as d:
                    d.start()
                    settle_s, settle_cpu = _settle(d.pid)
                    pct = _idle_cpu(d.pid, p.idle_seconds)
                row.cells["certdrop"] = Cell(
                    pct,
                    note=f"measured once start-up work after READY was over "
                    f"({settle_cpu:.2f} CPU-s in the {settle_s:.1f} s after READY)",
                )
                self.log(f"  certdrop: {pct:.2f}% CPU idle")
            except (DaemonError, OSError) as exc:
                row.cells["certdrop"] = Cell(error=str(exc))
        cf = self.cfssl_idle()
        if isinstance(cf, Exception):
            row.cells["cfssl-serve-1"] = Cell(error=str(cf))
        elif cf:
            row.cells["cfssl-serve-1"] = Cell(cf["cpu_pct"])
        return row

    def cfssl_idle(self) -> dict[str, float] | Exception | None:
        """cfssl serve's memory (PSS) after start and its idle CPU (once per run)."""
        if not (self.wants("cfssl-serve-1") and self._installed("cfssl-serve-1")):
            return None
        if self._cfssl_idle is None:
            try:
                serve = peers.CfsslServe(self.peer_ca("ec-p256"), self.work / "cfssl-idle")
                with serve:
                    _settle(serve.pid)
                    rss_mb = tree_memory_mb(serve.pid)["pss_mb"]
                    pct = _idle_cpu(serve.pid, self.params.idle_seconds)
                self._cfssl_idle = {"pss_mb": rss_mb, "cpu_pct": pct}
            except (PeerError, OSError) as exc:
                self._cfssl_idle = exc
        return self._cfssl_idle

    def rollover(self) -> Row:
        """`certdrop rollover` run by the operator (its own process, as from a shell) while
        the daemon runs: seconds until the command has returned, which it does once the
        daemon signs with the new CA; then a request dropped right away must come back
        signed by the new CA (openssl verify against the new ca.cer alone)."""
        p = self.params
        row = Row(
            id="rollover",
            label="rollover takes effect in a running daemon",
            unit="seconds",
            target="<= 2 s",
            target_value=2.0,
        )
        if not self.wants("certdrop"):
            return row
        files = self.pool[: p.rollovers + 20]
        runs: list[dict[str, float]] = []
        daemon_side: list[float] = []
        try:
            with self.daemon("rollover", "ec-p256", lint=True) as d:
                d.start()
                # the first CA issued a few: it has certificates to keep revocable
                self._burst(d, files[:20])
                _settle(d.pid, limit=5.0)
                for i, (name, data) in enumerate(files[20:]):
                    # the daemon's part alone: the command put into the control table as
                    # the CLI does, until the daemon's answer (no CLI process start-up)
                    daemon_side.append(_control_rollover(d.database))
                    before = d.ca_cert.read_bytes()
                    t0 = time.perf_counter()
                    res = cd_cli(d.config, "rollover")
                    t_effect = time.perf_counter() - t0
                    if res.returncode != 0:
                        raise DaemonError(f"certdrop rollover failed: {res.stderr.strip()}")
                    if d.ca_cert.read_bytes() == before:
                        raise DaemonError("certdrop rollover returned, but ca.cer is the old one")
                    [drop] = self._stage(d, [(name, data)])
                    with OutboxWatcher(d.outbox) as watcher:
                        t1 = time.perf_counter()
                        drop.do()
                        self._wait(d, watcher, [name], t1, p.stall_seconds)
                    t_first = time.perf_counter() - t0
                    peers.verify(d.ca_cert, [d.outbox / f"{name}.cer"])
                    runs.append({"effect": t_effect, "first_cert": t_first})
                    self.log(
                        f"  certdrop: rollover {i + 1} took effect in {t_effect:.2f} s; the new "
                        f"CA's first certificate {t_first:.2f} s after the command began"
                    )
        except (DaemonError, PeerError, OSError) as exc:
            row.cells["certdrop"] = Cell(error=str(exc))
            return row
        effects = sorted(r["effect"] for r in runs)
        median = effects[(len(effects) - 1) // 2]
        firsts = sorted(r["first_cert"] for r in runs)
        inside = sorted(daemon_side)[(len(daemon_side) - 1) // 2]
        row.cells["certdrop"] = Cell(
            median,
            note=f"median of {len(runs)} 'certdrop rollover' commands; the new CA's first "
            f"certificate {firsts[(len(firsts) - 1) // 2]:.2f} s after the command began; "
            f"the daemon's part (control table to answer) {inside:.2f} s",
        )
        row.details["certdrop"] = {
            "effect_seconds": [round(r["effect"], 3) for r in runs],
            "first_certificate_seconds": [round(r["first_cert"], 3) for r in runs],
            "daemon_side_seconds": [round(x, 3) for x in daemon_side],
        }
        return row


def _control_rollover(database: Path) -> float:
    """Seconds from a rollover put into the daemon's control table to its answer."""
    from certdrop.index import control as commands

    store = Store(f"sqlite:///{database}").open()
    try:
        t0 = time.perf_counter()
        with store.begin() as conn:
            control_id = commands.push(conn, "rollover", {"actor": "bench"}, SystemClock().now())
        answer = commands.wait_result(store, control_id, 60.0)
        seconds = time.perf_counter() - t0
    finally:
        store.close()
    if answer is None or not answer.startswith("ok:"):
        raise DaemonError(f"the daemon's rollover: {answer or 'no answer within 60 s'}")
    return seconds


def _settle(pid: int, limit: float = 15.0) -> tuple[float, float]:
    """Wait until start-up work after READY (worker processes loading) is over.

    Returns (seconds waited, CPU seconds used meanwhile): done when one second passes
    with under 2% CPU, or after `limit` seconds.
    """
    t0, c0 = time.perf_counter(), tree_cpu_seconds(pid)
    while time.perf_counter() - t0 < limit:
        c = tree_cpu_seconds(pid)
        time.sleep(1.0)
        if tree_cpu_seconds(pid) - c < 0.02:
            break
    return time.perf_counter() - t0, tree_cpu_seconds(pid) - c0


def _wait_quiet(d: CertdropDaemon, limit: float) -> None:
    """Until the daemon (and its workers) used under 5% of a core for 0.25 s, at most
    `limit` seconds."""
    deadline = time.monotonic() + limit
    last = d.cpu_seconds()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = d.cpu_seconds()
        if now - last < 0.0125:
            return
        last = now


def _children_cpu() -> float:
    """CPU seconds (user + system) of this process's waited-for children so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _idle_cpu(pid: int, seconds: float) -> float:
    """CPU % of a process and its descendants over `seconds`."""
    c0 = tree_cpu_seconds(pid)
    time.sleep(seconds)
    return (tree_cpu_seconds(pid) - c0) / seconds * 100


def run_workload(bench: Bench, workload: str) -> list[Row]:
    if workload == "folder-burst-ec-lint-off":
        return [bench.folder_burst("ec-p256", lint=False)]
    if workload == "folder-burst-ec-lint-on":
        return [bench.folder_burst("ec-p256", lint=True)]
    if workload == "folder-burst-rsa-lint-off":
        return [bench.folder_burst("rsa-2048", lint=False)]
    if workload == "folder-burst-ec-lint-off-100k":
        return [bench.folder_burst_big_index()]
    if workload == "folder-burst-ec-lint-off-outbox":
        return [bench.folder_burst_full_outbox()]
    if workload == "backup-100k":
        return bench.backup_during_burst()
    if workload == "folder-burst-ec-lint-off-postgresql":
        return [bench.folder_burst_postgresql()]
    if workload == "folder-burst-ec-lint-off-two-hosts":
        return [bench.folder_burst_two_hosts()]
    if workload == "index-1m-sqlite":
        return bench.big_index("sqlite")
    if workload == "index-1m-postgresql":
        return bench.big_index("postgresql")
    if workload == "latency":
        return bench.latency()
    if workload == "p12":
        return [bench.p12()]
    if workload == "crl":
        return bench.crl()
    if workload == "startup":
        return bench.startup()
    if workload == "idle":
        return [bench.idle()]
    if workload == "serve":
        if not (bench.wants("certdrop") or bench.wants("openssl-ocsp")):
            return []
        p = bench.params
        return serve_bench.serve_rows(
            bench.work,
            bench.log,
            p.serve_seconds,
            p.serve_rounds,
            p.idle_seconds,
            openssl=bench.wants("openssl-ocsp"),
            ceiling=bench.wants("http-ceiling"),
        )
    if workload == "rollover":
        return [bench.rollover()]
    print(f"unknown workload {workload}", file=sys.stderr)
    return []


def _issued_by_first(d: CertdropDaemon, n: int) -> float:
    """The share of a shared-spool burst the first daemon issued (its audit log's count)."""
    issued = 0
    try:
        for line in (d.state / "audit.log").read_text(errors="replace").splitlines():
            if '"event": "issued"' in line:
                issued += 1
    except OSError:
        return float("nan")
    return issued / n if n else 0.0


def _fsync(path: Path) -> None:
    """Write a file's cached pages to disk (a copy made for a run, before it is timed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
