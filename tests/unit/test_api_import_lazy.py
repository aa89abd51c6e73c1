"""Cold start (issue 17): importing the API handler loads neither its routes (Powertools' REST resolver, Pydantic, the
request models and response views) nor the X-Ray Tracer; its first request loads them, once, and answers as the API
always has; the response views are built only for the OpenAPI document (docs/cold-start.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
# What the handler's import leaves to its first request: the resolver and its routes, Pydantic and the models the
# routes validate with, the X-Ray SDK (the Tracer), and the wiring (services, the AWS SDK).
LEFT_TO_THE_FIRST_REQUEST = (
    "controlplane.handlers.api_routes",
    "controlplane.handlers.api_artifacts",
    "controlplane.handlers.schemas",
    "controlplane.handlers.openapi_doc",
    "controlplane.handlers.container",
    "controlplane.core.models",
    "controlplane.service",
    "aws_lambda_powertools.event_handler",
    "pydantic",
    "aws_xray_sdk",
    "boto3",
)
_PROBE = """
import json, sys
from controlplane.handlers import api
loaded_by_import = sorted(sys.modules)
from local.apigw import LocalApiGateway
from controlplane.handlers import container

def authorizer(event, context):
    statement = {"Effect": "Allow", "Action": "execute-api:Invoke", "Resource": "*"}
    return {"principalId": "team-1", "policyDocument": {"Statement": [statement]}, "context": {"team_id": "team-1"}}

class Jobs:
    def get(self, team_id, job_id):
        from controlplane.core.errors import NotFound
        raise NotFound("job", job_id)

container.use(container.Services(teams=None, providers=None, jobs=Jobs()))
gateway = LocalApiGateway(api.handler, authorizer, api.PUBLIC_ROUTES)
answers = [
    gateway.request(method, path, headers={"Authorization": "Bearer t", **headers}, body=body)
    for method, path, headers, body in map(json.loads, sys.argv[1:])
]
from controlplane.handlers import api_routes, schemas
print(json.dumps({
    "loaded_by_import": loaded_by_import,
    "loaded": sorted(sys.modules),
    "answers": [[a.status, a.json()] for a in answers],
    "same_app": api.app is api_routes.app,
    "same_tracer": api.tracer is api.tracer,
    "views_built": {n: getattr(schemas, n).__pydantic_complete__ for n in ("JobView", "ErrorBody", "Catalog")},
}))
"""


Request = tuple[str, str, dict[str, str], str | None]  # method, path, headers, body


def _get(path: str) -> Request:
    return ("GET", path, {}, None)


def _run(*requests: Request) -> dict[str, Any]:
    """Import the handler in a fresh interpreter, then send `requests` through the local API front (every route
    authorised for team-1; GET /jobs/{id} answers 404 from a fake job service)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'lambdas'}"}
    command = [sys.executable, "-c", _PROBE, *(json.dumps(request) for request in requests)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    answer: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return answer


def _under(modules: list[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in prefixes))


def test_the_handler_import_leaves_routes_models_tracer_and_wiring_to_the_first_request() -> None:
    probe = _run(_get("/jobs/job-1"))
    assert not _under(probe["loaded_by_import"], LEFT_TO_THE_FIRST_REQUEST)
    assert "aws_lambda_powertools.logging" in probe["loaded_by_import"]  # the Logger decorates the handler
    first_request = _under(probe["loaded"], LEFT_TO_THE_FIRST_REQUEST)
    for needed in ("controlplane.handlers.api_routes", "controlplane.core.models", "pydantic"):
        assert needed in first_request
    assert "aws_lambda_powertools.event_handler.openapi.models" not in first_request  # GET /openapi.json's only
    assert probe["same_app"]
    assert probe["same_tracer"]


_FORM = {"Content-Type": "application/x-www-form-urlencoded"}
_JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize(
    ("request_", "status", "answer"),
    [
        (_get("/jobs/job-1"), 404, {"code": "NOT_FOUND", "message": "job 'job-1' not found"}),  # the service's error
        (_get("/nope"), 404, {"code": "NOT_FOUND", "message": "no such route; see GET /openapi.json"}),
        (("PUT", "/jobs", {}, None), 405, {"message": "PUT is not allowed on /jobs; allowed: GET, POST"}),
        (("POST", "/jobs", _FORM, "run=x"), 415, {"code": "UNSUPPORTED_MEDIA_TYPE"}),  # request_guard, no route runs
        (("POST", "/jobs", _JSON, '{"run": "x", "resources": {"cpus": []}}'), 422, {"code": "VALIDATION_ERROR"}),
        (_get("/jobs/-bad"), 422, {"code": "VALIDATION_ERROR"}),  # the path parameter's pattern
    ],
    ids=["route", "no-route", "no-method", "not-json", "bad-body", "bad-path"],
)
def test_a_first_request_answers_as_the_api_does(request_: Request, status: int, answer: dict[str, str]) -> None:
    ((got_status, body),) = _run(request_)["answers"]
    assert got_status == status, body
    assert {key: body.get(key) for key in answer} == answer


def test_a_request_leaves_the_response_views_unbuilt() -> None:
    """Powertools keeps a route's response models for the OpenAPI document only, and the views are built at their
    first use (schemas.DeferredModel): a request, its route's view among them, builds none. The document they make
    is checked in test_openapi_document.py and against the served one in test_openapi_contract.py."""
    served = _run(_get("/jobs/job-1"), _get("/nope"))
    assert served["views_built"] == {"JobView": False, "ErrorBody": False, "Catalog": False}
