"""Subject names by their short names: the table, the text certdrop shows, the Name it builds."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from certdrop.authority.names import ATTRIBUTE_OIDS, OID_NAMES, build_name, subject_text
from conftest import openssl_csr


def test_the_table_goes_both_ways() -> None:
    assert len(set(ATTRIBUTE_OIDS.values())) == len(ATTRIBUTE_OIDS)
    assert {OID_NAMES[oid]: oid for oid in OID_NAMES} == ATTRIBUTE_OIDS
    assert ATTRIBUTE_OIDS["CN"] == NameOID.COMMON_NAME
    assert ATTRIBUTE_OIDS["emailAddress"] == NameOID.EMAIL_ADDRESS


def test_build_name_keeps_the_order_one_attribute_per_rdn() -> None:
    attrs = [("C", "BE"), ("O", "MyOrg"), ("OU", "A"), ("OU", "B"), ("CN", "Alice")]
    name = build_name(attrs)
    assert [len(rdn) for rdn in name.rdns] == [1] * 5
    assert [(OID_NAMES[a.oid], a.value) for a in name] == attrs
    assert build_name([]) == x509.Name([])
    with pytest.raises(KeyError):
        build_name([("favouriteColour", "blue")])


def test_subject_text_names_every_attribute_certdrop_knows() -> None:
    attrs = [(short, f"v{i}") for i, short in enumerate(ATTRIBUTE_OIDS)]
    attrs = [(s, "BE" if s == "C" else v) for s, v in attrs]  # C is two letters
    text = subject_text(build_name(attrs))
    # RFC 4514: the last RDN first; every attribute by certdrop's short name, no OID
    assert text == ",".join(f"{s}={v}" for s, v in reversed(attrs))
    assert "2.5.4." not in text and "1.2.840" not in text


def test_subject_text_of_what_openssl_writes(tmp_path: Path) -> None:
    req, _ = openssl_csr(
        tmp_path,
        "names",
        "/C=BE/O=MyOrg/OU=MyDpt/emailAddress=koen@example.org/CN=Koen Van Impe",
        kind="ec:prime256v1",
    )
    csr = x509.load_pem_x509_csr(req.read_bytes())
    assert subject_text(csr.subject) == (
        "CN=Koen Van Impe,emailAddress=koen@example.org,OU=MyDpt,O=MyOrg,C=BE"
    )
