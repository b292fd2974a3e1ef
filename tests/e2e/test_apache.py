"""Apache publication proven against a real Apache httpd (Debian apache2 + mod_ssl).

Each test runs its own Apache (own ServerRoot in a temp dir, 127.0.0.1, free port)
configured with exactly what `certdrop apache-config` prints, and a certdrop daemon
whose configtest/reload commands point at that instance. curl is the client.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from apache_harness import ApacheServer, apache_available, make_foreign_client
from certdrop.clock import Clock, ManualClock
from conftest import (
    CAEnv,
    DaemonThread,
    load_cert,
    make_env,
    openssl_csr,
    wait_for,
    wait_result,
)

pytestmark = pytest.mark.apache

SUBJECT_RULES = """
[profiles.client.subject]
CN = { required = true, unique = true }
O = { equals = "MyOrg" }
OU = { one_of = ["MyDpt", "Other Dpt"] }
emailAddress = { required = true, domains = ["example.org"] }
"""


@pytest.fixture(autouse=True)
def _need_apache() -> None:
    if not apache_available():
        pytest.fail("Debian's apache2 with mod_ssl is needed: run 'make test-deps' (as root)")


@dataclass
class Setup:
    env: CAEnv
    httpd: ApacheServer
    daemon: DaemonThread
    users: Path

    @property
    def ca_file(self) -> Path:
        return self.httpd.root / "certdrop" / "ca-bundle.pem"

    @property
    def crl_file(self) -> Path:
        return self.httpd.root / "certdrop" / "crl.pem"

    @property
    def client_log(self) -> Path:
        return self.httpd.root / "logs" / "clients.log"

    def issue(self, name: str, cn: str, email: str, ou: str = "MyDpt") -> tuple[Path, Path]:
        req, key = openssl_csr(
            self.users, name, f"/C=BE/O=MyOrg/OU={ou}/CN={cn}/emailAddress={email}"
        )
        self.env.drop(req)
        assert wait_result(self.env, name) == "outbox"
        return self.env.outbox / f"{name}.cer", key

    def status(self, cert: Path | None = None, key: Path | None = None) -> int:
        return self.httpd.status_of(cert, key)

    def apache_status(self) -> dict[str, object]:
        code, out, err = self.env.cli("status", "--json")
        assert code == 0, err
        doc: dict[str, object] = json.loads(out)["apache"]
        return doc


def start_setup(tmp_path: Path, clock: Clock | None = None, check_seconds: float = 300) -> Setup:
    # Apache runs first, without client authentication yet (as an existing web server does)
    httpd = ApacheServer(tmp_path / "apache", "# certdrop block goes here\n").start()
    try:
        extra = f"""
[crl]
validity_days = 7
refresh_before_days = 3

