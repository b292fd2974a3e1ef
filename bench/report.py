"""Results of a bench run and the one table it prints (text and Markdown)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# the columns, in order: (id, heading)
COLUMNS: list[tuple[str, str]] = [
    ("certdrop", "certdrop"),
    ("openssl-x509", "openssl x509 -req"),
    ("openssl-ca", "openssl ca -batch"),
    ("easy-rsa", "easy-rsa"),
    ("cfssl-sign", "cfssl sign"),
    ("cfssl-serve-1", "cfssl serve x1"),
    ("cfssl-serve-2", "cfssl serve x2"),
    ("ceiling", "cryptography ceiling"),
    ("openssl-ocsp", "openssl ocsp -port"),
    ("http-ceiling", "aiohttp ceiling"),
]
PEERS = [c for c, _ in COLUMNS if c != "certdrop"]

UNITS = {
    "rate": ("/s", True),  # suffix, higher is better
    "seconds": (" s", False),
    "ms": (" ms", False),
    "mb": (" MB", False),
    "cpu": ("% CPU", False),
}


@dataclass
class Cell:
    value: float | None = None  # None: not measured (see error) or not applicable
    note: str = ""  # shown after the value, e.g. "n=120"
    error: str = ""  # why there is no value

    def as_json(self) -> dict[str, Any]:
        return {"value": self.value, "note": self.note, "error": self.error}


@dataclass
class Row:
    id: str
    label: str
    unit: str  # a key of UNITS
    cells: dict[str, Cell] = field(default_factory=dict)
    target: str = ""  # human-readable target, e.g. ">= 2,000/s"
    target_value: float | None = None  # the bound the certdrop value is compared with
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def higher_is_better(self) -> bool:
        return UNITS[self.unit][1]

    def value(self, column: str) -> float | None:
        cell = self.cells.get(column)
        return cell.value if cell is not None else None

    def advantage(self, column: str) -> float | None:
        """How many times better certdrop is than `column` (> 1: certdrop ahead)."""
        mine, theirs = self.value("certdrop"), self.value(column)
        if mine is None or theirs is None or mine <= 0 or theirs <= 0:
            return None
        return mine / theirs if self.higher_is_better else theirs / mine

    def target_met(self) -> bool | None:
        mine = self.value("certdrop")
        if mine is None or self.target_value is None:
            return None
        return mine >= self.target_value if self.higher_is_better else mine <= self.target_value

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "label": self.label,
            "unit": self.unit,
            "cells": {k: v.as_json() for k, v in self.cells.items()},
            "advantage": {c: self.advantage(c) for c in PEERS if self.advantage(c) is not None},
            "target": self.target,
            "target_value": self.target_value,
            "target_met": self.target_met(),
            "details": self.details,
        }


def fmt_value(value: float, unit: str) -> str:
    suffix = UNITS[unit][0]
    if unit == "rate":
        return f"{value:,.0f}{suffix}" if value >= 10 else f"{value:.1f}{suffix}"
    if unit == "seconds":
        return f"{value:.2f}{suffix}" if value < 10 else f"{value:.1f}{suffix}"
    if unit == "ms":
        return f"{value:.1f}{suffix}"
    if unit == "mb":
        return f"{value:.0f}{suffix}"
    if unit == "cpu":
        return f"{value:.2f}{suffix}"
    return f"{value:g}{suffix}"


def cell_text(row: Row, column: str) -> str:
    cell = row.cells.get(column)
    if cell is None:
        return "-"
    if cell.value is None:
        return "ERR" if cell.error else "-"
    text = fmt_value(cell.value, row.unit)
    if column != "certdrop":
        adv = row.advantage(column)
        if adv is not None:
            text += f" (x{adv:.2f})" if adv < 100 else f" (x{adv:.0f})"
    return text


def target_text(row: Row) -> str:
    if not row.target:
        return ""
    met = row.target_met()
    verdict = "" if met is None else (" met" if met else " MISSED")
    return f"{row.target}{verdict}"


def _grid(rows: list[Row]) -> list[list[str]]:
    head = ["workload"] + [h for _, h in COLUMNS] + ["target"]
    grid = [head]
    for row in rows:
        grid.append([row.label] + [cell_text(row, c) for c, _ in COLUMNS] + [target_text(row)])
    return grid


def footnotes(rows: list[Row]) -> list[str]:
    notes: list[str] = []
    for row in rows:
        for column, heading in COLUMNS:
            cell = row.cells.get(column)
            if cell is None:
                continue
            if cell.error:
                notes.append(f"{row.label} / {heading}: {cell.error}")
            elif cell.note:
                notes.append(f"{row.label} / {heading}: {cell.note}")
    return notes


LEGEND = (
    "(xN) = certdrop's advantage over that tool: certdrop/peer for rates, peer/certdrop for "
    "times, latency, memory and CPU; > 1 means certdrop is ahead. '-' = the tool cannot do "
    "this workload (or is not installed), ERR = it failed (see notes)."
)


def render_text(rows: list[Row]) -> str:
    grid = _grid(rows)
    widths = [max(len(r[i]) for r in grid) for i in range(len(grid[0]))]
    lines = []
    for n, r in enumerate(grid):
        lines.append(
            "  ".join(
                (c.ljust(w) if i == 0 else c.rjust(w))
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            ).rstrip()
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    out = "\n".join(lines) + "\n\n" + LEGEND + "\n"
    notes = footnotes(rows)
    if notes:
        out += "\nNotes:\n" + "\n".join(f"  - {n}" for n in notes) + "\n"
    return out


def render_markdown(rows: list[Row]) -> str:
    grid = _grid(rows)
    lines = ["| " + " | ".join(grid[0]) + " |"]
    lines.append("|" + "|".join(["---"] + ["--:"] * (len(grid[0]) - 2) + ["---"]) + "|")
    for r in grid[1:]:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |")
    out = "\n".join(lines) + "\n\n" + LEGEND + "\n"
    notes = footnotes(rows)
    if notes:
        out += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    return out
