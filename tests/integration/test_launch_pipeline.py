"""Validate → Bootstrap → Launch against the emulator, checking every resource created in the provider account."""

from __future__ import annotations

import base64
import json
from typing import Any

import boto3
import pytest

from controlplane.core import provisioning, sshkeys, userdata
from tests.integration.conftest import ControlPlane, Tenant, Workflow

GPU_JOB: dict[str, Any] = {
    "name": "finetune",
    "resources": {"accelerators": "T4", "disk_size": 120},
    "envs": {"HF_HOME": "/workspace/hf", "HF_TOKEN": "hf_secret_value"},
    "setup": "pip install -r requirements.txt",
    "run": "python train.py --epochs 3",
    "max_runtime_minutes": 90,
}
CPU_JOB: dict[str, Any] = {"resources": {"cpus": "2", "memory": "512MB"}, "run": "echo hello"}
NEWEST_DLAMI_24_04 = "ami-00000000000000014"  # local/data/amis.json: newest available x86_64 Ubuntu 24.04 DLAMI
NEWEST_UBUNTU_24_04 = "ami-00000000000000022"
PROPRIETARY_DLAMI = "ami-00000000000000017"  # V100 (Volta) is not driven by NVIDIA's open kernel modules


def submit(cp: ControlPlane, tenant: Tenant, body: dict[str, Any], **headers: str) -> str:
    response = cp.call("POST", "/jobs", tenant.token, body=body | {"provider_id": tenant.provider_id}, headers=headers)
    assert response.status == 202, response.body
    return str(response.json()["job_id"])


def job(cp: ControlPlane, tenant: Tenant, job_id: str) -> dict[str, Any]:
    response = cp.call("GET", f"/jobs/{job_id}", tenant.token)
    assert response.status == 200, response.body
    return dict(response.json())


def provider_ec2(tenant: Tenant) -> Any:
    """The provider's own view (its seed-policy keys), as a user would look in their console."""
    return boto3.client(
        "ec2", aws_access_key_id=tenant.keys.access_key_id, aws_secret_access_key=tenant.keys.secret_access_key
    )


def team_key(tenant: Tenant) -> Any:
    from controlplane.handlers import container

    return container.pipeline().secrets.team_key(tenant.team_id)


