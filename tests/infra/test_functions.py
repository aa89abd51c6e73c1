"""The Lambda functions: runtime, architecture, memory, timeout, the one code asset, the layer, logging, tracing and
the environment the handlers' config (controlplane.config) reads."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest

from controlplane import config
from controlplane.adapters.statemachine import FLEET_HANDLER, HANDLERS, TIMEOUTS
from stacks import asset_bundling
from stacks.functions import RELAY_BUDGET_SECONDS
from tests.infra.conftest import Synth

# handler → (memory MB, timeout s)
SIZES: dict[str, tuple[int, int]] = {
    "controlplane.handlers.api.handler": (512, 29),  # API Gateway's integration timeout
    "controlplane.handlers.authorizer.handler": (512, 10),
    **{handler: (256, TIMEOUTS[step]) for step, handler in HANDLERS.items()},
    "controlplane.handlers.events.instance_state": (256, 30),
    "controlplane.handlers.reconcile.handler": (256, 120),
    FLEET_HANDLER: (512, TIMEOUTS["relay_shard"]),  # a relay shard: up to 50 jobs' SSH sessions
}
COMMON_ENV = {
    "SECRETS_PREFIX": "ec2jobs",
    "RESOURCE_PREFIX": "transformerlab",  # the seed policy's names
    "SSH_INGRESS_CIDR": "0.0.0.0/0",
    "LOG_RETENTION_DAYS": "30",  # log chunks' TTL (logChunkTtlDays)
    "RELAY_BUDGET_SECONDS": "600",
    "POWERTOOLS_SERVICE_NAME": "ec2jobs",
    "POWERTOOLS_METRICS_NAMESPACE": "ec2jobs",
    "POWERTOOLS_LOG_LEVEL": "INFO",
    "PYDANTIC_DISABLE_PLUGINS": "__all__",  # the layer has no Pydantic plugin: no scan for one at the first model
}


def _functions(synth: Synth) -> dict[str, dict[str, Any]]:
    return {p["Properties"]["Handler"]: p["Properties"] for p in synth.of_type("AWS::Lambda::Function").values()}


def test_every_handler_exists_in_the_asset() -> None:
    for handler in SIZES:
        module, _, name = handler.rpartition(".")
        assert callable(getattr(importlib.import_module(module), name)), handler


@pytest.mark.parametrize("handler", sorted(SIZES))
def test_runtime_architecture_memory_timeout_layer_tracing(synth: Synth, handler: str) -> None:
    function = _functions(synth)[handler]
    memory, timeout = SIZES[handler]
    assert (function["Runtime"], function["Architectures"]) == ("python3.12", ["x86_64"])
    assert (function["MemorySize"], function["Timeout"]) == (memory, timeout)
    (layer,) = function["Layers"]
    assert synth.resources[layer["Ref"]]["Type"] == "AWS::Lambda::LayerVersion"
    assert function["TracingConfig"] == {"Mode": "Active"}
    group = synth.resources[function["LoggingConfig"]["LogGroup"]["Ref"]]
    assert group["Type"] == "AWS::Logs::LogGroup"
    assert group["Properties"]["RetentionInDays"] == 90  # logRetentionDays


def test_the_relay_has_time_for_its_streaming_budget(synth: Synth) -> None:
    relay = _functions(synth)[FLEET_HANDLER]
    assert relay["Environment"]["Variables"]["RELAY_BUDGET_SECONDS"] == str(RELAY_BUDGET_SECONDS) == "600"
    # A job's loop stops streaming at its budget, then drains, commits and returns: at least 2 minutes of headroom.
    assert relay["Timeout"] >= RELAY_BUDGET_SECONDS + 120
    assert relay["MemorySize"] == 512  # docs/relay-fleet.md's cost figure assumes 512 MB per 50 jobs


def test_one_code_asset_and_one_layer_for_all_functions(synth: Synth) -> None:
    functions = _functions(synth).values()
    assert len({f["Code"]["S3Key"] for f in functions}) == 1
    assert len({f["Layers"][0]["Ref"] for f in functions}) == 1
    (layer,) = synth.of_type("AWS::Lambda::LayerVersion").values()
    assert layer["Properties"]["CompatibleRuntimes"] == ["python3.12"]
    assert layer["Properties"]["CompatibleArchitectures"] == ["x86_64"]


def test_the_code_asset_is_the_lambdas_directory_and_its_cpython_312_bytecode(synth: Synth) -> None:
    """lambdas/ without the build machine's bytecode, plus a __pycache__/*.cpython-312.pyc for every module (but
    NO_BYTECODE) when this machine has a CPython 3.12 (stacks/asset_bundling.py; test_asset_bundling.py checks the
    bytecode itself and the synth without a 3.12)."""
    key = next(iter(_functions(synth).values()))["Code"]["S3Key"]
    staged = synth.outdir / f"asset.{key.removesuffix('.zip')}"
    files = {p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file()}
    assert "controlplane/handlers/api.py" in files
    assert "controlplane/core/data/catalog.json" in files
    assert "controlplane/core/data/job_wrapper.sh" in files
    source = Path(__file__).resolve().parents[2] / "lambdas"
    shipped_source = {f for f in files if "__pycache__" not in f}
    assert shipped_source == {
        p.relative_to(source).as_posix()
        for p in source.rglob("*")
        if p.is_file() and not asset_bundling.source_excluded(p.relative_to(source))
    }
    bytecode = {
        f"{Path(f).parent.as_posix()}/__pycache__/{Path(f).stem}.cpython-312.pyc"
        for f in shipped_source
        if f.endswith(".py") and not f.startswith(asset_bundling.NO_BYTECODE)
    }
    assert files - shipped_source == (bytecode if asset_bundling.runtime_python() else set())


def test_the_layer_asset_is_the_built_layer_with_its_bytecode(synth: Synth, layer_dir: Path) -> None:
    """build/layer as scripts/build_layer.py left it, its __pycache__/*.cpython-312.pyc included (Lambda's /opt is
    read-only: bytecode that does not ship is compiled on every cold start); only the build's stamp stays out."""
    (layer,) = synth.of_type("AWS::Lambda::LayerVersion").values()
    staged = synth.outdir / f"asset.{layer['Properties']['Content']['S3Key'].removesuffix('.zip')}"
    files = {p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file()}
    built = {p.relative_to(layer_dir).as_posix() for p in layer_dir.rglob("*") if p.is_file()}
    assert files == built - {".stamp"}


@pytest.mark.parametrize("handler", sorted(SIZES))
def test_environment(synth: Synth, handler: str) -> None:
    variables = _functions(synth)[handler]["Environment"]["Variables"]
    tables = {name: synth.logical_id(table) for name, table in synth.stack.storage.tables.items()}
    expected: dict[str, Any] = COMMON_ENV | {
        "STATE_TABLE": {"Ref": tables["state"]},
        "JOBS_TABLE": {"Ref": tables["jobs"]},
        "LOGS_TABLE": {"Ref": tables["logs"]},
    }
    if handler != "controlplane.handlers.authorizer.handler":  # everything else publishes Job State Change events
        expected["EVENT_BUS_NAME"] = {"Ref": synth.logical_id(synth.stack.events.bus)}
    # the API starts executions; the reconciler starts relay-only ones when a relay loop died
    if handler in {"controlplane.handlers.api.handler", "controlplane.handlers.reconcile.handler"}:
        expected["STATE_MACHINE_ARN"] = {"Ref": synth.logical_id(synth.stack.workflow.state_machine)}
    # the Relay step starts relay shards
    if handler == HANDLERS["relay"]:
        expected["RELAY_FLEET_ARN"] = {
            "Fn::Join": ["", ["arn:", {"Ref": "AWS::Partition"}, ":states:", {"Ref": "AWS::Region"}, ":",
                              {"Ref": "AWS::AccountId"}, ":stateMachine:ec2jobs-relay-fleet"]]
        }  # fmt: skip
    # the API presigns uploads and downloads, a relay shard hands instances their per-job S3 credentials
    if handler in {"controlplane.handlers.api.handler", FLEET_HANDLER}:
        expected["ARTIFACT_BUCKET"] = {"Ref": synth.logical_id(synth.stack.artifacts.bucket)}
        expected["ARTIFACT_EXPIRY_DAYS"] = "30"  # artifactExpiryDays
        expected["INSTANCE_TRANSFER_ROLE_ARN"] = {
            "Fn::GetAtt": [synth.logical_id(synth.stack.artifacts.transfer_role), "Arn"]
        }
    assert variables == expected
    assert "PROVIDER_ENDPOINT_URL" not in variables  # providers' calls go to AWS itself


def test_the_environment_is_what_the_handlers_config_reads(synth: Synth) -> None:
    for handler, function in _functions(synth).items():
        variables = {
            k: v if isinstance(v, str) else f"resolved-{k}" for k, v in function["Environment"]["Variables"].items()
        }
        settings = config.Settings.model_validate(variables)
        assert settings.provider_endpoint_url is None, handler
        assert settings.relay_budget_seconds < function["Timeout"] or handler != FLEET_HANDLER
        assert settings.log_retention_days == 30
