"""The `certdrop` command line (the console script is certdrop.cli:main)."""

from .app import cli, main

__all__ = ["cli", "main"]
