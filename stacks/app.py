"""Building the CDK app: shared by app.py (`cdk synth`/`cdk deploy`, `make synth`) and tests/infra, so the tests
check exactly the app that deploys — same context defaults (cdk.json), same cdk-nag pack and acknowledgements."""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from aws_cdk import App
from jsii.errors import JSIIError

from stacks import nag
from stacks.control_plane import ControlPlaneStack
from stacks.settings import LAYER_DIR, REPO, Settings

CDK_JSON = REPO / "cdk.json"
DEFAULT_STACK_NAME = "ec2jobs"
SETTINGS_CONTEXT = (
    "resourcePrefix",
    "sshIngressCidr",
    "secretsPrefix",
    "logRetentionDays",
    "logChunkTtlDays",
    "apiGatewayCloudWatchRole",
    "apiReservedConcurrency",
    "authorizerReservedConcurrency",
    "instanceEventsReservedConcurrency",
    "reconcileReservedConcurrency",
    "accountConcurrency",
    "artifactExpiryDays",
)
VALIDATION_REPORT = "validation-report.json"


def cdk_json_context() -> dict[str, Any]:
    """cdk.json's context. The CDK CLI passes it to the app itself; running app.py directly (make synth, tests)
    needs it read here so feature flags and defaults are the same either way."""
    context = json.loads(CDK_JSON.read_text()).get("context", {})
    return dict(context)


def build_app(
    *, outdir: str | None = None, context: dict[str, Any] | None = None, layer_dir: Path = LAYER_DIR
) -> tuple[App, ControlPlaneStack]:
    app = App(outdir=outdir, context=cdk_json_context() | (context or {}))
    values = {name: app.node.try_get_context(name) for name in SETTINGS_CONTEXT}
    settings = Settings.from_context(values, layer_dir=layer_dir)
    stack_name = str(app.node.try_get_context("stackName") or DEFAULT_STACK_NAME)
    stack = ControlPlaneStack(app, stack_name, settings=settings)
    nag.apply(app)
    return app, stack


def validation_summary(report_file: Path, template: dict[str, Any]) -> tuple[Counter[str], int]:
    """(violations by severity, from the report synth writes; acknowledged findings, from the template's
    cdk_nag metadata)."""
    severities: Counter[str] = Counter()
    if report_file.exists():
        for plugin in json.loads(report_file.read_text()).get("pluginReports", []):
            for violation in plugin.get("violations", []):
                severities[str(violation.get("severity", "unknown"))] += len(violation.get("violatingResources") or [0])
    acknowledged = sum(
        len(resource.get("Metadata", {}).get("cdk_nag", {}).get("rules_to_suppress", []))
        for resource in template.get("Resources", {}).values()
    )
    return severities, acknowledged


def main() -> int:
    under_cli = "CDK_OUTDIR" in os.environ  # the CDK CLI sets it (and reports validation itself)
    outdir = None if under_cli else str(REPO / "cdk.out")
    try:
        app, stack = build_app(outdir=outdir)
        assembly = app.synth()
    except (JSIIError, RuntimeError, ValueError, OSError) as error:  # failed validation, bad context, no layer
        print(f"synth failed: {error}", file=sys.stderr)
        return 1
    template_file = Path(assembly.directory) / stack.template_file
    template = json.loads(template_file.read_text())
    severities, acknowledged = validation_summary(Path(assembly.directory) / VALIDATION_REPORT, template)
    relative = template_file.relative_to(REPO) if template_file.is_relative_to(REPO) else template_file
    summary = (
        f"synth: {relative} ({len(template.get('Resources', {}))} resources); validation (cdk-nag AwsSolutions + CDK): "
        f"{severities['error'] + severities['fatal']} errors, {severities['warning']} warnings, "
        f"{acknowledged} acknowledged findings (each with its reason)"
    )
    failed = sum(severities.values()) > 0  # warnings too: every finding is fixed or acknowledged
    if failed or not under_cli:  # under the CLI, which reports validation itself, only a failure is worth a line
        print(summary, file=sys.stderr if under_cli else sys.stdout)
    return 1 if failed else 0
