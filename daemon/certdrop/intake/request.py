"""Parsing dropped requests into plain data for the policy engine.

A request is either a PKCS#10 CSR (PEM or DER) or a small TOML enrollment asking
certdrop to generate the key. Parsing is strict: one object per file, nothing
after it, the CSR's signature verified (proof of possession). Every problem is a
`RequestError` whose message tells the user what to change.
"""

from __future__ import annotations

import hashlib
import logging
import re
import tomllib
import unicodedata
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtensionOID

from ..authority.der import sequence_length
from ..authority.names import ATTRIBUTE_OIDS, OID_NAMES
from ..errors import RequestError

# cryptography warns (UserWarning, on stderr) when it reads a name value longer than
# RFC 5280's upper bound; in a request that is the policy's to refuse, with a reason.
# One filter for the process: warnings.catch_warnings around every parse would change
# the process-wide filters from one thread while others run.
_LENGTH_WARNING = r"Attribute's length must be >= \d+ and <= \d+, but it was \d+"
warnings.filterwarnings("ignore", message=_LENGTH_WARNING, category=UserWarning)

# the order attributes are written in a certificate made from an enrollment
ENROLLMENT_ORDER = (
    "DC",
    "C",
    "ST",
    "L",
    "street",
    "postalCode",
    "O",
    "OU",
    "title",
    "SN",
    "GN",
    "serialNumber",
    "UID",
    "CN",
    "emailAddress",
)

_PEM_BLOCK = re.compile(
    rb"-----BEGIN (NEW )?CERTIFICATE REQUEST-----\r?\n(?P<body>[A-Za-z0-9+/=\r\n\t ]*?)"
    rb"-----END (NEW )?CERTIFICATE REQUEST-----"
)

WEAK_HASHES = frozenset({"md5", "sha1", "sha224"})


@dataclass(frozen=True)
class KeyInfo:
    kind: str  # "rsa", "ec", "ed25519", "ed448", "dsa", "unknown"
    bits: int = 0
    curve: str = ""
    exponent: int = 0

    def describe(self) -> str:
        if self.kind == "rsa":
            return f"RSA {self.bits}-bit"
        if self.kind == "ec":
            return f"EC {self.curve}"
        return self.kind.upper() if self.kind != "unknown" else "an unsupported key type"


@dataclass(frozen=True)
class RequestedExtension:
    oid: str
    name: str
    critical: bool
    asks_ca_powers: bool = False
    detail: str = ""


@dataclass(frozen=True)
class ParsedRequest:
    """What the policy engine sees of a request: plain data, no I/O."""

    kind: str  # "csr" or "enrollment"
    fingerprint: str  # SHA-256 (hex) of the CSR DER, or of the enrollment file
    subject: tuple[tuple[str, str], ...]  # (short name or dotted OID, value) in order
    key: KeyInfo
    signature_hash: str = ""  # "" for Ed25519/Ed448 and enrollments
    san_emails: tuple[str, ...] = ()
    san_dns: tuple[str, ...] = ()
    san_other: tuple[str, ...] = ()  # descriptions of SAN entries of other kinds
    extensions: tuple[RequestedExtension, ...] = ()
    multi_valued_rdn: bool = False
    der: bytes = b""  # the CSR DER (empty for enrollments)
    spki: bytes = b""  # the CSR's SubjectPublicKeyInfo DER (empty for enrollments)
    enrollment_key_type: str = ""  # optional key type asked for by an enrollment
    problems: tuple[str, ...] = field(default=())  # non-fatal parse findings for the policy

    def attribute_values(self, name: str) -> list[str]:
        return [v for n, v in self.subject if n == name]

    @property
    def emails(self) -> tuple[str, ...]:
        """Every e-mail address the certificate would carry (subject and SAN)."""
        seen: list[str] = []
        for e in (*self.attribute_values("emailAddress"), *self.san_emails):
            if e.lower() not in (s.lower() for s in seen):
                seen.append(e)
        return tuple(seen)


