"""Real mounts for tests: a tmpfs mounted on a folder, unmounted afterwards (root only)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def tmpfs_mounted(folder: Path, size: str = "64m") -> Iterator[Path]:
    """Mount a fresh tmpfs on `folder` (made if missing); skip the test when not root or
    when this machine refuses the mount."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield folder
    finally:
        done = subprocess.run(["umount", str(folder)], capture_output=True, text=True)
        if done.returncode != 0:  # still busy: detach it anyway, and say so
            subprocess.run(["umount", "-l", str(folder)], check=True)
            raise AssertionError(f"{folder} was still in use: {done.stderr.strip()}")
