"""The relay fleet's DynamoDB records (adapters/relay_fleet.py) against the emulator: the conditional slot on a
shard's item, leaving, retiring only an empty (and, for a dead shard, still stale) shard, the hand-over to a new
execution, and the enrolment kept on the job item where no API answer reads it."""

from __future__ import annotations

import boto3
import pytest

from controlplane.adapters.relay_fleet import DynamoFleetStore
from tests.integration.conftest import ControlPlane, Tenant

pytestmark = pytest.mark.emulator


@pytest.fixture
def store(control_plane: ControlPlane) -> DynamoFleetStore:
    dynamodb = boto3.resource("dynamodb")
    jobs = dynamodb.Table(control_plane.names.table("jobs"))
    for n in range(4):
        jobs.put_item(Item={"job_id": f"fleet-job-{n}", "team_id": "t", "status": "RUNNING"})
    state = dynamodb.Table(control_plane.names.table("state"))
    fleet = DynamoFleetStore(state, jobs, capacity=2)
    for shard in fleet.shards():  # what an earlier test left
        state.delete_item(Key={"pk": "relay-fleet", "sk": shard.shard_id})
    return fleet


def test_a_shard_takes_jobs_up_to_its_capacity_once_each(store: DynamoFleetStore) -> None:
    assert store.create_shard("shard-0001", 1000.0, "shard-0001-1")
    assert not store.create_shard("shard-0001", 1001.0, "shard-0001-2")  # one creator wins
    assert store.join("shard-0001", "fleet-job-0", "token-0", "exec-0", None)
    assert not store.join("shard-0001", "fleet-job-0", "token-0", "exec-0", None)  # already there
    assert store.join("shard-0001", "fleet-job-1", "token-1", "exec-1", "token-old")
    assert not store.join("shard-0001", "fleet-job-2", "token-2", "exec-2", None)  # full
    assert not store.join("shard-0009", "fleet-job-3", "token-3", "exec-3", None)  # no such shard
    (shard,) = store.shards()
    assert (shard.shard_id, shard.count, shard.heartbeat_at, shard.execution) == ("shard-0001", 2, 1000.0,
                                                                                  "shard-0001-1")  # fmt: skip
    assert store.shard("shard-0001").jobs == {"fleet-job-0", "fleet-job-1"}  # type: ignore[union-attr]
    enrolment = store.enrolment("fleet-job-1")
    assert enrolment is not None
    assert (enrolment.shard_id, enrolment.task_token, enrolment.owner, enrolment.superseded) == (
        "shard-0001", "token-1", "exec-1", "token-old")  # fmt: skip
    store.forget_superseded("fleet-job-1", "token-other")  # not the one recorded: kept
    assert store.enrolment("fleet-job-1").superseded == "token-old"  # type: ignore[union-attr]
    store.forget_superseded("fleet-job-1", "token-old")
    assert store.enrolment("fleet-job-1").superseded is None  # type: ignore[union-attr]


def test_leaving_frees_the_slot_and_forgets_only_this_shard_s_enrolment(store: DynamoFleetStore) -> None:
    store.create_shard("shard-0001", 1000.0, "shard-0001-1")
    store.create_shard("shard-0002", 1000.0, "shard-0002-1")
    store.join("shard-0001", "fleet-job-0", "token-0", "exec-0", None)
    store.join("shard-0002", "fleet-job-0", "token-b", "exec-b", None)  # enrolled again elsewhere: the item names 0002
    assert store.leave("shard-0001", "fleet-job-0")  # the stale slot on 0001
    assert not store.leave("shard-0001", "fleet-job-0")  # once
    assert store.shard("shard-0001").count == 0  # type: ignore[union-attr]
    assert store.enrolment("fleet-job-0").shard_id == "shard-0002"  # type: ignore[union-attr]
    # another task's settle (token-a, re-enrolled on this shard as token-b since): the enrolment and its slot stay
    assert not store.leave("shard-0002", "fleet-job-0", "token-a")
    assert store.enrolment("fleet-job-0").shard_id == "shard-0002"  # type: ignore[union-attr]
    assert store.shard("shard-0002").jobs == {"fleet-job-0"}  # type: ignore[union-attr]
    assert store.leave("shard-0002", "fleet-job-0", "token-b")
    assert store.shard("shard-0002").count == 0  # type: ignore[union-attr]
    assert store.enrolment("fleet-job-0").shard_id is None  # type: ignore[union-attr]


