"""Managed recovery's decisions (core/recovery.py) and the one place an attempt ends (service/recovery.py)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from controlplane.core import recovery
from controlplane.core.errors import JobNotActive, TransitionRefused, UpstreamUnavailable
from controlplane.core.lifecycle import FailureReason, JobStatus, can_transition
from controlplane.core.models import Job
from controlplane.core.ports import LogProgress
from controlplane.core.recovery import EndedAttempt, JobRecovery, decide
from controlplane.core.spec import TaskSpec
from controlplane.service.recovery import AttemptEnder, RecoveryService, in_recovery_drain

NOW = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.UTC)


# -- the policy ------------------------------------------------------------------------------------------------------


def test_the_contract_example_parses_and_skypilots_shorthands_too() -> None:
    policy = recovery.parse(
        {"max_restarts_on_errors": 2, "recover_on_exit_codes": [33], "max_restarts": 10, "max_wait_minutes": 240}
    )
    assert policy == JobRecovery(max_restarts_on_errors=2, recover_on_exit_codes=[33], max_restarts=10,
                                 max_wait_minutes=240)  # fmt: skip
    assert recovery.parse("failover") == JobRecovery()
    assert recovery.parse("EAGER_NEXT_REGION").strategy == recovery.Strategy.EAGER_NEXT_REGION  # type: ignore[union-attr]
    assert recovery.parse(None) is None
    assert recovery.parse(False) is None
    assert policy is not None
    assert policy.max_attempts == 13


@pytest.mark.parametrize(
    "raw",
    [{"max_restarts": -1}, {"max_restarts": 26}, {"recover_on_exit_codes": [0]}, {"recover_on_exit_codes": [256]},
     {"recover_on_exit_codes": [True]}, {"strategy": "SOMETIMES"}, {"unknown": 1}, {"max_wait_minutes": 1441}],
)  # fmt: skip
def test_a_policy_out_of_bounds_is_refused(raw: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        recovery.parse(raw)


def test_skypilots_place_under_resources_is_moved_to_the_task_and_twice_is_an_error() -> None:
    spec = TaskSpec.model_validate({"run": "x", "resources": {"job_recovery": {"max_restarts_on_errors": 1}}})
    assert spec.job_recovery == JobRecovery(max_restarts_on_errors=1)
    with pytest.raises(ValueError, match="given twice"):
        TaskSpec.model_validate({"run": "x", "job_recovery": {}, "resources": {"job_recovery": {}}})


def test_a_region_list_is_kept_in_order_and_one_region_stays_a_string() -> None:
    spec = TaskSpec.model_validate({"run": "x", "resources": {"region": ["us-west-2", "us-east-1"]}})
    assert spec.resources.regions == ("us-west-2", "us-east-1")
    assert TaskSpec.model_validate({"run": "x", "resources": {"region": ["us-east-1"]}}).resources.region == "us-east-1"
    with pytest.raises(ValidationError, match="twice"):
        TaskSpec.model_validate({"run": "x", "resources": {"region": ["us-east-1", "us-east-1"]}})


# -- decisions -------------------------------------------------------------------------------------------------------

POLICY = JobRecovery(max_restarts_on_errors=2, recover_on_exit_codes=[33], max_restarts=3)


def test_without_a_policy_nothing_relaunches() -> None:
    for reason in ("SPOT_INTERRUPTED", "INSTANCE_LOST", "EXIT_NONZERO"):
        assert not decide(None, [], EndedAttempt(reason, 1)).relaunch


def test_errors_relaunch_up_to_their_limit_and_listed_exit_codes_do_not_count_against_it() -> None:
    earlier: list[EndedAttempt] = []
    for _ in range(2):
        assert decide(POLICY, earlier, EndedAttempt("EXIT_NONZERO", 1)).relaunch
        earlier.append(EndedAttempt("EXIT_NONZERO", 1))
    assert decide(POLICY, earlier, EndedAttempt("EXIT_NONZERO", 33)).relaunch  # exit code 33: not an error restart
    verdict = decide(POLICY, earlier, EndedAttempt("SETUP_FAILED", 2))
    assert not verdict.relaunch
    assert "max_restarts_on_errors (2)" in verdict.why


def test_losses_and_listed_exit_codes_share_max_restarts() -> None:
    earlier = [EndedAttempt("SPOT_INTERRUPTED"), EndedAttempt("EXIT_NONZERO", 33), EndedAttempt("INSTANCE_LOST")]
    assert not decide(POLICY, earlier, EndedAttempt("SPOT_INTERRUPTED")).relaunch
    assert not decide(POLICY, earlier, EndedAttempt("EXIT_NONZERO", 33)).relaunch
    assert decide(POLICY, earlier, EndedAttempt("EXIT_NONZERO", 1)).relaunch  # error restarts are apart


@pytest.mark.parametrize("reason", ["MAX_RUNTIME", "NO_PUBLIC_ADDRESS", "CAPACITY", "QUOTA", "LAUNCH_ERROR"])
def test_what_another_attempt_would_not_change_never_relaunches(reason: str) -> None:
    assert not decide(JobRecovery(max_restarts=25, max_restarts_on_errors=25), [], EndedAttempt(reason)).relaunch


@given(st.lists(st.sampled_from(["SPOT_INTERRUPTED", "INSTANCE_LOST", "EXIT_NONZERO", "SETUP_FAILED"]), max_size=40),
       st.lists(st.sampled_from([1, 2, 33]), min_size=40, max_size=40))  # fmt: skip
def test_a_job_never_makes_more_attempts_than_its_policy_bounds(reasons: list[str], codes: list[int]) -> None:
    earlier: list[EndedAttempt] = []
    for reason, code in zip(reasons, codes, strict=False):
        ending = EndedAttempt(reason, code if reason == "EXIT_NONZERO" else None)
        if not decide(POLICY, earlier, ending).relaunch:
            break
        earlier.append(ending)
    assert len(earlier) + 1 <= POLICY.max_attempts


def test_the_marker_names_the_attempt_its_instance_and_why() -> None:
    text = recovery.marker(2, "g5.xlarge", "us-east-1b", "us-east-1", "spot", "SPOT_INTERRUPTED")
    assert text == "--- attempt 2 on g5.xlarge in us-east-1b (spot), after SPOT_INTERRUPTED ---\n"


def test_the_lifecycle_goes_through_recovering_and_waiting_capacity() -> None:
    assert can_transition(JobStatus.RUNNING, JobStatus.RECOVERING)
    assert can_transition(JobStatus.RECOVERING, JobStatus.LAUNCHING)
    assert can_transition(JobStatus.LAUNCHING, JobStatus.WAITING_CAPACITY)
    assert can_transition(JobStatus.WAITING_CAPACITY, JobStatus.PROVISIONING)
    for state in (JobStatus.RECOVERING, JobStatus.WAITING_CAPACITY):
        assert can_transition(state, JobStatus.CANCELLED)
        assert can_transition(state, JobStatus.FAILED)
        assert not can_transition(state, JobStatus.SUCCEEDED)


# -- ending an attempt -----------------------------------------------------------------------------------------------


class FakeJobs:
    def __init__(self, job: Job) -> None:
        self.job = job
        self.writes = 0

    def get(self, job_id: str) -> Job | None:
        return self.job

    def transition(
        self,
        job_id: str,
        target: JobStatus,
        *,
        expected: JobStatus | Collection[JobStatus] | None = None,
        fields: dict[str, Any] | None = None,
        attempt: int | None = None,
    ) -> Job:
        allowed = {expected} if isinstance(expected, JobStatus) else set(expected or JobStatus)
        if not can_transition(self.job.status, target) or self.job.status not in allowed:
            raise TransitionRefused(job_id, self.job.status, target)
        if attempt is not None and attempt != self.job.attempt:
            raise TransitionRefused(job_id, self.job.status, target)
        self.writes += 1
        self.job = Job.model_validate(self.job.model_dump() | (fields or {}) | {"status": target})
        return self.job


def running(policy: dict[str, Any] | None, **fields: Any) -> Job:
    spec = TaskSpec.model_validate({"run": "x", "job_recovery": policy})
    base = {
        "job_id": "job-1", "team_id": "t", "provider_id": "p", "region": "us-east-1", "spec": spec,
        "status": JobStatus.RUNNING, "instance_type": "g5.xlarge", "instance_id": "i-1", "hourly_price": 1.0,
        "market": "spot", "availability_zone": "us-east-1a", "launched_at": NOW - dt.timedelta(hours=1),
        "created_at": NOW - dt.timedelta(hours=2), "updated_at": NOW,
    }  # fmt: skip
    return Job.model_validate(base | fields)


def test_an_interrupted_attempt_with_recovery_is_recorded_and_the_job_recovers() -> None:
    jobs = FakeJobs(running({"max_restarts": 1}))
    changed = AttemptEnder(jobs, clock=lambda: NOW).end(jobs.job, FailureReason.SPOT_INTERRUPTED, "reclaimed")
    assert changed is not None
    assert changed.status == JobStatus.RECOVERING
    (attempt,) = changed.attempts
    assert (attempt.attempt, attempt.instance_id, attempt.end_reason, attempt.billed_seconds) == (
        1, "i-1", "SPOT_INTERRUPTED", 3600)  # fmt: skip
    assert attempt.cost_estimate == 1.0
    assert changed.instance_id == "i-1"  # kept until the next attempt: the relay drains what it still writes
    assert in_recovery_drain(changed, NOW)
    assert not in_recovery_drain(changed, NOW + dt.timedelta(minutes=5))
    # a second observer of the same end (the instance's terminated event, say) changes nothing
    assert AttemptEnder(jobs).end(changed, FailureReason.INSTANCE_LOST, "gone") is None
    assert jobs.writes == 1


def test_without_recovery_or_past_its_limit_the_attempt_ends_the_job_with_a_note() -> None:
    jobs = FakeJobs(running(None))
    changed = AttemptEnder(jobs).end(jobs.job, FailureReason.SPOT_INTERRUPTED, "reclaimed")
    assert changed is not None
    assert (changed.status, changed.failure_reason) == (JobStatus.FAILED, "SPOT_INTERRUPTED")
    assert not any("job_recovery" in note for note in changed.notes)
    jobs = FakeJobs(running({"max_restarts_on_errors": 0}))
    changed = AttemptEnder(jobs).end(jobs.job, FailureReason.EXIT_NONZERO, "run exited with code 1", exit_code=1)
    assert changed is not None
    assert changed.status == JobStatus.FAILED
    assert changed.exit_code == 1
    assert any("not relaunched" in note for note in changed.notes)


def test_an_old_attempt_cannot_end_the_current_one() -> None:
    jobs = FakeJobs(running({"max_restarts": 5}, attempt=3))
    stale = jobs.job.model_copy(update={"attempt": 2})
    assert AttemptEnder(jobs).end(stale, FailureReason.INSTANCE_LOST, "gone") is None
    assert jobs.job.status == JobStatus.RUNNING


# -- the Recover step ------------------------------------------------------------------------------------------------


class FakeLogs:
    def fold_pages(self, job_id: str) -> LogProgress:
        return self.progress(job_id)

    def progress(self, job_id: str) -> LogProgress:
        return LogProgress(committed=1234, complete=False, drained=True)

    def commit(self, job_id: str, committed: int, *, complete: bool = False) -> None:
        raise AssertionError("Recover never commits the log")


class FakeReaper:
    def __init__(self) -> None:
        self.reaped: list[str] = []

    def reap(self, job: Job) -> list[str]:
        self.reaped.append(str(job.instance_id))
        return [str(job.instance_id)]


def recovering(policy: dict[str, Any], **fields: Any) -> FakeJobs:
    jobs = FakeJobs(running(policy | {}, **fields))
    AttemptEnder(jobs, clock=lambda: NOW).end(jobs.job, FailureReason.SPOT_INTERRUPTED, "reclaimed")
    return jobs


def test_recover_terminates_the_attempts_instance_then_begins_the_next_attempt() -> None:
    jobs, reaper = recovering({"max_restarts": 2}), FakeReaper()
    job = RecoveryService(jobs, FakeLogs(), reaper, clock=lambda: NOW).recover("job-1", "exec-1")  # type: ignore[arg-type]
    assert reaper.reaped == ["i-1"]
    assert (job.status, job.attempt, job.instance_id, job.launched_at) == (JobStatus.LAUNCHING, 2, None, None)
    assert (job.log_marker_at, job.launch_started_at, job.region) == (1234, NOW, "us-east-1")
    assert [a.instance_id for a in job.attempts] == ["i-1"]
    # a retried step finds the next attempt begun and changes nothing
    again = RecoveryService(jobs, FakeLogs(), reaper).recover("job-1", "exec-1")  # type: ignore[arg-type]
    assert again.attempt == 2
    assert jobs.writes == 2


def test_recover_waits_for_another_relay_loop_still_draining_and_stops_for_an_ended_job() -> None:
    jobs = recovering({"max_restarts": 2})
    jobs.job = jobs.job.model_copy(
        update={"relay_owner": "exec-0", "relay_lease_until": NOW + dt.timedelta(seconds=30)}
    )
    service = RecoveryService(jobs, FakeLogs(), FakeReaper(), clock=lambda: NOW)  # type: ignore[arg-type]
    with pytest.raises(UpstreamUnavailable):
        service.recover("job-1", "exec-1")
    assert service.recover("job-1", "exec-0").attempt == 2  # its own loop's lease is no obstacle
    jobs.job = jobs.job.model_copy(update={"status": JobStatus.CANCELLED})
    with pytest.raises(JobNotActive):
        service.recover("job-1", "exec-0")


def test_eager_next_region_moves_on_after_a_preemption_and_failover_stays() -> None:
    regions = {"resources": {"region": ["us-east-1", "us-west-2"]}}
    for strategy, expected in (("FAILOVER", "us-east-1"), ("EAGER_NEXT_REGION", "us-west-2")):
        spec = TaskSpec.model_validate({"run": "x", "job_recovery": {"strategy": strategy}} | regions)
        jobs = FakeJobs(running(None, spec=spec))
        AttemptEnder(jobs, clock=lambda: NOW).end(jobs.job, FailureReason.SPOT_INTERRUPTED, "reclaimed")
        job = RecoveryService(jobs, FakeLogs(), FakeReaper(), clock=lambda: NOW).recover("job-1", "e")  # type: ignore[arg-type]
        assert job.region == expected, strategy
