"""OCSP over HTTP with real clients: `openssl ocsp` POSTs (nonce on, the answer verified
with -CAfile), curl GETs the RFC 5019 form, a raw HTTP/1.0 client speaks as mod_ssl does;
hostile bodies; a revocation answered at once; the daemon stopped, answers go on."""

from __future__ import annotations

import base64
import socket
import subprocess
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.x509 import ocsp

from conftest import OPENSSL, CAEnv, DaemonThread, make_env, openssl_csr, stock_linter, wait_result
from serve_kit import ServeProcess, curl, free_port, serve_config, start_serve


@dataclass
class Served:
    env: CAEnv
    daemon: DaemonThread
    srv: ServeProcess
    tmp: Path

    def cert(self, name: str) -> Path:
        return self.env.outbox / f"{name}.cer"

    def openssl_ocsp(self, *args: str) -> str:
        res = subprocess.run(
            [
                OPENSSL,
                "ocsp",
                "-issuer",
                str(self.env.ca_cert),
                "-CAfile",
                str(self.env.ca_cert),
                "-url",
                f"{self.srv.url}/ocsp",
                "-timeout",
                "20",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return res.stdout + res.stderr


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    port = free_port()
    env = make_env(tmp_path / "ca", extra=serve_config(port))
    d = DaemonThread(env).start()  # publishes the CRL, makes the responder certificate
    for name in ("alice", "bob"):
        req, _ = openssl_csr(tmp_path / "users", name, f"/CN={name}", kind="ec:prime256v1")
        env.drop(req)
    for name in ("alice", "bob"):
        assert wait_result(env, name) == "outbox"
    code, out, err = env.cli("revoke", "bob", "--reason", "keyCompromise")
    assert code == 0, (out, err)
    srv = start_serve(env, port)
    s = Served(env, d, srv, tmp_path)
    yield s
    if d.alive():
        d.stop()
    assert srv.stop() == 0, srv.output()


def test_openssl_ocsp_good_revoked_unknown_verified_with_nonce(served: Served) -> None:
    s = served
    out = s.openssl_ocsp("-cert", str(s.cert("alice")), "-respout", str(s.tmp / "a.der"))
    assert "Response verify OK" in out and f"{s.cert('alice')}: good" in out, out
    assert "nonce" not in out.lower(), out  # openssl warns when the nonce is missing or wrong
    out = s.openssl_ocsp("-cert", str(s.cert("bob")), "-respout", str(s.tmp / "b.der"))
    assert "Response verify OK" in out and f"{s.cert('bob')}: revoked" in out, out
    assert "Reason: keyCompromise" in out and "Revocation Time:" in out
    out = s.openssl_ocsp("-serial", "0x1234", "-respout", str(s.tmp / "u.der"))
    assert "Response verify OK" in out and "0x1234: unknown" in out, out
    for f in ("a.der", "b.der", "u.der"):
        assert stock_linter().ocsp_response((s.tmp / f).read_bytes()) == [], f


def test_a_revocation_is_answered_at_once_and_the_daemon_stopped_changes_nothing(
    served: Served,
) -> None:
    s = served
    assert f"{s.cert('alice')}: good" in s.openssl_ocsp("-cert", str(s.cert("alice")))
    code, out, err = s.env.cli("revoke", "alice")  # carried out by the running daemon
    assert code == 0, (out, err)
    assert f"{s.cert('alice')}: revoked" in s.openssl_ocsp("-cert", str(s.cert("alice")))
    s.daemon.stop()
    out = s.openssl_ocsp("-cert", str(s.cert("alice")))
    assert "Response verify OK" in out and f"{s.cert('alice')}: revoked" in out, out
    assert curl(f"{s.srv.url}/crl.der")[0] == 200


def test_rfc5019_get_with_caching_headers(served: Served) -> None:
    s = served
    req = s.tmp / "req.der"
    subprocess.run(
        [
            OPENSSL,
            "ocsp",
            "-issuer",
            str(s.env.ca_cert),
            "-cert",
            str(s.cert("alice")),
            "-no_nonce",
            "-reqout",
            str(req),
        ],
        check=True,
        capture_output=True,
    )
    b64 = urllib.parse.quote(base64.b64encode(req.read_bytes()).decode(), safe="")
    status, h, _ = curl(f"{s.srv.url}/ocsp/{b64}", out=s.tmp / "resp.der")
    assert status == 200 and h["content-type"] == "application/ocsp-response"
    assert "max-age=" in h["cache-control"] and "public" in h["cache-control"]
    assert int(h["cache-control"].split("max-age=")[1].split(",")[0]) <= 60
    assert h["etag"] and h["last-modified"] and h["expires"]
    res = subprocess.run(
        [
            OPENSSL,
            "ocsp",
            "-reqin",
            str(req),
            "-respin",
            str(s.tmp / "resp.der"),
            "-CAfile",
            str(s.env.ca_cert),
            "-resp_text",
        ],
        capture_output=True,
        text=True,
    )
    assert "Response verify OK" in res.stdout + res.stderr and "Cert Status: good" in res.stdout
    # with a nonce, the answer is for that request alone
    subprocess.run(
        [
            OPENSSL,
            "ocsp",
            "-issuer",
            str(s.env.ca_cert),
            "-cert",
            str(s.cert("alice")),
            "-nonce",
            "-reqout",
            str(req),
        ],
        check=True,
        capture_output=True,
    )
    b64 = urllib.parse.quote(base64.b64encode(req.read_bytes()).decode(), safe="")
    status, h, body = curl(f"{s.srv.url}/ocsp/{b64}")
    assert status == 200 and h["cache-control"] == "no-store"
    assert ocsp.load_der_ocsp_response(body).certificate_status == ocsp.OCSPCertStatus.GOOD


def _http10_post(
    port: int, body: bytes, ctype: str = "application/ocsp-request"
) -> tuple[int, bytes]:
    """POST /ocsp as mod_ssl's client does: HTTP/1.0, read to the end of the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(
            b"POST /ocsp HTTP/1.0\r\nHost: 127.0.0.1\r\n"
            + f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), payload


def _ocsp_status(body: bytes) -> ocsp.OCSPResponseStatus:
    assert stock_linter().ocsp_response(body) == []
    return ocsp.load_der_ocsp_response(body).response_status


def test_hostile_requests_get_an_error_status_never_a_crash(served: Served) -> None:
    s = served
    req = s.tmp / "req.der"
    subprocess.run(
        [
            OPENSSL,
            "ocsp",
            "-issuer",
            str(s.env.ca_cert),
            "-cert",
            str(s.cert("alice")),
            "-reqout",
            str(req),
        ],
        check=True,
        capture_output=True,
    )
    status, body = _http10_post(s.srv.port, req.read_bytes())  # as mod_ssl asks
    assert status == 200 and _ocsp_status(body) == ocsp.OCSPResponseStatus.SUCCESSFUL
    for garbage in (b"", b"\x30\x80" * 50, b"GET / HTTP/1.1\r\n", req.read_bytes()[:20]):
        status, body = _http10_post(s.srv.port, garbage)
        assert status == 200 and _ocsp_status(body) == ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    assert _http10_post(s.srv.port, b"\x30" * 20000)[0] == 413  # oversized
    assert _http10_post(s.srv.port, req.read_bytes(), "text/plain")[0] == 415
    status, _, body = curl(f"{s.srv.url}/ocsp/not%20base64!")
    assert status == 200 and _ocsp_status(body) == ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    assert curl(f"{s.srv.url}/ocsp", "-X", "PUT")[0] == 405
    # still answering, both workers alive
    assert len(s.srv.children()) == 2
    assert "Response verify OK" in s.openssl_ocsp("-cert", str(s.cert("alice")))
    assert "Traceback" not in s.srv.output()


def test_base_url_points_issued_certificates_at_the_service(tmp_path: Path) -> None:
    """[http] base_url: the CRL distribution point and the AIA (OCSP, caIssuers) of what the
    daemon issues (signed in its worker processes) lead relying parties to certdrop serve."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import AuthorityInformationAccessOID

    from conftest import lint_clean, load_cert

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = make_env(tmp_path / "ca", extra=serve_config(port, f'base_url = "{base}/"\n'))
    d = DaemonThread(env).start()
    try:
        req, _ = openssl_csr(tmp_path / "users", "carol", "/CN=carol", kind="ec:prime256v1")
        env.drop(req)
        assert wait_result(env, "carol") == "outbox"
    finally:
        d.stop()
    cert = load_cert(env.outbox / "carol.cer")
    assert lint_clean(cert.public_bytes(serialization.Encoding.DER)) == []
    cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert [n.value for n in cdp[0].full_name or []] == [f"{base}/crl.der"]
    aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert [(a.access_method, a.access_location.value) for a in aia] == [
        (AuthorityInformationAccessOID.OCSP, f"{base}/ocsp"),
        (AuthorityInformationAccessOID.CA_ISSUERS, f"{base}/ca.cer"),
    ]
    uri = subprocess.run(
        [OPENSSL, "x509", "-in", str(env.outbox / "carol.cer"), "-noout", "-ocsp_uri"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert uri == f"{base}/ocsp"
    srv = start_serve(env, port)  # the daemon is stopped: serve answers alone
    try:
        status, _, body = curl(f"{base}/ca.cer")  # what a client follows from caIssuers
        assert status == 200 and x509.load_der_x509_certificate(body) == load_cert(env.ca_cert)
        status, _, body = curl(f"{base}/crl.der")
        assert status == 200 and x509.load_der_x509_crl(body).issuer == cert.issuer
        res = subprocess.run(
            [
                OPENSSL,
                "ocsp",
                "-issuer",
                str(env.ca_cert),
                "-CAfile",
                str(env.ca_cert),
                "-cert",
                str(env.outbox / "carol.cer"),
                "-url",
                uri,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "Response verify OK" in res.stdout + res.stderr and ": good" in res.stdout
    finally:
        assert srv.stop() == 0, srv.output()
