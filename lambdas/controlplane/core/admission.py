"""Admission: per-team limits that cannot be overspent (docs/budgets.md).

A job is admitted only if its *worst case* fits every limit of its team: its hourly price (on-demand, also for spot:
the most a spot hour can cost) × (max_runtime_minutes + the shutdown grace) for every attempt it may make, added to
what the team has spent and reserved this month, stays within the monthly budget; and one more instance (and its
GPUs) stays within the concurrency limits. The reservation is replaced by the job's measured cost when it ends, so
the month's spend can never pass the budget even if every admitted job runs to its deadline.

A job that does not fit now but could later waits QUEUED, in FIFO order within its team (a higher `priority` goes
first); a job that can never fit (its own worst case is over the whole budget or a per-job cap) is refused at submit.

Pure: the ledger is a value, the decision a function of it; adapters/admission.py stores it with conditional writes.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field, replace
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from controlplane.core.errors import DomainError

CENT = Decimal("0.000001")  # money is kept in Decimal micro-dollars: DynamoDB numbers, sums that match exactly
DEFAULT_MAX_QUEUE_MINUTES = 24 * 60
MAX_QUEUE_LIMIT_MINUTES = 7 * 24 * 60
MAX_QUEUED_PER_TEAM = 1000  # the queue lives in one DynamoDB item (400 KB): bounded
# Claims and queue entries together: the ledger is one item (DynamoDB's 400 KB limit; a claim is ~150 bytes)
MAX_LEDGER_ENTRIES = 2000


class OverLimit(DomainError):
    """The job can never be admitted: its own worst case exceeds a limit of its team (which one, by how much)."""

    code = "OVER_LIMIT"


class QueueFull(DomainError):
    """The team's queue holds MAX_QUEUED_PER_TEAM jobs already, or its ledger MAX_LEDGER_ENTRIES."""

    code = "QUEUE_FULL"


def money(value: float | Decimal | int | None) -> Decimal:
    """A dollar amount as the ledger keeps it (micro-dollars, rounded up: a reservation is never short)."""
    if value is None:
        return Decimal(0)
    return Decimal(str(value)).quantize(CENT, rounding=ROUND_CEILING)


def month_of(instant: dt.datetime) -> str:
    """The UTC month a job is booked to: the month it was submitted in (`2026-12`)."""
    return instant.astimezone(dt.UTC).strftime("%Y-%m")


GPU_TYPE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9-]{0,31}$"
GpuType = Annotated[str, StringConstraints(pattern=GPU_TYPE_PATTERN)]
MAX_BUDGET_USD = 100_000_000.0  # bounds that keep every figure exact in micro-dollars
MAX_HOURLY_PRICE_USD = 10_000.0
MAX_COUNT = 1_000_000


PROVIDER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"  # the API's provider id rule
ProviderId = Annotated[str, StringConstraints(pattern=PROVIDER_ID_PATTERN)]


