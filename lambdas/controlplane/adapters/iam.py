"""IAM in a provider's account with the provider's keys: only the seed policy's seven IAM actions, on the
`<prefix>-ec2-role-*` / `<prefix>-ec2-profile-*` names. One API call per method; ClientError passes through.

The seed policy has no iam:TagRole / iam:TagInstanceProfile, so the role and profile carry their team in the
description and name, not in tags. Under the hardened policy (policy/provider-policy-hardened.json) CreateRole and
PutRolePolicy need the role to carry the permissions boundary; GetRole tells which boundary a role carries.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

from botocore.exceptions import ClientError

from controlplane.adapters.ec2 import error_code


class IamAccount:
    def __init__(self, client: Any) -> None:
        self.client = client

    def role(self, name: str) -> dict[str, Any] | None:
        try:
            return dict(self.client.get_role(RoleName=name)["Role"])
        except ClientError as error:
            if error_code(error) == "NoSuchEntity":
                return None
            raise

    def create_role(self, name: str, trust_policy: str, description: str, boundary_arn: str | None = None) -> None:
        """CreateRole; with `boundary_arn`, the role carries that permissions boundary from its first moment (what
        the hardened provider policy's iam:PermissionsBoundary condition requires)."""
        extra = {"PermissionsBoundary": boundary_arn} if boundary_arn else {}
        self.client.create_role(RoleName=name, AssumeRolePolicyDocument=trust_policy, Description=description, **extra)

    def role_policy(self, role: str, policy_name: str) -> dict[str, Any] | None:
        try:
            document = self.client.get_role_policy(RoleName=role, PolicyName=policy_name)["PolicyDocument"]
        except ClientError as error:
            if error_code(error) == "NoSuchEntity":
                return None
            raise
        if isinstance(document, str):  # botocore normally decodes it; accept the raw URL-encoded JSON too
            document = json.loads(urllib.parse.unquote(document))
        return dict(document)

    def put_role_policy(self, role: str, policy_name: str, document: str) -> None:
        self.client.put_role_policy(RoleName=role, PolicyName=policy_name, PolicyDocument=document)

    def instance_profile(self, name: str) -> dict[str, Any] | None:
        try:
            return dict(self.client.get_instance_profile(InstanceProfileName=name)["InstanceProfile"])
        except ClientError as error:
            if error_code(error) == "NoSuchEntity":
                return None
            raise

    def create_instance_profile(self, name: str) -> None:
        self.client.create_instance_profile(InstanceProfileName=name)

    def add_role_to_instance_profile(self, profile: str, role: str) -> None:
        self.client.add_role_to_instance_profile(InstanceProfileName=profile, RoleName=role)
