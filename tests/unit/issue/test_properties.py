"""Property tests (Hypothesis): the policy engine under any input.

* `policy.evaluate` is pure: for generated subjects (printable and hostile Unicode),
  SANs, keys, profiles and contexts it never raises, every refusal has reasons, every
  reason is one printable line, and what it accepts is clean: no control characters,
  lengths within bounds, e-mail addresses valid and at allowed domains, the owner
  binding kept, a sane validity.
* Whatever the policy accepts, the CA can build: `issue` returns a certificate that
  pkilint finds clean, or refuses with LintError; never any other exception.
"""

from __future__ import annotations

import datetime as dt
import re

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from certdrop.authority.ca import CertificateAuthority, IssueSpec
from certdrop.authority.lifecycle import create_ca
from certdrop.authority.lint import shared_linter
from certdrop.authority.names import ATTRIBUTE_OIDS
from certdrop.authority.serials import random_serial
from certdrop.config import CASettings, Profile, SubjectRule
from certdrop.errors import LintError
from certdrop.intake.request import (
    KeyInfo,
    ParsedRequest,
    has_control_characters,
)
from certdrop.issue.policy import MAX_LENGTHS, ExistingCert, PolicyContext, evaluate
from conftest import lint_clean

NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)
CA_END = NOW + dt.timedelta(days=3650)

HOSTILE = "\x00\x1b\n\r\t\u202e\u202d\u200f\u200b\u2066\ufeff\ud800\U000e0041é€аΑ@.-_ '\"\\/"
text = st.text(
    alphabet=st.one_of(st.characters(), st.sampled_from(HOSTILE), st.sampled_from("abcXYZ019")),
    max_size=80,
)
labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
domains = st.one_of(
    st.sampled_from(["example.org", "EXAMPLE.ORG", "sub.example.org", "example.org.evil.com"]),
    st.lists(labels, min_size=1, max_size=4).map(".".join),
    text,
)
emails = st.one_of(
    st.builds(
        lambda local, dom: f"{local}@{dom}",
        st.from_regex(r"[A-Za-z0-9._%+-]{1,70}", fullmatch=True),
        domains,
    ),
    st.builds(lambda local, dom: f"{local}@{dom}", text, domains),
    text,
)
attr_names = st.one_of(
    st.sampled_from(sorted(ATTRIBUTE_OIDS)), st.sampled_from(["2.5.4.99", "1.2.3.4"])
)
values = st.one_of(
    text, emails, st.sampled_from(["BE", "be", "B", "Alice", "A" * 64, "é" * 33, "ab_c"])
)
subjects = st.lists(st.tuples(attr_names, values), max_size=8)
keys = st.sampled_from(
    [
        KeyInfo("rsa", bits=2048, exponent=65537),
        KeyInfo("rsa", bits=1024, exponent=65537),
        KeyInfo("rsa", bits=4096, exponent=3),
        KeyInfo("ec", bits=256, curve="secp256r1"),
        KeyInfo("ec", bits=256, curve="secp256k1"),
        KeyInfo("ed25519", bits=256),
        KeyInfo("dsa", bits=2048),
        KeyInfo("generated"),
    ]
)
PROFILES = [
    Profile(),
    Profile(email_domains=["example.org"], subject={"CN": SubjectRule(required=True)}),
    Profile(
        owner_binding="{owner}@example.org",
        subject={"emailAddress": SubjectRule(required=True, domains=["example.org"])},
    ),
    Profile(
        extended_key_usage=["server_auth"],
        allow_dns_names=True,
        dns_domains=["example.org"],
        approval="manual",
    ),
    Profile(
        allow_ed25519=True,
        subject={"O": SubjectRule(equals="MyOrg"), "CN": SubjectRule(pattern=r"[A-Z].*")},
    ),
]


