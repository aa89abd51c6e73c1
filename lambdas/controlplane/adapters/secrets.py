"""Secrets Manager: provider keys (and, later, team SSH keys). Secret values never leave this module in a log."""

from __future__ import annotations

import json
from typing import Any

from controlplane.core.ports import ProviderCredentials


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
