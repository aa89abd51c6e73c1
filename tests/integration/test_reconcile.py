"""The reconciler against the emulator: jobs whose instance vanished without an event end, instances past their
deadline and orphans are terminated, stale launches fail — with one DescribeInstances per provider × region."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from botocore.exceptions import ClientError

from controlplane.core import provisioning
from controlplane.core.lifecycle import FailureReason, JobStatus
from controlplane.service.reconcile import Reconciler, ReconcileSettings
from local.ec2_consistency import LaggingDescribe, lagging_clients
from tests.integration.conftest import ControlPlane, ProviderCalls, Tenant, Workflow, module_control_plane

# The reconciler sweeps every active job: tables of this module's own, not every other module's jobs.
control_plane = module_control_plane()

TASK = {"resources": {"cpus": "2"}, "run": "sleep 1000"}


def reconciler(clock_offset: dt.timedelta = dt.timedelta(0), orphan_grace: float = 0.0) -> Reconciler:
    from controlplane.handlers import container

    built = container.reconciler()
    built.settings = ReconcileSettings(launch_timeout_seconds=900, orphan_grace_seconds=orphan_grace)
    built.clock = lambda: dt.datetime.now(dt.UTC) + clock_offset
    return built


def container_jobs() -> Any:
    from controlplane.handlers import container

    return container.pipeline().jobs


def launched(cp: ControlPlane, tenant: Tenant, workflow: Workflow) -> dict[str, Any]:
    response = cp.call("POST", "/jobs", tenant.token, body=TASK | {"provider_id": tenant.provider_id})
    assert response.status == 202, response.body
    return dict(workflow.run(response.json()["job_id"], tenant.team_id))


def job(cp: ControlPlane, tenant: Tenant, job_id: str) -> dict[str, Any]:
    return dict(cp.call("GET", f"/jobs/{job_id}", tenant.token).json())


def state_of(cp: ControlPlane, instance_id: str) -> str:
    (reservation,) = cp.admin("ec2").describe_instances(InstanceIds=[instance_id])["Reservations"]
    return str(reservation["Instances"][0]["State"]["Name"])


def test_a_job_whose_instance_ended_without_an_event_is_finalized(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow
) -> None:
    state = launched(control_plane, tenant, workflow)
    control_plane.admin("ec2").terminate_instances(InstanceIds=[state["instance_id"]])  # no event reaches us

    report = reconciler().run()

    assert state["job_id"] in report.finalized
    record = job(control_plane, tenant, state["job_id"])
    assert (record["status"], record["failure_reason"]) == ("FAILED", "INSTANCE_LOST")
    logs = control_plane.call("GET", f"/jobs/{state['job_id']}/logs", tenant.token).json()
    assert (logs["final"], logs["complete"]) == (True, False)  # nothing more will come; what it wrote last is lost


def test_an_instance_past_its_deadline_is_terminated_and_the_job_fails_max_runtime(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow
) -> None:
    state = launched(control_plane, tenant, workflow)

    report = reconciler(clock_offset=dt.timedelta(days=1)).run()  # a day later: past max runtime + grace

    assert state["instance_id"] in report.terminated
    assert state_of(control_plane, state["instance_id"]) in {"shutting-down", "terminated"}
    record = job(control_plane, tenant, state["job_id"])
    assert (record["status"], record["failure_reason"]) == ("FAILED", "MAX_RUNTIME")


def test_an_orphan_instance_of_ours_is_terminated_after_the_grace_period(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow
) -> None:
    state = launched(control_plane, tenant, workflow)
    ec2 = control_plane.admin("ec2")
    (instance,) = ec2.describe_instances(InstanceIds=[state["instance_id"]])["Reservations"][0]["Instances"]
    tags = [t for t in instance["Tags"] if t["Key"] != provisioning.JOB_TAG]  # ours, but no job explains it
    orphan = ec2.run_instances(
        ImageId=instance["ImageId"],
        InstanceType="t3.micro",
        MinCount=1,
        MaxCount=1,
        TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
    )["Instances"][0]["InstanceId"]

    assert orphan not in reconciler(orphan_grace=3600).run().terminated  # still within grace
    assert orphan in reconciler(orphan_grace=0).run().terminated
    assert state_of(control_plane, orphan) in {"shutting-down", "terminated"}
    assert state_of(control_plane, state["instance_id"]) == "running"  # its job's instance is not an orphan


def test_a_job_that_never_launched_fails_after_the_launch_timeout(control_plane: ControlPlane, tenant: Tenant) -> None:
    response = control_plane.call("POST", "/jobs", tenant.token, body=TASK | {"provider_id": tenant.provider_id})
    job_id = response.json()["job_id"]

    assert job_id not in reconciler().run().finalized  # fresh: left alone
    assert job_id in reconciler(clock_offset=dt.timedelta(hours=1)).run().finalized

    record = job(control_plane, tenant, job_id)
    assert (record["status"], record["failure_reason"]) == ("FAILED", "LAUNCH_ERROR")


def test_one_describe_instances_per_provider_and_region(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow, provider_calls: ProviderCalls
) -> None:
    launched(control_plane, tenant, workflow)
    launched(control_plane, tenant, workflow)
    provider_calls.calls.clear()

    report = reconciler().run()

    describes = [op for _, op in provider_calls.calls if op == "DescribeInstances"]
    assert len(describes) == report.described
    assert report.described >= 1
    tagged = control_plane.admin("ec2").describe_instances(
        Filters=[{"Name": f"tag:{provisioning.TEAM_TAG}", "Values": [tenant.team_id]}]
    )["Reservations"]
    assert tagged


# -- AWS is eventually consistent; one bad job never stops a sweep ----------------------------------------------------


def lagging(built: Reconciler, hidden: set[str], hidden_by_id: set[str] | None = None) -> Reconciler:
    """The reconciler's provider clients see DescribeInstances as AWS may right after RunInstances."""
    built.clients = lagging_clients(built.clients, hidden, hidden_by_id)
    return built


