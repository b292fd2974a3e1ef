"""The certificate authority: keys, certificate building, signing, CRLs, PKCS#12.

Private keys never leave this module: callers get certificates, CRLs and
encrypted PKCS#12 bundles, never key objects or key bytes (the one exception is
the subject key a user dropped, which goes in and comes out only inside a p12).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import functools
import hashlib
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..clock import utc_seconds
from ..errors import CAError, LintError
from ..fsutil import atomic_write, ensure_dir, write_staged
from ..intake.request import ATTRIBUTE_OIDS

if TYPE_CHECKING:  # settings are pydantic models: not needed to sign
    from ..config import CASettings

CA_KEY = "ca.key"
CA_CERT = "ca.cer"
CA_CHAIN = "chain.pem"

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey

EKU_OIDS = {
    "client_auth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "server_auth": ExtendedKeyUsageOID.SERVER_AUTH,
    "email_protection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "code_signing": ExtendedKeyUsageOID.CODE_SIGNING,
    "time_stamping": ExtendedKeyUsageOID.TIME_STAMPING,
}

REVOCATION_REASONS: dict[str, x509.ReasonFlags] = {
    "unspecified": x509.ReasonFlags.unspecified,
    "keyCompromise": x509.ReasonFlags.key_compromise,
    "cACompromise": x509.ReasonFlags.ca_compromise,
    "affiliationChanged": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessationOfOperation": x509.ReasonFlags.cessation_of_operation,
    "certificateHold": x509.ReasonFlags.certificate_hold,
    "privilegeWithdrawn": x509.ReasonFlags.privilege_withdrawn,
    "aACompromise": x509.ReasonFlags.aa_compromise,
}

Linter = Callable[[bytes], list[str]]
PKCS12_KDF_ROUNDS = 2048


def generate_key(key_type: str) -> PrivateKey:
    if key_type.startswith("rsa-"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[4:]))
    if key_type == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ec-p384":
        return ec.generate_private_key(ec.SECP384R1())
    raise CAError(f"unsupported key type {key_type!r}")


def _hash_for(key: Any) -> hashes.HashAlgorithm | None:
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return hashes.SHA384() if key.curve.key_size >= 384 else hashes.SHA256()
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return None
    return hashes.SHA256()


def random_serial() -> int:
    """A positive serial with 127 random bits from the OS CSPRNG (16 octets in DER)."""
    while True:
        serial = int.from_bytes(secrets.token_bytes(16), "big") >> 1
        if serial >= 1 << 64:  # at least 64 bits of entropy actually used
            return serial


def serial_hex(serial: int) -> str:
    return format(serial, "X").rjust(2, "0") if serial else "00"


def public_key_bytes(key: Any) -> bytes:
    """SubjectPublicKeyInfo DER of a public key object (or the DER itself)."""
    if isinstance(key, bytes):
        return key
    return bytes(
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


@dataclass(frozen=True)
class IssueSpec:
    """Everything that goes into an end-entity certificate, decided by the policy."""

    subject: Sequence[tuple[str, str]]
    public_key: Any  # a public key object, or its SubjectPublicKeyInfo DER
    not_before: dt.datetime
    not_after: dt.datetime
    key_usage: Sequence[str]
    extended_key_usage: Sequence[str]
    emails: Sequence[str] = ()
    dns_names: Sequence[str] = ()
    serial: int = 0
    crl_distribution_point: str = ""


@dataclass(frozen=True)
class Staging:
    """Where the certificate about to be signed is staged (PEM, not yet durable), and,
    for a key made here (server-side key generation), the PKCS#12 made with it."""

    cer_path: str
    owner: tuple[int, int] | None = None  # chown target (running as root)
    cer_mode: int = 0o644
    p12_path: str = ""  # removed when no p12 is made (a stale one from a crash)
    p12_mode: int = 0o600
    key_type: str = ""  # make the subject's key here; the spec's public key is unused
    password: str = ""
    friendly_name: str = ""
    p12_preset: str = "aes256"


@dataclass(frozen=True)
class Staged:
    """A certificate signed and staged (with its p12 when the key was made here)."""

    der: bytes
    subject: str
    not_before: dt.datetime
    not_after: dt.datetime
    p12: bool = False


# --- DER for CRL entries -----------------------------------------------------------------------------
_REASON_CODES = {  # RFC 5280 5.3.1 CRLReason; "unspecified" is left out (SHOULD be absent)
    "keyCompromise": 1,
    "cACompromise": 2,
    "affiliationChanged": 3,
    "superseded": 4,
    "cessationOfOperation": 5,
    "certificateHold": 6,
    "privilegeWithdrawn": 9,
    "aACompromise": 10,
}
# crlEntryExtensions holding one non-critical reasonCode (2.5.29.21): everything but the code
_REASON_EXT = bytes.fromhex("300c300a0603551d1504030a01")


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def _der_tlv(tag: int, value: bytes) -> bytes:
    return bytes((tag,)) + _der_len(len(value)) + value


