"""The one place certdrop runs other programs: argument lists, no shell, a timeout."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    output: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def summary(self) -> str:
        tail = self.output.strip().splitlines()[-3:]
        return f"{' '.join(self.argv)} exited {self.returncode}" + (
            f": {' / '.join(tail)}" if tail else ""
        )


def run_command(argv: Sequence[str], timeout: float) -> CommandResult:
    """Run `argv` without a shell; never raises for a failing or missing program."""
    args = tuple(argv)
    try:
        proc = subprocess.run(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError:
        return CommandResult(args, 127, f"{args[0]}: command not found")
    except PermissionError as exc:
        return CommandResult(args, 126, f"{args[0]}: {exc.strerror}")
    except subprocess.TimeoutExpired as exc:
        out = exc.output.decode(errors="replace") if isinstance(exc.output, bytes) else ""
        return CommandResult(args, 124, f"timed out after {timeout:g}s {out}".strip())
    return CommandResult(args, proc.returncode, proc.stdout.decode(errors="replace"))
