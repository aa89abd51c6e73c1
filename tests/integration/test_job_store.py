"""Job state transitions are conditional writes that enforce the lifecycle, against the emulator's DynamoDB."""

from __future__ import annotations

import threading
import uuid

import boto3
import pytest
from boto3.dynamodb.conditions import Key

from controlplane.adapters import schema
from controlplane.adapters.dynamodb import ACTIVE_PARTITION, DynamoJobStore
from controlplane.core.errors import TransitionRefused
from controlplane.core.lifecycle import FailureReason, JobStatus
from controlplane.core.models import Job, utcnow
from controlplane.core.spec import TaskSpec
from tests.integration.conftest import ControlPlane


@pytest.fixture
def store(control_plane: ControlPlane) -> DynamoJobStore:
    return DynamoJobStore(boto3.resource("dynamodb").Table(control_plane.names.table("jobs")))


def _new_job(store: DynamoJobStore, provider_id: str = "prov-store") -> Job:
    now = utcnow()
    job = Job(
        job_id=f"job-{uuid.uuid4().hex[:20]}",
        team_id=f"t-{uuid.uuid4().hex[:8]}",
        provider_id=provider_id,
        region="us-east-1",
        spec=TaskSpec(run="true"),
        instance_type="c7i.large",
        hourly_price=0.08925,
        created_at=now,
        updated_at=now,
    )
    stored, created = store.create(job)
    assert created
    return stored


def test_the_happy_path_moves_through_every_state(store: DynamoJobStore) -> None:
    job = _new_job(store)
    for target in (JobStatus.LAUNCHING, JobStatus.PROVISIONING, JobStatus.RUNNING):
        job = store.transition(job.job_id, target)
        assert job.status == target
    job = store.transition(job.job_id, JobStatus.SUCCEEDED, fields={"exit_code": 0})
    assert (job.status, job.exit_code, job.version) == (JobStatus.SUCCEEDED, 0, 5)
    assert job.ended_at is not None


def test_an_illegal_transition_is_refused_and_changes_nothing(store: DynamoJobStore) -> None:
    job = _new_job(store)
    with pytest.raises(TransitionRefused) as refused:
        store.transition(job.job_id, JobStatus.SUCCEEDED)  # PENDING → SUCCEEDED is not allowed
    assert refused.value.current == JobStatus.PENDING
    assert store.get(job.job_id) == job


def test_terminal_states_never_change(store: DynamoJobStore) -> None:
    job = _new_job(store)
    store.transition(job.job_id, JobStatus.CANCELLED)
    for target in JobStatus:
        with pytest.raises(TransitionRefused):
            store.transition(job.job_id, target)
    with pytest.raises(TransitionRefused):
        store.update(job.job_id, {"instance_state": "running"})  # not even other fields
    final = store.get(job.job_id)
    assert final is not None
    assert final.status == JobStatus.CANCELLED


def test_a_stale_writer_loses_cleanly(store: DynamoJobStore) -> None:
    job = _new_job(store)
    store.transition(job.job_id, JobStatus.LAUNCHING)
    store.transition(job.job_id, JobStatus.PROVISIONING)
    store.transition(job.job_id, JobStatus.RUNNING)
    # Given two writers that both saw RUNNING, When the first records success, Then the second's FAILED is refused
    store.transition(job.job_id, JobStatus.SUCCEEDED, expected=JobStatus.RUNNING, fields={"exit_code": 0})
    with pytest.raises(TransitionRefused) as refused:
        store.transition(
            job.job_id,
            JobStatus.FAILED,
            expected=JobStatus.RUNNING,
            fields={"failure_reason": FailureReason.INSTANCE_LOST},
        )
    assert refused.value.current == JobStatus.SUCCEEDED
    final = store.get(job.job_id)
    assert final is not None
    assert (final.status, final.failure_reason, final.exit_code) == (JobStatus.SUCCEEDED, None, 0)


def test_concurrent_terminal_writers_exactly_one_wins(store: DynamoJobStore) -> None:
    job = _new_job(store)
    outcomes: list[str] = []
    lock = threading.Lock()

    def finish(target: JobStatus) -> None:
        try:
            store.transition(job.job_id, target)
            result = f"won:{target}"
        except TransitionRefused:
            result = "lost"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=finish, args=(t,)) for t in [JobStatus.FAILED, JobStatus.CANCELLED] * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [o for o in outcomes if o.startswith("won")]
    assert len(winners) == 1
    final = store.get(job.job_id)
    assert final is not None
    assert winners[0] == f"won:{final.status}"


def test_expected_state_guards_a_compare_and_set(store: DynamoJobStore) -> None:
    job = _new_job(store)
    with pytest.raises(TransitionRefused):
        store.transition(job.job_id, JobStatus.FAILED, expected=JobStatus.RUNNING)  # it is PENDING, not RUNNING
    assert store.transition(job.job_id, JobStatus.FAILED, expected=JobStatus.PENDING).status == JobStatus.FAILED


def test_indexes_follow_the_state(store: DynamoJobStore, control_plane: ControlPlane) -> None:
    provider = f"prov-{uuid.uuid4().hex[:8]}"
    job = _new_job(store, provider_id=provider)
    table = boto3.resource("dynamodb").Table(control_plane.names.table("jobs"))

    def active_for_provider() -> list[str]:
        page = table.query(
            IndexName=schema.JOBS_ACTIVE,
            KeyConditionExpression=Key("active").eq(ACTIVE_PARTITION) & Key("active_sk").begins_with(f"{provider}#"),
        )
        return [item["job_id"] for item in page["Items"]]

    def by_team_status(status: JobStatus) -> list[str]:
        page = table.query(
            IndexName=schema.JOBS_BY_TEAM_STATUS,
            KeyConditionExpression=Key("team_status").eq(f"{job.team_id}#{status}"),
        )
        return [item["job_id"] for item in page["Items"]]

    assert active_for_provider() == [job.job_id]
    assert store.has_active_jobs(provider)
    store.transition(job.job_id, JobStatus.LAUNCHING)
    assert by_team_status(JobStatus.LAUNCHING) == [job.job_id]
    assert by_team_status(JobStatus.PENDING) == []
    store.update(job.job_id, {"instance_id": "i-0123456789abcdef0"})
    by_instance = table.query(
        IndexName=schema.JOBS_BY_INSTANCE, KeyConditionExpression=Key("instance_id").eq("i-0123456789abcdef0")
    )
    assert [item["job_id"] for item in by_instance["Items"]] == [job.job_id]
    store.transition(job.job_id, JobStatus.FAILED, fields={"failure_reason": FailureReason.LAUNCH_ERROR})
    assert active_for_provider() == []  # terminal jobs leave the sparse active index
    assert not store.has_active_jobs(provider)
    assert by_team_status(JobStatus.FAILED) == [job.job_id]


def test_creating_the_same_job_twice_returns_the_first(store: DynamoJobStore) -> None:
    job = _new_job(store)
    again, created = store.create(job.model_copy(update={"instance_type": "m7i.large"}))
    assert not created
    assert again.instance_type == "c7i.large"
