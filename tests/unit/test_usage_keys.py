"""A team's usage key (the adapter scripts/team_admin.py uses) against moto's API Gateway, in process: an enabled API
key, in the usage plan, deleted again (a second delete is fine)."""

from __future__ import annotations

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from controlplane.adapters.usage_plans import ApiGatewayUsageKeys
from local import guard


@pytest.fixture(autouse=True)
def _fake_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFAKEEC2JOBSLOCAL")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", guard.FAKE_SECRET_ACCESS_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)  # moto intercepts in process; nothing leaves


@mock_aws
def test_usage_keys_are_api_keys_in_the_usage_plan() -> None:
    apigateway = boto3.client("apigateway", region_name="us-east-1")
    plan_id = apigateway.create_usage_plan(name="teams", throttle={"rateLimit": 10, "burstLimit": 20})["id"]
    keys = ApiGatewayUsageKeys(apigateway, plan_id)
    key_id, value = keys.create("ml-team")
    assert 20 <= len(value) <= 128
    (in_plan,) = apigateway.get_usage_plan_keys(usagePlanId=plan_id)["items"]
    assert (in_plan["id"], in_plan["value"], in_plan["type"]) == (key_id, value, "API_KEY")
    key = apigateway.get_api_key(apiKey=key_id, includeValue=True)
    assert (key["enabled"], key["name"], key["tags"]["ec2jobs:team-id"]) == (True, "ec2jobs-team-ml-team", "ml-team")
    keys.delete(key_id)
    keys.delete(key_id)  # already gone: fine
    with pytest.raises(ClientError, match="NotFound"):
        apigateway.get_api_key(apiKey=key_id)