def test_only_an_empty_shard_retires_and_a_dead_one_only_while_still_stale(store: DynamoFleetStore) -> None:
    store.create_shard("shard-0001", 1000.0, "shard-0001-1")
    store.join("shard-0001", "fleet-job-0", "token-0", "exec-0", None)
    assert not store.retire("shard-0001")  # a job enrolled meanwhile keeps it
    store.leave("shard-0001", "fleet-job-0")
    assert not store.shard("shard-0001").started  # type: ignore[union-attr]
    assert store.heartbeat("shard-0001", 2000.0)  # it came back to life
    (listed,) = store.shards()
    assert listed.started
    assert not store.retire("shard-0001", stale_before=1500.0)
    assert store.retire("shard-0001", stale_before=2500.0)
    assert store.shard("shard-0001") is None
    assert not store.heartbeat("shard-0001", 3000.0)  # a retired shard's heartbeat does not bring it back


def test_a_hand_over_names_the_shard_s_next_execution(store: DynamoFleetStore) -> None:
    store.create_shard("shard-0001", 1000.0, "shard-0001-1")
    assert store.hand_over("shard-0001", "shard-0001-2")
    assert store.shard("shard-0001").execution == "shard-0001-2"  # type: ignore[union-attr]
    assert not store.hand_over("shard-0009", "shard-0009-2")


def test_a_nudge_is_kept_on_the_shard_until_cleared_and_a_nudge_made_meanwhile_stays(store: DynamoFleetStore) -> None:
    store.create_shard("shard-0001", 1000.0, "shard-0001-1")
    store.join("shard-0001", "fleet-job-0", "token-0", "exec-0", None)
    assert store.shard_of("fleet-job-0") == "shard-0001"
    assert store.shard_of("fleet-job-1") is None  # not enrolled
    assert store.nudge("shard-0001", "fleet-job-0")
    assert store.nudge("shard-0001", "fleet-job-0")  # twice: one nudge
    assert not store.nudge("shard-0009", "fleet-job-0")  # no such shard: nothing is created
    assert store.shard("shard-0009") is None
    seen = store.shard("shard-0001").nudged  # type: ignore[union-attr]
    assert seen == {"fleet-job-0"}
    store.nudge("shard-0001", "fleet-job-1")  # after the shard read its item
    store.clear_nudges("shard-0001", seen)
    assert store.shard("shard-0001").nudged == {"fleet-job-1"}  # type: ignore[union-attr]
    store.clear_nudges("shard-0001", frozenset({"fleet-job-1"}))
    assert store.shard("shard-0001").nudged == frozenset()  # type: ignore[union-attr]
    store.leave("shard-0001", "fleet-job-0")
    assert store.retire("shard-0001")
    store.clear_nudges("shard-0001", frozenset({"fleet-job-0"}))  # a retired shard's item is not made again
    assert store.shard("shard-0001") is None


def test_cancelling_a_job_on_a_shard_nudges_that_shard(control_plane: ControlPlane, tenant: Tenant) -> None:
    """The job store's listener (handlers/container.py): a RUNNING job cancelled through the API leaves a nudge on
    its relay shard's item; a job on no shard nudges nothing."""
    from controlplane.adapters.relay_fleet import FLEET_PK
    from controlplane.core.lifecycle import JobStatus
    from controlplane.handlers import container

    dynamodb = boto3.resource("dynamodb")
    state = dynamodb.Table(control_plane.names.table("state"))
    fleet = DynamoFleetStore(state, dynamodb.Table(control_plane.names.table("jobs")))
    jobs = container.job_store()
    ids = []
    for _ in range(2):
        response = control_plane.call(
            "POST", "/jobs", tenant.token, body={"provider_id": tenant.provider_id, "run": "sleep 60"}
        )
        job_id = response.json()["job_id"]
        for target in (JobStatus.LAUNCHING, JobStatus.PROVISIONING, JobStatus.RUNNING):
            jobs.transition(job_id, target)
        ids.append(job_id)
    state.delete_item(Key={"pk": FLEET_PK, "sk": "shard-0042"})
    fleet.create_shard("shard-0042", 1000.0, "shard-0042-1")
    assert fleet.join("shard-0042", ids[0], "token-0", "exec-0", None)
    for job_id in ids:
        assert control_plane.call("POST", f"/jobs/{job_id}/cancel", tenant.token).status == 200
    assert fleet.shard("shard-0042").nudged == {ids[0]}  # type: ignore[union-attr]
