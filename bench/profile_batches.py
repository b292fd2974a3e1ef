"""Where does certdrop's time per request go? cProfile over the issue layer, in-process.

    .venv/bin/python bench/profile_batches.py --n 500 [--lint] [--key-type rsa-2048]

Builds the same Runtime the daemon builds (temp config from bench/run, the signing
workers unless --no-pool), drops n CSRs into inbox/ and hands them to the issue layer's
batches in this thread under cProfile, in batches of the daemon's BATCH_SIZE: no
watchdog, no worker thread, the batches' own cost. Prints the per-request wall time and the
functions with the most cumulative and own time (in this process: work done in
signing-pool processes shows up as waiting).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import csrs
from cd_daemon import CertdropDaemon

from certdrop.clock import SystemClock
from certdrop.config import load_settings
from certdrop.service.runtime import Runtime
from certdrop.service.worker import BATCH_SIZE


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/profile_batches.py", description=__doc__)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--lint", action="store_true", help="lint before signing (default off)")
    ap.add_argument("--key-type", default="ec-p256", choices=["ec-p256", "rsa-2048"])
    ap.add_argument("--no-pool", action="store_true", help="sign in this process only")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="profile-", dir=csrs.OUT))
    try:
        d = CertdropDaemon(root, key_type=args.key_type, lint=args.lint)
        d.init()
        settings = load_settings(d.config)
        rt = Runtime.build(settings, SystemClock(), signing_pool=not args.no_pool)
        batch = BATCH_SIZE
        files = csrs.pool(args.n)
        paths = []
        for name, data in files:
            path = d.inbox / f"{name}.req"
            path.write_bytes(data)
            paths.append(path)
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        profile = settings.policy.default_profile
        results = []
        for i in range(0, len(paths), batch):
            results += rt.batches.handle_batch([(p, profile) for p in paths[i : i + batch]])
        prof.disable()
        for res in results:
            if res.outcome.value != "issued":
                raise SystemExit(f"{res.name}: {res.outcome.value} {res.reason}")
        wall = time.perf_counter() - t0
        rt.close()
        how = f"batches of {batch}" + ("" if args.no_pool else ", worker processes")
        print(
            f"{args.n} requests ({args.key_type}, lint {'on' if args.lint else 'off'}, {how}) in "
            f"{wall:.2f} s under cProfile: {wall / args.n * 1000:.2f} ms each, "
            f"{args.n / wall:,.0f}/s (profiling adds overhead; compare shares, not totals)"
        )
        for key in ("cumulative", "tottime"):
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).strip_dirs().sort_stats(key).print_stats(args.top)
            print(f"\n--- by {key} ---")
            print("\n".join(line for line in buf.getvalue().splitlines() if line.strip())[:20000])
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