[apache]
enabled = true
ca_file = "{httpd.root}/certdrop/ca-bundle.pem"
crl_file = "{httpd.root}/certdrop/crl.pem"
configtest_command = {json.dumps(httpd.configtest_command)}
reload_command = {json.dumps(httpd.reload_command)}
debounce_seconds = 0.2
command_timeout_seconds = 30
"""
        env = make_env(
            tmp_path / "ca",
            extra=extra,
            replace={"[profiles.client.subject]\nCN = { required = true, unique = true }\n": ""},
        )
        with env.config.open("a") as fh:
            fh.write(SUBJECT_RULES)
        # the operator pastes what apache-config prints into the virtual host
        code, block, err = env.cli(
            "apache-config", "--log-file", str(httpd.root / "logs/clients.log")
        )
        assert code == 0, err
        httpd.set_client_auth(block)
        d = DaemonThread(env, clock)
        d.daemon.jobs.crl_check_seconds = check_seconds
        d.start()
    except BaseException:
        httpd.stop()
        raise
    setup = Setup(env, httpd, d, tmp_path / "users")
    # the daemon publishes the files and reloads Apache on its own: from then on a client
    # without a certificate does not even complete the TLS handshake (before: HTTP 403)
    wait_for(lambda: httpd.curl()[1] != 0, timeout=30, what="Apache to require certificates")
    return setup


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    s = start_setup(tmp_path)
    try:
        yield s
    finally:
        s.daemon.stop()
        s.httpd.stop()


def test_apache_lets_in_refuses_and_follows_revocation(setup: Setup, tmp_path: Path) -> None:
    env, httpd = setup.env, setup.httpd
    assert setup.ca_file.read_bytes() == env.ca_cert.read_bytes()
    assert setup.crl_file.read_bytes() == (env.state / "crl.pem").read_bytes()

    alice, alice_key = setup.issue("alice", "Alice Example", "alice@example.org")
    bob, bob_key = setup.issue("bob", "Bob Example", "bob@example.org", ou="Other Dpt")
    # a fresh certificate is let in (the CRL already there, unchanged, is enough)
    assert setup.status(alice, alice_key) == 200
    assert setup.status(bob, bob_key) == 200
    # who connected is logged with the e-mail address (the howto's log format)
    wait_for(
        lambda: setup.client_log.exists() and "alice@example.org" in setup.client_log.read_text()
    )

    # no certificate: refused during the handshake
    status, code, err = httpd.curl()
    assert status != 200 and code != 0, err
    # a certificate from another CA, even one with the very same name, is refused
    ca_subject = load_cert(env.ca_cert).subject
    foreign, foreign_key = make_foreign_client(
        tmp_path / "foreign",
        ca_subject,
        x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "MyOrg"),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "MyDpt"),
                x509.NameAttribute(NameOID.COMMON_NAME, "Mallory"),
                x509.NameAttribute(NameOID.EMAIL_ADDRESS, "mallory@example.org"),
            ]
        ),
    )
    assert setup.status(foreign, foreign_key) != 200
    assert "certificate signature failure" in httpd.error_log_text()

    # revoked by the operator (another process) while everything runs: refused, no manual step
    before = setup.crl_file.read_bytes()
    res = env.cli_proc("revoke", "alice", "--reason", "keyCompromise")
    assert res.returncode == 0, res.stderr
    assert "Apache files follow" in res.stdout
    wait_for(lambda: setup.status(alice, alice_key) != 200, timeout=30, what="alice refused")
    assert setup.crl_file.read_bytes() != before
    assert setup.crl_file.read_bytes() == (env.state / "crl.pem").read_bytes()
    assert "certificate revoked" in httpd.error_log_text()
    # everybody else still gets in
    assert setup.status(bob, bob_key) == 200
    st = setup.apache_status()
    assert st["last"] == "ok" and st["action"] == "reloaded"
    assert httpd.running()


def test_broken_configtest_leaves_apache_serving_old_files(setup: Setup) -> None:
    env, httpd = setup.env, setup.httpd
    alice, alice_key = setup.issue("alice", "Alice Example", "alice@example.org")
    bob, bob_key = setup.issue("bob", "Bob Example", "bob@example.org")
    assert setup.status(alice, alice_key) == 200
    old_ca, old_crl = setup.ca_file.read_bytes(), setup.crl_file.read_bytes()
    pid = httpd.pid()

    # someone breaks the web server's configuration; then alice is revoked
    httpd.extra_conf.write_text("ThisIsNotADirective on\n")
    code, _, err = env.cli("revoke", "alice")
    assert code == 0, err
    wait_for(lambda: setup.apache_status().get("last") == "FAILED", what="the failed publication")
    st = setup.apache_status()
    assert st["action"] == "configtest-failed"
    assert "ThisIsNotADirective" in str(st["detail"])
    # the previous files are back, Apache was not reloaded and keeps serving with them
    assert setup.crl_file.read_bytes() == old_crl
    assert setup.ca_file.read_bytes() == old_ca
    assert httpd.running() and httpd.pid() == pid
    assert setup.status(bob, bob_key) == 200
    assert setup.status(alice, alice_key) == 200  # the old CRL: not yet revoked for Apache
    code, text, _ = env.cli("status")
    assert "FAILED" in next(ln for ln in text.splitlines() if ln.startswith("apache"))

    # fixed: the next periodic check publishes and reloads; alice is out, bob is in
    httpd.extra_conf.write_text("# fixed\n")
    setup.daemon.daemon.jobs.crl()
    wait_for(lambda: setup.status(alice, alice_key) != 200, timeout=30, what="alice refused")
    assert setup.status(bob, bob_key) == 200
    assert setup.crl_file.read_bytes() == (env.state / "crl.pem").read_bytes()
    assert setup.apache_status()["last"] == "ok"


def test_expired_crl_locks_everyone_out_until_the_scheduler_renews_it(tmp_path: Path) -> None:
    """The top complaint: an expired CRL makes mod_ssl refuse every client.

    The daemon's clock starts 8 days back, so its first CRL (7 days) has already expired
    for Apache; moving the injected clock to the present lets the scheduled job renew it.
    """
    real_now = dt.datetime.now(dt.UTC)
    clock = ManualClock(real_now - dt.timedelta(days=8))
    setup = start_setup(tmp_path, clock, check_seconds=0.2)
    try:
        alice, alice_key = setup.issue("alice", "Alice Example", "alice@example.org")
        first = x509.load_pem_x509_crl(setup.crl_file.read_bytes())
        assert first.next_update_utc is not None and first.next_update_utc < real_now
        assert setup.status(alice, alice_key) != 200
        assert "CRL has expired" in setup.httpd.error_log_text()

        # 3.5 days on (by the daemon's clock) the CRL is not due yet: nothing changes
        clock.set(real_now - dt.timedelta(days=4.5))
        setup.daemon.daemon.jobs.crl()
        assert setup.crl_file.read_bytes() == first.public_bytes(serialization.Encoding.PEM)

        # the present: the scheduled job renews it, Apache is reloaded, alice is back in
        clock.set(real_now)
        wait_for(lambda: setup.status(alice, alice_key) == 200, timeout=30, what="alice let in")
        crl = x509.load_pem_x509_crl(setup.crl_file.read_bytes())
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        first_number = first.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        assert number > first_number
        assert crl.last_update_utc == real_now.replace(microsecond=0)
    finally:
        setup.daemon.stop()
        setup.httpd.stop()


def test_apache_config_passes_configtest_with_every_rule_kind(tmp_path: Path) -> None:
    """What apache-config prints is valid for Apache, whatever the policy says."""
    files = tmp_path / "apache-files"
    env = make_env(
        tmp_path / "ca",
        extra=f'[apache]\nca_file = "{files}/ca-bundle.pem"\ncrl_file = "{files}/crl.pem"\n',
        replace={"[profiles.client.subject]\nCN = { required = true, unique = true }\n": ""},
    )
    with env.config.open("a") as fh:
        fh.write(
            """
