"""Tokens over the local API front and the emulated state table: expiry, revocation, listing without revealing, a
deleted team's tokens refused, and per-team throttling by usage key (one team's polling loop cannot starve another)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest

from controlplane.core.ids import hash_token
from controlplane.core.tokens import DEFAULT_TOKEN_DAYS
from local.usage_plans import LocalUsagePlan, UsagePlanGateway
from tests.integration.conftest import ControlPlane

pytestmark = pytest.mark.emulator


def _teams() -> Any:
    from controlplane.handlers import container

    return container.get().teams


def _team_id() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def _state_table() -> Any:
    import boto3

    from controlplane import config

    return boto3.resource("dynamodb").Table(config.get().state_table)


def test_a_token_expires_after_its_lifetime_and_the_default_is_90_days(control_plane: ControlPlane) -> None:
    team = _team_id()
    fresh = _teams().issue(team)
    assert fresh.record.expires_at - fresh.record.created_at == dt.timedelta(days=DEFAULT_TOKEN_DAYS)
    assert control_plane.call("GET", "/providers", fresh.token).status == 200
    old = _teams().issue(team, "old", expires_in_days=1, now=dt.datetime.now(dt.UTC) - dt.timedelta(days=1, seconds=1))
    response = control_plane.call("GET", "/providers", old.token)
    assert response.status == 401  # the body is the API's documented 401 shape (helper API's business)
    listed = {t["token_id"]: t for t in control_plane.call("GET", "/tokens", fresh.token).json()["tokens"]}
    assert listed[old.record.token_id]["expired"] is True
    assert listed[fresh.record.token_id]["expired"] is False
    with pytest.raises(ValueError, match="1-365 days"):
        _teams().issue(team, expires_in_days=0)


def test_listing_shows_ids_and_prefixes_never_the_tokens_and_only_the_team_s_own(control_plane: ControlPlane) -> None:
    team, other = _team_id(), _team_id()
    first = _teams().issue(team, "laptop")
    second = _teams().issue(team, "ci", expires_in_days=7)
    foreign = _teams().issue(other)
    response = control_plane.call("GET", "/tokens", first.token)
    assert response.status == 200
    for secret in (first.token, second.token, foreign.token, hash_token(first.token), hash_token(second.token)):
        assert secret not in response.body
    tokens = {t["token_id"]: t for t in response.json()["tokens"]}
    assert {(i, t["label"], t["current"]) for i, t in tokens.items()} == {
        (first.record.token_id, "laptop", True),
        (second.record.token_id, "ci", False),
    }
    assert tokens[first.record.token_id]["prefix"] == first.token[:8]
    fields = {"token_id", "label", "prefix", "created_at", "expires_at", "expired", "current"}
    assert set(tokens[first.record.token_id]) == fields


def test_a_team_revokes_its_own_token_and_not_another_team_s(control_plane: ControlPlane) -> None:
    team, other = _team_id(), _team_id()
    keep, drop = _teams().issue(team), _teams().issue(team)
    foreign = _teams().issue(other)
    assert control_plane.call("DELETE", f"/tokens/{foreign.record.token_id}", keep.token).status == 404
    assert control_plane.call("GET", "/providers", foreign.token).status == 200  # untouched
    assert control_plane.call("DELETE", f"/tokens/{drop.record.token_id}", keep.token).status == 204
    assert control_plane.call("GET", "/providers", drop.token).status == 401
    assert control_plane.call("DELETE", f"/tokens/{drop.record.token_id}", keep.token).status == 404  # gone
    assert [t["token_id"] for t in control_plane.call("GET", "/tokens", keep.token).json()["tokens"]] == [
        keep.record.token_id
    ]
    bad = control_plane.call("DELETE", "/tokens/not-a-token", keep.token)
    assert (bad.status, bad.json()["code"]) == (422, "VALIDATION_ERROR")  # not a token id (tok-…)
    assert control_plane.call("DELETE", f"/tokens/{keep.record.token_id}", keep.token).status == 204  # itself
    assert control_plane.call("GET", "/tokens", keep.token).status == 401


def test_a_deleted_team_s_tokens_are_refused(control_plane: ControlPlane) -> None:
    admin_deleted, item_removed = _team_id(), _team_id()
    token = _teams().issue(admin_deleted).token
    assert _teams().delete_team(admin_deleted) == 1
    refused = control_plane.call(
        "POST", "/providers", token, body={"name": "x", "region": "us-east-1", "access_key_id": "AKIAX" * 4,
                                           "secret_access_key": "s" * 40},
    )  # fmt: skip
    assert refused.status == 401
    with pytest.raises(ValueError, match="deleted"):
        _teams().issue(admin_deleted)  # a deleted team's id is not handed out again
    # The issue's case: the team's item removed by hand while its token item stays.
    survivor = _teams().issue(item_removed).token
    _state_table().delete_item(Key={"pk": f"TEAM#{item_removed}", "sk": "TEAM"})
    assert _state_table().get_item(Key={"pk": f"TOKEN#{hash_token(survivor)}", "sk": "TOKEN"}).get("Item")
    assert control_plane.call("GET", "/providers", survivor).status == 401


def test_one_team_s_polling_loop_does_not_starve_another_team(control_plane: ControlPlane) -> None:
    """Usage keys: each team has its own bucket (burst 5 here, no refill while the test runs)."""
    from controlplane.adapters.dynamodb import DynamoTeamStore
    from controlplane.service.teams import TeamService

    now = [0.0]
    plan = LocalUsagePlan(rate=1, burst=5, clock=lambda: now[0])
    gateway = control_plane.gateway
    throttled = UsagePlanGateway(gateway.api_handler, gateway.authorizer_handler, gateway.public_routes, plan=plan)
    teams = TeamService(DynamoTeamStore(_state_table()), plan)
    noisy, quiet = teams.issue(_team_id()).token, teams.issue(_team_id()).token
    unkeyed = _teams().issue(_team_id()).token  # a team without a usage key: API Gateway answers 403

    def get(token: str) -> int:
        return throttled.request("GET", "/tokens", headers={"Authorization": f"Bearer {token}"}).status

    assert [get(noisy) for _ in range(8)] == [200] * 5 + [429] * 3
    assert [get(quiet) for _ in range(5)] == [200] * 5
    assert get(unkeyed) == 403
    now[0] += 1.0  # one second refills one request's worth
    assert [get(noisy), get(noisy)] == [200, 429]
    assert throttled.request("GET", "/openapi.json").status == 200  # public: no key, no throttle


def test_the_authorizer_returns_the_team_s_usage_key_and_the_token_id(control_plane: ControlPlane) -> None:
    from controlplane.adapters.dynamodb import DynamoTeamStore
    from controlplane.handlers import authorizer
    from controlplane.service.teams import TeamService
    from local.lambda_context import LocalLambdaContext

    plan = LocalUsagePlan(rate=10, burst=20)
    issued = TeamService(DynamoTeamStore(_state_table()), plan).issue(_team_id())
    event = {
        "type": "TOKEN",
        "authorizationToken": f"Bearer {issued.token}",
        "methodArn": "arn:aws:execute-api:us-east-1:123456789012:api/v1/GET/jobs",
    }
    policy = authorizer.handler(event, LocalLambdaContext("authorizer"))
    assert policy["usageIdentifierKey"] in plan.keys.values()
    assert policy["context"] == {"team_id": issued.record.team_id, "token_id": issued.record.token_id}
