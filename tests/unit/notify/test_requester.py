"""Requesters told by mail (certdrop.notify.requester), through the issue layer and the
revoker as Runtime.build wires them: a real CA, a real SQLite index, the real mail queue.

What is checked here is what the queue holds (recipient, kind, text) and that each row is
written with the event it reports; sending is the Mailer's (tests/e2e/test_requester_mail.py).
"""

from __future__ import annotations

import datetime as dt
import os
import pwd
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import pkcs12

from certdrop.clock import ManualClock
from certdrop.config import Profile, SubjectRule
from certdrop.errors import CertdropError
from certdrop.index.mailqueue import QueuedMail, list_queue
from certdrop.index.store import NewCertificate, Transaction
from certdrop.intake.claim import Refusal
from certdrop.intake.spool import Spool
from certdrop.issue.outcomes import Outcome, Requester, RequesterNotices
from certdrop.notify.requester import RequesterMail, requester_address, usable_address
from certdrop.service.runtime import Runtime
from conftest import ec_csr, make_env
from issue_kit import SERVER, Kit, attrs, make_kit
from mailpeer import free_port, mail_config

ME = pwd.getpwuid(os.getuid()).pw_name  # the Unix owner of the files the tests drop
BOUND = f"{ME}@example.org"

# a profile whose requests must carry the dropper's address; one with an allowed domain
PROFILES = """
[profiles.bound]
owner_binding = "{owner}@example.org"

[profiles.org]
email_domains = ["example.org"]
"""


def mail_kit(tmp_path: Path, extra_mail: str = "") -> Kit:
    return make_kit(tmp_path, extra=mail_config(free_port(), extra_mail=extra_mail) + PROFILES)


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    k = mail_kit(tmp_path)
    yield k
    k.close()


def queue(kit: Kit) -> list[QueuedMail]:
    with kit.store.begin() as conn:
        return list_queue(conn)


def to_requesters(kit: Kit) -> list[QueuedMail]:
    return [m for m in queue(kit) if m.kind.startswith("requester-")]


def enrollment(cn: str, email: str | None = None, san: Sequence[str] = ()) -> bytes:
    """A key-generation request (TOML): any subject, any addresses, no key needed."""
    text = f'[subject]\nCN = "{cn}"\n'
    if email is not None:
        text += f'emailAddress = "{email}"\n'
    if san:
        text += "[san]\nemail = [" + ", ".join(f'"{a}"' for a in san) + "]\n"
    return text.encode()


# --- who is mailed ----------------------------------------------------------------------------
def test_usable_addresses_are_plain_ascii_mailboxes() -> None:
    assert usable_address("alice@example.org")
    assert usable_address("a.b+tag@mail.example.org")
    for bad in [
        "",
        "alice",
        "alice@localhost",  # no domain the policy would accept either
        "alice@example.org, bob@example.org",  # a request never names several recipients
        "Alice <alice@example.org>",
        '"alice"@example.org',
        "alice@example.org\r\nBcc: eve@example.net",
        "alice\x00@example.org",
        "alicé@example.org",
        "alice@exämple.org",
        "a..b@example.org",
        "x" * 250 + "@example.org",
    ]:
        assert not usable_address(bad), bad


def test_requester_address_the_first_valid_address_at_an_allowed_domain() -> None:
    free = Profile()
    assert requester_address(free, None, ["alice@example.org", "bob@example.org"]) == (
        "alice@example.org"
    )
    assert requester_address(free, "alice", ["not an address", "bob@example.org"]) == (
        "bob@example.org"
    )
    assert requester_address(free, "alice", []) == ""
    org = Profile(email_domains=["example.org"])
    assert requester_address(org, None, ["eve@example.net", "eve@example.org"]) == (
        "eve@example.org"
    )
    assert requester_address(org, None, ["eve@example.net"]) == ""
    rule = Profile(subject={"emailAddress": SubjectRule(domains=["example.org"])})
    assert requester_address(rule, None, ["eve@example.net"]) == ""
    assert requester_address(None, "alice", ["alice@example.org"]) == ""  # profile gone


