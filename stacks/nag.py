"""cdk-nag (v3, a CDK policy-validation plugin): the AwsSolutions pack checks every synth, and the findings that are
deliberate are acknowledged where the resource is made, each with its reason (written into the template's
Metadata as `cdk_nag.rules_to_suppress` too, so the reasons travel with what is deployed)."""

from __future__ import annotations

from aws_cdk import Acknowledgment, Validations
from cdk_nag import AwsSolutionsChecks
from constructs import IConstruct


def apply(scope: IConstruct) -> AwsSolutionsChecks:
    pack = AwsSolutionsChecks(scope, verbose=True, write_suppressions_to_cloud_formation=True)
    Validations.of(scope).add_plugins(pack)
    return pack


def acknowledge(scope: IConstruct | None, rule: str, reason: str, *, finding: str | None = None) -> None:
    """Accept `rule` (only its `finding`, e.g. "Resource::*", when given) for `scope` and everything below it."""
    if scope is None:
        raise ValueError(f"nothing to acknowledge {rule} on")
    rule_id = f"{rule}[{finding}]" if finding else rule
    Validations.of(scope).acknowledge(Acknowledgment(id=rule_id, reason=reason))
