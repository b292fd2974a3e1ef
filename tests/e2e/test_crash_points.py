"""kill -9 at named points of the pipeline during a 500-request burst.

The daemon runs as a separate process. CERTDROP_CRASH_AT=<point>:<n> (faults.py)
makes it SIGKILL itself the n-th time it passes a named point: between signing and
recording, between recording and delivery, with the reason written but the request
not yet moved, and so on. After each kill the daemon is started again (the restart
itself recovers work/ and may be killed in the middle of that recovery), until
every point has been hit at least once; a final run finishes the burst.

Afterwards every request must be in exactly one place, with one certificate per
request, unique serials, complete outputs (.cer and .p12 with its password), the
index consistent, and the CA key untouched.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from certdrop.faults import CRASH_POINTS, parse_crash_spec
from certdrop.index import journal, listing
from certdrop.index.store import Store
from conftest import CAEnv, DaemonThread, ec_csr, make_env, wait_for, wait_result
from test_crash import check_invariants

SEED = int(os.environ.get("CERTDROP_TEST_SEED", "7"))

# The daemon works in batches (up to 256 requests claimed, signed, recorded and
# delivered together), so the batch-level points are hit at their first pass: a kill
# there leaves a whole batch in work/, and the next run's recovery of that batch is
# where the next kill lands. Points that single requests pass (a claim, a refusal, a
# p12, a re-delivery, a pending request) are hit at a random n-th pass. The order
# matters where a point is only reached on a given path: after-redeliver-stage right
# after a crash after recording is reached by the restart's own recovery, and the
# server profile's folder is scanned after the default one, so the points of
# requests waiting for approval come last.
SCHEDULE = [
    "mid-claim",
    "after-claim",
    "after-parse",
    "after-sign",
    "mid-reject",
    "after-stage",
    "after-record",
    "after-redeliver-stage",  # the recovery of the batch recorded but not delivered
    "after-deliver",
    "mid-deliver",
    "after-archive",
    "after-reject",
    "mid-claim",
    "after-sign",
    "after-record",
    "mid-deliver",
    "after-stage",
    "mid-reject",
    "after-deliver",
    "after-claim",
    "after-archive",
    "after-parse",
    "mid-pending",
    "mid-pending",
]
PER_REQUEST = {"mid-claim", "mid-reject", "after-reject", "mid-deliver", "mid-pending"}
WAVE = 25


def make_burst(folder: Path) -> dict[str, list[tuple[str, str, bytes]]]:
    """500 requests of every kind: {kind: [(name, sub-folder, bytes), ...]} (+ keys)."""
    folder.mkdir(parents=True, exist_ok=True)
    burst: dict[str, list[tuple[str, str, bytes]]] = {
        "ok": [],
        "p12": [],
        "bad": [],
        "srv": [],
        "enr": [],
        "dup": [],
        "keys": [],
    }
    for i in range(380):
        pem, _ = ec_csr(f"ok user {i}")
        burst["ok"].append((f"ok{i:03d}", "", pem))
    for i in range(30):
        pem, key = ec_csr(f"p12 user {i}")
        burst["p12"].append((f"p12x{i:02d}", "", pem))
        burst["keys"].append((f"p12x{i:02d}", "", key))
    for i in range(30):  # refused by the policy: no CN
        pem, _ = ec_csr("", [x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"Org {i}")])
        burst["bad"].append((f"bad{i:02d}", "", pem))
    for i in range(20):  # the server profile waits for an operator
        pem, _ = ec_csr(f"srv{i:02d}.example.org")
        burst["srv"].append((f"srv{i:02d}", "server", pem))
    for i in range(20):  # server-side key generation
        toml = f'[subject]\nCN = "enrolled user {i}"\nemailAddress = "e{i}@example.org"\n'
        burst["enr"].append((f"enr{i:02d}", "", toml.encode()))
    for i in range(20):  # the same CSR again under another name: re-delivered
        burst["dup"].append((f"dup{i:02d}", "", burst["ok"][i][2]))
    return burst


def start(env: CAEnv, log: Path, crash: str | None) -> subprocess.Popen[bytes]:
    e = dict(os.environ)
    e.pop("NOTIFY_SOCKET", None)
    e.pop("CERTDROP_CRASH_AT", None)
    if crash:
        e["CERTDROP_CRASH_AT"] = crash
    return subprocess.Popen(
        [sys.executable, "-m", "certdrop.cli", "--config", str(env.config), "run"],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env=e,
        start_new_session=True,  # its worker processes share its session id: see leftovers()
    )


def leftovers(proc: subprocess.Popen[bytes]) -> list[str]:
    """Processes still alive in the session of a daemon that has ended (its workers...)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(fields[3]) == proc.pid and fields[0] != "Z":
            out.append(f"{d.name} {cmd[:100]}")
    return out


