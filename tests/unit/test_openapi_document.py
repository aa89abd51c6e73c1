"""GET /openapi.json says what the API does (issue 14 section 4), and the request guard's pure checks (section 5)."""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

import pytest

from controlplane.core.models import Job, Provider
from controlplane.core.spec import TaskSpec
from controlplane.handlers import http_errors, request_guard
from controlplane.handlers import schemas as views

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    from controlplane.handlers import api
    from controlplane.handlers.openapi_doc import document

    return document(api.app)


def _responses(doc: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    return dict(doc["paths"][path][method]["responses"])


def test_success_codes_are_the_ones_the_api_returns(doc: dict[str, Any]) -> None:
    expected = {
        ("post", "/providers"): "201",
        ("delete", "/providers/{provider_id}"): "204",
        ("post", "/jobs"): "202",
        ("get", "/jobs"): "200",
        ("post", "/jobs/{job_id}/cancel"): "200",
    }
    for (method, path), status in expected.items():
        success = [code for code in _responses(doc, method, path) if code.startswith("2")]
        assert success == [status], (method, path, success)
    assert "content" not in _responses(doc, "delete", "/providers/{provider_id}")["204"]


def test_every_error_status_is_documented_with_the_error_schema(doc: dict[str, Any]) -> None:
    error_ref = {"$ref": "#/components/schemas/ErrorBody"}
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            for status in ("401", "403", "422", "500", "503"):
                assert responses[status]["content"]["application/json"]["schema"] == error_ref, (method, path)
            for status, response in responses.items():
                if not status.startswith("2"):
                    assert response["content"]["application/json"]["schema"] == error_ref, (method, path, status)
    assert {"404", "409", "422"} <= set(_responses(doc, "post", "/jobs/{job_id}/cancel"))
    assert {"400", "409", "413", "415", "422"} <= set(_responses(doc, "post", "/providers"))
    assert {"400", "404", "413", "415", "422"} <= set(_responses(doc, "post", "/jobs"))
    assert "HTTPValidationError" not in str(doc)


def test_success_responses_have_real_schemas(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if status == "204" or not status.startswith("2") or path.startswith("/tokens"):
                    continue
                ref = response["content"]["application/json"]["schema"]["$ref"]
                assert schemas[ref.rsplit("/", 1)[1]]["properties"], (method, path)
    assert schemas["JobAccepted"]["required"]


def test_the_bearer_scheme_covers_every_route(doc: dict[str, Any]) -> None:
    assert doc["openapi"].startswith("3.1")
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": doc["components"]["securitySchemes"]["bearerAuth"]["description"],
    }
    assert doc["security"] == [{"bearerAuth": []}]
    assert "/openapi.json" not in doc["paths"]  # the only public route is not an API operation


def test_ids_and_cursors_are_bounded_in_the_document(doc: dict[str, Any]) -> None:
    for path in ("/jobs/{job_id}", "/providers/{provider_id}"):
        for operation in doc["paths"][path].values():
            (parameter,) = [p for p in operation["parameters"] if p["in"] == "path"]
            assert parameter["schema"]["maxLength"] == 64
    (after,) = [p for p in doc["paths"]["/jobs/{job_id}/logs"]["get"]["parameters"] if p["name"] == "after"]
    assert "'maxLength': 64" in str(after["schema"])  # its form (ASCII digits) is checked by the service: 400
    assert doc["components"]["schemas"]["JobRequest"]["properties"]["provider_id"]["maxLength"] == 64


def test_public_views_match_their_documented_schemas() -> None:
    spec = TaskSpec.model_validate({"run": "python train.py", "envs": {"HF_TOKEN": "hf_x"}})
    job = Job(
        job_id="job-1", team_id="t", provider_id="prov-1", region="us-east-1", spec=spec, created_at=NOW, updated_at=NOW
    )
    view = views.JobView.model_validate(job.public())
    assert view.model_dump(mode="json")["spec"]["envs"] == {"HF_TOKEN": "<redacted>"}
    views.JobCancelled.model_validate(job.public() | {"terminated_instances": ["i-1"]})
    assert set(views.JobView.model_fields) == set(job.public())  # every field shown is documented, and no more
    provider = Provider(
        provider_id="prov-1",
        team_id="t",
        name="main",
        region="us-east-1",
        account_id="123456789012",
        user_arn="arn:aws:iam::123456789012:user/u",
        access_key_hint="AKIA…WXYZ",
        secret_arn="arn:aws:secretsmanager:us-east-1:123456789012:secret:x",
        created_at=NOW,
    )
    views.Provider.model_validate(provider.public())
    assert set(views.Provider.model_fields) == set(provider.public())
    from controlplane.core import catalog

    views.Catalog.model_validate(catalog.get().describe())


# -- the request guard -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        (None, None),
        ("application/json", None),
        ("Application/JSON; charset=UTF-8", None),
        ("multipart/form-data", 415),
        ("multipart/form-data; boundary=x", 415),
        ("application/x-www-form-urlencoded", 415),
        ("text/plain", 415),
        ("application/json; charset=latin-1", 415),
    ],
)
def test_media_types(content_type: str | None, status: int | None) -> None:
    rejection = request_guard.check_media_type(content_type)
    assert (rejection.status if rejection else None) == status


def test_depth_is_measured_without_parsing_and_ignores_brackets_in_strings() -> None:
    assert request_guard.json_depth('{"a": [1, {"b": "[[[[\\"{{"}]}') == 3
    assert request_guard.json_depth("[" * 1000 + "]" * 1000) == request_guard.MAX_JSON_DEPTH + 1  # stops early
    assert request_guard.check_json("[" * 33 + "]" * 33) is not None
    assert request_guard.check_json("[" * 32 + "]" * 32) is None


def test_bodies_must_be_strict_utf8_and_bounded() -> None:
    good = base64.b64encode('{"run": "é"}'.encode()).decode()
    assert request_guard.decode_body(good, True) == '{"run": "é"}'
    bad = request_guard.decode_body(base64.b64encode(b'{"run": "\xff"}').decode(), True)
    assert isinstance(bad, request_guard.Rejection)
    assert (bad.status, bad.code) == (400, "INVALID_ENCODING")
    surrogate = request_guard.decode_body('{"run": "\udcff"}', False)
    assert isinstance(surrogate, request_guard.Rejection)
    assert surrogate.status == 400
    too_big = request_guard.decode_body("x" * (request_guard.MAX_BODY_BYTES + 1), False)
    assert isinstance(too_big, request_guard.Rejection)
    assert too_big.status == 413


def test_validation_messages_never_repeat_secrets_or_request_text_as_field_names() -> None:
    problems = [
        {"loc": ("body", "run=x&envs=hf_abcdef"), "type": "extra_forbidden", "msg": "Extra inputs"},
        {"loc": ("body", "resources", "memory"), "type": "value_error", "msg": "Value error, 'hf_abcdef' is no size"},
        {"loc": ("body", "envs", "HF_TOKEN"), "type": "string_type", "msg": "Input should be a valid string"},
    ]
    secrets = http_errors.secret_values({"envs": {"HF_TOKEN": "hf_abcdef", "X": "no"}})
    body = http_errors.validation_body(problems, secrets)
    assert "hf_abcdef" not in str(body)
    assert [d["field"] for d in body["details"]] == ["(an unsupported field)", "resources.memory", "envs.HF_TOKEN"]
    assert secrets == ["hf_abcdef"]  # values under 4 characters are too common to redact
