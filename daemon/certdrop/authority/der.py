"""DER and PEM primitives: the few encodings and decodings certdrop does by hand.

certdrop writes the TBSCertificate of what it issues and the entries of its CRLs itself
(cryptography encodes names and extension values); these are the building blocks, and
the readers it needs for DER that cryptography made or that a user dropped. Definite
lengths only, as DER requires.
"""

from __future__ import annotations

import base64
import time

from ..errors import CAError

SEQUENCE = 0x30


def encode_length(n: int) -> bytes:
    """The length octets of a DER element whose contents are `n` octets long."""
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def tlv(tag: int, value: bytes) -> bytes:
    """One element: tag, length, `value`."""
    n = len(value)
    if n < 0x80:  # the common lengths spelled out: this runs for every OCSP answer
        return bytes((tag, n)) + value
    if n < 0x100:
        return bytes((tag, 0x81, n)) + value
    if n < 0x10000:
        return bytes((tag, 0x82, n >> 8, n & 0xFF)) + value
    return bytes((tag,)) + encode_length(n) + value


def element_header(der: bytes, pos: int = 0) -> tuple[int, int, int]:
    """(tag, start of contents, end of contents) of the element at `pos`.

    IndexError when the header is cut short; ValueError for a length DER does not
    allow here (indefinite, or more than four length octets). The end may lie past
    the data: the caller decides what truncation means.
    """
    tag = der[pos]
    first = der[pos + 1]
    if first < 0x80:
        return tag, pos + 2, pos + 2 + first
    n = first & 0x7F
    if n == 0 or n > 4:
        raise ValueError("not a definite DER length of at most four octets")
    if pos + 2 + n > len(der):
        raise IndexError("the DER length is cut short")
    length = int.from_bytes(der[pos + 2 : pos + 2 + n], "big")
    return tag, pos + 2 + n, pos + 2 + n + length


def sequence_length(data: bytes) -> int | None:
    """The whole length (header included) of the SEQUENCE `data` starts with, or None
    when `data` does not start with a SEQUENCE header DER allows (or it is cut short)."""
    try:
        tag, _, end = element_header(data, 0)
    except (IndexError, ValueError):
        return None
    return end if tag == SEQUENCE else None


def element_value(der: bytes) -> bytes:
    """The contents of a single DER element."""
    _, start, end = element_header(der, 0)
    if end != len(der):
        raise CAError("internal check failed: trailing data after a DER element")
    return der[start:end]


def children(content: bytes) -> list[tuple[int, bytes]]:
    """(tag, whole element) for each element in a constructed value's contents."""
    out = []
    pos = 0
    while pos < len(content):
        tag, _, end = element_header(content, pos)
        out.append((tag, content[pos:end]))
        pos = end
    return out


def rfc5280_time(epoch: int) -> bytes:
    """RFC 5280 Time: UTCTime through 2049, GeneralizedTime from 2050."""
    t = time.gmtime(epoch)
    if t.tm_year < 2050:
        return b"\x17\x0d" + time.strftime("%y%m%d%H%M%SZ", t).encode()
    return b"\x18\x0f" + time.strftime("%Y%m%d%H%M%SZ", t).encode()


def pem_armor(label: str, der: bytes) -> bytes:
    """PEM (RFC 7468) as OpenSSL and cryptography write it: base64 lines of 64 characters."""
    b64 = base64.b64encode(der)
    body = b"\n".join(b64[i : i + 64] for i in range(0, len(b64), 64))
    tag = label.encode("ascii")
    return b"-----BEGIN %b-----\n%b\n-----END %b-----\n" % (tag, body, tag)


def tbs_fields(tbs: bytes) -> list[bytes]:
    """A TBSCertificate's fields (DER) after its version: serialNumber, signature,
    issuer, validity, subject, subjectPublicKeyInfo, then the optional ones."""
    fields = children(element_value(tbs))
    return [der for _, der in fields[1 if fields[0][0] == 0xA0 else 0 :]]  # [0]: absent in v1


def spki_key_bits(spki: bytes) -> bytes:
    """The subjectPublicKey BIT STRING's contents without its unused-bits octet: the key
    itself (an RSAPublicKey DER, an EC point, an Ed25519 key)."""
    _algorithm, bits = children(element_value(spki))
    return element_value(bits[1])[1:]


_PRINTABLE = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 '()+,-./:=?"
)


def check_name_strings(name: bytes) -> None:
    """Refuse a Name (DER) holding a PrintableString or IA5String its type does not allow
    (ValueError).

    cryptography's `Name.public_bytes` encodes such values as they are (its certificate
    builder refuses them): e.g. serialNumber "a_b@" as a PrintableString.
    """
    for _, rdn in children(element_value(name)):
        for _, atv in children(element_value(rdn)):
            tag, value = children(element_value(atv))[1]
            text = element_value(value)
            if tag == 0x13 and not _PRINTABLE.issuperset(text):
                raise ValueError(f"{text.decode('utf-8', 'replace')!r} is not a PrintableString")
            if tag == 0x16 and not text.isascii():
                raise ValueError(f"{text.decode('utf-8', 'replace')!r} is not an IA5String")
