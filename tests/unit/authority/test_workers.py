"""The signing pool gives exactly what the daemon process would: same parses, same checks.

The pool parses with the function the daemon gives it (`parse_chunk`, with `parse_many`
as the fallback in this process); the tests give a fallback that counts, to see what was
done here and what by the workers.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from certdrop.authority.ca import CertificateAuthority, IssueSpec, Staged, Staging
from certdrop.authority.der import pem_armor
from certdrop.authority.lint import shared_linter
from certdrop.authority.names import subject_text
from certdrop.authority.serials import random_serial
from certdrop.authority.workers import MIN_POOL_BATCH, WorkerPool
from certdrop.errors import LintError, RequestError
from certdrop.intake.request import ParsedRequest, parse_chunk, parse_many
from conftest import CAEnv, lint_clean, wait_for


def _csrs(n: int) -> list[bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    out = []
    for i in range(n):
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"pool {i}")]))
            .sign(key, hashes.SHA256())
        )
        out.append(csr.public_bytes(serialization.Encoding.PEM))
    return out


Parsed = list[ParsedRequest | RequestError]


def parse_later(
    pool: WorkerPool, datas: list[bytes], here: Callable[[Sequence[bytes]], Parsed] = parse_many
) -> Callable[[], Parsed]:
    """Parsing as the daemon has the pool do it; `here`: the fallback in this process."""
    return pool.map_later(parse_chunk, datas, fallback=here, what="parsing")


def parse(
    pool: WorkerPool, datas: list[bytes], here: Callable[[Sequence[bytes]], Parsed] = parse_many
) -> Parsed:
    return parse_later(pool, datas, here)()


class ParsedHere(list[int]):
    """A fallback for the pool's parsing that remembers the sizes of the batches parsed
    in this process (not by a worker), in order."""

    def __call__(self, datas: Sequence[bytes]) -> Parsed:
        self.append(len(datas))
        return parse_many(datas)


class CountingCA(CertificateAuthority):
    """The CA of this process, remembering the sizes of the batches it signs (a worker
    loads a CA of its own)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.signed_here: list[int] = []

    def issue_and_stage(self, specs: Any, stagings: Any, linter: Any) -> Any:
        self.signed_here.append(len(specs))
        return super().issue_and_stage(specs, stagings, linter)


def signed_here(pool: WorkerPool) -> list[int]:
    """The sizes of the batches `pool` signs in this process from now on, in order."""
    assert isinstance(pool.ca, CountingCA)
    pool.ca.signed_here.clear()
    return pool.ca.signed_here


@contextlib.contextmanager
def one_worker(env: CAEnv, *, started: bool = False) -> Iterator[WorkerPool]:
    """A pool of one signing process on the test CA, lint off, closed afterwards;
    `started`: wait until its worker is up."""
    pool = WorkerPool(CountingCA.load(env.state), env.state, None, lint=False, workers=1)
    try:
        if started:
            pool.expect(MIN_POOL_BATCH)
            wait_for(lambda: pool.ready, 60, what="pool workers")
        yield pool
    finally:
        pool.close()


@pytest.fixture
def parsed_here() -> ParsedHere:
    return ParsedHere()


def _specs(parsed: list[ParsedRequest | RequestError], now: dt.datetime) -> list[IssueSpec]:
    """A client certificate for each request that parsed."""
    return [
        IssueSpec(
            subject=list(p.subject),
            public_key=p.spki,
            not_before=now,
            not_after=now + dt.timedelta(days=30),
            key_usage=["digital_signature"],
            extended_key_usage=["client_auth"],
            serial=random_serial(dt.datetime.now(dt.UTC)),
        )
        for p in parsed
        if not isinstance(p, RequestError)
    ]