class Caps(BaseModel):
    """Limits of one scope: the whole team, or one of its providers (`Limits.providers`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    monthly_budget_usd: float | None = Field(
        default=None,
        ge=0,
        le=MAX_BUDGET_USD,
        description="what the jobs may cost per UTC month (worst cases reserved)",
    )
    max_concurrent_instances: int | None = Field(default=None, ge=0, le=MAX_COUNT, description="admitted jobs at once")
    max_concurrent_gpus: int | None = Field(
        default=None, ge=0, le=MAX_COUNT, description="GPUs of admitted jobs at once, any type"
    )
    max_gpus_by_type: dict[GpuType, Annotated[int, Field(ge=0, le=MAX_COUNT)]] = Field(
        default_factory=dict,
        max_length=64,
        description="GPUs of admitted jobs at once, per GPU type (e.g. {A100: 8})",
        json_schema_extra={"additionalProperties": False},  # a key must be a GPU type name
    )
    max_hourly_price_usd: float | None = Field(
        default=None, ge=0, le=MAX_HOURLY_PRICE_USD, description="the most one job's instance may cost an hour"
    )

    @field_validator("max_gpus_by_type")
    @classmethod
    def _gpu_types(cls, value: dict[str, int]) -> dict[str, int]:
        return {name.upper(): count for name, count in value.items()}

    @property
    def limited(self) -> bool:
        return any(
            value is not None
            for value in (
                self.monthly_budget_usd,
                self.max_concurrent_instances,
                self.max_concurrent_gpus,
                self.max_hourly_price_usd,
            )
        ) or bool(self.max_gpus_by_type)


class Limits(Caps):
    """A team's limits, set by an admin. Every field is optional; none set means no limit (the default). The same
    caps may be set per provider (`providers`): a job must fit both its team's and its provider's."""

    max_queue_minutes: int = Field(
        default=DEFAULT_MAX_QUEUE_MINUTES,
        ge=1,
        le=MAX_QUEUE_LIMIT_MINUTES,
        description="how long a job may wait QUEUED before it fails (QUEUE_TIMEOUT); a job may ask for less",
    )
    providers: dict[ProviderId, Caps] = Field(
        default_factory=dict,
        max_length=100,
        description="limits of the jobs on one provider (by provider id), on top of the team's",
        json_schema_extra={"additionalProperties": False},
    )

    @property
    def limited(self) -> bool:
        return super().limited or any(caps.limited for caps in self.providers.values())

    def scopes(self, provider_id: str) -> list[tuple[str, Caps]]:
        """The limits a job on this provider must fit: the team's, then its provider's (if set), with their names."""
        chosen: list[tuple[str, Caps]] = [("the team's", self)]
        if provider_id in self.providers:
            chosen.append((f"provider {provider_id}'s", self.providers[provider_id]))
        return chosen


@dataclass(frozen=True)
class Claim:
    """What one admitted job holds until it ends: its month's reservation, one instance and its GPUs."""

    month: str
    reserved: Decimal
    gpus: int = 0
    gpu_type: str | None = None
    since: str = ""  # ISO-8601: when it was claimed (a claim whose job never got recorded is dropped later)
    provider_id: str = ""


@dataclass(frozen=True)
class UsageDelta:
    """What one ended job adds to its month's report (booked once, with the ledger change that ends its claim)."""

    month: str
    status: str
    cost: Decimal
    provider_id: str
    gpu_type: str | None
    gpu_hours: Decimal


@dataclass(frozen=True)
class Request:
    """A job asking to be admitted: its worst case and what it occupies while it runs."""

    job_id: str
    claim: Claim
    hourly_price: Decimal
    priority: int = 0
    queued_at: str = ""  # ISO-8601: FIFO order within a priority
    queue_deadline: str = ""  # ISO-8601: past it, the job fails QUEUE_TIMEOUT


def worst_case(hourly_price: float | None, max_runtime_minutes: int, grace_seconds: int, attempts: int) -> Decimal:
    """hourly price × (max runtime + grace) × attempts, in dollars (rounded up). Unknown price: 0 (no estimate;
    docs/budgets.md says such a job is refused by a budget)."""
    if hourly_price is None:
        return Decimal(0)
    minutes = max_runtime_minutes + math.ceil(grace_seconds / 60)
    return money(Decimal(str(hourly_price)) * Decimal(minutes) / Decimal(60) * Decimal(max(1, attempts)))


