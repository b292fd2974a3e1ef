"""The peers: what people run instead of certdrop, on the same CSRs.

* openssl x509 -req, one process per CSR: the howto's command (SHA-256 instead of SHA-1,
  an -extfile client profile equivalent to certdrop's);
* openssl ca -batch with an index.txt (random serials, unique subjects);
* easy-rsa sign-req (after an untimed import-req), on easy-rsa's own CA of the same
  key type;
* cfssl sign (CLI) and cfssl serve (HTTP API on loopback, 1 and 2 keep-alive clients).

Sequential tools run one CSR after the other until all are signed or the time cap is
reached; the rate is what they did per second. Nothing is made durable (no fsync):
the peers do less work than certdrop, which must survive a crash.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from csrs import PeerCA, subject_of

OPENSSL = shutil.which("openssl") or "openssl"


def _find_easyrsa() -> str | None:
    for p in (shutil.which("easyrsa"), "/usr/share/easy-rsa/easyrsa"):
        if p and Path(p).exists():
            return p
    return None


EASYRSA = _find_easyrsa()
CFSSL = shutil.which("cfssl")

# Debian packages that bring the peers (installed by bench/run when missing)
DEB_PEERS = {"openssl": "openssl", "easy-rsa": "easy-rsa", "cfssl": "golang-cfssl"}


def refresh_paths() -> None:
    """After an apt-get install: find the tools again."""
    global OPENSSL, EASYRSA, CFSSL
    OPENSSL = shutil.which("openssl") or "openssl"
    EASYRSA = _find_easyrsa()
    CFSSL = shutil.which("cfssl")


def available() -> dict[str, bool]:
    return {
        "openssl": shutil.which("openssl") is not None,
        "easy-rsa": EASYRSA is not None,
        "cfssl": CFSSL is not None,
    }


class PeerError(RuntimeError):
    """A peer tool failed on input the bench considers valid."""


@dataclass
class Measure:
    """What one tool did: `done` items in `seconds`, with per-item times when sequential."""

    done: int
    seconds: float
    durations: list[float] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0


def _run(cmd: Sequence[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    res = subprocess.run(
        list(cmd), cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=120
    )
    if res.returncode != 0:
        raise PeerError(
            f"{Path(cmd[0]).name} {cmd[1] if len(cmd) > 1 else ''} failed "
            f"(exit {res.returncode}): {(res.stderr or res.stdout).strip()[-400:]}"
        )
    return res.stdout


def sequential(
    items: Sequence[tuple[str, bytes]],
    step: Callable[[str, Path], Path],
    folder: Path,
    cap_seconds: float,
    prepare: Callable[[str, Path], None] | None = None,
) -> Measure:
    """Run `step(name, req_path)` per item, timed one by one, until done or the cap.

    `prepare` (untimed) runs before each step, for work a peer needs that is not signing.
    """
    folder.mkdir(parents=True, exist_ok=True)
    durations: list[float] = []
    outputs: list[Path] = []
    wall_limit = time.perf_counter() + 3 * cap_seconds + 30
    for name, pem in items:
        req = folder / f"{name}.req"
        req.write_bytes(pem)
        if prepare is not None:
            prepare(name, req)
        t0 = time.perf_counter()
        outputs.append(step(name, req))
        durations.append(time.perf_counter() - t0)
        if sum(durations) >= cap_seconds or time.perf_counter() > wall_limit:
            break
    return Measure(len(durations), sum(durations), durations, outputs)


# --- openssl ----------------------------------------------------------------------------------------
CLIENT_EXT = """\
[ client ]
basicConstraints = critical,CA:FALSE
keyUsage = critical,{key_usage}
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = email:copy
"""

OPENSSL_CA_CNF = """\
[ ca ]
default_ca = bench

[ bench ]
dir = {dir}
database = $dir/index.txt
new_certs_dir = $dir/newcerts
certificate = $dir/ca.cer
private_key = $dir/ca.key
crlnumber = $dir/crlnumber
rand_serial = yes
default_md = sha256
default_days = 365
default_crl_days = 7
policy = policy_any
x509_extensions = client
copy_extensions = none
unique_subject = yes
preserve = no

[ policy_any ]
organizationName = optional
emailAddress = optional
commonName = supplied

