"""The HTTP API Lambda: thin routes over the services. The team always comes from the authorizer, never the body.

A cold start imports this module only: Powertools' Logger and Metrics, the request guard and the wiring's accessors
(docs/cold-start.md). The resolver with its routes (handlers/api_routes.py: Powertools' REST resolver with OpenAPI
validation, Pydantic, the request models) and the X-Ray Tracer are made at the first request, which needs them,
and stay for the container's life. `api.app` and `api.tracer` still name them (made at first use)."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.logging import correlation_paths

from controlplane.handlers import request_guard

if TYPE_CHECKING:
    from types import ModuleType

    from aws_lambda_powertools.event_handler import APIGatewayRestResolver
    from aws_lambda_powertools.utilities.typing import LambdaContext

    app: APIGatewayRestResolver  # every route (handlers/api_routes.py), made at first use: see __getattr__
    tracer: Tracer  # made at first use: see __getattr__

Handler = Callable[[dict[str, Any], "LambdaContext"], dict[str, Any]]

logger = Logger(service="ec2jobs-api")
metrics = Metrics(namespace="ec2jobs", service="ec2jobs-api")
_patched = False

# Routes API Gateway serves without the authorizer (read by the CDK stack and the local API front).
PUBLIC_ROUTES: frozenset[tuple[str, str]] = frozenset({("GET", "/openapi.json")})


def __getattr__(name: str) -> Any:
    """`app` (the resolver with every route) and `tracer`, made at their first use."""
    if name == "app":
        return _routes().app
    if name == "tracer":
        return _tracer()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _routes() -> ModuleType:
    """handlers/api_routes.py: the resolver and every route, imported at the first request (about 230 ms of the
    cold start when this module imported it; Python's import lock makes it once, whichever thread asks first)."""
    from controlplane.handlers import api_routes

    return api_routes


@functools.cache
def _tracer() -> Tracer:
    """The Tracer, made at the first request: making it imports the X-Ray SDK (and wrapt and asyncio with it, about
    60 ms on their own). auto_patch=False: X-Ray's patch of botocore and the other libraries it traces runs at the
    first request too (_trace_aws_calls), before any AWS call; at import it would import botocore (about 45 ms)
    before anything needs it."""
    return Tracer(service="ec2jobs-api", auto_patch=False)


def _traced(function: Handler) -> Handler:
    """`tracer.capture_lambda_handler(function)`, with the Tracer made at the first call (the subsegment keeps the
    function's name, `## handler`, and the first call is still the one annotated ColdStart)."""
    traced: Handler | None = None

    @functools.wraps(function)
    def call(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        nonlocal traced
        if traced is None:
            traced = _tracer().capture_lambda_handler(function)
        return traced(event, context)

    return call


def _check_body(event: dict[str, Any]) -> dict[str, Any]:
    """A route that takes a JSON body gets it only after request_guard's checks; otherwise the answer is the
    documented error, built here because no route runs."""
    method, path = str(event.get("httpMethod") or "").upper(), str(event.get("path") or "")
    if not _routes().takes_body(method, path):
        return event
    checked = request_guard.check_body(event)
    if isinstance(checked, request_guard.Rejection):
        return {
            "statusCode": checked.status,
            "headers": {"Content-Type": "application/json"},
            "body": json.dumps(checked.body()),
            "isBase64Encoded": False,
        }
    return {**event, "body": checked, "isBase64Encoded": False}


def _trace_aws_calls() -> None:
    """Patch the libraries X-Ray traces (Tracer.patch(): all it supports, as auto_patch does), once per container."""
    global _patched
    if not _patched:
        _tracer().patch()
        _patched = True


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST, log_event=False)
@_traced
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    _trace_aws_calls()
    checked = _check_body(event)
    if "statusCode" in checked:
        return checked
    resolved: dict[str, Any] = _routes().app.resolve(checked, context)
    return resolved
