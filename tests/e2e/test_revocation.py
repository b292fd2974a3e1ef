"""Revocation and the CRL: `certdrop revoke` / `certdrop crl`, with and without a daemon.

The CRL is checked by the openssl CLI (signature, -crl_check) and by pkilint (both
the library the daemon uses and the `lint_crl` command).
"""

from __future__ import annotations

import datetime as dt
import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtensionOID

from certdrop.authority.reasons import REASONS
from certdrop.clock import ManualClock
from conftest import (
    OPENSSL,
    CAEnv,
    DaemonThread,
    lint_clean,
    load_cert,
    make_env,
    openssl_csr,
    openssl_verify,
    run,
    stock_linter,
    utc,
    wait_for,
    wait_result,
)

LINT_CRL = Path(sys.executable).parent / "lint_crl"


def load_crl(env: CAEnv) -> x509.CertificateRevocationList:
    return x509.load_der_x509_crl((env.state / "crl.der").read_bytes())


def crl_number(env: CAEnv) -> int:
    crl = load_crl(env)
    return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)


def pem_crl_number(env: CAEnv) -> int:
    crl = x509.load_pem_x509_crl((env.state / "crl.pem").read_bytes())
    return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)


def crl_reasons(env: CAEnv) -> dict[int, str | None]:
    out: dict[int, str | None] = {}
    for entry in load_crl(env):
        try:
            out[entry.serial_number] = entry.extensions.get_extension_for_class(
                x509.CRLReason
            ).value.reason.name
        except x509.ExtensionNotFound:
            out[entry.serial_number] = None
    return out


def assert_crl_sound(env: CAEnv) -> None:
    """openssl verifies the signature, pkilint finds nothing, PEM and DER agree."""
    res = subprocess.run(
        [OPENSSL, "crl", "-in", str(env.state / "crl.pem"), "-CAfile", str(env.ca_cert), "-noout"],
        capture_output=True,
        text=True,
    )
    assert "verify OK" in res.stdout + res.stderr, res
    der = (env.state / "crl.der").read_bytes()
    pem = x509.load_pem_x509_crl((env.state / "crl.pem").read_bytes())
    assert pem.public_bytes(serialization.Encoding.DER) == der
    assert stock_linter().crl(der) == []
    lint = subprocess.run(
        [
            str(LINT_CRL),
            "lint",
            "-t",
            "CRL",
            "-p",
            "PKIX",
            "-s",
            "WARNING",
            str(env.state / "crl.der"),
        ],
        capture_output=True,
        text=True,
    )
    assert lint.returncode == 0 and lint.stdout.strip() == "", lint
    for name in ("crl.pem", "crl.der"):
        assert stat.S_IMODE((env.state / name).stat().st_mode) == 0o644


def issue(env: CAEnv, tmp: Path, name: str, cn: str, email: str = "") -> tuple[Path, Path]:
    subj = f"/O=MyOrg/CN={cn}" + (f"/emailAddress={email}" if email else "")
    req, key = openssl_csr(tmp / "users", name, subj, kind="ec:prime256v1")
    env.drop(req)
    assert wait_result(env, name) == "outbox"
    return env.outbox / f"{name}.cer", key


def test_crl_published_at_start_and_lints_clean(tmp_path: Path) -> None:
    clock = ManualClock(utc(2030, 1, 10, 12, 0, 0))
    env = make_env(tmp_path, extra="[crl]\nvalidity_days = 5\nrefresh_before_days = 2\n")
    assert not (env.state / "crl.der").exists()
    d = DaemonThread(env, clock).start()
    try:
        # made before READY: no waiting needed
        crl = load_crl(env)
        assert crl.last_update_utc == utc(2030, 1, 10, 12, 0, 0)
        assert crl.next_update_utc == utc(2030, 1, 15, 12, 0, 0)
        assert crl_number(env) == int(utc(2030, 1, 10, 12, 0, 0).timestamp()) * 10**9
        assert len(crl) == 0
        assert crl.issuer == load_cert(env.ca_cert).subject
        aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        ski = load_cert(env.ca_cert).extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        assert aki.key_identifier == ski.value.digest
        assert_crl_sound(env)
    finally:
        d.stop()


