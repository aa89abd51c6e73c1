"""Benchmark results: one row per figure (measured vs target, pass/miss), the printed table and
bench/results/latest.json (date, machine, figures, details)."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Figure:
    """One measured figure. `target` is (comparison, bound): ("<=", 1.3) or (">=", 20.0); None = reported only."""

    section: str
    name: str
    value: float | None
    unit: str
    target: tuple[str, float] | None = None
    note: str = ""

    @property
    def verdict(self) -> str:
        if self.target is None:
            return ""
        if self.value is None:
            return "n/a"
        comparison, bound = self.target
        ok = self.value <= bound if comparison == "<=" else self.value >= bound
        return "pass" if ok else "MISS"


def format_value(value: float | None, unit: str) -> str:
    """A figure for people: dollars to 4-5 significant places, ratios with ×, the rest by magnitude."""
    if value is None:
        return "n/a"
    if unit == "$":
        return f"${value:.5f}" if value < 0.01 else f"${value:.4f}"
    if unit == "×":
        return f"{value:.2f}×"
    if unit in {"", "calls", "ops", "count"}:
        number = f"{value:.0f}" if float(value).is_integer() else f"{value:.2f}"
        return f"{number} {unit}".strip()
    if abs(value) >= 100:
        return f"{value:.0f} {unit}"
    if abs(value) >= 10:
        return f"{value:.1f} {unit}"
    return f"{value:.2f} {unit}" if abs(value) >= 1 else f"{value:.3f} {unit}"


def format_target(target: tuple[str, float] | None, unit: str) -> str:
    if target is None:
        return ""
    comparison, bound = target
    return f"{'≤' if comparison == '<=' else '≥'} {format_value(bound, unit)}"


def table(figures: list[Figure]) -> str:
    """The figures as an aligned plain-text table, grouped by section."""
    rows = [("", "figure", "measured", "target", "")]
    for figure in figures:
        rows.append(
            (
                figure.section,
                figure.name,
                format_value(figure.value, figure.unit),
                format_target(figure.target, figure.unit),
                figure.verdict,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines: list[str] = []
    previous = None
    for index, row in enumerate(rows):
        section = row[0] if row[0] != previous else ""
        previous = row[0]
        cells = (section, row[1], row[2].rjust(widths[2]), row[3], row[4])
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip())
        if index == 0:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines)


def notes(figures: list[Figure]) -> str:
    """The figures' notes, one line each, numbered by section."""
    return "\n".join(f"  [{f.section.split()[0]}] {f.name.lstrip('… ')}: {f.note}" for f in figures if f.note)


def machine() -> dict[str, Any]:
    """What this ran on (the figures are only comparable within one run on one machine)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],  # noqa: S607
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout.strip()
    except OSError:
        commit = ""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "load_average": [round(x, 2) for x in load],
        "commit": commit,
    }


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        return None
    return None


@dataclass
class Results:
    started: dt.datetime
    options: dict[str, Any]
    figures: list[Figure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def document(self, wall_seconds: float) -> dict[str, Any]:
        return {
            "date": self.started.isoformat(timespec="seconds"),
            "wall_seconds": round(wall_seconds, 1),
            "options": self.options,
            "machine": machine(),
            "figures": [asdict(f) | {"verdict": f.verdict} for f in self.figures],
            "details": self.details,
            "errors": self.errors,
        }

    def write(self, path: Path, wall_seconds: float) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(self.document(wall_seconds), indent=2, default=str) + "\n")
        temporary.replace(path)
