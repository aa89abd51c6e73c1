"""Api: the REST API in front of the api Lambda (proxy integration), every route but the public ones behind the
TOKEN authorizer, with stage throttling, a per-team usage plan, access logs, execution error logs and X-Ray tracing.
No CORS: the clients are the CLI and scripts, not browsers on another origin.

Per-team fairness: the API's key source is AUTHORIZER and every authorised method requires an API key, so API
Gateway throttles each request against the bucket of the key the authorizer returned (`usageIdentifierKey`, the
team's usage key); keys in one usage plan do not share its limit. One team's polling loop is answered 429 by API
Gateway once it exceeds TEAM_RATE_LIMIT, before any Lambda runs, and other teams keep their own buckets. The admin
script (scripts/team_admin.py) gives each team its key in the plan named by the stack output UsagePlanId."""

from __future__ import annotations

import json

from aws_cdk import CfnOutput, Duration, RemovalPolicy
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from controlplane.handlers.api import PUBLIC_ROUTES
from stacks import nag
from stacks.settings import Settings

STAGE = "v1"
THROTTLING_RATE_LIMIT = 50  # requests per second, steady
THROTTLING_BURST_LIMIT = 100
# Per team (per usage key), applied before the stage limit: at most TEAM_RATE_LIMIT requests/s steady. With
# THROTTLING_RATE_LIMIT 50, five teams at full speed fill the stage; raise the stage limit as busy teams grow.
TEAM_RATE_LIMIT = 10
TEAM_BURST_LIMIT = 20
# Per token: a token is looked up once per 5 minutes at most, so a revocation, an expiry or a team's deletion takes
# effect within 300 s (API Gateway's default TTL; 0 would call the authorizer on every request).
AUTHORIZER_CACHE = Duration.minutes(5)
USAGE_PLAN_OUTPUT = "UsagePlanId"
# Every route of controlplane/handlers/api_routes.py (tests/infra checks both lists agree).
ROUTES: tuple[tuple[str, str], ...] = (
    ("GET", "/catalog"),
    ("POST", "/providers"),
    ("GET", "/providers"),
    ("GET", "/providers/{provider_id}"),
    ("DELETE", "/providers/{provider_id}"),
    ("POST", "/jobs"),
    ("GET", "/jobs"),
    ("GET", "/jobs/{job_id}"),
    ("GET", "/jobs/{job_id}/logs"),
    ("POST", "/jobs/{job_id}/cancel"),
    ("GET", "/jobs/{job_id}/outputs"),
    ("POST", "/uploads"),
    ("POST", "/uploads/{upload_id}/parts"),
    ("POST", "/uploads/{upload_id}/complete"),
    ("GET", "/tokens"),
    ("DELETE", "/tokens/{token_id}"),
    ("GET", "/limits"),
    ("GET", "/usage"),
    ("GET", "/admin/teams/{team_id}/limits"),
    ("PUT", "/admin/teams/{team_id}/limits"),
    ("DELETE", "/admin/teams/{team_id}/limits"),
    ("GET", "/openapi.json"),
)
# One JSON object per request. The team (the authorizer's principal) is logged; headers and bodies never are.
ACCESS_LOG_FIELDS = {
    "requestId": "$context.requestId",
    "requestTime": "$context.requestTime",
    "ip": "$context.identity.sourceIp",
    "userAgent": "$context.identity.userAgent",
    "httpMethod": "$context.httpMethod",
    "resourcePath": "$context.resourcePath",
    "path": "$context.path",
    "status": "$context.status",
    "responseLength": "$context.responseLength",
    "responseLatency": "$context.responseLatency",
    "integrationLatency": "$context.integrationLatency",
    "team": "$context.authorizer.principalId",
    "xrayTraceId": "$context.xrayTraceId",
}


