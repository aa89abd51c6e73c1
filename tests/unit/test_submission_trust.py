"""Who a Job Submission event submits for (its source), ids no team can take from another, the IAM policy that binds
an automation role to its team (as docs/events.md shows it), and the Rejected event's fixed schema."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pytest

from controlplane.adapters import events
from controlplane.core import ids

DOC = Path(__file__).resolve().parents[2] / "docs" / "events.md"


@pytest.mark.parametrize(
    ("source", "team"),
    [
        ("ec2jobs.team.ml-research", "ml-research"),
        ("ec2jobs.team.", None),
        ("ec2jobs", None),
        ("my.automation", None),
        ("aws.ec2", None),
        (None, None),
        (["ec2jobs.team.x"], None),
    ],
)
def test_the_team_of_an_event_is_the_one_its_source_names(source: object, team: str | None) -> None:
    assert ids.team_of_event_source(source) == team


def test_a_teams_source_round_trips() -> None:
    assert ids.team_of_event_source(ids.team_event_source("ml-research")) == "ml-research"


def test_no_submission_for_one_team_maps_to_an_id_of_another() -> None:
    key = "nightly"
    theirs = {ids.job_id_for_idempotency_key("team-b", key)}
    mine = {
        ids.job_id_for_idempotency_key("team-a", key),
        ids.job_id_for_submission("team-a", "event", key),
        ids.job_id_for_submission("team-a", "execution", key),
        ids.job_id_for_submission("team-a", "event", "team-b\x00" + key),
    }
    assert theirs.isdisjoint(mine)
    assert ids.job_id_for_idempotency_key("team-a", key) == ids.job_id_for_idempotency_key("team-a", key)


def test_the_submission_policy_allows_one_teams_job_submissions_only() -> None:
    bus = "arn:aws:events:us-east-1:111122223333:event-bus/ec2jobs-bus"
    (statement,) = events.team_submission_policy("ml-research", bus)["Statement"]

    assert (statement["Effect"], statement["Action"], statement["Resource"]) == ("Allow", "events:PutEvents", bus)
    assert statement["Condition"] == {
        "ForAllValues:StringEquals": {
            "events:source": ["ec2jobs.team.ml-research"],
            "events:detail-type": ["Job Submission"],
        },
        "Null": {"events:source": "false"},
    }


def test_the_docs_show_the_policy_the_code_produces() -> None:
    text = DOC.read_text()
    shown = [json.loads(block) for block in re.findall(r"```json\n(\{\n  \"Version\".*?)\n```", text, re.S)]
    bus = "arn:aws:events:us-east-1:111122223333:event-bus/ec2jobs-bus"
    assert shown == [events.team_submission_policy("ml-research", bus)]


def test_a_rejection_detail_holds_exactly_the_documented_fields() -> None:
    fields = {name: f"v-{name}" for name in events.REJECTION_FIELDS} | {"spec": {"envs": {"K": "secret"}}}
    when = dt.datetime(2026, 11, 24, 5, tzinfo=dt.UTC)

    detail = events.job_submission_rejected_detail(fields, when)

    assert list(detail) == [*events.REJECTION_FIELDS, "rejected_at"]
    assert "secret" not in json.dumps(detail)
    assert detail["rejected_at"] == "2026-11-24T05:00:00+00:00"
    for name in detail:  # every field is documented in the table of docs/events.md
        assert f"`{name}`" in DOC.read_text()


def test_the_rejection_publisher_puts_one_entry_and_never_raises() -> None:
    class Client:
        def __init__(self, fail: bool) -> None:
            self.fail = fail
            self.entries: list[dict[str, str]] = []

        def put_events(self, Entries: list[dict[str, str]]) -> dict[str, int]:
            if self.fail:
                raise ConnectionError("EventBridge unreachable")
            self.entries += Entries
            return {"FailedEntryCount": 0}

    ok, down = Client(fail=False), Client(fail=True)

    assert events.RejectionPublisher(ok, "bus")({"reason": "r"}) is True
    assert events.RejectionPublisher(down, "bus")({"reason": "r"}) is False
    (entry,) = ok.entries
    assert (entry["Source"], entry["DetailType"], entry["EventBusName"]) == (
        "ec2jobs",
        "Job Submission Rejected",
        "bus",
    )
