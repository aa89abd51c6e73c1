"""Admission (docs/budgets.md): a job is admitted when its worst case fits its team's limits, else it waits QUEUED
(no Lambda, no execution) until it fits; a job that can never fit is refused at submit.

- Submit (API, event, console): `admit_new` decides before the job item exists; the job is then recorded PENDING
  (and its workflow started) or QUEUED with the reason.
- A job ends (any terminal transition: the job store's listener calls `release`): its claim is replaced by its
  measured cost, its month's report counts it, and the team's queue is tried (`admit_queued`: QUEUED → PENDING and
  the job's workflow starts).
- The reconciler's sweep (`sweep`, once a minute) is the backstop for a release or an admission a crashed Lambda
  left half done, and fails jobs queued for longer than their max_queue_minutes (QUEUE_TIMEOUT).

Every change to a team's ledger is a write conditional on the version read; a lost race re-reads and decides again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import random
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Protocol

from controlplane.core import catalog
from controlplane.core.admission import (
    MAX_LEDGER_ENTRIES,
    MAX_QUEUED_PER_TEAM,
    Claim,
    Decision,
    Ledger,
    Limits,
    OverLimit,
    QueueFull,
    Request,
    UsageDelta,
    decide,
    money,
    month_of,
    never_fits,
    next_admissible,
    worst_case,
)
from controlplane.core.errors import TransitionRefused, UpstreamUnavailable
from controlplane.core.lifecycle import FailureReason, JobStatus
from controlplane.core.models import Job, utcnow
from controlplane.core.ports import JobStore

logger = logging.getLogger(__name__)

ATTEMPTS = 30  # ledger writes lost to concurrent writers before giving up (each re-reads; jittered)
ORPHAN_SECONDS = 300.0  # a claim or queue entry whose job was never recorded is dropped after this
STALLED_ADMISSION_SECONDS = 60.0  # a claim whose job is still QUEUED: the admission's second half is redone


class AdmissionStore(Protocol):
    def limits(self, team_id: str) -> Limits | None: ...
    def set_limits(self, team_id: str, limits: Limits | None) -> None: ...
    def ledger(self, team_id: str) -> Ledger: ...
    def ledgers(self) -> list[tuple[str, Ledger]]: ...
    def save(self, team_id: str, before: Ledger, after: Ledger, usage: UsageDelta | None = None) -> bool: ...
    def usage(self, month: str, team_id: str) -> dict[str, Any]: ...
    def usage_all(self, month: str) -> dict[str, dict[str, Any]]: ...


class AdmittedStarter(Protocol):
    def admit(self, job: Job) -> str: ...


class JobReads(JobStore, Protocol):
    def get_many(self, job_ids: list[str]) -> dict[str, Job]: ...


def _iso(instant: dt.datetime) -> str:
    return instant.astimezone(dt.UTC).isoformat()


def _parse(value: str) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(value) if value else None
    except ValueError:
        return None


class AdmissionService:
    def __init__(
        self,
        store: AdmissionStore,
        jobs: JobReads,
        starter: AdmittedStarter | Callable[[], AdmittedStarter | None] | None,
        grace_seconds: int,
        clock: Callable[[], dt.datetime] = utcnow,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.store = store
        self.jobs = jobs
        self._starter = starter  # or a function returning it (None: this Lambda may not start workflows)
        self.grace_seconds = grace_seconds
        self.clock = clock
        self.sleep = sleep

    @property
    def starter(self) -> AdmittedStarter | None:
        chosen = self._starter
        if chosen is not None and not hasattr(chosen, "admit"):
            return chosen()  # type: ignore[operator]
        return chosen  # type: ignore[return-value]

    # -- what a job asks for ------------------------------------------------------------------------------------

    def request_for(self, job: Job, limits: Limits) -> Request:
        """The job's worst case and what it occupies: one instance, its GPUs; at the on-demand price (spot too).
        Its queue deadline: its own max_queue_minutes, at most the team's."""
        spec = job.spec
        assert spec is not None, "only a job with a valid spec is admitted"
        instance = catalog.get().instances.get(job.instance_type or "")
        price = job.on_demand_price if job.on_demand_price is not None else job.hourly_price
        attempts = spec.job_recovery.max_attempts if spec.job_recovery is not None else 1
        now = self.clock()
        wait = min(spec.max_queue_minutes or limits.max_queue_minutes, limits.max_queue_minutes)
        return Request(
            job_id=job.job_id,
            claim=Claim(
                month=month_of(job.created_at),
                reserved=worst_case(price, spec.max_runtime_minutes, self.grace_seconds, attempts),
                gpus=instance.gpu_count if instance and instance.gpu else 0,
                gpu_type=(instance.gpu or None) if instance else None,
                since=_iso(now),
                provider_id=job.provider_id,
            ),
            hourly_price=money(price),
            priority=spec.priority,
            queued_at=_iso(job.created_at),
            queue_deadline=_iso(now + dt.timedelta(minutes=wait)),
        )

    # -- submit -------------------------------------------------------------------------------------------------

    def admit_new(self, job: Job) -> Decision:
        """Decide for a job about to be recorded: admitted (record it PENDING) or queued (record it QUEUED with the
        reason). Raises OverLimit when it can never fit, QueueFull when the team's queue is full. Idempotent for
        the same job id (a retried submission gets the decision already made)."""
        limits = self.store.limits(job.team_id) or Limits()
        request = self.request_for(job, limits)
        reason = never_fits(limits, request)
        if reason is not None:
            raise OverLimit(f"this job can never run under your team's limits: {reason}")
        for attempt in range(ATTEMPTS):
            ledger = self.store.ledger(job.team_id)
            if job.job_id in ledger.holds:
                return Decision(True, None)
            if job.job_id in ledger.queue:
                return Decision(False, "waiting in its team's queue")
            if len(ledger.queue) >= MAX_QUEUED_PER_TEAM:
                raise QueueFull(f"your team has {len(ledger.queue)} jobs queued already (the most a team may queue)")
            if len(ledger.holds) + len(ledger.queue) >= MAX_LEDGER_ENTRIES:
                raise QueueFull(
                    f"your team has {len(ledger.holds) + len(ledger.queue)} jobs admitted or queued: the most one "
                    "team's admission ledger holds (docs/budgets.md); submit again when some have ended"
                )
            decision, after = decide(limits, ledger, request)
            if self.store.save(job.team_id, ledger, after):
                return decision
            self._back_off(attempt)
        raise UpstreamUnavailable("too many submissions for your team at once; retry the request")

    def _back_off(self, attempt: int) -> None:
        self.sleep(min(0.5, 0.01 * 2 ** min(attempt, 6)) * random.uniform(0.5, 1.0))

    # -- a job ended --------------------------------------------------------------------------------------------

    def on_transition(self, before: Job | None, after: Job) -> None:
        """The job store's listener: a job that just ended releases what it held (never raises: the sweep is the
        backstop)."""
        if not after.status.terminal or (before is not None and before.status.terminal):
            return
        try:
            self.release(after)
        except Exception:
            logger.exception("could not release an ended job's admission", extra={"job_id": after.job_id})

    def release(self, job: Job) -> None:
        """Book an ended job: its claim becomes its measured cost (its month's report counts it once); a queued job
        leaves the queue. Then admit what now fits."""
        queue_left = 0
        for attempt in range(ATTEMPTS):
            ledger = self.store.ledger(job.team_id)
            claim = ledger.holds.get(job.job_id)
            queued = ledger.queue.get(job.job_id)
            if claim is None and queued is None:
                queue_left = len(ledger.queue)
                break
            cost = money(job.cost_estimate) if claim is not None else Decimal(0)
            after = ledger.ended(job.job_id, cost)
            source = claim or (queued.claim if queued else None)
            assert source is not None
            usage = UsageDelta(
                month=source.month,
                status=str(job.status),
                cost=cost,
                provider_id=job.provider_id,
                gpu_type=source.gpu_type if claim is not None else None,
                gpu_hours=_gpu_hours(job, source) if claim is not None else Decimal(0),
            )
            if self.store.save(job.team_id, ledger, after, usage):
                queue_left = len(after.queue)
                break
            self._back_off(attempt)
        else:
            raise UpstreamUnavailable(f"could not book ended job {job.job_id}; the reconciler will")
        if queue_left:
            self.admit_queued(job.team_id)  # here if this Lambda may start workflows; else the job-ended event

    # -- the queue ----------------------------------------------------------------------------------------------

    def admit_queued(self, team_id: str) -> list[str]:
        """Admit the queue's head while it fits (strict order). Returns the jobs admitted. Only where workflows
        can be started (the API, the reconcile function): elsewhere an ended job's Job State Change event brings
        the reconcile function here (adapters/events.py JOB_ENDED_PATTERN), and its sweep every minute."""
        if self.starter is None:
            return []
        limits = self.store.limits(team_id) or Limits()
        admitted: list[str] = []
        for attempt in range(ATTEMPTS):
            ledger = self.store.ledger(team_id)
            head = next_admissible(limits, ledger)
            if head is None:
                return admitted
            if not self.store.save(team_id, ledger, ledger.admitted(head)):
                self._back_off(attempt)
                continue
            if self._start_admitted(head.job_id):
                admitted.append(head.job_id)
        return admitted

    def _start_admitted(self, job_id: str) -> bool:
        """The second half of an admission from the queue: QUEUED → PENDING, then the job's workflow. A job that
        ended meanwhile (cancelled) gives its claim back."""
        try:
            job = self.jobs.transition(
                job_id, JobStatus.PENDING, expected=JobStatus.QUEUED, fields={"status_detail": None}
            )
        except TransitionRefused:
            current = self.jobs.get(job_id)
            if current is None or current.status.terminal:
                if current is not None:
                    self.release(current)
                return False
            if current.status != JobStatus.PENDING or current.execution_arn:
                return False
            job = current  # PENDING without a workflow: a crashed admission, finished here
        starter = self.starter
        assert starter is not None  # admit_queued and the sweep run only where workflows can start
        arn = starter.admit(job)
        with contextlib.suppress(TransitionRefused):  # it ended already (cancelled): its workflow sees that and stops
            self.jobs.update(job_id, {"execution_arn": arn})
        logger.info("admitted a queued job", extra={"job_id": job_id})
        return True

    # -- the reconciler's backstop ------------------------------------------------------------------------------

    def sweep(self) -> dict[str, int]:
        """Once a minute: book ended jobs a crash left in a ledger, finish interrupted admissions (and start the
        workflow of an admitted job whose start failed), drop entries of jobs never recorded, fail jobs queued past
        their max_queue_minutes, then admit what fits."""
        counts = {"released": 0, "expired": 0, "dropped": 0, "admitted": 0}
        now = self.clock()
        for team_id, ledger in self.store.ledgers():
            if not ledger.holds and not ledger.queue:
                continue
            jobs = self.jobs.get_many([*ledger.holds, *ledger.queue])
            for job_id, claim in ledger.holds.items():
                job = jobs.get(job_id)
                if job is None:
                    if _older_than(claim.since, now, ORPHAN_SECONDS):
                        counts["dropped"] += self._drop(team_id, job_id)
                elif job.status.terminal:
                    self._release_quietly(job)
                    counts["released"] += 1
                elif _workflow_missing(job) and _older_than(claim.since, now, STALLED_ADMISSION_SECONDS):
                    counts["admitted"] += int(self._start_admitted(job_id))
            for job_id, request in ledger.queue.items():
                job = jobs.get(job_id)
                if job is None:
                    if _older_than(request.claim.since, now, ORPHAN_SECONDS):
                        counts["dropped"] += self._drop(team_id, job_id)
                elif job.status.terminal:
                    self._release_quietly(job)
                    counts["released"] += 1
                elif (deadline := _parse(request.queue_deadline)) is not None and now >= deadline:
                    counts["expired"] += self._expire(job, request)
            if self.store.ledger(team_id).queue:
                counts["admitted"] += len(self.admit_queued(team_id))
        return counts

    def _release_quietly(self, job: Job) -> None:
        try:
            self.release(job)
        except Exception:
            logger.exception("could not book an ended job", extra={"job_id": job.job_id})

    def _drop(self, team_id: str, job_id: str) -> int:
        for attempt in range(ATTEMPTS):
            ledger = self.store.ledger(team_id)
            if job_id not in ledger.holds and job_id not in ledger.queue:
                return 0
            if self.store.save(team_id, ledger, ledger.ended(job_id, Decimal(0))):
                logger.warning("dropped the admission of a job that was never recorded", extra={"job_id": job_id})
                return 1
            self._back_off(attempt)
        return 0

    def _expire(self, job: Job, request: Request) -> int:
        minutes = round((_parse(request.queue_deadline) - _parse(request.queued_at)).total_seconds() / 60)  # type: ignore[operator]
        try:
            self.jobs.transition(
                job.job_id,
                JobStatus.FAILED,
                expected=JobStatus.QUEUED,
                fields={
                    "failure_reason": str(FailureReason.QUEUE_TIMEOUT),
                    "failure_message": f"waited {minutes} minutes in the queue (max_queue_minutes) without fitting "
                    f"the team's limits: {job.status_detail or 'they stayed full'}",
                },
            )
        except TransitionRefused:
            return 0
        return 1  # the transition's listener released it from the queue

    # -- limits and usage -----------------------------------------------------------------------------------------

    def limits(self, team_id: str) -> Limits:
        return self.store.limits(team_id) or Limits()

    def set_limits(self, team_id: str, limits: Limits | None) -> Limits:
        """An admin sets (or with None clears) a team's limits; queued jobs that now fit are admitted."""
        self.store.set_limits(team_id, limits)
        if self.store.ledger(team_id).queue:
            self.admit_queued(team_id)
        return limits or Limits()

    def usage(self, team_id: str, month: str) -> dict[str, Any]:
        """The team's month: spend, reserved, budget left, GPU-hours by type, jobs by final state, per provider."""
        return usage_report(team_id, month, self.store.usage(month, team_id), self.store.ledger(team_id),
                            self.limits(team_id))  # fmt: skip

    def usage_all(self, month: str) -> list[dict[str, Any]]:
        """Every team's month (an admin's view): teams with a report or an open claim that month."""
        reports = self.store.usage_all(month)
        ledgers = dict(self.store.ledgers())
        teams = sorted(set(reports) | {t for t, ledger in ledgers.items() if ledger.reserved(month)})
        return [
            usage_report(team, month, reports.get(team, {}), ledgers.get(team, Ledger()), self.limits(team))
            for team in teams
        ]


