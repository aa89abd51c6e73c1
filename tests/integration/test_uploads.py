"""Uploads, the upload check at submit, and outputs listings, on the emulator's control plane (IAM-enforcing moto,
the API handler behind the local API Gateway front): real HTTP PUTs and GETs to the presigned URLs it hands out."""

from __future__ import annotations

import hashlib
import os
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ec2jobs import transfer
from local.resources import create_artifacts
from tests.integration.conftest import ControlPlane, Tenant

MIB = 1024 * 1024


@pytest.fixture(scope="module", autouse=True)
def artifacts(control_plane: ControlPlane) -> str:
    """The artifacts bucket and InstanceTransferRole, as the local runtime makes them."""
    create_artifacts(
        control_plane.admin("s3"), control_plane.admin("iam"), control_plane.names, ["arn:aws:iam::123456789012:root"]
    )
    return control_plane.names.bucket


def _file(tmp_path: Path, size: int) -> tuple[Path, str]:
    path = tmp_path / f"archive-{uuid.uuid4().hex[:6]}.tar.gz"
    path.write_bytes(os.urandom(size))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def _create(control_plane: ControlPlane, token: str, kind: str, size: int, sha256: str = "0" * 64) -> Any:
    return control_plane.call("POST", "/uploads", token, body={"kind": kind, "size": size, "sha256": sha256})


def _put(url: str, data: bytes) -> str:
    request = urllib.request.Request(url, data=data, method="PUT")  # noqa: S310 - a loopback presigned URL
    request.add_header("Content-Type", "application/octet-stream")  # urllib's default is a form, which moto parses
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        return str(response.headers["ETag"])


def upload_file(control_plane: ControlPlane, token: str, path: Path, sha256: str, kind: str = "workdir") -> str:
    """POST /uploads, PUT every part with ec2jobs.transfer, complete; the upload id."""
    created = _create(control_plane, token, kind, path.stat().st_size, sha256)
    assert created.status == 201, created.body
    body = created.json()
    parts = transfer.upload(body["parts"], path, body["part_size"])
    done = control_plane.call("POST", f"/uploads/{body['upload_id']}/complete", token, body={"parts": parts})
    assert done.status == 200, done.body
    return str(body["upload_id"])


def test_a_multipart_upload_round_trips_through_presigned_urls(
    control_plane: ControlPlane, tenant: Tenant, tmp_path: Path, artifacts: str
) -> None:
    token = tenant.token
    path, sha256 = _file(tmp_path, 17 * MIB + 5)  # three 8 MiB parts, the last 1 MiB + 5 bytes
    created = _create(control_plane, token, "workdir", path.stat().st_size, sha256)
    assert created.status == 201, created.body
    body = created.json()
    upload_id = body["upload_id"]
    assert upload_id.startswith("up-")
    assert len(upload_id) == 23
    assert (body["kind"], body["size"], body["part_size"]) == ("workdir", 17 * MIB + 5, 8 * MIB)
    assert [p["part_number"] for p in body["parts"]] == [1, 2, 3]
    for part in body["parts"]:  # at the emulator, path-style, the archive's key
        assert part["url"].startswith(f"{control_plane.info.endpoint}/{artifacts}/teams/")
        assert f"/uploads/{upload_id}/archive.tar.gz?" in part["url"]
    parts = transfer.upload(body["parts"], path, body["part_size"])
    fresh = control_plane.call("POST", f"/uploads/{upload_id}/parts", token)  # e.g. after a 403
    assert fresh.status == 200, fresh.body
    assert [p["part_number"] for p in fresh.json()["parts"]] == [1, 2, 3]
    incomplete = control_plane.call("POST", f"/uploads/{upload_id}/complete", token, body={"parts": parts[:2]})
    assert incomplete.status == 400, incomplete.body  # two of three parts: the stored size is not the declared one
    done = control_plane.call("POST", f"/uploads/{upload_id}/complete", token, body={"parts": parts})
    assert done.status == 200, done.body
    assert done.json() == {"upload_id": upload_id, "kind": "workdir", "size": 17 * MIB + 5, "status": "complete"}
    again = control_plane.call("POST", f"/uploads/{upload_id}/complete", token, body={"parts": parts})
    assert again.json() == done.json()  # idempotent
    assert control_plane.call("POST", f"/uploads/{upload_id}/parts", token).status == 409  # complete: no more parts
    stored = (
        control_plane.admin("s3")
        .get_object(Bucket=artifacts, Key=f"teams/{tenant.team_id}/uploads/{upload_id}/archive.tar.gz")["Body"]
        .read()
    )
    assert stored == path.read_bytes()


