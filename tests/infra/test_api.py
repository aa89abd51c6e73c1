"""The REST API: every route of the api handler, each behind the TOKEN authorizer except the public ones, proxied to
the api function; stage throttling, access logs and tracing; no CORS."""

from __future__ import annotations

import json
from typing import Any

from controlplane.handlers import api as api_handler
from stacks import api as api_stack
from tests.infra.conftest import Synth


def handler_routes() -> set[tuple[str, str]]:
    """(METHOD, path) of every route the api Lambda serves, from its own resolver (OpenAPI) plus the public ones
    it keeps out of the document."""
    schema = api_handler.app.get_openapi_schema()
    routes = {
        (method.upper(), path)
        for path, item in schema.paths.items()
        for method in item.model_dump(exclude_none=True)
        if method in {"get", "post", "put", "patch", "delete"}
    }
    return routes | set(api_handler.PUBLIC_ROUTES)


def deployed_routes(synth: Synth) -> dict[tuple[str, str], dict[str, Any]]:
    resources = synth.of_type("AWS::ApiGateway::Resource")

    def path_of(resource: dict[str, Any]) -> str:
        if "Fn::GetAtt" in resource:  # the RestApi's RootResourceId
            return ""
        properties = resources[resource["Ref"]]["Properties"]
        return f"{path_of(properties['ParentId'])}/{properties['PathPart']}"

    return {
        (m["Properties"]["HttpMethod"], path_of(m["Properties"]["ResourceId"])): m["Properties"]
        for m in synth.of_type("AWS::ApiGateway::Method").values()
    }


def public(route: tuple[str, str]) -> bool:
    """A public route, or the ANY method (405 for other methods) of a public path."""
    return route in api_handler.PUBLIC_ROUTES or any(route == ("ANY", path) for _, path in api_handler.PUBLIC_ROUTES)


def test_every_handler_route_is_deployed_and_nothing_else(synth: Synth) -> None:
    deployed = set(deployed_routes(synth))
    routes = {route for route in deployed if route[0] != "ANY"}
    assert routes == handler_routes() == set(api_stack.ROUTES)
    # Every path also has ANY: other methods reach the handler, which answers 405 with Allow (docs/api.md).
    assert {path for method, path in deployed if method == "ANY"} == {path for _, path in api_stack.ROUTES}
    assert ("OPTIONS", "/jobs") not in deployed  # no CORS preflight: no browser clients


def test_each_route_uses_the_token_authorizer_except_the_public_ones(synth: Synth) -> None:
    (authorizer_id,) = synth.of_type("AWS::ApiGateway::Authorizer")
    for route, method in deployed_routes(synth).items():
        if public(route):
            assert method["AuthorizationType"] == "NONE", route
            assert "AuthorizerId" not in method
        else:
            assert method["AuthorizationType"] == "CUSTOM", route
            assert method["AuthorizerId"] == {"Ref": authorizer_id}, route
    assert {("GET", "/openapi.json")} == api_handler.PUBLIC_ROUTES


def test_each_route_is_a_proxy_to_the_api_function(synth: Synth) -> None:
    api_function, _ = synth.function("controlplane.handlers.api.handler")
    for route, method in deployed_routes(synth).items():
        integration = method["Integration"]
        assert (integration["Type"], integration["IntegrationHttpMethod"]) == ("AWS_PROXY", "POST"), route
        assert {"Fn::GetAtt": [api_function, "Arn"]} in integration["Uri"]["Fn::Join"][1], route


def test_the_token_authorizer(synth: Synth) -> None:
    (authorizer,) = synth.of_type("AWS::ApiGateway::Authorizer").values()
    properties = authorizer["Properties"]
    function, _ = synth.function("controlplane.handlers.authorizer.handler")
    assert properties["Type"] == "TOKEN"
    assert properties["IdentitySource"] == "method.request.header.Authorization"
    assert properties["AuthorizerResultTtlInSeconds"] == 300
    assert {"Fn::GetAtt": [function, "Arn"]} in properties["AuthorizerUri"]["Fn::Join"][1]


