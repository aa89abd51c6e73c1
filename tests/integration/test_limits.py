"""AWS size limits, against the emulator (docs/limits.md): a task spec is bounded by what the job record (one
DynamoDB item, 400 KB) can hold with everything recorded later, and a logs page by Lambda's 6 MB response.

The emulator is strict enough for this: moto refuses PutItem and UpdateItem past ~405,000 bytes (its own count of
names + values; tests/unit/test_moto_contract.py pins that), below AWS's 409,600, so a later update that would not
fit on AWS fails here too."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import boto3
import pytest

from controlplane.core.ids import job_id_for_idempotency_key
from controlplane.core.lifecycle import JobStatus
from controlplane.core.models import utcnow
from controlplane.core.spec import MAX_SPEC_BYTES, TaskSpec, stored_spec_bytes
from tests.integration.conftest import ControlPlane, Tenant, Workflow
from tests.unit.test_dynamodb_item_limit import AWS_ITEM_LIMIT, dynamodb_item_size

LAMBDA_RESPONSE_LIMIT = 6 * 1024 * 1024


def _env_of(total_spec_bytes: int, body: dict[str, Any]) -> str:
    """An env value making the stored spec this many bytes (envs stay in the job record; a long run would move to
    the artifacts bucket)."""
    spec = {k: v for k, v in body.items() if k != "provider_id"} | {"envs": {"BLOB": ""}}
    return "x" * (total_spec_bytes - stored_spec_bytes(TaskSpec.model_validate(spec)))


def _jobs_item(cp: ControlPlane, job_id: str) -> dict[str, Any]:
    item = boto3.client("dynamodb").get_item(
        TableName=cp.names.table("jobs"), Key={"job_id": {"S": job_id}}, ConsistentRead=True
    )["Item"]
    return dict(item)


def test_a_404_kb_env_is_refused_with_400_invalid_spec_and_an_11_mb_body_with_413(
    control_plane: ControlPlane, tenant: Tenant
) -> None:
    # ~404 KB of envs: a spec the job item could not hold; 11 MB (gzips to ~20 KB): a body no Lambda could receive.
    for fields, status, code, advice in (
        ({"envs": {"BLOB": "x" * 404_000}, "run": "true"}, 400, "INVALID_SPEC", "script in your repository or image"),
        ({"run": "echo hello\n" * 1_000_000}, 413, "PAYLOAD_TOO_LARGE", "script in your workdir"),
    ):
        body = {"provider_id": tenant.provider_id, "resources": {"cpus": "2"}} | fields
        response = control_plane.call("POST", "/jobs", tenant.token, body=body)
        assert response.status == status, response.body[:300]
        error = response.json()
        assert error["code"] == code
        if code == "INVALID_SPEC":
            assert "at most 262,144 bytes" in error["message"]
        assert advice in error["message"]


def test_a_404_kb_run_is_kept_in_the_artifacts_bucket_and_the_job_record_names_it(
    control_plane: ControlPlane, tenant: Tenant
) -> None:
    run = "true # " + "x" * 404_000
    body = {"provider_id": tenant.provider_id, "resources": {"cpus": "2"}, "run": run}
    response = control_plane.call("POST", "/jobs", tenant.token, body=body)
    assert response.status == 202, response.body[:300]
    job_id = response.json()["job_id"]
    item = _jobs_item(control_plane, job_id)
    assert len(json.dumps(item)) < 10_000  # the item holds a placeholder, not the script
    view = control_plane.call("GET", f"/jobs/{job_id}", tenant.token).json()
    assert view["spec"]["run"].startswith(f"# ec2jobs: this job's run ({len(run):,} bytes, sha256 ")
    key = view["stored_scripts"]["run"]
    assert key == f"teams/{tenant.team_id}/jobs/{job_id}/task/run.sh"
    stored = control_plane.admin("s3").get_object(Bucket=control_plane.names.bucket, Key=key)["Body"].read()
    assert stored == run.encode()


def test_a_console_spec_over_the_bound_is_recorded_failed_without_it(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow
) -> None:
    from controlplane.core.errors import InvalidSpec

    key = f"big-{uuid.uuid4().hex[:6]}"
    job_id = job_id_for_idempotency_key(tenant.team_id, key)
    raw = {"team_id": tenant.team_id, "provider_id": tenant.provider_id, "idempotency_key": key, "run": "x" * 300_000}
    with pytest.raises(InvalidSpec) as refused:
        workflow.validate(raw, key, f"arn:aws:states:::execution:x:{key}")
    assert "at most 262,144 bytes" in refused.value.message
    job = control_plane.call("GET", f"/jobs/{job_id}", tenant.token).json()
    assert (job["status"], job["failure_reason"]) == ("FAILED", "INVALID_SPEC")
    assert job["spec"] is None
    assert "262,144" in job["failure_message"]


def test_a_spec_at_the_bound_launches_and_every_later_update_fits(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow
) -> None:
    from controlplane.handlers import container
    from controlplane.service.failures import MAX_MESSAGE, fail_job

    body: dict[str, Any] = {"provider_id": tenant.provider_id, "resources": {"cpus": "2"}, "run": "x"}
    body["envs"] = {"BLOB": _env_of(MAX_SPEC_BYTES, body)}
    response = control_plane.call("POST", "/jobs", tenant.token, body=body)
    assert response.status == 202, response.body[:300]
    job_id = response.json()["job_id"]
    spec = {"resources": {"cpus": "2"}, "run": "x", "envs": body["envs"]}
    assert stored_spec_bytes(TaskSpec.model_validate(spec)) == MAX_SPEC_BYTES

    workflow.run(job_id, tenant.team_id)  # Validate, Bootstrap, Launch: PROVISIONING with its instance

    jobs = container.pipeline().jobs
    now = utcnow()
    assert jobs.claim_relay(job_id, "arn:aws:states:us-east-1:123456789012:execution:" + "r" * 80, now, now)
    assert jobs.note_relay_restart(job_id, 0, now + dt.timedelta(seconds=1))  # once that lease has ended
    notes = [f"note {i}: " + "n" * 2000 for i in range(20)]  # far more notes than any job gathers today
    jobs.update(job_id, {"notes": notes})
    jobs.transition(job_id, JobStatus.RUNNING, fields={"started_at": now + dt.timedelta(seconds=5)})
    jobs.set_instance_state(job_id, "running")
    ended = fail_job(jobs, job_id, "EXIT_NONZERO", "\U0001f600" * MAX_MESSAGE)  # 8,000 bytes of message
    assert ended is not None
    assert ended.status == JobStatus.FAILED
    item = _jobs_item(control_plane, job_id)
    assert dynamodb_item_size(item) < AWS_ITEM_LIMIT - 64 * 1024  # with 40 KB of notes, and room to spare


def test_a_megabyte_of_invalid_utf8_pages_under_lambdas_6_mb_response_exactly(
    control_plane: ControlPlane, tenant: Tenant
) -> None:
    from controlplane.adapters.logs import DynamoLogStore
    from controlplane.core import logchunks

    response = control_plane.call(
        "POST", "/jobs", tenant.token, body={"provider_id": tenant.provider_id, "run": "true"}
    )
    job_id = response.json()["job_id"]
    data = (bytes([0xFF]) * 700_000) + b'"\\\x01 \xe2\x9c\x93 ' * 20_000 + bytes([0xFE]) * 300_000
    logs = DynamoLogStore(boto3.resource("dynamodb").Table(control_plane.names.table("logs")))
    logs.write(job_id, logchunks.cut(0, data))
    logs.commit(job_id, len(data), complete=True)

    pages: list[str] = []
    cursor = None
    for _ in range(20):
        query = {"limit": "1048576"} | ({"after": cursor} if cursor else {})
        page = control_plane.call("GET", f"/jobs/{job_id}/logs", tenant.token, query=query)
        assert page.status == 200
        envelope = {"statusCode": 200, "headers": page.headers, "body": page.body, "isBase64Encoded": False}
        assert len(json.dumps(envelope, ensure_ascii=False).encode()) < LAMBDA_RESPONSE_LIMIT - 1024 * 1024
        body = page.json()
        pages.append(body["text"])
        if body["next_cursor"] == str(len(data)):
            break
        assert body["next_cursor"] != cursor
        cursor = body["next_cursor"]
    assert len(pages[0]) == 599_185  # shortened: 4 MiB of escaped text, where 1 MiB of bytes was asked for
    assert "".join(pages) == data.decode("utf-8", errors="replace")