def test_pool_parses_and_signs_like_the_daemon_process(ca_env: CAEnv, tmp_path: Path) -> None:
    ca = CertificateAuthority.load(ca_env.state)
    pool = WorkerPool(ca, ca_env.state, None, lint=True, workers=2)
    try:
        datas = _csrs(MIN_POOL_BATCH * 2)
        assert not pool.ready  # started lazily: the first big batch starts it ...
        parse(pool, datas)  # ... and is itself parsed in this process
        wait_for(lambda: pool.ready, 60, what="pool workers")
        datas[3] = datas[3][:100]  # truncated
        datas[7] = b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
        here, there = parse_many(datas), parse(pool, datas)
        assert len(there) == len(datas)
        for a, b in zip(here, there, strict=True):
            if isinstance(a, RequestError):
                assert isinstance(b, RequestError) and str(a) == str(b)
            else:
                assert a == b
        now = dt.datetime.now(dt.UTC)
        specs = _specs(there, now)
        # one spec that lints badly: an e-mail without '@' (the policy would refuse it earlier)
        specs.append(
            IssueSpec(
                subject=[("CN", "x")],
                emails=["notanemail"],
                public_key=specs[0].public_key,
                not_before=now,
                not_after=now + dt.timedelta(days=30),
                key_usage=["digital_signature"],
                extended_key_usage=["client_auth"],
                serial=random_serial(dt.datetime.now(dt.UTC)),
            )
        )
        # the workers stage what they sign; the last good spec gets a key made there, in a p12
        stagings = [Staging(cer_path=str(tmp_path / f"{i}.cer")) for i in range(len(specs))]
        stagings[-2] = replace(
            stagings[-2],
            p12_path=str(tmp_path / "made.p12"),
            key_type="ec-p256",
            password="pw-1",
            friendly_name="pool 1",
        )
        signed = pool.sign(specs, stagings, shared_linter())()
        assert isinstance(signed[-1], LintError)
        assert not (tmp_path / f"{len(specs) - 1}.cer").exists()  # nothing staged for it
        for i, (spec, staged) in enumerate(zip(specs[:-1], signed[:-1], strict=True)):
            assert isinstance(staged, Staged)
            cert = x509.load_der_x509_certificate(staged.der)
            assert (tmp_path / f"{i}.cer").read_bytes() == cert.public_bytes(
                serialization.Encoding.PEM
            )
            cert.verify_directly_issued_by(ca.cert)
            assert cert.serial_number == spec.serial
            assert staged.subject == subject_text(cert.subject)
            assert staged.not_after == cert.not_valid_after_utc
            assert lint_clean(staged.der) == []
            spki = cert.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            if i < len(specs) - 2:
                assert spki == spec.public_key and not staged.p12
            else:  # the key made in the worker: only inside the p12, with its certificate
                assert spki != spec.public_key and staged.p12
                key, p12_cert, _ = pkcs12.load_key_and_certificates(
                    (tmp_path / "made.p12").read_bytes(), b"pw-1"
                )
                assert p12_cert == cert and key is not None
                assert (
                    key.public_key().public_bytes(
                        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
                    )
                    == spki
                )
        # the same LintError text the daemon process gives
        try:
            ca.issue(specs[-1], shared_linter().certificate)
        except LintError as exc:
            assert str(exc) == str(signed[-1])
        else:
            raise AssertionError("the bad e-mail linted clean in this process")
    finally:
        pool.close()


def test_small_batches_stay_in_process(ca_env: CAEnv, tmp_path: Path) -> None:
    with one_worker(ca_env) as pool:
        datas = _csrs(2)
        assert all(not isinstance(p, RequestError) for p in parse(pool, datas))
        assert not pool.ready and not multiprocessing.active_children()  # no pool started


def test_workers_start_when_a_burst_is_queued(ca_env: CAEnv) -> None:
    """The first events of a burst make a small batch: the queue's depth starts the pool."""
    with one_worker(ca_env) as pool:
        pool.expect(MIN_POOL_BATCH - 1)
        assert not pool.ready and not multiprocessing.active_children()
        pool.expect(MIN_POOL_BATCH)
        wait_for(lambda: pool.ready, 60, what="pool workers")
        assert all(not isinstance(p, RequestError) for p in parse(pool, _csrs(2)))


def test_pool_stops_when_idle_and_starts_again(ca_env: CAEnv) -> None:
    with one_worker(ca_env) as pool:
        datas = _csrs(MIN_POOL_BATCH)
        parse(pool, datas)
        wait_for(lambda: pool.ready, 60, what="pool workers")
        assert multiprocessing.active_children()
        assert not pool.stop_if_idle(3600)  # used just now
        assert pool.stop_if_idle(0)
        assert not pool.ready and not multiprocessing.active_children()
        assert all(not isinstance(p, RequestError) for p in parse(pool, datas))  # here, restarting
        wait_for(lambda: pool.ready, 60, what="pool workers again")
        assert all(not isinstance(p, RequestError) for p in parse(pool, datas))  # there


