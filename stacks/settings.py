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
# Lambda keeps at least this much of an account's concurrency unreserved: reservations may total the quota minus it.
LAMBDA_MIN_UNRESERVED = 100
RELAY_SHARD_CAPACITY = 50  # = controlplane.service.relay_fleet.SHARD_CAPACITY (tests/infra checks they agree)
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
    # ARTIFACT_EXPIRY_DAYS: objects in the artifacts bucket (uploads, outputs, checkpoints) expire this many days after
    # they were last written (an S3 lifecycle rule; docs/artifacts.md)
    artifact_expiry_days: int = 30
    api_cloudwatch_role: bool = True  # set API Gateway's account-level CloudWatch role (needed for its logs)
    # Reserved concurrency (0 = none) so that running jobs' relay shards (one invocation per 50 jobs, shared pool)
    # never starve the API, the authorizer, EC2 event handling or the reconciler. Each is also that function's cap.
    api_reserved_concurrency: int = 20  # API_RESERVED_CONCURRENCY: ~100 requests/s at 200 ms each
    authorizer_reserved_concurrency: int = 10  # AUTHORIZER_RESERVED_CONCURRENCY (API Gateway caches its answers)
    instance_events_reserved_concurrency: int = 10  # a throttled EventBridge delivery is retried by Lambda
    reconcile_reserved_concurrency: int = 2  # one run a minute, 120 s timeout: at most two overlap
    # The account's Lambda "Concurrent executions" quota in the deployment region (Service Quotas): only used to
    # check that the reservations fit and to say how many jobs the rest carries (docs/limits.md).
    account_concurrency: int = 1000
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
        if self.artifact_expiry_days < 1:
            raise ValueError(
                f"artifactExpiryDays {self.artifact_expiry_days}: at least 1 (S3 lifecycle expiration counts days)"
            )
        for name, value in self.reservations.items():
            if value < 0:
                raise ValueError(f"{name} {value}: a number of concurrent executions, or 0 for no reservation")
        if self.account_concurrency < 1:
            raise ValueError(f"accountConcurrency {self.account_concurrency}: the account's Lambda concurrency quota")
        reserved = self.reserved_concurrency
        if reserved and reserved > self.account_concurrency - LAMBDA_MIN_UNRESERVED:
            raise ValueError(
                f"the reserved concurrency ({reserved} in all: {self.reservations}) does not fit an account whose "
                f"Lambda concurrency quota is {self.account_concurrency}: Lambda keeps {LAMBDA_MIN_UNRESERVED} "
                "unreserved, so the reservations may total at most the quota minus that. Ask AWS for a higher "
                "'Concurrent executions' quota and set accountConcurrency to it, or set the reservations to 0 "
                "(no reservation: jobs' relays can then starve the API) — see docs/limits.md"
            )

    @property
    def reservations(self) -> dict[str, int]:
        """Reserved concurrency per function, by context name (0: none)."""
        return {
            "apiReservedConcurrency": self.api_reserved_concurrency,
            "authorizerReservedConcurrency": self.authorizer_reserved_concurrency,
            "instanceEventsReservedConcurrency": self.instance_events_reserved_concurrency,
            "reconcileReservedConcurrency": self.reconcile_reserved_concurrency,
        }

    @property
    def reserved_concurrency(self) -> int:
        return sum(self.reservations.values())

    def concurrent_jobs(self, launching: int = 0) -> int:
        """How many jobs can run at once: running jobs are followed by relay shards, each one invocation from the
        unreserved pool for up to RELAY_SHARD_CAPACITY jobs (docs/relay-fleet.md), a pool that also serves the
        workflow's short launch steps (one invocation per job `launching` at that moment) and any other function in
        the account. (Quota − reservations − launching) × capacity (docs/limits.md)."""
        return max(0, self.account_concurrency - self.reserved_concurrency - launching) * RELAY_SHARD_CAPACITY

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
            artifact_expiry_days=number("artifactExpiryDays", defaults.artifact_expiry_days),
            api_cloudwatch_role=flag("apiGatewayCloudWatchRole", defaults.api_cloudwatch_role),
            api_reserved_concurrency=number("apiReservedConcurrency", defaults.api_reserved_concurrency),
            authorizer_reserved_concurrency=number(
                "authorizerReservedConcurrency", defaults.authorizer_reserved_concurrency
            ),
            instance_events_reserved_concurrency=number(
                "instanceEventsReservedConcurrency", defaults.instance_events_reserved_concurrency
            ),
            reconcile_reserved_concurrency=number(
                "reconcileReservedConcurrency", defaults.reconcile_reserved_concurrency
            ),
            account_concurrency=number("accountConcurrency", defaults.account_concurrency),
            layer_dir=layer_dir,
        )
