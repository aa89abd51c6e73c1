"""One relay loop per job, and a new one when it died: the relay lease on the job record, the reconciler starting
a relay-only execution, instances of ended jobs, and providers whose keys were revoked — against the emulator."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from controlplane.core import provisioning
from controlplane.core.lifecycle import JobStatus
from controlplane.core.models import utcnow
from controlplane.service.reconcile import Reconciler, ReconcileSettings
from controlplane.service.relay import RelayService, RelaySettings
from tests.integration.conftest import (
    ControlPlane,
    ProviderCalls,
    Tenant,
    Workflow,
    module_control_plane,
    register_provider,
)

# The reconciler sweeps every active job: tables of this module's own, not every other module's jobs.
control_plane = module_control_plane()

TASK = {"resources": {"cpus": "2"}, "run": "sleep 1000"}


def reconciler(clock_offset: dt.timedelta = dt.timedelta(0), **settings: Any) -> Reconciler:
    from controlplane.handlers import container

    built = container.reconciler()
    built.settings = ReconcileSettings(**({"orphan_grace_seconds": 3600.0} | settings))
    built.clock = lambda: utcnow() + clock_offset
    return built


def launched(cp: ControlPlane, tenant: Tenant, workflow: Workflow, provider_id: str | None = None) -> dict[str, Any]:
    body = TASK | {"provider_id": provider_id or tenant.provider_id}
    response = cp.call("POST", "/jobs", tenant.token, body=body)
    assert response.status == 202, response.body
    return dict(workflow.run(response.json()["job_id"], tenant.team_id))


def jobs() -> Any:
    from controlplane.handlers import container

    return container.pipeline().jobs


def relay_executions(cp: ControlPlane, job_id: str) -> list[dict[str, Any]]:
    sfn = cp.admin("stepfunctions")
    found = sfn.list_executions(stateMachineArn=cp.state_machine_arn)["executions"]
    return [sfn.describe_execution(executionArn=e["executionArn"]) for e in found if e["name"].startswith(job_id)]


# -- the lease ------------------------------------------------------------------------------------------------------


def test_one_owner_holds_the_relay_lease_until_it_expires(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow
) -> None:
    job_id = launched(control_plane, tenant, workflow)["job_id"]  # PROVISIONING
    now = utcnow()
    later = now + dt.timedelta(minutes=5)

    assert jobs().claim_relay(job_id, "loop-a", later, now)
    assert not jobs().claim_relay(job_id, "loop-b", later, now)  # held by a
    assert jobs().claim_relay(job_id, "loop-a", later, now)  # a renews
    assert jobs().claim_relay(job_id, "loop-b", later, later + dt.timedelta(seconds=1))  # expired: b takes it
    assert jobs().get(job_id).relay_owner == "loop-b"


def test_no_lease_on_an_ended_job(control_plane: ControlPlane, tenant: Tenant, workflow: Workflow) -> None:
    job_id = launched(control_plane, tenant, workflow)["job_id"]
    jobs().transition(job_id, JobStatus.FAILED, fields={"failure_reason": "LAUNCH_ERROR"})

    assert not jobs().claim_relay(job_id, "loop-a", utcnow() + dt.timedelta(minutes=5), utcnow())


def test_a_cancelled_job_can_be_leased_to_drain_its_tail(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow
) -> None:
    """The relay stops a cancelled job on its instance and reads what it wrote to the end (the window is the
    relay's to check: outcomes.streams_after_end)."""
    job_id = launched(control_plane, tenant, workflow)["job_id"]
    jobs().transition(job_id, JobStatus.CANCELLED)

    assert jobs().claim_relay(job_id, "loop-a", utcnow() + dt.timedelta(minutes=5), utcnow())


def test_a_relay_invocation_stops_when_another_loop_holds_the_lease(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow
) -> None:
    from controlplane.handlers import container

    job_id = launched(control_plane, tenant, workflow)["job_id"]
    jobs().claim_relay(job_id, "loop-a", utcnow() + dt.timedelta(minutes=5), utcnow())
    pipeline = container.pipeline()
    relay = pipeline.relayer
    contender = RelayService(
        relay.jobs, relay.logs, relay.secrets, relay.locator, relay.connector, RelaySettings(), lease=jobs()
    )

    outcome = contender.relay(job_id, lambda: 900.0, owner="loop-b")

    assert outcome.finished
    assert "another relay loop" in outcome.detail
    assert jobs().get(job_id).relay_owner == "loop-a"


# -- the reconciler restarts dead loops ---------------------------------------------------------------------------


def test_a_job_whose_relay_never_started_gets_a_relay_only_execution_once(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow
) -> None:
    job_id = launched(control_plane, tenant, workflow)["job_id"]  # launched, but no relay ever claimed it

    assert job_id not in reconciler().run().relays_restarted  # just launched: its relay may be starting
    report = reconciler(clock_offset=dt.timedelta(minutes=3)).run()

    assert job_id in report.relays_restarted
    (execution,) = relay_executions(control_plane, f"{job_id}-relay-")
    assert execution["name"] == f"{job_id}-relay-1"
    assert json.loads(execution["input"]) == {"resume_relay": True, "job_id": job_id, "team_id": tenant.team_id}
    assert jobs().get(job_id).relay_restarts == 1
    # The next sweep leaves the new loop time to claim the lease.
    assert job_id not in reconciler(clock_offset=dt.timedelta(minutes=3)).run().relays_restarted


def test_a_job_whose_relay_lease_is_live_is_left_alone_and_an_expired_one_is_restarted(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow
) -> None:
    job_id = launched(control_plane, tenant, workflow)["job_id"]
    jobs().claim_relay(job_id, "loop-a", utcnow() + dt.timedelta(minutes=10), utcnow())

    assert job_id not in reconciler(clock_offset=dt.timedelta(minutes=5)).run().relays_restarted
    assert job_id in reconciler(clock_offset=dt.timedelta(minutes=11)).run().relays_restarted


def test_a_loop_that_claimed_the_lease_after_the_sweep_read_the_job_is_not_restarted(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow, monkeypatch: Any
) -> None:
    """A sweep decides on jobs it read seconds before (a slow sweep of many jobs): a relay shard that claimed the
    lease meanwhile is alive, and the restart's conditional write refuses rather than starting a second workflow."""
    job_id = launched(control_plane, tenant, workflow)["job_id"]  # never leased: stale after 120 s
    sweep = reconciler(clock_offset=dt.timedelta(minutes=3))
    read = sweep.jobs.active_jobs

    def read_then_claimed() -> list[Any]:
        found = read()
        assert jobs().claim_relay(job_id, "shard-loop", utcnow() + dt.timedelta(minutes=10), utcnow())
        return found  # type: ignore[no-any-return]

    monkeypatch.setattr(sweep.jobs, "active_jobs", read_then_claimed)
    assert job_id not in sweep.run().relays_restarted
    assert jobs().get(job_id).relay_restarts == 0
    assert [e["name"] for e in relay_executions(control_plane, job_id) if "-relay-" in e["name"]] == []


# -- instances of ended jobs and of other providers ------------------------------------------------------------------


def test_an_ended_jobs_instance_still_running_is_terminated_after_a_short_grace(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow
) -> None:
    state = launched(control_plane, tenant, workflow)
    jobs().transition(state["job_id"], JobStatus.CANCELLED)  # ended, but its instance failed to terminate itself

    assert state["instance_id"] not in reconciler(ended_grace_seconds=120).run().terminated
    later = reconciler(clock_offset=dt.timedelta(minutes=3), ended_grace_seconds=120).run()
    assert state["instance_id"] in later.terminated  # the orphan grace (an hour here) does not apply


def test_an_instance_of_a_live_job_of_another_provider_of_the_same_account_is_not_an_orphan(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow, provider_keys: Any
) -> None:
    other = register_provider(control_plane, tenant.token, provider_keys(), name="second key")
    state = launched(control_plane, tenant, workflow, provider_id=other)

    report = reconciler(clock_offset=dt.timedelta(minutes=3), orphan_grace_seconds=0.0).run()

    assert state["instance_id"] not in report.terminated
    assert jobs().get(state["job_id"]).status == JobStatus.PROVISIONING


def test_the_reconciler_records_the_final_state_of_an_ended_jobs_instance(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow
) -> None:
    state = launched(control_plane, tenant, workflow)
    jobs().transition(state["job_id"], JobStatus.CANCELLED)
    control_plane.admin("ec2").terminate_instances(InstanceIds=[state["instance_id"]])  # its event was lost

    reconciler().run()

    assert jobs().get(state["job_id"]).instance_state in {"shutting-down", "terminated"}


# -- revoked provider keys --------------------------------------------------------------------------------------------


def test_revoked_keys_are_reported_and_a_job_past_its_deadline_fails_credentials(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow, provider_calls: ProviderCalls
) -> None:
    state = launched(control_plane, tenant, workflow)
    provider_calls.fail("DescribeInstances", "AuthFailure", "AWS was not able to validate the credentials", None)

    now = reconciler().run()
    assert any("credentials are rejected (AuthFailure)" in error for error in now.errors)
    assert jobs().get(state["job_id"]).status == JobStatus.PROVISIONING  # before its deadline: the instance runs

    reconciler(clock_offset=dt.timedelta(days=2)).run()

    record = jobs().get(state["job_id"])
    assert (record.status, record.failure_reason) == (JobStatus.FAILED, "CREDENTIALS")
    assert state["instance_id"] in (record.failure_message or "")
    tagged = control_plane.admin("ec2").describe_instances(
        Filters=[{"Name": f"tag:{provisioning.JOB_TAG}", "Values": [state["job_id"]]}]
    )["Reservations"]
    assert len(tagged) == 1


def test_an_invocation_writes_nothing_once_its_lease_has_ended(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow
) -> None:
    import pytest

    from controlplane.handlers import container
    from controlplane.service.relay import LeaseExpired
    from controlplane.service.relay_lease import LeaseHold

    job_id = launched(control_plane, tenant, workflow)["job_id"]
    relay = container.pipeline().relayer

    with pytest.raises(LeaseExpired):
        relay._store(job_id, 0, b"late line\n", LeaseHold.ended(relay.clock))

    assert relay.logs.progress(job_id).committed == 0
    assert relay.logs.chunks(job_id, 0, 1 << 20) == []