@st.composite
def requests(draw: st.DrawFn) -> ParsedRequest:
    return ParsedRequest(
        kind=draw(st.sampled_from(["csr", "enrollment"])),
        fingerprint="f" * 64,
        subject=tuple(draw(subjects)),
        key=draw(keys),
        signature_hash=draw(st.sampled_from(["sha256", "sha384", "sha1", "md5", ""])),
        san_emails=tuple(draw(st.lists(emails, max_size=4))),
        san_dns=tuple(draw(st.lists(st.one_of(domains, text), max_size=4))),
        san_other=tuple(
            draw(st.lists(st.sampled_from(["UniformResourceIdentifier x"]), max_size=1))
        ),
        multi_valued_rdn=draw(st.booleans()),
    )


@st.composite
def contexts(draw: st.DrawFn) -> PolicyContext:
    existing = {}
    if draw(st.booleans()):
        days = draw(st.integers(-10, 400))
        existing[("CN", draw(values).casefold())] = [
            ExistingCert("AA", NOW + dt.timedelta(days=days), "client", "CN=x")
        ]
    return PolicyContext(
        now=NOW,
        ca_not_after=draw(st.sampled_from([CA_END, NOW + dt.timedelta(days=10), NOW])),
        owner=draw(st.sampled_from([None, "alice", "bob"])),
        existing=existing,
        approved=draw(st.booleans()),
    )


EMAIL_RE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.\-]+@[A-Za-z0-9.\-]+")


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(req=requests(), profile=st.sampled_from(PROFILES), ctx=contexts())
def test_policy_never_raises_and_accepts_only_clean_requests(
    req: ParsedRequest, profile: Profile, ctx: PolicyContext
) -> None:
    d = evaluate(req, profile, ctx)
    assert d.accepted == (not d.reasons)
    for reason in d.reasons:
        # one printable line each: hostile values are quoted, never pasted raw
        assert "\n" not in reason and not has_control_characters(reason), repr(reason)
    if not d.accepted:
        return
    for name, value in d.subject:
        assert name in MAX_LENGTHS or name == "C"
        assert not has_control_characters(value) and value == value.strip() and value
        if name == "C":
            assert re.fullmatch(r"[A-Z]{2}", value)
        else:
            assert len(value) <= MAX_LENGTHS[name]
    cns = [v for n, v in d.subject if n == "CN"]
    assert len(cns) <= 1 and all(len(v.encode()) <= 64 for v in cns)
    for addr in d.emails:
        assert addr.isascii() and EMAIL_RE.fullmatch(addr), addr
        if profile.email_domains:
            assert addr.rsplit("@", 1)[1].lower() in profile.email_domains
        if profile.owner_binding:
            assert addr.lower() == profile.owner_binding.format(owner=ctx.owner).lower()
    for name in d.dns_names:
        assert name.isascii() and name == name.lower()
        if profile.dns_domains:
            assert any(name == dom or name.endswith("." + dom) for dom in profile.dns_domains)
    assert not req.san_other and not req.multi_valued_rdn
    assert req.signature_hash not in ("sha1", "md5")
    assert d.not_before is not None and d.not_after is not None
    assert d.not_before < ctx.now < d.not_after <= ctx.ca_not_after
    assert d.needs_approval == (profile.approval == "manual" and not ctx.approved)


# --- what the policy accepts, the CA can build --------------------------------------------------------


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    state = tmp_path_factory.mktemp("propca")
    create_ca(state, CASettings(common_name="Property CA"), NOW - dt.timedelta(days=1))
    return CertificateAuthority.load(state)


clean_text = (
    st.text(
        alphabet=st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Co", "Cn")),
        min_size=1,
        max_size=64,
    )
    .map(str.strip)
    .filter(bool)
)
long_clean_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Z")),
    min_size=20,
    max_size=64,
)
good_local = st.from_regex(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,20}(\.[A-Za-z0-9_-]{1,20}){0,2}", fullmatch=True
)
good_emails = st.builds(
    lambda local, host: f"{local}@{host}",
    good_local,
    st.sampled_from(["example.org", "EXAMPLE.ORG", "mail.example.org"]),
)