def test_a_single_put_upload_is_checked_for_its_declared_size(
    control_plane: ControlPlane, new_team: Callable[[], str]
) -> None:
    token = new_team()
    created = _create(control_plane, token, "file_mounts", 100)
    assert created.status == 201, created.body
    body = created.json()
    (part,) = body["parts"]
    _put(part["url"], b"x" * 60)
    short = control_plane.call("POST", f"/uploads/{body['upload_id']}/complete", token, body={"parts": []})
    assert short.status == 400
    assert short.json()["message"] == f"upload {body['upload_id']} holds 60 bytes, expected 100"
    _put(part["url"], b"x" * 100)
    done = control_plane.call("POST", f"/uploads/{body['upload_id']}/complete", token, body={"parts": []})
    assert done.status == 200, done.body
    assert done.json()["status"] == "complete"


def test_another_team_cannot_complete_or_refresh_an_upload(
    control_plane: ControlPlane, new_team: Callable[[], str]
) -> None:
    owner, other = new_team(), new_team()
    body = _create(control_plane, owner, "workdir", 10).json()
    _put(body["parts"][0]["url"], b"0123456789")
    upload_id = body["upload_id"]
    for path, payload in ((f"/uploads/{upload_id}/complete", {"parts": []}), (f"/uploads/{upload_id}/parts", None)):
        answer = control_plane.call("POST", path, other, body=payload)
        assert answer.status == 404, answer.body
        assert answer.json() == {"code": "NOT_FOUND", "message": f"upload '{upload_id}' not found"}
    unknown = control_plane.call("POST", f"/uploads/up-{'0' * 20}/complete", owner, body={"parts": []})
    assert unknown.status == 404  # exactly like another team's
    assert control_plane.call("POST", f"/uploads/{upload_id}/complete", owner, body={"parts": []}).status == 200


def test_a_team_has_at_most_20_uploads_in_progress(control_plane: ControlPlane, new_team: Callable[[], str]) -> None:
    token, other = new_team(), new_team()
    first = [_create(control_plane, token, "workdir", 10).json() for _ in range(20)]
    refused = _create(control_plane, token, "workdir", 10)
    assert refused.status == 409
    assert refused.json()["code"] == "CONFLICT"
    assert "20 uploads in progress (at most 20)" in refused.json()["message"]
    assert _create(control_plane, other, "workdir", 10).status == 201  # per team
    _put(first[0]["parts"][0]["url"], b"0123456789")  # completing one frees a place
    completed = control_plane.call("POST", f"/uploads/{first[0]['upload_id']}/complete", token, body={"parts": []})
    assert completed.status == 200, completed.body
    assert _create(control_plane, token, "workdir", 10).status == 201


@pytest.mark.parametrize(
    "body",
    [
        {"kind": "workdir", "size": 0, "sha256": "0" * 64},
        {"kind": "workdir", "size": 50 * 1024**3 + 1, "sha256": "0" * 64},
        {"kind": "data", "size": 10, "sha256": "0" * 64},
        {"kind": "workdir", "size": 10, "sha256": "abc"},
        {"kind": "workdir", "size": 10, "sha256": "0" * 64, "team_id": "someone-else"},
    ],
)
def test_upload_requests_are_validated(control_plane: ControlPlane, new_team: Callable[[], str], body: Any) -> None:
    answer = control_plane.call("POST", "/uploads", new_team(), body=body)
    assert answer.status == 422, answer.body
    assert answer.json()["code"] == "VALIDATION_ERROR"


