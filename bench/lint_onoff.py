"""Throughput of the issuance pipeline with lint before sign on and off.

    .venv/bin/python bench/lint_onoff.py [N]

Runs the real pipeline in-process (claim, parse, policy, sign, index, deliver,
archive) on N EC P-256 requests in a temporary CA, once with `[policy] lint = true`
and once with `lint = false`, and prints requests per second and the lint cost per
certificate. Disk and CPU as they are on this machine; nothing is mocked.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certdrop.clock import SystemClock
from certdrop.config import load_settings
from certdrop.service import Runtime

CONFIG = """
[paths]
spool = "spool"
state = "state"

[policy]
lint = {lint}
"""


def run(n: int, lint: bool) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = root / "certdrop.toml"
        config.write_text(CONFIG.format(lint="true" if lint else "false"))
        subprocess.run(
            [sys.executable, "-m", "certdrop.cli", "--config", str(config), "init"],
            check=True,
            capture_output=True,
        )
        settings = load_settings(config)
        rt = Runtime.build(settings, SystemClock())
        key = ec.generate_private_key(ec.SECP256R1())
        inbox = settings.spool / "inbox"
        for i in range(n):
            csr = (
                x509.CertificateSigningRequestBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"bench {i}")]))
                .sign(key, hashes.SHA256())
            )
            (inbox / f"b{i}.req").write_bytes(csr.public_bytes(serialization.Encoding.PEM))
        start = time.perf_counter()
        for i in range(n):
            rt.pipeline.handle_inbox_file(inbox / f"b{i}.req", "client")
        elapsed = time.perf_counter() - start
        issued = len(os.listdir(settings.spool / "outbox"))
        rt.close()
        assert issued == n, f"only {issued} of {n} issued"
        return elapsed


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    on = run(n, lint=True)
    off = run(n, lint=False)
    print(f"{n} requests, EC P-256, in-process pipeline")
    print(f"  lint on : {n / on:7.1f} requests/s  ({on / n * 1000:.2f} ms each)")
    print(f"  lint off: {n / off:7.1f} requests/s  ({off / n * 1000:.2f} ms each)")
    print(f"  lint before sign costs {(on - off) / n * 1000:.2f} ms per certificate")


if __name__ == "__main__":
    main()
