"""The seed policy is the ceiling: with an IAM user holding exactly the seed's policy JSON and the emulator's IAM
enforcement on, everything the control plane does with a provider's keys succeeds; something else is denied; and
every AWS operation it called is allowed by the policy (checked by evaluating the policy, including the
permissions AWS checks implicitly: iam:PassRole for the instance profile and ec2:CreateTags for TagSpecifications)."""

from __future__ import annotations

import fnmatch
import json
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from controlplane.adapters.ec2 import Ec2Account
from controlplane.core import provisioning
from local.iam_policy import Request
from local.iam_policy import allowed as strictly_allowed
from tests.integration.conftest import REPO, SEED_POLICY, ControlPlane, Keys, ProviderCalls, Workflow

CPU_JOB = {"resources": {"cpus": "2+"}, "run": "echo hi"}
GPU_JOB = {"resources": {"accelerators": "L4"}, "run": "nvidia-smi"}
ACCOUNT = "123456789012"
PREFIX = "transformerlab"
HARDENED_POLICY = json.loads((REPO / "policy" / "provider-policy-hardened.json").read_text())
BOUNDARY_POLICY = (REPO / "policy" / "transformerlab-ec2-boundary.json").read_text()
BOUNDARY_ARN = f"arn:aws:iam::{ACCOUNT}:policy/{provisioning.boundary_policy_name(PREFIX)}"
POLICIES = {"seed": SEED_POLICY, "hardened": HARDENED_POLICY}


def ensure_boundary(control_plane: ControlPlane) -> None:
    """The one step the hardened policy asks of the account's administrator: create the boundary policy."""
    iam = control_plane.admin("iam")
    try:
        iam.get_policy(PolicyArn=BOUNDARY_ARN)
    except ClientError:
        iam.create_policy(PolicyName=provisioning.boundary_policy_name(PREFIX), PolicyDocument=BOUNDARY_POLICY)


def context_for(action: str, boundary: str | None) -> dict[str, str]:
    """The request context AWS evaluates these calls with (what the conditions of the hardened policy read)."""
    if action in {"iam:CreateRole", "iam:PutRolePolicy"} and boundary:
        return {"iam:PermissionsBoundary": boundary}
    if action == "iam:PassRole":
        return {"iam:PassedToService": "ec2.amazonaws.com"}
    return {}


def allowed(policy: dict[str, Any], action: str, resource: str) -> bool:
    """Identity-policy evaluation for Allow statements without conditions (the seed has none): an explicit Allow
    whose Action and Resource patterns match."""
    statements = policy["Statement"]
    for statement in statements if isinstance(statements, list) else [statements]:
        if statement.get("Effect") != "Allow" or "Condition" in statement:
            continue
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        if any(fnmatch.fnmatchcase(action.lower(), a.lower()) for a in actions) and any(
            fnmatch.fnmatchcase(resource, r) for r in resources
        ):
            return True
    return False


def required_permissions(calls: list[tuple[str, str]], team_id: str) -> set[tuple[str, str]]:
    """(action, resource) pairs AWS authorises for these calls, including the implicit ones."""
    names = provisioning.TeamResources(PREFIX, team_id)
    role_arn = f"arn:aws:iam::{ACCOUNT}:role/{names.role}"
    profile_arn = f"arn:aws:iam::{ACCOUNT}:instance-profile/{names.instance_profile}"
    iam_resource = {
        "GetRole": role_arn,
        "CreateRole": role_arn,
        "PutRolePolicy": role_arn,
        "GetRolePolicy": role_arn,
        "GetInstanceProfile": profile_arn,
        "CreateInstanceProfile": profile_arn,
        "AddRoleToInstanceProfile": profile_arn,
    }
    needed: set[tuple[str, str]] = set()
    for service, operation in calls:
        if service == "iam":
            needed.add((f"iam:{operation}", iam_resource.get(operation, "*")))
            if operation == "AddRoleToInstanceProfile":
                needed.add(("iam:PassRole", role_arn))
        else:
            needed.add((f"{service}:{operation}", "*"))
        if operation == "RunInstances":
            needed |= {("iam:PassRole", role_arn), ("ec2:CreateTags", "*")}
        if operation in {"CreateSecurityGroup", "ImportKeyPair"}:
            needed.add(("ec2:CreateTags", "*"))
    return needed