def assert_no_leftovers(proc: subprocess.Popen[bytes]) -> None:
    """A dead daemon leaves nothing running: no worker holding the CA key, no orphan."""
    wait_for(lambda: not leftovers(proc), 20, what=f"no process left behind: {leftovers(proc)}")


def drop_wave(env: CAEnv, burst: dict[str, list[tuple[str, str, bytes]]], wave: list[str]) -> None:
    """Write a wave under temporary names first, then rename it in: one quick burst."""
    wanted = set(wave)
    files: dict[str, tuple[Path, Path]] = {}
    for kind, items in burst.items():
        for name, sub, data in items:
            if name not in wanted:
                continue
            folder = env.inbox / sub if sub else env.inbox
            suffix = ".key" if kind == "keys" else ".req"
            tmp = folder / f".{name}{suffix}.part"
            tmp.write_bytes(data)
            if kind == "keys":
                tmp.chmod(0o600)
                # a key goes in before its request, as a user copying both would do
                os.rename(tmp, folder / f"{name}.key")
            else:
                files[name] = (tmp, folder / f"{name}.req")
    for name in wave:
        tmp, final = files[name]
        os.rename(tmp, final)


def settled(env: CAEnv, names: list[str]) -> bool:
    outbox = {p.stem for p in env.outbox.glob("*.cer")}
    rejected = {p.stem for p in env.rejected.glob("*.reason")}
    pending = {p.stem for p in env.pending.glob("*.req")}
    if not all(n in outbox or n in rejected or n in pending for n in names):
        return False
    inbox_left = [p for p in env.inbox.rglob("*") if p.is_file() and not p.name.startswith(".")]
    work_left = [p for p in (env.spool / "work").rglob("*") if p.is_file()]
    return not inbox_left and not work_left


def test_parse_crash_spec() -> None:
    assert parse_crash_spec("after-record:3, mid-reject") == {"after-record": 3, "mid-reject": 1}
    from certdrop.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown crash point 'after-lunch'"):
        parse_crash_spec("after-lunch:1")
    with pytest.raises(ConfigError, match="positive count"):
        parse_crash_spec("after-sign:0")
    assert set(SCHEDULE) == CRASH_POINTS


