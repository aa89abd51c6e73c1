"""Spot or on-demand (pure): which EC2 markets a job's `use_spot` tries, in what order, and which price it records.

`use_spot: true` is spot only, `false` on-demand only, `"auto"` spot first and on-demand when spot is unavailable
(README "Spot and use_spot: auto"). The catalog holds on-demand list prices only, so a job on spot records no
hourly price; without a MaxPrice, AWS's maximum spot price is the on-demand price, which bounds what it costs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

AUTO: Literal["auto"] = "auto"
UseSpot = bool | Literal["auto"]


class Market(StrEnum):
    SPOT = "spot"
    ON_DEMAND = "on-demand"


def markets_for(use_spot: UseSpot) -> tuple[Market, ...]:
    """The markets to try, in order: auto prefers spot (cheaper) and falls back to on-demand."""
    if use_spot == AUTO:
        return (Market.SPOT, Market.ON_DEMAND)
    return (Market.SPOT,) if use_spot is True else (Market.ON_DEMAND,)


def market_of(instance: Mapping[str, Any]) -> Market:
    """The market of an EC2 instance description: `InstanceLifecycle` is "spot" for spot, absent for on-demand."""
    return Market.SPOT if instance.get("InstanceLifecycle") == "spot" else Market.ON_DEMAND


def hourly_price(market: Market | None, on_demand_price: float | None) -> float | None:
    """The USD/h a job records for `market` (None: not known yet): the on-demand list price, or None on spot and
    for a job that may still run on spot, since no spot price is recorded (never a guess)."""
    return on_demand_price if market == Market.ON_DEMAND else None


@dataclass(frozen=True)
class Pricing:
    """The price fields of a new job."""

    hourly_price: float | None  # known only when the market is: use_spot false
    on_demand_price: float | None
    notes: tuple[str, ...]


def submission_pricing(use_spot: UseSpot, instance_type: str, on_demand_price: float | None) -> Pricing:
    """The price fields and note of a new job: the market is only certain for `use_spot: false`."""
    markets = markets_for(use_spot)
    notes: tuple[str, ...] = ()
    if Market.SPOT in markets:
        bound = (
            f"; it never pays more than the on-demand price (AWS's default spot maximum), {on_demand_price:g} "
            f"USD/h for {instance_type} by the catalog"
            if on_demand_price is not None
            else ""
        )
        notes = (
            "no spot price is recorded (the catalog has on-demand list prices only): on spot the job shows no "
            f"hourly_price or cost_estimate{bound}",
        )
    market = markets[0] if len(markets) == 1 else None
    return Pricing(hourly_price(market, on_demand_price), on_demand_price, notes)
