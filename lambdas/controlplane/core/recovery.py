"""Managed recovery (pure): the task spec's `job_recovery` policy and what it decides when an attempt ends.

A job makes attempts, each on its own instance. When one ends, `decide` says whether the job relaunches
(RECOVERING, then the next attempt) or ends with the attempt's outcome, counting as SkyPilot counts:
- the job's own failures (`EXIT_NONZERO`, `SETUP_FAILED`, `INPUTS_FAILED`) relaunch up to `max_restarts_on_errors`;
- exit codes in `recover_on_exit_codes` relaunch without counting against that limit (they count against
  `max_restarts`, so that no job can relaunch forever);
- losing the instance (`SPOT_INTERRUPTED`, `INSTANCE_LOST`) relaunches up to `max_restarts`;
- everything else (SUCCEEDED, CANCELLED, MAX_RUNTIME, NO_PUBLIC_ADDRESS, launch errors) ends the job.
A job without `job_recovery` never relaunches (the behaviour before recovery existed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_RESTARTS_DEFAULT = 10
MAX_WAIT_MINUTES_DEFAULT = 60
# Per counter: a job makes at most 1 + 2 × RESTART_LIMIT attempts, each recorded in the job's DynamoDB item (at most
# MAX_ATTEMPT_MESSAGE characters of message each: the item stays under 400 KB with the largest spec).
RESTART_LIMIT = 25
MAX_ATTEMPT_MESSAGE = 120
# A day: one Step Functions execution carries the job through its waits, and its history holds at most 25,000 events
# (https://docs.aws.amazon.com/step-functions/latest/dg/service-quotas.html); a wait of a day at the default retry
# (60 s, about 10 events each) takes 14,400 of them.
MAX_WAIT_LIMIT_MINUTES = 24 * 60
MAX_EXIT_CODES = 32

# Why an attempt ended (FailureReason values, kept as strings here: the core stays free of the job model).
ERROR_REASONS = frozenset({"EXIT_NONZERO", "SETUP_FAILED", "INPUTS_FAILED"})
LOSS_REASONS = frozenset({"SPOT_INTERRUPTED", "INSTANCE_LOST"})


class Strategy(StrEnum):
    """SkyPilot's strategy names. FAILOVER: the next attempt tries the same region first. EAGER_NEXT_REGION: after
    a preemption the next attempt starts with the next region of `resources.region` (a list)."""

    FAILOVER = "FAILOVER"
    EAGER_NEXT_REGION = "EAGER_NEXT_REGION"


class JobRecovery(BaseModel):
    """`job_recovery:` relaunch the job when AWS takes its instance or it fails, resuming from its checkpoints."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_restarts_on_errors: int = Field(
        default=0,
        ge=0,
        le=RESTART_LIMIT,
        description="relaunches after the job's own failure (run exits non-zero, setup fails, inputs cannot be "
        "fetched); 0: the first such failure ends the job",
    )
    recover_on_exit_codes: list[int] = Field(
        default_factory=list,
        max_length=MAX_EXIT_CODES,
        description="run exit codes (1-255) that relaunch without counting against max_restarts_on_errors (they "
        "count against max_restarts)",
    )
    max_restarts: int = Field(
        default=MAX_RESTARTS_DEFAULT,
        ge=0,
        le=RESTART_LIMIT,
        description="relaunches after AWS takes the instance (spot interruption, instance lost) or after an exit "
        "code in recover_on_exit_codes",
    )
    max_wait_minutes: int = Field(
        default=MAX_WAIT_MINUTES_DEFAULT,
        ge=0,
        le=MAX_WAIT_LIMIT_MINUTES,
        description="how long a launch keeps trying when no zone or region has capacity (WAITING_CAPACITY), then "
        "FAILED / CAPACITY; 0: fail at once",
    )
    strategy: Strategy = Field(
        default=Strategy.FAILOVER,
        description="FAILOVER: retry the same region first; EAGER_NEXT_REGION: after a preemption, start with the "
        "next region of resources.region",
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, raw: Any) -> Any:
        """SkyPilot's `job_recovery: FAILOVER` (a strategy name alone) means the defaults with that strategy."""
        if isinstance(raw, str):
            return {"strategy": raw}
        return raw

    @field_validator("strategy", mode="before")
    @classmethod
    def _strategy(cls, raw: Any) -> Any:
        if isinstance(raw, str) and raw.strip().upper() in Strategy.__members__:
            return raw.strip().upper()
        raise ValueError("job_recovery strategy must be FAILOVER or EAGER_NEXT_REGION")

    @field_validator("recover_on_exit_codes", mode="before")
    @classmethod
    def _codes(cls, raw: Any) -> list[int]:
        if raw is None:
            return []
        items = raw if isinstance(raw, list) else [raw]
        codes: list[int] = []
        for item in items:
            if isinstance(item, bool) or not isinstance(item, int) or not 1 <= item <= 255:
                raise ValueError("recover_on_exit_codes must be exit codes from 1 to 255, e.g. [33]")
            codes.append(item)
        return sorted(set(codes))

    @property
    def max_attempts(self) -> int:
        """The most attempts the job can make (what a budget must reserve for)."""
        return 1 + self.max_restarts + self.max_restarts_on_errors


