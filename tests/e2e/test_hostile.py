"""Hostile input: a corpus of bad, odd and malicious drops, in events and in polling mode.

Each entry is refused with a reason (or ignored where the spec says so, or issued
where it is harmless), the daemon stays alive, and nothing outside the spool is
read or written: an inotify watch on the CA key and on a decoy folder outside the
spool (a valid CSR and a key that symlinks and hard links point to) must see no
open, read, write or attribute change while the corpus is processed.

tests/test_issuance.py has the first hostile cases (symlink, FIFO, directory, hard
link, 5 MiB, socket, garbage PEM, bad signature); this file runs a much larger
corpus, also in polling mode, plus the races: a symlink swapped in after the event
and a file written slowly under its final name.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import ExtensionOID, NameOID

from certdrop.clock import SystemClock
from certdrop.errors import RequestError
from certdrop.index import listing
from certdrop.index.store import Store
from certdrop.service.runtime import Runtime
from conftest import OPENSSL, CAEnv, DaemonThread, make_env, openssl_csr, run, wait_for

CORPUS = Path(__file__).resolve().parents[1] / "corpus"

# --- an inotify spy (Linux), to prove what certdrop does not touch -----------------------------------
IN_ACCESS, IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE = 0x1, 0x2, 0x4, 0x8
IN_OPEN, IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x20, 0x40, 0x80, 0x100, 0x200
IN_DELETE_SELF = 0x400
TOUCH = IN_ACCESS | IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_OPEN | IN_DELETE_SELF
DIR_TOUCH = TOUCH | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE


class InotifySpy:
    """Records every open/read/write/attribute change of the watched paths."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0, ctypes.get_errno()
        self.paths: dict[int, Path] = {}

    def watch(self, path: Path, mask: int) -> None:
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(path), mask)
        assert wd >= 0, (path, ctypes.get_errno())
        self.paths[wd] = path

    def events(self) -> list[tuple[Path, int, str]]:
        out: list[tuple[Path, int, str]] = []
        while True:
            try:
                buf = os.read(self.fd, 65536)
            except BlockingIOError:
                return out
            i = 0
            while i < len(buf):
                wd, mask, _cookie, length = struct.unpack_from("iIII", buf, i)
                name = buf[i + 16 : i + 16 + length].rstrip(b"\0").decode(errors="replace")
                out.append((self.paths.get(wd, Path("?")), mask, name))
                i += 16 + length

    def close(self) -> None:
        os.close(self.fd)


# --- making hostile requests ------------------------------------------------------------------------
def csr_with(
    attrs: list[x509.NameAttribute],
    exts: list[tuple[x509.ExtensionType, bool]] = (),  # type: ignore[assignment]
    key: object | None = None,
) -> bytes:
    k = key or ec.generate_private_key(ec.SECP256R1())
    b = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attrs))
    for ext, critical in exts:
        b = b.add_extension(ext, critical)
    return b.sign(k, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)  # type: ignore[arg-type]


def cn(value: str) -> x509.NameAttribute:
    return x509.NameAttribute(NameOID.COMMON_NAME, value, _validate=False)


def mail(value: str, utf8: bool = False) -> x509.NameAttribute:
    if utf8:
        return x509.NameAttribute(NameOID.EMAIL_ADDRESS, value, _type=_ASN1Type.UTF8String)
    return x509.NameAttribute(NameOID.EMAIL_ADDRESS, value)


