"""The rows of `certdrop serve`: OCSP beside OpenSSL's own responder, GET /crl.der, idle.

One CA made by `certdrop init`, certificates issued and revoked through certdrop's own
issue layer, the delegated responder's key and certificate the daemon would make. OpenSSL's
responder (`openssl ocsp -index index.txt -port N -rsigner -rkey -CA`) gets the same CA,
the same responder key and certificate, and an index.txt of the same certificates. Both
answer the same requests (nonces on) from the load generator (ocsp_load.py) over two
connections; they are measured in turns, `rounds` times each, and each cell is the median.
The machine is shared: each round's pair (certdrop, then openssl, seconds apart) is
compared on its own, and the spread of those ratios is shown beside the medians.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from cd_daemon import clean_env, tree_cpu_seconds, tree_memory_mb
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID
from ocsp_load import LoadResult, get, post, run_load
from report import Cell, Row

from certdrop.clock import SystemClock
from certdrop.config import load_settings
from certdrop.service.runtime import Runtime

CERTS = 200  # certificates in the index; every tenth revoked
REQUESTS = 4000  # distinct requests (each its own nonce), sent round robin
CONNECTIONS = 2
WARMUP = 0.5  # ocsp_load.run_load's default: answered, not counted


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} ended with status {proc.returncode} at start")
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class ServeBench:
    """A CA with issued and revoked certificates, and the two responders on it."""

    def __init__(self, work: Path, log: Callable[[str], None]) -> None:
        self.root = work / "serve"
        self.log = log
        self.port = _free_port()
        self.openssl_port = _free_port()
        self.ceiling_port = _free_port()
        self.config = self.root / "certdrop.toml"
        self.root.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            '[paths]\nspool = "spool"\nstate = "state"\n'
            '[ca]\ncommon_name = "certdrop bench CA"\n'
            f'[http]\nlisten = "127.0.0.1:{self.port}"\nworkers = 2\n'
        )
        env = {**clean_env(), "PYTHONPATH": os.pathsep.join(sys.path)}
        subprocess.run(
            [sys.executable, "-m", "certdrop.cli", "--config", str(self.config), "init"],
            check=True,
            capture_output=True,
            env=env,
        )
        self.env = env
        self.settings = load_settings(self.config)
        self.state = self.settings.state
        self.expect: list[str] = []  # the status each request must get
        self.nonces: list[bytes] = []
        self._issue()

    def _issue(self) -> None:
        rt = Runtime.build(self.settings, SystemClock())
        certs: list[x509.Certificate] = []
        try:
            inbox = self.settings.spool / "inbox"
            for i in range(CERTS):
                key = ec.generate_private_key(ec.SECP256R1())
                csr = (
                    x509.CertificateSigningRequestBuilder()
                    .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"u{i}")]))
                    .sign(key, hashes.SHA256())
                )
                path = inbox / f"u{i}.req"
                path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
                rt.batches.handle_inbox_file(path, "client")
                certs.append(
                    x509.load_pem_x509_certificate(
                        (self.settings.spool / "outbox" / f"u{i}.cer").read_bytes()
                    )
                )
            revoked = certs[::10]
            for c in revoked:
                rt.revoker.revoke(f"{c.serial_number:X}", "keyCompromise")
            rt.responder.renew()
        finally:
            rt.close()
        ca = x509.load_pem_x509_certificate((self.state / "ca.cer").read_bytes())
        # OpenSSL's index.txt for the same certificates
        now = dt.datetime.now(dt.UTC).strftime("%y%m%d%H%M%SZ")
        lines = []
        for i, c in enumerate(certs):
            end = c.not_valid_after_utc.strftime("%y%m%d%H%M%SZ")
            if c in revoked:
                lines.append(
                    f"R\t{end}\t{now},keyCompromise\t{c.serial_number:X}\tunknown\t/CN=u{i}"
                )
            else:
                lines.append(f"V\t{end}\t\t{c.serial_number:X}\tunknown\t/CN=u{i}")
        (self.root / "index.txt").write_text("\n".join(lines) + "\n")
        self.ders: list[bytes] = []
        for j in range(REQUESTS):
            c = certs[j % len(certs)]
            nonce = secrets.token_bytes(16)
            self.ders.append(
                ocsp.OCSPRequestBuilder()
                .add_certificate(c, ca, hashes.SHA1())
                .add_extension(x509.OCSPNonce(nonce), critical=False)
                .build()
                .public_bytes(serialization.Encoding.DER)
            )
            self.nonces.append(nonce)
            self.expect.append("revoked" if c in revoked else "good")

    # --- the responders ----------------------------------------------------------------------------
    def _start_python(self, args: list[str], port: int, what: str) -> subprocess.Popen[bytes]:
        """A Python responder listening on `port`, once every worker accepts."""
        proc = subprocess.Popen(
            [sys.executable, *args],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_port(port, proc, what)
        time.sleep(0.5)  # every worker accepting
        return proc

    def start_certdrop(self) -> subprocess.Popen[bytes]:
        return self._start_python(
            ["-m", "certdrop.cli", "--config", str(self.config), "serve"],
            self.port,
            "certdrop serve",
        )

    def start_openssl(self) -> subprocess.Popen[bytes]:
        responder = str(self.state / "ocsp-responder.pem")
        proc = subprocess.Popen(
            [
                "openssl",
                "ocsp",
                "-index",
                str(self.root / "index.txt"),
                "-port",
                str(self.openssl_port),
                "-rsigner",
                responder,
                "-rkey",
                responder,
                "-CA",
                str(self.state / "ca.cer"),
                "-nmin",
                "60",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait_answer(self.openssl_port, proc)
        return proc

    def start_ceiling(self) -> subprocess.Popen[bytes]:
        """aiohttp answering a constant body (bench/http_ceiling.py): the HTTP layer alone."""
        script = str(Path(__file__).with_name("http_ceiling.py"))
        return self._start_python([script, str(self.ceiling_port)], self.ceiling_port, "ceiling")

    def _wait_answer(self, port: int, proc: subprocess.Popen[bytes]) -> None:
        """Wait until `openssl ocsp` answers a real request: a connection closed without
        one (what _wait_port makes) leaves its single-threaded loop stuck in that read."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"openssl ocsp ended with status {proc.returncode} at start")
            try:
                with socket.create_connection(("127.0.0.1", port), 2) as s:
                    s.sendall(post("/ocsp", f"127.0.0.1:{port}", self.ders[0]))
                    if s.recv(64).startswith(b"HTTP/1."):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"openssl ocsp did not answer on port {port}")

    def _check(self) -> Callable[[int, bytes], bool]:
        """Every answer: successful and carrying its request's nonce; every 50th also
        parsed, with the status its certificate has."""
        seen = [0]

        def check(i: int, body: bytes) -> bool:
            if b"\x0a\x01\x00" not in body[:8] or self.nonces[i] not in body:
                return False
            seen[0] += 1
            if seen[0] % 50:
                return True
            status = ocsp.load_der_ocsp_response(body).certificate_status
            return status.name.lower() == self.expect[i]

        return check

    def ocsp_load(self, port: int, seconds: float) -> LoadResult:
        reqs = [post("/ocsp", f"127.0.0.1:{port}", d) for d in self.ders]
        return run_load(
            ("127.0.0.1", port),
            reqs,
            connections=CONNECTIONS,
            seconds=seconds,
            check=self._check(),
        )

    # --- the rows ------------------------------------------------------------------------------------
    def rows(
        self, seconds: float, rounds: int, idle_seconds: float, openssl: bool, ceiling: bool
    ) -> list[Row]:
        ocsp_row = Row(id="ocsp", label="OCSP responses, nonces on, 2 connections", unit="rate")
        p99_row = Row(
            id="ocsp-p99",
            label="OCSP answer time p99 (same run)",
            unit="ms",
            target="<= 10 ms",
            target_value=10.0,
        )
        crl_row = Row(
            id="crl-http",
            label="GET /crl.der, keep-alive, 2 connections",
            unit="rate",
            target=">= 5,000/s",
            target_value=5000.0,
        )
        runs: dict[str, list[LoadResult]] = {"certdrop": [], "openssl-ocsp": [], "http-ceiling": []}
        crl_runs: list[LoadResult] = []
        worker_cpu: list[float] = []
        openssl_cpu: list[float] = []
        for r in range(rounds):
            proc = self.start_certdrop()
            try:
                c0 = tree_cpu_seconds(proc.pid)
                res = self.ocsp_load(self.port, seconds)
                worker_cpu.append(tree_cpu_seconds(proc.pid) - c0)
                runs["certdrop"].append(res)
                crl_runs.append(
                    run_load(
                        ("127.0.0.1", self.port),
                        [get("/crl.der", "127.0.0.1")],
                        connections=CONNECTIONS,
                        seconds=seconds,
                    )
                )
            finally:
                _stop(proc)
            self.log(
                f"  certdrop serve round {r + 1}: {res.rate:,.0f}/s, p99 "
                f"{res.percentile_ms(99):.2f} ms, GET /crl.der {crl_runs[-1].rate:,.0f}/s "
                f"(load {os.getloadavg()[0]:.1f})"
            )
            if openssl:
                proc = self.start_openssl()
                try:
                    c0 = tree_cpu_seconds(proc.pid)
                    res = self.ocsp_load(self.openssl_port, seconds)
                    openssl_cpu.append(tree_cpu_seconds(proc.pid) - c0)
                    runs["openssl-ocsp"].append(res)
                finally:
                    _stop(proc)
                self.log(
                    f"  openssl ocsp round {r + 1}: {res.rate:,.0f}/s, p99 "
                    f"{res.percentile_ms(99):.2f} ms (load {os.getloadavg()[0]:.1f})"
                )
            if ceiling:
                proc = self.start_ceiling()
                try:
                    reqs = [post("/ocsp", f"127.0.0.1:{self.ceiling_port}", d) for d in self.ders]
                    res = run_load(
                        ("127.0.0.1", self.ceiling_port),
                        reqs,
                        connections=CONNECTIONS,
                        seconds=seconds,
                    )
                    runs["http-ceiling"].append(res)
                finally:
                    _stop(proc)
                self.log(f"  aiohttp ceiling round {r + 1}: {res.rate:,.0f}/s")
        for tool, results in runs.items():
            if not results:
                continue
            rate = statistics.median(r.rate for r in results)
            p99 = statistics.median(r.percentile_ms(99) for r in results)
            errors = sum(r.errors for r in results)
            gen = statistics.median(r.cpu_seconds / r.seconds * 100 for r in results)
            note = f"load generator {gen:.0f}% of a core"
            if errors:
                note += f"; {errors} WRONG ANSWERS"
            ocsp_row.cells[tool] = Cell(rate, note=note, error="wrong answers" if errors else "")
            p99_row.cells[tool] = Cell(
                p99, note=f"p50 {statistics.median(r.percentile_ms(50) for r in results):.2f} ms"
            )
            ocsp_row.details[tool] = {
                "rates": [round(r.rate, 1) for r in results],
                "p50_ms": [round(r.percentile_ms(50), 3) for r in results],
                "p99_ms": [round(r.percentile_ms(99), 3) for r in results],
                "generator_cpu_pct": [round(r.cpu_seconds / r.seconds * 100, 1) for r in results],
                "reconnects": [r.reconnects for r in results],
                "errors": errors,
            }
        for tool, cpus in (("certdrop", worker_cpu), ("openssl-ocsp", openssl_cpu)):
            if not runs[tool] or not any(r.done for r in runs[tool]):
                continue
            ocsp_row.details[tool]["responder_cpu_seconds"] = [round(c, 2) for c in cpus]
            per_answer = statistics.median(
                cpu / (r.done * (r.seconds + WARMUP) / r.seconds) * 1e6
                for cpu, r in zip(cpus, runs[tool], strict=True)
                if r.done
            )
            ocsp_row.cells[tool].note += f"; the responder {per_answer:.0f} us CPU an answer"
        if runs["openssl-ocsp"]:
            base = statistics.median(r.rate for r in runs["openssl-ocsp"])
            ocsp_row.target = f">= 1.5x openssl ocsp ({1.5 * base:,.0f}/s)"
            ocsp_row.target_value = 1.5 * base
            pairs = [
                c.rate / o.rate
                for c, o in zip(runs["certdrop"], runs["openssl-ocsp"], strict=True)
                if o.rate > 0
            ]
            if pairs:
                cell = ocsp_row.cells["certdrop"]
                cell.note += (
                    f"; round by round x{min(pairs):.2f}-x{max(pairs):.2f} openssl's, "
                    f"median x{statistics.median(pairs):.2f}"
                )
                ocsp_row.details["certdrop"]["pair_ratios"] = [round(x, 2) for x in pairs]
            if runs["http-ceiling"]:
                # what the HTTP layer alone reaches against openssl: the target's room
                alone = [
                    c.rate / o.rate
                    for c, o in zip(runs["http-ceiling"], runs["openssl-ocsp"], strict=True)
                    if o.rate > 0
                ]
                ocsp_row.cells["http-ceiling"].note += (
                    f"; a constant body, no OCSP work: x{statistics.median(alone):.2f} openssl's "
                    f"(rounds x{min(alone):.2f}-x{max(alone):.2f})"
                )
        rate = statistics.median(r.rate for r in crl_runs)
        gen = statistics.median(r.cpu_seconds / r.seconds * 100 for r in crl_runs)
        crl_row.cells["certdrop"] = Cell(rate, note=f"load generator {gen:.0f}% of a core")
        crl_row.details["certdrop"] = {"rates": [round(r.rate, 1) for r in crl_runs]}
        return [ocsp_row, p99_row, crl_row, *self.idle_rows(idle_seconds)]

    def idle_rows(self, seconds: float) -> list[Row]:
        cpu_row = Row(
            id="serve-idle-cpu",
            label=f"certdrop serve idle CPU over {seconds:g} s",
            unit="cpu",
            target="~0 (< 1%)",
            target_value=1.0,
        )
        mem_row = Row(
            id="serve-memory",
            label="certdrop serve memory (PSS, all processes)",
            unit="mb",
            target="<= 60 MB",
            target_value=60.0,
        )
        proc = self.start_certdrop()
        try:
            # a few answers first, as a running service has given
            self.ocsp_load(self.port, 0.5)
            time.sleep(1.0)
            c0 = tree_cpu_seconds(proc.pid)
            time.sleep(seconds)
            pct = (tree_cpu_seconds(proc.pid) - c0) / seconds * 100
            mem = tree_memory_mb(proc.pid)
        finally:
            _stop(proc)
        cpu_row.cells["certdrop"] = Cell(pct, note="the keeper and 2 workers")
        mem_row.cells["certdrop"] = Cell(
            mem["pss_mb"],
            note=f"{mem['processes']:.0f} processes; RSS summed {mem['rss_sum_mb']:.0f} MB",
        )
        mem_row.details["certdrop"] = mem
        self.log(f"  certdrop serve idle: {pct:.2f}% CPU, {mem['pss_mb']:.0f} MB PSS")
        return [cpu_row, mem_row]


def serve_rows(
    work: Path,
    log: Callable[[str], None],
    seconds: float,
    rounds: int,
    idle_seconds: float,
    openssl: bool,
    ceiling: bool = False,
) -> list[Row]:
    try:
        bench = ServeBench(work, log)
    except (OSError, subprocess.CalledProcessError, RuntimeError) as exc:
        return [
            Row(
                id="ocsp",
                label="OCSP responses",
                unit="rate",
                cells={"certdrop": Cell(error=str(exc))},
            )
        ]
    return bench.rows(seconds, rounds, idle_seconds, openssl, ceiling)
