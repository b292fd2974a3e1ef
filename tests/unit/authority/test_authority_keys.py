"""authority/keys.py: keys made, named, loaded (with the refusals users see), written,
signed with, and bundled in PKCS#12 — judged by openssl where users meet them."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509.oid import NameOID

from certdrop.authority.keys import (
    PKCS12_KDF_ROUNDS,
    generate_key,
    generate_like,
    key_algorithm,
    load_ca_key,
    load_subject_key,
    make_pkcs12,
    private_key_pem,
    public_key_bytes,
    read_passphrase,
    sign_bytes,
    signature_hash,
    subject_key_matches,
)
from certdrop.errors import CAError
from conftest import OPENSSL, openssl_key, run


def _self_signed(key: object) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Keys")])
    when = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    return x509.CertificateBuilder(
        issuer_name=name,
        subject_name=name,
        public_key=key.public_key(),  # type: ignore[attr-defined]
        serial_number=7,
        not_valid_before=when,
        not_valid_after=when + dt.timedelta(days=1),
    ).sign(key, signature_hash(key))  # type: ignore[arg-type]


def test_generated_keys_and_their_names() -> None:
    expected = {
        "rsa-2048": "rsa-2048",
        "rsa-3072": "rsa-3072",
        "ec-p256": "ec-secp256r1",
        "ec-p384": "ec-secp384r1",
    }
    for key_type, name in expected.items():
        key = generate_key(key_type)
        assert key_algorithm(key) == key_algorithm(key.public_key()) == name
        like = generate_like(key)
        assert key_algorithm(like) == name and public_key_bytes(like.public_key()) != (
            public_key_bytes(key.public_key())
        )
    ed = ed25519.Ed25519PrivateKey.generate()
    assert key_algorithm(ed) == key_algorithm(generate_like(ed)) == "ed25519"
    with pytest.raises(CAError, match="unsupported key type 'dsa-1024'"):
        generate_key("dsa-1024")


def test_signatures_verify_under_the_public_key() -> None:
    data = b"to be signed"
    rsa_key, p256, p384 = generate_key("rsa-2048"), generate_key("ec-p256"), generate_key("ec-p384")
    ed = ed25519.Ed25519PrivateKey.generate()
    assert isinstance(signature_hash(rsa_key), hashes.SHA256)
    assert isinstance(signature_hash(p256), hashes.SHA256)
    assert isinstance(signature_hash(p384.public_key()), hashes.SHA384)
    assert signature_hash(ed) is None
    assert isinstance(rsa_key, rsa.RSAPrivateKey)
    rsa_key.public_key().verify(
        sign_bytes(rsa_key, data, hashes.SHA256()), data, padding.PKCS1v15(), hashes.SHA256()
    )
    for key in (p256, p384):
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        h = signature_hash(key)
        assert h is not None
        key.public_key().verify(sign_bytes(key, data, h), data, ec.ECDSA(h))
        with pytest.raises(InvalidSignature):
            key.public_key().verify(sign_bytes(key, data, h), data + b"!", ec.ECDSA(h))
    ed.public_key().verify(sign_bytes(ed, data, None), data)


def test_a_subject_key_matches_its_public_key_only() -> None:
    key, other = generate_key("ec-p256"), generate_key("ec-p256")
    spki = public_key_bytes(key.public_key())
    assert public_key_bytes(spki) is spki  # DER passes through
    assert spki == key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert subject_key_matches(key, key.public_key()) and subject_key_matches(key, spki)
    assert not subject_key_matches(other, spki)


def test_a_dropped_key_as_openssl_makes_it_and_the_refusals(tmp_path: Path) -> None:
    for kind in ("rsa:2048", "ec:prime256v1", "ed25519"):
        path = openssl_key(tmp_path / f"{kind.replace(':', '-')}.key", kind)
        key = load_subject_key(path.read_bytes())
        assert public_key_bytes(key.public_key()) == public_key_bytes(
            serialization.load_pem_private_key(path.read_bytes(), None).public_key()
        )
    encrypted = tmp_path / "enc.key"
    run([OPENSSL, "genrsa", "-aes256", "-passout", "pass:secret", "-out", str(encrypted), "2048"])
    with pytest.raises(CAError, match="the key file is encrypted; drop it unencrypted"):
        load_subject_key(encrypted.read_bytes())
    with pytest.raises(CAError, match=r"the key file is not a PEM private key \(ValueError\)"):
        load_subject_key(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    ed448_pem = private_key_pem(ed448.Ed448PrivateKey.generate(), None)  # type: ignore[arg-type]
    with pytest.raises(CAError, match="a key type certdrop does not support"):
        load_subject_key(ed448_pem)


def test_a_ca_key_written_with_a_passphrase_is_what_openssl_reads(tmp_path: Path) -> None:
    key = generate_key("ec-p256")
    pem = private_key_pem(key, b"correct horse")
    path = tmp_path / "ca.key"
    path.write_bytes(pem)
    out = run([OPENSSL, "pkey", "-in", str(path), "-passin", "pass:correct horse", "-pubout"])
    assert out.stdout.encode() == key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    loaded = load_ca_key(pem, b"correct horse", "ca.key")
    assert subject_key_matches(loaded, key.public_key())
    with pytest.raises(CAError, match=r"^ca\.key is encrypted; set \[ca\] key_passphrase_file"):
        load_ca_key(pem, None, "ca.key")
    with pytest.raises(
        CAError, match=r"ca\.key cannot be loaded: wrong passphrase or not a PEM key"
    ):
        load_ca_key(pem, b"wrong", "ca.key")
    plain = private_key_pem(key, None)
    assert b"ENCRYPTED" not in plain and b"BEGIN PRIVATE KEY" in plain
    with pytest.raises(CAError, match="not encrypted but a passphrase was given"):
        load_ca_key(plain, b"correct horse", "ca.key")
    ed448_pem = private_key_pem(ed448.Ed448PrivateKey.generate(), None)  # type: ignore[arg-type]
    with pytest.raises(CAError, match=r"ca\.key holds an unsupported key type"):
        load_ca_key(ed448_pem, None, "ca.key")


@pytest.mark.parametrize(
    ("preset", "expect"),
    [
        ("aes256", ["MAC: sha256", "PBES2, PBKDF2, AES-256-CBC", "PRF hmacWithSHA256"]),
        ("legacy", ["MAC: sha1", "pbeWithSHA1And3-KeyTripleDES-CBC"]),
    ],
)
def test_pkcs12_as_openssl_reads_it(tmp_path: Path, preset: str, expect: list[str]) -> None:
    key = generate_key("ec-p256")
    ca_key = generate_key("ec-p256")
    cert, ca = _self_signed(key), _self_signed(ca_key)
    path = tmp_path / "alice.p12"
    path.write_bytes(make_pkcs12(key, cert, [ca], "Alice Example", "pw-7", preset))
    info = run([OPENSSL, "pkcs12", "-in", str(path), "-info", "-noout", "-passin", "pass:pw-7"])
    text = info.stdout + info.stderr
    for piece in [*expect, f"Iteration {PKCS12_KDF_ROUNDS}"]:
        assert piece in text, text
    certs = run([OPENSSL, "pkcs12", "-in", str(path), "-nokeys", "-passin", "pass:pw-7"]).stdout
    assert "friendlyName: Alice Example" in certs
    assert certs.count("BEGIN CERTIFICATE") == 2
    wrong = subprocess.run(
        [OPENSSL, "pkcs12", "-in", str(path), "-noout", "-passin", "pass:nope"],
        capture_output=True,
    )
    assert wrong.returncode != 0


def test_the_passphrase_is_the_first_line_of_a_file_or_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert read_passphrase("") is None
    path = tmp_path / "pass"
    path.write_bytes(b"s3cret\nan explanation\n")
    assert read_passphrase(str(path)) == b"s3cret"
    path.write_bytes(b"")
    with pytest.raises(CAError, match=r"key_passphrase_file = '.*/pass' is empty"):
        read_passphrase(str(path))
    path.write_bytes(b"\nsecond line\n")
    with pytest.raises(CAError, match="is empty"):
        read_passphrase(str(path))
    with pytest.raises(CAError, match="cannot read it"):
        read_passphrase(str(tmp_path / "missing"))
    creds = tmp_path / "creds"
    creds.mkdir()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert read_passphrase("") is None  # no such credential
    (creds / "ca-key-passphrase").write_bytes(b"from systemd\n")
    assert read_passphrase("") == b"from systemd"
    path.write_bytes(b"from the file")
    assert read_passphrase(str(path)) == b"from the file"  # a configured file comes first