"""


def _key_usage(ca: PeerCA) -> str:
    # the subject keys are EC: digitalSignature only (keyEncipherment is for RSA keys)
    return "digitalSignature"


class OpensslX509:
    """The howto's seed procedure: `openssl x509 -req` per CSR."""

    name = "openssl x509 -req"

    def __init__(self, ca: PeerCA, folder: Path) -> None:
        self.folder = folder
        self.ca_cert, self.ca_key = ca.write(folder)
        self.ext = folder / "openssl.cnf"
        self.ext.write_text(CLIENT_EXT.format(key_usage=_key_usage(ca)))
        self.serial = folder / "serial.seq"

    def sign(self, name: str, req: Path) -> Path:
        out = req.with_suffix(".cer")
        _run(
            [
                OPENSSL, "x509", "-req", "-in", str(req),
                "-CA", str(self.ca_cert), "-CAkey", str(self.ca_key),
                "-extfile", str(self.ext), "-extensions", "client",
                "-days", "365", "-sha256", "-outform", "PEM", "-out", str(out),
                "-CAcreateserial", "-CAserial", str(self.serial),
            ]
        )  # fmt: skip
        return out

    def run(self, items: Sequence[tuple[str, bytes]], cap: float) -> Measure:
        return sequential(items, self.sign, self.folder / "work", cap)


class OpensslCA:
    """`openssl ca -batch` with its index.txt database."""

    name = "openssl ca -batch"

    def __init__(self, ca: PeerCA, folder: Path) -> None:
        self.folder = folder
        ca.write(folder)
        (folder / "newcerts").mkdir(exist_ok=True)
        (folder / "index.txt").write_text("")
        (folder / "crlnumber").write_text("01\n")
        self.cnf = folder / "ca.cnf"
        self.cnf.write_text(
            OPENSSL_CA_CNF.format(dir=folder) + CLIENT_EXT.format(key_usage=_key_usage(ca))
        )

    def sign(self, name: str, req: Path) -> Path:
        out = req.with_suffix(".cer")
        _run(
            [
                OPENSSL, "ca", "-batch", "-config", str(self.cnf), "-notext",
                "-in", str(req), "-out", str(out),
            ]
        )  # fmt: skip
        return out

    def run(self, items: Sequence[tuple[str, bytes]], cap: float) -> Measure:
        return sequential(items, self.sign, self.folder / "work", cap)

    def gencrl(self) -> Path:
        out = self.folder / "crl.pem"
        _run([OPENSSL, "ca", "-gencrl", "-config", str(self.cnf), "-out", str(out)])
        return out


def openssl_index(path: Path, n: int, *, revoked: bool) -> None:
    """An openssl ca index.txt with n entries, distinct random serials and subjects: all
    valid ('V', a CA that has been issuing for a while) or all revoked ('R')."""
    expiry = "301231235959Z"
    status, when = ("R", "250101000000Z,keyCompromise") if revoked else ("V", "")
    subject = "/O=Bench/CN=revoked" if revoked else "/O=Bench/CN=Filler"
    with path.open("w") as f:
        for i in range(n):
            serial = secrets.token_hex(16).upper()
            if serial[0] in "89ABCDEF":  # keep it positive in DER without a leading 00
                serial = "1" + serial[1:]
            f.write(f"{status}\t{expiry}\t{when}\t{serial}\tunknown\t{subject} {i:06d}\n")


