"""`certdrop import`: adopting what a real `openssl ca` (or the howto's x509 -req) issued."""

from __future__ import annotations

import datetime as dt
import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certdrop.audit import read_audit
from certdrop.authority.ca import CertificateAuthority
from certdrop.index import listing
from certdrop.index.store import Store
from certdrop.issue.importer import parse_openssl_time
from conftest import (
    OPENSSL,
    CAEnv,
    DaemonThread,
    load_cert,
    make_env,
    openssl_csr,
    openssl_verify,
    run,
)

CNF = """
[ ca ]
default_ca = CA_default

[ CA_default ]
dir = {dir}
database = $dir/index.txt
new_certs_dir = $dir/newcerts
serial = $dir/serial
certificate = $dir/ca.cer
private_key = $dir/ca.key
default_md = sha256
default_days = 365
default_crl_days = 30
policy = policy_any
unique_subject = no
x509_extensions = client
copy_extensions = none

[ policy_any ]
countryName = optional
localityName = optional
organizationName = optional
organizationalUnitName = optional
commonName = supplied
emailAddress = optional

[ req ]
distinguished_name = req_dn
prompt = no

[ req_dn ]
CN = unused

[ certauth ]
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always,issuer:always
basicConstraints = critical,CA:true
keyUsage = critical,keyCertSign,cRLSign

[ client ]
basicConstraints = critical,CA:FALSE
keyUsage = digitalSignature, keyEncipherment, dataEncipherment
extendedKeyUsage = clientAuth
"""


class OpensslCA:
    """An `openssl ca` setup in a folder: openssl.cnf, index.txt, serial, newcerts/."""

    def __init__(self, folder: Path, cn: str, first_serial: str = "01") -> None:
        self.dir = folder
        folder.mkdir(parents=True)
        (folder / "newcerts").mkdir()
        (folder / "index.txt").write_text("")
        (folder / "serial").write_text(first_serial + "\n")
        self.cnf = folder / "openssl.cnf"
        self.cnf.write_text(CNF.format(dir=folder))
        run(
            [
                OPENSSL,
                "req",
                "-config",
                str(self.cnf),
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                str(folder / "ca.key"),
                "-x509",
                "-days",
                "3650",
                "-extensions",
                "certauth",
                "-subj",
                f"/C=BE/L=Brussels/O=MyOrg/OU=MyDpt/CN={cn}",
                "-out",
                str(folder / "ca.cer"),
            ]
        )

    def sign(self, name: str, subject: str, *extra: str) -> Path:
        req, _ = openssl_csr(self.dir / "requests", name, subject=subject)
        out = self.dir / "issued" / f"{name}.cer"
        out.parent.mkdir(exist_ok=True)
        run(
            [
                OPENSSL,
                "ca",
                "-batch",
                "-config",
                str(self.cnf),
                "-in",
                str(req),
                "-out",
                str(out),
                *extra,
            ]
        )
        return out

    def revoke(self, cert: Path, reason: str) -> None:
        run([OPENSSL, "ca", "-config", str(self.cnf), "-revoke", str(cert), "-crl_reason", reason])

    def updatedb(self) -> None:
        run([OPENSSL, "ca", "-config", str(self.cnf), "-updatedb"])

    def index_lines(self) -> list[list[str]]:
        return [line.split("\t") for line in (self.dir / "index.txt").read_text().splitlines()]


def _serial(cert: Path) -> str:
    return format(load_cert(cert).serial_number, "X").rjust(2, "0")