def add_provider(cp: ControlPlane, token: str, keys: Keys, name: str = "seed") -> str:
    body = {
        "name": name,
        "region": "us-east-1",
        "access_key_id": keys.access_key_id,
        "secret_access_key": keys.secret_access_key,
    }
    response = cp.call("POST", "/providers", token, body=body)
    assert response.status == 201, response.body
    return str(response.json()["provider_id"])


def submit(cp: ControlPlane, token: str, provider_id: str, body: dict[str, Any]) -> str:
    response = cp.call("POST", "/jobs", token, body=body | {"provider_id": provider_id})
    assert response.status == 202, response.body
    return str(response.json()["job_id"])


@pytest.mark.parametrize("policy_name", ["seed", "hardened"])
def test_given_exactly_the_seed_policy_then_validate_bootstrap_launch_and_terminate_succeed_within_it(
    control_plane: ControlPlane,
    provider_calls: ProviderCalls,
    provider_keys: Any,
    workflow: Workflow,
    policy_name: str,
) -> None:
    """Under the seed policy as written and under the hardened one (detected: nothing tells ec2jobs which)."""
    from controlplane.handlers import container

    policy = POLICIES[policy_name]
    team_id = f"{policy_name}-policy-team"
    if policy_name == "hardened":
        ensure_boundary(control_plane)
    token = container.get().teams.issue_token(team_id)
    keys = provider_keys(policy)
    provider_id = add_provider(control_plane, token, keys)  # STS + the DryRun policy probe
    state_table = boto3.resource("dynamodb").Table(control_plane.names.table("state"))
    for family in ("gpu", "cpu"):  # earlier tests cached the AMIs: make this scenario look them up
        state_table.delete_item(Key={"pk": "IMAGE#us-east-1", "sk": family})

    first = workflow.run(submit(control_plane, token, provider_id, GPU_JOB), team_id)  # first bootstrap
    container.pipeline().bootstrapper.forget(provider_id, "us-east-1")
    second = workflow.run(submit(control_plane, token, provider_id, CPU_JOB), team_id)  # repeat: all exists
    third = workflow.run(submit(control_plane, token, provider_id, CPU_JOB), team_id)  # cached
    assert first["bootstrap"]["security_group_id"] == second["bootstrap"]["security_group_id"]
    assert third["bootstrap"] == second["bootstrap"]

    provider = container.get().providers.get(team_id, provider_id)
    credentials = container.pipeline().secrets.get_provider_credentials(provider.secret_arn)
    from controlplane.adapters import aws

    ec2 = Ec2Account(aws.provider_client("ec2", credentials, "us-east-1"), "us-east-1")
    ids = [first["instance_id"], second["instance_id"], third["instance_id"]]
    terminating = ec2.terminate(ids)
    assert {t["InstanceId"] for t in terminating} == set(ids)

    actions = {f"{service}:{operation}" for service, operation in provider_calls.calls}
    assert {
        "sts:GetCallerIdentity",
        "ec2:DescribeKeyPairs",
        "ec2:DescribeSecurityGroups",
        "ec2:CreateSecurityGroup",
        "ec2:AuthorizeSecurityGroupIngress",
        "ec2:ImportKeyPair",
        "ec2:DescribeImages",
        "ec2:DescribeInstances",
        "ec2:RunInstances",
        "ec2:TerminateInstances",
        "iam:GetRole",
        "iam:CreateRole",
        "iam:GetRolePolicy",
        "iam:PutRolePolicy",
        "iam:GetInstanceProfile",
        "iam:CreateInstanceProfile",
        "iam:AddRoleToInstanceProfile",
    } <= actions, "the scenario must exercise every kind of call"
    boundary = first["bootstrap"].get("permissions_boundary_arn")
    assert boundary == (BOUNDARY_ARN if policy_name == "hardened" else None)
    role = control_plane.admin("iam").get_role(RoleName=provisioning.TeamResources(PREFIX, team_id).role)["Role"]
    assert role.get("PermissionsBoundary", {}).get("PermissionsBoundaryArn") == boundary
    denied = sorted(
        (action, resource)
        for action, resource in required_permissions(provider_calls.calls, team_id)
        if not strictly_allowed([policy], Request(action, resource, context_for(action, boundary)))
    )
    assert denied == [], f"calls outside the {policy_name} policy: {denied}"


