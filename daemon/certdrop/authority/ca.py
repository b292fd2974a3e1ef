"""The certificate authority: certificate building, signing, CRLs.

A loaded CA holds its private key and never hands it out: callers get certificates,
CRLs and encrypted PKCS#12 bundles (the one key that comes in from outside, a subject
key a user dropped, leaves only inside a p12).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

from ..clock import utc_seconds
from ..errors import CAError, LintError
from ..fsutil import write_staged
from .der import (
    check_name_strings,
    children,
    element_value,
    pem_armor,
    rfc5280_time,
    spki_key_bits,
    tbs_fields,
    tlv,
)
from .keys import (
    PrivateKey,
    generate_key,
    generate_like,
    key_algorithm,
    load_ca_key,
    make_pkcs12,
    public_key_bytes,
    sign_bytes,
    signature_hash,
)
from .lifecycle import CA_CERT, CA_KEY, LintFunction, ca_id, load_ca_certificates
from .names import build_name, subject_text
from .reasons import CRL_REASON_CODES

EKU_OIDS = {
    "client_auth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "server_auth": ExtendedKeyUsageOID.SERVER_AUTH,
    "email_protection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "code_signing": ExtendedKeyUsageOID.CODE_SIGNING,
    "time_stamping": ExtendedKeyUsageOID.TIME_STAMPING,
    "ocsp_signing": ExtendedKeyUsageOID.OCSP_SIGNING,  # the OCSP responder's (responder.py)
}


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
    ocsp_url: str = ""  # authorityInfoAccess: where relying parties ask OCSP
    ca_issuers_url: str = ""  # authorityInfoAccess: where the issuing CA's certificate is
    ocsp_nocheck: bool = False  # id-pkix-ocsp-nocheck: an OCSP responder's own certificate


@dataclass(frozen=True)
class CertificateUrls:
    """Where relying parties find what issued certificates point to ("" = not carried)."""

    crl: str = ""  # the CRL distribution point
    ocsp: str = ""  # AIA: the OCSP responder
    ca_issuers: str = ""  # AIA: the issuing CA's certificate


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


# --- CRL numbers ------------------------------------------------------------------------------------
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def crl_number(now: dt.datetime, above: int = 0) -> int:
    """The number of a CRL made at `now`: its time in nanoseconds since the epoch (as
    Boulder numbers its CRLs), or `above` + 1 when that is larger (`above`: the highest
    number known to be used). A number derived from the time cannot be used again by a
    copy of the CA restored from an older backup, which a counter would be."""
    return max((now - _EPOCH) // dt.timedelta(microseconds=1) * 1000, above + 1)


# --- DER for CRL entries ---------------------------------------------------------------------------
CrlEntry = tuple[int, dt.datetime | int, str | None]
"""A revoked certificate: serial, revocation time (datetime or UTC epoch seconds), reason."""

# crlEntryExtensions holding one non-critical reasonCode (2.5.29.21): everything but the code
_REASON_EXT = bytes.fromhex("300c300a0603551d1504030a01")


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
            prefix = days[day] = rfc5280_time(day * 86400)[:-7]  # without HHMMSSZ
        h, rest = divmod(secs, 3600)
        m, sec = divmod(rest, 60)
        raw = serial.to_bytes(serial.bit_length() // 8 + 1, "big")  # a leading 0 if needed
        body = b"\x02%c%b%b%02d%02d%02dZ" % (len(raw), raw, prefix, h, m, sec)
        if reason and reason != "unspecified":
            code = CRL_REASON_CODES.get(reason)
            if code is None:
                raise CAError(f"unknown revocation reason {reason!r}")
            body += _REASON_EXT + bytes((code,))
        append(b"\x30%c%b" % (len(body), body))
    return b"".join(parts)


# --- DER for certificate extensions --------------------------------------------------------------
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
    return tlv(0x30, body + tlv(0x04, value))


# what cryptography's RFC822Name takes for a display name or a list: never in an address
_NOT_IN_ADDRESS = frozenset(' \t"(),:;<>[\\]')


def _subject_alt_name_der(emails: Sequence[str], dns_names: Sequence[str], critical: bool) -> bytes:
    """subjectAltName with rfc822Name [1] and dNSName [2] (IA5String) entries, in that
    order: byte for byte what SubjectAlternativeName([RFC822Name, ..., DNSName, ...])
    encodes, without its parseaddr of every address. As there, values must be
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
        names.append(tlv(0x81, email.encode("ascii")))
    for dns in dns_names:
        if not dns.isascii():
            raise ValueError(f"a DNS name must be ASCII (an A-label): {dns!r}")
        names.append(tlv(0x82, dns.encode("ascii")))
    return _id_ce_extension_der(17, critical, tlv(0x30, b"".join(names)))


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


