"""The DER and PEM primitives, against what cryptography writes and reads."""

from __future__ import annotations

import calendar
import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from certdrop.authority.der import (
    check_name_strings,
    children,
    element_header,
    element_value,
    encode_length,
    pem_armor,
    rfc5280_time,
    sequence_length,
    spki_key_bits,
    tbs_fields,
    tlv,
)
from certdrop.errors import CAError


def _certificate(key: object, name: str = "DER") -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    when = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    return x509.CertificateBuilder(
        issuer_name=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Issuer")]),
        subject_name=subject,
        public_key=key.public_key(),  # type: ignore[attr-defined]
        serial_number=12345,
        not_valid_before=when,
        not_valid_after=when + dt.timedelta(days=1),
    ).sign(key, hashes.SHA256())  # type: ignore[arg-type]


def test_lengths_and_elements_as_der_writes_them() -> None:
    assert encode_length(0) == b"\x00" and encode_length(127) == b"\x7f"
    assert encode_length(128) == b"\x81\x80" and encode_length(255) == b"\x81\xff"
    assert encode_length(256) == b"\x82\x01\x00" and encode_length(65536) == b"\x83\x01\x00\x00"
    for n in (0, 5, 127, 128, 300, 70_000):
        element = tlv(0x04, b"x" * n)
        assert element_header(element) == (0x04, len(element) - n, len(element))
        assert element_value(element) == b"x" * n
    # an OCTET STRING as cryptography encodes one, inside an extension
    ski = x509.SubjectKeyIdentifier(b"\x01" * 20).public_bytes()
    assert tlv(0x04, b"\x01" * 20) == ski


def test_element_header_refuses_lengths_der_does_not_allow() -> None:
    assert element_header(b"\x30\x03abc", 0) == (0x30, 2, 5)
    assert element_header(b"..\x02\x82\x01\x00", 2) == (0x02, 6, 6 + 256)  # end past the data
    with pytest.raises(IndexError):
        element_header(b"\x30")  # no length octet
    with pytest.raises(IndexError):
        element_header(b"\x30\x82\x01")  # two length octets announced, one there
    with pytest.raises(ValueError):
        element_header(b"\x30\x80\x00\x00")  # indefinite
    with pytest.raises(ValueError):
        element_header(b"\x30\x85" + b"\x01" * 10)  # more than four length octets
    with pytest.raises(CAError, match="trailing data"):
        element_value(b"\x04\x01ab")


def _reference_sequence_length(data: bytes) -> int | None:
    """What intake's own parser computed for a dropped DER request, before there was one
    parser for the package."""
    if len(data) < 2 or data[0] != 0x30:
        return None
    first = data[1]
    if first < 0x80:
        return 2 + first
    n = first & 0x7F
    if n == 0 or n > 4 or len(data) < 2 + n:
        return None
    return 2 + n + int.from_bytes(data[2 : 2 + n], "big")


@given(st.binary(max_size=12) | st.binary(max_size=10).map(lambda b: b"\x30" + b))
def test_sequence_length_is_the_one_intake_relied_on(data: bytes) -> None:
    assert sequence_length(data) == _reference_sequence_length(data)


def test_sequence_length_of_a_request_and_of_what_is_not_one() -> None:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Len")]))
        .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )
    assert sequence_length(csr) == len(csr)
    assert sequence_length(csr + b"\0\0") == len(csr)  # extra data: the caller's to refuse
    assert sequence_length(csr[:-7]) == len(csr)  # truncated: the caller's to refuse
    for bad in (
        b"",
        b"\x30",
        b"\x31\x00",
        b"\x30\x80",
        b"\x30\x85\x01\x01\x01\x01\x01",
        b"\x30\x82\x01",
    ):
        assert sequence_length(bad) is None, bad


def test_tbs_fields_children_and_key_bits_of_a_real_certificate() -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rsa_key = rsa.generate_private_key(65537, 2048)
    for key in (ec_key, rsa_key):
        cert = _certificate(key)
        fields = tbs_fields(cert.tbs_certificate_bytes)
        assert fields[0] == tlv(0x02, (12345).to_bytes(2, "big"))
        assert fields[2] == cert.issuer.public_bytes()
        assert fields[4] == cert.subject.public_bytes()
        spki = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        assert fields[5] == spki
        outer = children(element_value(cert.public_bytes(serialization.Encoding.DER)))
        assert [tag for tag, _ in outer] == [0x30, 0x30, 0x03]
        assert outer[0][1] == cert.tbs_certificate_bytes
    assert spki_key_bits(
        ec_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    ) == ec_key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    assert spki_key_bits(
        rsa_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    ) == rsa_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.PKCS1
    )


def test_rfc5280_time_switches_to_generalized_time_in_2050() -> None:
    def epoch(*args: int) -> int:
        return calendar.timegm(dt.datetime(*args, tzinfo=dt.UTC).utctimetuple())

    assert rfc5280_time(0) == b"\x17\x0d700101000000Z"
    assert rfc5280_time(epoch(2049, 12, 31, 23, 59, 59)) == b"\x17\x0d491231235959Z"
    assert rfc5280_time(epoch(2050, 1, 1)) == b"\x18\x0f20500101000000Z"
    # as cryptography writes validity dates on either side
    for year in (2049, 2050):
        when = dt.datetime(year, 6, 1, 12, 30, 45, tzinfo=dt.UTC)
        cert = x509.CertificateBuilder(
            issuer_name=x509.Name([]),
            subject_name=x509.Name([]),
            public_key=ec.generate_private_key(ec.SECP256R1()).public_key(),
            serial_number=1,
            not_valid_before=when,
            not_valid_after=when,
        ).sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
        validity = tbs_fields(cert.tbs_certificate_bytes)[3]
        stamp = rfc5280_time(int(when.timestamp()))
        assert validity == tlv(0x30, stamp + stamp)


def test_pem_armor_is_what_cryptography_writes() -> None:
    cert = _certificate(rsa.generate_private_key(65537, 2048), "A" * 60)
    der = cert.public_bytes(serialization.Encoding.DER)
    assert pem_armor("CERTIFICATE", der) == cert.public_bytes(serialization.Encoding.PEM)
    assert x509.load_pem_x509_certificate(pem_armor("CERTIFICATE", der)) == cert
    assert pem_armor("X", b"") == b"-----BEGIN X-----\n\n-----END X-----\n"


def test_name_strings_are_checked_against_their_types() -> None:
    good = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "BE"),  # PrintableString
            x509.NameAttribute(NameOID.COMMON_NAME, "Zoë <UTF8String>"),
            x509.NameAttribute(NameOID.EMAIL_ADDRESS, "a_b@example.org"),  # IA5String
        ]
    )
    check_name_strings(good.public_bytes())
    printable = x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, "a_b@")])
    with pytest.raises(ValueError, match="not a PrintableString"):
        check_name_strings(printable.public_bytes())
    ia5 = x509.Name([x509.NameAttribute(NameOID.EMAIL_ADDRESS, "zoë@example.org")])
    with pytest.raises(ValueError, match="not an IA5String"):
        check_name_strings(ia5.public_bytes())
    check_name_strings(x509.Name([]).public_bytes())