def key_pem(key: object) -> bytes:
    return key.private_bytes(  # type: ignore[attr-defined,no-any-return]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass
class Case:
    name: str  # the request's NAME as it lands in outbox/ or rejected/
    expect: str  # "rejected", "outbox", "ignored", "key-refused" (request issued, key refused)
    reason: str = ""  # a part of the reason
    place: Callable[[Path], None] | None = None  # puts the case into the inbox


def file_case(name: str, filename: str, data: bytes, expect: str, reason: str = "") -> Case:
    def place(inbox: Path) -> None:
        tmp = inbox / f".{hashlib.sha1(filename.encode()).hexdigest()}.part"
        tmp.write_bytes(data)
        os.rename(tmp, inbox / filename)

    return Case(name, expect, reason, place)


def openssl_req(folder: Path, name: str, *args: str) -> bytes:
    req, _ = openssl_csr(folder, name, "/CN=" + name.capitalize(), addext=list(args))
    return req.read_bytes()


def build_corpus(src: Path, env: CAEnv, decoy: Path) -> list[Case]:
    """Every hostile case, made with openssl, cryptography or by hand."""
    src.mkdir(parents=True, exist_ok=True)
    good_key = ec.generate_private_key(ec.SECP256R1())
    good = csr_with([cn("Good User")], key=good_key)
    good_der = x509.load_pem_x509_csr(good).public_bytes(serialization.Encoding.DER)
    cases: list[Case] = [file_case("good", "good.req", good, "outbox")]
    add = cases.append

    # --- framing -----------------------------------------------------------------------------
    add(file_case("dertrail", "dertrail.req", good_der + b"\0\0\0", "rejected", "bytes after"))
    add(file_case("dertrunc", "dertrunc.req", good_der[:-12], "rejected", "truncated"))
    add(file_case("derdouble", "derdouble.req", good_der * 2, "rejected", "bytes after"))
    add(file_case("pemlead", "pemlead.req", b"Hello!\n" + good, "rejected", "extra data before"))
    add(file_case("pemkey", "pemkey.req", key_pem(good_key), "rejected", "holds a private key"))
    add(
        file_case(
            "dercert",
            "dercert.req",
            x509.load_pem_x509_certificate(env.ca_cert.read_bytes()).public_bytes(
                serialization.Encoding.DER
            ),
            "rejected",
            "not a valid certificate signing request",
        )
    )
    add(file_case("utf16", "utf16.req", good.decode().encode("utf-16"), "rejected", "neither"))
    add(
        file_case(
            "b64junk",
            "b64junk.req",
            good.replace(b"\n", b"*\n", 3),
            "rejected",
            "no complete",
        )
    )
    add(file_case("binary", "binary.req", b"\x30\x84" + os.urandom(3000), "rejected", "DER"))
    add(file_case("limit", "limit.req", b"A" * 65537, "rejected", "at most 65536 bytes"))
    add(file_case("nulls", "nulls.req", b"\0" * 4096, "rejected", "neither"))

    # --- keys ---------------------------------------------------------------------------------
    add(
        file_case(
            "rsa16k",
            "rsa16k.req",
            (CORPUS / "rsa16384.req").read_bytes(),
            "rejected",
            "at most 8192",
        )
    )
    add(
        file_case(
            "dsa",
            "dsa.req",
            (CORPUS / "dsa2048.req").read_bytes(),
            "rejected",
            "DSA keys are not accepted",
        )
    )
    for name, algo, opt, reason in (
        (
            "brainpool",
            "EC",
            "ec_paramgen_curve:brainpoolP256r1",
            "curve brainpoolP256r1 is not allowed",
        ),
        ("k1", "EC", "ec_paramgen_curve:secp256k1", "curve secp256k1 is not allowed"),
        ("sm2", "SM2", "", "cannot be used"),
        ("ed448", "ED448", "", "ED448 keys are not accepted"),
    ):
        k = src / f"{name}.key"
        run(
            [
                OPENSSL,
                "genpkey",
                "-algorithm",
                algo,
                *(["-pkeyopt", opt] if opt else []),
                "-out",
                str(k),
            ]
        )
        req, _ = openssl_csr(
            src, name, f"/CN={name}", key=k, digest="" if algo in ("ED448", "SM2") else "-sha256"
        )
        add(file_case(name, f"{name}.req", req.read_bytes(), "rejected", reason))
    k3 = src / "e3.key"
    run([OPENSSL, "genrsa", "-3", "-out", str(k3), "2048"])
    req, _ = openssl_csr(src, "e3", "/CN=e3", key=k3)
    add(file_case("e3", "e3.req", req.read_bytes(), "rejected", "exponent 3 is unsafe"))
    kx = src / "explicit.key"
    run(
        [
            OPENSSL,
            "ecparam",
            "-name",
            "prime256v1",
            "-param_enc",
            "explicit",
            "-genkey",
            "-noout",
            "-out",
            str(kx),
        ]
    )
    req, _ = openssl_csr(src, "explicit", "/CN=Explicit Params", key=kx)
    add(file_case("explicit", "explicit.req", req.read_bytes(), "outbox"))

    # --- extensions the CSR asks for ------------------------------------------------------------
    for name, ext, expect, reason in (
        ("kcs", "keyUsage=critical,keyCertSign,cRLSign", "rejected", "CA powers"),
        ("nc", "nameConstraints=critical,permitted;DNS:example.org", "rejected", "CA powers"),
        ("aia", "authorityInfoAccess=OCSP;URI:http://evil.example/ocsp", "outbox", ""),
        ("unkcrit", "1.3.6.1.4.1.99999.1=critical,ASN1:UTF8String:obey me", "outbox", ""),
        ("sanuri", "subjectAltName=URI:https://evil.example/", "rejected", "only e-mail and DNS"),
        ("sanip", "subjectAltName=IP:192.0.2.1", "rejected", "only e-mail and DNS"),
        ("sandns", "subjectAltName=DNS:www.example.org", "rejected", "not allowed in this profile"),
    ):
        add(file_case(name, f"{name}.req", openssl_req(src, name, ext), expect, reason))
    chpw = src / "chpw.cnf"
    chpw.write_text(
        "[req]\ndistinguished_name=dn\nattributes=attrs\nprompt=no\n[dn]\nCN=Challenge\n"
        "[attrs]\nchallengePassword=secret123\nunstructuredName=evil\n"
    )
    kc = ec.generate_private_key(ec.SECP256R1())
    (src / "chpw.key").write_bytes(key_pem(kc))
    run(
        [
            OPENSSL,
            "req",
            "-new",
            "-config",
            str(chpw),
            "-key",
            str(src / "chpw.key"),
            "-out",
            str(src / "chpw.req"),
        ]
    )
    add(file_case("chpw", "chpw.req", (src / "chpw.req").read_bytes(), "outbox"))

    # --- the subject ---------------------------------------------------------------------------
    for name, attrs, expect, reason in (
        ("nulcn", [cn("Al\x00ice")], "rejected", "control or invisible"),
        ("esccn", [cn("Alice\x1b[31mroot")], "rejected", "control or invisible"),
        ("nlcn", [cn("Alice\n2026-01-01 INFO issued admin")], "rejected", "control or invisible"),
        ("rlocn", [cn("Alice\u202egnp.exe")], "rejected", "control or invisible"),
        ("zwcn", [cn("Ad\u200bmin")], "rejected", "control or invisible"),
        (
            "rlmmail",
            [cn("Rlm"), mail("alice\u200f@example.org", utf8=True)],
            "rejected",
            "control or invisible",
        ),
        (
            "dupo",
            [
                cn("Dup O"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "A"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "B"),
            ],
            "rejected",
            "2 O attributes",
        ),
        (
            "dupmail",
            [cn("Dup Mail"), mail("a@example.org"), mail("b@example.org")],
            "rejected",
            "2 emailAddress",
        ),
        (
            "longo",
            [cn("Long O"), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "O" * 65)],
            "rejected",
            "at most 64",
        ),
        ("longcn", [cn("C" * 65)], "rejected", "at most 64"),
        ("widecn", [cn("é" * 40)], "rejected", "bytes long in UTF-8"),
        (
            "sernum",
            [
                cn("Ser Num"),
                x509.NameAttribute(NameOID.SERIAL_NUMBER, "ab_c@d", _type=_ASN1Type.UTF8String),
            ],
            "rejected",
            "may only contain",
        ),
        (
            "manyou",
            [
                cn("Many OU"),
                *[
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, f"ou{i}")
                    for i in range(200)
                ],
            ],
            "rejected",
            "at most 10",
        ),
        (
            "lookalike1",
            [cn("L1"), mail("alice@example.org.evil.com")],
            "rejected",
            "not at an allowed domain",
        ),
        (
            "lookalike2",
            [cn("L2"), mail("alice@examp1e.org")],
            "rejected",
            "not at an allowed domain",
        ),
        (
            "lookalike3",
            [cn("L3"), mail("alice@xn--exmple-cua.org")],
            "rejected",
            "not at an allowed domain",
        ),
        (
            "lookalike4",
            [cn("L4"), mail("alice@exаmple.org", utf8=True)],
            "rejected",
            "not a valid e-mail",
        ),
        (
            "mailat",
            [cn("Mail At"), mail("alice@example.org@evil.com")],
            "rejected",
            "not a valid e-mail",
        ),
        (
            "mailpct",
            [cn("Mail Pct"), mail("alice%example.org@evil.com")],
            "rejected",
            "not at an allowed domain",
        ),
        ("mailcase", [cn("Mail Case"), mail("Alice@EXAMPLE.ORG")], "outbox", ""),
        ("empty", [], "rejected", "must contain CN"),
    ):
        add(file_case(name, f"{name}.req", csr_with(attrs), expect, reason))
    san_many = x509.SubjectAlternativeName(
        [x509.RFC822Name(f"u{i}@example.org") for i in range(300)]
    )
    add(
        file_case(
            "sanmany",
            "sanmany.req",
            csr_with([cn("San Many")], [(san_many, False)]),
            "rejected",
            "at most 100",
        )
    )
    san_look = x509.SubjectAlternativeName([x509.RFC822Name("alice@exampIe.org")])
    add(
        file_case(
            "sanlook",
            "sanlook.req",
            csr_with([cn("San Look")], [(san_look, False)]),
            "rejected",
            "not at an allowed domain",
        )
    )

    # --- server-side key generation (TOML) --------------------------------------------------------
    for name, text, expect, reason in (
        ("tomlok", '[subject]\nCN = "Toml OK"\nemailAddress = "toml@example.org"\n', "outbox", ""),
        ("tomlbom", '\ufeff[subject]\nCN = "Toml BOM"\n', "outbox", ""),
        (
            "tomlext",
            '[subject]\nCN = "x"\n[extensions]\nbasicConstraints = "CA:TRUE"\n',
            "rejected",
            "unknown keys extensions;",
        ),
        (
            "tomlattr",
            '[subject]\nCN = "x"\nbasicConstraints = "CA:TRUE"\n',
            "rejected",
            "not a subject attribute",
        ),
        ("tomloid", '[subject]\n"2.5.4.3" = "x"\n', "rejected", "not a subject attribute"),
        ("tomlkt", 'key_type = "rsa-1024"\n[subject]\nCN = "x"\n', "rejected", "is not supported"),
        (
            "tomlsan",
            '[subject]\nCN = "x"\n[san]\nuri = ["https://evil.example"]\n',
            "rejected",
            "[san] may only hold",
        ),
        (
            "tomlnl",
            '[subject]\nCN = "x\\n[extensions]\\nca = true"\n',
            "rejected",
            "control or invisible",
        ),
        ("tomldup", '[subject]\nCN = ["a", "b"]\n', "rejected", "2 CN attributes"),
        ("tomlbad", "[subject]\nCN = \n", "rejected", "not valid TOML"),
        (
            "tomlmany",
            '[subject]\nCN = "x"\n' + "".join(f"[t{i}]\n" for i in range(3000)),
            "rejected",
            "and 2995 more",
        ),
    ):
        add(file_case(name, f"{name}.req", text.encode(), expect, reason))

    # --- names -------------------------------------------------------------------------------
    for name, filename, expect, reason in (
        ("my..name", "my..name.req", "outbox", ""),
        ("-dash", "-dash.req", "outbox", ""),
        ("a_b", "a\\b.req", "rejected", "is not allowed"),
        ("nl_name", "nl\nname.req", "rejected", "is not allowed"),
        ("rtl_qer", "rtl\u202eqer.req", "rejected", "is not allowed"),
        ("x" * 128, "x" * 200 + ".req", "rejected", "at most 128 characters"),
        ("_lice", "аlice.req", "rejected", "is not allowed"),
        ("_lead", " lead.req", "rejected", "is not allowed"),
        ("UPPER.REQ", "UPPER.REQ", "rejected", "is not a request"),
        ("..req", "..req", "ignored", ""),
        ("...req", "...req", "ignored", ""),
        ("upload.req.part", "upload.req.part", "ignored", ""),
    ):
        data = csr_with([cn(f"Name {len(cases)}")])
        add(file_case(name, filename, data, expect, reason))

    # --- special files, links, and keys beside requests ---------------------------------------------
    def symlink(target: Path, filename: str) -> Callable[[Path], None]:
        return lambda inbox: os.symlink(target, inbox / filename)

    def hardlink(target: Path, filename: str) -> Callable[[Path], None]:
        # made now (a new link changes the target's link count), moved in later
        staged = src / f"link-{filename}"
        os.link(target, staged)
        return lambda inbox: os.rename(staged, inbox / filename)

    def fifo(inbox: Path) -> None:
        os.mkfifo(inbox / "fifo.req")

    def device(inbox: Path) -> None:
        os.mknod(inbox / "dev.req", stat.S_IFCHR | 0o644, os.makedev(1, 3))

    def directory(inbox: Path) -> None:
        (inbox / "dir.req").mkdir()

    def nested(inbox: Path) -> None:
        (inbox / "nested").mkdir()
        (inbox / "nested" / "inner.req").write_bytes(good)

    add(Case("cakey", "rejected", "symbolic link", symlink(env.state / "ca.key", "cakey.req")))
    add(Case("decoy", "rejected", "symbolic link", symlink(decoy / "decoy.req", "decoy.req")))
    add(Case("dangle", "rejected", "symbolic link", symlink(decoy / "missing.req", "dangle.req")))
    add(Case("dirlink", "rejected", "is not a request", symlink(decoy, "dirlink")))
    add(Case("hard", "rejected", "hard-linked", hardlink(decoy / "decoy.req", "hard.req")))
    add(Case("fifo", "rejected", "FIFO", fifo))
    add(Case("dev", "rejected", "a device", device))
    add(Case("dir", "rejected", "a directory", directory))
    add(Case("nested", "rejected", "not a profile folder", nested))

    def with_key(
        name: str, key_bytes: bytes | None, link: Path | None = None, kind: str = ""
    ) -> Callable[[Path], None]:
        req = csr_with(
            [cn(f"Key {name}")],
            key=ec.generate_private_key(ec.SECP256R1()) if name != "okkey" else okkey,
        )
        if kind == "hardlink":
            assert link is not None
            staged = src / f"link-{name}.key"
            os.link(link, staged)

        def place(inbox: Path) -> None:
            if kind == "symlink":
                os.symlink(link, inbox / f"{name}.key")  # type: ignore[arg-type]
            elif kind == "hardlink":
                os.rename(staged, inbox / f"{name}.key")
            elif kind == "fifo":
                os.mkfifo(inbox / f"{name}.key")
            else:
                assert key_bytes is not None
                (inbox / f".{name}.key.part").write_bytes(key_bytes)
                os.chmod(inbox / f".{name}.key.part", 0o600)
                os.rename(inbox / f".{name}.key.part", inbox / f"{name}.key")
            (inbox / f".{name}.req.part").write_bytes(req)
            os.rename(inbox / f".{name}.req.part", inbox / f"{name}.req")

        return place

    okkey = ec.generate_private_key(ec.SECP256R1())
    add(Case("okkey", "outbox", "", with_key("okkey", key_pem(okkey))))
    add(
        Case(
            "badkey",
            "rejected",
            "does not belong",
            with_key("badkey", key_pem(ec.generate_private_key(ec.SECP256R1()))),
        )
    )
    enc = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    add(Case("enckey", "rejected", "encrypted", with_key("enckey", enc)))
    add(
        Case(
            "junkkey",
            "rejected",
            "not a PEM private key",
            with_key("junkkey", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
        )
    )
    add(
        Case(
            "linkkey",
            "key-refused",
            "symbolic link",
            with_key("linkkey", None, env.state / "ca.key", "symlink"),
        )
    )
    add(Case("fifokey", "key-refused", "FIFO", with_key("fifokey", None, kind="fifo")))
    add(
        Case(
            "hardkey",
            "hard-key",
            "hard-linked",
            with_key("hardkey", None, decoy / "decoy.key", "hardlink"),
        )
    )
    return cases


def where(env: CAEnv, case: Case) -> str | None:
    name = case.name
    if case.expect == "ignored":
        return "ignored"
    if case.expect == "key-refused":
        if (env.outbox / f"{name}.cer").exists() and (env.rejected / f"{name}.key.reason").exists():
            return "key-refused"
        return None
    if case.expect == "hard-key":
        # the key may be refused on its own (request then issued without p12) or with its request
        if (env.rejected / f"{name}.reason").exists() and (
            (env.outbox / f"{name}.cer").exists() or os.path.lexists(env.rejected / f"{name}.req")
        ):
            return "hard-key"
        return None
    if (env.rejected / f"{name}.reason").exists() and os.path.lexists(env.rejected / f"{name}.req"):
        return "rejected"
    if (env.outbox / f"{name}.cer").exists() and any(env.archive.glob(f"{name}*.req")):
        return "outbox"
    return None


HOSTILE_PROFILE = {"[profiles.client]\n": '[profiles.client]\nemail_domains = ["example.org"]\n'}


@pytest.fixture
def decoy(tmp_path: Path) -> Path:
    """A folder outside the spool with a valid CSR and key that links point to."""
    folder = tmp_path / "outside"
    folder.mkdir()
    k = ec.generate_private_key(ec.SECP256R1())
    (folder / "decoy.req").write_bytes(csr_with([cn("Decoy Secret")], key=k))
    (folder / "decoy.key").write_bytes(key_pem(k))
    os.chmod(folder / "decoy.key", 0o600)
    return folder


@pytest.mark.filterwarnings("ignore:Attribute's length must be")  # our own over-long CN
def test_an_over_long_name_value_is_refused_without_a_warning_on_stderr(tmp_path: Path) -> None:
    """cryptography warns when it reads a value over RFC 5280's bound; the daemon's
    stderr (the journal) gets the policy's reason instead, never that warning."""
    import subprocess
    import sys

    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([cn("C" * 65)]))
        .sign(key, hashes.SHA256())
    )
    req = tmp_path / "long.req"
    req.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    code = (
        "import sys, pathlib; from certdrop.intake.request import parse_request; "
        "print(len(dict(parse_request(pathlib.Path(sys.argv[1]).read_bytes())[0].subject)['CN']))"
    )
    res = subprocess.run(
        [sys.executable, "-W", "always", "-c", code, str(req)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (res.returncode, res.stdout, res.stderr) == (0, "65\n", "")


@pytest.mark.filterwarnings("ignore:Attribute's length must be")  # our own over-long CNs
@pytest.mark.parametrize("mode", ["events", "polling"])
def test_hostile_corpus(
    tmp_path: Path,
    decoy: Path,
    mode: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = make_env(
        tmp_path / "ca",
        replace={**HOSTILE_PROFILE, "[watch]\n": f'[watch]\nmode = "{mode}"\n'},
    )
    cases = build_corpus(tmp_path / "src", env, decoy)
    ca_key = env.state / "ca.key"
    key_before = (ca_key.read_bytes(), ca_key.stat().st_mtime_ns)
    decoy_before = {f.name: (f.read_bytes(), f.stat().st_mode) for f in decoy.iterdir()}
    caplog.set_level(logging.INFO, logger="certdrop")
    # no signing pool here: its processes load the CA key when they start, whenever that
    # is, and the inotify watch below must see nothing at all (the pool gets its own test)
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    d = DaemonThread(env).start()
    assert d.daemon.inbox is not None and d.daemon.inbox.mode == mode
    assert d.daemon.rt is not None and d.daemon.rt.pool is None
    spy = InotifySpy()
    try:
        spy.watch(ca_key, TOUCH)
        for f in sorted(decoy.iterdir()):
            spy.watch(f, TOUCH)
        spy.watch(decoy, DIR_TOUCH)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(env.inbox / "sock.req"))
        cases.append(Case("sock", "rejected", "socket"))
        for case in cases:
            if case.place is not None:
                case.place(env.inbox)
        for case in cases:
            got = wait_for(lambda c=case: where(env, c), 30, what=f"a result for {case.name!r}")
            assert got == case.expect, (case.name, got)
            if case.reason:
                reason_file = {
                    "key-refused": env.rejected / f"{case.name}.key.reason",
                }.get(case.expect, env.rejected / f"{case.name}.reason")
                text = reason_file.read_text()
                assert case.reason in text, (case.name, text)
                assert "Traceback" not in text
                assert len(text) < 8000, (case.name, len(text))
            assert d.alive(), case.name
        sock.close()
        # ignored files stay where they are, untouched
        d.daemon.inbox.scan()
        wait_for(lambda: d.daemon.queue.depth() == (0, 0), 20, what="an empty queue")
        left = sorted(p.name for p in env.inbox.iterdir() if p.name != "server")
        assert left == sorted(["..req", "...req", "upload.req.part"]), left
        events = spy.events()
    finally:
        spy.close()
        d.stop()
    # nothing outside the spool was opened, read or written. The one allowed event: the
    # link count of the decoy key drops when certdrop deletes the hard link to it that
    # was dropped as hardkey.key (keys are never kept; the file itself is untouched)
    forbidden = [e for e in events if not (e[0] == decoy / "decoy.key" and e[1] == IN_ATTRIB)]
    assert forbidden == [], forbidden
    assert {f.name: (f.read_bytes(), f.stat().st_mode) for f in decoy.iterdir()} == decoy_before
    assert (decoy / "decoy.key").stat().st_nlink == 1  # no copy of the key kept anywhere
    assert (ca_key.read_bytes(), ca_key.stat().st_mtime_ns) == key_before

    # nothing was issued for what links pointed to, and harmless extras were dropped
    store = Store(env.settings.database_url)
    try:
        with store.begin() as conn:
            records = listing.list_certs(conn)
    finally:
        store.close()
    subjects = [r.subject for r in records]
    assert not any("Decoy" in s for s in subjects), subjects
    assert not (env.outbox / "hardkey.p12").exists() and not (env.outbox / "linkkey.p12").exists()
    assert (env.outbox / "okkey.p12").exists() and (env.outbox / "tomlok.p12").exists()
    aia = x509.load_pem_x509_certificate((env.outbox / "aia.cer").read_bytes())
    assert ExtensionOID.AUTHORITY_INFORMATION_ACCESS not in {e.oid for e in aia.extensions}
    unk = x509.load_pem_x509_certificate((env.outbox / "unkcrit.cer").read_bytes())
    assert {e.oid.dotted_string for e in unk.extensions}.isdisjoint({"1.3.6.1.4.1.99999.1"})
    explicit = x509.load_pem_x509_certificate((env.outbox / "explicit.cer").read_bytes())
    spki = explicit.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert bytes.fromhex("06082a8648ce3d030107") in spki  # the named curve prime256v1
    # rejected links were moved as they were, never followed
    assert os.path.islink(env.rejected / "cakey.req")
    assert os.path.islink(env.rejected / "linkkey.key.req")
    # the logs carry no raw control characters from hostile names or values
    for record in caplog.records:
        msg = record.getMessage()
        assert "\n" not in msg and "\u202e" not in msg and "\x1b" not in msg, msg


# --- races: a symlink swapped in after the event ------------------------------------------------------


def test_symlink_swapped_in_between_check_and_claim(
    tmp_path: Path, decoy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file is regular when looked at, a symlink to a CSR outside when renamed."""
    env = make_env(tmp_path / "ca")
    rt = Runtime.build(env.settings, SystemClock())
    try:
        target = env.inbox / "swap.req"
        target.write_bytes(csr_with([cn("Swapped")]))
        link = env.inbox / ".swap.link"
        os.symlink(decoy / "decoy.req", link)
        real_rename = os.rename

        def rename_after_swap(src: object, dst: object) -> None:
            if Path(str(src)) == target:  # the attacker wins the race, just in time
                real_rename(link, target)
            real_rename(src, dst)  # type: ignore[arg-type]

        monkeypatch.setattr(os, "rename", rename_after_swap)
        res = rt.batches.handle_inbox_file(target, "client")
        monkeypatch.undo()
        assert res.reason and "symbolic link" in res.reason, res
        assert os.path.islink(env.rejected / "swap.req")
        with rt.store.begin() as conn:
            assert listing.list_certs(conn) == []
    finally:
        rt.close()


def test_racing_symlink_swaps_never_follow(tmp_path: Path, decoy: Path) -> None:
    """A writer keeps swapping NAME.req between a CSR and a symlink while certdrop works."""
    env = make_env(tmp_path / "ca")
    stage = tmp_path / "stage"
    stage.mkdir()
    d = DaemonThread(env).start()
    spy = InotifySpy()
    versions = 0
    try:
        for f in sorted(decoy.iterdir()):
            spy.watch(f, TOUCH)
        rng = __import__("random").Random(3)
        for i in range(15):
            final = env.inbox / f"race{i}.req"
            for k in range(4):
                reg = stage / f"r{i}.{k}"
                reg.write_bytes(csr_with([cn(f"Race {i}.{k}")]))
                lnk = stage / f"l{i}.{k}"
                os.symlink(decoy / "decoy.req", lnk)
                os.rename(reg, final)
                versions += 1
                time.sleep(rng.random() * 0.02)
                if k == 3 and i % 2 == 0:
                    break  # this name ends as a regular file: it must be issued
                os.rename(lnk, final)
                time.sleep(rng.random() * 0.02)

        def idle() -> bool:
            inbox = [p for p in env.inbox.iterdir() if p.name != "server"]
            work = [p for p in (env.spool / "work").rglob("*") if p.is_file()]
            return not inbox and not work and d.daemon.queue.depth() == (0, 0)

        wait_for(idle, 30, what="every swapped file handled")
        events = spy.events()
        assert d.alive()
    finally:
        spy.close()
        d.stop()
    assert events == []
    store = Store(env.settings.database_url)
    try:
        with store.begin() as conn:
            records = listing.list_certs(conn)
    finally:
        store.close()
    issued = {r.request_name for r in records}
    assert {f"race{i}" for i in range(0, 15, 2)} <= issued, issued
    assert all(r.common_name.startswith("Race ") for r in records)
    assert len(records) <= versions
    # every refusal of this test is about a link (or a file replaced under our feet)
    for reason in env.rejected.glob("*.reason"):
        text = reason.read_text()
        assert "symbolic link" in text or "replaced" in text, text
    for req in env.rejected.glob("*.req"):
        assert os.path.islink(req), req
    for old in env.archive.glob("rejected-*.req"):
        assert os.path.islink(old), old


# --- a file written slowly under its final name ---------------------------------------------------------


def slow_write(path: Path, data: bytes, chunks: int, pause: float) -> threading.Thread:
    def write() -> None:
        step = -(-len(data) // chunks)
        with path.open("wb") as fh:
            for i in range(0, len(data), step):
                fh.write(data[i : i + step])
                fh.flush()
                os.fsync(fh.fileno())
                time.sleep(pause)

    t = threading.Thread(target=write)
    t.start()
    return t


@pytest.mark.parametrize("mode", ["polling", "events"])
def test_slow_writers_are_never_read_half_written(tmp_path: Path, mode: str) -> None:
    """Three files growing over ~2.5 s each, written in place (no rename)."""
    env = make_env(
        tmp_path / "ca",
        replace={
            "[watch]\n": f'[watch]\nmode = "{mode}"\n',
            # the default settle time: a writer's 0.3 s pauses stretched by a loaded machine
            # must stay below it (polling cannot tell a paused writer from a finished one)
            "settle_seconds = 0.2": "settle_seconds = 1.0",
            "rescan_seconds = 5": "rescan_seconds = 0.3",  # scans keep finding the files
        },
    )
    d = DaemonThread(env).start()
    try:
        writers = []
        expected = {}
        for i in range(3):
            data = csr_with([cn(f"Slow Writer {i}"), mail(f"slow{i}@example.org")])
            expected[f"slow{i}"] = data
            writers.append(slow_write(env.inbox / f"slow{i}.req", data, chunks=8, pause=0.3))
        for t in writers:
            t.join()
        for name, data in expected.items():
            got = wait_for(lambda n=name: where(env, Case(n, "outbox")), 20, what=name)
            assert got == "outbox", (name, (env.rejected / f"{name}.reason").read_text())
            assert (env.archive / f"{name}.req").read_bytes() == data
        assert d.alive()
    finally:
        d.stop()


def test_events_mode_waits_for_close_write_even_across_long_pauses(tmp_path: Path) -> None:
    """inotify says when the writer closed the file; a pause longer than the settle time,
    while periodic scans keep finding the file, must not make certdrop read it early."""
    env = make_env(
        tmp_path / "ca",
        replace={
            "[watch]\n": '[watch]\nmode = "events"\n',
            "rescan_seconds = 5": "rescan_seconds = 0.3",
        },
    )
    d = DaemonThread(env).start()
    try:
        data = csr_with([cn("Paused Writer")])
        slow_write(env.inbox / "paused.req", data, chunks=5, pause=0.6).join()  # settle is 0.2
        assert wait_for(lambda: where(env, Case("paused", "outbox")), 20) == "outbox", (
            env.rejected / "paused.reason"
        ).read_text()
        assert (env.archive / "paused.req").read_bytes() == data
    finally:
        d.stop()


def test_a_file_moved_in_from_outside_is_taken_at_once(tmp_path: Path) -> None:
    """mv from another folder is one event (IN_MOVED_TO), not a creation still being
    written: no waiting for a periodic rescan."""
    env = make_env(tmp_path / "ca", replace={"rescan_seconds = 5": "rescan_seconds = 3600"})
    d = DaemonThread(env).start()
    try:
        outside = tmp_path / "home"
        outside.mkdir()
        (outside / "moved.req").write_bytes(csr_with([cn("Moved In")]))
        os.rename(outside / "moved.req", env.inbox / "moved.req")
        assert wait_for(lambda: where(env, Case("moved", "outbox")), 10) == "outbox"
    finally:
        d.stop()


@pytest.mark.filterwarnings("ignore:Attribute's length must be")  # our own over-long CN
def test_hostile_bytes_through_the_worker_pool(tmp_path: Path) -> None:
    """The pool parses batches in other processes: hostile files come back as refusals,
    and the pool survives them (it would fall back to the daemon process if broken)."""
    from certdrop.authority.workers import MIN_POOL_BATCH, WorkerPool
    from certdrop.intake.request import parse_chunk, parse_many

    env = make_env(tmp_path / "ca")
    rt = Runtime.build(env.settings, SystemClock())
    pool = WorkerPool(rt.ca, env.state, None, lint=True, workers=2)
    try:
        good = csr_with([cn("Pool Good")])
        der = x509.load_pem_x509_csr(good).public_bytes(serialization.Encoding.DER)
        datas = [
            good,
            b"",
            b"\x30\x84" + os.urandom(500),
            der + b"\0",
            der[:-7],
            good.replace(b"\n", b"*\n", 2),
            (CORPUS / "dsa2048.req").read_bytes(),
            csr_with([cn("Al\x00ice")]),
            csr_with([cn("é" * 40)]),
            b"[subject]\nCN = 3\n",
            '[subject]\nCN = "\ud800"\n'.encode("utf-8", "surrogatepass"),
        ]
        datas += [bytes([i]) * (i + 1) for i in range(MIN_POOL_BATCH)]
        # the first big batch starts the pool (and is parsed here)
        pool.map_later(parse_chunk, datas, fallback=parse_many)()
        wait_for(lambda: pool.ready, 60, what="the pool started")
        out = pool.map_later(parse_chunk, datas, fallback=parse_many)()
        assert pool.ready, "a hostile file broke the pool"
        assert len(out) == len(datas)
        assert not isinstance(out[0], RequestError)
        assert all(isinstance(r, RequestError) for r in out[1:6]), out[1:6]
        assert all(str(r) for r in out if isinstance(r, RequestError))
    finally:
        pool.close()
        rt.close()
