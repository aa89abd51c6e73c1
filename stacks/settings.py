"""The deployment's parameters: CDK context values (cdk.json holds the defaults; `cdk deploy -c name=value` overrides
them), checked once here so a typo fails the synth instead of the deployed control plane."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aws_cdk import aws_logs as logs

REPO = Path(__file__).resolve().parent.parent
LAMBDAS_DIR = REPO / "lambdas"
LAYER_DIR = REPO / "build" / "layer"

# The names ec2jobs gives resources in providers' accounts end up in IAM role names of at most 64 characters:
# "<prefix>-ec2-role-<team id of up to 32>", so the prefix has at most 22.
_RESOURCE_PREFIX = re.compile(r"^[a-z][a-z0-9-]{0,21}$")
_SECRETS_PREFIX = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# CloudWatch Logs' retention periods (days → the CDK enum, whose values are names, not days).
_RETENTION_DAYS: dict[int, logs.RetentionDays] = {
    1: logs.RetentionDays.ONE_DAY,
    3: logs.RetentionDays.THREE_DAYS,
    5: logs.RetentionDays.FIVE_DAYS,
    7: logs.RetentionDays.ONE_WEEK,
    14: logs.RetentionDays.TWO_WEEKS,
    30: logs.RetentionDays.ONE_MONTH,
    60: logs.RetentionDays.TWO_MONTHS,
    90: logs.RetentionDays.THREE_MONTHS,
    120: logs.RetentionDays.FOUR_MONTHS,
    150: logs.RetentionDays.FIVE_MONTHS,
    180: logs.RetentionDays.SIX_MONTHS,
    365: logs.RetentionDays.ONE_YEAR,
    400: logs.RetentionDays.THIRTEEN_MONTHS,
    545: logs.RetentionDays.EIGHTEEN_MONTHS,
    731: logs.RetentionDays.TWO_YEARS,
    1096: logs.RetentionDays.THREE_YEARS,
    1827: logs.RetentionDays.FIVE_YEARS,
    2192: logs.RetentionDays.SIX_YEARS,
    2557: logs.RetentionDays.SEVEN_YEARS,
    2922: logs.RetentionDays.EIGHT_YEARS,
    3288: logs.RetentionDays.NINE_YEARS,
    3653: logs.RetentionDays.TEN_YEARS,
}


@dataclass(frozen=True)
class Settings:
    resource_prefix: str = "transformerlab"  # RESOURCE_PREFIX: names in providers' accounts (the seed policy's)
    ssh_ingress_cidr: str = "0.0.0.0/0"  # SSH_INGRESS_CIDR: who may reach instances' port 22 (the relay)
    secrets_prefix: str = "ec2jobs"  # SECRETS_PREFIX: Secrets Manager names <prefix>/teams/...
    log_retention_days: int = 90  # CloudWatch Logs retention of the functions, state machine and API access logs
    log_chunk_ttl_days: int = 30  # LOG_RETENTION_DAYS: jobs' output chunks expire (DynamoDB TTL) after this
    api_cloudwatch_role: bool = True  # set API Gateway's account-level CloudWatch role (needed for its logs)
    layer_dir: Path = LAYER_DIR  # the dependency layer built by scripts/build_layer.py

    def __post_init__(self) -> None:
        if not _RESOURCE_PREFIX.match(self.resource_prefix):
            raise ValueError(
                f"resourcePrefix {self.resource_prefix!r}: 1-22 lowercase letters, digits or '-', starting with a "
                "letter (it prefixes IAM role names in providers' accounts, which are limited to 64 characters)"
            )
        try:
            network = ipaddress.ip_network(self.ssh_ingress_cidr, strict=True)
        except ValueError as error:
            raise ValueError(f"sshIngressCidr {self.ssh_ingress_cidr!r} is not a CIDR block: {error}") from None
        if network.version != 4:
            raise ValueError(f"sshIngressCidr {self.ssh_ingress_cidr!r}: the security group rule takes IPv4 only")
        if not _SECRETS_PREFIX.match(self.secrets_prefix):
            raise ValueError(f"secretsPrefix {self.secrets_prefix!r}: letters, digits, '_', '.', '-' (1-64)")
        if self.log_retention_days not in _RETENTION_DAYS:
            raise ValueError(
                f"logRetentionDays {self.log_retention_days}: CloudWatch Logs accepts {sorted(_RETENTION_DAYS)}"
            )
        if not 1 <= self.log_chunk_ttl_days <= 3650:
            raise ValueError(f"logChunkTtlDays {self.log_chunk_ttl_days}: 1..3650")

    @property
    def log_retention(self) -> logs.RetentionDays:
        return _RETENTION_DAYS[self.log_retention_days]

    @classmethod
    def from_context(cls, context: dict[str, Any], layer_dir: Path = LAYER_DIR) -> Settings:
        """Context values arrive as strings from `-c name=value` and as JSON values from cdk.json."""
        defaults = cls()

        def text(name: str, default: str) -> str:
            value = context.get(name)
            return default if value is None else str(value).strip()

        def number(name: str, default: int) -> int:
            value = context.get(name)
            try:
                return default if value is None else int(str(value))
            except ValueError:
                raise ValueError(f"{name} must be a whole number, not {value!r}") from None

        def flag(name: str, default: bool) -> bool:
            value = context.get(name)
            if value is None or isinstance(value, bool):
                return default if value is None else value
            if str(value).lower() in {"true", "1", "yes"}:
                return True
            if str(value).lower() in {"false", "0", "no"}:
                return False
            raise ValueError(f"{name} must be true or false, not {value!r}")

        return cls(
            resource_prefix=text("resourcePrefix", defaults.resource_prefix),
            ssh_ingress_cidr=text("sshIngressCidr", defaults.ssh_ingress_cidr),
            secrets_prefix=text("secretsPrefix", defaults.secrets_prefix),
            log_retention_days=number("logRetentionDays", defaults.log_retention_days),
            log_chunk_ttl_days=number("logChunkTtlDays", defaults.log_chunk_ttl_days),
            api_cloudwatch_role=flag("apiGatewayCloudWatchRole", defaults.api_cloudwatch_role),
            layer_dir=layer_dir,
        )