def looks_like_toml_enrollment(data: bytes) -> bool:
    head = data.lstrip()[:4096]
    return head.startswith((b"[subject]", b"#", b"[ subject ]", b"key_type")) or (
        b"[subject]" in head and b"-----BEGIN" not in head and not head.startswith(b"\x30")
    )


def parse_request(data: bytes) -> tuple[ParsedRequest, x509.CertificateSigningRequest | None]:
    """Parse a dropped file: a CSR (PEM or DER) or a TOML enrollment."""
    if not data.strip():
        raise RequestError("the file is empty; drop a certificate signing request (PEM or DER)")
    if data[:1] == b"\x30":
        return _parse_csr_der(data)
    if b"-----BEGIN" in data:
        return _parse_csr_pem(data)
    if looks_like_toml_enrollment(data):
        return parse_enrollment(data), None
    raise RequestError(
        "the file is neither a certificate signing request (PEM '-----BEGIN CERTIFICATE "
        "REQUEST-----' or DER) nor a key-generation request (TOML with a [subject] table)"
    )


def parse_many(datas: Sequence[bytes]) -> list[ParsedRequest | RequestError]:
    """Parse several dropped files; a RequestError in place of each one refused."""
    out: list[ParsedRequest | RequestError] = []
    for data in datas:
        try:
            out.append(parse_request(data)[0])
        except RequestError as exc:
            out.append(exc)
        except Exception as exc:
            logging.getLogger("certdrop.request").exception("unexpected error parsing a request")
            out.append(RequestError(f"the request cannot be parsed ({exc.__class__.__name__})"))
    return out


def parse_chunk(datas: Sequence[bytes]) -> list[ParsedRequest | RequestError]:
    """`parse_many` for the worker processes: the same results, but a failure
    nobody foresaw is not logged there (it becomes a RequestError all the same)."""
    out: list[ParsedRequest | RequestError] = []
    for data in datas:
        try:
            out.append(parse_request(data)[0])
        except RequestError as exc:
            out.append(exc)
        except Exception as exc:  # noqa: BLE001 - never lose a batch to one odd file
            out.append(RequestError(f"the request cannot be parsed ({exc.__class__.__name__})"))
    return out


def _parse_csr_pem(data: bytes) -> tuple[ParsedRequest, x509.CertificateSigningRequest]:
    blocks = list(_PEM_BLOCK.finditer(data))
    if not blocks:
        if b"-----BEGIN CERTIFICATE-----" in data:
            raise RequestError(
                "the file holds a certificate, not a certificate signing request; "
                "drop the .req made by 'openssl req -new'"
            )
        if b"PRIVATE KEY-----" in data:
            raise RequestError(
                "the file holds a private key, not a certificate signing request; a key "
                "belongs in NAME.key next to NAME.req"
            )
        raise RequestError(
            "no complete '-----BEGIN CERTIFICATE REQUEST-----' ... '-----END CERTIFICATE "
            "REQUEST-----' block found (is the file truncated?)"
        )
    if len(blocks) > 1:
        raise RequestError(
            f"the file holds {len(blocks)} certificate signing requests; drop one request per file"
        )
    block = blocks[0]
    before, after = data[: block.start()], data[block.end() :]
    if after.strip():
        raise RequestError(
            "the file has extra data after '-----END CERTIFICATE REQUEST-----'; "
            "keep only the PEM block"
        )
    if before.strip():
        raise RequestError(
            "the file has extra data before '-----BEGIN CERTIFICATE REQUEST-----'; "
            "keep only the PEM block"
        )
    try:
        csr = x509.load_pem_x509_csr(data[block.start() : block.end()] + b"\n")
    except (ValueError, x509.InvalidVersion) as exc:
        raise RequestError(
            f"the PEM block is not a valid certificate signing request ({exc})"
        ) from None
    return _from_csr(csr), csr