[profiles.client.subject]
CN = { required = true, pattern = "[A-Z][a-z]+ [A-Z#][a-z']+" }
O = { equals = "O'Brien \\\\ \\"Sons\\", Ltd" }
OU = { one_of = ["R&D", "Q'A"] }
L = { forbidden = true }
emailAddress = { domains = ["example.org", "mail.example.org"] }

[profiles.staff]
extended_key_usage = ["client_auth", "email_protection"]

[profiles.staff.subject]
CN = { required = true }
O = { equals = "Staff" }
"""
        )
    code, block, err = env.cli("apache-config", "--log-file", str(tmp_path / "clients.log"))
    assert code == 0, err
    for directive in (
        "SSLVerifyClient require",
        "SSLVerifyDepth 1",
        "SSLCACertificateFile",
        "SSLCARevocationFile",
        "SSLCARevocationCheck chain",
        "Require expr",
        "%{SSL_CLIENT_S_DN_Email}x",
        "%{SSL_CLIENT_S_DN_O} == 'Staff'",
    ):
        assert directive in block, directive
    httpd = ApacheServer(tmp_path / "apache", block)
    # the files it names must exist for the configtest
    assert f'SSLCACertificateFile "{files}/ca-bundle.pem"' in block
    files.mkdir()
    (files / "ca-bundle.pem").write_bytes(env.ca_cert.read_bytes())
    assert env.cli("crl")[0] == 0
    (files / "crl.pem").write_bytes((env.state / "crl.pem").read_bytes())
    res = subprocess.run(httpd.configtest_command, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr + block


# --- an adopted intermediate CA: the chain's CRLs --------------------------------------------------
def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "BE"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "MyOrg"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _ca_cert(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    path_length: int,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False
        )
        .sign(issuer_key, hashes.SHA256())
    )


def _root_crl(root: x509.Certificate, root_key: ec.EllipticCurvePrivateKey) -> bytes:
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(root.subject)
        .last_update(now)
        .next_update(now + dt.timedelta(days=30))
        .add_extension(x509.CRLNumber(1), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), False
        )
        .sign(root_key, hashes.SHA256())
    )
    return crl.public_bytes(serialization.Encoding.PEM)


def test_intermediate_ca_publishes_the_chain_and_its_crls(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    root_key, inter_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    root = _ca_cert(_name("Root CA"), root_key, _name("Root CA"), root_key, 1)
    inter = _ca_cert(_name("Issuing CA"), inter_key, root.subject, root_key, 0)
    (pki / "root.pem").write_bytes(root.public_bytes(serialization.Encoding.PEM))
    (pki / "inter.pem").write_bytes(inter.public_bytes(serialization.Encoding.PEM))
    (pki / "inter.key").write_bytes(
        inter_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )

    httpd = ApacheServer(tmp_path / "apache", "# certdrop block goes here\n").start()
    d: DaemonThread | None = None
    try:
        extra = f"""
