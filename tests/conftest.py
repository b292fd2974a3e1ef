"""Shared fixtures: a CA in a temp dir, openssl-made requests, a running daemon."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certdrop.authority.lint import Linter
from certdrop.clock import Clock, SystemClock
from certdrop.config import Settings, load_settings
from certdrop.service.daemon import Daemon

# a real PostgreSQL server, started once per session by the tests that ask (pg_url, index_url)
pytest_plugins = ["pgserver"]

REPO = Path(__file__).resolve().parent.parent
OPENSSL = shutil.which("openssl") or "openssl"


def wait_for(
    pred: Callable[[], Any], timeout: float = 15.0, interval: float = 0.02, what: str = ""
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or pred}")


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


# --- openssl as the users' tool ----------------------------------------------------------------------
def openssl_key(path: Path, kind: str = "rsa:2048") -> Path:
    if kind.startswith("rsa:"):
        run([OPENSSL, "genrsa", "-out", str(path), kind.split(":")[1]])
    elif kind.startswith("ec:"):
        run(
            [
                OPENSSL,
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                f"ec_paramgen_curve:{kind.split(':')[1]}",
                "-out",
                str(path),
            ]
        )
    elif kind == "ed25519":
        run([OPENSSL, "genpkey", "-algorithm", "ed25519", "-out", str(path)])
    else:
        raise ValueError(kind)
    return path


def openssl_csr(
    folder: Path,
    name: str,
    subject: str = "/C=BE/L=Brussels/O=MyOrg/OU=MyDpt/emailAddress=koen@example.org/CN=Koen Van Impe",
    kind: str = "rsa:2048",
    der: bool = False,
    digest: str = "-sha256",
    addext: list[str] | None = None,
    key: Path | None = None,
) -> tuple[Path, Path]:
    """A key and a CSR made the way the howto's users make them. Returns (req, key)."""
    folder.mkdir(parents=True, exist_ok=True)
    key = key or openssl_key(folder / f"{name}.key", kind)
    req = folder / f"{name}.req"
    cmd = [OPENSSL, "req", "-new", "-key", str(key), "-subj", subject, "-out", str(req)]
    if digest:
        cmd.append(digest)
    if der:
        cmd += ["-outform", "DER"]
    for ext in addext or []:
        cmd += ["-addext", ext]
    run(cmd)
    return req, key


def ec_csr(cn: str, attrs: list[x509.NameAttribute] | None = None) -> tuple[bytes, bytes]:
    """A P-256 CSR (PEM) for CN `cn` (or the subject `attrs`) and its key (PEM), made in
    process: for tests that need many requests fast."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(attrs if attrs is not None else [x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return csr.public_bytes(serialization.Encoding.PEM), key_pem


def openssl_verify(
    ca_file: Path, cert: Path, purpose: str = "sslclient", crl: Path | None = None
) -> str:
    cmd = [OPENSSL, "verify", "-CAfile", str(ca_file), "-purpose", purpose]
    if crl is not None:
        cmd += ["-crl_check", "-CRLfile", str(crl)]
    cmd.append(str(cert))
    res = subprocess.run(cmd, capture_output=True, text=True)
    return (res.stdout + res.stderr).strip()


_stock_linter: list[Linter] = []


def stock_linter() -> Linter:
    """pkilint's validators walking the document as pkilint does: the tests' judge, not
    the dispatch certdrop lints with (test_lint_dispatch compares the two)."""
    if not _stock_linter:
        _stock_linter.append(Linter(fast=False))
    return _stock_linter[0]


def lint_clean(der: bytes) -> list[str]:
    """pkilint findings of WARNING or worse ([] = clean)."""
    return stock_linter().certificate(der)


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


# --- a CA in a temp folder -------------------------------------------------------------------------------
BASE_CONFIG = """
[paths]
spool = "spool"
state = "state"

[ca]
common_name = "Test CA"
organization = "MyOrg"
country = "BE"
key_type = "{key_type}"

[policy]
default_profile = "client"
lint = true

[profiles.client]
validity_days = 365
renew_before_days = 30

[profiles.client.subject]
CN = {{ required = true, unique = true }}

[profiles.server]
validity_days = 90
renew_before_days = 10
extended_key_usage = ["server_auth"]
allow_dns_names = true
approval = "manual"

[profiles.server.subject]
CN = {{ required = true }}

