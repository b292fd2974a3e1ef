"""The policy engine, as a pure function: request + profile + context -> decision."""

from __future__ import annotations

import datetime as dt

import pytest

from certdrop.config import Profile, SubjectRule
from certdrop.intake.request import KeyInfo, ParsedRequest, RequestedExtension
from certdrop.issue.policy import ExistingCert, PolicyContext, evaluate

NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)
CA_END = NOW + dt.timedelta(days=3650)
RSA = KeyInfo("rsa", bits=2048, exponent=65537)
EC = KeyInfo("ec", bits=256, curve="secp256r1")


def req(subject: list[tuple[str, str]], key: KeyInfo = EC, **kw: object) -> ParsedRequest:
    base: dict[str, object] = {
        "kind": "csr",
        "fingerprint": "f" * 64,
        "subject": tuple(subject),
        "key": key,
        "signature_hash": "sha256",
    }
    base.update(kw)
    return ParsedRequest(**base)  # type: ignore[arg-type]


def ctx(**kw: object) -> PolicyContext:
    base: dict[str, object] = {"now": NOW, "ca_not_after": CA_END, "owner": "alice"}
    base.update(kw)
    return PolicyContext(**base)  # type: ignore[arg-type]


def test_accepts_a_plain_request() -> None:
    d = evaluate(req([("CN", "Alice"), ("emailAddress", "alice@example.org")]), Profile(), ctx())
    assert d.accepted, d.reasons
    assert d.emails == ("alice@example.org",)
    assert d.not_after == NOW + dt.timedelta(days=365)
    assert d.not_before is not None and d.not_before <= NOW
    assert not d.needs_approval


def test_rules_equals_one_of_pattern_required_forbidden() -> None:
    profile = Profile(
        subject={
            "CN": SubjectRule(required=True, pattern=r"[A-Z][a-z]+ [A-Z][a-z]+"),
            "O": SubjectRule(equals="MyOrg"),
            "OU": SubjectRule(one_of=["MyDpt", "Ops"]),
            "L": SubjectRule(forbidden=True),
            "emailAddress": SubjectRule(required=True, domains=["example.org"]),
        }
    )
    d = evaluate(
        req(
            [
                ("CN", "alice"),
                ("O", "Other"),
                ("OU", "Sales"),
                ("L", "X"),
                ("emailAddress", "a@evil.org"),
            ]
        ),
        profile,
        ctx(),
    )
    assert not d.accepted
    text = "\n".join(d.reasons)
    assert "does not match the required pattern" in text
    assert "O must be 'MyOrg'" in text
    assert "must be one of 'MyDpt', 'Ops'" in text
    assert "must not contain L" in text
    assert "must be an address at example.org" in text
    assert len(d.reasons) == 5


@pytest.mark.parametrize(
    ("key", "expect"),
    [
        (KeyInfo("rsa", bits=1024, exponent=65537), "at least 2048"),
        (KeyInfo("rsa", bits=16384, exponent=65537), "at most 8192"),
        (KeyInfo("rsa", bits=2048, exponent=3), "exponent 3 is unsafe"),
        (KeyInfo("ec", bits=521, curve="secp521r1"), "curve secp521r1 is not allowed"),
        (KeyInfo("ec", bits=256, curve="secp256k1"), "curve secp256k1 is not allowed"),
        (KeyInfo("ed25519", bits=256), "Ed25519 keys are not accepted"),
        (KeyInfo("dsa", bits=2048), "DSA keys are not accepted"),
    ],
)
def test_key_rules(key: KeyInfo, expect: str) -> None:
    d = evaluate(req([("CN", "x")], key=key), Profile(), ctx())
    assert not d.accepted
    assert any(expect in r for r in d.reasons), d.reasons


def test_ed25519_when_allowed() -> None:
    d = evaluate(
        req([("CN", "x")], key=KeyInfo("ed25519", 256), signature_hash=""),
        Profile(allow_ed25519=True),
        ctx(),
    )
    assert d.accepted, d.reasons


@pytest.mark.parametrize(
    ("value", "expect"),
    [
        ("Al\x00ice", "control or invisible"),
        ("Alice\u202e", "control or invisible"),
        ("Ali\u200bce", "control or invisible"),
        (" Alice", "leading or trailing spaces"),
        ("A" * 65, "at most 64"),
    ],
)
def test_hostile_subject_values(value: str, expect: str) -> None:
    d = evaluate(req([("CN", value)]), Profile(), ctx())
    assert not d.accepted
    assert any(expect in r for r in d.reasons), d.reasons