def test_kill9_at_named_points_during_a_500_request_burst(ca_env: CAEnv, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    burst = make_burst(tmp_path / "burst")
    names = [n for kind, items in burst.items() if kind != "keys" for n, _, _ in items]
    assert len(names) == 500
    order = list(names)
    rng.shuffle(order)
    # the burst arrives in waves of 25, the first while the daemon runs, the others while
    # it is down: a kill then always has fresh requests to land in, batch after batch
    waves = [order[i : i + WAVE] for i in range(0, len(order), WAVE)]
    dropped: list[str] = []
    ca_key = ca_env.state / "ca.key"
    key_digest = hashlib.sha256(ca_key.read_bytes()).hexdigest()
    key_mtime = ca_key.stat().st_mtime_ns

    def next_wave() -> bool:
        if not waves:
            return False
        wave = waves.pop(0)
        drop_wave(ca_env, burst, wave)
        dropped.extend(wave)
        return True

    kills: list[str] = []
    run = 0
    for point in SCHEDULE:
        n = rng.randint(1, 2) if point in PER_REQUEST else 1
        spec = f"{point}:{n}"
        while True:  # until this point is reached (a wave may not pass it)
            log = tmp_path / f"run{run:02d}.log"
            run += 1
            proc = start(ca_env, log, spec)
            try:
                if not dropped:
                    wait_for(lambda: "ready" in log.read_text(), 60, what="the first daemon ready")
                    next_wave()
                wait_for(
                    lambda: proc.poll() is not None or settled(ca_env, dropped),
                    90,
                    interval=0.05,
                    what=f"{spec} or every request dropped so far done",
                )
                if proc.poll() is None:  # all done without passing the point: stop it
                    proc.send_signal(signal.SIGTERM)
                rc = proc.wait(timeout=30)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            text = log.read_text()
            assert "Traceback" not in text, text
            assert_no_leftovers(proc)
            if rc == -signal.SIGKILL:
                assert f"crash point {spec} reached" in text, (spec, text[-3000:])
                kills.append(spec)
                break
            assert rc == 0, (spec, rc, text[-3000:])
            assert next_wave(), f"{spec} (seed {SEED}) was never reached by the whole burst"
        if not list(ca_env.inbox.glob("*.req")) and not list(ca_env.inbox.glob("*/*.req")):
            next_wave()

    assert len(kills) >= 20 and {k.split(":")[0] for k in kills} == CRASH_POINTS

    while next_wave():
        pass
    log = tmp_path / "final.log"
    proc = start(ca_env, log, None)
    try:
        wait_for(lambda: settled(ca_env, names), 120, interval=0.1, what="the whole burst")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Traceback" not in log.read_text()
    assert_no_leftovers(proc)

    check_invariants(ca_env, names)
    _check_outcomes(ca_env, burst)
    assert hashlib.sha256(ca_key.read_bytes()).hexdigest() == key_digest
    assert ca_key.stat().st_mtime_ns == key_mtime


def _check_outcomes(env: CAEnv, burst: dict[str, list[tuple[str, str, bytes]]]) -> None:
    """A crash changes nothing about what a request gets."""
    ca = x509.load_pem_x509_certificate(env.ca_cert.read_bytes())
    for kind in ("ok", "p12", "enr", "dup"):
        for name, _, _ in burst[kind]:
            assert (env.outbox / f"{name}.cer").exists(), (kind, name)
    for name, _, _ in burst["bad"]:
        reason = (env.rejected / f"{name}.reason").read_text()
        assert "the subject must contain CN" in reason, (name, reason)
    for name, _, _ in burst["srv"]:
        assert (env.pending / f"{name}.req").exists(), name
    # re-delivered duplicates carry the very certificate of their original
    for i, (name, _, _) in enumerate(burst["dup"]):
        original = burst["ok"][i][0]
        assert (env.outbox / f"{name}.cer").read_bytes() == (
            env.outbox / f"{original}.cer"
        ).read_bytes()
    # every p12 is complete, opens with its password, and holds the right key
    keys = {name: data for name, _, data in burst["keys"]}
    for name, _, _ in burst["p12"] + burst["enr"]:
        p12 = (env.outbox / f"{name}.p12").read_bytes()
        password = (env.state / "passwords" / f"{name}.txt").read_text().splitlines()[0]
        key, cert, extra = pkcs12.load_key_and_certificates(p12, password.encode())
        assert key is not None and cert is not None, name
        assert cert == x509.load_pem_x509_certificate((env.outbox / f"{name}.cer").read_bytes())
        cert.verify_directly_issued_by(ca)
        assert extra == [ca]
        pub = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        assert pub == cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if name in keys:
            dropped = serialization.load_pem_private_key(keys[name], None)
            assert (
                dropped.public_key().public_bytes(
                    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
                )
                == pub
            )
    # exactly one certificate per issued request, none for the rest
    store = Store(env.settings.database_url)
    try:
        with store.begin() as conn:
            records = listing.list_certs(conn)
    finally:
        store.close()
    recorded = sorted(r.request_name for r in records)
    assert len(recorded) == len(burst["ok"]) + len(burst["p12"]) + len(burst["enr"])
    for i, (dup, _, _) in enumerate(burst["dup"]):
        # whichever of the pair came first got the certificate; the other a re-delivery
        assert (recorded.count(dup) + recorded.count(burst["ok"][i][0])) == 1, dup
    unpaired = burst["ok"][len(burst["dup"]) :] + burst["p12"] + burst["enr"]
    assert {n for n, _, _ in unpaired} <= set(recorded)
    # nothing half-written anywhere in the spool
    stray = [p for p in env.spool.rglob(".*") if p.is_file() and p.name != ".gitkeep"]
    assert stray == [], stray


# --- a full disk -------------------------------------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs: a disk that can really be filled (needs root)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(folder: Path) -> Path:
    """Fill the filesystem of `folder` to the last byte; returns the filler file."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 16, 512, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    return filler


@pytest.mark.parametrize("full", ["spool", "index"])
def test_full_disk_keeps_the_index_and_retries(small_fs: Path, tmp_path: Path, full: str) -> None:
    """ENOSPC on the spool (staging the certificate) or on the index (the commit)."""
    if full == "spool":
        env = make_env(small_fs / "env")
    else:
        (tmp_path / "env").mkdir()
        os.symlink(small_fs / "state", tmp_path / "env" / "state")  # for the test's helpers
        env = make_env(tmp_path / "env", replace={'state = "state"': f'state = "{small_fs}/state"'})
    reqs = {}
    # on the spool, one request brings its key (a p12 to stage); on the state folder no
    # p12, so that the first write to fail is the index's own commit (not a password file)
    for name, with_key in (("full1", False), ("full2", full == "spool")):
        pem, key = ec_csr(f"{name} user")
        reqs[name] = pem
        (env.inbox / f".{name}.req.part").write_bytes(pem)
        if with_key:
            (env.inbox / f".{name}.key.part").write_bytes(key)
    # a good request first, so that the index has data to lose
    before, _ = ec_csr("before the disk filled")
    (env.inbox / "before.req").write_bytes(before)
    d = DaemonThread(env).start()
    try:
        assert (env.outbox / "before.cer").exists()
        # an empty write-ahead log: the next commit of the index needs new space
        with sqlite3.connect(env.settings.database_url.removeprefix("sqlite:///")) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        filler = fill(small_fs)
        for name in reqs:
            key = env.inbox / f".{name}.key.part"
            if key.exists():
                os.rename(key, env.inbox / f"{name}.key")
            os.rename(env.inbox / f".{name}.req.part", env.inbox / f"{name}.req")
        expected = "No space left" if full == "spool" else "database or disk is full"
        wait_for(
            lambda: expected in d.daemon.worker.last_error,
            30,
            what=f"the daemon seeing {expected!r}",
        )
        # nothing refused, nothing issued half-way: the requests wait in work/
        assert not list(env.rejected.iterdir())
        assert not (env.outbox / "full1.cer").exists()
        assert d.alive()
        os.unlink(filler)  # space is back: the requests are tried again and issued
        for name in reqs:
            assert wait_result(env, name, 30) == "outbox", name
        assert (env.outbox / "full2.p12").exists() == (full == "spool")
        assert d.alive()
    finally:
        d.stop()
    check_invariants(env, ["before", *reqs])
    store = Store(env.settings.database_url)
    try:
        with store.begin() as conn:
            assert len(listing.list_certs(conn)) == 3
            for name in reqs:
                issued = [j for j in journal.journal_for(conn, name) if j["outcome"] == "issued"]
                assert len(issued) == 1, name
    finally:
        store.close()