# -- the upload check at submit --------------------------------------------------------------------------------


def _small_upload(control_plane: ControlPlane, token: str, kind: str, complete: bool = True) -> str:
    body = _create(control_plane, token, kind, 4).json()
    _put(body["parts"][0]["url"], b"data")
    if complete:
        done = control_plane.call("POST", f"/uploads/{body['upload_id']}/complete", token, body={"parts": []})
        assert done.status == 200, done.body
    return str(body["upload_id"])


def test_a_job_names_only_complete_uploads_of_its_own_team_and_kind(
    control_plane: ControlPlane, tenant: Tenant, new_team: Callable[[], str]
) -> None:
    workdir = _small_upload(control_plane, tenant.token, "workdir")
    mounts = _small_upload(control_plane, tenant.token, "file_mounts")
    pending = _small_upload(control_plane, tenant.token, "workdir", complete=False)
    foreign = _small_upload(control_plane, new_team(), "workdir")

    def submit(**fields: Any) -> Any:
        body = {"provider_id": tenant.provider_id, "run": "python train.py"} | fields
        return control_plane.call("POST", "/jobs", tenant.token, body=body)

    for upload_id, field in ((foreign, "workdir"), (pending, "workdir"), (mounts, "workdir"), (workdir, "file_mounts")):
        refused = submit(**{field: {"upload": upload_id}})
        assert refused.status == 400, refused.body
        assert refused.json()["code"] == "INVALID_SPEC"
        assert refused.json()["message"].startswith(
            f"{field}: upload {upload_id} is not a completed {field} upload of your team"
        )
    accepted = submit(workdir={"upload": workdir}, file_mounts={"upload": mounts})
    assert accepted.status == 202, accepted.body
    job = control_plane.call("GET", f"/jobs/{accepted.json()['job_id']}", tenant.token).json()
    assert job["spec"]["workdir"] == {"upload": workdir}
    assert job["spec"]["file_mounts"] == {"upload": mounts}
    assert submit(workdir={"url": "https://github.com/org/repo", "ref": "main"}).status == 202  # a repository


def test_console_and_event_submissions_make_the_same_upload_check(
    control_plane: ControlPlane, tenant: Tenant, new_team: Callable[[], str], workflow: Any
) -> None:
    from controlplane.core.errors import InvalidSpec
    from controlplane.handlers import container

    foreign = _small_upload(control_plane, new_team(), "workdir")
    own = _small_upload(control_plane, tenant.token, "workdir")
    raw = {"team_id": tenant.team_id, "provider_id": tenant.provider_id, "run": "echo hi"}
    with pytest.raises(InvalidSpec, match=f"workdir: upload {foreign} is not a completed workdir upload"):
        workflow.validate(raw | {"workdir": {"upload": foreign}}, execution_name=f"x-{uuid.uuid4().hex[:8]}")
    failed = container.get().jobs.list(tenant.team_id, None, 10, None).jobs[0]
    assert (failed.status, failed.failure_reason) == ("FAILED", "INVALID_SPEC")
    assert f"upload {foreign} is not a completed workdir upload of your team" in (failed.failure_message or "")
    plan = workflow.validate(raw | {"workdir": {"upload": own}}, execution_name=f"y-{uuid.uuid4().hex[:8]}")
    assert plan["team_id"] == tenant.team_id


# -- outputs and checkpoints -----------------------------------------------------------------------------------


def _job(control_plane: ControlPlane, tenant: Tenant) -> str:
    body = {"provider_id": tenant.provider_id, "run": "python train.py"}
    accepted = control_plane.call("POST", "/jobs", tenant.token, body=body)
    assert accepted.status == 202, accepted.body
    return str(accepted.json()["job_id"])


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - a loopback presigned URL
        return bytes(response.read())


