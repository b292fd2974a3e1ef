"""The pipeline under clock jumps (an injected ManualClock): forward, back, past the CA's end.

A jump must never give a certificate a validity that makes no sense, reuse a serial,
let a second valid certificate slip past the unique-CN rule, or store a status
that belongs to one moment (expired is computed from the clock, never stored).
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
from certdrop.pipeline import Outcome, Result
from certdrop.service import Runtime
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
    return rt.pipeline.handle_inbox_file(path, "client")


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
            recs = rt.store.list_certs(conn)
        assert len(recs) == len(serials) == len({r.serial for r in recs})
        assert sorted(int(r.serial, 16) for r in recs) == sorted(serials)
    finally:
        rt.close()