def test_given_a_gpu_job_when_the_workflow_runs_then_every_resource_is_right(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow
) -> None:
    job_id = submit(control_plane, tenant, GPU_JOB)

    state = workflow.run(job_id, tenant.team_id)

    ec2, iam = control_plane.admin("ec2"), control_plane.admin("iam")
    names = provisioning.TeamResources("transformerlab", tenant.team_id)
    record = state["bootstrap"]
    # Security group: the seed's name, team tags, SSH from the configured CIDR only.
    (group,) = ec2.describe_security_groups(GroupIds=[record["security_group_id"]])["SecurityGroups"]
    assert group["GroupName"] == names.security_group
    tags = {t["Key"]: t["Value"] for t in group["Tags"]}
    assert tags[provisioning.TEAM_TAG] == tenant.team_id
    assert tags[provisioning.PROVIDER_TAG] == tenant.provider_id
    (rule,) = group["IpPermissions"]
    assert (rule["IpProtocol"], rule["FromPort"], rule["ToPort"]) == ("tcp", 22, 22)
    assert [r["CidrIp"] for r in rule["IpRanges"]] == ["0.0.0.0/0"]
    # Key pair: the team's public key, imported under the seed's name, tagged.
    (pair,) = ec2.describe_key_pairs(KeyNames=[names.key_pair], IncludePublicKey=True)["KeyPairs"]
    assert sshkeys.key_blob(pair["PublicKey"]) == sshkeys.key_blob(team_key(tenant).public_openssh)
    assert {t["Key"]: t["Value"] for t in pair["Tags"]}[provisioning.TEAM_TAG] == tenant.team_id
    # Role: only EC2 may assume it; its inline policy lets an instance terminate only itself.
    role = iam.get_role(RoleName=names.role)["Role"]
    assert role["AssumeRolePolicyDocument"] == provisioning.role_trust_policy()
    inline = iam.get_role_policy(RoleName=names.role, PolicyName=provisioning.SELF_TERMINATION_POLICY_NAME)
    assert inline["PolicyDocument"] == provisioning.self_termination_policy(tenant.team_id)
    profile = iam.get_instance_profile(InstanceProfileName=names.instance_profile)["InstanceProfile"]
    assert [r["RoleName"] for r in profile["Roles"]] == [names.role]
    assert record["instance_profile_arn"] == profile["Arn"]

    # The instance.
    (instance,) = ec2.describe_instances(InstanceIds=[state["instance_id"]])["Reservations"][0]["Instances"]
    assert instance["InstanceType"] == "g4dn.xlarge"
    assert instance["ImageId"] == NEWEST_DLAMI_24_04
    assert instance["KeyName"] == names.key_pair
    assert [g["GroupId"] for g in instance["SecurityGroups"]] == [record["security_group_id"]]
    assert instance["IamInstanceProfile"]["Arn"] == profile["Arn"]
    assert instance["MetadataOptions"]["HttpTokens"] == "required"
    instance_tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
    assert instance_tags[provisioning.JOB_TAG] == job_id
    assert instance_tags[provisioning.ATTEMPT_TAG] == "1"
    assert instance_tags[provisioning.TEAM_TAG] == tenant.team_id
    assert instance_tags["Name"] == f"ec2jobs-finetune-{job_id}"
    shutdown = ec2.describe_instance_attribute(
        InstanceId=instance["InstanceId"], Attribute="instanceInitiatedShutdownBehavior"
    )
    assert shutdown["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate"
    (mapping,) = instance["BlockDeviceMappings"]
    (volume,) = ec2.describe_volumes(VolumeIds=[mapping["Ebs"]["VolumeId"]])["Volumes"]
    assert volume["Encrypted"] is True
    assert volume["Size"] == 120
    assert volume["VolumeType"] == "gp3"
    volume_tags = {t["Key"]: t["Value"] for t in volume.get("Tags", [])}
    assert (volume_tags.get(provisioning.JOB_TAG), volume_tags.get(provisioning.ATTEMPT_TAG)) == (job_id, "1")

    # User data: the job wrapper with this job's id, pinned host key and the relay's login key — and nothing of the
    # job's own text (its commands and envs travel in the start bundle, over SSH).
    raw = ec2.describe_instance_attribute(InstanceId=instance["InstanceId"], Attribute="userData")["UserData"]["Value"]
    script = userdata.decode(base64.b64decode(raw))
    assert script.startswith("#!/bin/bash")
    host_key = sshkeys.derive_host_key(team_key(tenant).host_key_seed, job_id)
    assert job_id in script
    for absent in ("python train.py --epochs 3", "pip install -r requirements.txt", "/workspace/hf", "hf_secret_value"):
        assert absent not in script
    assert host_key.public_openssh in script
    assert team_key(tenant).public_openssh in script

    # The job record, and the workflow's next step: relay the instance's output.
    assert state["launch"] == {"next": "relay", "wait_seconds": 0}
    record_view = job(control_plane, tenant, job_id)
    assert record_view["status"] == "PROVISIONING"
    assert record_view["instance_id"] == instance["InstanceId"]
    assert record_view["image_id"] == NEWEST_DLAMI_24_04
    assert record_view["ssh_host_key"] == host_key.public_openssh
    assert record_view["deadline_at"] > record_view["launched_at"]
    assert record_view["spec"]["envs"] == {"HF_HOME": "<redacted>", "HF_TOKEN": "<redacted>"}
    assert "hf_secret_value" not in json.dumps(record_view)


def test_given_a_cpu_job_then_it_boots_canonical_ubuntu(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow
) -> None:
    job_id = submit(control_plane, tenant, CPU_JOB)
    state = workflow.run(job_id, tenant.team_id)
    (reservation,) = control_plane.admin("ec2").describe_instances(InstanceIds=[state["instance_id"]])["Reservations"]
    assert reservation["Instances"][0]["ImageId"] == NEWEST_UBUNTU_24_04
    assert state["image_family"] == "cpu"


def test_given_a_v100_job_then_it_boots_the_proprietary_driver_dlami(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow
) -> None:
    job_id = submit(control_plane, tenant, {"resources": {"accelerators": "V100:8"}, "run": "nvidia-smi"})
    state = workflow.run(job_id, tenant.team_id)
    (reservation,) = control_plane.admin("ec2").describe_instances(InstanceIds=[state["instance_id"]])["Reservations"]
    assert reservation["Instances"][0]["InstanceType"] == "p3dn.24xlarge"
    assert reservation["Instances"][0]["ImageId"] == PROPRIETARY_DLAMI


def test_given_a_disk_smaller_than_the_image_then_it_is_raised_with_a_note(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow
) -> None:
    job_id = submit(control_plane, tenant, {"resources": {"disk_size": 8}, "run": "df -h"})
    state = workflow.run(job_id, tenant.team_id)
    ec2 = control_plane.admin("ec2")
    (reservation,) = ec2.describe_instances(InstanceIds=[state["instance_id"]])["Reservations"]
    volume_id = reservation["Instances"][0]["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]
    assert ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]["Size"] == 15  # the emulator's snapshot size
    assert any("disk_size raised from 8 to 15 GiB" in note for note in job(control_plane, tenant, job_id)["notes"])


def test_given_a_spot_job_then_spot_market_options_are_sent(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow
) -> None:
    job_id = submit(control_plane, tenant, {"resources": {"accelerators": "L4", "use_spot": True}, "run": "x"})
    state = workflow.run(job_id, tenant.team_id)
    (reservation,) = control_plane.admin("ec2").describe_instances(InstanceIds=[state["instance_id"]])["Reservations"]
    assert reservation["Instances"][0].get("InstanceLifecycle") == "spot"
    record = job(control_plane, tenant, job_id)
    assert (record["use_spot"], record["market"]) == (True, "spot")
    assert record["hourly_price"] is None  # no spot price is recorded; the on-demand price bounds it
    assert record["on_demand_price"] is not None


def test_given_a_second_job_then_bootstrap_is_reused_with_one_describe(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow, provider_calls: Any
) -> None:
    first = workflow.run(submit(control_plane, tenant, CPU_JOB), tenant.team_id)
    provider_calls.calls.clear()

    job_id = submit(control_plane, tenant, CPU_JOB)
    state = workflow.validate(workflow.api_input(job_id, tenant.team_id), job_id)
    second = workflow.bootstrap(state)

    assert second["bootstrap"] == first["bootstrap"]
    assert provider_calls.calls == [("ec2", "DescribeSecurityGroups")]


def test_given_a_deleted_security_group_then_bootstrap_recreates_it(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow
) -> None:
    first = workflow.run(submit(control_plane, tenant, CPU_JOB), tenant.team_id)
    ec2 = control_plane.admin("ec2")
    ec2.terminate_instances(InstanceIds=[first["instance_id"]])
    ec2.delete_security_group(GroupId=first["bootstrap"]["security_group_id"])

    second = workflow.run(submit(control_plane, tenant, CPU_JOB), tenant.team_id)

    assert second["bootstrap"]["security_group_id"] != first["bootstrap"]["security_group_id"]
    assert second["bootstrap"]["key_name"] == first["bootstrap"]["key_name"]


def test_given_a_team_bootstrapped_before_then_validate_passes_its_record_and_launch_needs_no_bootstrap(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow, provider_calls: Any
) -> None:
    first = workflow.run(submit(control_plane, tenant, CPU_JOB), tenant.team_id)
    provider_calls.calls.clear()

    job_id = submit(control_plane, tenant, CPU_JOB)
    state = workflow.validate(workflow.api_input(job_id, tenant.team_id), job_id)
    assert state["bootstrap"] == first["bootstrap"]  # the cached record (nothing secret in it)
    assert state["bootstrap_source"] == "cache"
    launched = workflow.launch(state)  # the `Bootstrapped?` choice skips the Bootstrap step

    assert launched["launch"]["next"] == "relay"
    assert job(control_plane, tenant, job_id)["status"] == "PROVISIONING"
    # no DescribeSecurityGroups: the provider's account sees only the launch's own calls
    assert provider_calls.calls == [("ec2", "DescribeInstances"), ("ec2", "RunInstances")]
    request = provider_calls.requests("RunInstances")[-1]
    assert request["SecurityGroupIds"] == [first["bootstrap"]["security_group_id"]]


def test_given_a_new_team_then_validate_passes_no_record_and_bootstrap_runs(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow
) -> None:
    job_id = submit(control_plane, tenant, CPU_JOB)
    state = workflow.validate(workflow.api_input(job_id, tenant.team_id), job_id)
    assert "bootstrap" not in state
    assert workflow.bootstrap(state)["bootstrap_source"] == "bootstrap"


def test_given_the_cached_security_group_was_deleted_then_launch_bootstraps_again_and_launches(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow, provider_calls: Any
) -> None:
    first = workflow.run(submit(control_plane, tenant, CPU_JOB), tenant.team_id)
    ec2 = control_plane.admin("ec2")
    ec2.terminate_instances(InstanceIds=[first["instance_id"]])
    ec2.delete_security_group(GroupId=first["bootstrap"]["security_group_id"])
    job_id = submit(control_plane, tenant, CPU_JOB)
    state = workflow.validate(workflow.api_input(job_id, tenant.team_id), job_id)
    assert state["bootstrap_source"] == "cache"

    answered = workflow.launch(state)  # RunInstances: InvalidGroup.NotFound

    assert answered["launch"]["next"] == "bootstrap"  # the `Launched?` choice goes to Bootstrap
    recorded = job(control_plane, tenant, job_id)
    assert recorded["status"] == "LAUNCHING"
    assert "bootstrap" not in workflow.validate(workflow.api_input(job_id, tenant.team_id), job_id)  # forgotten
    rebooted = workflow.bootstrap(answered)
    assert rebooted["bootstrap"]["security_group_id"] != first["bootstrap"]["security_group_id"]
    launched = workflow.launch(rebooted)
    assert launched["launch"]["next"] == "relay"
    assert job(control_plane, tenant, job_id)["status"] == "PROVISIONING"
    failed, retried = provider_calls.requests("RunInstances")[-2:]
    assert retried["SecurityGroupIds"] == [rebooted["bootstrap"]["security_group_id"]]
    assert retried["ClientToken"] != failed["ClientToken"]  # a new request, a new token


def test_given_a_security_group_deleted_after_this_executions_bootstrap_then_the_job_fails(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow
) -> None:
    from controlplane.core.errors import JobFailed

    job_id = submit(control_plane, tenant, CPU_JOB)
    state = workflow.bootstrap(workflow.validate(workflow.api_input(job_id, tenant.team_id), job_id))
    control_plane.admin("ec2").delete_security_group(GroupId=state["bootstrap"]["security_group_id"])

    with pytest.raises(JobFailed):  # checked this execution: no loop back to Bootstrap
        workflow.launch(state)

    recorded = job(control_plane, tenant, job_id)
    assert (recorded["status"], recorded["failure_reason"]) == ("FAILED", "LAUNCH_ERROR")
    assert "InvalidGroup.NotFound" in recorded["failure_message"]


def test_given_a_foreign_key_pair_of_our_name_then_jobs_launch_without_it(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow
) -> None:
    names = provisioning.TeamResources("transformerlab", tenant.team_id)
    control_plane.admin("ec2").import_key_pair(
        KeyName=names.key_pair, PublicKeyMaterial=sshkeys.generate("someone-else").public_openssh.encode()
    )
    job_id = submit(control_plane, tenant, CPU_JOB)

    state = workflow.run(job_id, tenant.team_id)

    assert state["bootstrap"]["key_name"] is None
    (reservation,) = control_plane.admin("ec2").describe_instances(InstanceIds=[state["instance_id"]])["Reservations"]
    assert "KeyName" not in reservation["Instances"][0]
    notes = job(control_plane, tenant, job_id)["notes"]
    assert any("is not ec2jobs' key" in note for note in notes)


@pytest.mark.parametrize("attempts", [2])
def test_given_the_launch_step_is_retried_then_the_job_keeps_one_instance(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow, provider_calls: Any, attempts: int
) -> None:
    job_id = submit(control_plane, tenant, CPU_JOB)
    state = workflow.bootstrap(workflow.validate(workflow.api_input(job_id, tenant.team_id), job_id))

    def crash() -> None:
        raise TimeoutError("Lambda timed out right after RunInstances returned")

    provider_calls.after("RunInstances", crash)
    with pytest.raises(TimeoutError):
        workflow.launch(state)
    assert job(control_plane, tenant, job_id)["status"] == "LAUNCHING"
    results = [workflow.launch(state) for _ in range(attempts)]

    tagged = control_plane.admin("ec2").describe_instances(
        Filters=[{"Name": f"tag:{provisioning.JOB_TAG}", "Values": [job_id]}]
    )["Reservations"]
    instances = [i for r in tagged for i in r["Instances"]]
    assert len(instances) == 1
    assert {r["instance_id"] for r in results} == {instances[0]["InstanceId"]}
    assert [op for _, op in provider_calls.calls].count("RunInstances") == 1
    assert job(control_plane, tenant, job_id)["instance_id"] == instances[0]["InstanceId"]


def test_given_a_job_cancelled_while_launching_then_its_instance_is_terminated(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow, provider_calls: Any
) -> None:
    from controlplane.core.lifecycle import JobStatus
    from controlplane.handlers import container

    job_id = submit(control_plane, tenant, CPU_JOB)
    state = workflow.bootstrap(workflow.validate(workflow.api_input(job_id, tenant.team_id), job_id))
    provider_calls.after("RunInstances", lambda: container.pipeline().jobs.transition(job_id, JobStatus.CANCELLED))

    from controlplane.core.errors import JobNotActive

    with pytest.raises(JobNotActive):
        workflow.launch(state)

    tagged = control_plane.admin("ec2").describe_instances(
        Filters=[{"Name": f"tag:{provisioning.JOB_TAG}", "Values": [job_id]}]
    )["Reservations"]
    (instance,) = [i for r in tagged for i in r["Instances"]]
    assert instance["State"]["Name"] in {"shutting-down", "terminated"}
    assert job(control_plane, tenant, job_id)["status"] == "CANCELLED"
