"""Market, hourly price and cost of a job, as far as the API recorded them (never a price it did not record)."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ec2jobs.cli.output import duration, number, price
from ec2jobs.client import TERMINAL_STATUSES


def market(job: Mapping[str, Any]) -> str:
    """The market the job runs in (recorded at launch), else the one it asked for."""
    if job.get("market"):
        return str(job["market"])
    use_spot = job.get("use_spot")
    if use_spot == "auto":
        return "auto"
    return "spot" if use_spot is True else "on-demand"


def hourly(job: Mapping[str, Any]) -> str:
    """The hourly price with its market; on spot no price is recorded, only its ceiling (the on-demand price)."""
    rate, ceiling, chosen = number(job.get("hourly_price")), number(job.get("on_demand_price")), market(job)
    if rate is not None:
        return f"{price(rate)} on-demand" if chosen == "on-demand" else price(rate)
    bound = f"; at most {price(ceiling)}, the on-demand price" if ceiling is not None else ""
    if chosen == "spot":
        return f"n/a on spot (no spot price is recorded{bound})"
    if chosen == "auto":
        fallback = f" at {price(ceiling)}" if ceiling is not None else ""
        return f"n/a until launch (use_spot: auto: spot, else on-demand{fallback})"
    return "n/a (no price recorded)"


def market_detail(job: Mapping[str, Any]) -> str:
    """The detail view's market: what it runs in, saying when `use_spot: auto` chose it."""
    if job.get("use_spot") != "auto":
        return market(job)
    return f"{job['market']} (use_spot: auto)" if job.get("market") else "auto: spot, else on-demand (at launch)"


@dataclass(frozen=True)
class Cost:
    """What a job cost (terminal) or has cost so far (running), as far as the recorded data tells."""

    seconds: float | None  # billed (terminal) or since launch (running); None: nothing launched
    amount: float | None  # USD at the recorded hourly price; None: no price recorded (spot)
    ceiling: float | None  # USD at the on-demand price: what a spot job cost at most
    running: bool


def job_cost(job: Mapping[str, Any], now: dt.datetime) -> Cost:
    """The job's cost: `billed_seconds`/`cost_estimate` once it ended; while it runs, launch → now (at least
    EC2's one-minute minimum) at the recorded hourly price. Never a price the API did not record."""
    terminal = job.get("status") in TERMINAL_STATUSES
    seconds = number(job.get("billed_seconds"))
    if not terminal and seconds is None and isinstance(job.get("launched_at"), str):
        with contextlib.suppress(ValueError):
            launched = dt.datetime.fromisoformat(job["launched_at"])
            if launched.tzinfo is None:
                launched = launched.replace(tzinfo=dt.UTC)
            seconds = max(60.0, (now - launched).total_seconds())
    if seconds is None:
        return Cost(None, None, None, running=not terminal)
    rate, ceiling = number(job.get("hourly_price")), number(job.get("on_demand_price"))
    amount = number(job.get("cost_estimate")) if terminal else None
    if amount is None and rate is not None:
        amount = round(rate * seconds / 3600, 4)
    bound = round(ceiling * seconds / 3600, 4) if ceiling is not None else None
    return Cost(seconds, amount, bound, running=not terminal)


def cost_cell(cost: Cost) -> str:
    """The jobs table's COST: `0.1060`, `~0.0123` so far while running, `<=0.1060` on spot (at most), `-` none."""
    if cost.seconds is None:
        return "-"
    if cost.amount is not None:
        return ("~" if cost.running else "") + price(cost.amount)
    if cost.ceiling is not None:
        return "<=" + price(cost.ceiling)
    return "n/a"


def cost_fields(job: Mapping[str, Any], now: dt.datetime) -> list[tuple[str, Any]]:
    """The detail view's duration and cost lines (none before launch)."""
    cost = job_cost(job, now)
    if cost.seconds is None:
        return []
    if cost.running:
        pairs: list[tuple[str, Any]] = [("instance up", f"{duration(cost.seconds)} (since launch)")]
        label, about = "cost so far", "about "
    else:
        pairs = [("billed", f"{duration(cost.seconds)} (launch to end, at least a minute)")]
        label, about = "cost", ""
    if cost.amount is not None:
        rate = f" at {price(job.get('hourly_price'))} $/h" if number(job.get("hourly_price")) is not None else ""
        pairs.append((label, f"{about}${price(cost.amount)} (estimate{rate} {market(job)})"))
    elif cost.ceiling is not None:
        pairs.append((label, f"n/a on spot (no spot price is recorded); at most ${price(cost.ceiling)}"))
    else:
        pairs.append((label, "n/a (no price recorded)"))
    return pairs