[apache]
enabled = true
ca_file = "{httpd.root}/certdrop/ca-bundle.pem"
crl_file = "{httpd.root}/certdrop/crl.pem"
configtest_command = {json.dumps(httpd.configtest_command)}
reload_command = {json.dumps(httpd.reload_command)}
debounce_seconds = 0.2
"""
        env = make_env(tmp_path / "ca", extra=extra, init=False)
        code, _, err = env.cli(
            "init",
            "--ca-cert", str(pki / "inter.pem"),
            "--ca-key", str(pki / "inter.key"),
            "--ca-chain", str(pki / "root.pem"),
        )  # fmt: skip
        assert code == 0, err
        code, block, err = env.cli("apache-config", "--log-file", str(httpd.root / "logs/c.log"))
        assert code == 0, err
        assert "SSLVerifyDepth 2" in block
        httpd.set_client_auth(block)
        d = DaemonThread(env).start()
        setup = Setup(env, httpd, d, tmp_path / "users")
        wait_for(lambda: httpd.curl()[1] != 0, timeout=30, what="Apache to require certificates")
        # ca_file: the issuing CA and the root above it, merged
        bundle = x509.load_pem_x509_certificates(setup.ca_file.read_bytes())
        assert [c.subject for c in bundle] == [inter.subject, root.subject]

        alice, alice_key = setup.issue("alice", "Alice Example", "alice@example.org")
        # no CRL of the root yet: with SSLCARevocationCheck chain nobody gets in, and
        # status says why
        assert setup.status(alice, alice_key) != 200
        assert "unable to get certificate CRL" in httpd.error_log_text()
        code, text, _ = env.cli("status")
        line = next(ln for ln in text.splitlines() if ln.startswith("apache"))
        assert "warning" in line and "Root CA" in line and "chain-crls" in line

        # the operator drops the root's CRL where certdrop looks; the next check merges it
        (env.state / "chain-crls").mkdir()
        (env.state / "chain-crls" / "root.crl").write_bytes(_root_crl(root, root_key))
        d.daemon.jobs.crl()
        wait_for(lambda: setup.status(alice, alice_key) == 200, timeout=30, what="alice let in")
        blocks = setup.crl_file.read_text().split("-----END X509 CRL-----")[:-1]
        crls = [x509.load_pem_x509_crl((b + "-----END X509 CRL-----\n").encode()) for b in blocks]
        assert [c.issuer for c in crls] == [inter.subject, root.subject]
        # the status is recorded just after the reload that let alice in
        wait_for(
            lambda: "warning" not in env.cli("status", "--json")[1],
            timeout=30,
            what="status without the warning",
        )

        # a certificate the root issued directly (or another issuing CA under it) passes
        # mod_ssl's chain check but not the issuer test of the Require expr
        sibling, sibling_key = make_foreign_client(
            tmp_path / "sibling",
            root.subject,
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "MyOrg"),
                    x509.NameAttribute(NameOID.COMMON_NAME, "Sibling"),
                    x509.NameAttribute(NameOID.EMAIL_ADDRESS, "sibling@example.org"),
                ]
            ),
            issuer_key=root_key,
        )
        assert setup.status(sibling, sibling_key) == 403

        code, _, err = env.cli("revoke", "alice", "--reason", "keyCompromise")
        assert code == 0, err
        wait_for(lambda: setup.status(alice, alice_key) != 200, timeout=30, what="alice refused")
        assert "certificate revoked" in httpd.error_log_text()
    finally:
        if d is not None:
            d.stop()
        httpd.stop()


# --- a two-tier CA: the offline root's CRL ----------------------------------------------------------
def test_two_tier_ca_with_the_root_crl_lets_clients_in(tmp_path: Path) -> None:
    """init --offline-root: the issuing CA and the root in Apache's bundle, the root's CRL
    beside the issuing CA's, SSLCARevocationCheck chain lets a client in; openssl verifies
    the client certificate up to the root; root-crl publishes its next CRL through the
    running daemon."""
    httpd = ApacheServer(tmp_path / "apache", "# certdrop block goes here\n").start()
    d: DaemonThread | None = None
    try:
        extra = f"""
