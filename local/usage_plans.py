"""API Gateway's per-client throttling, locally: a usage plan whose keys each get their own token bucket, and a
LocalApiGateway that throttles a request by the usage key its authorizer returned, as a deployed REST API with
`apiKeySource: AUTHORIZER` and `apiKeyRequired: true` does (stacks/api.py):

- the authorizer's `usageIdentifierKey` must be a key of the plan, else 403 {"message": "Forbidden"} (API Gateway's
  InvalidKeyParameter answer);
- each key has its own bucket (rate per second, burst): keys in one plan do not share the limit; over it the client
  gets 429 {"message": "Too Many Requests"}, before the api Lambda runs.

Docs: https://docs.aws.amazon.com/apigateway/latest/developerguide/api-gateway-api-key-source.html and
https://docs.aws.amazon.com/apigateway/latest/developerguide/api-gateway-request-throttling.html (token bucket).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from local.apigw import HttpResponse, LocalApiGateway


@dataclass
class TokenBucket:
    """`burst` tokens at most, refilled at `rate` per second; a request takes one."""

    rate: float
    burst: int
    clock: Callable[[], float] = time.monotonic
    tokens: float = -1.0
    stamp: float = 0.0

    def take(self) -> bool:
        now = self.clock()
        if self.tokens < 0:  # a new bucket starts full
            self.tokens, self.stamp = float(self.burst), now
        self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


@dataclass
class LocalUsagePlan:
    """A usage plan's keys (the `UsageKeys` port: create/delete like CreateApiKey + CreateUsagePlanKey /
    DeleteApiKey) and their buckets."""

    rate: float
    burst: int
    clock: Callable[[], float] = time.monotonic
    keys: dict[str, str] = field(default_factory=dict)  # key id -> value
    buckets: dict[str, TokenBucket] = field(default_factory=dict)  # value -> bucket
    lock: threading.Lock = field(default_factory=threading.Lock)

    def create(self, team_id: str) -> tuple[str, str]:
        key_id, value = secrets.token_hex(5), secrets.token_urlsafe(30)  # API keys are 20-128 characters
        with self.lock:
            self.keys[key_id] = value
        return key_id, value

    def delete(self, key_id: str) -> None:
        with self.lock:
            value = self.keys.pop(key_id, None)
            if value is not None:
                self.buckets.pop(value, None)

    def admit(self, value: str | None) -> int:
        """200 to let the request through, 403 for a key not in the plan, 429 when its bucket is empty."""
        with self.lock:
            if value is None or value not in self.keys.values():
                return 403
            bucket = self.buckets.setdefault(value, TokenBucket(self.rate, self.burst, self.clock))
            return 200 if bucket.take() else 429


@dataclass
class UsagePlanGateway(LocalApiGateway):
    """LocalApiGateway plus the usage plan: authorised routes are throttled per usage key."""

    plan: LocalUsagePlan = field(default_factory=lambda: LocalUsagePlan(rate=10, burst=20))
    _seen: threading.local = field(default_factory=threading.local, repr=False)

    def __post_init__(self) -> None:
        inner = self.authorizer_handler

        def authorizer(event: dict[str, Any], context: Any) -> dict[str, Any]:
            policy = inner(event, context)
            self._seen.usage_key = policy.get("usageIdentifierKey")
            return policy

        self.authorizer_handler = authorizer

    def _authorize(self, method: str, path: str, headers: dict[str, str]) -> dict[str, Any] | HttpResponse:
        self._seen.usage_key = None
        result = super()._authorize(method, path, headers)
        if isinstance(result, HttpResponse):
            return result
        verdict = self.plan.admit(self._seen.usage_key)
        if verdict == 403:
            return _message(403, "Forbidden")
        if verdict == 429:
            return _message(429, "Too Many Requests")
        return result


def _message(status: int, message: str) -> HttpResponse:
    return HttpResponse(status, {"Content-Type": "application/json"}, json.dumps({"message": message}))