@pytest.fixture(scope="module")
def legacy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A CA run by hand with `openssl ca`: valid, revoked and expired certificates, and
    index lines certdrop must refuse."""
    base = tmp_path_factory.mktemp("legacy")
    ca = OpensslCA(base / "myca", "MyOrg CA")
    alice = ca.sign("alice", "/C=BE/O=MyOrg/OU=MyDpt/emailAddress=alice@example.org/CN=Alice")
    bob = ca.sign("bob", "/C=BE/O=MyOrg/OU=MyDpt/emailAddress=bob@example.org/CN=Bob")
    carol = ca.sign(
        "carol",
        "/C=BE/O=MyOrg/CN=Carol",
        "-startdate",
        "20200101000000Z",
        "-enddate",
        "20210101000000Z",
    )
    ca.revoke(bob, "keyCompromise")
    ca.updatedb()  # carol: V -> E
    status = {line[3]: line[0] for line in ca.index_lines()}
    assert status == {_serial(alice): "V", _serial(bob): "R", _serial(carol): "E"}

    # a certificate of another CA, listed in our index (a mix-up certdrop must catch)
    other = OpensslCA(base / "other", "Other CA", first_serial="A0")
    dave = other.sign("dave", "/CN=Dave")
    index = ca.dir / "index.txt"
    newcerts = ca.dir / "newcerts"
    with index.open("a") as fh:
        fh.write("\t".join(other.index_lines()[0]) + "\n")
        # index.txt says B1 but the file holds alice's certificate
        fh.write("V\t300101000000Z\t\tB1\tunknown\t/CN=Mallory\n")
        fh.write("V\t300101000000Z\t\tC1\tunknown\t/CN=Garbage\n")
        fh.write("V\t300101000000Z\t\tD1\tunknown\t/CN=Missing\n")
        fh.write("this is not an index line\n")
    (newcerts / f"{_serial(dave)}.pem").write_bytes(dave.read_bytes())
    (newcerts / "B1.pem").write_bytes(alice.read_bytes())
    (newcerts / "C1.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n")
    return {"ca": ca, "alice": alice, "bob": bob, "carol": carol, "dave": dave}


def _adopt(tmp_path: Path, ca: OpensslCA) -> CAEnv:
    env = make_env(tmp_path, init=False)
    code, out, err = env.cli(
        "init", "--ca-cert", str(ca.dir / "ca.cer"), "--ca-key", str(ca.dir / "ca.key")
    )
    assert code == 0, (out, err)
    return env


def test_import_openssl_index(tmp_path: Path, legacy: dict[str, object]) -> None:
    ca = legacy["ca"]
    assert isinstance(ca, OpensslCA)
    alice, bob, carol, dave = (Path(str(legacy[k])) for k in ("alice", "bob", "carol", "dave"))
    env = _adopt(tmp_path, ca)

    res = env.cli_proc("import", str(ca.dir / "index.txt"))
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "imported 3 certificate(s)" in out and "1 valid, 1 expired, 1 revoked" in out, out
    assert "importing" not in out  # no progress bar when stdout is not a terminal
    skipped = {line.split()[2]: line for line in out.splitlines() if "index.txt line" in line}
    assert len(skipped) == 5, out
    assert "not signed by this CA (issuer CN=Other CA" in skipped["4"]
    assert "mismatched serial: index.txt says B1" in skipped["5"]
    assert "unparsable" in skipped["6"]
    assert "D1.pem is not in" in skipped["7"]
    assert "not an index.txt line" in skipped["8"]
    # a revoked one was imported: the CRL is published at once and lists it
    from cryptography import x509 as _x509

    crl = _x509.load_pem_x509_crl((env.state / "crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(load_cert(bob).serial_number) is not None

    res = env.cli_proc("list", "--json")
    assert res.returncode == 0, res.stderr
    certs = {c["serial"]: c for c in json.loads(res.stdout)["certificates"]}
    assert set(certs) == {_serial(alice), _serial(bob), _serial(carol)}
    assert _serial(dave) not in certs
    assert {c["source"] for c in certs.values()} == {"imported"}
    assert certs[_serial(alice)]["status"] == "valid"
    assert certs[_serial(alice)]["email"] == "alice@example.org"
    assert certs[_serial(alice)]["profile"] == "client"
    assert certs[_serial(carol)]["status"] == "expired"
    b = certs[_serial(bob)]
    assert b["status"] == "revoked" and b["revocation_reason"] == "keyCompromise"
    index_time = next(line[2] for line in ca.index_lines() if line[0] == "R").split(",")[0]
    assert dt.datetime.fromisoformat(b["revoked_at"]) == parse_openssl_time(index_time)
    assert load_cert(alice).not_valid_after_utc.isoformat() == certs[_serial(alice)]["not_after"]

    # a second run changes nothing and says why
    res = env.cli_proc("import", str(ca.dir / "index.txt"), "--json")
    report = json.loads(res.stdout)
    assert report["imported"] == []
    assert sum("already in the index" in s["reason"] for s in report["skipped"]) == 3

    # revocable: an imported certificate is revoked like one certdrop issued, and the CRL
    # certdrop builds makes openssl refuse both revoked certificates
    store = Store(env.settings.database_url)
    try:
        with store.begin() as conn:
            store.revoke(conn, _serial(alice), "affiliationChanged", env.clock.now())
            revoked = list(listing.revoked_entries(conn))
    finally:
        store.close()
    assert {format(s, "X").rjust(2, "0") for s, _, _ in revoked} == {_serial(alice), _serial(bob)}
    authority = CertificateAuthority.load(env.state)
    now = env.clock.now()
    crl = authority.build_crl(revoked, 1, now, now + dt.timedelta(days=7))
    crl_path = tmp_path / "crl.pem"
    crl_path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    for cert in (alice, bob):
        assert "certificate revoked" in openssl_verify(env.ca_cert, cert, crl=crl_path)

    events = [e for e in read_audit(env.state / "audit.log") if e["event"] == "imported"]
    assert {e["serial"] for e in events} == set(certs)
    ops = [e for e in read_audit(env.state / "audit.log") if e["event"] == "operator"]
    assert ops and ops[0]["command"] == "import" and ops[0]["actor"]


def test_import_folder_of_cer_files_from_the_howto(tmp_path: Path) -> None:
    """The howto's CA: `openssl x509 -req ... -out client.cer`, files side by side."""
    ca = OpensslCA(tmp_path / "myca", "MyOrg CA")
    folder = ca.dir
    for name, cn in (("client", "Koen Van Impe"), ("second", "Second User")):
        req, _key = openssl_csr(folder, name, subject=f"/C=BE/O=MyOrg/OU=MyDpt/CN={cn}")
        run(
            [
                *(OPENSSL, "x509", "-req", "-in", str(req), "-CA", str(folder / "ca.cer")),
                *("-CAkey", str(folder / "ca.key"), "-extfile", str(ca.cnf)),
                *("-extensions", "client", "-days", "365", "-outform", "PEM"),
                *("-out", str(folder / f"{name}.cer")),
                *("-CAcreateserial", "-CAserial", str(folder / "serial.seq")),
            ]
        )
    (folder / "notes.pem").write_text("not a certificate\n")
    env = _adopt(tmp_path / "certdrop", ca)
    res = env.cli_proc("import", str(folder), "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert sorted(i["where"] for i in report["imported"]) == ["client.cer", "second.cer"]
    reasons = {s["where"]: s["reason"] for s in report["skipped"]}
    assert reasons == {
        "ca.cer": "this is the CA certificate itself",
        "notes.pem": "unparsable: notes.pem is not a certificate (PEM or DER)",
    }
    res = env.cli_proc("show", "client", "--json")
    assert res.returncode == 0, res.stderr
    (rec,) = json.loads(res.stdout)["certificates"]
    assert rec["subject"] == "CN=Koen Van Impe,OU=MyDpt,O=MyOrg,C=BE" and rec["status"] == "valid"


def test_import_dry_run_changes_nothing(tmp_path: Path, legacy: dict[str, object]) -> None:
    ca = legacy["ca"]
    assert isinstance(ca, OpensslCA)
    env = _adopt(tmp_path, ca)
    res = env.cli_proc("import", str(ca.dir / "index.txt"), "--dry-run")
    assert res.returncode == 0, res.stderr
    assert "would import 3 certificate(s)" in res.stdout
    res = env.cli_proc("list", "--json")
    assert json.loads(res.stdout)["certificates"] == []


def test_import_refuses_bad_arguments(tmp_path: Path, legacy: dict[str, object]) -> None:
    ca = legacy["ca"]
    assert isinstance(ca, OpensslCA)
    env = _adopt(tmp_path, ca)
    res = env.cli_proc("import", str(ca.dir / "index.txt"), "--profile", "nope")
    assert res.returncode == 1
    assert "--profile 'nope' names no profile; defined: client, server" in res.stderr
    res = env.cli_proc("import", str(ca.dir / "index.txt"), "--certs", str(tmp_path))
    assert res.returncode == 0  # a folder without the certificates: every line is skipped
    assert "imported 0 certificate(s)" in res.stdout
    assert "Traceback" not in res.stderr


def test_import_shows_a_progress_bar_on_a_terminal(
    tmp_path: Path, legacy: dict[str, object]
) -> None:
    ca = legacy["ca"]
    assert isinstance(ca, OpensslCA)
    env = _adopt(tmp_path, ca)
    master, slave = pty.openpty()
    e = dict(os.environ)
    e.pop("CERTDROP_CONFIG", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "certdrop.cli",
            "--config",
            str(env.config),
            "import",
            str(ca.dir / "index.txt"),
        ],
        stdout=slave,
        stderr=subprocess.PIPE,
        env=e,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=60) == 0
    os.close(master)
    screen = b"".join(chunks).decode(errors="replace")
    assert "importing" in screen and "8/8" in screen, screen
    assert "imported 3 certificate(s)" in screen