def _der_value(der: bytes) -> bytes:
    """The contents of a single DER element (definite lengths only)."""
    _, start, end = _der_header(der, 0)
    if end != len(der):
        raise CAError("internal check failed: trailing data after a DER element")
    return der[start:end]


def _der_header(der: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of contents, end of contents) of the element at `pos`."""
    tag = der[pos]
    first = der[pos + 1]
    if first < 0x80:
        return tag, pos + 2, pos + 2 + first
    n = first & 0x7F
    length = int.from_bytes(der[pos + 2 : pos + 2 + n], "big")
    return tag, pos + 2 + n, pos + 2 + n + length


def _der_children(content: bytes) -> list[tuple[int, bytes]]:
    """(tag, whole element) for each element in a constructed value's contents."""
    out = []
    pos = 0
    while pos < len(content):
        tag, _, end = _der_header(content, pos)
        out.append((tag, content[pos:end]))
        pos = end
    return out


def _spki_key_bits(spki: bytes) -> bytes:
    """The subjectPublicKey BIT STRING's contents without its unused-bits octet: the key
    itself (an RSAPublicKey DER, an EC point, an Ed25519 key)."""
    _algorithm, bits = _der_children(_der_value(spki))
    return _der_value(bits[1])[1:]


def _tbs_fields(tbs: bytes) -> list[bytes]:
    """A TBSCertificate's fields (DER) after its version: serialNumber, signature,
    issuer, validity, subject, subjectPublicKeyInfo, then the optional ones."""
    fields = _der_children(_der_value(tbs))
    return [der for _, der in fields[1 if fields[0][0] == 0xA0 else 0 :]]  # [0]: absent in v1


_PRINTABLE = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 '()+,-./:=?"
)


def _check_name_strings(name: bytes) -> None:
    """Refuse a Name (DER) holding a PrintableString or IA5String its type does not allow.

    cryptography's `Name.public_bytes` encodes such values as they are (its certificate
    builder refuses them): e.g. serialNumber "a_b@" as a PrintableString.
    """
    for _, rdn in _der_children(_der_value(name)):
        for _, atv in _der_children(_der_value(rdn)):
            tag, value = _der_children(_der_value(atv))[1]
            text = _der_value(value)
            if tag == 0x13 and not _PRINTABLE.issuperset(text):
                raise ValueError(f"{text.decode('utf-8', 'replace')!r} is not a PrintableString")
            if tag == 0x16 and not text.isascii():
                raise ValueError(f"{text.decode('utf-8', 'replace')!r} is not an IA5String")


def _der_time(epoch: int) -> bytes:
    """RFC 5280 Time: UTCTime through 2049, GeneralizedTime from 2050."""
    t = time.gmtime(epoch)
    if t.tm_year < 2050:
        return b"\x17\x0d" + time.strftime("%y%m%d%H%M%SZ", t).encode()
    return b"\x18\x0f" + time.strftime("%Y%m%d%H%M%SZ", t).encode()


CrlEntry = tuple[int, dt.datetime | int, str | None]
"""A revoked certificate: serial, revocation time (datetime or UTC epoch seconds), reason."""


def pem_armor(label: str, der: bytes) -> bytes:
    """PEM (RFC 7468) as OpenSSL and cryptography write it: base64 lines of 64 characters."""
    b64 = base64.b64encode(der)
    body = b"\n".join(b64[i : i + 64] for i in range(0, len(b64), 64))
    tag = label.encode("ascii")
    return b"-----BEGIN %b-----\n%b\n-----END %b-----\n" % (tag, body, tag)


