"""Private keys: made, loaded, written, compared, signed with, and bundled in PKCS#12.

The CA key is loaded by `CertificateAuthority.load` and stays inside it; a subject key
(dropped beside a request, or made here for server-side key generation) leaves only
inside an encrypted PKCS#12 bundle.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.serialization import pkcs12

from ..errors import CAError

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

PKCS12_KDF_ROUNDS = 2048


def generate_key(key_type: str) -> PrivateKey:
    """A new key of a configured type: rsa-2048, rsa-3072, rsa-4096, ec-p256, ec-p384."""
    if key_type.startswith("rsa-"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[4:]))
    if key_type == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ec-p384":
        return ec.generate_private_key(ec.SECP384R1())
    raise CAError(f"unsupported key type {key_type!r}")


def generate_like(key: PrivateKey) -> PrivateKey:
    """A new key of `key`'s algorithm and size (curve)."""
    if isinstance(key, rsa.RSAPrivateKey):
        return rsa.generate_private_key(65537, key.key_size)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return ec.generate_private_key(key.curve)
    return ed25519.Ed25519PrivateKey.generate()


def key_algorithm(key: PrivateKey | CertificatePublicKeyTypes) -> str:
    """rsa-2048, ec-secp256r1, ed25519: how certdrop names a key's algorithm and size."""
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return f"rsa-{key.key_size}"
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return f"ec-{key.curve.name}"
    return "ed25519"


def signature_hash(key: Any) -> hashes.HashAlgorithm | None:
    """The hash `key` signs with (None: Ed25519 hashes itself)."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return hashes.SHA384() if key.curve.key_size >= 384 else hashes.SHA256()
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return None
    return hashes.SHA256()


def sign_bytes(key: Any, data: bytes, hash_: hashes.HashAlgorithm | None) -> bytes:
    """`key`'s signature over `data`, as the certificate and CRL builders make it."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)  # no separate hash
    assert hash_ is not None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(hash_))
    return bytes(key.sign(data, padding.PKCS1v15(), hash_))


def signer(key: Any, hash_: hashes.HashAlgorithm | None) -> Callable[[bytes], bytes]:
    """`sign_bytes` for one key, its algorithm chosen once (for signing many small things)."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign
    assert hash_ is not None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        algorithm = ec.ECDSA(hash_)
        return lambda data: key.sign(data, algorithm)
    pad = padding.PKCS1v15()
    return lambda data: bytes(key.sign(data, pad, hash_))


def public_key_bytes(key: Any) -> bytes:
    """SubjectPublicKeyInfo DER of a public key object (or the DER itself)."""
    if isinstance(key, bytes):
        return key
    return bytes(
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def subject_key_matches(key: Any, public_key: Any) -> bool:
    """Whether the private `key` belongs to `public_key` (an object or SPKI DER)."""
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


def load_ca_key(data: bytes, passphrase: bytes | None, where: str) -> PrivateKey:
    """A CA key (PEM), decrypted with `passphrase` when it is encrypted; `where` names
    the file in the errors."""
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


def private_key_pem(key: PrivateKey, passphrase: bytes | None) -> bytes:
    """PKCS#8 PEM, encrypted with `passphrase` when one is given."""
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


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


def make_pkcs12(
    key: PrivateKey,
    cert: x509.Certificate,
    cas: Sequence[x509.Certificate],
    friendly_name: str,
    password: str,
    preset: str,
) -> bytes:
    """A PKCS#12 bundle of `key`, `cert` and `cas`, encrypted per `preset` ("aes256" or
    "legacy")."""
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
