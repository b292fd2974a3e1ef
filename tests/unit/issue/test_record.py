"""Recording a decided batch (certdrop.issue.record.Recorder): serials unique against the
index and the batches in flight; sign, stage, commit, deliver, archive; a LintError refuses
its request only."""

from __future__ import annotations

import datetime as dt
import os
import stat
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certdrop.authority.serials import random_serial, serial_hex
from certdrop.index import pending as waiting
from certdrop.intake.claim import Claim
from certdrop.issue.decide import Plan
from certdrop.issue.outcomes import Outcome, Result
from conftest import ec_csr, load_cert
from issue_kit import SERVER, Kit, attrs, make_kit, open_p12

ENROLLMENT = b'[subject]\nCN = "Gen Recorded"\nemailAddress = "gen@example.org"\n'


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    k = make_kit(tmp_path)
    yield k
    k.close()


def plans(kit: Kit, *claims: Claim, approved: bool = False) -> list[Plan]:
    prepared, refused = kit.prepare(*claims)
    assert refused == []
    out = kit.decider.decide(prepared, kit.clock.now(), approved)
    assert all(isinstance(p, Plan) for p in out), out
    return [p for p in out if isinstance(p, Plan)]


def record(kit: Kit, todo: list[Plan], in_flight: set[int] | None = None) -> list[Result]:
    signing, _ = kit.recorder.start_signing(todo, in_flight or set())
    return kit.recorder.record(todo, signing, kit.clock.now())


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_serials_are_unique_in_the_index_and_among_the_batches_in_flight(kit: Kit) -> None:
    old = kit.process("old", ec_csr("Old Serial")[0])
    assert old.serial is not None
    taken, in_flight, twice = (
        int(old.serial, 16),
        random_serial(dt.datetime.now(dt.UTC)),
        random_serial(dt.datetime.now(dt.UTC)),
    )
    todo = plans(kit, *(kit.work(n, ec_csr(f"Serial {n}")[0]) for n in ("a", "b", "c", "d")))
    for plan, serial in zip(todo, (taken, in_flight, twice, twice), strict=True):
        plan.spec = replace(plan.spec, serial=serial)

    signing, drawn = kit.recorder.start_signing(todo, {in_flight})

    serials = [p.spec.serial for p in todo]
    assert drawn == set(serials) and len(drawn) == 4
    assert taken not in drawn and in_flight not in drawn
    assert serials[2] == twice  # the first keeps its serial, the second draws another
    assert all(s >= 1 << 64 for s in serials)
    results = kit.recorder.record(todo, signing, kit.clock.now())
    assert [r.serial for r in results] == [serial_hex(s) for s in serials]
    assert {c.serial for c in kit.certs()} == {old.serial, *(serial_hex(s) for s in serials)}
    for name, serial in zip("abcd", serials, strict=True):
        assert load_cert(kit.env.outbox / f"{name}.cer").serial_number == serial