def parse(raw: Any) -> JobRecovery | None:
    """The spec's `job_recovery` value: None (absent, null or false) means no recovery."""
    if raw is None or raw is False:
        return None
    if raw is True:
        return JobRecovery()
    return JobRecovery.model_validate(raw)


@dataclass(frozen=True)
class EndedAttempt:
    """What `decide` needs of an attempt that ended: why, and with which exit code."""

    reason: str
    exit_code: int | None = None


@dataclass(frozen=True)
class Verdict:
    relaunch: bool
    why: str  # a sentence for the job's notes / the attempt marker


def _counted(policy: JobRecovery, attempt: EndedAttempt) -> tuple[int, int]:
    """(error restarts, other restarts) an ended attempt that relaunched used."""
    if attempt.reason == "EXIT_NONZERO" and attempt.exit_code in policy.recover_on_exit_codes:
        return 0, 1
    if attempt.reason in ERROR_REASONS:
        return 1, 0
    if attempt.reason in LOSS_REASONS:
        return 0, 1
    return 0, 0


def restarts(policy: JobRecovery | None, earlier: Sequence[EndedAttempt]) -> tuple[int, int]:
    """(error restarts, other restarts) used by the attempts that ended and relaunched."""
    if policy is None:
        return 0, 0
    errors = others = 0
    for attempt in earlier:
        counted = _counted(policy, attempt)
        errors += counted[0]
        others += counted[1]
    return errors, others


def decide(policy: JobRecovery | None, earlier: Sequence[EndedAttempt], ending: EndedAttempt) -> Verdict:
    """Does the job relaunch after `ending`, given the `earlier` attempts (which all relaunched)?"""
    if policy is None:
        return Verdict(False, "the job has no job_recovery")
    errors, others = restarts(policy, earlier)
    reason, code = ending.reason, ending.exit_code
    if reason == "EXIT_NONZERO" and code in policy.recover_on_exit_codes:
        if others < policy.max_restarts:
            return Verdict(True, f"run exited with code {code}, one of recover_on_exit_codes")
        return Verdict(False, f"run exited with code {code}, but max_restarts ({policy.max_restarts}) are used up")
    if reason in ERROR_REASONS:
        if errors < policy.max_restarts_on_errors:
            return Verdict(True, f"{reason} (restart {errors + 1} of max_restarts_on_errors "
                                 f"{policy.max_restarts_on_errors})")  # fmt: skip
        if policy.max_restarts_on_errors:
            return Verdict(False, f"{reason}, and max_restarts_on_errors ({policy.max_restarts_on_errors}) are "
                                  "used up")  # fmt: skip
        return Verdict(False, f"{reason}; max_restarts_on_errors is 0")
    if reason in LOSS_REASONS:
        if others < policy.max_restarts:
            return Verdict(True, f"{reason} (restart {others + 1} of max_restarts {policy.max_restarts})")
        return Verdict(False, f"{reason}, and max_restarts ({policy.max_restarts}) are used up")
    return Verdict(False, f"{reason} is not recovered from")


def marker(attempt: int, instance_type: str, zone: str | None, region: str, market: str, after: str) -> str:
    """The line the log gets where an attempt's output begins (attempt 2 on): one line, ending in a newline."""
    where = zone or region
    return f"--- attempt {attempt} on {instance_type} in {where} ({market}), after {after} ---\n"