def test_under_owner_binding_only_the_owners_address_is_mailed() -> None:
    bound = Profile(owner_binding="{owner}@example.org")
    assert requester_address(bound, "alice", ["alice@example.org"]) == "alice@example.org"
    # a request naming someone else tells its dropper, never that someone
    assert requester_address(bound, "mallory", ["alice@example.org"]) == "mallory@example.org"
    assert requester_address(bound, "alice", []) == "alice@example.org"
    assert requester_address(bound, None, ["alice@example.org"]) == ""  # owner unknown
    assert requester_address(bound, "bad name", ["alice@example.org"]) == ""


def test_no_notices_when_mail_is_off_or_notify_requester_is_false(tmp_path: Path) -> None:
    off = make_env(tmp_path / "off").settings
    assert RequesterMail.from_settings(off, Spool(off.spool)) is None
    quiet = make_env(
        tmp_path / "quiet", extra=mail_config(free_port(), extra_mail="notify_requester = false")
    ).settings
    assert quiet.mail.notify_requester is False
    assert RequesterMail.from_settings(quiet, Spool(quiet.spool)) is None
    on = make_env(tmp_path / "on", extra=mail_config(free_port())).settings
    assert on.mail.notify_requester is True  # the default
    assert isinstance(RequesterMail.from_settings(on, Spool(on.spool)), RequesterMail)


# --- refused ---------------------------------------------------------------------------------
def test_a_refusal_mails_the_reason_exactly_as_in_the_reason_file(kit: Kit) -> None:
    pem, _ = ec_csr("Alice", attrs("Alice", "alice@example.org"))
    kit.process("alice", pem)
    pem2, _ = ec_csr("Alice", attrs("Alice", "alice@example.org"))
    res = kit.process("again", pem2)  # CN is unique: refused
    assert res.outcome is Outcome.REJECTED
    reason = (kit.env.rejected / "again.reason").read_text()
    assert "already has a valid certificate" in reason
    [mail] = to_requesters(kit)
    assert mail.kind == "requester-refused"
    assert mail.recipients == [("", "alice@example.org")]
    assert mail.subject == "[certdrop] your request again.req was refused"
    assert reason in mail.body
    assert f"{kit.env.inbox}/" in mail.body  # where to drop the corrected request
    assert str(kit.env.rejected / "again.req") in mail.body
    assert kit.outcomes_of("again") == ["rejected"]


def test_a_request_that_does_not_parse_mails_the_owners_bound_address(kit: Kit) -> None:
    assert kit.process("junk", b"this is not a CSR", "bound").outcome is Outcome.REJECTED
    [mail] = to_requesters(kit)
    assert mail.recipients == [("", BOUND)]
    assert (kit.env.rejected / "junk.reason").read_text() in mail.body
    assert f"{kit.env.inbox / 'bound'}/" in mail.body
    # in a profile without owner_binding, an unparsed request has no address: no mail
    assert kit.process("junk2", b"this is not a CSR").outcome is Outcome.REJECTED
    assert len(to_requesters(kit)) == 1


def test_a_request_refused_for_its_address_never_mails_that_address(kit: Kit) -> None:
    # not an address at all; an address outside the profile's domains
    assert kit.process("e1", enrollment("E1", "not-an-address")).outcome is Outcome.REJECTED
    assert kit.process("e2", enrollment("E2", "eve@example.net"), "org").outcome is (
        Outcome.REJECTED
    )
    assert to_requesters(kit) == []
    # the dropper named someone else's address under owner_binding: the dropper hears of it
    assert kit.process("e3", enrollment("E3", "boss@example.org"), "bound").outcome is (
        Outcome.REJECTED
    )
    [mail] = to_requesters(kit)
    assert mail.recipients == [("", BOUND)]
    assert "boss@example.org" in mail.body  # the reason names it; the mail does not go there


def test_one_mail_to_the_first_valid_address_of_many(kit: Kit) -> None:
    # refused (the CN is empty) with a subject address and three SAN addresses
    data = enrollment(" ", "not valid", san=["first@example.org", "second@example.org"])
    assert kit.process("many", data).outcome is Outcome.REJECTED
    [mail] = to_requesters(kit)
    assert mail.recipients == [("", "first@example.org")]


def test_refusals_of_things_never_opened_mail_nobody(kit: Kit) -> None:
    fifo = kit.env.inbox / "pipe.req"
    os.mkfifo(fifo)
    res = kit.outcomes.reject_unclaimed(
        Refusal(fifo, "pipe", os.lstat(fifo), "pipe.req is a FIFO (named pipe)")
    )
    assert res.outcome is Outcome.REJECTED
    assert to_requesters(kit) == []


