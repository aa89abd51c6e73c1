"""EC2 in a provider's account, one region, with the provider's keys. Only the seed policy's ten EC2 actions.

Thin: every method is one API call (or one paginated describe) and lets botocore's ClientError through; the
services decide what an error means.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from controlplane.core.provisioning import JOB_TAG, MANAGED_BY_TAG, TEAM_TAG

# Instance states in which an instance still exists for our purposes (a terminated one is gone).
LIVE_STATES = ("pending", "running", "stopping", "stopped", "shutting-down")
# Every operation made with a provider's keys (the seed policy's actions). An error from any other operation came
# from the control plane's own account (DynamoDB, Secrets Manager) and must never be blamed on the provider.
PROVIDER_OPERATIONS = frozenset(
    {
        "GetCallerIdentity",
        "DescribeSecurityGroups",
        "CreateSecurityGroup",
        "AuthorizeSecurityGroupIngress",
        "DescribeKeyPairs",
        "ImportKeyPair",
        "DescribeImages",
        "RunInstances",
        "DescribeInstances",
        "TerminateInstances",
        "CreateTags",
        "GetRole",
        "CreateRole",
        "PutRolePolicy",
        "GetRolePolicy",
        "GetInstanceProfile",
        "CreateInstanceProfile",
        "AddRoleToInstanceProfile",
    }
)


def error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def error_message(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Message", ""))


class Ec2Account:
    def __init__(self, client: Any, region: str) -> None:
        self.client = client
        self.region = region

    # -- security group -------------------------------------------------------------------------------------

    def security_groups_named(self, name: str) -> list[dict[str, Any]]:
        response = self.client.describe_security_groups(Filters=[{"Name": "group-name", "Values": [name]}])
        return list(response.get("SecurityGroups", []))

    def security_group(self, group_id: str) -> dict[str, Any] | None:
        try:
            groups = self.client.describe_security_groups(GroupIds=[group_id]).get("SecurityGroups", [])
        except ClientError as error:
            if error_code(error) in {"InvalidGroup.NotFound", "InvalidGroupId.NotFound", "InvalidGroupId.Malformed"}:
                return None
            raise
        return groups[0] if groups else None

    def create_security_group(self, name: str, description: str, tags: list[dict[str, str]]) -> str:
        response = self.client.create_security_group(
            GroupName=name,
            Description=description,
            TagSpecifications=[{"ResourceType": "security-group", "Tags": tags}],
        )
        return str(response["GroupId"])

    def allow_ssh(self, group_id: str, cidr: str, description: str) -> None:
        self.client.authorize_security_group_ingress(
            GroupId=group_id,
            IpPermissions=[
                {
                    "IpProtocol": "tcp",
                    "FromPort": 22,
                    "ToPort": 22,
                    "IpRanges": [{"CidrIp": cidr, "Description": description}],
                }
            ],
        )

    # -- key pair -------------------------------------------------------------------------------------------

    def key_pair(self, name: str) -> dict[str, Any] | None:
        try:
            pairs = self.client.describe_key_pairs(KeyNames=[name], IncludePublicKey=True).get("KeyPairs", [])
        except ClientError as error:
            if error_code(error) == "InvalidKeyPair.NotFound":
                return None
            raise
        return pairs[0] if pairs else None

    def import_key_pair(self, name: str, public_openssh: str, tags: list[dict[str, str]]) -> None:
        self.client.import_key_pair(
            KeyName=name,
            PublicKeyMaterial=public_openssh.encode(),
            TagSpecifications=[{"ResourceType": "key-pair", "Tags": tags}],
        )

    # -- images ---------------------------------------------------------------------------------------------

    def images(self, owners: list[str], filters: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return list(self.client.describe_images(Owners=owners, Filters=filters).get("Images", []))

    # -- instances ------------------------------------------------------------------------------------------

    def instances_of_job(self, team_id: str, job_id: str) -> list[dict[str, Any]]:
        """Instances ec2jobs launched for this team's job, any state, oldest launch first."""
        found: list[dict[str, Any]] = []
        paginator = self.client.get_paginator("describe_instances")
        filters = [
            {"Name": f"tag:{JOB_TAG}", "Values": [job_id]},
            {"Name": f"tag:{TEAM_TAG}", "Values": [team_id]},
            {"Name": f"tag:{MANAGED_BY_TAG}", "Values": ["ec2jobs"]},
        ]
        for page in paginator.paginate(Filters=filters):
            for reservation in page.get("Reservations", []):
                found += reservation.get("Instances", [])
        return sorted(found, key=lambda instance: (str(instance.get("LaunchTime", "")), instance["InstanceId"]))

    def instances_of_team(self, team_id: str) -> list[dict[str, Any]]:
        """Every instance ec2jobs launched for this team here (one paginated DescribeInstances), any state."""
        found: list[dict[str, Any]] = []
        filters = [
            {"Name": f"tag:{TEAM_TAG}", "Values": [team_id]},
            {"Name": f"tag:{MANAGED_BY_TAG}", "Values": ["ec2jobs"]},
        ]
        pages = self.client.get_paginator("describe_instances").paginate(
            Filters=filters,
            PaginationConfig={"PageSize": 1000},  # EC2's largest page: ⌈n/1000⌉ calls
        )
        for page in pages:
            for reservation in page.get("Reservations", []):
                found += reservation.get("Instances", [])
        return found

    def describe_instances(self, instance_ids: list[str]) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for page in self.client.get_paginator("describe_instances").paginate(InstanceIds=instance_ids):
            for reservation in page.get("Reservations", []):
                found += reservation.get("Instances", [])
        return found

    def run_instance(self, request: dict[str, Any]) -> dict[str, Any]:
        response = self.client.run_instances(**request)
        return dict(response["Instances"][0])

    def terminate(self, instance_ids: list[str]) -> list[dict[str, Any]]:
        response = self.client.terminate_instances(InstanceIds=instance_ids)
        return list(response.get("TerminatingInstances", []))
