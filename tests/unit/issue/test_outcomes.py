"""How a request ends without a new certificate (certdrop.issue.outcomes): refused,
pending, re-delivered, archived; with the index journal, the audit events and the files."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from certdrop.index import pending as waiting
from certdrop.intake.claim import Claim, Owner, Refusal
from certdrop.issue.outcomes import (
    MAX_REASON_CHARS,
    MAX_REASONS,
    Hooks,
    Outcome,
    Result,
    reason_text,
)
from conftest import ec_csr
from issue_kit import SERVER, Kit, make_kit, open_p12


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    k = make_kit(tmp_path)
    yield k
    k.close()


# --- the reason file's text ------------------------------------------------------------------
def test_reason_text_names_the_request_lists_the_reasons_and_says_what_to_do() -> None:
    text = reason_text("alice", "client", ["CN is missing", "the key is too small"])
    assert text == (
        "certdrop refused alice.req (profile client):\n"
        "- CN is missing\n"
        "- the key is too small\n"
        "\n"
        "Fix what is listed above and drop the request again (a new file in the inbox).\n"
    )
    assert reason_text("x", "", ["r"]).startswith("certdrop refused x.req:\n- r\n")


def test_reason_text_is_bounded() -> None:
    long = "y" * (MAX_REASON_CHARS + 50)
    text = reason_text("h", "client", [long] + [f"problem {i}" for i in range(MAX_REASONS + 5)])
    lines = text.splitlines()
    assert lines[1] == "- " + "y" * MAX_REASON_CHARS + " [...]"
    listed = [line for line in lines if line.startswith("- problem ")]
    assert len(listed) == MAX_REASONS - 1  # the long one is the first of the twenty
    assert "- ... and 6 more problems of the same kinds" in lines


def test_hooks_audit_a_claim_with_its_holder() -> None:
    claim = Claim(
        path=Path("/spool/work/client/a.req"),
        name="a",
        profile="client",
        owner=Owner(uid=1234, gid=5, name="ann"),
        st=os.stat("/"),
    )
    Hooks().audit_claim("issued", claim, serial="01")  # nobody listens: nothing happens
    heard: list[dict[str, Any]] = []
    Hooks(audit=heard.append).audit_claim("issued", claim, serial="01")
    assert heard == [
        {"event": "issued", "name": "a", "profile": "client", "uid": 1234, "serial": "01"}
    ]


# --- refusals ---------------------------------------------------------------------------------------
def test_reject_moves_the_request_deletes_its_key_and_staged_outputs(kit: Kit) -> None:
    pem, key = ec_csr("Alice Reject")
    claim = kit.work("alice", pem, key=key)
    staged = [kit.spool.staged("client", "alice", s) for s in (".cer", ".p12")]
    for path in staged:
        path.write_bytes(b"left by a crash")
    with kit.store.begin() as conn:  # a request that waited in pending/ under this name
        waiting.add_pending(conn, "alice", "client", "ff", "", 0, kit.clock.now(), "CN=x")

    res = kit.outcomes.reject(claim, ["first problem", "second problem"])

    text = reason_text("alice", "client", ["first problem", "second problem"])
    assert res == Result(Outcome.REJECTED, "alice", reason=text)
    assert (kit.env.rejected / "alice.req").read_bytes() == pem
    assert (kit.env.rejected / "alice.reason").read_text() == text
    assert not any(p.exists() for p in staged)
    assert not list(kit.spool.work_for("client").iterdir())  # request and key gone from work/
    assert not list(kit.spool.root.rglob("alice.key"))  # a key is never kept
    [entry] = kit.journal("alice")
    assert (entry["outcome"], entry["profile"], entry["detail"]) == (
        "rejected",
        "client",
        "first problem | second problem",
    )
    with kit.store.begin() as conn:
        assert waiting.get_pending(conn, "alice") is None
    [event] = kit.events("rejected")
    assert event["name"] == "alice" and event["reasons"] == ["first problem", "second problem"]
    assert event["uid"] == os.getuid()


def test_reject_unclaimed_moves_the_thing_unopened(kit: Kit) -> None:
    fifo = kit.env.inbox / "pipe.req"
    os.mkfifo(fifo)
    refusal = Refusal(fifo, "pipe", os.lstat(fifo), "it is a FIFO (named pipe)")
    res = kit.outcomes.reject_unclaimed(refusal)
    assert res.outcome is Outcome.REJECTED and res.name == "pipe"
    assert res.reason == reason_text("pipe", "", ["it is a FIFO (named pipe)"])
    assert stat.S_ISFIFO(os.lstat(kit.env.rejected / "pipe.req").st_mode)
    assert (kit.env.rejected / "pipe.reason").read_text() == res.reason
    assert [(e["outcome"], e["detail"]) for e in kit.journal("pipe")] == [
        ("rejected", "it is a FIFO (named pipe)")
    ]
    assert kit.events("rejected") == [
        {
            "event": "rejected",
            "name": "pipe",
            "reasons": ["it is a FIFO (named pipe)"],
            "uid": os.getuid(),
        }
    ]


def test_a_refusal_whose_file_is_gone_leaves_no_reason_behind(kit: Kit) -> None:
    """The file vanished between the look and the move: skipped, nothing recorded, and no
    rejected/NAME.reason for a request that is not in rejected/ (an earlier rejection under
    that name is in archive/, as every replaced rejection is)."""
    earlier = kit.env.inbox / "gone.txt"
    earlier.write_text("first")
    kit.outcomes.reject_unclaimed(Refusal(earlier, "gone", os.lstat(earlier), "not a request"))
    assert (kit.env.rejected / "gone.req").read_text() == "first"
    vanished = Refusal(kit.env.inbox / "gone.txt", "gone", os.lstat(kit.env.inbox), "again")
    assert kit.outcomes.reject_unclaimed(vanished) == Result(Outcome.SKIPPED, "gone")
    assert not (kit.env.rejected / "gone.reason").exists()
    assert not (kit.env.rejected / "gone.req").exists()
    assert (kit.env.archive / "rejected-gone.req").read_text() == "first"
    assert "- not a request" in (kit.env.archive / "rejected-gone.reason").read_text()
    assert [e["detail"] for e in kit.journal("gone")] == ["not a request"]


def test_a_refused_key_is_deleted_and_only_the_reason_stays(kit: Kit) -> None:
    key = kit.env.inbox / "lone.key"
    key.write_bytes(b"a private key")
    res = kit.outcomes.refuse_key(key, "lone", "no request came for it")
    assert res.outcome is Outcome.REJECTED
    assert not key.exists() and not list(kit.spool.root.rglob("lone.key"))
    assert not (kit.env.rejected / "lone.req").exists()
    assert (kit.env.rejected / "lone.reason").read_text() == reason_text(
        "lone", "", ["no request came for it"]
    )
    assert kit.outcomes_of("lone") == ["rejected"]
    # key_refused: the reason for a key that came with a request of a profile
    res = kit.outcomes.key_refused("web", SERVER, "the key does not belong", kit.clock.now())
    assert res.reason.startswith("certdrop refused web.req (profile server):\n")
    assert (kit.env.rejected / "web.reason").read_text() == res.reason
    assert [(e["outcome"], e["profile"]) for e in kit.journal("web")] == [("rejected", SERVER)]


# --- waiting for an operator -------------------------------------------------------------------------
def test_to_pending_records_the_request_and_tells_the_hooks(kit: Kit) -> None:
    pem, key = ec_csr("web.example.org")
    claim = kit.work("web", pem, key=key, profile=SERVER)
    [prepared], _ = kit.prepare(claim)
    res = kit.outcomes.to_pending(claim, prepared.req, kit.clock.now())

    assert res == Result(Outcome.PENDING, "web")
    assert (kit.env.pending / "web.req").read_bytes() == pem
    assert not list(kit.spool.work_for(SERVER).iterdir())
    assert not list(kit.spool.root.rglob("web.key"))  # no private key waits in the spool
    held = kit.env.state / "pending-keys" / "web.key"  # it waits in the state folder
    assert held.read_bytes() == key and stat.S_IMODE(held.stat().st_mode) == 0o600
    assert stat.S_IMODE(held.parent.stat().st_mode) == 0o700
    with kit.store.begin() as conn:
        rec = waiting.get_pending(conn, "web")
    assert rec is not None
    assert (rec.profile, rec.fingerprint, rec.owner_uid, rec.subject, rec.decision) == (
        SERVER,
        prepared.req.fingerprint,
        os.getuid(),
        "CN=web.example.org",
        None,
    )
    assert [(e["outcome"], e["fingerprint"]) for e in kit.journal("web")] == [
        ("pending", prepared.req.fingerprint)
    ]
    assert kit.pending == [("web", SERVER, "CN=web.example.org")]
    assert kit.events("pending")[0]["subject"] == "CN=web.example.org"
    assert kit.outcomes.pending_waits("web") and not kit.outcomes.pending_waits("other")


# --- the same request again --------------------------------------------------------------------------
def test_redeliver_delivers_the_certificate_the_request_already_has(kit: Kit) -> None:
    pem, _ = ec_csr("Dora Again")
    first = kit.process("dora", pem)
    assert first.outcome is Outcome.ISSUED and first.serial is not None
    rec = kit.cert(first.serial)
    claim = kit.work("dora2", pem)

    res = kit.outcomes.redeliver(claim, rec)

    assert res == Result(Outcome.REDELIVERED, "dora2", serial=rec.serial, output="dora2")
    assert (kit.env.outbox / "dora2.cer").read_bytes() == (kit.env.outbox / "dora.cer").read_bytes()
    assert not (kit.env.outbox / "dora2.p12").exists()
    assert (kit.env.archive / "dora2.req").read_bytes() == pem
    assert not list(kit.spool.work_for("client").iterdir())
    assert not list(kit.spool.staging_for("client").iterdir())
    assert [(e["outcome"], e["serial"]) for e in kit.journal("dora2")] == [
        ("redelivered", rec.serial)
    ]
    assert kit.events("redelivered")[0]["serial"] == rec.serial
    assert len(kit.certs()) == 1  # nothing signed


def test_redeliver_with_the_key_builds_the_p12_for_the_existing_certificate(kit: Kit) -> None:
    pem, key = ec_csr("Eve Key Later")
    first = kit.process("eve", pem)
    assert first.serial is not None
    rec = kit.cert(first.serial)
    claim = kit.work("eve2", pem, key=key)
    res = kit.outcomes.redeliver(claim, rec)
    assert res.outcome is Outcome.REDELIVERED
    bundle = open_p12(kit.env, "eve2")
    assert bundle.cert is not None
    assert bundle.cert.certificate == x509.load_der_x509_certificate(rec.der)
    assert not list(kit.spool.root.rglob("eve2.key"))
    assert kit.outcomes_of("eve2") == ["p12", "redelivered"]


def test_redeliver_with_a_key_that_does_not_belong_refuses_the_key_only(kit: Kit) -> None:
    pem, _ = ec_csr("Finn Wrong Key")
    _, other_key = ec_csr("Someone Else")
    first = kit.process("finn", pem)
    assert first.serial is not None
    rec = kit.cert(first.serial)
    claim = kit.work("finn2", pem, key=other_key)
    res = kit.outcomes.redeliver(claim, rec)
    assert res.outcome is Outcome.REDELIVERED  # the certificate is delivered all the same
    assert (kit.env.outbox / "finn2.cer").exists() and not (kit.env.outbox / "finn2.p12").exists()
    reason = (kit.env.rejected / "finn2.reason").read_text()
    assert "finn2.key does not belong to the certificate issued for finn2.req" in reason
    assert not list(kit.spool.root.rglob("finn2.key"))
    assert kit.outcomes_of("finn2") == ["rejected", "redelivered"]


def test_archive_keeps_every_request(kit: Kit) -> None:
    for n in (1, 2):
        claim = kit.work("gil", f"request {n}".encode())
        kit.outcomes.archive(claim, kit.clock.now())
    stamp = kit.clock.now().strftime("%Y%m%dT%H%M%SZ")
    assert (kit.env.archive / "gil.req").read_bytes() == b"request 1"
    assert (kit.env.archive / f"gil.{stamp}.req").read_bytes() == b"request 2"
