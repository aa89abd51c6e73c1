"""AWS list prices (the one place the benchmarks price anything) and the arithmetic that turns counted usage into
dollars.

us-east-1, on-demand, x86_64, no free tier, no Savings Plans; from the services' public pricing pages
(aws.amazon.com/{lambda,step-functions,dynamodb,secrets-manager,api-gateway,eventbridge,s3}/pricing), as of
PRICES_AS_OF (S3's as of S3_PRICES_AS_OF). The deployed memory sizes and the relay's streaming budget come from the
CDK stack itself (stacks/functions.py), not from copies.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

PRICES_AS_OF = "2026-11-24"
REGION = "us-east-1"

LAMBDA_GB_SECOND = 0.0000166667  # x86_64, first 6 billion GB-s a month
LAMBDA_REQUEST = 0.20 / 1_000_000
STATE_TRANSITION = 0.025 / 1_000  # Step Functions Standard; retries count as transitions
DYNAMODB_WRITE_UNIT = 0.625 / 1_000_000  # on-demand write request unit (1 KB); since the November 2024 price cut
DYNAMODB_READ_UNIT = 0.125 / 1_000_000  # on-demand read request unit (4 KB strongly consistent, 2 × eventually)
SECRETS_MANAGER_CALL = 0.05 / 10_000
EVENTBRIDGE_EVENT = 1.00 / 1_000_000  # custom events put (PutEvents entries, 64 KB each); AWS service events free
API_GATEWAY_REQUEST = 3.50 / 1_000_000  # REST API, first 333 million requests a month
# S3 Standard (https://aws.amazon.com/s3/pricing/, "Storage & requests"; docs/artifacts.md "Costs"). Requests are
# billed by class: PUT, COPY, POST and LIST (PutObject, UploadPart, Create/CompleteMultipartUpload, ListObjectsV2)
# at one price, GET and all other requests (GetObject, HeadObject) at another; DELETE is free. STS AssumeRole, which
# issues an instance's grants, has no charge.
S3_PRICES_AS_OF = "2026-12-02"
S3_PUT_REQUEST = 0.005 / 1_000  # PUT, COPY, POST, LIST requests
S3_GET_REQUEST = 0.0004 / 1_000  # GET, SELECT and all other requests
S3_GB_MONTH = 0.023  # S3 Standard storage, first 50 TB a month
# Storage is billed in GB-months from byte-hours: 1 GB = 2**30 bytes, divided by the hours of the month
# (https://aws.amazon.com/s3/faqs/, "Billing"); the benchmarks use an average month.
S3_GB_BYTES = 2**30
HOURS_PER_MONTH = 730.0  # 365 × 24 / 12
# Not priced (nothing counted against them here, or not per job): EC2 API calls (free), X-Ray traces, CloudWatch
# Logs ingestion of the functions' own logs, Secrets Manager's $0.40 per secret-month, DynamoDB storage, S3 data
# transfer (in, and to EC2 in the region: free; out to the internet: $0.09 per GB after the first 100 GB a month).


@dataclass
class Usage:
    """What the control plane consumed (counted, not assumed)."""

    lambda_requests: float = 0.0
    lambda_gb_seconds: float = 0.0
    state_transitions: float = 0.0
    dynamodb_write_units: float = 0.0
    dynamodb_read_units: float = 0.0
    secrets_manager_calls: float = 0.0
    eventbridge_events: float = 0.0
    api_requests: float = 0.0
    s3_put_requests: float = 0.0
    s3_get_requests: float = 0.0
    s3_gb_months: float = 0.0

    def __add__(self, other: Usage) -> Usage:
        return Usage(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def scaled(self, factor: float) -> Usage:
        return Usage(**{f.name: getattr(self, f.name) * factor for f in fields(self)})

    def as_dict(self) -> dict[str, float]:
        return {f.name: round(getattr(self, f.name), 6) for f in fields(self)}


UNIT_PRICES: dict[str, float] = {
    "lambda_requests": LAMBDA_REQUEST,
    "lambda_gb_seconds": LAMBDA_GB_SECOND,
    "state_transitions": STATE_TRANSITION,
    "dynamodb_write_units": DYNAMODB_WRITE_UNIT,
    "dynamodb_read_units": DYNAMODB_READ_UNIT,
    "secrets_manager_calls": SECRETS_MANAGER_CALL,
    "eventbridge_events": EVENTBRIDGE_EVENT,
    "api_requests": API_GATEWAY_REQUEST,
    "s3_put_requests": S3_PUT_REQUEST,
    "s3_get_requests": S3_GET_REQUEST,
    "s3_gb_months": S3_GB_MONTH,
}


def dollars(usage: Usage) -> dict[str, float]:
    """Cost per usage line, and "total"."""
    lines = {name: getattr(usage, name) * price for name, price in UNIT_PRICES.items()}
    return lines | {"total": sum(lines.values())}


def gb_seconds(duration_seconds: float, memory_mb: int) -> float:
    """Lambda bills duration rounded up to the millisecond, times the configured memory."""
    return math.ceil(max(duration_seconds, 0.0) * 1000) / 1000 * memory_mb / 1024


def gb_months(size_bytes: float, hours: float) -> float:
    """S3 storage of `size_bytes` kept `hours`, in GB-months (GB = 2**30 bytes, an average month)."""
    return max(size_bytes, 0.0) / S3_GB_BYTES * max(hours, 0.0) / HOURS_PER_MONTH


# -- DynamoDB request units ------------------------------------------------------------------------------------


def attribute_size(value: Mapping[str, Any]) -> int:
    """Bytes of one typed attribute value ({"S": ...}, {"N": ...}, {"M": {...}}, ...), per DynamoDB's item-size
    rules: strings and binaries by length, numbers about one byte per two digits plus one, 3 bytes of overhead
    per map or list plus one byte per element."""
    (kind, raw), *_ = value.items()
    if kind == "S":
        return len(str(raw).encode())
    if kind == "B":
        return len(raw) if isinstance(raw, bytes) else math.ceil(len(str(raw)) * 3 / 4)  # base64 in JSON
    if kind == "N":
        digits = len(str(raw).lstrip("-").replace(".", "").lstrip("0")) or 1
        return math.ceil(digits / 2) + 1
    if kind in {"BOOL", "NULL"}:
        return 1
    if kind in {"SS", "NS", "BS"}:
        kind_of_member = kind[0]
        return sum(attribute_size({kind_of_member: member}) for member in raw)
    if kind == "M":
        return 3 + sum(len(k.encode()) + attribute_size(v) + 1 for k, v in raw.items())
    if kind == "L":
        return 3 + sum(attribute_size(v) + 1 for v in raw)
    raise ValueError(f"unknown DynamoDB type {kind!r}")


def item_size(item: Mapping[str, Mapping[str, Any]]) -> int:
    """Bytes of a typed item: attribute names plus values."""
    return sum(len(name.encode()) + attribute_size(value) for name, value in item.items())


def write_units(size_bytes: int, *, transactional: bool = False) -> int:
    """A write is billed per started KB (at least one); transactional writes twice."""
    units = max(1, math.ceil(size_bytes / 1024))
    return units * 2 if transactional else units


def read_units(size_bytes: int, *, consistent: bool) -> float:
    """A read is billed per started 4 KB (at least one); eventually consistent reads half."""
    units = max(1, math.ceil(size_bytes / 4096))
    return float(units) if consistent else units / 2


@dataclass(frozen=True)
class Deployment:
    """What the stack deploys that cost depends on: each handler's memory, the relay's streaming budget."""

    memory_mb: Mapping[str, int] = field(default_factory=dict)  # handler (module.function) → MB
    relay_budget_seconds: float = 600.0
    reconcile_every_seconds: float = 60.0  # rate(1 minute)

    def memory(self, handler: str) -> int:
        return self.memory_mb.get(handler, 256)


def deployment() -> Deployment:
    """Read from stacks/functions.py (the CDK app's own definitions)."""
    from stacks import functions

    return Deployment(
        memory_mb={spec.handler: spec.memory_mb for spec in functions.FUNCTIONS},
        relay_budget_seconds=float(functions.RELAY_BUDGET_SECONDS),
    )