[watch]
settle_seconds = 0.2
poll_seconds = 0.2
rescan_seconds = 5
"""


@dataclass
class CAEnv:
    root: Path
    config: Path
    extra: str = ""
    clock: Clock = field(default_factory=SystemClock)

    @property
    def settings(self) -> Settings:
        return load_settings(self.config)

    @property
    def spool(self) -> Path:
        return self.root / "spool"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def inbox(self) -> Path:
        return self.spool / "inbox"

    @property
    def outbox(self) -> Path:
        return self.spool / "outbox"

    @property
    def rejected(self) -> Path:
        return self.spool / "rejected"

    @property
    def pending(self) -> Path:
        return self.spool / "pending"

    @property
    def archive(self) -> Path:
        return self.spool / "archive"

    @property
    def ca_cert(self) -> Path:
        return self.state / "ca.cer"

    def cli(self, *args: str, clock: Clock | None = None) -> tuple[int, str, str]:
        """Run the certdrop CLI in-process; returns (exit code, stdout, stderr)."""
        from click.testing import CliRunner

        from certdrop.cli import app as climod

        runner = CliRunner()
        result = runner.invoke(
            climod.cli,
            ["--config", str(self.config), *args],
            obj={"clock": clock or self.clock},
            catch_exceptions=True,
        )
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            from certdrop.errors import CertdropError

            if isinstance(result.exception, CertdropError):
                return 1, result.stdout, str(result.exception)
            raise result.exception
        return (
            result.exit_code,
            result.stdout,
            result.stderr if result.stderr_bytes is not None else "",
        )

    def cli_proc(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run the certdrop CLI as a separate process, as an operator would."""
        e = dict(os.environ)
        e.pop("CERTDROP_CONFIG", None)
        e.update(env or {})
        return subprocess.run(
            [sys.executable, "-m", "certdrop.cli", "--config", str(self.config), *args],
            capture_output=True,
            text=True,
            env=e,
            timeout=timeout,
        )

    def write_config(
        self, extra: str = "", key_type: str = "ec-p256", replace: dict[str, str] | None = None
    ) -> None:
        text = BASE_CONFIG.format(key_type=key_type)
        for old, new in (replace or {}).items():
            assert old in text, old
            text = text.replace(old, new)
        self.config.write_text(text + "\n" + extra)

    def drop(self, src: Path, name: str | None = None, profile: str | None = None) -> Path:
        """Drop a file into the inbox the way users do: write elsewhere, then move in."""
        folder = self.inbox / profile if profile else self.inbox
        target = folder / (name or src.name)
        tmp = folder / f".{target.name}.part"
        shutil.copyfile(src, tmp)
        os.rename(tmp, target)
        return target


def make_env(
    tmp_path: Path,
    extra: str = "",
    key_type: str = "ec-p256",
    init: bool = True,
    replace: dict[str, str] | None = None,
) -> CAEnv:
    tmp_path.mkdir(parents=True, exist_ok=True)
    env = CAEnv(root=tmp_path, config=tmp_path / "certdrop.toml")
    env.write_config(extra, key_type, replace)
    if init:
        code, out, err = env.cli("init")
        assert code == 0, (out, err)
    return env


@pytest.fixture
def ca_env(tmp_path: Path) -> CAEnv:
    return make_env(tmp_path)


class DaemonThread:
    """A certdrop daemon running in a thread of the test process."""

    def __init__(self, env: CAEnv, clock: Clock | None = None) -> None:
        self.env = env
        self.daemon = Daemon(
            env.settings, clock or env.clock, config_path=env.config, own_process=False
        )
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            self.daemon.run()
        except BaseException as exc:
            self.error = exc

    def start(self) -> DaemonThread:
        self.thread.start()
        wait_for(lambda: self.daemon.ready.is_set() or self.error, 30, what="daemon ready")
        if self.error:
            raise self.error
        return self

    def stop(self) -> None:
        self.daemon.request_stop()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "daemon did not stop"

    def alive(self) -> bool:
        return self.thread.is_alive() and self.daemon.worker.alive()


@pytest.fixture
def daemon(ca_env: CAEnv) -> Iterator[DaemonThread]:
    d = DaemonThread(ca_env).start()
    yield d
    d.stop()


def wait_result(env: CAEnv, name: str, timeout: float = 15.0) -> str:
    """Wait until NAME ends up somewhere; returns 'outbox', 'rejected' or 'pending'."""

    def where() -> str | None:
        if (env.rejected / f"{name}.reason").exists() and (env.rejected / f"{name}.req").exists():
            return "rejected"
        if (env.outbox / f"{name}.cer").exists() and any(env.archive.glob(f"{name}*.req")):
            return "outbox"
        if (env.pending / f"{name}.req").exists():
            return "pending"
        return None

    return str(wait_for(where, timeout, what=f"a result for {name}"))


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=dt.UTC)  # type: ignore[misc]