# --- easy-rsa -------------------------------------------------------------------------------------
class EasyRSA:
    """easy-rsa 3: its own CA of the same key type; import-req (untimed), sign-req (timed)."""

    name = "easy-rsa sign-req"

    def __init__(self, key_type: str, folder: Path) -> None:
        if EASYRSA is None:
            raise PeerError("easy-rsa is not installed")
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ)
        self.env.update(
            EASYRSA=str(Path(EASYRSA).resolve().parent),
            EASYRSA_PKI=str(folder / "pki"),
            EASYRSA_BATCH="1",
            EASYRSA_DIGEST="sha256",
            EASYRSA_CERT_EXPIRE="365",
        )
        if key_type == "ec-p256":
            self.env.update(EASYRSA_ALGO="ec", EASYRSA_CURVE="prime256v1")
        else:
            self.env.update(EASYRSA_ALGO="rsa", EASYRSA_KEY_SIZE=key_type.split("-")[1])
        self._easyrsa("init-pki")
        self._easyrsa("--req-cn=Bench easy-rsa CA", "build-ca", "nopass")
        self.ca_cert = folder / "pki" / "ca.crt"

    def _easyrsa(self, *args: str) -> str:
        assert EASYRSA is not None
        return _run([EASYRSA, *args], cwd=self.folder, env=self.env)

    def import_req(self, name: str, req: Path) -> None:
        self._easyrsa("import-req", str(req), name)

    def sign(self, name: str, req: Path) -> Path:
        self._easyrsa("sign-req", "client", name)
        return self.folder / "pki" / "issued" / f"{name}.crt"

    def run(self, items: Sequence[tuple[str, bytes]], cap: float) -> Measure:
        return sequential(items, self.sign, self.folder / "work", cap, prepare=self.import_req)

    def p12(self, name: str, password: str) -> Path:
        self._easyrsa("build-client-full", name, "nopass")
        self._easyrsa(f"--passout=pass:{password}", "export-p12", name)
        return self.folder / "pki" / "private" / f"{name}.p12"


# --- cfssl -------------------------------------------------------------------------------------------
CFSSL_CONFIG = {
    "signing": {
        "default": {"expiry": "8760h"},
        "profiles": {"client": {"usages": ["digital signature", "client auth"], "expiry": "8760h"}},
    }
}


