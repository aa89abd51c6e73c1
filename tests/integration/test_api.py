"""The HTTP API against the emulator (IAM enforced), through the authorizer and the api Lambda."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from boto3.dynamodb.conditions import Key

from tests.integration.conftest import ControlPlane, Keys

A10G_JOB: dict[str, Any] = {"resources": {"accelerators": "A10G:1"}, "run": "python train.py"}


def _provider_body(keys: Keys, name: str = "main", region: str = "us-east-1") -> dict[str, str]:
    return {
        "name": name,
        "region": region,
        "access_key_id": keys.access_key_id,
        "secret_access_key": keys.secret_access_key,
    }


# -- authentication ----------------------------------------------------------------------------------------------


def test_given_no_token_when_calling_then_401(control_plane: ControlPlane) -> None:
    for method, path in [("GET", "/jobs"), ("GET", "/providers"), ("POST", "/jobs"), ("GET", "/catalog")]:
        assert control_plane.call(method, path).status == 401


def test_given_a_bad_or_malformed_token_when_calling_then_401(control_plane: ControlPlane) -> None:
    assert control_plane.call("GET", "/jobs", "ej_not-a-real-token").status == 401
    basic = control_plane.call("GET", "/jobs", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert basic.status == 401
    assert control_plane.call("GET", "/jobs", headers={"Authorization": "Bearer "}).status == 401


def test_openapi_is_public_and_describes_the_routes(control_plane: ControlPlane) -> None:
    response = control_plane.call("GET", "/openapi.json")
    assert response.status == 200
    paths = response.json()["paths"]
    for path in ["/catalog", "/providers", "/providers/{provider_id}", "/jobs", "/jobs/{job_id}"]:
        assert path in paths


# -- providers ---------------------------------------------------------------------------------------------------


def test_given_good_keys_when_adding_a_provider_then_it_is_stored_and_the_secret_never_returned(
    control_plane: ControlPlane, new_team: Callable[[], str], provider_keys: Callable[..., Keys]
) -> None:
    token, keys = new_team(), provider_keys()
    responses = [control_plane.call("POST", "/providers", token, body=_provider_body(keys))]
    created = responses[0].json()
    assert responses[0].status == 201, responses[0].body
    assert created["account_id"] == "123456789012"
    assert created["region"] == "us-east-1"
    assert created["access_key_id"].startswith(keys.access_key_id[:4])
    assert "…" in created["access_key_id"]
    responses.append(control_plane.call("GET", "/providers", token))
    responses.append(control_plane.call("GET", f"/providers/{created['provider_id']}", token))
    assert [p["provider_id"] for p in responses[1].json()["providers"]] == [created["provider_id"]]
    for response in responses:
        assert keys.secret_access_key not in response.body
        assert keys.access_key_id not in response.body  # only a masked hint is shown

    # Then the secret is in Secrets Manager and nowhere in DynamoDB
    secrets = control_plane.admin("secretsmanager").list_secrets()["SecretList"]
    ours = [s for s in secrets if s["Name"].endswith(f"/providers/{created['provider_id']}")]
    assert len(ours) == 1
    stored = json.loads(control_plane.admin("secretsmanager").get_secret_value(SecretId=ours[0]["ARN"])["SecretString"])
    assert stored["secret_access_key"] == keys.secret_access_key
    table = _table(control_plane, "state")
    items = table.query(KeyConditionExpression=Key("pk").eq(f"TEAM#{_team_of(control_plane, token)}"))["Items"]
    assert items
    assert keys.secret_access_key not in json.dumps(items, default=str)


def test_given_an_unknown_access_key_when_adding_a_provider_then_400_names_the_failed_check(
    control_plane: ControlPlane, new_team: Callable[[], str]
) -> None:
    token = new_team()
    body = _provider_body(Keys("AKIAAAAAAAAAAAAAAAAA", "not-the-secret-0123456789"))
    response = control_plane.call("POST", "/providers", token, body=body)
    assert response.status == 400
    assert response.json()["details"] == [{"check": "access_key_id"}]
    assert "access key id" in response.json()["message"]
    assert "not-the-secret-0123456789" not in response.body
    assert control_plane.call("GET", "/providers", token).json()["providers"] == []  # nothing stored


def test_given_a_wrong_secret_when_adding_a_provider_then_400_says_the_secret_does_not_match(
    control_plane: ControlPlane, new_team: Callable[[], str], provider_keys: Callable[..., Keys]
) -> None:
    token, keys = new_team(), provider_keys()
    wrong = Keys(keys.access_key_id, "wrong-secret-wrong-secret-wrong-secret-00")
    response = control_plane.call("POST", "/providers", token, body=_provider_body(wrong))
    assert response.status == 400
    assert response.json()["details"] == [{"check": "secret_access_key"}]
    assert wrong.secret_access_key not in response.body


def test_given_a_user_without_the_policy_when_adding_a_provider_then_400_says_to_attach_it(
    control_plane: ControlPlane, new_team: Callable[[], str], provider_keys: Callable[..., Keys]
) -> None:
    token = new_team()
    no_sts = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "ec2:DescribeImages", "Resource": "*"}],
    }
    response = control_plane.call("POST", "/providers", token, body=_provider_body(provider_keys(no_sts)))
    assert response.status == 400
    assert response.json()["details"] == [{"check": "policy"}]
    assert "TransformerLabComputePolicy" in response.json()["message"]
    assert control_plane.call("GET", "/providers", token).json()["providers"] == []


def test_given_malformed_provider_fields_when_adding_then_422_without_echoing_the_secret(
    control_plane: ControlPlane, new_team: Callable[[], str]
) -> None:
    body = {"name": "x", "region": "mars-1", "access_key_id": "short", "secret_access_key": "s3cr3t-value-xyz"}
    response = control_plane.call("POST", "/providers", new_team(), body=body)
    assert response.status == 422
    fields = {d["field"] for d in response.json()["details"]}
    assert fields == {"region", "access_key_id"}
    assert "s3cr3t-value-xyz" not in response.body


def test_provider_names_are_unique_within_a_team_and_delete_works(
    control_plane: ControlPlane, team_with_provider: tuple[str, str], provider_keys: Callable[..., Keys]
) -> None:
    token, provider_id = team_with_provider
    duplicate = control_plane.call("POST", "/providers", token, body=_provider_body(provider_keys(), name="MAIN"))
    assert duplicate.status == 409
    assert control_plane.call("DELETE", f"/providers/{provider_id}", token).status == 204
    assert control_plane.call("GET", f"/providers/{provider_id}", token).status == 404
    again = control_plane.call("POST", "/providers", token, body=_provider_body(provider_keys(), name="main"))
    assert again.status == 201  # the name is free again


def test_a_provider_with_active_jobs_cannot_be_deleted(
    control_plane: ControlPlane, team_with_provider: tuple[str, str]
) -> None:
    token, provider_id = team_with_provider
    assert control_plane.call("POST", "/jobs", token, body=A10G_JOB | {"provider_id": provider_id}).status == 202
    response = control_plane.call("DELETE", f"/providers/{provider_id}", token)
    assert response.status == 409
    assert "active jobs" in response.json()["message"]


# -- team isolation ----------------------------------------------------------------------------------------------


def test_team_b_cannot_see_or_use_team_a_resources(
    control_plane: ControlPlane, team_with_provider: tuple[str, str], new_team: Callable[[], str]
) -> None:
    token_a, provider_a = team_with_provider
    job_a = control_plane.call("POST", "/jobs", token_a, body=A10G_JOB | {"provider_id": provider_a}).json()["job_id"]
    token_b = new_team()
    assert control_plane.call("GET", f"/providers/{provider_a}", token_b).status == 404
    assert control_plane.call("DELETE", f"/providers/{provider_a}", token_b).status == 404
    assert control_plane.call("GET", f"/jobs/{job_a}", token_b).status == 404
    assert control_plane.call("GET", "/providers", token_b).json()["providers"] == []
    assert control_plane.call("GET", "/jobs", token_b).json()["jobs"] == []
    borrowed = control_plane.call("POST", "/jobs", token_b, body=A10G_JOB | {"provider_id": provider_a})
    assert borrowed.status == 404  # B cannot launch with A's provider either
    # and the 404 for an existing resource is identical to the one for a missing resource (nothing leaks)
    missing = control_plane.call("GET", "/jobs/job-doesnotexist0000000", token_b).json()
    existing = control_plane.call("GET", f"/jobs/{job_a}", token_b).json()
    assert missing["code"] == existing["code"] == "NOT_FOUND"


def test_the_team_comes_from_the_token_not_the_body(
    control_plane: ControlPlane, team_with_provider: tuple[str, str]
) -> None:
    token, provider_id = team_with_provider
    body = A10G_JOB | {"provider_id": provider_id, "team_id": "someone-else"}
    assert control_plane.call("POST", "/jobs", token, body=body).status == 422  # not a field we accept


# -- jobs ---------------------------------------------------------------------------------------------------------


def test_given_a_valid_spec_when_submitting_then_a_pending_job_is_recorded_and_its_workflow_started(
    control_plane: ControlPlane, team_with_provider: tuple[str, str]
) -> None:
    token, provider_id = team_with_provider
    response = control_plane.call("POST", "/jobs", token, body=A10G_JOB | {"provider_id": provider_id, "name": "ft"})
    assert response.status == 202, response.body
    created = response.json()
    assert created["status"] == "PENDING"
    assert created["instance_type"] == "g5.xlarge"
    assert created["hourly_price"] == 1.006
    job = control_plane.call("GET", f"/jobs/{created['job_id']}", token).json()
    assert job["provider_id"] == provider_id
    assert job["region"] == "us-east-1"
    assert job["name"] == "ft"
    assert job["spec"]["resources"]["accelerators"] == "A10G:1"
    assert "request_hash" not in job
    executions = control_plane.admin("stepfunctions").list_executions(stateMachineArn=control_plane.state_machine_arn)
    started = [e for e in executions["executions"] if e["name"] == created["job_id"]]
    assert len(started) == 1
    assert job["execution_arn"] == started[0]["executionArn"]
    described = control_plane.admin("stepfunctions").describe_execution(executionArn=started[0]["executionArn"])
    assert json.loads(described["input"]) == {"source": "api", "job_id": created["job_id"], "team_id": job["team_id"]}


def test_given_the_same_idempotency_key_when_retrying_then_one_job_and_one_execution(
    control_plane: ControlPlane, team_with_provider: tuple[str, str]
) -> None:
    token, provider_id = team_with_provider
    body = A10G_JOB | {"provider_id": provider_id}
    headers = {"Idempotency-Key": "retry-me-1"}
    first = control_plane.call("POST", "/jobs", token, body=body, headers=headers)
    second = control_plane.call("POST", "/jobs", token, body=body, headers=headers)
    assert first.status == second.status == 202
    assert first.json()["job_id"] == second.json()["job_id"]
    assert second.headers.get("Idempotent-Replayed") == "true"
    jobs = control_plane.call("GET", "/jobs", token).json()["jobs"]
    assert [j["job_id"] for j in jobs] == [first.json()["job_id"]]
    executions = control_plane.admin("stepfunctions").list_executions(stateMachineArn=control_plane.state_machine_arn)
    assert sum(e["name"] == first.json()["job_id"] for e in executions["executions"]) == 1
    # the same key with a different body is refused rather than silently returning the other job
    changed = control_plane.call("POST", "/jobs", token, body=body | {"run": "other"}, headers=headers)
    assert changed.status == 422
    assert changed.json()["code"] == "IDEMPOTENCY_KEY_REUSED"


def test_idempotency_keys_are_per_team(
    control_plane: ControlPlane, team_with_provider: tuple[str, str], new_team: Callable[[], str]
) -> None:
    token_a, provider_a = team_with_provider
    job_a = control_plane.call(
        "POST", "/jobs", token_a, body=A10G_JOB | {"provider_id": provider_a}, headers={"Idempotency-Key": "k"}
    ).json()["job_id"]
    token_b = new_team()
    other = control_plane.call(
        "POST", "/jobs", token_b, body=A10G_JOB | {"provider_id": provider_a}, headers={"Idempotency-Key": "k"}
    )
    assert other.status == 404  # B's key does not resolve to A's job
    assert job_a not in other.body


def test_given_an_unsatisfiable_spec_when_submitting_then_400_lists_what_aws_sells(
    control_plane: ControlPlane, team_with_provider: tuple[str, str]
) -> None:
    token, provider_id = team_with_provider
    response = control_plane.call(
        "POST", "/jobs", token, body={"provider_id": provider_id, "resources": {"accelerators": "T4:16"}, "run": "x"}
    )
    assert response.status == 400
    assert response.json()["code"] == "INVALID_SPEC"
    assert "Valid counts for T4: 1, 4, 8" in response.json()["message"]
    wrong_region = control_plane.call(
        "POST",
        "/jobs",
        token,
        body={"provider_id": provider_id, "resources": {"accelerators": "H100:1", "region": "eu-west-1"}, "run": "x"},
    )
    assert wrong_region.status == 400
    assert "us-east-1" in wrong_region.json()["message"]


def test_given_an_invalid_spec_when_submitting_then_422_says_what_is_wrong_and_allowed(
    control_plane: ControlPlane, team_with_provider: tuple[str, str]
) -> None:
    token, provider_id = team_with_provider
    body = {"provider_id": provider_id, "resources": {"memory": "lots", "cpus": "x"}, "workdir": ".", "run": ""}
    response = control_plane.call("POST", "/jobs", token, body=body)
    assert response.status == 422
    details = {d["field"]: d["message"] for d in response.json()["details"]}
    assert set(details) == {"resources.memory", "resources.cpus", "workdir", "run"}
    assert "GiB" in details["resources.memory"]
    assert "8+" in details["resources.cpus"]
    not_json = control_plane.call(
        "POST", "/jobs", token, body="{not json", headers={"Content-Type": "application/json"}
    )
    assert not_json.status == 422


def test_given_use_spot_auto_when_submitting_then_accepted_and_no_price_is_guessed_before_launch(
    control_plane: ControlPlane, team_with_provider: tuple[str, str]
) -> None:
    token, provider_id = team_with_provider
    body = {"provider_id": provider_id, "resources": {"accelerators": "A10G:1", "use_spot": "auto"}, "run": "x"}
    response = control_plane.call("POST", "/jobs", token, body=body)
    assert response.status == 202, response.body
    created = response.json()
    # The market is decided at launch: until then the hourly price is unknown, the on-demand price its ceiling.
    assert (created["use_spot"], created["hourly_price"], created["on_demand_price"]) == ("auto", None, 1.006)
    assert any("no spot price is recorded" in note for note in created["notes"])
    job = control_plane.call("GET", f"/jobs/{created['job_id']}", token).json()
    assert (job["spec"]["resources"]["use_spot"], job["use_spot"], job["market"]) == ("auto", "auto", None)


def test_given_a_use_spot_that_is_not_true_false_or_auto_when_submitting_then_422_says_what_is_allowed(
    control_plane: ControlPlane, team_with_provider: tuple[str, str]
) -> None:
    token, provider_id = team_with_provider
    body = {"provider_id": provider_id, "resources": {"use_spot": "sometimes"}, "run": "x"}
    response = control_plane.call("POST", "/jobs", token, body=body)
    assert response.status == 422
    details = {d["field"]: d["message"] for d in response.json()["details"]}
    assert list(details) == ["resources.use_spot"]
    assert 'true, false or "auto"' in details["resources.use_spot"]
    assert "falling back to on-demand" in details["resources.use_spot"]


def test_given_an_unknown_provider_when_submitting_then_404(
    control_plane: ControlPlane, new_team: Callable[[], str]
) -> None:
    response = control_plane.call("POST", "/jobs", new_team(), body=A10G_JOB | {"provider_id": "prov-000000000000"})
    assert response.status == 404


def test_jobs_are_listed_newest_first_with_status_filter_and_cursor_pagination(
    control_plane: ControlPlane, team_with_provider: tuple[str, str]
) -> None:
    token, provider_id = team_with_provider
    created = [
        control_plane.call("POST", "/jobs", token, body=A10G_JOB | {"provider_id": provider_id}).json()["job_id"]
        for _ in range(5)
    ]
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        query = {"limit": "2"} | ({"cursor": cursor} if cursor else {})
        response = control_plane.call("GET", "/jobs", token, query=query)
        assert response.status == 200, response.body
        page = response.json()
        seen += [job["job_id"] for job in page["jobs"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == list(reversed(created))
    pending = control_plane.call("GET", "/jobs", token, query={"status": "PENDING"}).json()["jobs"]
    assert len(pending) == 5
    assert control_plane.call("GET", "/jobs", token, query={"status": "RUNNING"}).json()["jobs"] == []
    assert control_plane.call("GET", "/jobs", token, query={"status": "BOGUS"}).status == 422
    assert control_plane.call("GET", "/jobs", token, query={"cursor": "garbage!"}).status == 400


def test_the_catalog_endpoint_lists_gpus_counts_and_prices(
    control_plane: ControlPlane, new_team: Callable[[], str]
) -> None:
    token = new_team()
    body = control_plane.call("GET", "/catalog", token).json()
    gpus = {g["gpu"]: g for g in body["gpus"]}
    assert gpus["T4"]["counts"] == [1, 4, 8]
    assert gpus["A100"]["counts"] == [8]
    assert "p5.4xlarge" in gpus["H100"]["instance_types"]
    by_type = {t["instance_type"]: t for t in body["instance_types"]}
    assert by_type["g5.xlarge"]["price_per_hour"] == 1.006
    assert "us-east-1" in by_type["g5.xlarge"]["regions"]
    filtered = control_plane.call("GET", "/catalog", token, query={"gpu": "a10", "region": "eu-west-1"}).json()
    assert {t["gpu"] for t in filtered["instance_types"]} == {"A10G"}
    assert control_plane.call("GET", "/catalog", token, query={"region": "mars-1"}).status == 400


def _table(control_plane: ControlPlane, logical: str) -> Any:
    import boto3

    return boto3.resource("dynamodb").Table(control_plane.names.table(logical))


def _team_of(control_plane: ControlPlane, token: str) -> str:
    from controlplane.handlers import container

    team = container.get().teams.team_for(token)
    assert team is not None
    return team