@dataclass(frozen=True)
class Ledger:
    """A team's admission state (one item, changed only by conditional writes on its version): the admitted jobs'
    claims, the queue, and per month what was reserved (claims still open) and spent (jobs that ended)."""

    version: int = 0
    holds: dict[str, Claim] = field(default_factory=dict)
    queue: dict[str, Request] = field(default_factory=dict)
    # measured cost of the ended jobs: by month ("2026-12") and by month and provider ("2026-12#prov-…")
    spent: dict[str, Decimal] = field(default_factory=dict)

    def _held(self, provider_id: str | None) -> list[Claim]:
        return [c for c in self.holds.values() if provider_id is None or c.provider_id == provider_id]

    def reserved(self, month: str, provider_id: str | None = None) -> Decimal:
        return sum((c.reserved for c in self._held(provider_id) if c.month == month), Decimal(0))

    def spent_in(self, month: str, provider_id: str | None = None) -> Decimal:
        return self.spent.get(month if provider_id is None else f"{month}#{provider_id}", Decimal(0))

    def instances(self, provider_id: str | None = None) -> int:
        return len(self._held(provider_id))

    def gpus(self, gpu_type: str | None = None, provider_id: str | None = None) -> int:
        return sum(c.gpus for c in self._held(provider_id) if gpu_type is None or c.gpu_type == gpu_type)

    def ordered_queue(self) -> list[Request]:
        """The queue in admission order: higher priority first, then first come first served."""
        return sorted(self.queue.values(), key=lambda r: (-r.priority, r.queued_at, r.job_id))

    def admitted(self, request: Request) -> Ledger:
        queue = {k: v for k, v in self.queue.items() if k != request.job_id}
        return replace(self, holds={**self.holds, request.job_id: request.claim}, queue=queue)

    def queued(self, request: Request) -> Ledger:
        return replace(self, queue={**self.queue, request.job_id: request})

    def ended(self, job_id: str, cost: Decimal) -> Ledger:
        """The job's claim replaced by its measured cost (booked to the claim's month); a queued job leaves the
        queue."""
        holds = dict(self.holds)
        claim = holds.pop(job_id, None)
        spent = dict(self.spent)
        if claim is not None:
            keys = [claim.month] + ([f"{claim.month}#{claim.provider_id}"] if claim.provider_id else [])
            for key in keys:
                spent[key] = spent.get(key, Decimal(0)) + money(cost)
        queue = {k: v for k, v in self.queue.items() if k != job_id}
        return replace(self, holds=holds, queue=queue, spent=spent)


def _usd(value: Decimal | float, rounding: str = ROUND_CEILING) -> str:
    """Dollars and cents for a person: costs rounded up, what is left rounded down (never shown as more)."""
    return f"${Decimal(str(value)).quantize(Decimal('0.01'), rounding=rounding)}"


def never_fits(limits: Limits, request: Request) -> str | None:
    """Why this job can never be admitted under these limits (a sentence with the figures), or None."""
    for scope, caps in limits.scopes(request.claim.provider_id):
        reason = _never_fits(scope, caps, request)
        if reason is not None:
            return reason
    return None


def _never_fits(scope: str, caps: Caps, request: Request) -> str | None:
    claim = request.claim
    if caps.max_hourly_price_usd is not None and request.hourly_price > money(caps.max_hourly_price_usd):
        cap = money(caps.max_hourly_price_usd)
        return (
            f"the instance costs {_usd(request.hourly_price)}/h, over {scope} max_hourly_price_usd of "
            f"{_usd(cap)}/h by {_usd(request.hourly_price - cap)}"
        )
    if caps.monthly_budget_usd is not None:
        budget = money(caps.monthly_budget_usd)
        if claim.reserved > budget:
            return (
                f"its worst case is {_usd(claim.reserved)}, over {scope} whole monthly budget of {_usd(budget)} by "
                f"{_usd(claim.reserved - budget)}: lower max_runtime_minutes or job_recovery's restarts"
            )
        if claim.reserved == 0 and request.hourly_price == 0:
            return "no price is recorded for its instance type, so its worst case cannot be bounded by a budget"
    if caps.max_concurrent_instances is not None and caps.max_concurrent_instances < 1:
        return f"{scope} max_concurrent_instances is 0"
    if claim.gpus:
        if caps.max_concurrent_gpus is not None and claim.gpus > caps.max_concurrent_gpus:
            return f"it needs {claim.gpus} GPUs, more than {scope} max_concurrent_gpus of {caps.max_concurrent_gpus}"
        by_type = caps.max_gpus_by_type.get(claim.gpu_type or "")
        if by_type is not None and claim.gpus > by_type:
            return f"it needs {claim.gpus} {claim.gpu_type} GPUs, more than {scope} limit of {by_type} {claim.gpu_type}"
    return None


def blocked_by(limits: Limits, ledger: Ledger, request: Request) -> str | None:
    """Why the job does not fit now (the first limit it hits, with the figures), or None when it fits."""
    found = _blocking(limits, ledger, request)
    return None if found is None else found[1]


