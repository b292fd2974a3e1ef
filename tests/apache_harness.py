"""A real Apache httpd (Debian's apache2 with mod_ssl) in a temporary ServerRoot.

The instance listens on 127.0.0.1 on a free port, serves HTTPS with a server
certificate from its own little web-server CA (so that curl can verify the server),
and includes a client-authentication block (such as `certdrop apache-config`
prints) from `client_auth.conf`. Nothing is installed or changed outside the
temporary folder; `stop()` ends the instance.

    with ApacheServer(tmp_path / "apache", client_auth_block) as httpd:
        httpd.curl(cert, key)  -> (HTTP status or 0, curl's exit code, stderr)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

APACHE2 = "/usr/sbin/apache2"
MODULES = Path("/usr/lib/apache2/modules")
CURL = shutil.which("curl") or "curl"


def apache_available() -> bool:
    return Path(APACHE2).exists() and (MODULES / "mod_ssl.so").exists()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_user() -> tuple[str, str]:
    """A user and group for Apache's children (root runs the parent in tests)."""
    import grp
    import pwd

    for user, group in (("www-data", "www-data"), ("nobody", "nogroup")):
        try:
            pwd.getpwnam(user)
            grp.getgrnam(group)
        except KeyError:
            continue
        return user, group
    raise RuntimeError("neither www-data nor nobody exists on this machine")


@dataclass
class ServerIdentity:
    """A web-server CA and a server certificate for 127.0.0.1 / localhost."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def make_server_identity(folder: Path) -> ServerIdentity:
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test Web Server CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ident = ServerIdentity(folder / "web-ca.pem", folder / "server.pem", folder / "server.key")
    ident.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    ident.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    ident.key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(ident.key_file, 0o600)
    return ident


CONFIG_TEMPLATE = """\
# test instance: ServerRoot {root}
ServerRoot "{root}"
ServerName 127.0.0.1
Listen 127.0.0.1:{port}
PidFile "{root}/run/httpd.pid"
DefaultRuntimeDir "{root}/run"
ErrorLog "{root}/logs/error.log"
LogLevel warn ssl:info
User {user}
Group {group}

LoadModule mpm_event_module {modules}/mod_mpm_event.so
LoadModule authz_core_module {modules}/mod_authz_core.so
LoadModule socache_shmcb_module {modules}/mod_socache_shmcb.so
LoadModule ssl_module {modules}/mod_ssl.so
LoadModule status_module {modules}/mod_status.so

StartServers 1
ServerLimit 2
ThreadsPerChild 4
MaxRequestWorkers 8
MinSpareThreads 1
MaxSpareThreads 8
KeepAlive Off

SSLSessionCache "shmcb:{root}/run/ssl_scache(65536)"
SSLProtocol -all +TLSv1.2 +TLSv1.3

<Directory />
    Require all denied
</Directory>

<VirtualHost 127.0.0.1:{port}>
    SSLEngine on
    SSLCertificateFile "{server_cert}"
    SSLCertificateKeyFile "{server_key}"
    Include "{root}/conf/client_auth.conf"
    Include "{root}/conf/extra.conf"
    <Location "/">
        SetHandler server-status
    </Location>
</VirtualHost>
"""


class ApacheServer:
    """One Apache httpd instance with its own ServerRoot (the tests run as root)."""

    def __init__(self, root: Path, client_auth: str, identity: ServerIdentity | None = None):
        self.root = root
        self.port = free_port()
        for sub in ("conf", "logs", "run"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self.identity = identity or make_server_identity(root / "tls")
        self.conf = root / "conf" / "httpd.conf"
        user, group = _run_user()
        self.conf.write_text(
            CONFIG_TEMPLATE.format(
                root=root,
                port=self.port,
                user=user,
                group=group,
                modules=MODULES,
                server_cert=self.identity.cert_file,
                server_key=self.identity.key_file,
            )
        )
        self.set_client_auth(client_auth)
        self.extra_conf.write_text("# extra directives for tests\n")
        self.started = False

    # --- the commands certdrop is configured with --------------------------------------------
    @property
    def base_command(self) -> list[str]:
        return [APACHE2, "-d", str(self.root), "-f", str(self.conf)]

    @property
    def configtest_command(self) -> list[str]:
        return [*self.base_command, "-t"]

    @property
    def reload_command(self) -> list[str]:
        return [*self.base_command, "-k", "graceful"]

    @property
    def pid_file(self) -> Path:
        return self.root / "run" / "httpd.pid"

    @property
    def error_log(self) -> Path:
        return self.root / "logs" / "error.log"

    @property
    def extra_conf(self) -> Path:
        return self.root / "conf" / "extra.conf"

    def set_client_auth(self, block: str) -> None:
        (self.root / "conf" / "client_auth.conf").write_text(block)

    def error_log_text(self) -> str:
        try:
            return self.error_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # --- life cycle ---------------------------------------------------------------------------
    def start(self) -> ApacheServer:
        res = subprocess.run(
            [*self.base_command, "-k", "start"], capture_output=True, text=True, timeout=60
        )
        if res.returncode != 0:
            raise RuntimeError(
                f"apache2 did not start: {res.stdout}{res.stderr}\n{self.error_log_text()}"
            )
        self.started = True
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.pid_file.exists() and self._accepts():
                return self
            time.sleep(0.05)
        raise RuntimeError(f"apache2 did not come up on port {self.port}:\n{self.error_log_text()}")

    def _accepts(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 1):
            return True
        return False

    def pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def running(self) -> bool:
        pid = self.pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    def stop(self) -> None:
        if not self.started:
            return
        pid = self.pid()
        subprocess.run([*self.base_command, "-k", "stop"], capture_output=True, timeout=60)
        deadline = time.monotonic() + 20
        while pid is not None and time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
        self.started = False

    def __enter__(self) -> ApacheServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- a client ---------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/"

    def curl(self, cert: Path | None = None, key: Path | None = None) -> tuple[int, int, str]:
        """GET / with an optional client certificate: (HTTP status or 0, exit code, stderr)."""
        cmd = [
            CURL,
            "--silent",
            "--show-error",
            "--output",
            os.devnull,
            "--write-out",
            "%{http_code}",
            "--max-time",
            "20",
            "--cacert",
            str(self.identity.ca_file),
        ]
        if cert is not None:
            cmd += ["--cert", str(cert)]
        if key is not None:
            cmd += ["--key", str(key)]
        cmd.append(self.url)
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        try:
            status = int(res.stdout.strip() or "0")
        except ValueError:
            status = 0
        return status, res.returncode, res.stderr.strip()

    def status_of(self, cert: Path | None = None, key: Path | None = None) -> int:
        return self.curl(cert, key)[0]


def make_foreign_client(
    folder: Path,
    ca_subject: x509.Name,
    subject: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey | None = None,
) -> tuple[Path, Path]:
    """A client certificate under the issuer name `ca_subject`, signed by `issuer_key`

    (default: a key nobody trusts, so the name may well be that of a trusted CA)."""
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    ca_key = issuer_key or ec.generate_private_key(ec.SECP256R1())
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_file, key_file = folder / "foreign.pem", folder / "foreign.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file