def test_a_batch_started_here_is_handed_to_the_pool_once_it_is_up(
    ca_env: CAEnv, tmp_path: Path
) -> None:
    """A big batch that arrives before the workers are up is signed here a few at a
    time; once they are up, the rest goes to them: the same outputs, in order."""
    with one_worker(ca_env) as pool:
        specs = _specs(parse_many(_csrs(MIN_POOL_BATCH * 3)), dt.datetime.now(dt.UTC))
        assert len(specs) == MIN_POOL_BATCH * 3
        stagings = [Staging(cer_path=str(tmp_path / f"{i}.cer")) for i in range(len(specs))]
        here_sizes = signed_here(pool)
        # no pool yet: all of it here, a few at a time
        here = pool.sign_in_steps(specs, stagings, None)
        assert not multiprocessing.active_children()
        assert here_sizes == [MIN_POOL_BATCH] * 3
        parse(pool, _csrs(MIN_POOL_BATCH))  # starts the workers
        wait_for(lambda: pool.ready, 60, what="pool workers")
        # the pool is up: all of it handed over at the first step
        here_sizes.clear()
        there = pool.sign_in_steps(specs, stagings, None)
        assert here_sizes == []
        for spec, a, b in zip(specs, here, there, strict=True):
            assert isinstance(a, Staged) and isinstance(b, Staged)
            for staged in (a, b):
                cert = x509.load_der_x509_certificate(staged.der)
                assert cert.serial_number == spec.serial
                cert.verify_directly_issued_by(pool.ca.cert)


def test_a_worker_killed_makes_this_process_do_the_work(
    ca_env: CAEnv, tmp_path: Path, parsed_here: ParsedHere
) -> None:
    """A worker killed (the OOM killer, an operator): what was in flight and everything
    after it is parsed and signed in this process, not retried against a dead pool."""
    import os
    import signal

    with one_worker(ca_env, started=True) as pool:
        (worker,) = multiprocessing.active_children()
        assert worker.pid is not None
        datas = _csrs(MIN_POOL_BATCH)
        parsing = parse_later(pool, datas)  # submitted to the worker, then it is killed
        os.kill(worker.pid, signal.SIGKILL)
        parsed = parsing()
        assert all(isinstance(p, ParsedRequest) for p in parsed)
        specs = _specs(parsed, dt.datetime.now(dt.UTC))
        stagings = [Staging(cer_path=str(tmp_path / f"{i}.cer")) for i in range(len(specs))]
        signed = pool.sign(specs, stagings, None)()  # the pool is known broken: signed here
        assert [x509.load_der_x509_certificate(s.der).serial_number for s in signed] == [  # type: ignore[union-attr]
            s.serial for s in specs
        ]
        assert all((tmp_path / f"{i}.cer").exists() for i in range(len(specs)))
        assert all(isinstance(p, ParsedRequest) for p in parse(pool, datas))
    # killed while idle, gone before anything is submitted
    with one_worker(ca_env, started=True) as pool:
        (worker,) = multiprocessing.active_children()
        assert worker.pid is not None
        os.kill(worker.pid, signal.SIGKILL)
        worker.join(30)
        assert all(isinstance(p, ParsedRequest) for p in parse(pool, datas, parsed_here))
        assert parsed_here == [MIN_POOL_BATCH]


def test_a_broken_pool_is_started_anew_after_a_while(
    ca_env: CAEnv, parsed_here: ParsedHere
) -> None:
    """After a worker died, the daemon process works alone for `restart_after` seconds
    (RESTART_BROKEN_SECONDS); the next batch after that starts new workers."""
    import os
    import signal

    import certdrop.authority.workers as workers

    assert workers.RESTART_BROKEN_SECONDS >= 60
    datas = _csrs(MIN_POOL_BATCH)
    with one_worker(ca_env, started=True) as pool:
        (killed,) = multiprocessing.active_children()
        assert killed.pid is not None
        os.kill(killed.pid, signal.SIGKILL)
        killed.join(30)
        assert all(isinstance(p, ParsedRequest) for p in parse(pool, datas, parsed_here))
        assert parsed_here == [MIN_POOL_BATCH] and not pool.ready  # broken: parsed here
        pool.expect(MIN_POOL_BATCH)  # not yet due: still here
        assert all(isinstance(p, ParsedRequest) for p in parse(pool, datas, parsed_here))
        assert parsed_here == [MIN_POOL_BATCH] * 2 and not pool.ready
        pool.restart_after = 0.0  # as if RESTART_BROKEN_SECONDS had passed
        pool.expect(MIN_POOL_BATCH)
        wait_for(lambda: pool.ready, 60, what="new pool workers")
        (worker,) = [w for w in multiprocessing.active_children() if w.pid != killed.pid]
        assert all(isinstance(p, ParsedRequest) for p in parse(pool, datas, parsed_here))
        assert parsed_here == [MIN_POOL_BATCH] * 2  # parsed by the new worker
        assert worker.is_alive()