def encode_crl_entries(revoked: Iterable[CrlEntry]) -> bytes:
    """The revokedCertificates entries, DER, concatenated (without the outer SEQUENCE).

    Every entry is shorter than 128 octets (a serial of at most 20 octets, a time, one
    extension), so every length here is a single octet.
    """
    parts: list[bytes] = []
    append = parts.append
    days: dict[int, bytes] = {}  # UTC day -> the encoded time up to the day
    for serial, when, reason in revoked:
        if not 0 < serial < 1 << 159:  # RFC 5280 4.1.2.2: at most 20 octets, positive
            raise CAError(f"a revoked serial must be positive and at most 20 octets, not {serial}")
        epoch = when if isinstance(when, int) else int(when.timestamp())
        day, secs = divmod(epoch, 86400)
        prefix = days.get(day)
        if prefix is None:
            prefix = days[day] = _der_time(day * 86400)[:-7]  # without HHMMSSZ
        h, rest = divmod(secs, 3600)
        m, sec = divmod(rest, 60)
        raw = serial.to_bytes(serial.bit_length() // 8 + 1, "big")  # a leading 0 if needed
        body = b"\x02%c%b%b%02d%02d%02dZ" % (len(raw), raw, prefix, h, m, sec)
        if reason and reason != "unspecified":
            code = _REASON_CODES.get(reason)
            if code is None:
                raise CAError(f"unknown revocation reason {reason!r}")
            body += _REASON_EXT + bytes((code,))
        append(b"\x30%c%b" % (len(body), body))
    return b"".join(parts)


def subject_text(name: x509.Name) -> str:
    """RFC 4514 text with readable names for every attribute certdrop knows."""
    return name.rfc4514_string({oid: short for short, oid in ATTRIBUTE_OIDS.items()})


def build_name(attrs: Iterable[tuple[str, str]]) -> x509.Name:
    return x509.Name([x509.NameAttribute(ATTRIBUTE_OIDS[n], v) for n, v in attrs])


def _extension_der(value: x509.ExtensionType, critical: bool) -> bytes:
    """One Extension, DER: extnID, critical (only when true: DEFAULT FALSE), extnValue."""
    prefix, _, arc = value.oid.dotted_string.rpartition(".")
    if prefix != "2.5.29" or not 0 <= int(arc) < 128:  # every extension certdrop writes
        raise CAError(f"internal error: no encoding for extension {value.oid.dotted_string}")
    return _id_ce_extension_der(int(arc), critical, value.public_bytes())


def _id_ce_extension_der(arc: int, critical: bool, value: bytes) -> bytes:
    """The Extension id-ce-`arc` (2.5.29.arc, arc < 128) with the DER `value`."""
    body = b"\x06\x03\x55\x1d" + bytes((arc,))
    if critical:
        body += b"\x01\x01\xff"
    return _der_tlv(0x30, body + _der_tlv(0x04, value))


# what cryptography's RFC822Name takes for a display name or a list: never in an address
_NOT_IN_ADDRESS = frozenset(' \t"(),:;<>[\\]')


def _subject_alt_name_der(emails: Sequence[str], dns_names: Sequence[str], critical: bool) -> bytes:
    """subjectAltName with rfc822Name [1] and dNSName [2] (IA5String) entries, in that
    order: byte for byte what SubjectAlternativeName([RFC822Name, ..., DNSName, ...])
    encodes, without its parseaddr of every address (~10 us). As there, values must be
    ASCII (A-labels); an address must be one addr-spec (the policy allows fewer)."""
    names = []
    for email in emails:
        local, _, domain = email.rpartition("@")
        if not (
            local
            and domain
            and email.isascii()
            and email.isprintable()
            and _NOT_IN_ADDRESS.isdisjoint(email)
        ):
            raise ValueError(f"not an e-mail address in ASCII: {email!r}")
        names.append(_der_tlv(0x81, email.encode("ascii")))
    for dns in dns_names:
        if not dns.isascii():
            raise ValueError(f"a DNS name must be ASCII (an A-label): {dns!r}")
        names.append(_der_tlv(0x82, dns.encode("ascii")))
    return _id_ce_extension_der(17, critical, _der_tlv(0x30, b"".join(names)))


_END_ENTITY = _extension_der(x509.BasicConstraints(ca=False, path_length=None), True)
_RSA_KEY = bytes.fromhex("06092a864886f70d010101")  # rsaEncryption, in an SPKI
_EC_KEY = bytes.fromhex("06072a8648ce3d0201")  # id-ecPublicKey


@functools.lru_cache(maxsize=64)
def _key_usage(usages: frozenset[str], rsa_key: bool, ec_key: bool) -> bytes:
    return _extension_der(
        x509.KeyUsage(
            digital_signature="digital_signature" in usages,
            content_commitment="content_commitment" in usages,
            # encipherment is meaningful for RSA keys only (RFC 5480 / RFC 8813)
            key_encipherment="key_encipherment" in usages and rsa_key,
            data_encipherment="data_encipherment" in usages and rsa_key,
            key_agreement="key_agreement" in usages and ec_key,
            key_cert_sign=False,
            crl_sign=False,
            encipher_only=False,
            decipher_only=False,
        ),
        True,
    )


@functools.lru_cache(maxsize=64)
def _extended_key_usage(usages: tuple[str, ...]) -> bytes:
    return _extension_der(x509.ExtendedKeyUsage([EKU_OIDS[e] for e in usages]), False)


@functools.lru_cache(maxsize=16)
def _crl_distribution_points(url: str) -> bytes:
    return _extension_der(
        x509.CRLDistributionPoints(
            [
                x509.DistributionPoint(
                    full_name=[x509.UniformResourceIdentifier(url)],
                    relative_name=None,
                    reasons=None,
                    crl_issuer=None,
                )
            ]
        ),
        False,
    )


def _signature_algorithm(key: PrivateKey, hash_: hashes.HashAlgorithm | None) -> bytes:
    """The signatureAlgorithm (AlgorithmIdentifier, DER) cryptography writes when `key`
    signs with `hash_`: taken from a certificate it makes, not from a table."""
    name = x509.Name([])
    when = dt.datetime(2000, 1, 1)
    sample = x509.CertificateBuilder(
        issuer_name=name,
        subject_name=name,
        public_key=key.public_key(),
        serial_number=1,
        not_valid_before=when,
        not_valid_after=when,
    ).sign(key, hash_)  # type: ignore[arg-type]
    return _der_children(_der_value(sample.public_bytes(serialization.Encoding.DER)))[1][1]


def _sign_with(key: Any, data: bytes, hash_: hashes.HashAlgorithm | None) -> bytes:
    """`key`'s signature over `data`, as the certificate and CRL builders make it."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)  # no separate hash
    assert hash_ is not None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(hash_))
    return bytes(key.sign(data, padding.PKCS1v15(), hash_))


class CertificateAuthority:
    """A loaded CA: its certificate, the chain above it, and its private key."""

    def __init__(
        self, cert: x509.Certificate, key: PrivateKey, chain: Sequence[x509.Certificate] = ()
    ):
        self.cert = cert
        self.chain = tuple(chain)
        self.__key = key
        self._hash = _hash_for(key)
        self._public_key: Any = cert.public_key()  # checks every signature made here
        self._not_after = cert.not_valid_after_utc  # every decision and every TBS reads it
        # the issuer of what this CA signs: its subject exactly as its certificate has it
        self._issuer_der = _tbs_fields(cert.tbs_certificate_bytes)[4]
        try:
            self._aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            )
        except x509.ExtensionNotFound:
            self._aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key())
        self._aki_der = _extension_der(self._aki, False)

    # --- loading ---------------------------------------------------------------------------
    @classmethod
    def load(cls, state: Path, passphrase: bytes | None = None) -> CertificateAuthority:
        key_path, cert_path = state / CA_KEY, state / CA_CERT
        cert = load_ca_certificate(state)
        key = _load_key(key_path.read_bytes(), passphrase, str(key_path))
        if public_key_bytes(key.public_key()) != public_key_bytes(cert.public_key()):
            raise CAError(
                f"the CA key {key_path} does not belong to the CA certificate {cert_path}"
            )
        chain: list[x509.Certificate] = []
        chain_path = state / CA_CHAIN
        if chain_path.exists():
            chain = x509.load_pem_x509_certificates(chain_path.read_bytes())
        return cls(cert, key, chain)

    # --- facts -------------------------------------------------------------------------------
    @property
    def subject(self) -> x509.Name:
        return self.cert.subject

    @property
    def not_after(self) -> dt.datetime:
        return self._not_after

    @property
    def key_algorithm(self) -> str:
        key = self.__key
        if isinstance(key, rsa.RSAPrivateKey):
            return f"rsa-{key.key_size}"
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return f"ec-{key.curve.name}"
        return "ed25519"

    def bundle_certificates(self) -> list[x509.Certificate]:
        """The CA certificate and everything above it (what relying parties trust)."""
        return [self.cert, *self.chain]

    # --- signing -------------------------------------------------------------------------------
    def _throwaway_key(self) -> PrivateKey:
        key = self.__key
        if isinstance(key, rsa.RSAPrivateKey):
            return rsa.generate_private_key(65537, key.key_size)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return ec.generate_private_key(key.curve)
        return ed25519.Ed25519PrivateKey.generate()

    @functools.cached_property
    def _draft_signature(self) -> bytes:
        """The signature value drafts carry: made once by a throwaway key of the CA key's
        algorithm and size, over other bytes. pkilint reads a signature's form, never
        verifies it; signing each draft anew cost ~29 us (EC P-256) to ~360 us (RSA-2048)."""
        return _sign_with(self._throwaway_key(), b"certdrop lint draft", self._hash)

    @functools.cached_property
    def _signature_algorithm_der(self) -> bytes:
        """Made when first signing a certificate (one signature of the CA key): commands
        that load the CA without issuing do not pay for it."""
        return _signature_algorithm(self.__key, self._hash)

    def _tbs(self, spec: IssueSpec) -> bytes:
        """The TBSCertificate (DER) of the end-entity certificate `spec` describes.

        certdrop encodes it itself, as it does a CRL's entries, and the CA key signs these
        bytes: cryptography's CertificateBuilder cost more in Python than the encoding
        itself, and a certificate linted before signing had to be built and encoded
        twice (the draft, then the real one); now the draft and the certificate share
        one TBS. Names and most extension values are encoded by cryptography
        (`public_bytes`, which refuses values it cannot encode) and the name's strings
        are checked against their types; the subjectAltName is encoded here
        (`_subject_alt_name_der`). The TBS is byte for byte the one CertificateBuilder
        makes for the same values (tested for EC and RSA CAs and keys, every field's
        forms).
        """
        if not 0 < spec.serial < 1 << 159:  # RFC 5280 4.1.2.2: positive, at most 20 octets
            raise CAError("a certificate needs a positive serial number of at most 159 bits")
        spki = public_key_bytes(spec.public_key)  # DER as given, or the key object's
        not_before = int(utc_seconds(spec.not_before).timestamp())
        not_after = int(utc_seconds(min(spec.not_after, self.not_after)).timestamp())
        if not_after < not_before:
            raise CAError("the certificate would end before it begins (the CA ends before that)")
        subject = build_name(spec.subject)
        subject_der = subject.public_bytes()
        _check_name_strings(subject_der)
        algorithm = _der_children(_der_value(spki))[0][1]  # the key's AlgorithmIdentifier
        exts = [
            _END_ENTITY,
            _key_usage(
                frozenset(spec.key_usage),
                algorithm.startswith(_RSA_KEY, 2),
                algorithm.startswith(_EC_KEY, 2),
            ),
            # RFC 5280 4.2.1.2 method 1, as SubjectKeyIdentifier.from_public_key computes it
            _extension_der(
                x509.SubjectKeyIdentifier(
                    hashlib.sha1(_spki_key_bits(spki), usedforsecurity=False).digest()
                ),
                False,
            ),
            self._aki_der,
        ]
        if spec.extended_key_usage:
            exts.append(_extended_key_usage(tuple(spec.extended_key_usage)))
        if spec.emails or spec.dns_names:
            # RFC 5280 4.2.1.6: critical when the subject is empty
            exts.append(_subject_alt_name_der(spec.emails, spec.dns_names, len(subject) == 0))
        if spec.crl_distribution_point:
            exts.append(_crl_distribution_points(spec.crl_distribution_point))
        serial = spec.serial.to_bytes(spec.serial.bit_length() // 8 + 1, "big")
        return _der_tlv(
            0x30,
            b"\xa0\x03\x02\x01\x02"  # [0] version: v3
            + _der_tlv(0x02, serial)
            + self._signature_algorithm_der
            + self._issuer_der
            + _der_tlv(0x30, _der_time(not_before) + _der_time(not_after))
            + subject_der
            + spki
            + _der_tlv(0xA3, _der_tlv(0x30, b"".join(exts))),
        )

    def _certificate(self, tbs: bytes, signature: bytes) -> bytes:
        """Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }"""
        return _der_tlv(
            0x30, tbs + self._signature_algorithm_der + _der_tlv(0x03, b"\x00" + signature)
        )

    def issue(self, spec: IssueSpec, linter: Linter | None = None) -> x509.Certificate:
        """Encode, lint (before the CA key signs anything), sign and double-check.

        With a linter, the to-be-signed certificate is first linted as a draft that
        carries a throwaway key's signature (`_draft_signature`); any finding refuses it
        (LintError) and the CA key signs nothing. The CA key then signs the very bytes
        that were linted. After the signing: the certificate must parse, its TBS be the
        linted one, its issuer the CA, its public key the requested one, and the signature
        must verify under the CA certificate's key.
        """
        return self._sign_checked(spec, self._linted_tbs(spec, linter))[0]

    def _linted_tbs(self, spec: IssueSpec, linter: Linter | None) -> bytes:
        """The first half of `issue`: the TBSCertificate, linted (LintError if refused)."""
        try:
            tbs = self._tbs(spec)
        except (ValueError, TypeError, IndexError) as exc:  # a value the encoder refuses
            raise LintError(f"the certificate cannot be encoded: {exc}") from None
        if linter is not None:
            draft = self._certificate(tbs, self._draft_signature)
            findings = linter(draft)
            if findings:
                raise LintError(
                    "the certificate would not be standards-compliant: " + "; ".join(findings)
                )
        return tbs

    def _sign_checked(self, spec: IssueSpec, tbs: bytes) -> tuple[x509.Certificate, bytes]:
        """The second half of `issue`: the CA key signs `tbs`; then the checks. The
        certificate, and its DER: the very bytes that were checked."""
        signature = self._sign_bytes(tbs)
        der = self._certificate(tbs, signature)
        try:
            cert = x509.load_der_x509_certificate(der)
            signed_tbs = cert.tbs_certificate_bytes
            fields = _tbs_fields(signed_tbs)
            issuer, spki = fields[2], fields[5]
        except (ValueError, IndexError) as exc:
            raise CAError(
                f"internal check failed: the certificate does not parse ({exc})"
            ) from None
        if signed_tbs != tbs:
            raise CAError(
                "internal check failed: the signed certificate differs from the linted one"
            )
        if spki != public_key_bytes(spec.public_key):
            raise CAError("internal check failed: the certificate carries a different public key")
        if issuer != self._issuer_der:
            raise CAError("internal check failed: the certificate names another issuer")
        if not self._signature_valid(cert.signature, signed_tbs):
            raise CAError(
                "certificate was not issued by this CA (its signature does not verify under "
                "the CA certificate)"
            )
        return cert, der

    def issue_and_stage(
        self, specs: Sequence[IssueSpec], stagings: Sequence[Staging], linter: Linter | None
    ) -> list[Staged | LintError]:
        """`issue` each spec and write its outputs where its Staging says.

        This is the whole per-certificate work of a batch, in one place for the daemon
        process and the signing pool: a key made for a p12 exists only here, in memory,
        and leaves only inside the encrypted bundle.
        """
        # In two passes, all encoding and linting first, then all signing and writing:
        # pkilint then runs one certificate after the other as it does alone; between
        # signatures and file writes it took ~6% longer (measured in one process).
        todo: list[tuple[IssueSpec, bytes, PrivateKey | None] | LintError] = []
        for spec, staging in zip(specs, stagings, strict=True):
            key: PrivateKey | None = None
            if staging.key_type:
                key = generate_key(staging.key_type)
                spec = replace(spec, public_key=key.public_key())
            try:
                todo.append((spec, self._linted_tbs(spec, linter), key))
            except LintError as exc:
                todo.append(exc)
        out: list[Staged | LintError] = []
        for item, staging in zip(todo, stagings, strict=True):
            if isinstance(item, LintError):
                out.append(item)
                continue
            spec, tbs, key = item
            cert, der = self._sign_checked(spec, tbs)
            write_staged(
                staging.cer_path,
                pem_armor("CERTIFICATE", der),
                staging.cer_mode,
                staging.owner,
            )
            if key is not None:
                p12 = self.pkcs12_bundle(
                    key, cert, staging.friendly_name, staging.password, staging.p12_preset
                )
                write_staged(staging.p12_path, p12, staging.p12_mode, staging.owner)
            elif staging.p12_path:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(staging.p12_path)
            out.append(
                Staged(
                    der=der,
                    subject=subject_text(cert.subject),
                    not_before=cert.not_valid_before_utc,
                    not_after=cert.not_valid_after_utc,
                    p12=key is not None,
                )
            )
        return out

    def verify_signed_by_me(self, cert: x509.Certificate) -> None:
        try:
            cert.verify_directly_issued_by(self.cert)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise CAError(f"certificate was not issued by this CA ({exc})") from None

    def issued_this(self, cert: x509.Certificate) -> bool:
        try:
            self.verify_signed_by_me(cert)
        except CAError:
            return False
        return True

    # --- CRLs ----------------------------------------------------------------------------------
    def build_crl(
        self,
        revoked: Iterable[CrlEntry],
        number: int,
        this_update: dt.datetime,
        next_update: dt.datetime,
    ) -> x509.CertificateRevocationList:
        """`build_crl_der`, parsed."""
        return x509.load_der_x509_crl(self.build_crl_der(revoked, number, this_update, next_update))

    def build_crl_der(
        self,
        revoked: Iterable[CrlEntry],
        number: int,
        this_update: dt.datetime,
        next_update: dt.datetime,
    ) -> bytes:
        """One CRL (DER) with every revoked serial (revocation time as a datetime or UTC epoch
        seconds), in time linear in the number of entries.

        cryptography makes and signs the CRL's frame (version, algorithm, issuer, dates,
        CRL number, authority key identifier) without entries; the entries are DER-encoded
        here (about 1.7 us each, against about 9 us through x509.RevokedCertificateBuilder),
        spliced into the TBS, and the TBS is signed with the CA key; the signature is
        verified with the CA certificate before anyone sees it.
        """
        frame = x509.CertificateRevocationListBuilder(
            issuer_name=self.cert.subject,
            last_update=utc_seconds(this_update),
            next_update=utc_seconds(next_update),
            extensions=[
                x509.Extension(x509.CRLNumber.oid, False, x509.CRLNumber(number)),
                x509.Extension(self._aki.oid, False, self._aki),
            ],
        ).sign(self.__key, self._hash)  # type: ignore[arg-type]
        entries = encode_crl_entries(revoked)
        if not entries:
            return frame.public_bytes(serialization.Encoding.DER)
        # TBSCertList: version, signature, issuer, thisUpdate, nextUpdate,
        # [revokedCertificates], [0] crlExtensions: the entries go before the [0]
        fields = _der_children(_der_value(frame.tbs_certlist_bytes))
        if len(fields) != 6 or fields[-1][0] != 0xA0:
            raise CAError("internal check failed: unexpected CRL frame from cryptography")
        head = b"".join(f[1] for f in fields[:5])
        tbs = _der_tlv(0x30, head + _der_tlv(0x30, entries) + fields[5][1])
        outer = _der_children(_der_value(frame.public_bytes(serialization.Encoding.DER)))
        signature = self._sign_bytes(tbs)
        if not self._signature_valid(signature, tbs):
            raise CAError("internal check failed: the CRL does not verify under the CA")
        return _der_tlv(0x30, tbs + outer[1][1] + _der_tlv(0x03, b"\x00" + signature))

    def signed_this_crl(self, der: bytes) -> bool:
        """Whether `der` is a CRL signed with this CA's key (checked on the DER as it is:
        cryptography's is_signature_valid re-encodes a large CRL first)."""
        try:
            tbs, _algorithm, signature = (e for _, e in _der_children(_der_value(der)))
            # BIT STRING: no unused bits
            return self._signature_valid(_der_value(signature)[1:], tbs)
        except (CAError, ValueError, IndexError):
            return False

    def _signature_valid(self, signature: bytes, data: bytes) -> bool:
        """Whether `signature` (as `_sign_bytes` makes it) verifies under the CA certificate."""
        pub = self._public_key
        try:
            if isinstance(pub, ed25519.Ed25519PublicKey):
                pub.verify(signature, data)
                return True
            assert self._hash is not None
            if isinstance(pub, ec.EllipticCurvePublicKey):
                pub.verify(signature, data, ec.ECDSA(self._hash))
            else:
                pub.verify(signature, data, padding.PKCS1v15(), self._hash)
        except InvalidSignature:
            return False
        return True

    def _sign_bytes(self, data: bytes) -> bytes:
        """The CA key's signature over `data`, as the certificate and CRL builders make it."""
        return _sign_with(self.__key, data, self._hash)

    # --- PKCS#12 -------------------------------------------------------------------------------
    def pkcs12_bundle(
        self,
        subject_key: PrivateKey,
        cert: x509.Certificate,
        friendly_name: str,
        password: str,
        preset: str,
    ) -> bytes:
        """A p12 with key, certificate and the CA chain, encrypted per `preset`."""
        return make_pkcs12(
            subject_key, cert, self.bundle_certificates(), friendly_name, password, preset
        )


