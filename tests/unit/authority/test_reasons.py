"""The one table of revocation reasons, and what is read from it."""

from __future__ import annotations

import subprocess
import sys

import pytest
from cryptography import x509

from certdrop.authority.reasons import (
    CRL_REASON_CODES,
    OPENSSL_REASONS,
    REASON_TABLE,
    REASONS,
    parse_reason,
)
from certdrop.errors import CertdropError


def test_reason_names() -> None:
    assert parse_reason("keyCompromise") == "keyCompromise"
    assert parse_reason("key-compromise") == "keyCompromise"
    assert parse_reason("CESSATION_OF_OPERATION") == "cessationOfOperation"
    with pytest.raises(Exception, match="aACompromise applies to attribute"):
        parse_reason("aACompromise")


def test_each_reason_once_with_rfc_5280s_code() -> None:
    names = [r.name for r in REASON_TABLE]
    assert len(set(names)) == len(names) and len({r.code for r in REASON_TABLE}) == len(names)
    for r in REASON_TABLE:
        # the name is cryptography's ReasonFlags value; the code is what it encodes
        flag = x509.ReasonFlags(r.name)
        assert x509.CRLReason(flag).public_bytes() == bytes((0x0A, 0x01, r.code)), r
    assert {x509.ReasonFlags(n) for n in names} == set(x509.ReasonFlags)


def test_what_is_offered_and_what_a_crl_carries() -> None:
    assert REASONS == (
        "unspecified",
        "keyCompromise",
        "cACompromise",
        "affiliationChanged",
        "superseded",
        "cessationOfOperation",
        "privilegeWithdrawn",
    )
    # every reason offered is one the CA can put in a CRL entry
    assert set(REASONS) <= set(CRL_REASON_CODES)
    assert set(CRL_REASON_CODES) == {r.name for r in REASON_TABLE} - {"removeFromCRL"}
    for r in REASON_TABLE:
        assert r.offered != bool(r.refused), r  # a reason not offered says why


@pytest.mark.parametrize(
    ("given", "why"),
    [
        ("certificateHold", "cannot take a certificate off hold again"),
        ("remove-from-CRL", "only meaningful in delta CRLs"),
        ("AACOMPROMISE", "applies to attribute certificates"),
    ],
)
def test_a_refused_reason_says_why_and_what_is_allowed(given: str, why: str) -> None:
    with pytest.raises(CertdropError) as caught:
        parse_reason(given)
    assert str(caught.value).startswith(f"--reason {given}: ")
    assert why in str(caught.value)
    assert str(caught.value).endswith("; allowed: " + ", ".join(REASONS))


def test_an_unknown_reason_lists_the_allowed_ones() -> None:
    with pytest.raises(CertdropError) as caught:
        parse_reason("stolen")
    assert str(caught.value) == (
        "--reason 'stolen' is not an RFC 5280 revocation reason; allowed: " + ", ".join(REASONS)
    )


def test_openssl_index_names() -> None:
    """openssl ca's names in index.txt (apps/ca.c crl_reasons), lower case -> certdrop's."""
    assert OPENSSL_REASONS == {
        "unspecified": "unspecified",
        "keycompromise": "keyCompromise",
        "cacompromise": "cACompromise",
        "affiliationchanged": "affiliationChanged",
        "superseded": "superseded",
        "cessationofoperation": "cessationOfOperation",
        "certificatehold": "certificateHold",
        "privilegewithdrawn": "privilegeWithdrawn",
        "aacompromise": "aACompromise",
        "keytime": "keyCompromise",
        "cakeytime": "cACompromise",
        "holdinstruction": "certificateHold",
        "removefromcrl": "unspecified",
    }


def test_the_cli_can_import_it_without_cryptography() -> None:
    code = (
        "import sys, certdrop.authority.reasons; "
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('cryptography', 'dataclasses', 'pkilint', 'sqlalchemy')); "
        "sys.exit(str(heavy) if heavy else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