def test_outputs_are_listed_with_presigned_urls_for_the_jobs_team_only(
    control_plane: ControlPlane, tenant: Tenant, new_team: Callable[[], str], artifacts: str
) -> None:
    job_id = _job(control_plane, tenant)
    s3 = control_plane.admin("s3")
    prefix = f"teams/{tenant.team_id}/jobs/{job_id}"
    files = {"model.bin": os.urandom(3000), "logs/train.txt": b"epoch 1\n", "logs/z.json": b"{}"}
    for path, data in files.items():  # what an instance would upload
        s3.put_object(Bucket=artifacts, Key=f"{prefix}/outputs/{path}", Body=data)
    s3.put_object(Bucket=artifacts, Key=f"{prefix}/checkpoints/step-10.pt", Body=b"ckpt")
    listed = control_plane.call("GET", f"/jobs/{job_id}/outputs", tenant.token)
    assert listed.status == 200, listed.body
    body = listed.json()
    assert (body["job_id"], body["kind"], body["next_cursor"]) == (job_id, "outputs", None)
    assert [(f["path"], f["size"]) for f in body["files"]] == [
        ("logs/train.txt", 8),
        ("logs/z.json", 2),
        ("model.bin", 3000),
    ]
    for item in body["files"]:
        assert _get(item["url"]) == files[item["path"]]
    checkpoints = control_plane.call(
        "GET", f"/jobs/{job_id}/outputs", tenant.token, query={"kind": "checkpoints"}
    ).json()
    assert [f["path"] for f in checkpoints["files"]] == ["step-10.pt"]
    assert _get(checkpoints["files"][0]["url"]) == b"ckpt"
    # pages
    seen, cursor = [], None
    while True:
        query = {"limit": "2"} | ({"cursor": cursor} if cursor else {})
        page = control_plane.call("GET", f"/jobs/{job_id}/outputs", tenant.token, query=query).json()
        seen += [f["path"] for f in page["files"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["logs/train.txt", "logs/z.json", "model.bin"]
    bad = control_plane.call("GET", f"/jobs/{job_id}/outputs", tenant.token, query={"cursor": "not-ours"})
    assert bad.status == 400
    assert bad.json()["code"] == "INVALID_REQUEST"
    # another team: as if the job did not exist
    other = control_plane.call("GET", f"/jobs/{job_id}/outputs", new_team())
    assert other.status == 404
    assert other.json() == {"code": "NOT_FOUND", "message": f"job '{job_id}' not found"}


def test_a_job_with_nothing_stored_lists_no_files(control_plane: ControlPlane, tenant: Tenant) -> None:
    job_id = _job(control_plane, tenant)
    body = control_plane.call("GET", f"/jobs/{job_id}/outputs", tenant.token).json()
    assert (body["files"], body["next_cursor"]) == ([], None)


def test_the_instance_transfer_role_is_the_stacks(control_plane: ControlPlane, artifacts: str) -> None:
    """local/resources.py writes InstanceTransferRole's policy without importing the CDK stack: same actions."""
    import json

    from local import resources
    from stacks import artifacts as stack

    assert set(resources.TRANSFER_OBJECT_ACTIONS) == set(stack.TRANSFER_OBJECT_ACTIONS)
    assert set(resources.TRANSFER_BUCKET_ACTIONS) == set(stack.TRANSFER_BUCKET_ACTIONS)
    iam = control_plane.admin("iam")
    name = control_plane.names.transfer_role
    document = iam.get_role_policy(RoleName=name, PolicyName="TeamObjects")["PolicyDocument"]
    document = json.loads(document) if isinstance(document, str) else document
    assert document == resources.transfer_role_policy(artifacts)
    assert iam.get_role(RoleName=name)["Role"]["MaxSessionDuration"] == stack.TRANSFER_SESSION_SECONDS