def _blocking(limits: Limits, ledger: Ledger, request: Request) -> tuple[str, str] | None:
    """(the scope whose limit the job hits: "" for the team's, else the provider's id; why), or None when it fits.
    Its provider's limits first: a job they hold cannot use a team slot that frees, so it holds only its provider's
    later jobs (next_admissible)."""
    provider_id = request.claim.provider_id
    for _scope, caps in reversed(limits.scopes(provider_id)):
        reason = _blocked_by(caps, ledger, request, None if caps is limits else provider_id)
        if reason is not None:
            return ("", reason) if caps is limits else (provider_id, f"{reason} on provider {provider_id}")
    return None


def _blocked_by(caps: Caps, ledger: Ledger, request: Request, provider_id: str | None) -> str | None:
    claim = request.claim
    instances = ledger.instances(provider_id)
    if caps.max_concurrent_instances is not None and instances + 1 > caps.max_concurrent_instances:
        return f"{instances} of {caps.max_concurrent_instances} concurrent instances in use"
    if claim.gpus and caps.max_concurrent_gpus is not None:
        used = ledger.gpus(provider_id=provider_id)
        if used + claim.gpus > caps.max_concurrent_gpus:
            return f"{used} of {caps.max_concurrent_gpus} concurrent GPUs in use; it needs {claim.gpus}"
    cap = caps.max_gpus_by_type.get(claim.gpu_type or "") if claim.gpus else None
    if cap is not None:
        used = ledger.gpus(claim.gpu_type, provider_id)
        if used + claim.gpus > cap:
            return f"{used} of {cap} concurrent {claim.gpu_type} GPUs in use; it needs {claim.gpus}"
    if caps.monthly_budget_usd is not None:
        budget = money(caps.monthly_budget_usd)
        spent, reserved = ledger.spent_in(claim.month, provider_id), ledger.reserved(claim.month, provider_id)
        if spent + reserved + claim.reserved > budget:
            left = max(Decimal(0), budget - spent - reserved)
            worst, remaining = _usd(claim.reserved), _usd(left, ROUND_FLOOR)
            return (
                f"its worst case is {worst} and {remaining} of the {claim.month} budget of {_usd(budget)} is left "
                f"({_usd(spent)} spent, {_usd(reserved)} reserved by running jobs)"
            )
    return None


@dataclass(frozen=True)
class Decision:
    admitted: bool
    reason: str | None  # why it waits (QUEUED), None when admitted


def decide(limits: Limits, ledger: Ledger, request: Request) -> tuple[Decision, Ledger]:
    """Admit the job if it fits now and no earlier job it competes with waits in the queue; else queue it."""
    ahead = [r for r in ledger.ordered_queue() if _order(r) < _order(request) and r.job_id != request.job_id]
    waiting = [r for r in ahead if _competes(limits, ledger, r, request)]
    if waiting:
        return Decision(False, f"{len(waiting)} earlier job(s) of the team are queued ahead of it"), ledger.queued(
            request
        )
    reason = blocked_by(limits, ledger, request)
    if reason is not None:
        return Decision(False, reason), ledger.queued(request)
    return Decision(True, None), ledger.admitted(request)


def _order(request: Request) -> tuple[int, str, str]:
    return (-request.priority, request.queued_at, request.job_id)


def _competes(limits: Limits, ledger: Ledger, earlier: Request, later: Request) -> bool:
    """Must `later` wait behind `earlier`? Yes, unless `earlier` waits only for its own provider's limits and
    `later` runs on another provider (then nothing `later` takes could have let `earlier` in)."""
    found = _blocking(limits, ledger, earlier)
    return found is None or found[0] == "" or found[0] == later.claim.provider_id


def next_admissible(limits: Limits, ledger: Ledger) -> Request | None:
    """The first queued job that fits now, in queue order: a job blocked by the team's limits blocks everyone behind
    it (strict order: a large job is never starved by small ones); one blocked by its provider's limits blocks only
    the later jobs on that provider."""
    held_providers: set[str] = set()
    for request in ledger.ordered_queue():
        if request.claim.provider_id in held_providers:
            continue
        found = _blocking(limits, ledger, request)
        if found is None:
            return request
        if found[0] == "":
            return None
        held_providers.add(found[0])
    return None