def test_revoke_while_daemon_runs(ca_env: CAEnv, daemon: DaemonThread, tmp_path: Path) -> None:
    alice, _ = issue(ca_env, tmp_path, "alice", "Alice", "alice@example.org")
    bob, _ = issue(ca_env, tmp_path, "bob", "Bob")
    before = crl_number(ca_env)
    assert openssl_verify(ca_env.ca_cert, alice, crl=ca_env.state / "crl.pem").endswith("OK")

    # an operator in another process, by request name, reason in any case
    res = ca_env.cli_proc("revoke", "alice", "--reason", "KeyCompromise")
    assert res.returncode == 0, res.stderr
    serial = load_cert(alice).serial_number
    assert f"revoked {serial:X}" in res.stdout and "keyCompromise" in res.stdout
    # the CRL followed before the command returned
    assert crl_number(ca_env) > before
    assert crl_reasons(ca_env) == {serial: "key_compromise"}
    out = openssl_verify(ca_env.ca_cert, alice, crl=ca_env.state / "crl.pem")
    assert "certificate revoked" in out, out
    assert openssl_verify(ca_env.ca_cert, bob, crl=ca_env.state / "crl.pem").endswith("OK")
    assert_crl_sound(ca_env)

    # the index says so too
    doc = json.loads(ca_env.cli("show", "alice", "--json")[1])
    assert doc["certificates"][0]["status"] == "revoked"
    assert doc["certificates"][0]["revocation_reason"] == "keyCompromise"
    assert any(h["outcome"] == "revoked" for h in doc["history"])

    # again: a clear refusal, nothing changes
    number = crl_number(ca_env)
    res = ca_env.cli_proc("revoke", f"{serial:x}")
    assert res.returncode == 1
    assert "already revoked" in res.stderr and "keyCompromise" in res.stderr
    assert "Traceback" not in res.stderr
    assert crl_number(ca_env) == number

    # a revoked certificate's CN is free again: a new request for it is issued
    req, _ = openssl_csr(tmp_path / "users2", "alice2", "/O=MyOrg/CN=Alice", kind="ec:prime256v1")
    ca_env.drop(req)
    assert wait_result(ca_env, "alice2") == "outbox"