def _workflow_missing(job: Job) -> bool:
    """An admitted job whose workflow never started: still QUEUED (the admission stopped between the ledger and the
    job), or PENDING without an execution (starting it failed)."""
    return job.status == JobStatus.QUEUED or (job.status == JobStatus.PENDING and not job.execution_arn)


def _gpu_hours(job: Job, claim: Claim) -> Decimal:
    seconds = job.billed_seconds or 0
    return (Decimal(seconds) * Decimal(claim.gpus) / Decimal(3600)).quantize(Decimal("0.0001"))


def _older_than(since: str, now: dt.datetime, seconds: float) -> bool:
    instant = _parse(since)
    return instant is None or (now - instant).total_seconds() >= seconds


def _number(value: Any) -> Decimal:
    return Decimal(str(value)) if value is not None else Decimal(0)


def usage_report(team_id: str, month: str, item: dict[str, Any], ledger: Ledger, limits: Limits) -> dict[str, Any]:
    """The report's shape (docs/budgets.md, the OpenAPI document's Usage)."""
    spent = _number(item.get("spent"))
    reserved = ledger.reserved(month)
    by_state = {k.removeprefix("jobs#"): int(v) for k, v in item.items() if k.startswith("jobs#")}
    gpu_hours = {k.removeprefix("gpu_hours#"): float(v) for k, v in item.items() if k.startswith("gpu_hours#")}
    providers: dict[str, dict[str, Any]] = {}
    for name, value in item.items():
        if name.startswith("provider_spent#"):
            providers.setdefault(name.removeprefix("provider_spent#"), {})["spent_usd"] = float(value)
        elif name.startswith("provider_jobs#"):
            providers.setdefault(name.removeprefix("provider_jobs#"), {})["jobs"] = int(value)
    budget = limits.monthly_budget_usd
    return {
        "team_id": team_id,
        "month": month,
        "spent_usd": float(spent),
        "reserved_usd": float(reserved),
        "budget_usd": budget,
        "remaining_usd": None if budget is None else float(max(Decimal(0), money(budget) - spent - reserved)),
        "active_jobs": len(ledger.holds),
        "queued_jobs": len(ledger.queue),
        "gpu_hours_by_type": dict(sorted(gpu_hours.items())),
        "jobs_by_state": dict(sorted(by_state.items())),
        "providers": [{"provider_id": p} | figures for p, figures in sorted(providers.items())],
    }