def make_pkcs12(
    key: PrivateKey,
    cert: x509.Certificate,
    cas: Sequence[x509.Certificate],
    friendly_name: str,
    password: str,
    preset: str,
) -> bytes:
    fmt = serialization.PrivateFormat.PKCS12.encryption_builder()
    if preset == "legacy":
        enc = (
            fmt.kdf_rounds(PKCS12_KDF_ROUNDS)
            .key_cert_algorithm(pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC)
            .hmac_hash(hashes.SHA1())  # noqa: S303 - the "legacy" preset, on request
            .build(password.encode())
        )
    else:
        enc = (
            # PBKDF2 iterations as OpenSSL 3 uses by default; the password is random
            # (>= 96 bits), so the KDF cost adds little and slows every import
            fmt.kdf_rounds(PKCS12_KDF_ROUNDS)
            .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
            .hmac_hash(hashes.SHA256())
            .build(password.encode())
        )
    return pkcs12.serialize_key_and_certificates(
        friendly_name.encode("utf-8"), key, cert, list(cas), enc
    )


def subject_key_matches(key: Any, public_key: Any) -> bool:
    return public_key_bytes(key.public_key()) == public_key_bytes(public_key)


def load_subject_key(data: bytes) -> PrivateKey:
    """A dropped NAME.key (PEM, unencrypted)."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise CAError(
            "the key file is encrypted; drop it unencrypted (openssl genrsa without -aes256)"
        ) from None
    except (ValueError, Exception) as exc:  # noqa: BLE001 - any parse failure is a user error
        raise CAError(f"the key file is not a PEM private key ({exc.__class__.__name__})") from None
    if not isinstance(
        key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise CAError("the key file holds a key type certdrop does not support")
    return key


def load_ca_certificate(state: Path) -> x509.Certificate:
    """The CA certificate, without touching the key (no passphrase needed) — but a CA key
    readable by group or others is refused here too."""
    key_path, cert_path = state / CA_KEY, state / CA_CERT
    if not cert_path.exists() or not key_path.exists():
        raise CAError(f"no CA in {state}; create one with 'certdrop init'")
    st = key_path.stat()
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise CAError(
            f"the CA key {key_path} is readable by group or others (mode "
            f"{stat.S_IMODE(st.st_mode):04o}); run 'chmod 600 {key_path}'"
        )
    return _load_cert(cert_path.read_bytes(), str(cert_path))


def public_key_algorithm(cert: x509.Certificate) -> str:
    """rsa-2048, ec-secp256r1, ed25519: the names `CertificateAuthority.key_algorithm` uses."""
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return f"rsa-{key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"ec-{key.curve.name}"
    return "ed25519"


# --- creating and adopting a CA -------------------------------------------------------------------


def _load_cert(data: bytes, where: str) -> x509.Certificate:
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise CAError(f"{where} is not a certificate ({exc})") from None


def _load_key(data: bytes, passphrase: bytes | None, where: str) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError:
        if passphrase is None:
            raise CAError(
                f"{where} is encrypted; set [ca] key_passphrase_file (or the systemd credential)"
            ) from None
        raise CAError(
            f"{where} is not encrypted but a passphrase was given; remove key_passphrase_file"
        ) from None
    except ValueError as exc:
        raise CAError(
            f"{where} cannot be loaded: wrong passphrase or not a PEM key ({exc})"
        ) from None
    if not isinstance(
        key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise CAError(f"{where} holds an unsupported key type")
    return key


def _key_pem(key: PrivateKey, passphrase: bytes | None) -> bytes:
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def ca_exists(state: Path) -> bool:
    return (state / CA_KEY).exists() or (state / CA_CERT).exists()


def create_ca(
    state: Path,
    settings: CASettings,
    now: dt.datetime,
    passphrase: bytes | None = None,
    linter: Linter | None = None,
) -> x509.Certificate:
    """Create a new root CA in `state`; never overwrites an existing one."""
    if ca_exists(state):
        raise CAError(f"a CA already exists in {state}; certdrop never overwrites a CA")
    ensure_dir(state, 0o700)
    key = generate_key(settings.key_type)
    attrs: list[x509.NameAttribute[str]] = []
    if settings.country:
        attrs.append(x509.NameAttribute(NameOID.COUNTRY_NAME, settings.country))
    if settings.locality:
        attrs.append(x509.NameAttribute(NameOID.LOCALITY_NAME, settings.locality))
    if settings.organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, settings.organization))
    if settings.organizational_unit:
        attrs.append(
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, settings.organizational_unit)
        )
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, settings.common_name))
    name = x509.Name(attrs)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    start = utc_seconds(now) - dt.timedelta(minutes=5)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(random_serial())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=settings.validity_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
    )
    cert = builder.sign(key, _hash_for(key))  # type: ignore[arg-type]
    if linter is not None:
        findings = linter(cert.public_bytes(serialization.Encoding.DER))
        if findings:
            raise LintError("the CA certificate would not lint clean: " + "; ".join(findings))
    # key first (0600), certificate last: a CA exists once ca.cer exists
    atomic_write(state / CA_KEY, _key_pem(key, passphrase), 0o600)
    atomic_write(state / CA_CERT, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert


def adopt_ca(
    state: Path,
    cert_path: Path,
    key_path: Path,
    now: dt.datetime,
    passphrase: bytes | None = None,
    chain_path: Path | None = None,
) -> tuple[x509.Certificate, list[str]]:
    """Adopt an existing CA (such as the howto's ca.cer + ca.key). Returns warnings."""
    if ca_exists(state):
        raise CAError(f"a CA already exists in {state}; certdrop never overwrites a CA")
    try:
        cert_data, key_data = cert_path.read_bytes(), key_path.read_bytes()
    except OSError as exc:
        raise CAError(f"cannot read {exc.filename}: {exc.strerror}") from None
    cert = _load_cert(cert_data, str(cert_path))
    key = _load_key(key_data, passphrase, str(key_path))
    if public_key_bytes(key.public_key()) != public_key_bytes(cert.public_key()):
        raise CAError(f"{key_path} is not the private key of {cert_path}")
    warnings: list[str] = []
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        raise CAError(
            f"{cert_path} is not a CA certificate (no basicConstraints CA:TRUE)"
        ) from None
    if not bc.value.ca:
        raise CAError(f"{cert_path} is not a CA certificate (basicConstraints CA:FALSE)")
    if not bc.critical:
        warnings.append("basicConstraints is not marked critical (RFC 5280 requires it for CAs)")
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        if not ku.key_cert_sign:
            raise CAError(f"{cert_path} may not sign certificates (keyUsage lacks keyCertSign)")
        if not ku.crl_sign:
            warnings.append("keyUsage lacks cRLSign: relying parties may reject its CRLs")
    except x509.ExtensionNotFound:
        warnings.append("the CA certificate has no keyUsage extension")
    if cert.not_valid_after_utc <= now:
        raise CAError(f"{cert_path} expired on {cert.not_valid_after_utc:%Y-%m-%d}")
    algo = cert.signature_hash_algorithm
    if algo is not None and algo.name in ("sha1", "md5"):
        warnings.append(
            f"the CA certificate is signed with {algo.name.upper()}; certificates certdrop issues "
            "use SHA-256 regardless, but plan to replace this CA"
        )
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < 2048:
        raise CAError(f"the CA key has only {key.key_size} bits; at least 2048 are required")
    chain: list[x509.Certificate] = []
    if chain_path is not None:
        try:
            chain = x509.load_pem_x509_certificates(chain_path.read_bytes())
        except (OSError, ValueError) as exc:
            raise CAError(f"cannot read the chain {chain_path}: {exc}") from None
    ensure_dir(state, 0o700)
    atomic_write(state / CA_KEY, _key_pem(key, passphrase), 0o600)
    if chain:
        atomic_write(
            state / CA_CHAIN,
            b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain),
            0o644,
        )
    atomic_write(state / CA_CERT, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert, warnings


def read_passphrase(path: str) -> bytes | None:
    """The CA key passphrase from a file or a systemd credential (first line)."""
    if not path:
        cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
        if cred_dir and (Path(cred_dir) / "ca-key-passphrase").exists():
            path = str(Path(cred_dir) / "ca-key-passphrase")
        else:
            return None
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CAError(
            f"[ca] key_passphrase_file = {path!r}: cannot read it ({exc.strerror})"
        ) from None
    line = data.splitlines()[0] if data.splitlines() else b""
    if not line:
        raise CAError(f"[ca] key_passphrase_file = {path!r} is empty")
    return line
