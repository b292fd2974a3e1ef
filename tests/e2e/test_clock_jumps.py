"""Clock jumps (an injected ManualClock): forward, back, past the CA's end.

* issuance: a jump never gives a certificate a validity that makes no sense, reuses
  a serial, lets a second valid certificate slip past the unique-CN rule, or stores
  a status that belongs to one moment (expired is computed from the clock);
* the CRL: after any jump the refresh job renews the CRL exactly when it no longer
  covers the clock's now (due, expired, or dated in the future), never twice;
* expiry warnings: back and forth across the thresholds, with restarts, each
  warning goes out once and none is skipped.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certdrop.clock import ManualClock
from certdrop.index import listing
from certdrop.issue.outcomes import Outcome, Result
from certdrop.service.runtime import Runtime
from conftest import CAEnv, load_cert, make_env


def csr(cn_value: str) -> bytes:
    k = ec.generate_private_key(ec.SECP256R1())
    req = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn_value)]))
        .sign(k, hashes.SHA256())
    )
    return req.public_bytes(serialization.Encoding.PEM)


def drop(rt: Runtime, env: CAEnv, name: str, data: bytes) -> Result:
    path = env.inbox / f"{name}.req"
    tmp = env.inbox / f".{name}.part"
    tmp.write_bytes(data)
    tmp.rename(path)
    return rt.batches.handle_inbox_file(path, "client")


def validity(env: CAEnv, name: str) -> tuple[dt.datetime, dt.datetime, int]:
    cert = load_cert(env.outbox / f"{name}.cer")
    cert.verify_directly_issued_by(load_cert(env.ca_cert))
    return cert.not_valid_before_utc, cert.not_valid_after_utc, cert.serial_number


def statuses(env: CAEnv, clock: ManualClock) -> dict[str, str]:
    code, out, err = env.cli("list", "--json", clock=clock)
    assert code == 0, err
    return {c["request_name"]: c["status"] for c in json.loads(out)["certificates"]}


def test_clock_jumps_back_and_forth(tmp_path: Path) -> None:
    env = make_env(tmp_path / "ca")
    ca = load_cert(env.ca_cert)
    start = dt.datetime.now(dt.UTC).replace(microsecond=0)
    clock = ManualClock(start)
    rt = Runtime.build(env.settings, clock)
    serials: list[int] = []
    try:
        a1 = csr("Alice")
        assert drop(rt, env, "a1", a1).outcome is Outcome.ISSUED
        nb, na, serial = validity(env, "a1")
        serials.append(serial)
        assert nb <= start < na and na - nb == dt.timedelta(days=365, minutes=5)

        # the clock jumps back a day: a new certificate still spans its full validity,
        # measured from the clock's now, and never beyond the CA
        clock.set(start - dt.timedelta(days=1))
        assert drop(rt, env, "b1", csr("Bob")).outcome is Outcome.ISSUED
        nb, na, serial = validity(env, "b1")
        serials.append(serial)
        assert nb < clock.now() < na <= ca.not_valid_after_utc
        assert na - nb == dt.timedelta(days=365, minutes=5)
        # ... and Alice's certificate, valid from "tomorrow", still blocks a second one
        res = drop(rt, env, "a2", csr("Alice"))
        assert res.outcome is Outcome.REJECTED and "already has a valid certificate" in res.reason
        # the very same request dropped again is re-delivered, not issued twice
        res = drop(rt, env, "a1again", a1)
        assert res.outcome is Outcome.REDELIVERED and int(res.serial or "0", 16) == serials[0]

        # forward into Alice's renewal window: renewed, the old one superseded
        clock.set(start + dt.timedelta(days=340))
        res = drop(rt, env, "a3", csr("Alice"))
        assert res.outcome is Outcome.ISSUED, res.reason
        serials.append(validity(env, "a3")[2])
        # back again before the renewal: the renewed certificate is valid; no third one
        clock.set(start + dt.timedelta(days=100))
        res = drop(rt, env, "a4", csr("Alice"))
        assert res.outcome is Outcome.REJECTED, res
        assert f"serial {serials[2]:X}" in res.reason.replace(":", "")

        # statuses are computed from the clock, never stored: expired later, valid again now
        later = ManualClock(start + dt.timedelta(days=400))
        assert statuses(env, later)["b1"] == "expired"
        now_st = statuses(env, clock)
        assert now_st == {"a1": "superseded", "b1": "valid", "a3": "valid"}

        # far past the CA's own end: refused with a reason, nothing signed
        clock.set(ca.not_valid_after_utc + dt.timedelta(days=1))
        res = drop(rt, env, "late", csr("Late"))
        assert res.outcome is Outcome.REJECTED and "CA certificate has expired" in res.reason
        # ten days before the CA's end: the validity is cut to the CA's end
        clock.set(ca.not_valid_after_utc - dt.timedelta(days=10))
        assert drop(rt, env, "short", csr("Short")).outcome is Outcome.ISSUED
        nb, na, serial = validity(env, "short")
        serials.append(serial)
        assert na == ca.not_valid_after_utc and nb < clock.now() < na
        with rt.store.begin() as conn:
            recs = listing.list_certs(conn)
        assert len(recs) == len(serials) == len({r.serial for r in recs})
        assert sorted(int(r.serial, 16) for r in recs) == sorted(serials)
    finally:
        rt.close()


# --- the CRL under a wandering clock -----------------------------------------------------------------


def crl_facts(env: CAEnv) -> tuple[int, dt.datetime, dt.datetime]:
    crl = x509.load_der_x509_crl((env.state / "crl.der").read_bytes())
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert crl.next_update_utc is not None
    return number, crl.last_update_utc, crl.next_update_utc


def test_crl_refresh_is_never_skipped_nor_doubled_by_clock_jumps(tmp_path: Path) -> None:
    """The CRL job (what the scheduler runs every few minutes) after every jump of a
    wandering clock: it refreshes exactly when the published CRL no longer covers the
    clock's now (due, expired, or dated in the future after a jump back), and then the
    published CRL is good; a second run at the same moment changes nothing."""
    import random

    from certdrop.publish.crl import CLOCK_SKEW

    env = make_env(tmp_path / "ca", extra="[crl]\nvalidity_days = 7\nrefresh_before_days = 3\n")
    t0 = dt.datetime(2031, 3, 1, 12, 0, tzinfo=dt.UTC)
    clock = ManualClock(t0)
    rt = Runtime.build(env.settings, clock)
    pub = rt.crl
    rng = random.Random(5)
    try:
        rt.check_publication()
        number, this_update, next_update = crl_facts(env)
        first = int(t0.timestamp()) * 10**9  # the time it was made, in nanoseconds
        assert (number, this_update, next_update) == (first, t0, t0 + dt.timedelta(days=7))
        seen = [number]
        issued = drop(rt, env, "victim", csr("Victim"))
        # the edges first, then a random walk: minutes, hours and days, back and forth
        moves = [
            dt.timedelta(days=4) - dt.timedelta(seconds=1),  # just before the window
            dt.timedelta(seconds=1),  # in the window: due
            -dt.timedelta(days=12),  # far back: the CRL is dated in the future
            dt.timedelta(days=30),  # far ahead: expired long ago
            -dt.timedelta(minutes=4),  # back, within the tolerated skew
            -dt.timedelta(hours=2),  # back, beyond it
        ]
        moves += [
            rng.choice([-1, 1])
            * rng.choice(
                [
                    dt.timedelta(minutes=rng.randint(1, 59)),
                    dt.timedelta(hours=rng.randint(1, 23)),
                    dt.timedelta(days=rng.randint(1, 20)),
                ]
            )
            for _ in range(40)
        ]
        refreshes = 0
        for step, move in enumerate(moves):
            clock.advance(move)
            now = clock.now()
            due = pub.crl_problem(now)
            if step == 8:  # a revocation half-way: the next CRL must list it
                rt.revoker.revoke(issued.serial or "", "keyCompromise")
                due = pub.crl_problem(now)
                assert due is None  # revoke published a new CRL at once
                refreshes += 1
                seen.append(crl_facts(env)[0])
            before = crl_facts(env)
            # due by the dates alone (the CRL's content is checked by its own tests)
            covers = before[1] <= now + CLOCK_SKEW and before[2] - now > dt.timedelta(days=3)
            assert (due is None) == covers, (step, move, due, before)
            rt.check_publication()
            after = crl_facts(env)
            assert (after != before) == (not covers), (step, move, due)
            if due is not None:
                refreshes += 1
                assert after[0] > before[0] and after[1] == now.replace(microsecond=0)
                seen.append(after[0])
            # the published CRL covers the clock's now and is outside its refresh window
            assert pub.crl_problem(now) is None, (step, move, pub.crl_problem(now))
            assert after[1] <= now + CLOCK_SKEW and after[2] - now > dt.timedelta(days=3)
            rt.check_publication()  # the job again, same moment: nothing
            assert crl_facts(env) == after
        # every CRL took a higher number, the clock's jumps back notwithstanding
        assert seen == sorted(set(seen)) and len(seen) == 1 + refreshes
        assert crl_facts(env)[0] == seen[-1]
        assert refreshes >= 10, refreshes  # the walk did make the CRL due, often
        crl = x509.load_der_x509_crl((env.state / "crl.der").read_bytes())
        assert [r.serial_number for r in crl] == [int(issued.serial or "0", 16)]
    finally:
        rt.close()


# --- expiry warnings under a wandering clock --------------------------------------------------------------


def test_expiry_warnings_are_neither_skipped_nor_repeated_by_clock_jumps(tmp_path: Path) -> None:
    """Back and forth across the thresholds (30, 7, 1 days), with restarts: each
    warning goes out once, at the first sweep after its threshold is crossed (the
    tightest one only when several are crossed at once), never again after a jump
    back, and none after expiry."""
    from certdrop.notify.expiry import SweepConfig, sweep
    from mailpeer import SmtpPeer, mail_config

    peer = SmtpPeer().start()
    try:
        env = make_env(tmp_path / "ca", extra=mail_config(peer.port))
        clock = ManualClock(dt.datetime.now(dt.UTC).replace(microsecond=0))
        rt = Runtime.build(env.settings, clock)
        try:
            res = drop(rt, env, "alice", csr_with_mail("Alice", "alice@example.org"))
            assert res.outcome is Outcome.ISSUED
            end = load_cert(env.outbox / "alice.cer").not_valid_after_utc

            def at(days_left: float, until: dt.datetime = end) -> list[str]:
                clock.set(until - dt.timedelta(days=days_left))
                report = sweep(
                    rt.store,
                    SweepConfig.from_settings(rt.settings),
                    rt.ca.bundle_certificates(),
                    clock.now(),
                )
                assert rt.mailer is not None
                rt.mailer.flush(clock.now())
                return report.holder_mails

            # (days left, a warning expected at this sweep?)
            walk = [
                (40, False),
                (29.5, True),  # 30 crossed
                (45, False),  # back before 30: already warned
                (29, False),
                (20, False),
                (6, True),  # 7 crossed
                (25, False),  # far back
                (6.5, False),
                ("restart", False),
                (8, False),
                (0.5, True),  # 1 crossed
                (3, False),
                (-1, False),  # expired
                (0.9, False),  # back into validity: all sent already
            ]
            for days, expected in walk:
                if days == "restart":
                    rt.close()
                    rt = Runtime.build(env.settings, clock)
                    continue
                got = at(float(days))
                assert bool(got) == expected, (days, got)
            to_alice = [m for m in peer.to("alice@example.org") if "expires" in m.subject]
            assert [m.subject.split(" expires ")[1].split(" (")[0] for m in to_alice] == [
                "in 29 days",
                "in 6 days",
                "in less than a day",
            ]

            # a jump straight from 40 days to 3 days: one warning, the 7-day one
            res = drop(rt, env, "bob", csr_with_mail("Bob", "bob@example.org"))
            bob_end = load_cert(env.outbox / "bob.cer").not_valid_after_utc
            assert at(40, bob_end) == []
            assert at(3, bob_end) != []
            to_bob = [m for m in peer.to("bob@example.org") if "expires" in m.subject]
            assert len(to_bob) == 1 and "expires in 3 days" in to_bob[0].subject
        finally:
            rt.close()
    finally:
        peer.stop()


def csr_with_mail(cn_value: str, email: str) -> bytes:
    k = ec.generate_private_key(ec.SECP256R1())
    req = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, cn_value),
                    x509.NameAttribute(NameOID.EMAIL_ADDRESS, email),
                ]
            )
        )
        .sign(k, hashes.SHA256())
    )
    return req.public_bytes(serialization.Encoding.PEM)