@st.composite
def acceptable_requests(draw: st.DrawFn) -> ParsedRequest:
    """Requests built to pass the policy often, with every attribute and odd but legal text."""
    subject: list[tuple[str, str]] = []
    if draw(st.booleans()):
        subject.append(("C", draw(st.sampled_from(["BE", "FR", "US"]))))
    for name in ("ST", "L", "street", "postalCode", "O", "title", "GN", "SN", "UID"):
        if draw(st.integers(0, 3)) == 0:
            value = draw(clean_text)[: 40 if name == "postalCode" else 64].strip()
            subject.append((name, value or "x"))
    for _ in range(draw(st.integers(0, 3))):
        subject.append(("OU", draw(clean_text)))
    for _ in range(draw(st.integers(0, 2))):
        subject.append(("DC", draw(labels)))
    if draw(st.booleans()):
        printable = st.from_regex(r"[A-Za-z0-9 '()+,\-./:=?]{1,64}", fullmatch=True)
        sn = draw(st.one_of(printable, clean_text)).strip()
        subject.append(("serialNumber", sn or "1"))
    # up to 64 characters of any script: more than 64 UTF-8 bytes must be refused by the
    # policy, as the encoder would fail on them
    subject.append(("CN", draw(st.one_of(clean_text, long_clean_text))))
    if draw(st.booleans()):
        subject.append(("emailAddress", draw(good_emails)))
    hosts = st.lists(labels, min_size=1, max_size=3).map(lambda ls: ".".join([*ls, "example.org"]))
    return ParsedRequest(
        kind="csr",
        fingerprint="f" * 64,
        subject=tuple(subject),
        key=KeyInfo("ec", bits=256, curve="secp256r1"),
        signature_hash="sha256",
        san_emails=tuple(draw(st.lists(good_emails, max_size=3))),
        san_dns=tuple(draw(st.lists(hosts, max_size=3))),
    )


SUBJECT_KEY = ec.generate_private_key(ec.SECP256R1()).public_key()
RSA_SUBJECT_KEY = rsa.generate_private_key(65537, 2048).public_key()


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
    ],
)
@given(
    req=acceptable_requests(),
    profile=st.sampled_from([PROFILES[0], PROFILES[1], PROFILES[3]]),
    use_rsa=st.booleans(),
)
def test_what_the_policy_accepts_the_ca_builds_or_refuses_by_lint(
    ca: CertificateAuthority, req: ParsedRequest, profile: Profile, use_rsa: bool
) -> None:
    d = evaluate(req, profile, PolicyContext(now=NOW, ca_not_after=CA_END, owner="alice"))
    assume(d.accepted)
    spec = IssueSpec(
        subject=d.subject,
        public_key=RSA_SUBJECT_KEY if use_rsa else SUBJECT_KEY,
        not_before=d.not_before,  # type: ignore[arg-type]
        not_after=d.not_after,  # type: ignore[arg-type]
        key_usage=profile.key_usage,
        extended_key_usage=profile.extended_key_usage,
        emails=d.emails,
        dns_names=d.dns_names,
        serial=random_serial(NOW),
    )
    try:
        cert = ca.issue(spec, shared_linter().certificate)
    except LintError as exc:
        assert str(exc)
        event("refused by lint")
        return
    event("issued")
    assert lint_clean(cert.public_bytes(serialization.Encoding.DER)) == []


def test_a_generous_subject_is_issued(ca: CertificateAuthority) -> None:
    """The property above is not vacuous: a full, accepted subject does get signed."""
    req = ParsedRequest(
        kind="csr",
        fingerprint="f" * 64,
        subject=(
            ("C", "BE"),
            ("O", "MyOrg"),
            ("OU", "A"),
            ("OU", "B"),
            ("CN", "é" * 32),
            ("emailAddress", "a@example.org"),
        ),
        key=KeyInfo("ec", bits=256, curve="secp256r1"),
        signature_hash="sha256",
    )
    d = evaluate(req, PROFILES[1], PolicyContext(now=NOW, ca_not_after=CA_END))
    assert d.accepted, d.reasons
    spec = IssueSpec(
        d.subject,
        SUBJECT_KEY,
        d.not_before,
        d.not_after,
        ["digital_signature"],
        ["client_auth"],
        d.emails,
        serial=random_serial(NOW),
    )  # type: ignore[arg-type]
    assert ca.issue(spec, shared_linter().certificate).subject.rfc4514_string()
