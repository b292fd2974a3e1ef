"""Where does certdrop's time per request go? cProfile over the pipeline, in-process.

    .venv/bin/python bench/profile_pipeline.py --n 500 [--lint] [--key-type rsa-2048]

Builds the same Runtime the daemon builds (temp config from bench/run, the signing
pool when this certdrop has one), drops n CSRs into inbox/ and hands them to the
pipeline in this thread under cProfile, in batches of the daemon's BATCH_SIZE when the
pipeline has `handle_batch` (else one by one with `handle_inbox_file`): no watchdog,
no worker thread, the pipeline's own cost. Prints the per-request wall time and the
functions with the most cumulative and own time (in this process: work done in
signing-pool processes shows up as waiting).
"""

from __future__ import annotations

import argparse
import cProfile
import inspect
import io
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import csrs
from cd_daemon import CertdropDaemon

from certdrop.clock import SystemClock
from certdrop.config import load_settings
from certdrop.service import daemon as service
from certdrop.service.daemon import Runtime


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/profile_pipeline.py", description=__doc__)
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
        kwargs: dict[str, Any] = {}
        if "signing_pool" in inspect.signature(Runtime.build).parameters:
            kwargs["signing_pool"] = not args.no_pool
        rt = Runtime.build(settings, SystemClock(), **kwargs)
        batch = int(getattr(service, "BATCH_SIZE", 1))
        batched = hasattr(rt.pipeline, "handle_batch") and batch > 1
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
        if batched:
            for i in range(0, len(paths), batch):
                results += rt.pipeline.handle_batch([(p, profile) for p in paths[i : i + batch]])
        else:
            results = [rt.pipeline.handle_inbox_file(p, profile) for p in paths]
        prof.disable()
        for res in results:
            if res.outcome.value != "issued":
                raise SystemExit(f"{res.name}: {res.outcome.value} {res.reason}")
        wall = time.perf_counter() - t0
        rt.close()
        how = f"batches of {batch}" if batched else "one by one"
        if kwargs.get("signing_pool"):
            how += ", signing pool"
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
