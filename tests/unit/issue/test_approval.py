"""An operator's decision on a pending request (certdrop.issue.approval.Approvals)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from certdrop.errors import CertdropError
from certdrop.index import pending as waiting
from certdrop.issue.outcomes import Outcome, reason_text
from conftest import ec_csr, load_cert
from issue_kit import SERVER, Kit, make_kit


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    k = make_kit(tmp_path)
    yield k
    k.close()


def pending(kit: Kit, name: str, host: str) -> bytes:
    pem, _ = ec_csr(host)
    assert kit.process(name, pem, SERVER).outcome is Outcome.PENDING
    return pem


def test_approve_issues_the_pending_request(kit: Kit) -> None:
    pem = pending(kit, "web", "www.example.org")
    res = kit.rt.approvals.approve("web")
    assert res.outcome is Outcome.ISSUED and res.serial is not None
    assert load_cert(kit.env.outbox / "web.cer").serial_number == int(res.serial, 16)
    assert (kit.env.archive / "web.req").read_bytes() == pem
    assert not (kit.env.pending / "web.req").exists()
    assert not list(kit.spool.work_for(SERVER).iterdir())
    with kit.store.begin() as conn:
        assert waiting.get_pending(conn, "web") is None
    assert kit.outcomes_of("web") == ["pending", "approved", "issued"]
    [row] = kit.certs()
    assert (row.request_name, row.profile) == ("web", SERVER)


def test_approve_refuses_what_it_cannot_approve(kit: Kit) -> None:
    with pytest.raises(
        CertdropError, match="no pending request named nosuch; see 'certdrop status'"
    ):
        kit.rt.approvals.approve("nosuch")
    pending(kit, "busy", "busy.example.org")
    kit.spool.claimed_path(SERVER, "busy.req").write_bytes(b"one being processed")
    with pytest.raises(CertdropError, match=r"busy\.req is being processed right now; try again"):
        kit.rt.approvals.approve("busy")
    assert (kit.env.pending / "busy.req").exists()  # left waiting
    pending(kit, "lost", "lost.example.org")
    (kit.env.pending / "lost.req").unlink()
    with pytest.raises(CertdropError, match=r"pending/lost\.req is missing"):
        kit.rt.approvals.approve("lost")
    assert kit.certs() == []


def test_deny_refuses_the_request_with_the_operators_reason(kit: Kit) -> None:
    pem = pending(kit, "mail", "mail.example.org")
    res = kit.rt.approvals.deny("mail", "not our host")
    text = reason_text("mail", SERVER, ["the CA operator denied the request: not our host"])
    assert res.outcome is Outcome.REJECTED and res.reason == text
    assert (kit.env.rejected / "mail.req").read_bytes() == pem
    assert (kit.env.rejected / "mail.reason").read_text() == text
    assert not (kit.env.pending / "mail.req").exists()
    with kit.store.begin() as conn:
        assert waiting.get_pending(conn, "mail") is None
    assert [(e["outcome"], e["detail"]) for e in kit.journal("mail")][-1] == (
        "denied",
        "not our host",
    )
    assert kit.events("denied") == [{"event": "denied", "name": "mail", "reason": "not our host"}]
    assert kit.certs() == []
    with pytest.raises(CertdropError, match="no pending request named mail"):
        kit.rt.approvals.deny("mail", "twice")


def test_deny_a_request_whose_file_is_gone_still_closes_it(kit: Kit) -> None:
    pending(kit, "gone", "gone.example.org")
    (kit.env.pending / "gone.req").unlink()
    res = kit.rt.approvals.deny("gone", "cleanup")
    assert res.outcome is Outcome.REJECTED
    with kit.store.begin() as conn:
        assert waiting.get_pending(conn, "gone") is None
    assert kit.outcomes_of("gone")[-1] == "denied"
