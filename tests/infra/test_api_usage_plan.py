"""Per-team fairness in the REST API: the API key comes from the authorizer (the team's usage key), every authorised
method requires one, and the usage plan throttles each key on its own bucket, under the stage-wide limit."""

from __future__ import annotations

from controlplane.handlers import api as api_handler
from stacks import api as api_stack
from tests.infra.conftest import Synth
from tests.infra.test_api import deployed_routes


def test_the_api_key_comes_from_the_authorizer_and_every_authorised_route_needs_one(synth: Synth) -> None:
    (rest_api,) = synth.of_type("AWS::ApiGateway::RestApi").values()
    assert rest_api["Properties"]["ApiKeySourceType"] == "AUTHORIZER"
    public_paths = {path for _, path in api_handler.PUBLIC_ROUTES}
    for route, method in deployed_routes(synth).items():
        assert method.get("ApiKeyRequired", False) is (route[1] not in public_paths), route
    assert {("GET", "/tokens"), ("DELETE", "/tokens/{token_id}")} <= set(deployed_routes(synth))


def test_the_usage_plan_throttles_each_team_under_the_stage_limit(synth: Synth) -> None:
    (plan,) = synth.of_type("AWS::ApiGateway::UsagePlan").values()
    properties = plan["Properties"]
    assert properties["Throttle"] == {
        "RateLimit": api_stack.TEAM_RATE_LIMIT,
        "BurstLimit": api_stack.TEAM_BURST_LIMIT,
    }
    assert api_stack.TEAM_RATE_LIMIT < api_stack.THROTTLING_RATE_LIMIT
    (stage,) = properties["ApiStages"]
    (stage_id,) = synth.of_type("AWS::ApiGateway::Stage")
    assert stage["Stage"] == {"Ref": stage_id}
    assert "Quota" not in properties  # throttling only: no monthly cap on a team
    output = synth.template["Outputs"][api_stack.USAGE_PLAN_OUTPUT]
    (plan_id,) = synth.of_type("AWS::ApiGateway::UsagePlan")
    assert output["Value"] == {"Ref": plan_id}
