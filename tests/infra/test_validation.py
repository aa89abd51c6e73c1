"""The template passes cdk-nag's AwsSolutions pack (nothing unacknowledged; every acknowledgement names a finding
that really occurs there, with a reason), CDK's own template validation and cfn-lint (0 errors)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import App
from cdk_nag import AwsSolutionsChecks
from cfnlint.api import ManualArgs, lint_file

import stacks.nag
from stacks.app import build_app
from tests.infra.conftest import Synth, placeholder_layer

# CDK puts a function's role in its DependsOn next to the Role GetAtt; cfn-lint warns about the redundancy.
CFN_LINT_IGNORED = ["W3005"]


def test_cdk_nag_finds_nothing_unacknowledged(synth: Synth) -> None:
    report = AwsSolutionsChecks().validate_scope(synth.app)
    found = [(v.rule_name, v.severity, [r.construct_path for r in v.violating_resources]) for v in report.violations]
    assert found == []
    assert report.success


def test_cdk_template_validation_reports_nothing(synth: Synth) -> None:
    report = json.loads((synth.outdir / "validation-report.json").read_text())
    assert report["pluginReports"] == []


def test_cfn_lint_finds_no_errors_and_no_unexpected_warnings(synth: Synth) -> None:
    template = synth.outdir / synth.stack.template_file
    matches = lint_file(template, ManualArgs(regions=["us-east-1"], ignore_checks=CFN_LINT_IGNORED))
    assert [(m.rule.id, m.message) for m in matches] == []


@pytest.fixture(scope="module")
def unacknowledged(tmp_path_factory: pytest.TempPathFactory) -> tuple[App, list[tuple[str, str, str]]]:
    """The same app built with acknowledge() only recording: (construct path, rule id, reason) of each call."""
    calls: list[tuple[str, str, str]] = []

    def record(scope: Any, rule: str, reason: str, *, finding: str | None = None) -> None:
        calls.append((scope.node.path, f"{rule}[{finding}]" if finding else rule, reason))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stacks.nag, "acknowledge", record)
        app, _ = build_app(
            outdir=str(tmp_path_factory.mktemp("unacknowledged")),
            layer_dir=placeholder_layer(tmp_path_factory.mktemp("layer")),
        )
    return app, calls


def _within(resource_path: str, scope_path: str) -> bool:
    return resource_path == scope_path or resource_path.startswith(f"{scope_path}/")


def test_every_acknowledgement_matches_a_finding_and_every_finding_is_acknowledged(
    unacknowledged: tuple[App, list[tuple[str, str, str]]],
) -> None:
    app, calls = unacknowledged
    findings = {
        (v.rule_name, resource.construct_path)
        for v in AwsSolutionsChecks().validate_scope(app).violations
        for resource in v.violating_resources
    }
    assert findings  # the pack does run
    for path, rule, _ in calls:
        covered = {resource for r, resource in findings if r == rule and _within(resource, path)}
        assert covered, f"{rule} acknowledged on {path}, where cdk-nag finds nothing"
    for rule, resource in findings:
        assert any(r == rule and _within(resource, path) for path, r, _ in calls), (rule, resource)


def test_every_acknowledgement_has_a_reason_and_the_template_carries_it(
    synth: Synth, unacknowledged: tuple[App, list[tuple[str, str, str]]]
) -> None:
    _, calls = unacknowledged
    for _, rule, reason in calls:
        assert len(reason) >= 80, f"{rule}: {reason!r} is not a reason"
    rules = {rule for _, rule, _ in calls}
    assert {rule.split("[")[0] for rule in rules} == {
        "AwsSolutions-IAM5",  # X-Ray / log delivery "*", the jobs table's index/*, teams/* secrets and objects
        "AwsSolutions-IAM4",  # API Gateway's account-level CloudWatch role
        "AwsSolutions-L1",  # python3.12, the layer's ABI
        "AwsSolutions-APIG2",  # request validation in the api Lambda
        "AwsSolutions-APIG3",  # no WAF by default
        "AwsSolutions-APIG4",  # GET /openapi.json is public
        "AwsSolutions-COG4",  # a Lambda TOKEN authorizer, not Cognito
        "AwsSolutions-SQS3",  # the events' dead-letter queue has no DLQ of its own
        "AwsSolutions-S1",  # the artifacts bucket: CloudTrail data events instead of server access logs
    }
    in_template = {
        (entry["id"], entry["reason"])
        for resource in synth.resources.values()
        for entry in resource.get("Metadata", {}).get("cdk_nag", {}).get("rules_to_suppress", [])
    }
    assert {(rule, reason) for _, rule, reason in calls} == in_template


def test_make_synth_fails_on_an_unacknowledged_finding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from stacks import app as app_module

    monkeypatch.setattr(stacks.nag, "acknowledge", lambda *args, **kwargs: None)
    layer = placeholder_layer(tmp_path / "layer")
    monkeypatch.setattr(app_module, "build_app", functools.partial(build_app, layer_dir=layer))
    monkeypatch.setenv("CDK_OUTDIR", str(tmp_path / "cdk.out"))  # as under the CDK CLI: nothing written to the repo
    assert app_module.main() == 1
    assert "AwsSolutions-IAM5" in capsys.readouterr().err
