"""Deployment parameters: CDK context (cdk.json defaults, `-c name=value` overrides) checked before anything is
built, and flowing into the template."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from stacks.app import CDK_JSON, SETTINGS_CONTEXT, build_app
from stacks.settings import Settings
from tests.infra.conftest import Synth, placeholder_layer

CUSTOM = {
    "resourcePrefix": "acme",
    "sshIngressCidr": "203.0.113.0/24",
    "secretsPrefix": "acme-jobs",
    "logRetentionDays": "30",  # as `-c logRetentionDays=30` passes it: a string
    "logChunkTtlDays": "7",
    "apiGatewayCloudWatchRole": "false",
    "artifactExpiryDays": "7",
    "stackName": "acme-jobs",
}


def test_cdk_json_holds_the_defaults() -> None:
    context = json.loads(CDK_JSON.read_text())["context"]
    assert {name: context[name] for name in SETTINGS_CONTEXT} == {
        "resourcePrefix": "transformerlab",
        "sshIngressCidr": "0.0.0.0/0",
        "secretsPrefix": "ec2jobs",
        "logRetentionDays": 90,
        "logChunkTtlDays": 30,
        "apiGatewayCloudWatchRole": True,
        "apiReservedConcurrency": 20,
        "authorizerReservedConcurrency": 10,
        "instanceEventsReservedConcurrency": 10,
        "reconcileReservedConcurrency": 2,
        "accountConcurrency": 1000,
        "artifactExpiryDays": 30,
    }
    assert Settings.from_context(context) == Settings()


def test_context_strings_are_parsed() -> None:
    settings = Settings.from_context(CUSTOM)
    assert (settings.log_retention_days, settings.log_chunk_ttl_days, settings.api_cloudwatch_role) == (30, 7, False)
    assert settings.artifact_expiry_days == 7


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("resourcePrefix", "Transformer_Lab", "resourcePrefix"),
        ("resourcePrefix", "a" * 23, "64 characters"),
        ("sshIngressCidr", "10.0.0.1/8", "not a CIDR"),
        ("sshIngressCidr", "::/0", "IPv4"),
        ("secretsPrefix", "a/b", "secretsPrefix"),
        ("logRetentionDays", "31", "CloudWatch Logs accepts"),
        ("logRetentionDays", "ninety", "whole number"),
        ("logChunkTtlDays", "0", "logChunkTtlDays"),
        ("apiGatewayCloudWatchRole", "maybe", "true or false"),
    ],
)
def test_bad_values_fail_before_synthesis(name: str, value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings.from_context({name: value})


def test_a_missing_layer_says_how_to_build_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="make layer"):
        build_app(outdir=str(tmp_path / "out"), layer_dir=tmp_path / "no-layer")


@pytest.fixture(scope="module")
def custom(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    app, stack = build_app(
        outdir=str(tmp_path_factory.mktemp("custom")),
        context=CUSTOM,
        layer_dir=placeholder_layer(tmp_path_factory.mktemp("layer")),
    )
    assembly = app.synth()
    assert stack.stack_name == "acme-jobs"
    template: dict[str, Any] = json.loads((Path(assembly.directory) / stack.template_file).read_text())
    return template


def test_context_values_reach_the_functions_and_the_grants(custom: dict[str, Any]) -> None:
    resources = custom["Resources"]
    for function in (r["Properties"] for r in resources.values() if r["Type"] == "AWS::Lambda::Function"):
        variables = function["Environment"]["Variables"]
        assert variables["RESOURCE_PREFIX"] == "acme"
        assert variables["SSH_INGRESS_CIDR"] == "203.0.113.0/24"
        assert variables["SECRETS_PREFIX"] == "acme-jobs"
        assert variables["LOG_RETENTION_DAYS"] == "7"
    secrets = {
        json.dumps(statement["Resource"])
        for policy in resources.values()
        if policy["Type"] == "AWS::IAM::Policy"
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
        if str(statement["Action"]).count("secretsmanager:")
    }
    assert secrets
    assert all(":secret:acme-jobs/teams/*/" in s and ":secret:ec2jobs/" not in s for s in secrets)
    groups = [r["Properties"] for r in resources.values() if r["Type"] == "AWS::Logs::LogGroup"]
    assert {g["RetentionInDays"] for g in groups} == {30}


def test_without_the_account_logging_role(custom: dict[str, Any], synth: Synth) -> None:
    accounts = [r for r in custom["Resources"].values() if r["Type"] == "AWS::ApiGateway::Account"]
    assert accounts == []  # the account already has API Gateway's CloudWatch role
    assert len(synth.of_type("AWS::ApiGateway::Account")) == 1  # default: the stack sets it (retained on removal)
    (account_role,) = [r for r in synth.of_type("AWS::IAM::Role").values() if "ManagedPolicyArns" in r["Properties"]]
    assert account_role["DeletionPolicy"] == "Retain"
