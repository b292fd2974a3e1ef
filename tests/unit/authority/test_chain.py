"""A CA's chain up to its self-signed root: what fits, and each reason a chain is refused."""

from __future__ import annotations

import datetime as dt
import random

import pytest
from cryptography import x509

from ca_kit import NOW, cert_of, new_key
from certdrop.authority.chain import is_self_signed, verify_chain
from certdrop.errors import CAError


def test_a_chain_in_any_order_is_put_in_path_order() -> None:
    root_key, mid_key, ca_key = new_key(), new_key(), new_key()
    root = cert_of("Root", root_key, path_length=2, days=3650)
    mid = cert_of("Mid", mid_key, root, root_key, path_length=1, days=3000)
    ca = cert_of("Issuing", ca_key, mid, mid_key, path_length=0)
    for order in ([root, mid], [mid, root], [root, mid, root]):
        path, warnings = verify_chain(ca, order, NOW)
        assert path == [mid, root] and warnings == []
    assert is_self_signed(root) and not is_self_signed(ca)
    # a root needs no chain
    assert verify_chain(root, [], NOW) == ([], [])


def test_a_version_1_root_is_taken_with_a_warning() -> None:
    root_key, ca_key = new_key(), new_key()
    root = cert_of("Old Root", root_key, ca=None, cert_sign=None, days=3650)
    ca = cert_of("Issuing", ca_key, root, root_key, path_length=0)
    path, warnings = verify_chain(ca, [root], NOW)
    assert path == [root]
    assert warnings == ["the root 'CN=Old Root' has no basicConstraints (a version 1 root)"]


def test_a_chain_ending_before_the_ca_is_a_warning() -> None:
    root_key, ca_key = new_key(), new_key()
    root = cert_of("Root", root_key, days=100)
    ca = cert_of("Issuing", ca_key, root, root_key, days=365)
    _, warnings = verify_chain(ca, [root], NOW)
    assert len(warnings) == 1
    assert warnings[0].startswith("'CN=Root' above this CA ends on ")
    assert "before the CA itself" in warnings[0]


def test_every_chain_that_does_not_fit_is_refused_with_its_reason() -> None:
    root_key, ca_key, other_key, mid_key = new_key(), new_key(), new_key(), new_key()
    root = cert_of("Root", root_key, days=3650)
    ca = cert_of("Issuing", ca_key, root, root_key)
    # the same name as the real root, another key (what --ca-chain of the wrong root gives)
    impostor = cert_of("Root", other_key)
    unrelated = cert_of("Unrelated Root", other_key)
    mid = cert_of("Mid", mid_key, root, root_key)
    mid_not_ca = cert_of("Mid", mid_key, root, root_key, ca=False)
    mid_no_bc = cert_of("Mid", mid_key, root, root_key, ca=None)
    mid_no_sign = cert_of("Mid", mid_key, root, root_key, cert_sign=False)
    mid_expired = cert_of("Mid", mid_key, root, root_key, starts=dt.timedelta(days=-20), days=10)
    mid_future = cert_of("Mid", mid_key, root, root_key, starts=dt.timedelta(days=2))
    under_mid = cert_of("Issuing", ca_key, mid_not_ca, mid_key)
    root_len0 = cert_of("Root", root_key, path_length=0)
    mid_len0 = cert_of("Mid", mid_key, root_len0, root_key)
    under_len0 = cert_of("Issuing", ca_key, mid_len0, mid_key)
    expired_root = cert_of("Root", root_key, starts=dt.timedelta(days=-20), days=10)
    cases: list[tuple[x509.Certificate, list[x509.Certificate], str]] = [
        (ca, [impostor], r"'CN=Issuing' is not signed by the 'CN=Root' in the chain"),
        (ca, [unrelated], r"the chain has no certificate of 'CN=Root', the issuer of 'CN=Issuing'"),
        (ca, [], r"'CN=Issuing' is not self-signed \(its issuer is 'CN=Root'\): give .*--ca-chain"),
        (under_mid, [mid_not_ca, root], r"'CN=Mid' in the chain is not a CA certificate \(basic"),
        (under_mid, [mid_no_bc, root], r"'CN=Mid' in the chain is not a CA certificate \(no basic"),
        (under_mid, [mid_no_sign, root], r"'CN=Mid' .* may not sign .*lacks keyCertSign"),
        (under_mid, [mid_expired, root], r"'CN=Mid' in the chain expired on "),
        (under_mid, [mid_future, root], r"'CN=Mid' in the chain is not valid before "),
        (
            under_mid,
            [mid],
            r"the chain has no certificate of 'CN=Root', the issuer of 'CN=M",
        ),
        (under_len0, [mid_len0, root_len0], r"'CN=Root' allows 0 CA certificate\(s\) below it"),
        (ca, [expired_root], r"'CN=Root' in the chain expired on "),
        (ca, [root, unrelated], r"not on the path from the CA to its root: 'CN=Unrelated Root'"),
        (root, [unrelated], r"not on the path from the CA to its root: 'CN=Unrelated Root'"),
    ]
    for cert, chain, reason in cases:
        random.shuffle(chain)
        with pytest.raises(CAError, match=reason):
            verify_chain(cert, chain, NOW)
