"""Inputs that must not crash anything (issue 14 section 5), wrong methods (section 4), and the error shape: every
answer here is the documented JSON error {code, message, details?} and none repeats the request's body."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest

from controlplane.handlers.schemas import ErrorBody
from local.apigw import LocalHttpApi
from tests.integration.conftest import ControlPlane, Tenant

SECRET = "hf_do-not-echo-0123456789"
NESTED = "[" * 1000 + "]" * 1000  # 2,000 bytes


def _error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status == status, (response.status, response.body)
    body = response.json()
    ErrorBody.model_validate(body)
    assert set(body) <= {"code", "message", "details"}
    if code is not None:
        assert body["code"] == code, body
    return dict(body)


@pytest.fixture(scope="module")
def front(control_plane: ControlPlane) -> Iterator[LocalHttpApi]:
    api = LocalHttpApi(control_plane.gateway).start()
    try:
        yield api
    finally:
        api.stop()


def _http(
    front: LocalHttpApi, method: str, path: str, token: str | None, body: bytes | None = None, **headers: str
) -> tuple[int, dict[str, str], bytes]:
    host, port = front.server.server_address[:2]
    connection = http.client.HTTPConnection(str(host), int(port), timeout=30)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        connection.request(method, path, body=body, headers={k.replace("_", "-"): v for k, v in headers.items()})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


# -- section 5 -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/jobs", "/providers"])
def test_multipart_without_a_boundary_is_415_not_a_crash(
    control_plane: ControlPlane, tenant: Tenant, path: str
) -> None:
    response = control_plane.call(
        "POST", path, tenant.token, body="name=x", headers={"Content-Type": "multipart/form-data"}
    )
    _error(response, 415, "UNSUPPORTED_MEDIA_TYPE")


@pytest.mark.parametrize("path", ["/jobs", "/providers"])
def test_json_nested_a_thousand_levels_is_400(control_plane: ControlPlane, tenant: Tenant, path: str) -> None:
    for body in (NESTED, '{"run": ' + NESTED + "}"):
        response = control_plane.call(
            "POST", path, tenant.token, body=body, headers={"Content-Type": "application/json"}
        )
        _error(response, 400, "INVALID_JSON")


def test_a_non_ascii_digit_as_the_logs_cursor_is_refused_not_a_crash(
    control_plane: ControlPlane, tenant: Tenant
) -> None:
    body = {"provider_id": tenant.provider_id, "resources": {"accelerators": "A10G:1"}, "run": "true"}
    job_id = control_plane.call("POST", "/jobs", tenant.token, body=body).json()["job_id"]
    for after in ("²", "١٢", "1e3", "-1"):
        response = control_plane.call("GET", f"/jobs/{job_id}/logs", tenant.token, query={"after": after})
        _error(response, 400, "INVALID_REQUEST")  # the documented answer for a cursor that is not a byte offset
    assert control_plane.call("GET", f"/jobs/{job_id}/logs", tenant.token, query={"after": "0"}).status == 200


def test_a_form_encoded_body_is_415_and_never_echoed(control_plane: ControlPlane, tenant: Tenant) -> None:
    form = f"provider_id={tenant.provider_id}&run=train&envs[HF_TOKEN]={SECRET}"
    for path in ("/jobs", "/providers"):
        response = control_plane.call(
            "POST", path, tenant.token, body=form, headers={"Content-Type": "application/x-www-form-urlencoded"}
        )
        _error(response, 415, "UNSUPPORTED_MEDIA_TYPE")
        assert SECRET not in response.body
        assert "HF_TOKEN" not in response.body


def test_a_422_repeats_neither_env_values_nor_keys_made_of_request_text(
    control_plane: ControlPlane, tenant: Tenant
) -> None:
    body = {
        "provider_id": tenant.provider_id,
        "run": "true",
        "envs": {"HF_TOKEN": SECRET, "N": 5},
        f"HF_TOKEN={SECRET}&run=x": 1,
        "resources": {"memory": SECRET},
    }
    response = control_plane.call("POST", "/jobs", tenant.token, body=body)
    error = _error(response, 422, "VALIDATION_ERROR")
    assert SECRET not in response.body
    fields = {detail["field"] for detail in error["details"]}
    assert "resources.memory" in fields  # plain field names are still named
    assert "(an unsupported field)" in fields


def test_invalid_utf8_in_a_json_body_is_400_not_replaced(
    control_plane: ControlPlane, tenant: Tenant, front: LocalHttpApi
) -> None:
    raw = b'{"provider_id": "' + tenant.provider_id.encode() + b'", "run": "echo \xff\xfe"}'
    response = control_plane.call("POST", "/jobs", tenant.token, body=raw, headers={"Content-Type": "application/json"})
    _error(response, 400, "INVALID_ENCODING")
    status, _, payload = _http(front, "POST", "/jobs", tenant.token, raw, Content_Type="application/json")
    assert status == 400
    assert json.loads(payload)["code"] == "INVALID_ENCODING"
    jobs = control_plane.call("GET", "/jobs", tenant.token).json()["jobs"]
    assert jobs == []  # nothing was submitted with U+FFFD in place of the bytes


def test_ids_are_bounded_before_they_become_dynamodb_keys(control_plane: ControlPlane, tenant: Tenant) -> None:
    long_id = "job-" + "a" * 5000
    for method, path in [
        ("GET", f"/jobs/{long_id}"),
        ("GET", f"/jobs/{long_id}/logs"),
        ("POST", f"/jobs/{long_id}/cancel"),
        ("GET", f"/providers/{long_id}"),
        ("DELETE", f"/providers/{long_id}"),
    ]:
        _error(control_plane.call(method, path, tenant.token), 422, "VALIDATION_ERROR")
    body = {"provider_id": "prov-" + "0" * 5000, "run": "true"}
    _error(control_plane.call("POST", "/jobs", tenant.token, body=body), 422, "VALIDATION_ERROR")
    too_long_key = control_plane.call(
        "POST",
        "/jobs",
        tenant.token,
        body={"provider_id": tenant.provider_id, "run": "x"},
        headers={"Idempotency-Key": "k" * 256},
    )
    _error(too_long_key, 422, "VALIDATION_ERROR")


def test_bodies_over_the_limit_and_non_standard_json_are_refused(control_plane: ControlPlane, tenant: Tenant) -> None:
    big = json.dumps({"provider_id": tenant.provider_id, "run": "x" * (4 * 1024 * 1024)})
    _error(control_plane.call("POST", "/jobs", tenant.token, body=big), 413, "PAYLOAD_TOO_LARGE")
    for text in ('{"run": NaN}', '{"max_runtime_minutes": ' + "9" * 5000 + "}", "{not json"):
        response = control_plane.call("POST", "/jobs", tenant.token, body=text)
        _error(response, 422, "VALIDATION_ERROR")


# -- section 4: methods and the error shape --------------------------------------------------------------------


@pytest.mark.parametrize("method", ["TRACE", "OPTIONS", "PUT", "PATCH", "DELETE", "QUERY"])
def test_a_wrong_method_is_405_with_allow_and_the_error_body(front: LocalHttpApi, tenant: Tenant, method: str) -> None:
    status, headers, payload = _http(front, method, "/jobs", tenant.token)
    assert status == 405
    assert headers["Allow"] == "GET, POST"
    assert headers["Content-Type"] == "application/json"
    body = json.loads(payload)
    ErrorBody.model_validate(body)
    assert body["code"] == "METHOD_NOT_ALLOWED"


def test_head_is_405_without_a_body_and_the_openapi_path_needs_no_token(front: LocalHttpApi, tenant: Tenant) -> None:
    status, headers, payload = _http(front, "HEAD", "/jobs/job-0123", tenant.token)
    assert (status, headers["Allow"], payload) == (405, "GET", b"")
    status, headers, payload = _http(front, "POST", "/openapi.json", None)
    assert (status, headers["Allow"], json.loads(payload)["code"]) == (405, "GET", "METHOD_NOT_ALLOWED")


def test_gateway_answers_have_the_error_shape(control_plane: ControlPlane, tenant: Tenant, front: LocalHttpApi) -> None:
    _error(control_plane.call("GET", "/jobs"), 401, "UNAUTHORIZED")
    _error(control_plane.call("GET", "/jobs", "ej_not-a-token"), 401, "UNAUTHORIZED")
    _error(control_plane.call("GET", "/no/such/route", tenant.token), 404, "NOT_FOUND")
    response = control_plane.call("POST", "/jobs", tenant.token, body="x", headers={"Content-Type": "text/plain"})
    _error(response, 415, "UNSUPPORTED_MEDIA_TYPE")
    status, _, payload = _http(front, "POST", "/jobs", tenant.token, b"", Content_Length="99999999999")
    assert status == 413
    assert json.loads(payload)["code"] == "PAYLOAD_TOO_LARGE"