def test_a_batch_is_signed_recorded_delivered_and_archived(kit: Kit) -> None:
    with_key, key = ec_csr("", attrs("Kay With Key", "kay@example.org"))
    alone, _ = ec_csr("Al Alone")
    claims = [
        kit.work("kay", with_key, key=key),
        kit.work("al", alone),
        kit.work("gen", ENROLLMENT),
    ]
    todo = plans(kit, *claims)

    results = record(kit, todo)

    assert [(r.outcome, r.name) for r in results] == [
        (Outcome.ISSUED, "kay"),
        (Outcome.ISSUED, "al"),
        (Outcome.ISSUED, "gen"),
    ]
    ca = load_cert(kit.env.ca_cert)
    for res in results:
        assert res.serial is not None
        cer = kit.env.outbox / f"{res.name}.cer"
        cert = load_cert(cer)
        cert.verify_directly_issued_by(ca)
        assert cert.serial_number == int(res.serial, 16)
        assert mode(cer) == 0o644
        assert (kit.env.archive / f"{res.name}.req").exists()
    # p12s where a key is known (dropped, or made here), never for the one without
    assert open_p12(kit.env, "kay").key is not None and open_p12(kit.env, "gen").key is not None
    assert not (kit.env.outbox / "al.p12").exists()
    assert mode(kit.env.outbox / "kay.p12") == 0o644  # the requests are root's: no chown
    assert sorted(p.name for p in (kit.env.state / "passwords").iterdir()) == [
        "gen.txt",
        "kay.txt",
    ]
    # nothing left behind: no request, no key, nothing staged
    assert not list(kit.spool.work_for("client").iterdir())
    assert not list(kit.spool.staging_for("client").iterdir())
    assert not list(kit.spool.root.rglob("*.key"))
    # the index: one row each, found by its request
    rows = {c.request_name: c for c in kit.certs()}
    assert set(rows) == {"kay", "al", "gen"}
    for plan, res in zip(todo, results, strict=True):
        row = rows[res.name]
        assert row.serial == res.serial and row.profile == "client"
        assert row.request_fingerprint == plan.req.fingerprint
        assert row.der == load_cert(kit.env.outbox / f"{res.name}.cer").public_bytes(
            serialization.Encoding.DER
        )
        assert row.key_generated is (res.name == "gen")
        assert [(e["outcome"], e["serial"]) for e in kit.journal(res.name)] == [
            ("issued", res.serial)
        ]
    assert rows["kay"].email == "kay@example.org"
    # the hooks heard every certificate
    assert kit.issued == [(r.serial, []) for r in results]
    assert {e["name"]: e["p12"] for e in kit.events("issued")} == {
        "kay": True,
        "al": False,
        "gen": True,
    }


def test_a_lint_error_refuses_that_request_only(kit: Kit) -> None:
    todo = plans(kit, kit.work("fine", ec_csr("Fine One")[0]), kit.work("odd", ec_csr("Odd")[0]))
    # no keyUsage bit at all: pkilint finds the certificate not standards-compliant
    todo[1].spec = replace(todo[1].spec, key_usage=())
    fine, odd = record(kit, todo)
    assert fine.outcome is Outcome.ISSUED and (kit.env.outbox / "fine.cer").exists()
    assert odd.outcome is Outcome.REJECTED
    assert (
        "the certificate would not be standards-compliant"
        in (kit.env.rejected / "odd.reason").read_text()
    )
    assert not (kit.env.outbox / "odd.cer").exists()
    assert [c.request_name for c in kit.certs()] == ["fine"]
    assert kit.outcomes_of("odd") == ["rejected"]
    assert not list(kit.spool.staging_for("client").iterdir())


def test_a_renewal_supersedes_the_certificate_it_renews(kit: Kit) -> None:
    old = kit.process("ren", ec_csr("Ren Ewal")[0])
    assert old.serial is not None
    kit.clock.advance(dt.timedelta(days=340))
    [plan] = plans(kit, kit.work("ren2", ec_csr("Ren Ewal")[0]))
    [res] = record(kit, [plan])
    assert res.outcome is Outcome.ISSUED
    before = kit.cert(old.serial)
    assert before.status == "superseded" and before.superseded_by == res.serial
    assert kit.issued[-1] == (res.serial, [old.serial])
    assert kit.events("issued")[-1]["supersedes"] == [old.serial]
    assert "renewal: supersedes" in kit.journal("ren2")[0]["detail"]


def test_an_approved_request_leaves_the_pending_table(kit: Kit) -> None:
    pem, _ = ec_csr("ok.example.org")
    claim = kit.work("ok", pem, profile=SERVER)
    prepared, _ = kit.prepare(claim)
    with kit.store.begin() as conn:
        waiting.add_pending(
            conn, "ok", SERVER, prepared[0].req.fingerprint, "", 0, kit.clock.now(), "CN=ok"
        )
        waiting.decide_pending(conn, "ok", "approved", "", kit.clock.now())
    [plan] = kit.decider.decide(prepared, kit.clock.now(), False)
    assert isinstance(plan, Plan)
    [res] = record(kit, [plan])
    assert res.outcome is Outcome.ISSUED
    with kit.store.begin() as conn:
        assert waiting.get_pending(conn, "ok") is None
    assert (kit.env.archive / "ok.req").exists()
    san = load_cert(kit.env.outbox / "ok.cer").extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert san.value.get_values_for_type(x509.DNSName) == ["ok.example.org"]