def test_moto_shows_an_instance_at_once_so_eventual_consistency_is_emulated(control_plane: ControlPlane) -> None:
    ec2 = control_plane.admin("ec2")
    image = ec2.describe_images()["Images"][0]["ImageId"]
    instance_id = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    assert ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]  # if moto ever lags, revisit the wrapper
    hidden = LaggingDescribe(ec2, {instance_id})
    assert hidden.describe_instances(Filters=[{"Name": "instance-id", "Values": [instance_id]}])["Reservations"] == []
    with pytest.raises(ClientError, match=r"InvalidInstanceID\.NotFound"):
        hidden.describe_instances(InstanceIds=[instance_id])
    ec2.terminate_instances(InstanceIds=[instance_id])


def test_a_just_launched_instance_missing_from_describe_instances_is_not_yet_visible_not_lost(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow
) -> None:
    state = launched(control_plane, tenant, workflow)
    instance_id = state["instance_id"]

    report = lagging(reconciler(), {instance_id}).run()  # one sweep cannot see it yet

    assert state["job_id"] not in report.finalized
    assert job(control_plane, tenant, state["job_id"])["status"] == "PROVISIONING"
    assert instance_id not in reconciler().run().terminated  # and the next sweep does not kill it
    assert state_of(control_plane, instance_id) == "running"


def test_past_the_grace_a_missing_instance_is_confirmed_by_id_before_the_job_is_lost(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow
) -> None:
    state = launched(control_plane, tenant, workflow)
    instance_id, later = state["instance_id"], dt.timedelta(minutes=11)  # past the 10-minute visibility grace

    # Missing from the team's listing (e.g. its tags are not visible yet), but there when asked for by id: alive.
    report = lagging(reconciler(clock_offset=later), {instance_id}, hidden_by_id=set()).run()
    assert state["job_id"] not in report.finalized
    assert job(control_plane, tenant, state["job_id"])["status"] == "PROVISIONING"

    # Asked for by id, EC2 says it does not exist: the job's instance is lost.
    report = lagging(reconciler(clock_offset=later), {instance_id}).run()
    assert state["job_id"] in report.finalized
    record = job(control_plane, tenant, state["job_id"])
    assert (record["status"], record["failure_reason"]) == ("FAILED", "INSTANCE_LOST")


