"""The OCSP responder certificates of several hosts on one index (publish/responder.py):
each host makes its key and asks; the leading host signs; the key never leaves its host."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID

from certdrop.authority.responder import RESPONDER_FILE, ResponderCredentials
from certdrop.index.schema import responders
from certdrop.publish.responder import NEXT_FILE, ResponderPublisher
from conftest import lint_clean
from issue_kit import Kit, make_kit


def _host(kit: Kit, folder: Path, host: str) -> ResponderPublisher:
    folder.mkdir(mode=0o700)
    rt = kit.rt
    return ResponderPublisher(
        folder, rt.ca, kit.clock, rt.responder.linter, rt.store, host, kit.audit.append
    )


def _creds(folder: Path) -> ResponderCredentials:
    path = folder / RESPONDER_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    return ResponderCredentials.from_pem(path.read_bytes())


def test_the_leader_signs_what_another_host_asked_for(tmp_path: Path) -> None:
    kit = make_kit(tmp_path)
    leader = kit.rt.responder
    b_folder = tmp_path / "b"
    b = _host(kit, b_folder, "b-000002")

    b.check(lead=False)  # b asks; nobody has signed
    assert not (b_folder / RESPONDER_FILE).exists()
    next_key = b_folder / NEXT_FILE
    assert next_key.stat().st_mode & 0o777 == 0o600
    assert kit.events("ocsp-responder-issued") == []

    leader.check(lead=True)  # its own, and b's request
    assert {e["host"] for e in kit.events("ocsp-responder-issued")} == {leader.host, "b-000002"}
    pending_key = serialization.load_pem_private_key(next_key.read_bytes(), None)

    b.check(lead=False)  # b takes its certificate
    mine = _creds(b_folder)
    assert not next_key.exists()
    assert mine.key.private_numbers() == pending_key.private_numbers()  # type: ignore[union-attr]
    cert = mine.cert
    cert.verify_directly_issued_by(kit.rt.ca.cert)
    assert list(cert.extensions.get_extension_for_oid(ExtensionOID.EXTENDED_KEY_USAGE).value) == [
        ExtendedKeyUsageOID.OCSP_SIGNING
    ]
    assert lint_clean(cert.public_bytes(serialization.Encoding.DER)) == []
    assert _creds(tmp_path / "ca" / "state").cert.serial_number != cert.serial_number

    # the index holds public keys and certificates only, never a private key
    private_der = mine.key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    secret = mine.key.private_numbers().private_value.to_bytes(32, "big")  # type: ignore[union-attr]
    with kit.rt.store.begin() as conn:
        rows = conn.execute(sa.select(responders)).all()
    assert len(rows) == 2
    for row in rows:
        blob = b"".join(bytes(v) for v in row if isinstance(v, bytes | memoryview))
        assert private_der not in blob and secret not in blob


def test_a_follower_renews_only_once_the_leader_signed(tmp_path: Path) -> None:
    """A day before b's certificate ends, b asks with a new key and keeps serving with the
    old one until the leader has signed the new."""
    kit = make_kit(tmp_path)
    b_folder = tmp_path / "b"
    b = _host(kit, b_folder, "b-000002")
    b.check(lead=False)
    kit.rt.responder.check(lead=True)
    b.check(lead=False)
    first = _creds(b_folder).cert

    kit.clock.set(first.not_valid_after_utc - dt.timedelta(days=1))
    b.check(lead=False)
    assert _creds(b_folder).cert == first  # still the old one, still valid
    assert (b_folder / NEXT_FILE).exists()
    kit.rt.responder.check(lead=True)
    b.check(lead=False)
    second = _creds(b_folder).cert
    assert second.serial_number != first.serial_number
    assert second.public_key() != first.public_key()
    assert second.not_valid_after_utc > first.not_valid_after_utc