@pytest.mark.parametrize(
    "addr",
    [
        "alice@example.org.evil.com",
        "alice@examp1e.org",
        "alice@exampIe.org",
        "alice@éxample.org",
        "alice@sub.example.org",
    ],
)
def test_email_domain_lookalikes(addr: str) -> None:
    d = evaluate(
        req([("CN", "x"), ("emailAddress", addr)]), Profile(email_domains=["example.org"]), ctx()
    )
    assert not d.accepted, addr


def test_san_email_must_follow_domains_too() -> None:
    d = evaluate(
        req([("CN", "x")], san_emails=("x@other.org",)),
        Profile(email_domains=["example.org"]),
        ctx(),
    )
    assert not d.accepted


def test_owner_binding() -> None:
    profile = Profile(owner_binding="{owner}@example.org")
    assert evaluate(
        req([("CN", "A"), ("emailAddress", "alice@example.org")]), profile, ctx()
    ).accepted
    d = evaluate(req([("CN", "A"), ("emailAddress", "bob@example.org")]), profile, ctx())
    assert not d.accepted and "does not belong to alice" in d.reasons[0]
    d = evaluate(req([("CN", "A")], san_emails=("bob@example.org",)), profile, ctx())
    assert not d.accepted
    d = evaluate(
        req([("CN", "A"), ("emailAddress", "alice@example.org")]), profile, ctx(owner=None)
    )
    assert not d.accepted and "owner of this file is unknown" in d.reasons[0]


def test_ca_powers_refused_other_extensions_ignored() -> None:
    exts = (
        RequestedExtension("2.5.29.19", "basicConstraints", True, True, "basicConstraints CA:TRUE"),
        RequestedExtension("2.5.29.32", "certificatePolicies", False),
    )
    d = evaluate(req([("CN", "x")], extensions=exts), Profile(), ctx())
    assert not d.accepted and "CA powers" in d.reasons[0]
    d = evaluate(req([("CN", "x")], extensions=exts[1:]), Profile(), ctx())
    assert d.accepted and "certificatePolicies" in d.notes[0]


def test_dns_names_only_when_allowed() -> None:
    r = req([("CN", "www.example.org")], san_dns=("www.example.org",))
    assert not evaluate(r, Profile(), ctx()).accepted
    server = Profile(
        extended_key_usage=["server_auth"], allow_dns_names=True, dns_domains=["example.org"]
    )
    d = evaluate(r, server, ctx())
    assert d.accepted and d.dns_names == ("www.example.org",)
    assert not evaluate(req([("CN", "x")], san_dns=("www.other.org",)), server, ctx()).accepted
    # the CN becomes the DNS name when the request has none
    d = evaluate(req([("CN", "api.example.org")]), server, ctx())
    assert d.accepted and d.dns_names == ("api.example.org",)


def test_unique_and_renewal() -> None:
    existing = {
        ("CN", "alice"): [ExistingCert("AA", NOW + dt.timedelta(days=100), "client", "CN=Alice")]
    }
    d = evaluate(req([("CN", "Alice")]), Profile(), ctx(existing=existing))
    assert not d.accepted and "already has a valid certificate" in d.reasons[0]
    soon = {
        ("CN", "alice"): [ExistingCert("AA", NOW + dt.timedelta(days=10), "client", "CN=Alice")]
    }
    d = evaluate(req([("CN", "Alice")]), Profile(), ctx(existing=soon))
    assert d.accepted and d.supersedes == ("AA",)
    # CN not unique: a second certificate is fine and nothing is superseded early
    profile = Profile(subject={"CN": SubjectRule(required=True)})
    d = evaluate(req([("CN", "Alice")]), profile, ctx(existing=existing))
    assert d.accepted and d.supersedes == ()


def test_manual_approval_and_validity_cap() -> None:
    d = evaluate(req([("CN", "x")]), Profile(approval="manual"), ctx())
    assert d.accepted and d.needs_approval
    d = evaluate(req([("CN", "x")]), Profile(approval="manual"), ctx(approved=True))
    assert not d.needs_approval
    end = NOW + dt.timedelta(days=30)
    d = evaluate(req([("CN", "x")]), Profile(), ctx(ca_not_after=end))
    assert d.not_after == end and "shortened" in d.notes[0]


def test_weak_hash_and_duplicates() -> None:
    d = evaluate(
        req([("CN", "a"), ("CN", "b"), ("OU", "x"), ("OU", "y")], signature_hash="sha1"),
        Profile(),
        ctx(),
    )
    assert not d.accepted
    assert any("SHA1" in r for r in d.reasons)
    assert any("2 CN attributes" in r for r in d.reasons)
    assert not any("OU attributes" in r for r in d.reasons)  # OU may repeat
