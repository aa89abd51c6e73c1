"""The OpenAPI document is the API: schemathesis generates requests from GET /openapi.json (valid and invalid ones,
undeclared methods, missing headers) and runs every check it has against the local API front over loopback HTTP,
with a team's bearer token. Deterministic (derandomized) and bounded (few examples per operation, no deadline)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
import schemathesis.config
from hypothesis import HealthCheck, settings

from local.apigw import LocalHttpApi
from local.resources import create_artifacts
from tests.integration.conftest import ControlPlane, Tenant

MAX_EXAMPLES = 12  # per operation and phase; with ~12 operations this stays well under a minute


@pytest.fixture(scope="module")
def api_front(control_plane: ControlPlane) -> Iterator[str]:
    # the artifacts bucket, for the upload routes (POST /uploads starts multipart uploads in it)
    trusted = ["arn:aws:iam::123456789012:root"]
    create_artifacts(control_plane.admin("s3"), control_plane.admin("iam"), control_plane.names, trusted)
    front = LocalHttpApi(control_plane.gateway).start()
    try:
        yield front.url
    finally:
        front.stop()


def _document() -> dict[str, Any]:
    from controlplane.handlers import api
    from controlplane.handlers.openapi_doc import document

    return document(api.app)


# Loaded when the module is collected (schemathesis' fixture-based loading needs a pytest internal this pytest lacks);
# test_the_served_document_is_the_one_tested checks GET /openapi.json serves this same document.
# Requests that match the schema but that only the server can judge, answered 400 by design (docs/api.md):
# credentials are checked with sts:GetCallerIdentity, a cursor must be one the API issued, a catalog filter must
# name a region/GPU the catalog has, and a task spec must be one AWS sells an instance for. POST /jobs also answers
# 422 for what the task spec's validators check beyond its JSON Schema (core/spec.py).
SERVER_JUDGED = {
    "POST /providers": [400],
    "GET /jobs": [400],
    "GET /catalog": [400],
    "POST /jobs": [400, 422],
    "GET /jobs/{job_id}/outputs": [400],  # a cursor must be one the API issued
}
POSITIVE = ["2xx", "401", "403", "404", "409", "429"]
CONFIG = schemathesis.config.SchemathesisConfig.from_dict(
    {
        "operations": [
            {"include-name": name, "checks": {"positive_data_acceptance": {"expected-statuses": POSITIVE + extra}}}
            for name, extra in SERVER_JUDGED.items()
        ]
    }
)
schema = schemathesis.openapi.from_dict(_document(), config=CONFIG)


def test_the_served_document_is_the_one_tested(control_plane: ControlPlane) -> None:
    served = control_plane.call("GET", "/openapi.json")
    assert served.status == 200
    assert served.json() == _document()
    assert served.json()["openapi"].startswith("3.1")


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_answers_as_the_document_says(case: Any, api_front: str, tenant: Tenant) -> None:
    case.call_and_validate(base_url=api_front, headers={"Authorization": f"Bearer {tenant.token}"}, timeout=30)
