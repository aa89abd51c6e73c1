"""Instance state changes → jobs, with fakes (ports and adapters): the state is always recorded; an instance that
ends while its job is active (no exit status relayed) ends the job with the reason its end implies."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from typing import Any

from controlplane.core.errors import TransitionRefused
from controlplane.core.lifecycle import JobStatus
from controlplane.core.models import Job
from controlplane.core.ports import LogProgress
from controlplane.core.spec import TaskSpec
from controlplane.service.instance_events import InstanceEventsService

NOW = dt.datetime.now(dt.UTC)


class FakeJobs:
    def __init__(self, job: Job) -> None:
        self.job = job
        self.states: list[str] = []

    def by_instance(self, instance_id: str) -> Job | None:
        return self.job if instance_id == self.job.instance_id else None

    def set_instance_state(self, job_id: str, state: str) -> None:
        self.states.append(state)
        self.job = self.job.model_copy(update={"instance_state": state})

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
        if self.job.status.terminal or self.job.status not in allowed:
            raise TransitionRefused(job_id, self.job.status, target)
        if attempt is not None and attempt != self.job.attempt:
            raise TransitionRefused(job_id, self.job.status, target)
        self.job = Job.model_validate(self.job.model_dump() | (fields or {}) | {"status": target})
        return self.job


class FakeLogs:
    def __init__(self) -> None:
        self.completed = False  # final: nothing more will be relayed
        self.drained = False  # whole: the relay read everything

    def fold_pages(self, job_id: str) -> LogProgress:
        return self.progress(job_id)

    def progress(self, job_id: str) -> LogProgress:
        return LogProgress(committed=42, complete=self.completed, drained=self.drained)

    def commit(self, job_id: str, committed: int, *, complete: bool = False, drained: bool = False) -> None:
        self.completed = self.completed or complete or drained
        self.drained = self.drained or drained


def job(status: JobStatus, deadline: dt.datetime | None = None) -> Job:
    return Job(
        job_id="job-1",
        team_id="t",
        provider_id="p",
        region="us-east-1",
        spec=TaskSpec(run="x", max_runtime_minutes=30),
        status=status,
        instance_type="g5.xlarge",
        instance_id="i-1",
        deadline_at=deadline,
        created_at=NOW,
        updated_at=NOW,
    )


def test_given_a_running_instance_then_its_state_is_recorded_and_the_job_untouched() -> None:
    jobs, logs = FakeJobs(job(JobStatus.PROVISIONING)), FakeLogs()
    handled = InstanceEventsService(jobs, logs).handle("i-1", "running")
    assert (jobs.states, jobs.job.status, handled.job_id) == (["running"], JobStatus.PROVISIONING, "job-1")
    assert not logs.completed


def test_given_an_instance_that_ends_while_its_job_runs_then_the_job_is_lost_and_its_log_final_not_whole() -> None:
    jobs, logs = FakeJobs(job(JobStatus.RUNNING, deadline=NOW + dt.timedelta(hours=1))), FakeLogs()
    InstanceEventsService(jobs, logs).handle("i-1", "shutting-down")
    assert (jobs.job.status, jobs.job.failure_reason) == (JobStatus.FAILED, "INSTANCE_LOST")
    assert logs.completed  # nothing more will be relayed...
    assert not logs.drained  # ...but what the instance wrote last was never read: the log is not whole


def test_given_an_instance_past_the_deadline_then_max_runtime() -> None:
    jobs = FakeJobs(job(JobStatus.RUNNING, deadline=NOW - dt.timedelta(minutes=1)))
    InstanceEventsService(jobs, FakeLogs()).handle("i-1", "terminated")
    assert jobs.job.failure_reason == "MAX_RUNTIME"
    assert "30" in (jobs.job.failure_message or "")


def test_given_a_job_the_relay_already_finished_then_only_the_instance_state_changes() -> None:
    jobs = FakeJobs(job(JobStatus.SUCCEEDED))
    InstanceEventsService(jobs, FakeLogs()).handle("i-1", "terminated")
    assert (jobs.states, jobs.job.status) == (["terminated"], JobStatus.SUCCEEDED)


def test_given_an_instance_that_is_not_ours_then_nothing_happens() -> None:
    jobs = FakeJobs(job(JobStatus.RUNNING))
    handled = InstanceEventsService(jobs, FakeLogs()).handle("i-other", "terminated")
    assert (handled.job_id, jobs.states) == (None, [])


def test_given_a_spot_interruption_warning_then_the_job_fails_spot_interrupted() -> None:
    jobs = FakeJobs(job(JobStatus.RUNNING))
    handled = InstanceEventsService(jobs, FakeLogs()).spot_interruption("i-1")
    assert (handled.job_id, jobs.job.status, jobs.job.failure_reason) == ("job-1", JobStatus.FAILED, "SPOT_INTERRUPTED")
    assert InstanceEventsService(jobs, FakeLogs()).spot_interruption("i-other").job_id is None


def test_duplicate_and_out_of_order_events_change_nothing_twice() -> None:
    jobs, logs = FakeJobs(job(JobStatus.RUNNING, deadline=NOW + dt.timedelta(hours=1))), FakeLogs()
    service = InstanceEventsService(jobs, logs)
    service.handle("i-1", "terminated")
    ended = jobs.job
    service.handle("i-1", "terminated")  # delivered twice
    late = service.handle("i-1", "running")  # delivered late
    assert "out of order" in late.action
    assert jobs.job == ended
    assert (jobs.job.status, jobs.job.instance_state) == (JobStatus.FAILED, "terminated")


class Reasons:
    """DescribeInstances' StateReason for the job's instance, as EC2 would answer it."""

    def __init__(self, code: str = "", fails: bool = False) -> None:
        self.code = code
        self.fails = fails

    def state_reason(self, job: Job) -> str:
        if self.fails:
            raise RuntimeError("DescribeInstances failed")
        return self.code


def test_a_spot_reclaim_whose_warning_was_missed_is_told_from_the_instances_state_reason() -> None:
    # EC2 state-change events carry only instance-id and state: the reason must come from DescribeInstances.
    jobs = FakeJobs(job(JobStatus.RUNNING))
    InstanceEventsService(jobs, FakeLogs(), Reasons("Server.SpotInstanceTermination")).handle("i-1", "shutting-down")
    assert jobs.job.failure_reason == "SPOT_INTERRUPTED"


def test_an_unreadable_state_reason_still_ends_the_job() -> None:
    jobs = FakeJobs(job(JobStatus.RUNNING))
    InstanceEventsService(jobs, FakeLogs(), Reasons(fails=True)).handle("i-1", "terminated")
    assert (jobs.job.status, jobs.job.failure_reason) == (JobStatus.FAILED, "INSTANCE_LOST")