# id-pe-authorityInfoAccess (1.3.6.1.5.5.7.1.1) and id-pkix-ocsp-nocheck (1.3.6.1.5.5.7.48.1.5)
_AIA_OID = bytes.fromhex("06082b06010505070101")
_OCSP_NOCHECK = tlv(0x30, bytes.fromhex("06092b0601050507300105") + tlv(0x04, b"\x05\x00"))


@functools.lru_cache(maxsize=16)
def _authority_information_access(ocsp_url: str, ca_issuers_url: str) -> bytes:
    """authorityInfoAccess (RFC 5280 4.2.2.1), non-critical: OCSP first, then caIssuers."""
    access = []
    if ocsp_url:
        access.append(
            x509.AccessDescription(
                AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url)
            )
        )
    if ca_issuers_url:
        access.append(
            x509.AccessDescription(
                AuthorityInformationAccessOID.CA_ISSUERS,
                x509.UniformResourceIdentifier(ca_issuers_url),
            )
        )
    value = x509.AuthorityInformationAccess(access).public_bytes()
    return tlv(0x30, _AIA_OID + tlv(0x04, value))


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
    return children(element_value(sample.public_bytes(serialization.Encoding.DER)))[1][1]


class CertificateAuthority:
    """A loaded CA: its certificate, the chain above it, and its private key."""

    def __init__(
        self, cert: x509.Certificate, key: PrivateKey, chain: Sequence[x509.Certificate] = ()
    ):
        self.cert = cert
        self.chain = tuple(chain)
        self.__key = key
        self._hash = signature_hash(key)
        self._public_key: Any = cert.public_key()  # checks every signature made here
        self._not_after = cert.not_valid_after_utc  # every decision and every TBS reads it
        # the issuer of what this CA signs: its subject exactly as its certificate has it
        self._issuer_der = tbs_fields(cert.tbs_certificate_bytes)[4]
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
        """The CA in the state folder, its key decrypted with `passphrase` if need be."""
        key_path, cert_path = state / CA_KEY, state / CA_CERT
        cert, chain = load_ca_certificates(state, check_key=True)
        key = load_ca_key(key_path.read_bytes(), passphrase, str(key_path))
        if public_key_bytes(key.public_key()) != public_key_bytes(cert.public_key()):
            raise CAError(
                f"the CA key {key_path} does not belong to the CA certificate {cert_path}"
            )
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
        return key_algorithm(self.__key)

    @functools.cached_property
    def id(self) -> str:
        """The CA's id in the index (`lifecycle.ca_id`)."""
        return ca_id(self.cert)

    def bundle_certificates(self) -> list[x509.Certificate]:
        """The CA certificate and everything above it (what relying parties trust)."""
        return [self.cert, *self.chain]

    # --- signing -------------------------------------------------------------------------------
    @functools.cached_property
    def _draft_signature(self) -> bytes:
        """The signature value drafts carry: made once by a throwaway key of the CA key's
        algorithm and size, over other bytes. pkilint reads a signature's form, never
        verifies it, and a signature per draft would cost as much as the real one."""
        return sign_bytes(generate_like(self.__key), b"certdrop lint draft", self._hash)

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
        check_name_strings(subject_der)
        algorithm = children(element_value(spki))[0][1]  # the key's AlgorithmIdentifier
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
                    hashlib.sha1(spki_key_bits(spki), usedforsecurity=False).digest()
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
        if spec.ocsp_url or spec.ca_issuers_url:
            exts.append(_authority_information_access(spec.ocsp_url, spec.ca_issuers_url))
        if spec.ocsp_nocheck:
            exts.append(_OCSP_NOCHECK)
        serial = spec.serial.to_bytes(spec.serial.bit_length() // 8 + 1, "big")
        return tlv(
            0x30,
            b"\xa0\x03\x02\x01\x02"  # [0] version: v3
            + tlv(0x02, serial)
            + self._signature_algorithm_der
            + self._issuer_der
            + tlv(0x30, rfc5280_time(not_before) + rfc5280_time(not_after))
            + subject_der
            + spki
            + tlv(0xA3, tlv(0x30, b"".join(exts))),
        )

    def _certificate(self, tbs: bytes, signature: bytes) -> bytes:
        """Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }"""
        return tlv(0x30, tbs + self._signature_algorithm_der + tlv(0x03, b"\x00" + signature))

    def issue(self, spec: IssueSpec, linter: LintFunction | None = None) -> x509.Certificate:
        """Encode, lint (before the CA key signs anything), sign and double-check.

        With a linter, the to-be-signed certificate is first linted as a draft that
        carries a throwaway key's signature (`_draft_signature`); any finding refuses it
        (LintError) and the CA key signs nothing. The CA key then signs the very bytes
        that were linted. After the signing: the certificate must parse, its TBS be the
        linted one, its issuer the CA, its public key the requested one, and the signature
        must verify under the CA certificate's key (`check_issued`).
        """
        return self._sign_checked(spec, self._linted_tbs(spec, linter))[0]

    def _linted_tbs(self, spec: IssueSpec, linter: LintFunction | None) -> bytes:
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
        der = self._certificate(tbs, self._sign_bytes(tbs))
        return self.check_issued(der, tbs, spec.public_key), der

    def check_issued(self, der: bytes, tbs: bytes, public_key: Any) -> x509.Certificate:
        """The checks every certificate this CA signs passes before anyone sees it: `der`
        must parse, its TBS be `tbs` (the linted one), carry `public_key` (an object or
        its SubjectPublicKeyInfo DER), name this CA as its issuer, and its signature
        verify under the CA certificate. The certificate; CAError if a check fails."""
        try:
            cert = x509.load_der_x509_certificate(der)
            signed_tbs = cert.tbs_certificate_bytes
            fields = tbs_fields(signed_tbs)
            issuer, spki = fields[2], fields[5]
        except (ValueError, IndexError) as exc:
            raise CAError(
                f"internal check failed: the certificate does not parse ({exc})"
            ) from None
        if signed_tbs != tbs:
            raise CAError(
                "internal check failed: the signed certificate differs from the linted one"
            )
        if spki != public_key_bytes(public_key):
            raise CAError("internal check failed: the certificate carries a different public key")
        if issuer != self._issuer_der:
            raise CAError("internal check failed: the certificate names another issuer")
        if not self._signature_valid(cert.signature, signed_tbs):
            raise CAError(
                "certificate was not issued by this CA (its signature does not verify under "
                "the CA certificate)"
            )
        return cert

    def issue_and_stage(
        self, specs: Sequence[IssueSpec], stagings: Sequence[Staging], linter: LintFunction | None
    ) -> list[Staged | LintError]:
        """`issue` each spec and write its outputs where its Staging says.

        This is the whole per-certificate work of a batch, in one place for the daemon
        process and the worker processes: a key made for a p12 exists only here, in memory,
        and leaves only inside the encrypted bundle.
        """
        # In two passes, all encoding and linting first, then all signing and writing:
        # pkilint then runs one certificate after the other as it does alone, which is
        # faster than with signatures and file writes in between.
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
        here (much faster than through x509.RevokedCertificateBuilder), spliced into the TBS, and the TBS is signed with the CA key; the signature is
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
        fields = children(element_value(frame.tbs_certlist_bytes))
        if len(fields) != 6 or fields[-1][0] != 0xA0:
            raise CAError("internal check failed: unexpected CRL frame from cryptography")
        head = b"".join(f[1] for f in fields[:5])
        tbs = tlv(0x30, head + tlv(0x30, entries) + fields[5][1])
        outer = children(element_value(frame.public_bytes(serialization.Encoding.DER)))
        signature = self._sign_bytes(tbs)
        if not self._signature_valid(signature, tbs):
            raise CAError("internal check failed: the CRL does not verify under the CA")
        return tlv(0x30, tbs + outer[1][1] + tlv(0x03, b"\x00" + signature))

    def signed_this_crl(self, der: bytes) -> bool:
        """Whether `der` is a CRL signed with this CA's key (checked on the DER as it is:
        cryptography's is_signature_valid re-encodes a large CRL first)."""
        try:
            tbs, _algorithm, signature = (e for _, e in children(element_value(der)))
            # BIT STRING: no unused bits
            return self._signature_valid(element_value(signature)[1:], tbs)
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
        return sign_bytes(self.__key, data, self._hash)

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