def _parse_csr_der(data: bytes) -> tuple[ParsedRequest, x509.CertificateSigningRequest]:
    length = sequence_length(data)
    if length is None or length > len(data):
        raise RequestError("the DER data is truncated; drop the whole request")
    if length < len(data):
        raise RequestError(
            f"the file has {len(data) - length} bytes after the DER request; drop the request only"
        )
    try:
        csr = x509.load_der_x509_csr(data)
    except (ValueError, x509.InvalidVersion) as exc:
        raise RequestError(
            f"the DER data is not a valid certificate signing request ({exc})"
        ) from None
    return _from_csr(csr), csr


def _key_info(public_key: Any) -> KeyInfo:
    if isinstance(public_key, rsa.RSAPublicKey):
        return KeyInfo("rsa", bits=public_key.key_size, exponent=public_key.public_numbers().e)
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return KeyInfo("ec", bits=public_key.curve.key_size, curve=public_key.curve.name)
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return KeyInfo("ed25519", bits=256)
    if isinstance(public_key, ed448.Ed448PublicKey):
        return KeyInfo("ed448", bits=456)
    if isinstance(public_key, dsa.DSAPublicKey):
        return KeyInfo("dsa", bits=public_key.key_size)
    return KeyInfo("unknown")


_CA_POWER_KU = ("key_cert_sign", "crl_sign")


def _from_csr(csr: x509.CertificateSigningRequest) -> ParsedRequest:
    try:
        public_key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise RequestError(f"the request's public key cannot be used ({exc})") from None
    key = _key_info(public_key)

    try:
        sig_hash = csr.signature_hash_algorithm
    except UnsupportedAlgorithm:
        raise RequestError(
            "the request is signed with an unsupported algorithm; sign it with SHA-256 "
            "(openssl req -new -sha256 ...)"
        ) from None
    signature_hash = sig_hash.name if sig_hash is not None else ""

    # a weak hash is refused by the policy (with its own reason); OpenSSL 3 would not
    # even verify such a signature, so it is not checked here
    if key.kind in ("rsa", "ec", "ed25519", "ed448", "dsa") and signature_hash not in WEAK_HASHES:
        try:
            valid = csr.is_signature_valid
        except (ValueError, UnsupportedAlgorithm):
            valid = False
        if not valid:
            raise RequestError(
                "the request's signature does not verify: it was altered or not signed by "
                "the key it carries (proof of possession failed); make a new request"
            )

    subject: list[tuple[str, str]] = []
    multi = False
    try:
        rdns = list(csr.subject.rdns)  # an over-long value: no warning (_LENGTH_WARNING)
    except ValueError as exc:
        raise RequestError(f"the request's subject cannot be parsed ({exc})") from None
    for rdn in rdns:
        attrs = list(rdn)
        if len(attrs) > 1:
            multi = True
        for attr in attrs:
            name = OID_NAMES.get(attr.oid, attr.oid.dotted_string)
            value = attr.value if isinstance(attr.value, str) else attr.value.hex()
            subject.append((name, value))

    san_emails: list[str] = []
    san_dns: list[str] = []
    san_other: list[str] = []
    extensions: list[RequestedExtension] = []
    try:
        exts = list(csr.extensions)
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise RequestError(f"the request's extensions cannot be parsed ({exc})") from None
    for ext in exts:
        oid = ext.oid.dotted_string
        name = getattr(ext.oid, "_name", oid)
        value = ext.value
        if ext.oid == ExtensionOID.SUBJECT_ALTERNATIVE_NAME:
            assert isinstance(value, x509.SubjectAlternativeName)
            for gn in value:
                if isinstance(gn, x509.RFC822Name):
                    san_emails.append(gn.value)
                elif isinstance(gn, x509.DNSName):
                    san_dns.append(gn.value)
                else:
                    san_other.append(f"{type(gn).__name__} {getattr(gn, 'value', '')}")
            extensions.append(RequestedExtension(oid, "subjectAltName", ext.critical))
            continue
        powers = False
        detail = ""
        if isinstance(value, x509.BasicConstraints) and value.ca:
            powers, detail = True, "basicConstraints CA:TRUE"
        elif isinstance(value, x509.KeyUsage) and (value.key_cert_sign or value.crl_sign):
            powers, detail = True, "keyUsage keyCertSign/cRLSign"
        elif isinstance(value, x509.NameConstraints):
            powers, detail = True, "nameConstraints"
        extensions.append(RequestedExtension(oid, name, ext.critical, powers, detail))

    der = csr.public_bytes(serialization.Encoding.DER)
    return ParsedRequest(
        kind="csr",
        fingerprint=hashlib.sha256(der).hexdigest(),
        subject=tuple(subject),
        key=key,
        signature_hash=signature_hash,
        san_emails=tuple(san_emails),
        san_dns=tuple(san_dns),
        san_other=tuple(san_other),
        extensions=tuple(extensions),
        multi_valued_rdn=multi,
        der=der,
        spki=public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )


_ENROLLMENT_KEYS = {"subject", "key_type", "san"}
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")  # shown as is; anything else quoted


def parse_enrollment(data: bytes) -> ParsedRequest:
    """A server-side key generation request: TOML with a [subject] table."""
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")  # Notepad's byte-order mark
    except UnicodeDecodeError:
        raise RequestError("the key-generation request is not UTF-8 text") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RequestError(f"the key-generation request is not valid TOML ({exc})") from None
    unknown = sorted(set(doc) - _ENROLLMENT_KEYS)
    if unknown:
        shown = ", ".join(k if _PLAIN_KEY.fullmatch(k) else repr(k[:64]) for k in unknown[:5])
        if len(unknown) > 5:
            shown += f" and {len(unknown) - 5} more"
        raise RequestError(
            f"the key-generation request has unknown keys {shown}; "
            "allowed: [subject], key_type, [san]"
        )
    subj = doc.get("subject")
    if not isinstance(subj, dict) or not subj:
        raise RequestError(
            "the key-generation request needs a [subject] table, such as "
            '[subject] CN = "Alice Example" emailAddress = "alice@example.org"'
        )
    subject: list[tuple[str, str]] = []
    for name in subj:
        if name not in ATTRIBUTE_OIDS:
            raise RequestError(
                f"[subject] {name[:64]!r} is not a subject attribute certdrop knows; "
                f"allowed: {', '.join(ATTRIBUTE_OIDS)}"
            )
    for name in ENROLLMENT_ORDER:
        if name not in subj:
            continue
        value = subj[name]
        values = value if isinstance(value, list) else [value]
        for v in values:
            if not isinstance(v, str):
                raise RequestError(f"[subject] {name} must be a string")
            subject.append((name, v))
    key_type = doc.get("key_type", "")
    if key_type and key_type not in ("rsa-2048", "rsa-3072", "rsa-4096", "ec-p256", "ec-p384"):
        raise RequestError(
            f"key_type = {key_type!r} is not supported; allowed: rsa-2048, rsa-3072, "
            "rsa-4096, ec-p256, ec-p384"
        )
    san = doc.get("san", {})
    if not isinstance(san, dict) or set(san) - {"email", "dns"}:
        raise RequestError("[san] may only hold email = [...] and dns = [...]")
    san_emails = san.get("email", [])
    san_dns = san.get("dns", [])
    for lst, what in ((san_emails, "email"), (san_dns, "dns")):
        if not isinstance(lst, list) or not all(isinstance(x, str) for x in lst):
            raise RequestError(f"[san] {what} must be a list of strings")
    return ParsedRequest(
        kind="enrollment",
        fingerprint=hashlib.sha256(data).hexdigest(),
        subject=tuple(subject),
        key=KeyInfo("generated"),
        san_emails=tuple(san_emails),
        san_dns=tuple(san_dns),
        enrollment_key_type=key_type,
    )


def has_control_characters(value: str) -> bool:
    """NUL, control, format (bidi overrides, zero-width) and unassigned characters."""
    if value.isascii() and value.isprintable():
        return False  # the common case: no character of those categories is printable ASCII
    return any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn") for ch in value)