class Api(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        handler: lambda_.IFunction,
        authorizer: lambda_.IFunction,
        settings: Settings,
    ) -> None:
        super().__init__(scope, construct_id)
        access_logs = logs.LogGroup(
            self, "AccessLogs", retention=settings.log_retention, removal_policy=RemovalPolicy.RETAIN
        )
        self.rest_api = apigw.RestApi(
            self,
            "RestApi",
            description="ec2jobs control plane API",
            endpoint_types=[apigw.EndpointType.REGIONAL],
            api_key_source_type=apigw.ApiKeySourceType.AUTHORIZER,  # the team's key, from the authorizer
            cloud_watch_role=settings.api_cloudwatch_role,
            # Kept on removal: it is the account's, and other APIs there may log through it.
            cloud_watch_role_removal_policy=RemovalPolicy.RETAIN if settings.api_cloudwatch_role else None,
            deploy_options=apigw.StageOptions(
                stage_name=STAGE,
                throttling_rate_limit=THROTTLING_RATE_LIMIT,
                throttling_burst_limit=THROTTLING_BURST_LIMIT,
                tracing_enabled=True,
                metrics_enabled=True,
                logging_level=apigw.MethodLoggingLevel.ERROR,
                data_trace_enabled=False,  # full request logging would write provider secret keys to CloudWatch
                access_log_destination=apigw.LogGroupLogDestination(access_logs),
                access_log_format=apigw.AccessLogFormat.custom(json.dumps(ACCESS_LOG_FIELDS)),
            ),
        )
        self.rest_api.node.try_remove_child("Endpoint")  # its URL output: the stack names it ApiUrl instead
        # A path or method the API does not have answers like the handler's own not-found (API Gateway's default
        # is 403 "Missing Authentication Token", which sends people looking for a token problem).
        self.rest_api.add_gateway_response(
            "UnknownRoute",
            type=apigw.ResponseType.MISSING_AUTHENTICATION_TOKEN,
            status_code="404",
            templates={
                "application/json": json.dumps({"code": "NOT_FOUND", "message": "no such route; see GET /openapi.json"})
            },
        )
        # API Gateway's own answers in the API's error shape {code, message} (docs/api.md).
        for construct_id, response_type, code in (
            ("Unauthorized", apigw.ResponseType.UNAUTHORIZED, "UNAUTHORIZED"),
            ("AccessDenied", apigw.ResponseType.ACCESS_DENIED, "FORBIDDEN"),
            ("RequestTooLarge", apigw.ResponseType.REQUEST_TOO_LARGE, "PAYLOAD_TOO_LARGE"),
            ("Throttled", apigw.ResponseType.THROTTLED, "THROTTLED"),
            ("QuotaExceeded", apigw.ResponseType.QUOTA_EXCEEDED, "THROTTLED"),
            ("Default4xx", apigw.ResponseType.DEFAULT_4_XX, "BAD_REQUEST"),
            ("Default5xx", apigw.ResponseType.DEFAULT_5_XX, "INTERNAL_ERROR"),
        ):
            self.rest_api.add_gateway_response(
                construct_id,
                type=response_type,
                templates={"application/json": f'{{"code": "{code}", "message": $context.error.messageString}}'},
            )
        token_authorizer = apigw.TokenAuthorizer(
            self,
            "TokenAuthorizer",
            handler=authorizer,
            identity_source=apigw.IdentitySource.header("Authorization"),
            results_cache_ttl=AUTHORIZER_CACHE,
        )
        integration = apigw.LambdaIntegration(handler, proxy=True, allow_test_invoke=False)
        for method, path in ROUTES:
            resource = self.rest_api.root.resource_for_path(path)
            if (method, path) in PUBLIC_ROUTES:
                public = resource.add_method(method, integration, authorization_type=apigw.AuthorizationType.NONE)
                reason = (
                    f"{method} {path} is public by design (controlplane.handlers.api.PUBLIC_ROUTES): the OpenAPI "
                    "document describes the API and holds no team data; every other route uses the TOKEN authorizer."
                )
                nag.acknowledge(public.node.default_child, "AwsSolutions-APIG4", reason)
                nag.acknowledge(public.node.default_child, "AwsSolutions-COG4", reason)
            else:
                authorized = resource.add_method(
                    method, integration, authorizer=token_authorizer, api_key_required=True
                )
                nag.acknowledge(
                    authorized.node.default_child,
                    "AwsSolutions-COG4",
                    "Teams authenticate with bearer tokens that the Lambda TOKEN authorizer on this method checks "
                    "(only their SHA-256 is stored, in DynamoDB); there are no Cognito users to authorise.",
                )
        # Every other method of a known path reaches the handler too, which answers 405 with `Allow` (not API
        # Gateway's 403 "Missing Authentication Token").
        for path in sorted({path for _, path in ROUTES}):
            resource = self.rest_api.root.resource_for_path(path)
            if any(route_path == path for _, route_path in PUBLIC_ROUTES):
                other = resource.add_method("ANY", integration, authorization_type=apigw.AuthorizationType.NONE)
                reason = (
                    f"The public path {path} (controlplane.handlers.api.PUBLIC_ROUTES) holds no team data; its other "
                    "methods reach the handler only to be answered 405 with the allowed methods."
                )
                nag.acknowledge(other.node.default_child, "AwsSolutions-APIG4", reason)
                nag.acknowledge(other.node.default_child, "AwsSolutions-COG4", reason)
            else:
                other = resource.add_method("ANY", integration, authorizer=token_authorizer, api_key_required=True)
                nag.acknowledge(
                    other.node.default_child,
                    "AwsSolutions-COG4",
                    "Teams authenticate with bearer tokens that the Lambda TOKEN authorizer on this method checks too; "
                    "the handler answers the methods the path does not have with 405 and the allowed methods.",
                )
        self.usage_plan = self.rest_api.add_usage_plan(
            "TeamUsagePlan",
            description="ec2jobs: one API key per team (scripts/team_admin.py); each key has its own bucket",
            throttle=apigw.ThrottleSettings(rate_limit=TEAM_RATE_LIMIT, burst_limit=TEAM_BURST_LIMIT),
            api_stages=[apigw.UsagePlanPerApiStage(api=self.rest_api, stage=self.rest_api.deployment_stage)],
        )
        output = CfnOutput(
            self,
            USAGE_PLAN_OUTPUT,
            value=self.usage_plan.usage_plan_id,
            description="the usage plan each team's API key joins (scripts/team_admin.py)",
        )
        output.override_logical_id(USAGE_PLAN_OUTPUT)
        nag.acknowledge(
            self.rest_api.node.default_child,
            "AwsSolutions-APIG2",
            "Requests are validated by the api Lambda (pydantic models, also published as the OpenAPI document), "
            "which answers 422 with every malformed field in the API's own error shape; an API Gateway request "
            "validator would duplicate that check with vaguer messages.",
        )
        nag.acknowledge(
            self.rest_api.deployment_stage,
            "AwsSolutions-APIG3",
            "No WAFv2 web ACL by default: every route but the OpenAPI document needs a bearer token (checked by the "
            "authorizer, results cached per token), each team is throttled by its usage key (10 requests/s, "
            "burst 20) and the stage as a whole (50 requests/s, burst 100). A web ACL "
            "(a monthly fee per ACL and rule, plus per-request fees) is for deployments that want IP or geo "
            "filtering or AWS managed rule groups; associate one with the stage.",
        )
        if settings.api_cloudwatch_role:
            nag.acknowledge(
                self.rest_api.node.find_child("CloudWatchRole"),
                "AwsSolutions-IAM4",
                "API Gateway's account-level logging role (needed for the access and execution logs) uses the AWS "
                "managed policy AWS documents for it; it is one role per account and region, shared by every REST "
                "API there, so it cannot be scoped to this API.",
                finding="Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AmazonAPIGatewayPushToCloudWatchLogs",
            )

    @property
    def url(self) -> str:
        return str(self.rest_api.url)
