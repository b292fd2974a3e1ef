"""Deciding parsed requests (certdrop.issue.decide.Decider): re-delivery, refusals from the
index, the pending table, the dropped key and the policy, waiting for an operator, plans;
later requests of a batch see the plans of earlier ones."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certdrop.authority.serials import serial_hex
from certdrop.index import pending as waiting
from certdrop.issue.decide import Plan
from certdrop.issue.outcomes import Outcome, Result
from conftest import ec_csr
from issue_kit import SERVER, Kit, attrs, make_kit

ENROLLMENT = b'[subject]\nCN = "Gene Rated"\nemailAddress = "gene@example.org"\n'


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    k = make_kit(tmp_path)
    yield k
    k.close()


def decide(kit: Kit, *named: tuple[str, bytes], approved: bool = False) -> list[Plan | Result]:
    """Claim, read, parse, prepare and decide NAME.req files of the client profile."""
    claims = [kit.work(name, data) for name, data in named]
    prepared, refused = kit.prepare(*claims)
    assert refused == []
    return kit.decider.decide(prepared, kit.clock.now(), approved)


def spki(pem: bytes) -> bytes:
    return (
        x509.load_pem_x509_csr(pem)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


# --- prepare --------------------------------------------------------------------------------------------
def test_prepare_refuses_what_does_not_parse_and_keeps_the_rest_in_order(kit: Kit) -> None:
    pem, _ = ec_csr("", attrs("Alice Decide", "alice@example.org"))
    good, bad = kit.work("good", pem), kit.work("bad", b"this is not a request")
    prepared, refused = kit.prepare(bad, good)
    [(claim, res)] = refused
    assert claim is bad and res.outcome is Outcome.REJECTED
    assert (kit.env.rejected / "bad.reason").read_text() == res.reason
    assert (kit.env.rejected / "bad.req").exists()
    [p] = prepared
    assert (p.index, p.claim, p.req.kind) == (0, good, "csr")
    assert p.unique == [("CN", "alice decide")]  # what the index is asked about


def test_an_enrollment_dropped_twice_is_two_requests_a_csr_is_one(kit: Kit) -> None:
    pem, _ = ec_csr("Same Bytes")
    prepared, _ = kit.prepare(
        kit.work("e1", ENROLLMENT),
        kit.work("e2", ENROLLMENT),
        kit.work("c1", pem),
        kit.work("c2", pem),
    )
    fps = [p.req.fingerprint for p in prepared]
    assert [p.req.kind for p in prepared] == ["enrollment", "enrollment", "csr", "csr"]
    assert fps[0] != fps[1]  # each asks for a new key
    assert fps[2] == fps[3]  # the very same request


# --- plans ------------------------------------------------------------------------------------------------
def test_an_accepted_request_gets_a_plan(kit: Kit) -> None:
    pem, key = ec_csr("", attrs("Paula Plan", "paula@example.org"))
    claim = kit.work("paula", pem, key=key)
    prepared, _ = kit.prepare(claim)
    now = kit.clock.now()
    [plan] = kit.decider.decide(prepared, now, False)
    assert isinstance(plan, Plan)
    assert plan.claim is claim and plan.index == 0 and not plan.was_pending
    spec = plan.spec
    assert list(spec.subject) == [("CN", "Paula Plan"), ("emailAddress", "paula@example.org")]
    assert spec.public_key == spki(pem)
    assert list(spec.emails) == ["paula@example.org"] and list(spec.dns_names) == []
    assert spec.not_after - now == dt.timedelta(days=365)  # the client profile's validity
    assert spec.not_before < now
    assert list(spec.extended_key_usage) == list(
        kit.rt.settings.profiles["client"].extended_key_usage
    )
    assert spec.serial >= 1 << 64
    assert plan.subject_key is not None and plan.subject_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == spki(pem)
    assert plan.key_type == "" and plan.password == ""
    # a plan changes nothing yet: the request is still in work/, nothing is recorded
    assert claim.path.exists() and kit.journal("paula") == [] and kit.certs() == []


def test_an_enrollment_gets_a_key_made_for_it(kit: Kit) -> None:
    [plan] = decide(kit, ("gene", ENROLLMENT))
    assert isinstance(plan, Plan)
    assert plan.spec.public_key is None  # the signer makes the key
    assert plan.key_type == kit.rt.settings.profiles["client"].key_type
    assert len(plan.password) == 23 and plan.subject_key is None


# --- what the index says ------------------------------------------------------------------------------
def test_a_request_issued_before_is_redelivered(kit: Kit) -> None:
    pem, _ = ec_csr("Rene Redeliver")
    first = kit.process("rene", pem)
    [got] = decide(kit, ("rene2", pem))
    assert got == Result(Outcome.REDELIVERED, "rene2", serial=first.serial, output="rene2")
    assert (kit.env.outbox / "rene2.cer").read_bytes() == (kit.env.outbox / "rene.cer").read_bytes()
    assert len(kit.certs()) == 1


def test_a_request_whose_certificate_was_revoked_is_refused(kit: Kit) -> None:
    pem, _ = ec_csr("Rita Revoked")
    first = kit.process("rita", pem)
    assert first.serial is not None
    with kit.store.begin() as conn:
        kit.store.revoke(conn, first.serial, "keyCompromise", kit.clock.now())
    [got] = decide(kit, ("rita2", pem))
    assert got.outcome is Outcome.REJECTED
    assert (
        f"this exact request already got certificate {first.serial}, which was revoked "
        "(keyCompromise); make a new key and a new request"
    ) in (kit.env.rejected / "rita2.reason").read_text()


def test_a_name_waiting_for_approval_is_busy(kit: Kit) -> None:
    first, _ = ec_csr("web.example.org")
    assert kit.process("web", first, SERVER).outcome is Outcome.PENDING
    other, _ = ec_csr("mail.example.org")
    claim = kit.work("web", other, profile=SERVER)
    prepared, _ = kit.prepare(claim)
    [got] = kit.decider.decide(prepared, kit.clock.now(), False)
    assert got.outcome is Outcome.REJECTED
    assert "a request named web.req is already waiting for the CA operator's approval" in got.reason
    assert (kit.env.pending / "web.req").read_bytes() == first  # the waiting one is untouched


def test_an_approved_request_found_again_is_decided_as_approved(kit: Kit) -> None:
    """Approved, then interrupted before it was issued: processed again, it needs no
    second approval."""
    pem, _ = ec_csr("db.example.org")
    claim = kit.work("db", pem, profile=SERVER)
    prepared, _ = kit.prepare(claim)
    with kit.store.begin() as conn:
        waiting.add_pending(
            conn, "db", SERVER, prepared[0].req.fingerprint, "", 0, kit.clock.now(), "CN=db"
        )
        waiting.decide_pending(conn, "db", "approved", "", kit.clock.now())
    [plan] = kit.decider.decide(prepared, kit.clock.now(), False)
    assert isinstance(plan, Plan) and plan.was_pending
    assert list(plan.spec.dns_names) == ["db.example.org"]


# --- the dropped key ---------------------------------------------------------------------------------------
def test_a_key_that_does_not_belong_is_refused_with_its_request(kit: Kit) -> None:
    pem, _ = ec_csr("Mona Mismatch")
    _, other = ec_csr("Other")
    claim = kit.work("mona", pem, key=other)
    prepared, _ = kit.prepare(claim)
    [got] = kit.decider.decide(prepared, kit.clock.now(), False)
    assert got.outcome is Outcome.REJECTED
    assert "mona.key does not belong to mona.req (the public keys differ)" in got.reason
    assert (kit.env.rejected / "mona.req").read_bytes() == pem
    assert not list(kit.spool.root.rglob("mona.key"))


def test_a_key_with_an_enrollment_or_an_unreadable_key_is_refused(kit: Kit) -> None:
    _, key = ec_csr("Key Owner")
    prepared, _ = kit.prepare(
        kit.work("gen", ENROLLMENT, key=key),
        kit.work("junk", ec_csr("Junk Key")[0], key=b"not a key"),
    )
    gen, junk = kit.decider.decide(prepared, kit.clock.now(), False)
    assert gen.outcome is Outcome.REJECTED and junk.outcome is Outcome.REJECTED
    assert "gen.key was dropped with a key-generation request" in gen.reason
    assert "the key file is not a PEM private key" in junk.reason
    assert not list(kit.spool.root.rglob("*.key"))


# --- the policy ------------------------------------------------------------------------------------------------
def test_the_policy_refuses_with_every_reason(kit: Kit) -> None:
    pem, _ = ec_csr("", [x509.NameAttribute(x509.NameOID.ORGANIZATION_NAME, " MyOrg")])
    [got] = decide(kit, ("nocn", pem))
    assert got.outcome is Outcome.REJECTED
    reason = (kit.env.rejected / "nocn.reason").read_text()
    assert "- O ' MyOrg' has leading or trailing spaces\n" in reason
    assert "- the subject must contain CN\n" in reason
    assert [e["outcome"] for e in kit.journal("nocn")] == ["rejected"]


def test_a_manual_profile_waits_for_the_operator_unless_approved(kit: Kit) -> None:
    pem, _ = ec_csr("api.example.org")
    claim = kit.work("api", pem, profile=SERVER)
    prepared, _ = kit.prepare(claim)
    [got] = kit.decider.decide(prepared, kit.clock.now(), False)
    assert got == Result(Outcome.PENDING, "api")
    assert (kit.env.pending / "api.req").exists()
    pem2, _ = ec_csr("app.example.org")
    claim2 = kit.work("app", pem2, profile=SERVER)
    prepared2, _ = kit.prepare(claim2)
    [plan] = kit.decider.decide(prepared2, kit.clock.now(), True)
    assert isinstance(plan, Plan) and list(plan.spec.dns_names) == ["app.example.org"]


# --- a batch ----------------------------------------------------------------------------------------------------
def test_later_requests_of_a_batch_see_the_plans_of_earlier_ones(kit: Kit) -> None:
    first, second, other = (
        ec_csr("Twin Name")[0],
        ec_csr("twin name")[0],  # the unique CN, folded
        ec_csr("Someone Else")[0],
    )
    a, b, c = decide(kit, ("a", first), ("b", second), ("c", other))
    assert isinstance(a, Plan) and isinstance(c, Plan)
    assert b.outcome is Outcome.REJECTED
    assert (
        f"CN 'twin name' already has a valid certificate (serial {serial_hex(a.spec.serial)}"
        in (b.reason)
    )


def test_a_renewal_is_renewed_once_in_a_batch(kit: Kit) -> None:
    pem, _ = ec_csr("Rory Renew")
    old = kit.process("rory", pem)
    assert old.serial is not None
    kit.clock.advance(dt.timedelta(days=340))  # inside the 30-day renewal window
    renew, again = ec_csr("Rory Renew")[0], ec_csr("Rory Renew")[0]
    first, second = decide(kit, ("rory2", renew), ("rory3", again))
    assert isinstance(first, Plan)
    assert first.decision.supersedes == (old.serial,)
    assert second.outcome is Outcome.REJECTED  # the renewed one is valid, not renewable
    assert f"serial {serial_hex(first.spec.serial)}" in second.reason


def test_a_certificate_is_superseded_by_one_renewal_only(kit: Kit) -> None:
    """Where the CN need not be unique (the server profile), two renewals in one batch
    are both issued, and only the first supersedes the old certificate."""
    old_claim = kit.work("old", ec_csr("api.example.org")[0], profile=SERVER)
    prepared, _ = kit.prepare(old_claim)
    [old] = kit.decider.decide(prepared, kit.clock.now(), True)
    assert isinstance(old, Plan)
    signing, _ = kit.recorder.start_signing([old], set())
    [issued] = kit.recorder.record([old], signing, kit.clock.now())
    kit.clock.advance(dt.timedelta(days=85))  # 90-day certificate, renewed from 10 days before
    prepared, _ = kit.prepare(
        kit.work("new1", ec_csr("api.example.org")[0], profile=SERVER),
        kit.work("new2", ec_csr("api.example.org")[0], profile=SERVER),
    )
    first, second = kit.decider.decide(prepared, kit.clock.now(), True)
    assert isinstance(first, Plan) and isinstance(second, Plan)
    assert first.decision.supersedes == (issued.serial,)
    assert second.decision.supersedes == ()