def test_revoke_without_daemon_by_serial_with_colons(ca_env: CAEnv, tmp_path: Path) -> None:
    d = DaemonThread(ca_env).start()
    try:
        cer, _ = issue(ca_env, tmp_path, "carol", "Carol")
    finally:
        d.stop()
    serial = load_cert(cer).serial_number
    before = crl_number(ca_env)
    colons = ":".join(f"{b:02x}" for b in serial.to_bytes((serial.bit_length() + 7) // 8, "big"))
    code, out, err = ca_env.cli("revoke", colons, "--reason", "superseded")
    assert code == 0, err
    after = crl_number(ca_env)
    assert after > before
    assert f"revoked {serial:X}" in out and f"CRL {after} published" in out
    assert crl_reasons(ca_env) == {serial: "superseded"}
    assert_crl_sound(ca_env)
    # `certdrop crl` without a daemon: a new number, the same content
    code, out, err = ca_env.cli("crl")
    assert code == 0, err
    assert crl_number(ca_env) > after
    assert crl_reasons(ca_env) == {serial: "superseded"}


def test_revoke_refusals_are_one_clear_line(ca_env: CAEnv, tmp_path: Path) -> None:
    code, _, err = ca_env.cli("revoke", "nobody")
    assert code == 1
    assert err == (
        "no certificate with serial, request name, CN or e-mail 'nobody'; "
        "see 'certdrop list --search TEXT'"
    )
    res = ca_env.cli_proc("revoke", "ABCDEF0123", "--reason", "stolen")
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1
    assert "'stolen' is not an RFC 5280 revocation reason" in res.stderr
    for reason in REASONS:
        assert reason in res.stderr
    code, _, err = ca_env.cli("revoke", "ABCDEF0123", "--reason", "certificateHold")
    assert code == 1 and "cannot take a certificate off hold" in err


def test_revoke_by_ambiguous_name_asks_for_a_serial(tmp_path: Path) -> None:
    env = make_env(
        tmp_path,
        replace={
            "[profiles.client.subject]\nCN = { required = true, unique = true }": (
                "[profiles.client.subject]\nCN = { required = true }"
            )
        },
    )
    d = DaemonThread(env).start()
    try:
        _first, _ = issue(env, tmp_path / "1", "dave", "Dave One")
        (env.outbox / "dave.cer").rename(env.outbox / "dave-1.cer")
        second, _ = issue(env, tmp_path / "2", "dave", "Dave Two")
        s1 = load_cert(env.outbox / "dave-1.cer").serial_number
        s2 = load_cert(second).serial_number
        code, _, err = env.cli("revoke", "dave")
        assert code == 1
        assert "'dave' matches 2 certificates that are still valid" in err
        assert f"{s1:X}" in err and f"{s2:X}" in err
        assert len(err.strip().splitlines()) == 1
        assert crl_reasons(env) == {}
        # by serial: exactly that one
        code, _, err = env.cli("revoke", f"{s1:X}", "--reason", "affiliationChanged")
        assert code == 0, err
        # now the name is unambiguous: the one still valid
        code, out, err = env.cli("revoke", "dave", "--reason", "cessationOfOperation")
        assert code == 0, err
        assert f"revoked {s2:X}" in out
        assert crl_reasons(env) == {s1: "affiliation_changed", s2: "cessation_of_operation"}
        code, _, err = env.cli("revoke", "dave")
        assert code == 1 and "every certificate of 'dave' is already revoked" in err
    finally:
        d.stop()


def test_crl_number_increases_across_restarts_and_clock_jumps(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    clock = ManualClock(utc(2031, 6, 1))
    numbers = []
    for step in range(3):
        d = DaemonThread(env, clock).start()
        code, _, err = env.cli("crl", clock=clock)
        assert code == 0, err
        numbers.append(crl_number(env))
        d.stop()
        if step == 0:
            clock.set(utc(2031, 5, 20))  # the clock goes back 12 days
    assert numbers == sorted(set(numbers)), numbers
    # after the jump back the published CRL was dated in the future: it was remade at
    # start (with a higher number), not kept
    crl = load_crl(env)
    assert crl.last_update_utc <= clock.now()
    # an index restored from an old backup must not make the number go back either
    code, _, err = env.cli("crl", clock=clock)
    assert code == 0
    from certdrop.index.store import Store

    store = Store(env.settings.database_url).open()
    with store.begin() as conn:
        store.set_meta(conn, "crl_number", "1")
    store.close()
    last = crl_number(env)
    code, _, err = env.cli("crl", clock=clock)
    assert code == 0, err
    assert crl_number(env) == last + 1  # the same moment: the next number


def test_stale_or_missing_crl_is_remade_before_ready(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    clock = ManualClock(utc(2032, 3, 1))
    d = DaemonThread(env, clock).start()
    d.stop()
    first = crl_number(env)
    # missing DER
    (env.state / "crl.der").unlink()
    d = DaemonThread(env, clock).start()
    d.stop()
    assert crl_number(env) == first + 1  # the same moment (a ManualClock): the next number
    # a damaged PEM
    (env.state / "crl.pem").write_text("garbage")
    d = DaemonThread(env, clock).start()
    d.stop()
    assert crl_number(env) == first + 2
    assert_crl_sound(env)
    # expired while the daemon was down (7 days validity)
    clock.advance(dt.timedelta(days=8))
    d = DaemonThread(env, clock).start()
    try:
        crl = load_crl(env)
        assert crl_number(env) == first + 8 * 86400 * 10**9  # 8 days later, in nanoseconds
        assert crl.last_update_utc == clock.now().replace(microsecond=0)
    finally:
        d.stop()


def test_scheduler_renews_crl_close_to_next_update(tmp_path: Path) -> None:
    """The refresh job decides from the injected clock, whether anything changed or not."""
    env = make_env(tmp_path, extra="[crl]\nvalidity_days = 7\nrefresh_before_days = 3\n")
    t0 = utc(2033, 1, 1)
    clock = ManualClock(t0)
    d = DaemonThread(env, clock)
    d.daemon.jobs.crl_check_seconds = 0.2  # let the real scheduler run it often
    d.start()
    try:
        assert "crl" in d.daemon.scheduler.job_ids()  # type: ignore[union-attr]
        first = crl_number(env)
        # just before nextUpdate - refresh_before_days: nothing to do
        clock.set(t0 + dt.timedelta(days=4) - dt.timedelta(seconds=1))
        d.daemon.jobs.crl()
        assert crl_number(env) == first
        second = first + 4 * 86400 * 10**9  # the number of a CRL made 4 days later
        # one second later it is due: the scheduled job renews it on its own
        clock.set(t0 + dt.timedelta(days=4))
        # crl.der is written first, crl.pem last: both published when the PEM has it
        wait_for(
            lambda: crl_number(env) == second and pem_crl_number(env) == second,
            what="the scheduler to renew the CRL",
        )
        crl = load_crl(env)
        assert crl.last_update_utc == t0 + dt.timedelta(days=4)
        assert crl.next_update_utc == t0 + dt.timedelta(days=11)
        assert_crl_sound(env)
        # and not again until the next window
        d.daemon.jobs.crl()
        assert crl_number(env) == second
    finally:
        d.stop()


def test_crl_distribution_point_in_issued_certificates(tmp_path: Path) -> None:
    url = "http://pki.example.org/certdrop/crl.der"
    env = make_env(tmp_path, extra=f'[crl]\ndistribution_point = "{url}"\n')
    d = DaemonThread(env).start()
    try:
        cer, _ = issue(env, tmp_path, "erin", "Erin")
    finally:
        d.stop()
    cert = load_cert(cer)
    ext = cert.extensions.get_extension_for_oid(ExtensionOID.CRL_DISTRIBUTION_POINTS)
    assert not ext.critical
    points = list(ext.value)  # type: ignore[call-overload]
    assert [p.full_name for p in points] == [[x509.UniformResourceIdentifier(url)]]
    assert lint_clean(cert.public_bytes(serialization.Encoding.DER)) == []
    text = run([OPENSSL, "x509", "-in", str(cer), "-noout", "-ext", "crlDistributionPoints"]).stdout
    assert url in text
    # without the setting there is none
    env2 = make_env(tmp_path / "plain")
    d = DaemonThread(env2).start()
    try:
        cer2, _ = issue(env2, tmp_path / "plain", "frank", "Frank")
    finally:
        d.stop()
    with pytest.raises(x509.ExtensionNotFound):
        load_cert(cer2).extensions.get_extension_for_oid(ExtensionOID.CRL_DISTRIBUTION_POINTS)


def test_status_reports_crl(tmp_path: Path) -> None:
    clock = ManualClock(utc(2034, 2, 1))
    env = make_env(tmp_path)
    code, out, _ = env.cli("status", "--json", clock=clock)
    assert json.loads(out)["crl"]["number"] is None
    d = DaemonThread(env, clock).start()
    d.stop()
    code, out, _ = env.cli("status", "--json", clock=clock)
    doc = json.loads(out)
    assert doc["crl"]["number"] == crl_number(env)
    assert doc["crl"]["next_update"] == "2034-02-08T00:00:00+00:00"
    assert doc["crl"]["state"] == "fresh"
    assert doc["apache"] == {"enabled": False}
    clock.advance(dt.timedelta(days=5))
    code, out, _ = env.cli("status", clock=clock)
    assert code == 0
    line = next(ln for ln in out.splitlines() if ln.startswith("crl"))
    assert f"number {crl_number(env)}" in line and "refresh due" in line
    assert "next_update 2034-02-08" in line


# --- Apache files without Apache: write only on change, commands, debounce -----------------------
def recorder(path: Path) -> list[str]:
    """A real program that appends one line per run to `path`."""
    return [sys.executable, "-c", f"open({str(path)!r}, 'a').write('x\\n')"]


def test_apache_files_written_only_when_content_changes(tmp_path: Path) -> None:
    web = tmp_path / "web"
    reloads = tmp_path / "reloads.txt"
    tests = tmp_path / "tests.txt"
    extra = f"""
[apache]
enabled = true
ca_file = "{web}/certdrop/ca-bundle.pem"
crl_file = "{web}/certdrop/crl.pem"
configtest_command = {json.dumps(recorder(tests))}
reload_command = {json.dumps(recorder(reloads))}
debounce_seconds = 0
"""
    env = make_env(tmp_path, extra=extra)
    code, out, err = env.cli("crl")
    assert code == 0, err
    assert "Apache: reloaded" in out
    ca_file, crl_file = web / "certdrop" / "ca-bundle.pem", web / "certdrop" / "crl.pem"
    assert ca_file.read_bytes() == env.ca_cert.read_bytes()
    assert crl_file.read_bytes() == (env.state / "crl.pem").read_bytes()
    for f in (ca_file, crl_file):
        assert stat.S_IMODE(f.stat().st_mode) == 0o644
    assert reloads.read_text().count("x") == 1 and tests.read_text().count("x") == 1
    ca_inode = ca_file.stat().st_ino

    # the periodic check with nothing changed: no write, no reload
    d = DaemonThread(env).start()
    try:
        d.daemon.jobs.crl()
        d.daemon.rt.apache.flush()  # type: ignore[union-attr]
        assert reloads.read_text().count("x") == 1
        assert ca_file.stat().st_ino == ca_inode
        # a revocation: the CRL file is replaced (atomically), the CA file is not touched
        _cer, _ = issue(env, tmp_path, "gina", "Gina")
        code, _, err = env.cli("revoke", "gina")
        assert code == 0, err
        wait_for(lambda: reloads.read_text().count("x") == 2, what="the reload")
        assert crl_file.read_bytes() == (env.state / "crl.pem").read_bytes()
        assert ca_file.stat().st_ino == ca_inode
        assert not list((web / "certdrop").glob(".*"))  # no temporary files left behind
    finally:
        d.stop()
    doc = json.loads(env.cli("status", "--json")[1])
    assert doc["apache"]["last"] == "ok" and doc["apache"]["action"] == "reloaded"


def test_configtest_failure_restores_files_without_apache(tmp_path: Path) -> None:
    web = tmp_path / "web"
    reloads = tmp_path / "reloads.txt"
    extra = f"""
[apache]
enabled = true
ca_file = "{web}/ca-bundle.pem"
crl_file = "{web}/crl.pem"
configtest_command = ["/bin/sh", "-c", "test ! -e {tmp_path}/broken || {{ echo 'AH00526: Syntax error on line 3'; exit 1; }}"]
reload_command = {json.dumps(recorder(reloads))}
debounce_seconds = 0.1
"""
    env = make_env(tmp_path, extra=extra)
    assert env.cli("crl")[0] == 0
    old_crl = (web / "crl.pem").read_bytes()
    (tmp_path / "broken").touch()
    code, _out, err = env.cli("crl")
    assert code == 1
    assert "configtest" in err and "AH00526" in err and "previous files restored" in err
    assert (web / "crl.pem").read_bytes() == old_crl  # restored
    assert reloads.read_text().count("x") == 1  # not reloaded
    doc = json.loads(env.cli("status", "--json")[1])
    assert doc["apache"]["last"] == "FAILED" and doc["apache"]["action"] == "configtest-failed"
    assert "AH00526" in doc["apache"]["detail"]
    # fixed: the next check publishes what is pending
    (tmp_path / "broken").unlink()
    d = DaemonThread(env).start()
    try:
        wait_for(lambda: reloads.read_text().count("x") == 2, what="the retried reload")
        assert (web / "crl.pem").read_bytes() == (env.state / "crl.pem").read_bytes()
    finally:
        d.stop()


def test_revocation_left_unpublished_by_a_crash_is_published_at_start(tmp_path: Path) -> None:
    """The index commit is the revocation; a CRL that does not show it is remade."""
    env = make_env(tmp_path)
    d = DaemonThread(env).start()
    try:
        cer, _ = issue(env, tmp_path, "hank", "Hank")
    finally:
        d.stop()
    serial = load_cert(cer).serial_number
    number = crl_number(env)
    # what a crash right after the index commit of `revoke` leaves behind
    from certdrop.index.store import Store

    store = Store(env.settings.database_url).open()
    with store.begin() as conn:
        store.revoke(conn, f"{serial:X}", "keyCompromise", dt.datetime.now(dt.UTC))
    store.close()
    assert crl_reasons(env) == {}
    d = DaemonThread(env).start()
    try:
        assert crl_reasons(env) == {serial: "key_compromise"}
        assert crl_number(env) > number
    finally:
        d.stop()


def test_sighup_reload_turns_apache_publication_on(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    d = DaemonThread(env).start()
    try:
        web, reloads = tmp_path / "web", tmp_path / "reloads.txt"
        with env.config.open("a") as fh:
            fh.write(
                f"""
[apache]
enabled = true
ca_file = "{web}/ca.pem"
crl_file = "{web}/crl.pem"
configtest_command = ["true"]
reload_command = {json.dumps(recorder(reloads))}
debounce_seconds = 0.1
"""
            )
        d.daemon.reload_requested.set()
        wait_for(lambda: reloads.exists(), what="the first Apache publication after SIGHUP")
        assert (web / "crl.pem").read_bytes() == (env.state / "crl.pem").read_bytes()
        assert (web / "ca.pem").read_bytes() == env.ca_cert.read_bytes()
        # and the new runtime debounces: a revocation reaches Apache too
        issue(env, tmp_path, "ivy", "Ivy")
        code, out, err = env.cli("revoke", "ivy")
        assert code == 0 and "Apache files follow" in out, err
        wait_for(
            lambda: (
                (web / "crl.pem").read_bytes() == (env.state / "crl.pem").read_bytes()
                and reloads.read_text().count("x") == 2
            ),
            what="the revocation in Apache's CRL file",
        )
    finally:
        d.stop()