def _crl_serials(env: CAEnv) -> set[int]:
    """The serials the published CRL lists, as `openssl crl -text` reads them."""
    text = run([OPENSSL, "crl", "-in", str(env.state / "crl.pem"), "-noout", "-text"]).stdout
    return {
        int(line.split(":", 1)[1], 16)
        for line in text.splitlines()
        if line.strip().startswith("Serial Number:")
    }


def test_import_json_publishes_the_crl_with_the_adopted_revocations(
    tmp_path: Path, legacy: dict[str, object]
) -> None:
    ca = legacy["ca"]
    assert isinstance(ca, OpensslCA)
    bob = load_cert(Path(str(legacy["bob"])))
    env = _adopt(tmp_path, ca)

    # a dry run publishes nothing, and says so
    res = env.cli_proc("import", str(ca.dir / "index.txt"), "--json", "--dry-run")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["crl"] == {"status": "unchanged", "detail": "dry run"}
    assert not (env.state / "crl.pem").exists()

    # stdout is the one JSON document; the CRL it reports lists the revoked certificate
    res = env.cli_proc("import", str(ca.dir / "index.txt"), "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["counts"]["revoked"] == 1
    assert doc["crl"]["status"] == "published"
    number = (
        x509.load_pem_x509_crl((env.state / "crl.pem").read_bytes())
        .extensions.get_extension_for_class(x509.CRLNumber)
        .value.crl_number
    )
    assert doc["crl"]["detail"].startswith(
        f"CRL {number} published in {env.state / 'crl.pem'} and "
    )
    assert "(1 revoked, next update " in doc["crl"]["detail"]
    assert _crl_serials(env) == {bob.serial_number}
    assert "certificate revoked" in openssl_verify(
        env.ca_cert, Path(str(legacy["bob"])), crl=env.state / "crl.pem"
    )

    # nothing new adopted: the CRL stays as it is
    res = env.cli_proc("import", str(ca.dir / "index.txt"), "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["crl"] == {
        "status": "unchanged",
        "detail": "no revoked certificate was imported",
    }


def test_import_json_while_the_daemon_runs_and_when_the_crl_cannot_be_written(
    tmp_path: Path, legacy: dict[str, object]
) -> None:
    ca = legacy["ca"]
    assert isinstance(ca, OpensslCA)
    bob = load_cert(Path(str(legacy["bob"])))
    env = _adopt(tmp_path / "running", ca)
    d = DaemonThread(env).start()
    try:
        res = env.cli_proc("import", str(ca.dir / "index.txt"), "--json")
    finally:
        d.stop()
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["crl"]["status"] == "published", doc["crl"]
    assert _crl_serials(env) == {bob.serial_number}

    # the CRL cannot be replaced: the report still comes as JSON, the exit status says so
    env = _adopt(tmp_path / "broken", ca)
    (env.state / "crl.der").mkdir()
    res = env.cli_proc("import", str(ca.dir / "index.txt"), "--json")
    assert res.returncode == 1
    doc = json.loads(res.stdout)
    assert [i["status"] for i in doc["imported"]].count("revoked") == 1
    assert doc["crl"]["status"] == "failed"
    assert "crl.der" in doc["crl"]["detail"]
    # one line naming the failure, after the log's
    assert res.stderr.splitlines()[-1].startswith("certdrop: error: the CRL was not published: ")
    assert "Traceback" not in res.stderr