def test_the_stage_is_throttled_traced_and_access_logged_without_request_bodies(synth: Synth) -> None:
    (stage,) = synth.of_type("AWS::ApiGateway::Stage").values()
    properties = stage["Properties"]
    assert properties["StageName"] == "v1"
    assert properties["TracingEnabled"] is True
    (settings,) = properties["MethodSettings"]
    assert (settings["HttpMethod"], settings["ResourcePath"]) == ("*", "/*")
    assert (settings["ThrottlingRateLimit"], settings["ThrottlingBurstLimit"]) == (50, 100)
    assert settings["LoggingLevel"] == "ERROR"
    assert settings["DataTraceEnabled"] is False  # full request logging would write providers' secret keys
    access = properties["AccessLogSetting"]
    (log_group,) = [
        p["Ref"] for p in access["DestinationArn"]["Fn::Join"][1] if p in [{"Ref": r} for r in synth.resources]
    ]
    assert synth.resources[log_group]["Type"] == "AWS::Logs::LogGroup"
    assert synth.resources[log_group]["Properties"]["RetentionInDays"] == 90
    fields = json.loads(access["Format"])
    assert fields["requestId"] == "$context.requestId"
    assert fields["team"] == "$context.authorizer.principalId"
    assert "Authorization" not in access["Format"]


def test_an_unknown_route_answers_like_the_handler(synth: Synth) -> None:
    responses = {
        r["Properties"]["ResponseType"]: r["Properties"]
        for r in synth.of_type("AWS::ApiGateway::GatewayResponse").values()
    }
    properties = responses["MISSING_AUTHENTICATION_TOKEN"]
    assert properties["StatusCode"] == "404"
    body = json.loads(properties["ResponseTemplates"]["application/json"])
    assert body == {"code": "NOT_FOUND", "message": "no such route; see GET /openapi.json"}


def test_api_gateways_own_errors_have_the_apis_error_shape(synth: Synth) -> None:
    responses = {
        r["Properties"]["ResponseType"]: r["Properties"]
        for r in synth.of_type("AWS::ApiGateway::GatewayResponse").values()
    }
    codes = {"UNAUTHORIZED": "UNAUTHORIZED", "ACCESS_DENIED": "FORBIDDEN", "REQUEST_TOO_LARGE": "PAYLOAD_TOO_LARGE",
             "THROTTLED": "THROTTLED", "QUOTA_EXCEEDED": "THROTTLED", "DEFAULT_4XX": "BAD_REQUEST",
             "DEFAULT_5XX": "INTERNAL_ERROR"}  # fmt: skip
    for response_type, code in codes.items():
        template = responses[response_type]["ResponseTemplates"]["application/json"]
        message = '"message from API Gateway"'  # what $context.error.messageString renders (a quoted string)
        assert json.loads(template.replace("$context.error.messageString", message)) == {
            "code": code,
            "message": "message from API Gateway",
        }


def test_api_gateway_may_invoke_the_functions_only_from_this_api(synth: Synth) -> None:
    rest_api = synth.logical_id(synth.stack.api.rest_api)
    api_function, _ = synth.function("controlplane.handlers.api.handler")
    authorizer, _ = synth.function("controlplane.handlers.authorizer.handler")
    permissions = [
        p["Properties"]
        for p in synth.of_type("AWS::Lambda::Permission").values()
        if p["Properties"]["Principal"] == "apigateway.amazonaws.com"
    ]
    assert {p["FunctionName"]["Fn::GetAtt"][0] for p in permissions} == {api_function, authorizer}
    for permission in permissions:
        assert {"Ref": rest_api} in permission["SourceArn"]["Fn::Join"][1]
    paths = {path for _, path in api_stack.ROUTES}  # one per route, and one per path's ANY method
    invoke_api = [p for p in permissions if p["FunctionName"]["Fn::GetAtt"][0] == api_function]
    assert len(invoke_api) == len(api_stack.ROUTES) + len(paths)
