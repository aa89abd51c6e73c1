"""What the control plane creates in a provider's account, per team (pure): names, tags and IAM documents.

Names keep the seed's `transformerlab-` prefix by default so the seed IAM policy fits as written
(`RESOURCE_PREFIX` changes it; the provider's policy must then name the new prefix).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

MANAGED_BY_TAG = "ec2jobs:managed-by"
TEAM_TAG = "ec2jobs:team-id"
JOB_TAG = "ec2jobs:job-id"
ATTEMPT_TAG = "ec2jobs:attempt"  # the job's attempt an instance (and its volume) was launched for; absent: attempt 1
PROVIDER_TAG = "ec2jobs:provider-id"
SELF_TERMINATION_POLICY_NAME = "ec2jobs-self-termination"


@dataclass(frozen=True)
class TeamResources:
    """Names of a team's resources in a provider account."""

    prefix: str
    team_id: str

    @property
    def security_group(self) -> str:
        return f"{self.prefix}-compute-{self.team_id}"

    @property
    def key_pair(self) -> str:
        return f"{self.prefix}-{self.team_id}"

    @property
    def role(self) -> str:
        return f"{self.prefix}-ec2-role-{self.team_id}"

    @property
    def instance_profile(self) -> str:
        return f"{self.prefix}-ec2-profile-{self.team_id}"


def tags(**values: str) -> list[dict[str, str]]:
    return [{"Key": key, "Value": value} for key, value in values.items()]


def team_tags(team_id: str, provider_id: str) -> list[dict[str, str]]:
    return [
        {"Key": MANAGED_BY_TAG, "Value": "ec2jobs"},
        {"Key": TEAM_TAG, "Value": team_id},
        {"Key": PROVIDER_TAG, "Value": provider_id},
    ]


def instance_tags(
    team_id: str, provider_id: str, job_id: str, name: str | None, attempt: int = 1
) -> list[dict[str, str]]:
    label = f"ec2jobs-{name}-{job_id}" if name else f"ec2jobs-{job_id}"
    return [
        {"Key": "Name", "Value": label[:255]},
        {"Key": JOB_TAG, "Value": job_id},
        {"Key": ATTEMPT_TAG, "Value": str(attempt)},
        *team_tags(team_id, provider_id),
    ]


def instance_attempt(instance: dict[str, Any]) -> int:
    """The job attempt an instance (as DescribeInstances shows it) was launched for: its ATTEMPT_TAG, and 1 for an
    instance launched before attempts existed (no tag) or with a tag that is not a positive number."""
    for tag in instance.get("Tags") or ():
        if tag.get("Key") == ATTEMPT_TAG:
            value = str(tag.get("Value", ""))
            return int(value) if value.isdecimal() and int(value) > 0 else 1
    return 1


def role_trust_policy() -> dict[str, Any]:
    """Only EC2 instances may assume the instance role."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "ec2.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }


def self_termination_policy(team_id: str) -> dict[str, Any]:
    """The instance role may call ec2:TerminateInstances on exactly one instance: the one making the request.

    Only condition keys AWS documents are used (docs/policies.md cites them): `ec2:SourceInstanceARN` (the ARN of
    the instance whose role credentials signed the request; present only for instance-profile credentials) must
    equal the target's ARN, spelled with the target's documented `ec2:InstanceID` key as a policy variable, and the
    target must carry the team's tag (`ec2:ResourceTag/<key>`, documented for TerminateInstances). If AWS ever stopped
    resolving a key, the statement stops applying and the call is denied (never widened); the job wrapper then falls
    back to `shutdown -h now`, which terminates the instance too (it is launched with shutdown behaviour terminate).
    """
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "TerminateOnlyItself",
                "Effect": "Allow",
                "Action": "ec2:TerminateInstances",
                "Resource": "arn:aws:ec2:*:*:instance/*",
                "Condition": {
                    "ArnEquals": {"ec2:SourceInstanceARN": "arn:aws:ec2:*:*:instance/${ec2:InstanceID}"},
                    "StringEquals": {f"ec2:ResourceTag/{TEAM_TAG}": team_id},
                },
            }
        ],
    }


def boundary_policy_name(prefix: str) -> str:
    """The permissions boundary the hardened provider policy requires on every role the control plane creates
    (policy/transformerlab-ec2-boundary.json, created once by the account's administrator)."""
    return f"{prefix}-ec2-boundary"


def boundary_arn(reference: str, account_id: str, partition: str = "aws") -> str:
    """A boundary given by name ("transformerlab-ec2-boundary") or ARN, as the ARN CreateRole takes."""
    if reference.startswith("arn:"):
        return reference
    return f"arn:{partition}:iam::{account_id}:policy/{reference}"


def policy_json(document: dict[str, Any]) -> str:
    return json.dumps(document, sort_keys=True, separators=(",", ":"))
