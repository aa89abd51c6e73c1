"""The emulator's strict IAM evaluator (local/iam_policy.py): the language subset ec2jobs' policies use, as AWS
documents it, and a loud refusal of anything else."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pytest

from controlplane.core import grants, provisioning
from local.iam_policy import (
    BOUNDARY,
    IDENTITY,
    SESSION,
    Decision,
    Request,
    UnsupportedPolicy,
    allowed,
    authorize,
    explain,
)

REPO = Path(__file__).resolve().parents[2]
ME = "arn:aws:ec2:us-east-1:123456789012:instance/i-0000000000000000a"
OTHER = "arn:aws:ec2:us-east-1:123456789012:instance/i-0000000000000000b"
TEAM = f"ec2:ResourceTag/{provisioning.TEAM_TAG}"


def terminate(target: str, team: str = "team-a", source: str | None = ME) -> Request:
    context = {"ec2:InstanceID": target.rsplit("/", 1)[1], TEAM: team}
    if source is not None:
        context["ec2:SourceInstanceARN"] = source
    return Request("ec2:TerminateInstances", target, context)


def test_the_instance_role_may_terminate_only_the_instance_that_calls_within_its_team() -> None:
    role = [provisioning.self_termination_policy("team-a")]
    assert allowed(role, terminate(ME))
    assert not allowed(role, terminate(OTHER))  # another instance (another job) of the same team
    assert not allowed(role, terminate(ME, team="team-b"))  # the tag must be the team's
    assert not allowed(role, terminate(ME, source=None))  # not instance credentials: the key is absent
    assert not allowed(role, Request("ec2:RunInstances", "*", {"ec2:SourceInstanceARN": ME}))


def test_the_self_termination_policy_uses_only_keys_documented_for_terminate_instances() -> None:
    (statement,) = provisioning.self_termination_policy("team-a")["Statement"]
    keys = {key for block in statement["Condition"].values() for key in block}
    # ec2:SourceInstanceARN: IAM policy variables / EC2 condition keys; the others: TerminateInstances' instance keys
    assert keys == {"ec2:SourceInstanceARN", TEAM}
    assert "aws:ARN" not in json.dumps(statement)
    assert "${ec2:InstanceID}" in json.dumps(statement)


def test_the_boundary_caps_any_role_at_self_termination() -> None:
    boundary = json.loads((REPO / "policy" / "transformerlab-ec2-boundary.json").read_text())
    admin = [{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}]
    assert authorize(admin, Request("iam:CreateUser", "*"), boundary) is Decision.IMPLICIT_DENY
    assert authorize(admin, terminate(OTHER), boundary) is Decision.IMPLICIT_DENY
    assert authorize(admin, terminate(ME), boundary) is Decision.ALLOW
    assert not allowed(admin, terminate(ME, source=None), boundary)


def test_hardened_provider_policy_closes_the_escalation_the_seed_leaves_open() -> None:
    seed = json.loads((REPO / "policy" / "provider-policy.json").read_text())
    hardened = json.loads((REPO / "policy" / "provider-policy-hardened.json").read_text())
    role = "arn:aws:iam::123456789012:role/transformerlab-ec2-role-t1"
    bound = "arn:aws:iam::123456789012:policy/transformerlab-ec2-boundary"
    other = "arn:aws:iam::123456789012:policy/AdministratorAccess"
    for action in ("iam:CreateRole", "iam:PutRolePolicy"):
        assert allowed([seed], Request(action, role))  # the escalation: any role, any policy
        assert not allowed([hardened], Request(action, role))
        assert not allowed([hardened], Request(action, role, {"iam:PermissionsBoundary": other}))
        assert allowed([hardened], Request(action, role, {"iam:PermissionsBoundary": bound}))
    assert allowed([seed], Request("iam:PassRole", role, {"iam:PassedToService": "lambda.amazonaws.com"}))
    assert not allowed([hardened], Request("iam:PassRole", role, {"iam:PassedToService": "lambda.amazonaws.com"}))
    assert allowed([hardened], Request("iam:PassRole", role, {"iam:PassedToService": "ec2.amazonaws.com"}))
    assert allowed([hardened], Request("iam:PassRole", role, {}))  # AddRoleToInstanceProfile: no service named
    for statement in seed["Statement"]:  # everything else is granted exactly as in the seed
        for action in statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]:
            if action in {"iam:CreateRole", "iam:PutRolePolicy", "iam:PassRole"}:
                continue
            resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            target = resources[0].replace("*:", "123456789012:", 1).replace("-*", "-t1")
            assert allowed([hardened], Request(action, target)), action


def test_operators_variables_and_explicit_deny() -> None:
    def policy(*statements: Mapping[str, object]) -> list[dict[str, object]]:
        return [{"Version": "2012-10-17", "Statement": list(statements)}]

    base = {"Effect": "Allow", "Action": "s3:Get*", "Resource": "arn:aws:s3:::b/${aws:username}/*"}
    assert allowed(policy(base), Request("s3:getobject", "arn:aws:s3:::b/ann/x", {"aws:username": "ann"}))
    assert not allowed(policy(base), Request("s3:GetObject", "arn:aws:s3:::b/bob/x", {"aws:username": "ann"}))
    assert not allowed(policy(base), Request("s3:GetObject", "arn:aws:s3:::b/ann/x"))  # unresolved variable
    literal = base | {"Resource": "arn:aws:s3:::b/${*}"}
    assert allowed(policy(literal), Request("s3:GetObject", "arn:aws:s3:::b/*"))
    assert not allowed(policy(literal), Request("s3:GetObject", "arn:aws:s3:::b/x"))
    like = base | {"Resource": "*", "Condition": {"StringLike": {"aws:UserAgent": "aws-cli/*"}}}
    assert allowed(policy(like), Request("s3:GetObject", "x", {"aws:useragent": "aws-cli/2"}))
    assert not allowed(policy(like), Request("s3:GetObject", "x"))
    not_equals = base | {"Resource": "*", "Condition": {"StringNotEquals": {"aws:username": "eve"}}}
    assert allowed(policy(not_equals), Request("s3:GetObject", "x"))  # a negated operator on an absent key
    if_exists = base | {"Resource": "*", "Condition": {"StringEqualsIfExists": {"aws:username": "ann"}}}
    assert allowed(policy(if_exists), Request("s3:GetObject", "x"))
    assert not allowed(policy(if_exists), Request("s3:GetObject", "x", {"aws:username": "bob"}))
    null = base | {"Resource": "*", "Condition": {"Null": {"aws:username": "true"}}}
    assert allowed(policy(null), Request("s3:GetObject", "x"))
    assert not allowed(policy(null), Request("s3:GetObject", "x", {"aws:username": "a"}))
    deny = {"Effect": "Deny", "Action": "*", "Resource": "*"}
    assert authorize(policy(base | {"Resource": "*"}, deny), Request("s3:GetObject", "x")) is Decision.EXPLICIT_DENY


@pytest.mark.parametrize(
    "statement",
    [
        {"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": {"DateGreaterThan": {"aws:CurrentTime": "x"}}},
        {"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": {"ForAnyValue:StringEquals": {"k": "v"}}},
        {"Effect": "Allow", "Action": "*"},
    ],
)
def test_what_the_evaluator_does_not_implement_is_refused_not_ignored(statement: dict[str, object]) -> None:
    with pytest.raises(UnsupportedPolicy):
        authorize([{"Statement": [statement]}], Request("s3:GetObject", "x", {"k": "v", "aws:CurrentTime": "y"}))


def test_a_session_policy_narrows_a_role_session_to_the_intersection() -> None:
    bucket = "arn:aws:s3:::artifacts"
    role = [
        {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject"], "Resource": f"{bucket}/teams/*"},
                {
                    "Effect": "Allow",
                    "Action": "s3:ListBucket",
                    "Resource": bucket,
                    "Condition": {"StringLike": {"s3:prefix": ["teams/*"]}},
                },
            ],
        }
    ]
    session = grants.session_policy("artifacts", "team-a", "job-1", read_prefixes=["teams/team-a/uploads/up-1/"])
    own = Request("s3:PutObject", f"{bucket}/teams/team-a/jobs/job-1/outputs/m")
    assert explain(role, own, session=session) == (Decision.ALLOW, None)
    assert explain(role, Request("s3:PutObject", f"{bucket}/teams/team-a/jobs/job-2/m"), session=session) == (
        Decision.IMPLICIT_DENY,
        SESSION,
    )
    assert allowed(role, Request("s3:GetObject", f"{bucket}/teams/team-a/uploads/up-1/archive.tar.gz"), None, session)
    assert not allowed(role, Request("s3:PutObject", f"{bucket}/teams/team-a/uploads/up-1/x"), None, session)
    listing = Request("s3:ListBucket", bucket, {"s3:prefix": "teams/team-a/jobs/job-1/"})
    assert allowed(role, listing, None, session)
    assert not allowed(role, Request("s3:ListBucket", bucket, {"s3:prefix": "teams/"}), None, session)
    assert not allowed(role, Request("s3:ListBucket", bucket, {"s3:prefix": ""}), None, session)
    # a session policy never adds: the role does not allow the root, whatever the session says
    everything = {"Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    assert explain(role, Request("s3:PutObject", f"{bucket}/root"), session=everything) == (
        Decision.IMPLICIT_DENY,
        IDENTITY,
    )
    assert allowed(role, own)  # no session policy: the role alone


def test_explicit_deny_anywhere_wins_and_names_where_it_is() -> None:
    allow = {"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    deny = {"Statement": [{"Effect": "Deny", "Action": "s3:PutObject", "Resource": "*"}]}
    put = Request("s3:PutObject", "arn:aws:s3:::b/k")
    assert explain([allow], put, allow, deny) == (Decision.EXPLICIT_DENY, SESSION)
    assert explain([allow], put, deny, allow) == (Decision.EXPLICIT_DENY, BOUNDARY)
    # an explicit deny in the session policy outranks the identity policies' silence (reported as explicit)
    assert explain([{"Statement": []}], put, None, deny) == (Decision.EXPLICIT_DENY, SESSION)
    assert explain([allow], put, {"Statement": []}, allow) == (Decision.IMPLICIT_DENY, BOUNDARY)
    assert explain([allow], put, allow, allow) == (Decision.ALLOW, None)