class FailsAfterQueuing:
    """The real notices, then the event's transaction fails (a full disk, say)."""

    def __init__(self, inner: RequesterNotices) -> None:
        self.inner = inner

    def refused(self, conn: Transaction, who: Requester, reason: str, now: dt.datetime) -> None:
        self.inner.refused(conn, who, reason, now)
        assert len(list_queue(conn)) == 1  # queued in this transaction ...
        raise CertdropError("the index cannot be written")

    def pending(self, conn: Transaction, who: Requester, now: dt.datetime, *, once: str) -> None:
        self.inner.pending(conn, who, now, once=once)

    def approved(
        self, conn: Transaction, cert: NewCertificate, files: Sequence[Path], now: dt.datetime
    ) -> None:
        self.inner.approved(conn, cert, files, now)

    def denied(self, conn: Transaction, who: Requester, reason: str, now: dt.datetime) -> None:
        self.inner.denied(conn, who, reason, now)


def test_a_refusal_that_is_not_recorded_queues_no_mail(kit: Kit) -> None:
    assert kit.outcomes.notices is not None
    kit.outcomes.notices = FailsAfterQueuing(kit.outcomes.notices)
    pem, _ = ec_csr("x", attrs("x", "x@example.org"))
    claim = kit.work("x", pem, profile="bound")  # the owner's bound address is mailed
    with pytest.raises(CertdropError, match="cannot be written"):
        kit.outcomes.reject(claim, ["a reason"])
    assert queue(kit) == []  # ... and rolled back with the journal row
    assert kit.outcomes_of("x") == []


# --- waiting, approved, denied ------------------------------------------------------------------
def web(cn: str = "www.example.org", email: str = "webmaster@example.org") -> bytes:
    return ec_csr(cn, attrs(cn, email))[0]


def test_waiting_then_approved_with_the_serial_and_the_files(kit: Kit) -> None:
    assert kit.process("web", web(), SERVER).outcome is Outcome.PENDING
    [waiting] = to_requesters(kit)
    assert waiting.kind == "requester-pending"
    assert waiting.recipients == [("", "webmaster@example.org")]
    assert waiting.subject == "[certdrop] your request web.req waits for approval (server)"
    assert str(kit.env.pending / "web.req") in waiting.body
    assert "CN=www.example.org" in waiting.body and "approves it" in waiting.body

    res = kit.rt.approvals.approve("web")
    assert res.outcome is Outcome.ISSUED and res.serial is not None
    [_, approved] = to_requesters(kit)
    assert approved.kind == "requester-approved" and approved.serial == res.serial
    assert approved.recipients == [("www.example.org", "webmaster@example.org")]
    assert approved.subject == (
        f"[certdrop] your request web.req was approved: certificate {res.serial} issued"
    )
    assert f"Serial:       {res.serial}" in approved.body
    assert str(kit.env.outbox / "web.cer") in approved.body
    assert ".p12" not in approved.body  # no key, no bundle, no password talk
    assert (kit.env.outbox / "web.cer").exists()


def test_an_approved_enrollment_lists_its_p12_and_the_password_is_elsewhere(kit: Kit) -> None:
    data = enrollment("www.example.org", "webmaster@example.org")
    assert kit.process("gen", data, SERVER).outcome is Outcome.PENDING
    res = kit.rt.approvals.approve("gen")
    assert res.outcome is Outcome.ISSUED
    mails = queue(kit)
    [approved] = [m for m in mails if m.kind == "requester-approved"]
    [password_mail] = [m for m in mails if m.kind == "password"]
    password = password_mail.body.split("is:\n\n    ")[1].split("\n")[0]
    pkcs12.load_pkcs12((kit.env.outbox / "gen.p12").read_bytes(), password.encode())
    assert str(kit.env.outbox / "gen.p12") in approved.body
    assert "The password of gen.p12 is not in this mail: it comes in a separate mail." in (
        approved.body
    )
    assert password not in approved.body


