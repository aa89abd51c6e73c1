"""The artifacts bucket (private, TLS only, SSE-S3, ACLs off, unversioned, expiring, CORS for presigned URLs, kept on
stack removal), InstanceTransferRole (trusted by the API's and the relay's Lambda roles only, one-hour sessions,
teams/* at most) and what the functions get: grants and the ARTIFACT_* / INSTANCE_TRANSFER_ROLE_ARN variables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import App
from pydantic import ValidationError

from controlplane import config
from controlplane.adapters.statemachine import FLEET_HANDLER
from stacks.app import CDK_JSON
from stacks.artifacts import TRANSFER_SESSION_SECONDS
from stacks.control_plane import ControlPlaneStack
from stacks.settings import Settings
from tests.infra.conftest import Synth, placeholder_layer

API = "controlplane.handlers.api.handler"
RELAY = FLEET_HANDLER  # the relay shard: hands instances their start bundle and S3 credentials
ARTIFACT_VARIABLES = {"ARTIFACT_BUCKET", "ARTIFACT_EXPIRY_DAYS", "INSTANCE_TRANSFER_ROLE_ARN"}
OBJECT_ACTIONS = {"s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"}


def _bucket(synth: Synth) -> tuple[str, dict[str, Any]]:
    buckets = synth.of_type("AWS::S3::Bucket")
    assert list(buckets) == [synth.logical_id(synth.stack.artifacts.bucket)]  # one bucket: the artifacts bucket
    return next(iter(buckets.items()))


def _transfer_role(synth: Synth) -> tuple[str, dict[str, Any]]:
    logical_id = synth.logical_id(synth.stack.artifacts.transfer_role)
    return logical_id, synth.resources[logical_id]


def _role_of(synth: Synth, handler: str) -> str:
    _, function = synth.function(handler)
    return str(function["Role"]["Fn::GetAtt"][0])


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def test_public_access_is_blocked_and_acls_are_off(synth: Synth) -> None:
    _, bucket = _bucket(synth)
    properties = bucket["Properties"]
    assert properties["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    assert properties["OwnershipControls"] == {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}
    assert "AccessControl" not in properties
    assert "WebsiteConfiguration" not in properties


def test_sse_s3_encryption_and_no_customer_keys(synth: Synth) -> None:
    _, bucket = _bucket(synth)
    (rule,) = bucket["Properties"]["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"] == {"SSEAlgorithm": "AES256"}  # SSE-S3, no KMS key
    assert rule["BlockedEncryptionTypes"] == {"EncryptionType": ["SSE-C"]}
    assert synth.of_type("AWS::KMS::Key") == {}


def test_unversioned(synth: Synth) -> None:
    _, bucket = _bucket(synth)
    assert bucket["Properties"].get("VersioningConfiguration", {"Status": "Suspended"}) == {"Status": "Suspended"}


def test_the_bucket_policy_denies_anything_but_tls(synth: Synth) -> None:
    logical_id, _ = _bucket(synth)
    (policy,) = synth.of_type("AWS::S3::BucketPolicy").values()
    assert policy["Properties"]["Bucket"] == {"Ref": logical_id}
    statements = policy["Properties"]["PolicyDocument"]["Statement"]
    assert all(s["Effect"] == "Deny" for s in statements)  # the policy grants nothing: IAM does
    bucket_and_objects = [
        {"Fn::GetAtt": [logical_id, "Arn"]},
        {"Fn::Join": ["", [{"Fn::GetAtt": [logical_id, "Arn"]}, "/*"]]},
    ]
    insecure = [s for s in statements if s.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}}]
    assert len(insecure) == 1
    assert insecure[0]["Action"] == "s3:*"
    assert insecure[0]["Principal"] == {"AWS": "*"}
    assert insecure[0]["Resource"] == bucket_and_objects
    old_tls = [s for s in statements if s.get("Condition") == {"NumericLessThan": {"s3:TlsVersion": 1.2}}]
    assert len(old_tls) == 1
    assert old_tls[0]["Resource"] == bucket_and_objects


def test_objects_expire_after_the_setting_and_abandoned_uploads_after_two_days(synth: Synth) -> None:
    _, bucket = _bucket(synth)
    (rule,) = bucket["Properties"]["LifecycleConfiguration"]["Rules"]
    assert rule["Status"] == "Enabled"
    assert rule["ExpirationInDays"] == Settings().artifact_expiry_days == 30
    assert rule["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 2}
    assert not {"Prefix", "Filter", "TagFilters"} & set(rule)  # the whole bucket


def test_cors_lets_browsers_put_and_get_with_presigned_urls_and_read_etags(synth: Synth) -> None:
    _, bucket = _bucket(synth)
    (rule,) = bucket["Properties"]["CorsConfiguration"]["CorsRules"]
    assert sorted(rule["AllowedMethods"]) == ["GET", "PUT"]
    assert rule["AllowedOrigins"] == ["*"]
    assert rule["AllowedHeaders"] == ["*"]
    assert rule["ExposedHeaders"] == ["ETag"]  # CompleteMultipartUpload needs each part's ETag


def test_kept_when_the_stack_is_removed(synth: Synth) -> None:
    _, bucket = _bucket(synth)
    assert (bucket["DeletionPolicy"], bucket["UpdateReplacePolicy"]) == ("Retain", "Retain")
    # no auto-delete custom resource that would empty it
    assert not [r for r in synth.of_type("Custom::S3AutoDeleteObjects")]


def test_no_access_log_bucket_and_the_reason_travels_with_the_template(synth: Synth) -> None:
    _, bucket = _bucket(synth)
    assert "LoggingConfiguration" not in bucket["Properties"]
    (entry,) = [e for e in bucket["Metadata"]["cdk_nag"]["rules_to_suppress"] if e["id"] == "AwsSolutions-S1"]
    assert "CloudTrail data events" in entry["reason"]


def test_the_transfer_role_is_trusted_by_the_api_and_relay_roles_only(synth: Synth) -> None:
    _, role = _transfer_role(synth)
    (statement,) = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert (statement["Effect"], statement["Action"]) == ("Allow", "sts:AssumeRole")
    assert set(statement["Principal"]) == {"AWS"}
    trusted = {p["Fn::GetAtt"][0] for p in _as_list(statement["Principal"]["AWS"])}
    assert trusted == {_role_of(synth, API), _role_of(synth, RELAY)}
    assert all(p["Fn::GetAtt"][1] == "Arn" for p in _as_list(statement["Principal"]["AWS"]))


def test_the_transfer_role_sessions_last_at_most_an_hour(synth: Synth) -> None:
    _, role = _transfer_role(synth)
    # role chaining (a Lambda's role assuming it) caps sessions at one hour anyway
    assert role["Properties"]["MaxSessionDuration"] == TRANSFER_SESSION_SECONDS == 3600


def test_the_transfer_role_reaches_teams_objects_and_nothing_else(synth: Synth) -> None:
    logical_id, role = _transfer_role(synth)
    bucket_id, _ = _bucket(synth)
    assert "ManagedPolicyArns" not in role["Properties"]
    assert "PermissionsBoundary" not in role["Properties"]
    attached = [
        p for p in synth.of_type("AWS::IAM::Policy").values() if {"Ref": logical_id} in p["Properties"]["Roles"]
    ]
    assert attached == []  # only its inline policy
    (policy,) = role["Properties"]["Policies"]
    statements = policy["PolicyDocument"]["Statement"]
    assert all(s["Effect"] == "Allow" for s in statements)
    by_resource = {json.dumps(s["Resource"], sort_keys=True): s for s in statements}
    objects = by_resource.pop(
        json.dumps({"Fn::Join": ["", [{"Fn::GetAtt": [bucket_id, "Arn"]}, "/teams/*"]]}, sort_keys=True)
    )
    assert set(_as_list(objects["Action"])) == OBJECT_ACTIONS
    assert "Condition" not in objects
    listing = by_resource.pop(json.dumps({"Fn::GetAtt": [bucket_id, "Arn"]}, sort_keys=True))
    assert _as_list(listing["Action"]) == ["s3:ListBucket"]
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["teams/*"]}}
    assert by_resource == {}


def test_only_the_api_and_the_relay_touch_the_bucket_or_the_role(synth: Synth) -> None:
    roles = {
        handler: synth.permissions(_role_of(synth, handler))
        for handler in (p["Properties"]["Handler"] for p in synth.of_type("AWS::Lambda::Function").values())
    }
    users = {
        handler
        for handler, granted in roles.items()
        if any(resource.startswith("bucket") or resource == "transfer-role" for _, resource in granted)
    }
    assert users == {API, RELAY}
    for handler in users:
        granted = roles[handler]
        assert {(a, r) for a, r in granted if r == "bucket/teams/*"} == {(a, "bucket/teams/*") for a in OBJECT_ACTIONS}
        assert {(a, r) for a, r in granted if r == "bucket"} == {("s3:ListBucket", "bucket")}
        assert {(a, r) for a, r in granted if r == "transfer-role"} == {("sts:AssumeRole", "transfer-role")}
        assert not [a for a, _ in granted if a == "s3:DeleteObject"]  # the lifecycle rule deletes


def test_the_api_and_relay_get_the_bucket_the_role_and_the_expiry(synth: Synth) -> None:
    bucket_id, _ = _bucket(synth)
    role_id, _ = _transfer_role(synth)
    for handler in (API, RELAY):
        _, function = synth.function(handler)
        variables = function["Environment"]["Variables"]
        assert variables["ARTIFACT_BUCKET"] == {"Ref": bucket_id}
        assert variables["INSTANCE_TRANSFER_ROLE_ARN"] == {"Fn::GetAtt": [role_id, "Arn"]}
        assert variables["ARTIFACT_EXPIRY_DAYS"] == "30"
        settings = config.Settings.model_validate(
            {k: v if isinstance(v, str) else f"resolved-{k}" for k, v in variables.items()}
        )
        assert settings.artifact_bucket == "resolved-ARTIFACT_BUCKET"
        assert settings.instance_transfer_role_arn == "resolved-INSTANCE_TRANSFER_ROLE_ARN"
        assert settings.artifact_expiry_days == 30
    others = [
        p["Properties"]
        for p in synth.of_type("AWS::Lambda::Function").values()
        if p["Properties"]["Handler"] not in {API, RELAY}
    ]
    assert others
    for function in others:
        assert not ARTIFACT_VARIABLES & set(function["Environment"]["Variables"]), function["Handler"]


def test_the_bucket_name_is_a_stack_output(synth: Synth) -> None:
    bucket_id, _ = _bucket(synth)
    assert synth.template["Outputs"]["ArtifactBucketName"]["Value"] == {"Ref": bucket_id}


def test_the_handlers_config_defaults_and_checks() -> None:
    tables = {"STATE_TABLE": "s", "JOBS_TABLE": "j", "LOGS_TABLE": "l"}
    settings = config.Settings.model_validate(tables)
    assert (settings.artifact_bucket, settings.instance_transfer_role_arn, settings.artifact_expiry_days) == (
        "",
        "",
        30,
    )
    with pytest.raises(ValidationError):
        config.Settings.model_validate(tables | {"ARTIFACT_EXPIRY_DAYS": "0"})


def test_the_expiry_setting_defaults_to_30_days_in_cdk_json() -> None:
    context = json.loads(CDK_JSON.read_text())["context"]
    assert context["artifactExpiryDays"] == 30
    assert Settings.from_context(context).artifact_expiry_days == 30


@pytest.mark.parametrize(("value", "message"), [("0", "artifactExpiryDays"), ("-3", "at least 1"), ("x", "whole")])
def test_bad_expiry_values_fail_before_synthesis(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings.from_context({"artifactExpiryDays": value})


@pytest.fixture(scope="module")
def seven_days(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The stack built with artifactExpiryDays=7 (as `-c artifactExpiryDays=7` parses it)."""
    settings = Settings.from_context(
        {"artifactExpiryDays": "7"}, layer_dir=placeholder_layer(tmp_path_factory.mktemp("layer"))
    )
    app = App(outdir=str(tmp_path_factory.mktemp("seven-days")))
    stack = ControlPlaneStack(app, "seven-days", settings=settings)
    assembly = app.synth()
    template: dict[str, Any] = json.loads((Path(assembly.directory) / stack.template_file).read_text())
    return template


def test_the_expiry_setting_reaches_the_lifecycle_rule_and_the_functions(seven_days: dict[str, Any]) -> None:
    resources = seven_days["Resources"].values()
    (bucket,) = [r for r in resources if r["Type"] == "AWS::S3::Bucket"]
    (rule,) = bucket["Properties"]["LifecycleConfiguration"]["Rules"]
    assert rule["ExpirationInDays"] == 7
    told = {
        r["Properties"]["Handler"]: r["Properties"]["Environment"]["Variables"]["ARTIFACT_EXPIRY_DAYS"]
        for r in resources
        if r["Type"] == "AWS::Lambda::Function"
        and "ARTIFACT_EXPIRY_DAYS" in r["Properties"]["Environment"]["Variables"]
    }
    assert told == {API: "7", RELAY: "7"}
