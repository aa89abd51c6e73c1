"""One synthesis of the real app per test session (the same build_app that app.py and `cdk deploy` run, cdk-nag
included), plus helpers that read the template by what things are (a function by its handler, a table by its
schema name) rather than by CDK's generated logical ids."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import App

from stacks.app import build_app
from stacks.control_plane import ControlPlaneStack
from stacks.settings import LAYER_DIR


def placeholder_layer(root: Path) -> Path:
    (root / "python").mkdir(parents=True, exist_ok=True)
    (root / "python" / "PLACEHOLDER.txt").write_text("tests/infra: stands in for build/layer (make layer)\n")
    return root


@pytest.fixture(scope="session")
def layer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real dependency layer when it was built (make layer / make synth), else a placeholder, so `make test`
    needs no wheel download. What the layer holds is scripts/build_layer.py's business (test_build_layer.py)."""
    if (LAYER_DIR / "python").is_dir():
        return LAYER_DIR
    return placeholder_layer(tmp_path_factory.mktemp("layer"))


@dataclass
class Synth:
    app: App
    stack: ControlPlaneStack
    outdir: Path
    template: dict[str, Any]
    _labels: dict[str, str] = field(default_factory=dict)

    @property
    def resources(self) -> dict[str, dict[str, Any]]:
        return dict(self.template["Resources"])

    def of_type(self, resource_type: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.resources.items() if v["Type"] == resource_type}

    def logical_id(self, construct: Any) -> str:
        child = construct.node.default_child or construct
        return str(self.stack.resolve(self.stack.get_logical_id(child)))

    def function(self, handler: str) -> tuple[str, dict[str, Any]]:
        """(logical id, properties) of the one function with this handler."""
        found = [(k, v["Properties"]) for k, v in self.of_type("AWS::Lambda::Function").items()]
        matches = [(k, p) for k, p in found if p["Handler"] == handler]
        assert len(matches) == 1, f"{len(matches)} functions with handler {handler}"
        return matches[0]

    def label(self, logical_id: str) -> str:
        """A readable name for a resource: table:jobs, function:<handler>, bus, state-machine, log-group:<handler>,
        bucket (the artifacts bucket), transfer-role (InstanceTransferRole)."""
        if not self._labels:
            stack = self.stack
            for name, table in stack.storage.tables.items():
                self._labels[self.logical_id(table)] = f"table:{name}"
            for function in stack.functions.functions.values():
                handler = self.resources[self.logical_id(function)]["Properties"]["Handler"]
                self._labels[self.logical_id(function)] = f"function:{handler}"
                group = self.resources[self.logical_id(function)]["Properties"]["LoggingConfig"]["LogGroup"]["Ref"]
                self._labels[group] = f"log-group:{handler}"
            self._labels[self.logical_id(stack.events.bus)] = "bus"
            self._labels[self.logical_id(stack.workflow.state_machine)] = "state-machine"
            self._labels[self.logical_id(stack.fleet.state_machine)] = "relay-fleet"
            self._labels[self.logical_id(stack.artifacts.bucket)] = "bucket"
            self._labels[self.logical_id(stack.artifacts.transfer_role)] = "transfer-role"
        return self._labels.get(logical_id, logical_id)

    def resource_label(self, resource: Any) -> str:
        """An IAM statement's resource as a label: table:jobs, table:jobs/index/*, secret:ec2jobs/teams/*/...,
        bucket/teams/*"""
        if resource == "*":
            return "*"
        if isinstance(resource, dict) and "Fn::GetAtt" in resource:
            return self.label(resource["Fn::GetAtt"][0])
        if isinstance(resource, dict) and "Ref" in resource:
            return self.label(resource["Ref"])
        if isinstance(resource, dict) and "Fn::Join" in resource:
            parts = resource["Fn::Join"][1]
            text = "".join(p if isinstance(p, str) else f"<{self.resource_label(p)}>" for p in parts)
            secret = re.fullmatch(
                r"arn:<AWS::Partition>:secretsmanager:<AWS::Region>:<AWS::AccountId>:secret:(.+)", text
            )
            if secret:
                return f"secret:{secret.group(1)}"
            index = re.fullmatch(r"<(table:\w+)>(/index/\*)", text)
            if index:
                return index.group(1) + index.group(2)
            objects = re.fullmatch(r"<bucket>(/.+)", text)
            if objects:
                return "bucket" + objects.group(1)
            if text == "arn:<AWS::Partition>:states:<AWS::Region>:<AWS::AccountId>:stateMachine:ec2jobs-relay-fleet":
                return "relay-fleet"  # named (stacks/relay_fleet.py): its ARN is built, not referenced
            return text
        if isinstance(resource, dict) and len(resource) == 1:  # a pseudo parameter inside a join
            key = next(iter(resource))
            return str(resource[key]) if key != "Ref" else str(resource["Ref"])
        return json.dumps(resource)

    def permissions(self, role_logical_id: str) -> set[tuple[str, str]]:
        """(action, resource label) pairs every Allow statement attached to the role grants."""
        granted: set[tuple[str, str]] = set()
        for policy in self.of_type("AWS::IAM::Policy").values():
            roles = [r.get("Ref") for r in policy["Properties"].get("Roles", [])]
            if role_logical_id not in roles:
                continue
            for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
                assert statement["Effect"] == "Allow"
                actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
                resources = (
                    statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
                )
                granted |= {(a, self.resource_label(r)) for a in actions for r in resources}
        return granted


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory, layer_dir: Path) -> Synth:
    outdir = tmp_path_factory.mktemp("cdk.out")
    app, stack = build_app(outdir=str(outdir), layer_dir=layer_dir)
    assembly = app.synth()  # fails here if cdk-nag or CDK's template validation report an unacknowledged error
    template = json.loads((Path(assembly.directory) / stack.template_file).read_text())
    return Synth(app=app, stack=stack, outdir=Path(assembly.directory), template=template)
