"""The request parser (certdrop.intake.request) under any input (Hypothesis): random bytes,
mutated CSRs (DER and PEM) and TOML-ish text raise only RequestError, with a one-line
reason; what parses is judged by the policy without surprises; the corpus parses.
"""

from __future__ import annotations

import base64
import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from certdrop.config import Profile, SubjectRule
from certdrop.errors import RequestError
from certdrop.intake.request import parse_request
from certdrop.issue.policy import PolicyContext, evaluate

NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)
CA_END = NOW + dt.timedelta(days=3650)

# what parses is judged by a client and a server profile
PROFILES = [
    Profile(),
    Profile(
        extended_key_usage=["server_auth"],
        allow_dns_names=True,
        subject={"CN": SubjectRule(required=True)},
    ),
]


def _valid_csr() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, "Prop"),
                    x509.NameAttribute(NameOID.EMAIL_ADDRESS, "p@example.org"),
                ]
            )
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.RFC822Name("p@example.org"), x509.DNSName("a.example.org")]
            ),
            False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.DER)


VALID_DER = _valid_csr()


def _parse(data: bytes) -> None:
    try:
        parse_request(data)
    except RequestError as exc:
        assert str(exc) and "\n" not in str(exc)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=3000))
def test_parser_on_random_bytes(data: bytes) -> None:
    _parse(data)
    _parse(b"\x30" + data)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(VALID_DER)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete"]))
        i = draw(st.integers(0, len(data) - 1)) if data else 0
        if op == "flip" and data:
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[i] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[i:]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            del data[i : i + draw(st.integers(1, 8))]
    return bytes(data)


@settings(max_examples=600, deadline=None)
@given(mutated(), st.booleans())
def test_parser_on_mutated_requests(data: bytes, pem: bool) -> None:
    if pem:
        body = base64.encodebytes(data)
        data = (
            b"-----BEGIN CERTIFICATE REQUEST-----\n" + body + b"-----END CERTIFICATE REQUEST-----\n"
        )
    try:
        req, _csr = parse_request(data)
    except RequestError as exc:
        assert str(exc)
        return
    # what parses must also be judged without surprises
    for profile in PROFILES:
        evaluate(req, profile, PolicyContext(now=NOW, ca_not_after=CA_END, owner="alice"))


@settings(max_examples=300, deadline=None)
@given(
    st.text(max_size=400),
    st.sampled_from(["[subject]\n", "", "key_type = 'ec-p256'\n[subject]\n", "[subject]\nCN = "]),
)
def test_parser_on_toml_ish_text(body: str, head: str) -> None:
    data = (head + body).encode("utf-8", "surrogatepass")
    _parse(data)


def test_corpus_files_parse_or_refuse() -> None:
    for f in sorted((Path(__file__).resolve().parents[2] / "corpus").glob("*.req")):
        req, _ = parse_request(f.read_bytes())
        assert req.key.kind in ("rsa", "dsa")