def test_a_spot_interrupted_jobs_instance_keeps_its_notice_window_however_old_it_is(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow
) -> None:
    state = launched(control_plane, tenant, workflow)
    ended = container_jobs().transition(
        state["job_id"],
        JobStatus.FAILED,
        fields={"failure_reason": FailureReason.SPOT_INTERRUPTED, "failure_message": "AWS reclaims it"},
    )
    assert ended.ended_at is not None
    instance_id = state["instance_id"]

    def sweep(after_end: float) -> Reconciler:
        offset = ended.ended_at + dt.timedelta(seconds=after_end) - dt.datetime.now(dt.UTC)
        built = reconciler(clock_offset=offset)  # the instance is far older than the orphan grace (0 here)
        built.settings = ReconcileSettings(orphan_grace_seconds=0, ended_grace_seconds=30)
        return built

    assert instance_id not in sweep(5).run().terminated  # it still streams its last lines
    assert instance_id not in sweep(140).run().terminated  # AWS's two-minute notice + the ended grace
    assert instance_id in sweep(160).run().terminated  # AWS did not reclaim it: ours to end


def test_one_job_whose_update_fails_never_stops_the_sweep(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow
) -> None:
    bad = launched(control_plane, tenant, workflow)
    good = launched(control_plane, tenant, workflow)
    ec2 = control_plane.admin("ec2")
    ec2.terminate_instances(InstanceIds=[bad["instance_id"], good["instance_id"]])  # both events lost
    built = reconciler()
    store = built.jobs

    class ItemTooLarge:
        """The jobs table refuses every update of the bad job (e.g. its item would exceed 400 KB)."""

        def __getattr__(self, name: str) -> Any:
            return getattr(store, name)

        def active_jobs(self) -> list[Any]:
            return sorted(store.active_jobs(), key=lambda j: j.job_id != bad["job_id"])  # the bad one first

        def set_instance_state(self, job_id: str, state: str) -> None:
            self._refuse(job_id)
            store.set_instance_state(job_id, state)

        def transition(self, job_id: str, *args: Any, **kwargs: Any) -> Any:
            self._refuse(job_id)
            return store.transition(job_id, *args, **kwargs)

        @staticmethod
        def _refuse(job_id: str) -> None:
            if job_id == bad["job_id"]:
                error = {"Code": "ValidationException", "Message": "Item size has exceeded the maximum allowed size"}
                raise ClientError({"Error": error}, "UpdateItem")

    built.jobs = ItemTooLarge()  # type: ignore[assignment]
    report = built.run()

    assert good["job_id"] in report.finalized
    assert report.job_failures == 1
    assert any(bad["job_id"] in error and "ValidationException" in error for error in report.errors)
    assert job(control_plane, tenant, good["job_id"])["status"] == "FAILED"


# -- managed recovery (issue 16) ------------------------------------------------------------------------------------

RECOVERING_TASK = TASK | {"job_recovery": {"max_restarts": 2}}


def test_a_lost_instance_of_a_job_with_recovery_ends_the_attempt_not_the_job(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow
) -> None:
    response = control_plane.call(
        "POST", "/jobs", tenant.token, body=RECOVERING_TASK | {"provider_id": tenant.provider_id}
    )
    state = dict(workflow.run(response.json()["job_id"], tenant.team_id))
    control_plane.admin("ec2").terminate_instances(InstanceIds=[state["instance_id"]])  # no event reaches us

    reconciler().run()

    record = job(control_plane, tenant, state["job_id"])
    assert record["status"] == "RECOVERING"
    assert [(a["attempt"], a["end_reason"], a["instance_id"]) for a in record["attempts"]] == [
        (1, "INSTANCE_LOST", state["instance_id"])
    ]
    logs = control_plane.call("GET", f"/jobs/{state['job_id']}/logs", tenant.token).json()
    assert logs["final"] is False  # the next attempt's output follows


