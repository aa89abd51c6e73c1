"""scripts/issue_token.py, run against in-memory fakes of CloudFormation and the state table (never AWS): it
finds the state table from the stack's outputs and issues a token the authorizer's lookup accepts."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from controlplane.adapters.dynamodb import DynamoTeamStore
from controlplane.service.teams import TeamService

REPO = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("issue_token", REPO / "scripts" / "issue_token.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


issue_token = _load()


class FakeTable:
    def __init__(self) -> None:
        self.items: dict[tuple[str, str], dict[str, Any]] = {}

    def put_item(self, Item: dict[str, Any], **_: Any) -> None:
        self.items.setdefault((Item["pk"], Item["sk"]), Item)

    def get_item(self, Key: dict[str, str], **_: Any) -> dict[str, Any]:
        item = self.items.get((Key["pk"], Key["sk"]))
        return {"Item": item} if item else {}


class FakeSession:
    def __init__(self, outputs: dict[str, str]) -> None:
        self.outputs = outputs
        self.tables: dict[str, FakeTable] = {}
        self.asked: list[str] = []

    def client(self, service: str) -> Any:
        assert service == "cloudformation"
        session = self

        class CloudFormation:
            def describe_stacks(self, StackName: str) -> dict[str, Any]:
                session.asked.append(StackName)
                outputs = [{"OutputKey": k, "OutputValue": v} for k, v in session.outputs.items()]
                return {"Stacks": [{"StackName": StackName, "Outputs": outputs}]}

        return CloudFormation()

    def resource(self, service: str) -> Any:
        assert service == "dynamodb"
        session = self

        class DynamoDB:
            def Table(self, name: str) -> FakeTable:
                return session.tables.setdefault(name, FakeTable())

        return DynamoDB()


def test_a_token_for_the_deployed_state_table(capsys: pytest.CaptureFixture[str]) -> None:
    session = FakeSession({"StateTableName": "ec2jobs-StorageState-ABC", "ApiUrl": "https://x.example/v1/"})
    assert issue_token.main(["--team", "ml-team", "--stack", "ec2jobs"], session=session) == 0
    out, err = capsys.readouterr()
    token = out.strip()
    assert session.asked == ["ec2jobs"]
    teams = TeamService(DynamoTeamStore(session.tables["ec2jobs-StorageState-ABC"]))
    assert teams.team_for(token) == "ml-team"
    assert "EC2JOBS_API_URL=https://x.example/v1/" in err
    assert token not in err


def test_an_invalid_team_or_a_foreign_stack_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert issue_token.main(["--team", "Not Valid"], session=FakeSession({"StateTableName": "t"})) == 2
    assert issue_token.main(["--team", "ok"], session=FakeSession({"Other": "x"})) == 2
    assert "StateTableName" in capsys.readouterr().err
