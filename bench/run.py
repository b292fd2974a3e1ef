"""certdrop's benchmark suite: certdrop and its peers, same machine, same run, one table.

    bench/run                      # everything (about 10 minutes on 2 cores)
    bench/run --quick              # small sizes, a smoke run (about a minute)
    bench/run --only folder-burst-ec-lint-off --n 2000 --json out.json

Rows are workloads, columns are tools; every cell carries certdrop's advantage over
that tool. See docs/performance.md for what each row measures and recorded figures.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import csrs  # noqa: E402
import peers  # noqa: E402
from report import COLUMNS, Row, render_markdown, render_text  # noqa: E402
from workloads import WORKLOADS, Bench, Params, run_workload  # noqa: E402

T_START = time.perf_counter()
FEW_FILES = {"serve"}  # workloads that create few files: no wait for the filesystem


def log(msg: str) -> None:
    print(f"[bench {time.perf_counter() - T_START:6.1f}s] {msg}", file=sys.stderr, flush=True)


def select_workloads(only: list[str]) -> list[str]:
    if not only:
        return list(WORKLOADS)
    aliases = {"p12-ec-aes256": "p12", "crl-100k": "crl", "startup-100k": "startup"}
    aliases |= {"crl-100k-lint-off": "crl", "crl-100k-lint-on": "crl"}
    aliases |= {"idle-cpu": "idle", "memory": "startup", "latency-lint-on": "latency"}
    aliases |= {"ocsp": "serve", "ocsp-p99": "serve", "crl-http": "serve"}
    aliases |= {"serve-idle-cpu": "serve", "serve-memory": "serve"}
    chosen: list[str] = []
    for item in (w.strip() for arg in only for w in arg.split(",")):
        if not item:
            continue
        item = aliases.get(item, item)
        # a workload's own name is that one (folder-burst-ec-lint-off is not also
        # folder-burst-ec-lint-off-100k); otherwise every workload it begins
        matches = [item] if item in WORKLOADS else [w for w in WORKLOADS if w.startswith(item)]
        if not matches:
            raise SystemExit(
                f"bench/run: unknown workload {item!r}; choose from: {', '.join(WORKLOADS)}"
            )
        chosen += [m for m in matches if m not in chosen]
    return [w for w in WORKLOADS if w in chosen]


def select_tools(tools: str | None) -> tuple[str, ...]:
    known = [c for c, _ in COLUMNS]
    if not tools:
        return tuple(known)
    chosen = tuple(t.strip() for t in tools.split(",") if t.strip())
    bad = [t for t in chosen if t not in known]
    if bad:
        raise SystemExit(f"bench/run: unknown tool {bad[0]!r}; choose from: {', '.join(known)}")
    return chosen


def install_peers(tools: tuple[str, ...]) -> None:
    """apt-get the peers that are missing (Debian packages easy-rsa, golang-cfssl)."""
    want = set()
    have = peers.available()
    if "easy-rsa" in tools and not have["easy-rsa"]:
        want.add(peers.DEB_PEERS["easy-rsa"])
    if any(t.startswith("cfssl") for t in tools) and not have["cfssl"]:
        want.add(peers.DEB_PEERS["cfssl"])
    if any(t.startswith("openssl") for t in tools) and not have["openssl"]:
        want.add(peers.DEB_PEERS["openssl"])
    if not want:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        log(f"peers not installed and cannot install them here: {', '.join(sorted(want))}")
        return
    log(f"installing Debian packages: {', '.join(sorted(want))}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, capture_output=True)
    res = subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *sorted(want)],
        env=env,
        check=False,
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        log(f"apt-get install failed: {res.stderr.strip()[-300:]}")
    peers.refresh_paths()


def _version(cmd: list[str]) -> str:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
    except OSError:
        return "not installed"
    text = (res.stdout + res.stderr).strip()
    return text.splitlines()[0] if text else "?"


def machine() -> dict[str, Any]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import cryptography

    deb = {}
    for pkg in ("easy-rsa", "golang-cfssl"):
        deb[pkg] = _version(["dpkg-query", "-W", "-f", "${Version}", pkg])
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cryptography": cryptography.__version__,
        "openssl": _version([peers.OPENSSL, "version"]),
        "easy-rsa": deb["easy-rsa"],
        "cfssl": deb["golang-cfssl"],
        "filesystem": _version(["stat", "-f", "-c", "%T", str(BENCH)]),
        "ext4_journal": ext4_journal(BENCH),
        "loadavg_start": os.getloadavg(),
    }


def ext4_journal(path: Path) -> bool | None:
    """Whether `path` is on ext4 with a journal (None: not ext4, or not known).

    Without one, ext4 skips inodes freed in the last 60 s (360 s while their inode
    table block is dirty) when it allocates a new one (fs/ext4/ialloc.c,
    recently_deleted): creating a file soon after many were deleted scans past all of
    them, 100-400 us of system time per file instead of ~10 us on the VM of
    docs/performance.md. A run right after another (which deletes its work folder at
    its end) measures that, not certdrop.
    """
    best = ("", "", "")
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            dev, mnt, fstype = line.split()[:3]
            inside = str(path).startswith(mnt.rstrip("/") + "/") or str(path) == mnt
            if inside and len(mnt) >= len(best[1]):
                best = (dev, mnt, fstype)
    except (OSError, ValueError):
        return None
    if best[2] != "ext4" or not best[0].startswith("/dev/"):
        return None
    name = Path(best[0]).resolve().name
    return any(Path("/proc/fs/jbd2").glob(f"{name}-*"))


# when a run last deleted its work folder (epoch seconds): one marker for the machine, as
# every checkout's runs share the filesystem
CLEANED = Path(tempfile.gettempdir()) / "certdrop-bench.cleaned"
SETTLE_SECONDS = 75.0


def settle_after_cleanup(log: Callable[[str], None]) -> None:
    """Wait until the last run's cleanup is SETTLE_SECONDS old (see `ext4_journal`):
    the first rows would otherwise measure the filesystem walking past its inodes."""
    try:
        ago = time.time() - float(CLEANED.read_text())
    except (OSError, ValueError):
        return
    if 0 <= ago < SETTLE_SECONDS:
        wait = SETTLE_SECONDS - ago
        log(
            f"waiting {wait:.0f} s: the last run deleted its work folder {ago:.0f} s ago, and "
            "ext4 without a journal skips the inodes it freed for a minute (creating files "
            "costs 10-40x more meanwhile)"
        )
        time.sleep(wait)


# creating a file costs ~7-20 us of CPU on the VM of docs/performance.md; many times that
# while ext4 (without a journal) walks past recently freed inodes
CREATE_OK_US = 40.0
CREATE_PROBE_FILES = 2000
CREATE_WAIT_MAX = 420.0
CREATE_PROBE_PAUSE = 10.0  # between probes: each leaves files for the run's cleanup to delete


def settle_file_creation(folder: Path, log: Callable[[str], None]) -> dict[str, float]:
    """Wait (up to CREATE_WAIT_MAX) until creating files in a new folder in `folder`
    costs what it normally does, probing with a new folder of empty files each time
    (they stay there).

    SETTLE_SECONDS after the last run's cleanup is not always enough: an inode freed
    less than 60 s ago is skipped, and 360 s while its inode table block is dirty, which
    the next files created beside it make it again (fs/ext4/ialloc.c, recently_deleted).
    Measured 85-90 s after a run's cleanup on the VM of docs/performance.md: 260-475 us
    per file; and 14 us some seconds later. Any other mass deletion on the filesystem
    (another tool's, a test suite's) does the same. The probe is what the daemons do: a
    new folder (ext4 puts it in its parent's block group when it can, where the last run's
    folders were) and thousands of files in it; 200 files in one folder passed while the
    next run's spool folders still cost 100-370 us a file (round seven).
    """
    t0 = time.monotonic()
    samples: list[float] = []
    while True:
        probe = folder / f".create-probe-{len(samples)}"
        probe.mkdir()
        c0 = time.process_time()
        for i in range(CREATE_PROBE_FILES):
            fd = os.open(probe / f"{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
        us = (time.process_time() - c0) / CREATE_PROBE_FILES * 1e6
        samples.append(round(us, 1))
        waited = time.monotonic() - t0
        if us <= CREATE_OK_US or waited >= CREATE_WAIT_MAX:
            break
        if len(samples) == 1:
            log(
                f"waiting: creating a file costs {us:.0f} us of CPU here (normally under "
                f"{CREATE_OK_US:.0f} us): the filesystem is walking past recently freed inodes"
            )
        time.sleep(CREATE_PROBE_PAUSE)
    if samples[-1] > CREATE_OK_US:
        log(
            f"creating a file still costs {samples[-1]:.0f} us after {waited:.0f} s; measuring anyway"
        )
    elif len(samples) > 1:
        log(f"creating a file costs {samples[-1]:.0f} us now, after {waited:.0f} s")
    return {"create_us": samples[-1], "create_wait_seconds": round(waited, 1)}


def _terminate(signum: int, _frame: object) -> None:
    # unwind like Ctrl-C: the daemons and servers started so far are stopped on the way out
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    ap = argparse.ArgumentParser(
        prog="bench/run", description="Benchmark certdrop against its peers in one run."
    )
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke run (~1 min)")
    ap.add_argument("--n", type=int, help="CSRs per folder burst (default 5000; quick 100)")
    ap.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="WORKLOAD",
        help=f"run only these workloads (comma-separated, prefixes work): {', '.join(WORKLOADS)}",
    )
    ap.add_argument(
        "--tools", help="only these columns (comma-separated): " + ",".join(c for c, _ in COLUMNS)
    )
    ap.add_argument("--peer-seconds", type=float, help="time cap per peer and workload")
    ap.add_argument("--latency-drops", type=int, help="single drops timed (default 200)")
    ap.add_argument(
        "--latency-gap", type=float, help="seconds between single drops (default 0: back to back)"
    )
    ap.add_argument("--p12-n", type=int, help="enrollments in the p12 burst (default 1000)")
    ap.add_argument("--crl-n", type=int, help="revoked entries for the CRL (default 100000)")
    ap.add_argument("--index-n", type=int, help="certificates in the index at start-up (100000)")
    ap.add_argument(
        "--big-index-n", type=int, help="certificates in the index-1m rows' index (1000000)"
    )
    ap.add_argument("--outbox-n", type=int, help="files in the outbox before its burst (100000)")
    ap.add_argument("--idle-seconds", type=float, help="idle CPU window (default 5)")
    ap.add_argument(
        "--serve-seconds",
        type=float,
        help="each certdrop serve and openssl ocsp measurement (default 3)",
    )
    ap.add_argument(
        "--serve-rounds", type=int, help="certdrop serve and openssl ocsp in turns (default 5)"
    )
    ap.add_argument(
        "--bursts",
        type=int,
        help="times each certdrop folder burst runs, the median shown (default 3; quick 1)",
    )
    ap.add_argument(
        "--drop",
        choices=["outside", "inside", "copy"],
        default="outside",
        help="how requests are dropped: written to a staging folder beside the spool and "
        "renamed into inbox/ (outside, default); written as hidden .NAME.req in inbox/ and "
        "renamed to NAME.req (inside); or written straight into inbox/ like cp (copy)",
    )
    ap.add_argument("--json", type=Path, help="write all results (with details) to this file")
    ap.add_argument("--markdown", type=Path, help="write the table as Markdown to this file")
    ap.add_argument("--no-install", action="store_true", help="do not apt-get missing peers")
    ap.add_argument("--keep", action="store_true", help="keep the work folder under bench/out/")
    args = ap.parse_args(argv)

    params = Params.quick() if args.quick else Params()
    for opt in (
        "n",
        "peer_seconds",
        "latency_drops",
        "p12_n",
        "crl_n",
        "index_n",
        "big_index_n",
        "outbox_n",
        "idle_seconds",
        "bursts",
        "serve_seconds",
        "serve_rounds",
    ):
        value = getattr(args, opt)
        if value is not None:
            if value <= 0:
                raise SystemExit(f"bench/run: --{opt.replace('_', '-')} must be positive")
            setattr(params, opt, value)
    if args.latency_gap is not None:
        params.latency_gap = max(0.0, args.latency_gap)
    params.drop = args.drop
    params.tools = select_tools(args.tools)
    params.keep = args.keep
    workloads = select_workloads(args.only)

    if not args.no_install:
        install_peers(params.tools)
    info = machine()
    log(f"machine: {info['cpu']}, {info['cores']} cores, load {info['loadavg_start']}")
    # only bursts of many new files are slowed by recently freed inodes: the serve rows
    # (200 certificates, then HTTP) need not wait for them
    settle = info["ext4_journal"] is False and not args.quick
    settle = settle and any(w not in FEW_FILES for w in workloads)
    if settle:
        settle_after_cleanup(log)
    log(f"workloads: {', '.join(workloads)}; tools: {', '.join(params.tools)}")

    csrs.OUT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=csrs.OUT))
    rows: list[Row] = []
    bench: Bench | None = None
    try:
        if settle:
            info.update(settle_file_creation(work, log))
        bench = Bench(params, work, log)
        for w in workloads:
            log(f"{w} ...")
            t0 = time.perf_counter()
            rows += run_workload(bench, w)
            log(f"{w} done in {time.perf_counter() - t0:.1f} s")
    finally:
        if bench is not None:
            bench.close()  # the PostgreSQL server, when a workload started one
        if params.keep:
            log(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
            if not args.quick:  # a smoke run deletes little
                os.sync()  # the freed inodes' table blocks written: "recent" ends in 60 s
                with contextlib.suppress(OSError):
                    CLEANED.write_text(f"{time.time():.0f}\n")
    info["loadavg_end"] = os.getloadavg()
    info["bench_seconds"] = round(time.perf_counter() - T_START, 1)

    print()
    print(
        f"certdrop bench — {info['date']} — {info['cpu']}, {info['cores']} cores, "
        f"load {info['loadavg_start'][0]:.2f} -> {info['loadavg_end'][0]:.2f}, "
        f"drop mode {params.drop}, {info['bench_seconds']:.0f} s"
    )
    print()
    print(render_text(rows), end="")
    if args.markdown:
        args.markdown.write_text(render_markdown(rows))
    if args.json:
        doc = {
            "machine": info,
            "params": {k: v for k, v in vars(params).items()},
            "workloads": workloads,
            "rows": [r.as_json() for r in rows],
        }
        args.json.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