def test_an_earlier_attempts_instance_is_terminated_never_adopted(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow
) -> None:
    state = launched(control_plane, tenant, workflow)
    ec2 = control_plane.admin("ec2")
    (instance,) = ec2.describe_instances(InstanceIds=[state["instance_id"]])["Reservations"][0]["Instances"]
    # another live instance tagged for the same job (an earlier attempt's, say): one job, one instance
    other = ec2.run_instances(
        ImageId=instance["ImageId"],
        InstanceType="t3.micro",
        MinCount=1,
        MaxCount=1,
        TagSpecifications=[{"ResourceType": "instance", "Tags": instance["Tags"]}],
    )["Instances"][0]["InstanceId"]

    report = reconciler().run()

    assert other in report.terminated
    assert state_of(control_plane, other) in {"shutting-down", "terminated"}
    assert state_of(control_plane, state["instance_id"]) == "running"
    assert job(control_plane, tenant, state["job_id"])["instance_id"] == state["instance_id"]


def test_a_recovering_job_whose_workflow_stopped_gets_a_relay_execution_that_runs_recover(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow
) -> None:
    response = control_plane.call(
        "POST", "/jobs", tenant.token, body=RECOVERING_TASK | {"provider_id": tenant.provider_id}
    )
    state = dict(workflow.run(response.json()["job_id"], tenant.team_id))
    control_plane.admin("ec2").terminate_instances(InstanceIds=[state["instance_id"]])
    reconciler().run()  # the attempt ends: RECOVERING, and nobody runs Recover (this test's workflow stopped)
    assert job(control_plane, tenant, state["job_id"])["status"] == "RECOVERING"

    restarter = RecordingRestarter()
    sweep = reconciler(clock_offset=dt.timedelta(minutes=10))
    sweep.relays = restarter
    report = sweep.run()

    assert state["job_id"] in report.relays_restarted
    assert ("relay", state["job_id"]) in restarter.started  # (the module's other jobs have no relay either)


def test_a_job_waiting_for_capacity_past_its_max_wait_fails_capacity(
    control_plane: ControlPlane, tenant: Tenant
) -> None:
    response = control_plane.call(
        "POST", "/jobs", tenant.token, body=TASK | {"provider_id": tenant.provider_id, "job_recovery": {}}
    )
    job_id = response.json()["job_id"]
    jobs = container_jobs()
    jobs.transition(job_id, JobStatus.LAUNCHING)
    now = dt.datetime.now(dt.UTC)
    jobs.transition(job_id, JobStatus.WAITING_CAPACITY, fields={"waiting_since": now, "capacity_retry_at": now})

    restarter = RecordingRestarter()
    sweep = reconciler(clock_offset=dt.timedelta(minutes=5))  # the retry is long overdue: the workflow died
    sweep.relays = restarter
    sweep.run()
    assert ("launch", job_id) in restarter.started
    assert job(control_plane, tenant, job_id)["status"] == "WAITING_CAPACITY"

    report = reconciler(clock_offset=dt.timedelta(hours=2)).run()  # past 60 minutes + the launch timeout
    assert job_id in report.finalized
    record = job(control_plane, tenant, job_id)
    assert (record["status"], record["failure_reason"]) == ("FAILED", "CAPACITY")


class RecordingRestarter:
    def __init__(self) -> None:
        self.started: list[tuple[str, str]] = []

    def resume_relay(self, job: Any, attempt: int) -> str:
        self.started.append(("relay", job.job_id))
        return "arn"

    def resume_launch(self, job: Any, attempt: int) -> str:
        self.started.append(("launch", job.job_id))
        return "arn"