def test_an_approval_that_ends_refused_tells_the_refusal_not_an_issue(kit: Kit) -> None:
    assert kit.process("late", web("late.example.org"), SERVER).outcome is Outcome.PENDING
    kit.clock.advance(dt.timedelta(days=20 * 365))  # the CA has expired meanwhile
    res = kit.rt.approvals.approve("late")
    assert res.outcome is Outcome.REJECTED
    kinds = [m.kind for m in to_requesters(kit)]
    assert kinds == ["requester-pending", "requester-refused"]
    assert "the CA certificate has expired" in to_requesters(kit)[1].body


def test_denied_with_the_operators_reason(kit: Kit) -> None:
    assert kit.process("deny", web("deny.example.org"), SERVER).outcome is Outcome.PENDING
    kit.rt.approvals.deny("deny", "not a host of ours;\nask IT for a name first")
    [_, denied] = to_requesters(kit)
    assert denied.kind == "requester-denied"
    assert denied.recipients == [("", "webmaster@example.org")]
    assert denied.subject == "[certdrop] your request deny.req was denied"
    assert "    not a host of ours;\n    ask IT for a name first\n" in denied.body
    assert str(kit.env.rejected / "deny.req") in denied.body
    assert kit.outcomes_of("deny") == ["pending", "denied"]


def test_a_pending_event_repeated_after_a_crash_is_mailed_once(tmp_path: Path) -> None:
    env = make_env(tmp_path / "ca", extra=mail_config(free_port()))
    clock = ManualClock(dt.datetime.now(dt.UTC).replace(microsecond=0))

    def crash(point: str) -> None:
        if point == "mid-pending":  # the pending row is committed, the request still in work/
            raise SystemExit("crash")

    rt = Runtime.build(env.settings, clock, crashpoint=crash)
    path = env.inbox / SERVER / "web.req"
    path.write_bytes(web())
    with pytest.raises(SystemExit):
        rt.batches.handle_inbox_file(path, SERVER)
    rt.close()
    rt = Runtime.build(env.settings, clock)
    try:
        [res] = rt.batches.recover()
        assert res.outcome is Outcome.PENDING
        with rt.store.begin() as conn:
            mails = [m for m in list_queue(conn) if m.kind == "requester-pending"]
    finally:
        rt.close()
    assert len(mails) == 1


# --- revoked -------------------------------------------------------------------------------
def test_revoked_with_serial_reason_time_and_how_to_start_again(kit: Kit) -> None:
    pem, _ = ec_csr("Alice", attrs("Alice", "alice@example.org"))
    res = kit.process("alice", pem)
    assert res.serial is not None
    kit.clock.advance(dt.timedelta(days=3))
    kit.rt.revoker.revoke(res.serial, "keyCompromise")
    [mail] = to_requesters(kit)
    assert mail.kind == "requester-revoked" and mail.serial == res.serial
    assert mail.recipients == [("Alice", "alice@example.org")]
    assert mail.subject == f"[certdrop] your certificate Alice (serial {res.serial}) was revoked"
    assert f"Serial:   {res.serial}" in mail.body
    assert "Reason:   keyCompromise" in mail.body
    assert f"Revoked:  {kit.clock.now():%Y-%m-%d %H:%M:%S} UTC" in mail.body
    assert "never use that key again" in mail.body
    assert "openssl req -new" in mail.body and f"cp alice.req {kit.env.inbox}/" in mail.body
    # a certificate without an address: revoked all the same, nobody mailed
    pem, _ = ec_csr("Nomail")
    res2 = kit.process("nomail", pem)
    assert res2.serial is not None
    kit.rt.revoker.revoke(res2.serial)
    assert len(to_requesters(kit)) == 1


def test_notify_requester_false_queues_nothing_for_requesters(tmp_path: Path) -> None:
    kit = mail_kit(tmp_path, extra_mail="notify_requester = false")
    try:
        assert kit.outcomes.notices is None and kit.rt.revoker.notices is None
        pem, _ = ec_csr("Alice", attrs("Alice", "alice@example.org"))
        res = kit.process("alice", pem)
        assert res.serial is not None
        assert kit.process("junk", b"junk", "bound").outcome is Outcome.REJECTED
        assert kit.process("web", web(), SERVER).outcome is Outcome.PENDING
        kit.rt.approvals.deny("web", "no")
        kit.rt.revoker.revoke(res.serial)
        assert to_requesters(kit) == []
    finally:
        kit.close()