class CfsslSign:
    """`cfssl sign` per CSR (JSON on stdout; the bench writes NAME.cer from it)."""

    name = "cfssl sign"

    def __init__(self, ca: PeerCA, folder: Path) -> None:
        if CFSSL is None:
            raise PeerError("cfssl is not installed")
        self.folder = folder
        self.ca_cert, self.ca_key = ca.write(folder)
        self.config = folder / "cfssl.json"
        self.config.write_text(json.dumps(CFSSL_CONFIG))

    def sign(self, name: str, req: Path) -> Path:
        assert CFSSL is not None
        out = _run(
            [
                CFSSL, "sign", "-ca", str(self.ca_cert), "-ca-key", str(self.ca_key),
                "-config", str(self.config), "-profile", "client", "-loglevel", "2", str(req),
            ]
        )  # fmt: skip
        cer = req.with_suffix(".cer")
        cer.write_text(json.loads(out)["cert"])
        return cer

    def run(self, items: Sequence[tuple[str, bytes]], cap: float) -> Measure:
        return sequential(items, self.sign, self.folder / "work", cap)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class CfsslServe:
    """`cfssl serve` on loopback, driven through /api/v1/cfssl/sign by keep-alive clients."""

    name = "cfssl serve"

    def __init__(self, ca: PeerCA, folder: Path) -> None:
        if CFSSL is None:
            raise PeerError("cfssl is not installed")
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.ca_cert, self.ca_key = ca.write(folder)
        self.config = folder / "cfssl.json"
        self.config.write_text(json.dumps(CFSSL_CONFIG))
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.startup_seconds = 0.0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 30.0) -> None:
        assert CFSSL is not None
        self.port = free_port()
        log = (self.folder / "serve.log").open("ab")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [
                CFSSL, "serve", "-address", "127.0.0.1", "-port", str(self.port),
                "-ca", str(self.ca_cert), "-ca-key", str(self.ca_key),
                "-config", str(self.config),
            ],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
        )  # fmt: skip
        log.close()
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                if self.proc.poll() is not None or time.perf_counter() - t0 > timeout:
                    self.stop()
                    raise PeerError(
                        "cfssl serve did not start: "
                        + (self.folder / "serve.log").read_text(errors="replace")[-300:]
                    ) from None
                time.sleep(0.01)
        self.startup_seconds = time.perf_counter() - t0

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None

    def __enter__(self) -> CfsslServe:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _client(
        self,
        source: Iterator[tuple[str, bytes]],
        lock: threading.Lock,
        out: Path,
        deadline: float,
        durations: list[float],
        outputs: list[Path],
        errors: list[str],
    ) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            while time.perf_counter() < deadline:
                with lock:
                    item = next(source, None)
                if item is None:
                    return
                name, pem = item
                body = json.dumps({"certificate_request": pem.decode(), "profile": "client"})
                t0 = time.perf_counter()
                conn.request(
                    "POST", "/api/v1/cfssl/sign", body, {"Content-Type": "application/json"}
                )
                resp = conn.getresponse()
                data = resp.read()
                doc = json.loads(data)
                if resp.status != 200 or not doc.get("success"):
                    errors.append(f"{name}: HTTP {resp.status} {data[:200]!r}")
                    return
                cer = out / f"{name}.cer"
                cer.write_text(doc["result"]["certificate"])
                dt = time.perf_counter() - t0
                with lock:
                    durations.append(dt)
                    outputs.append(cer)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            errors.append(f"{exc.__class__.__name__}: {exc}")
        finally:
            conn.close()

    def run(self, items: Sequence[tuple[str, bytes]], cap: float, clients: int) -> Measure:
        out = self.folder / f"work-{clients}"
        out.mkdir(parents=True, exist_ok=True)
        source = iter(items)
        lock = threading.Lock()
        durations: list[float] = []
        outputs: list[Path] = []
        errors: list[str] = []
        t0 = time.perf_counter()
        threads = [
            threading.Thread(
                target=self._client,
                args=(source, lock, out, t0 + cap, durations, outputs, errors),
                daemon=True,
            )
            for _ in range(clients)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        if errors:
            raise PeerError(f"cfssl serve: {errors[0]}")
        return Measure(len(durations), elapsed, durations, outputs)


# --- PKCS#12 with server-side key generation --------------------------------------------------------
class OpensslP12:
    """genpkey + req, then x509 -req (or ca), then pkcs12 -export: three processes per p12.

    OpenSSL 3's pkcs12 defaults are AES-256-CBC, PBKDF2 (2048 iterations), SHA-256 MAC:
    the same as certdrop's "aes256" preset.
    """

    def __init__(self, signer: OpensslX509 | OpensslCA) -> None:
        self.signer = signer
        self.name = signer.name
        self.ca_cert = signer.folder / "ca.cer"

    def make(self, i: int, folder: Path) -> Path:
        cn, email = subject_of(i)
        name = f"p{i:05d}"
        key, req = folder / f"{name}.key", folder / f"{name}.req"
        _run(
            [
                OPENSSL, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-nodes", "-keyout", str(key), "-out", str(req), "-sha256",
                "-subj", f"/O=Bench/emailAddress={email}/CN={cn} p12",
            ]
        )  # fmt: skip
        cer = self.signer.sign(name, req)
        p12 = folder / f"{name}.p12"
        _run(
            [
                OPENSSL, "pkcs12", "-export", "-inkey", str(key), "-in", str(cer),
                "-certfile", str(self.ca_cert), "-name", f"{cn} p12",
                "-out", str(p12), "-passout", f"pass:{secrets.token_urlsafe(16)}",
            ]
        )  # fmt: skip
        key.unlink()
        return p12

    def run(self, n: int, cap: float) -> Measure:
        folder = self.signer.folder / "p12"
        folder.mkdir(parents=True, exist_ok=True)
        return _timed_loop(n, lambda i: self.make(i, folder), cap)


class EasyRSAP12:
    name = "easy-rsa"

    def __init__(self, easyrsa: EasyRSA) -> None:
        self.easyrsa = easyrsa

    def run(self, n: int, cap: float) -> Measure:
        return _timed_loop(
            n, lambda i: self.easyrsa.p12(f"p{i:05d}", secrets.token_urlsafe(16)), cap
        )


def _timed_loop(n: int, step: Callable[[int], Path], cap: float) -> Measure:
    durations: list[float] = []
    outputs: list[Path] = []
    for i in range(n):
        t0 = time.perf_counter()
        outputs.append(step(i))
        durations.append(time.perf_counter() - t0)
        if sum(durations) >= cap:
            break
    return Measure(len(durations), sum(durations), durations, outputs)


def verify(ca_cert: Path, certs: Sequence[Path]) -> None:
    """openssl verify a sample of what a tool produced (a bench must not count junk)."""
    if not certs:
        raise PeerError("no certificate was produced")
    res = subprocess.run(
        [OPENSSL, "verify", "-purpose", "sslclient", "-CAfile", str(ca_cert), *map(str, certs)],
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        raise PeerError(f"openssl verify failed: {(res.stdout + res.stderr).strip()[-300:]}")
