"""What the CLI prints: plain lines, tables (plain, or a small `rich` one) and `label: value` fields; secrets redacted
from error lines."""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
from collections.abc import Iterable, Sequence
from typing import Any


class Secrets:
    """Values that must never reach the terminal (the API token, a provider's secret key, --env values)."""

    def __init__(self) -> None:
        self.values: set[str] = set()

    def add(self, value: str | None) -> None:
        if value and len(value) >= 4:
            self.values.add(value)

    def redact(self, text: str) -> str:
        for value in sorted(self.values, key=len, reverse=True):
            text = text.replace(value, "<redacted>")
        return text


secrets = Secrets()  # one set per invocation: main() replaces it


def reset_secrets() -> Secrets:
    global secrets
    secrets = Secrets()
    return secrets


def out(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def err(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def print_json(value: Any) -> None:
    out(json.dumps(value, indent=2, ensure_ascii=False))


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max([len(header)] + [len(row[i]) for row in cells]) for i, header in enumerate(headers)]
    for row in [list(headers), *cells]:
        out("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def rich_table(title: str, headers: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """A small `rich` table on stdout under a `title:` line: cells are plain text (never markup), colour only on a
    terminal; off a terminal it is as wide as its cells (never wrapped to 80 columns), with no trailing spaces."""
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    view = Table(box=box.SIMPLE_HEAD, show_edge=False, header_style="bold", pad_edge=False)
    for header in headers:
        view.add_column(header, no_wrap=True)
    for row in rows:
        view.add_row(*(Text(dash(cell)) for cell in row))
    terminal = sys.stdout.isatty()
    console = Console(file=sys.stdout, highlight=False, width=None if terminal else 1000)
    out(f"{title}:")
    if terminal:
        console.print(view)
        return
    with console.capture() as captured:
        console.print(view)
    for line in captured.get().splitlines():
        out(line.rstrip())


def fields(pairs: Sequence[tuple[str, Any]]) -> None:
    width = max(len(label) for label, _ in pairs)
    for label, value in pairs:
        out(f"{label + ':':<{width + 1}}  {dash(value)}")


def dash(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def timestamp(value: Any) -> str:
    if not isinstance(value, str) or not value:
        return "-"
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        return value
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S") + ("Z" if moment.tzinfo is not None else "")


def price(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:.4f}"
    return "n/a"


def number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def duration(seconds: float) -> str:
    """`45s`, `12m 05s`, `3h 04m`, `2d 03h`."""
    whole = max(0, int(seconds))
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def now() -> dt.datetime:
    """The clock cost estimates use (tests replace it)."""
    return dt.datetime.now(dt.UTC)