[apache]
enabled = true
ca_file = "{httpd.root}/certdrop/ca-bundle.pem"
crl_file = "{httpd.root}/certdrop/crl.pem"
configtest_command = {json.dumps(httpd.configtest_command)}
reload_command = {json.dumps(httpd.reload_command)}
debounce_seconds = 0.2
"""
        env = make_env(tmp_path / "ca", extra=extra, init=False)
        media, pass_file = tmp_path / "media", tmp_path / "root-pass"
        pass_file.write_text("root secret\n")
        root_args = ["--offline-root", str(media), "--root-passphrase-file", str(pass_file)]
        code, _, err = env.cli("init", *root_args)
        assert code == 0, err
        code, block, err = env.cli("apache-config", "--log-file", str(httpd.root / "logs/c.log"))
        assert code == 0, err
        assert "SSLVerifyDepth 2" in block and "SSLCARevocationCheck chain" in block
        httpd.set_client_auth(block)
        d = DaemonThread(env).start()
        setup = Setup(env, httpd, d, tmp_path / "users")
        wait_for(lambda: httpd.curl()[1] != 0, timeout=30, what="Apache to require certificates")
        root = load_cert(media / "root.cer")
        bundle = x509.load_pem_x509_certificates(setup.ca_file.read_bytes())
        assert [c.subject for c in bundle] == [load_cert(env.ca_cert).subject, root.subject]

        alice, alice_key = setup.issue("alice", "Alice Example", "alice@example.org")
        wait_for(lambda: setup.status(alice, alice_key) == 200, timeout=30, what="alice let in")
        verify = subprocess.run(
            ["openssl", "verify", "-CAfile", str(media / "root.cer"), "-untrusted",
             str(env.state / "chain.pem"), "-untrusted", str(env.ca_cert), str(alice)],
            capture_output=True, text=True,
        )  # fmt: skip
        assert verify.stdout.strip().endswith(": OK"), verify.stdout + verify.stderr

        # the ceremony, while the daemon runs: the new root CRL reaches Apache's file
        res = env.cli_proc("root-crl", *root_args)
        assert res.returncode == 0, res.stderr
        assert "Apache: reloaded" in res.stdout
        blocks = setup.crl_file.read_text().split("-----END X509 CRL-----")[:-1]
        crls = [x509.load_pem_x509_crl((b + "-----END X509 CRL-----\n").encode()) for b in blocks]
        assert crls[1].issuer == root.subject
        assert (
            crls[1].public_bytes(serialization.Encoding.PEM)
            == (media / "root-crl.pem").read_bytes()
        )
        assert setup.status(alice, alice_key) == 200

        code, _, err = env.cli("revoke", "alice", "--reason", "keyCompromise")
        assert code == 0, err
        wait_for(lambda: setup.status(alice, alice_key) != 200, timeout=30, what="alice refused")
    finally:
        if d is not None:
            d.stop()
        httpd.stop()
