"""core/grants.py: the artifact key layout and the session policy narrowing an instance to its job's prefix."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from controlplane.core import grants
from controlplane.core.errors import InvalidRequest
from controlplane.core.grants import GrantRefused, session_policy
from controlplane.core.models import Job
from controlplane.core.spec import TaskSpec
from controlplane.service import job_io

BUCKET = "ec2jobs-artifacts-123456789012"


def statements(policy: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {statement["Sid"]: statement for statement in policy["Statement"]}


def test_key_layout() -> None:
    assert grants.upload_key("t-1", "up-1") == "teams/t-1/uploads/up-1/archive.tar.gz"
    assert grants.job_prefix("t-1", "job-1") == "teams/t-1/jobs/job-1/"
    assert grants.job_area_prefix("t-1", "job-1", "outputs") == "teams/t-1/jobs/job-1/outputs/"
    assert grants.job_area_prefix("t-1", "job-1", "checkpoints") == "teams/t-1/jobs/job-1/checkpoints/"
    with pytest.raises(GrantRefused, match="unknown job storage area"):
        grants.job_area_prefix("t-1", "job-1", "logs")


def test_job_prefix_read_write_and_nothing_else() -> None:
    policy = session_policy(BUCKET, "t-1", "job-1")
    assert policy["Version"] == "2012-10-17"
    found = statements(policy)
    assert set(found) == {"JobReadWrite", "ListOwnPrefixes"}
    job = found["JobReadWrite"]
    assert job["Effect"] == "Allow"
    assert sorted(job["Action"]) == sorted(
        ["s3:PutObject", "s3:GetObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"]
    )
    assert job["Resource"] == f"arn:aws:s3:::{BUCKET}/teams/t-1/jobs/job-1/*"
    listing = found["ListOwnPrefixes"]
    assert listing["Action"] == "s3:ListBucket"
    assert listing["Resource"] == f"arn:aws:s3:::{BUCKET}"
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["teams/t-1/jobs/job-1/*"]}}
    every_action = {
        a for s in policy["Statement"] for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    }
    assert "s3:DeleteObject" not in every_action
    assert not any(a == "*" or a.endswith(":*") for a in every_action)


def test_read_prefixes_get_object_and_list_only() -> None:
    policy = session_policy(
        BUCKET,
        "t-1",
        "job-2",
        read_prefixes=["teams/t-1/uploads/up-9/", "teams/t-1/jobs/job-1/checkpoints/", "teams/t-1/uploads/up-9/"],
    )
    found = statements(policy)
    assert found["ReadInputs"]["Action"] == "s3:GetObject"
    assert found["ReadInputs"]["Resource"] == [
        f"arn:aws:s3:::{BUCKET}/teams/t-1/jobs/job-1/checkpoints/*",
        f"arn:aws:s3:::{BUCKET}/teams/t-1/uploads/up-9/*",
    ]
    assert found["ListOwnPrefixes"]["Condition"]["StringLike"]["s3:prefix"] == [
        "teams/t-1/jobs/job-2/*",
        "teams/t-1/jobs/job-1/checkpoints/*",
        "teams/t-1/uploads/up-9/*",
    ]


def test_redundant_read_prefixes_are_dropped() -> None:
    policy = session_policy(
        BUCKET,
        "t-1",
        "job-2",
        read_prefixes=["teams/t-1/jobs/job-2/outputs/", "teams/t-1/uploads/", "teams/t-1/uploads/up-1/"],
    )
    assert statements(policy)["ReadInputs"]["Resource"] == [f"arn:aws:s3:::{BUCKET}/teams/t-1/uploads/*"]


@pytest.mark.parametrize(
    "prefix",
    [
        "teams/t-2/uploads/up-1/",  # another team
        "teams/t-1x/uploads/",  # a team whose id merely starts the same
        "teams/t-1/uploads/up-1",  # not a folder: would also match up-10, up-11, ...
        "teams/t-1/../t-2/",
        "teams/t-1/uploads/*/",
        "teams/t-1/uploads/${aws:username}/",
        "/teams/t-1/uploads/",
        "",
    ],
)
def test_read_prefixes_outside_the_team_or_unsafe_are_refused(prefix: str) -> None:
    with pytest.raises(GrantRefused):
        session_policy(BUCKET, "t-1", "job-1", read_prefixes=[prefix])


@pytest.mark.parametrize("bad", ["", "a/b", "..", "a..b", ".hidden", "job*", "job?", "${x}", "x" * 65, "é"])
def test_ids_must_be_one_safe_segment(bad: str) -> None:
    with pytest.raises(GrantRefused):
        session_policy(BUCKET, bad, "job-1")
    with pytest.raises(GrantRefused):
        session_policy(BUCKET, "t-1", bad)
    with pytest.raises(GrantRefused):
        grants.upload_key("t-1", bad)


def test_grant_refusals_are_invalid_requests() -> None:
    assert issubclass(GrantRefused, InvalidRequest)


@pytest.mark.parametrize("bucket", ["", "UPPER", "a", "bucket/x", "bucket*", "a..b"])
def test_bucket_name_is_checked(bucket: str) -> None:
    with pytest.raises(GrantRefused):
        session_policy(bucket, "t-1", "job-1")


def test_partition() -> None:
    policy = session_policy(BUCKET, "t-1", "job-1", partition="aws-cn")
    assert statements(policy)["JobReadWrite"]["Resource"].startswith("arn:aws-cn:s3:::")
    with pytest.raises(GrantRefused):
        session_policy(BUCKET, "t-1", "job-1", partition="aws:x")


def test_policy_text_is_compact_json_within_aws_characters() -> None:
    policy = session_policy(BUCKET, "t-1", "job-1", read_prefixes=["teams/t-1/uploads/u/"])
    text = grants.policy_text(policy)
    assert json.loads(text) == policy
    assert " " not in text
    assert "\n" not in text
    assert all(0x20 <= ord(ch) <= 0xFF for ch in text)  # AssumeRole's allowed Policy characters


def test_too_large_a_policy_is_refused_before_sts_sees_it() -> None:
    team, job = "t" * 32, "j" * 64
    reads = [f"teams/{team}/uploads/{chr(ord('a') + i) * 64}/" for i in range(4)]
    fits = session_policy("b" * 40, team, job, read_prefixes=reads)
    assert len(grants.policy_text(fits)) <= grants.SESSION_POLICY_MAX_CHARS
    reads.append(f"teams/{team}/uploads/{'z' * 64}/")
    with pytest.raises(GrantRefused, match=r"over AWS's 2048-character session-policy limit"):
        session_policy("b" * 40, team, job, read_prefixes=reads)


# -- service/job_io.py: what an attempt's instance fetches and may read ----------------------------------------------

EARLIER = "job-0123456789abcdef0123"
NOW = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


def job_on_attempt(attempt: int, resume_from: str | None = None) -> Job:
    return Job(
        job_id="job-ffffffffffffffffffff", team_id="t-1", provider_id="p", region="us-east-1",
        spec=TaskSpec(run="python train.py", resume_from=resume_from), attempt=attempt, created_at=NOW, updated_at=NOW,
    )  # fmt: skip


def test_a_later_attempt_with_synced_checkpoints_restores_its_own() -> None:
    """Given attempt 2 of a job that resumed from an earlier job, When its first attempt synced checkpoints, Then
    the instance restores the job's own (resume_own=1), and the grant needs no extra read prefix for them."""
    second = job_on_attempt(2, resume_from=EARLIER)
    own = grants.job_area_prefix("t-1", "job-ffffffffffffffffffff", "checkpoints")
    values = job_io.inputs(second, own_checkpoints=True)
    assert (values["resume_prefix"], values["resume_own"]) == (own, "1")
    assert own.startswith(grants.job_prefix("t-1", second.job_id))  # always readable: the JobReadWrite statement
    assert job_io.read_prefixes(second) == [grants.job_area_prefix("t-1", EARLIER, "checkpoints")]


@pytest.mark.parametrize(
    ("attempt", "own_checkpoints", "resume_from", "expected"),
    [
        (2, False, EARLIER, f"teams/t-1/jobs/{EARLIER}/checkpoints/"),  # nothing synced yet: resume_from's again
        (1, True, EARLIER, f"teams/t-1/jobs/{EARLIER}/checkpoints/"),  # the first attempt never restores its own
        (2, False, None, None),
        (1, False, None, None),
    ],
)
def test_otherwise_the_checkpoints_are_resume_froms_if_any(
    attempt: int, own_checkpoints: bool, resume_from: str | None, expected: str | None
) -> None:
    values = job_io.inputs(job_on_attempt(attempt, resume_from), own_checkpoints=own_checkpoints)
    assert values.get("resume_prefix") == expected
    assert "resume_own" not in values