def test_given_seed_policy_keys_then_anything_else_is_denied(control_plane: ControlPlane, provider_keys: Any) -> None:
    keys = provider_keys(SEED_POLICY)
    session = boto3.session.Session(aws_access_key_id=keys.access_key_id, aws_secret_access_key=keys.secret_access_key)
    ec2, iam = session.client("ec2"), session.client("iam")
    trust = json.dumps(provisioning.role_trust_policy())

    with pytest.raises(ClientError) as subnets:
        ec2.describe_subnets()
    with pytest.raises(ClientError) as other_role:
        iam.create_role(RoleName="admin-role", AssumeRolePolicyDocument=trust)
    with pytest.raises(ClientError) as list_roles:
        iam.list_roles()

    for denial in (subnets, other_role, list_roles):
        assert denial.value.response["Error"]["Code"] in {"AccessDenied", "UnauthorizedOperation"}
    # ...while the same keys may do what the policy names (so the denials above are the policy, not a broken key).
    iam.create_role(RoleName=f"{PREFIX}-ec2-role-allowed", AssumeRolePolicyDocument=trust)


def test_the_policy_evaluator_itself_denies_what_the_seed_does_not_allow() -> None:
    assert allowed(SEED_POLICY, "ec2:RunInstances", "*")
    assert allowed(SEED_POLICY, "iam:PassRole", f"arn:aws:iam::{ACCOUNT}:role/{PREFIX}-ec2-role-t1")
    assert not allowed(SEED_POLICY, "iam:PassRole", f"arn:aws:iam::{ACCOUNT}:role/admin")
    assert not allowed(SEED_POLICY, "iam:CreateRole", f"arn:aws:iam::{ACCOUNT}:role/other")
    assert not allowed(SEED_POLICY, "ec2:DescribeSubnets", "*")
    assert not allowed(SEED_POLICY, "iam:TagRole", f"arn:aws:iam::{ACCOUNT}:role/{PREFIX}-ec2-role-t1")


def test_given_a_user_without_the_iam_statement_then_the_job_fails_with_credentials(
    control_plane: ControlPlane, provider_keys: Any, workflow: Workflow
) -> None:
    from controlplane.core.errors import JobFailed
    from controlplane.handlers import container

    ec2_only = dict(SEED_POLICY, Statement=[s for s in SEED_POLICY["Statement"] if not s["Sid"].startswith("IAM")])
    team_id = "iam-less-team"
    token = container.get().teams.issue_token(team_id)
    provider_id = add_provider(control_plane, token, provider_keys(ec2_only))
    job_id = submit(control_plane, token, provider_id, CPU_JOB)
    state = workflow.validate(workflow.api_input(job_id, team_id), job_id)

    with pytest.raises(JobFailed) as failure:
        workflow.bootstrap(state)

    record = control_plane.call("GET", f"/jobs/{job_id}", token).json()
    assert record["status"] == "FAILED"
    assert record["failure_reason"] == "CREDENTIALS"
    assert "GetRole" in record["failure_message"]
    assert "TransformerLabComputePolicy" in record["failure_message"]
    assert failure.value.reason == "CREDENTIALS"
