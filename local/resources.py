"""Create the control plane's own resources in the emulator from the same definitions the CDK stack uses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from controlplane.adapters.schema import TABLES


@dataclass(frozen=True)
class ControlPlaneNames:
    prefix: str

    def table(self, logical_name: str) -> str:
        return f"{self.prefix}-{logical_name}"

    def environment(self, *, state_machine_arn: str | None = None) -> dict[str, str]:
        """The handlers' environment variables (see controlplane.config.Settings)."""
        env = {
            "STATE_TABLE": self.table("state"),
            "JOBS_TABLE": self.table("jobs"),
            "LOGS_TABLE": self.table("logs"),
            "SECRETS_PREFIX": self.prefix,
            "POWERTOOLS_TRACE_DISABLED": "true",
            "POWERTOOLS_METRICS_NAMESPACE": "ec2jobs",
        }
        if state_machine_arn:
            env["STATE_MACHINE_ARN"] = state_machine_arn
        return env


def create_tables(dynamodb: Any, names: ControlPlaneNames) -> None:
    existing = set(dynamodb.list_tables().get("TableNames", []))
    for spec in TABLES:
        name = names.table(spec.logical_name)
        if name in existing:
            continue
        dynamodb.create_table(**spec.create_table_kwargs(name))
        if spec.ttl_attribute:
            dynamodb.update_time_to_live(
                TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": spec.ttl_attribute}
            )
