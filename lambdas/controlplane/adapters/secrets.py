"""Secrets Manager: provider keys and teams' SSH keys. Secret values never leave this module in a log or error."""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import ClientError

from controlplane.core import sshkeys
from controlplane.core.ports import ProviderCredentials, TeamKey


class SecretsManagerStore:
    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.prefix = prefix.strip("/")

    def put_provider_credentials(self, team_id: str, provider_id: str, credentials: ProviderCredentials) -> str:
        response = self.client.create_secret(
            Name=f"{self.prefix}/teams/{team_id}/providers/{provider_id}",
            Description=f"ec2jobs provider {provider_id} of team {team_id}: AWS access key",
            SecretString=json.dumps(
                {"access_key_id": credentials.access_key_id, "secret_access_key": credentials.secret_access_key}
            ),
            Tags=[{"Key": "ec2jobs:team", "Value": team_id}, {"Key": "ec2jobs:provider", "Value": provider_id}],
        )
        return str(response["ARN"])

    def get_provider_credentials(self, secret_arn: str) -> ProviderCredentials:
        value = json.loads(self.client.get_secret_value(SecretId=secret_arn)["SecretString"])
        return ProviderCredentials(value["access_key_id"], value["secret_access_key"])

    def delete(self, secret_arn: str) -> None:
        # A recovery window keeps an accidental delete reversible for a week; names are unique per provider id.
        self.client.delete_secret(SecretId=secret_arn, RecoveryWindowInDays=7)

    def team_key_name(self, team_id: str) -> str:
        return f"{self.prefix}/teams/{team_id}/ssh-key"

    def team_key(self, team_id: str) -> TeamKey:
        """Read the team's SSH key; on first use create it. Two first uses racing: CreateSecret lets exactly one
        win (ResourceExistsException for the other), and both then read the winner's key."""
        name = self.team_key_name(team_id)
        try:
            return self._read_team_key(name)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
                raise
        pair = sshkeys.generate(comment=f"ec2jobs-{team_id}")
        try:
            self.client.create_secret(
                Name=name,
                Description=f"ec2jobs team {team_id}: SSH login key for job instances and host-key seed",
                SecretString=json.dumps(
                    {
                        "private_key": pair.private_openssh,
                        "public_key": pair.public_openssh,
                        "host_key_seed": sshkeys.new_seed(),
                    }
                ),
                Tags=[{"Key": "ec2jobs:team", "Value": team_id}],
            )
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") != "ResourceExistsException":
                raise
        return self._read_team_key(name)

    def _read_team_key(self, name: str) -> TeamKey:
        value = json.loads(self.client.get_secret_value(SecretId=name)["SecretString"])
        return TeamKey(value["private_key"], value["public_key"], value["host_key_seed"])
