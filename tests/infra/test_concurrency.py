"""Lambda concurrency: the API, the authorizer, EC2 event handling and the reconciler hold reserved concurrency (so
running jobs, each holding one relay invocation from the shared pool, cannot starve them); the workflow steps hold
none. The values are pinned here; docs/limits.md gives the quota → concurrent jobs arithmetic."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from stacks.app import build_app
from stacks.functions import INSTANCE_EVENTS_HANDLER, RECONCILE_HANDLER
from stacks.settings import LAMBDA_MIN_UNRESERVED, Settings
from tests.infra.conftest import Synth, placeholder_layer

RESERVED = {
    "controlplane.handlers.api.handler": 20,
    "controlplane.handlers.authorizer.handler": 10,
    INSTANCE_EVENTS_HANDLER: 10,
    RECONCILE_HANDLER: 2,
}


def _reserved(resources: dict[str, Any]) -> dict[str, int | None]:
    return {
        r["Properties"]["Handler"]: r["Properties"].get("ReservedConcurrentExecutions")
        for r in resources.values()
        if r["Type"] == "AWS::Lambda::Function"
    }


def test_the_api_authorizer_events_and_reconciler_reserve_concurrency_and_the_steps_do_not(synth: Synth) -> None:
    reserved = _reserved(synth.resources)
    assert {handler: value for handler, value in reserved.items() if value is not None} == RESERVED
    assert len(reserved) > len(RESERVED)  # the workflow steps draw on the unreserved pool


def test_the_defaults_and_the_jobs_an_account_carries() -> None:
    settings = Settings()
    assert settings.reserved_concurrency == 42
    # (quota 1000 − 42 reserved − jobs launching at that moment) × 50 jobs per relay shard
    assert settings.concurrent_jobs() == 958 * 50
    assert settings.concurrent_jobs(launching=50) == 908 * 50
    assert Settings(account_concurrency=400).concurrent_jobs(launching=8) == 350 * 50


def test_the_stack_s_shard_capacity_is_the_relay_fleet_s() -> None:
    from controlplane.service.relay_fleet import SHARD_CAPACITY
    from stacks.settings import RELAY_SHARD_CAPACITY

    assert RELAY_SHARD_CAPACITY == SHARD_CAPACITY


def test_reservations_that_leave_less_than_lambdas_minimum_unreserved_fail_before_synthesis() -> None:
    assert LAMBDA_MIN_UNRESERVED == 100
    Settings(account_concurrency=142)  # 42 reserved + 100 unreserved: fits exactly
    with pytest.raises(ValueError, match="Lambda keeps 100 unreserved") as error:
        Settings(account_concurrency=141)
    assert "set the reservations to 0" in str(error.value)
    with pytest.raises(ValueError, match="accountConcurrency"):
        Settings.from_context({"accountConcurrency": "50"})
    with pytest.raises(ValueError, match="apiReservedConcurrency -1"):
        Settings.from_context({"apiReservedConcurrency": "-1"})


def test_a_low_quota_account_deploys_without_reservations() -> None:
    zero = {
        "apiReservedConcurrency": "0",
        "authorizerReservedConcurrency": "0",
        "instanceEventsReservedConcurrency": "0",
        "reconcileReservedConcurrency": "0",
        "accountConcurrency": "10",
    }
    settings = Settings.from_context(zero)
    assert settings.reserved_concurrency == 0
    assert settings.concurrent_jobs(launching=1) == 9 * 50


@pytest.fixture(scope="module")
def custom(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    context = {"apiReservedConcurrency": "50", "reconcileReservedConcurrency": "0", "accountConcurrency": "2000"}
    app, stack = build_app(
        outdir=str(tmp_path_factory.mktemp("concurrency")),
        context=context,
        layer_dir=placeholder_layer(tmp_path_factory.mktemp("layer")),
    )
    assembly = app.synth()
    template: dict[str, Any] = json.loads((Path(assembly.directory) / stack.template_file).read_text())
    return template


def test_context_values_set_the_reservations_and_zero_means_none(custom: dict[str, Any]) -> None:
    reserved = {h: v for h, v in _reserved(custom["Resources"]).items() if v is not None}
    expected = {h: v for h, v in RESERVED.items() if h != RECONCILE_HANDLER}
    assert reserved == expected | {"controlplane.handlers.api.handler": 50}