def test_a_parse_asked_for_before_the_workers_are_up_goes_to_them_if_they_are_up_by_then(
    ca_env: CAEnv, parsed_here: ParsedHere
) -> None:
    with one_worker(ca_env) as pool:
        datas = _csrs(MIN_POOL_BATCH)
        parsing = parse_later(pool, datas, parsed_here)  # starts the workers; not up yet
        assert not pool.ready
        wait_for(lambda: pool.ready, 60, what="pool workers")
        assert all(isinstance(p, ParsedRequest) for p in parsing())
        assert parsed_here == []  # parsed by the worker
        pool.close()
        assert all(isinstance(p, ParsedRequest) for p in parse(pool, datas, parsed_here))
        assert parsed_here == [MIN_POOL_BATCH]  # no workers: parsed here


def test_work_deferred_while_the_workers_start_is_handed_to_them_once_they_are_up(
    ca_env: CAEnv, tmp_path: Path, parsed_here: ParsedHere
) -> None:
    """Batches decided while the workers start are not left waiting until the daemon asks
    for their outcome: the thread that started the workers hands them over as soon as
    they are up (the worker writes the staged files before anyone asks)."""
    out = tmp_path / "staged"
    out.mkdir()
    with one_worker(ca_env) as pool:
        datas = _csrs(MIN_POOL_BATCH)
        specs = _specs(parse_many(datas), dt.datetime.now(dt.UTC))
        stagings = [Staging(cer_path=str(out / f"{i}.cer")) for i in range(len(specs))]
        parsing = parse_later(pool, datas, parsed_here)  # starts the workers
        signing = pool.sign(specs, stagings, None)
        assert not pool.ready and not any(out.iterdir())
        wait_for(lambda: pool.ready, 60, what="pool workers")
        # nobody asked for the signing: the worker did it
        wait_for(
            lambda: all((out / f"{i}.cer").exists() for i in range(len(specs))),
            60,
            what="staged certificates written by the worker",
        )
        signed = signing()
        assert [x509.load_der_x509_certificate(s.der).serial_number for s in signed] == [  # type: ignore[union-attr]
            s.serial for s in specs
        ]
        assert all(isinstance(p, ParsedRequest) for p in parsing())
        assert parsed_here == []  # parsed by the worker too


def test_work_asked_for_before_the_workers_are_up_is_done_once(
    ca_env: CAEnv, tmp_path: Path, parsed_here: ParsedHere
) -> None:
    """Asked for while the workers start, deferred work is done here (a few at a time,
    the rest by the workers once up); the workers coming up later do not do it again."""
    with one_worker(ca_env) as pool:
        specs = _specs(parse_many(_csrs(MIN_POOL_BATCH * 2)), dt.datetime.now(dt.UTC))
        stagings = [Staging(cer_path=str(tmp_path / f"{i}.cer")) for i in range(len(specs))]
        here_sizes = signed_here(pool)
        signing = pool.sign(specs, stagings, None)  # starts the workers
        signed = signing()  # asked for at once: done here while they start (or handed over)
        pool.wait_started()  # the workers are up and what was waiting was handed over
        assert pool.ready
        assert sum(here_sizes) <= len(specs)
        assert [x509.load_der_x509_certificate(s.der).serial_number for s in signed] == [  # type: ignore[union-attr]
            s.serial for s in specs
        ]
        # the worker's next batch runs after anything handed to it before: had it signed
        # the batch again, the staged files would hold other certificates (ECDSA signatures
        # differ each time)
        assert all(isinstance(p, ParsedRequest) for p in parse(pool, _csrs(16), parsed_here))
        assert parsed_here == []
        for i, staged in enumerate(signed):
            assert isinstance(staged, Staged)
            assert (tmp_path / f"{i}.cer").read_bytes() == pem_armor("CERTIFICATE", staged.der)


def test_a_parse_started_here_is_handed_to_the_pool_once_it_is_up(
    ca_env: CAEnv, parsed_here: ParsedHere
) -> None:
    """A big batch whose parse is asked for before the workers are up is parsed here a
    few at a time; once they are up, the rest goes to them: the same results, in order."""
    with one_worker(ca_env) as pool:
        datas = [*_csrs(MIN_POOL_BATCH * 3), b"not a request"]
        here = pool.map_in_steps(parse_chunk, datas, fallback=parsed_here)  # no pool yet: here
        assert parsed_here == [MIN_POOL_BATCH] * 3 + [1]
        assert not multiprocessing.active_children()
        pool.expect(MIN_POOL_BATCH)
        wait_for(lambda: pool.ready, 60, what="pool workers")
        parsed_here.clear()
        there = pool.map_in_steps(parse_chunk, datas, fallback=parsed_here)  # the pool is up
        assert parsed_here == []
        assert [p.fingerprint for p in here[:-1]] == [p.fingerprint for p in there[:-1]]  # type: ignore[union-attr]
        assert isinstance(here[-1], RequestError) and isinstance(there[-1], RequestError)
        assert str(here[-1]) == str(there[-1])
