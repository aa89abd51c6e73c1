"""`ec2jobs submit` with a local workdir, file_mounts and --secret, and `ec2jobs download`, against the emulator's
control plane over loopback HTTP (the local API front): the archives really reach the bucket and the files come
back byte for byte."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ec2jobs import cli
from local.apigw import LocalHttpApi
from local.resources import create_artifacts
from tests.integration.conftest import ControlPlane, Tenant

SECRET = "hf_cli_secret_value_0123456789"


@pytest.fixture(scope="module")
def api_url(control_plane: ControlPlane) -> Iterator[str]:
    create_artifacts(
        control_plane.admin("s3"), control_plane.admin("iam"), control_plane.names, ["arn:aws:iam::123456789012:root"]
    )
    front = LocalHttpApi(control_plane.gateway).start()
    try:
        yield front.url
    finally:
        front.stop()


def _run(capsys: pytest.CaptureFixture[str], url: str, token: str, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["--api-url", url, "--token", token, *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _archive(control_plane: ControlPlane, team_id: str, upload_id: str) -> dict[str, bytes]:
    key = f"teams/{team_id}/uploads/{upload_id}/archive.tar.gz"
    data = control_plane.admin("s3").get_object(Bucket=control_plane.names.bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def test_submit_uploads_workdir_and_mounts_and_download_fetches_outputs(
    control_plane: ControlPlane,
    tenant: Tenant,
    api_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "train.py").write_text("print('training')\n")
    (project / ".gitignore").write_text("*.ckpt\n")
    (project / "old.ckpt").write_bytes(b"\0" * 100)
    (project / "data" / "train.jsonl").write_text('{"x": 1}\n')
    (tmp_path / "labels.csv").write_text("a,b\n")
    (project / "task.yaml").write_text(
        "name: cli-upload\n"
        "workdir: .\n"
        "file_mounts:\n  /data/labels.csv: ../labels.csv\n"
        "secrets: {HF_TOKEN: null}\n"
        "run: python train.py\n"
    )
    monkeypatch.chdir(project)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    archives = set(Path(tempfile.gettempdir()).glob("ec2jobs-*.tar.gz"))
    code, out, err = _run(
        capsys, api_url, tenant.token, "submit", "task.yaml", "--provider", tenant.provider_id, "--secret", "HF_TOKEN"
    )
    assert code == 0, err
    assert SECRET not in out + err
    job_id = next(line.split()[2] for line in out.splitlines() if line.startswith("submitted job "))
    job = control_plane.call("GET", f"/jobs/{job_id}", tenant.token).json()
    assert job["spec"]["secrets"] == {"HF_TOKEN": "<redacted>"}
    workdir = _archive(control_plane, tenant.team_id, job["spec"]["workdir"]["upload"])
    assert sorted(workdir) == [".gitignore", "data/train.jsonl", "task.yaml", "train.py"]  # not old.ckpt
    mounts = _archive(control_plane, tenant.team_id, job["spec"]["file_mounts"]["upload"])
    assert mounts["mounts/0"] == b"a,b\n"
    assert json.loads(mounts["manifest.json"])["mounts"]["0"]["remote_path"] == "/data/labels.csv"
    assert set(Path(tempfile.gettempdir()).glob("ec2jobs-*.tar.gz")) == archives  # the archives were deleted

    # what the instance would have stored; then `ec2jobs download`
    files = {"model.bin": os.urandom(5000), "metrics/final.json": b'{"loss": 0.1}'}
    prefix = f"teams/{tenant.team_id}/jobs/{job_id}"
    s3 = control_plane.admin("s3")
    for path, data in files.items():
        s3.put_object(Bucket=control_plane.names.bucket, Key=f"{prefix}/outputs/{path}", Body=data)
    s3.put_object(Bucket=control_plane.names.bucket, Key=f"{prefix}/checkpoints/step-1.pt", Body=b"ckpt")
    code, out, err = _run(capsys, api_url, tenant.token, "download", job_id)
    assert code == 0, err
    for path, data in files.items():
        written = project / job_id / "outputs" / path
        assert hashlib.sha256(written.read_bytes()).digest() == hashlib.sha256(data).digest()
        assert f"wrote {Path(job_id) / 'outputs' / path}" in out
    target = tmp_path / "ckpts"
    code, out, err = _run(capsys, api_url, tenant.token, "download", job_id, "--checkpoints", "--to", str(target))
    assert code == 0, err
    assert (target / "step-1.pt").read_bytes() == b"ckpt"

    # --resume-from sends the earlier job; another team's token sees no such job
    (project / "plain.yaml").write_text("run: echo again\n")
    code, out, err = _run(
        capsys, api_url, tenant.token, "submit", "plain.yaml", "--provider", tenant.provider_id, "--resume-from", job_id
    )
    assert code == 0, err
    from controlplane.handlers import container

    other = container.get().teams.issue_token(f"t-other-{job_id[-6:]}")
    code, out, err = _run(capsys, api_url, other, "download", job_id, "--to", str(tmp_path / "x"))
    assert code == 1
    assert f"job '{job_id}' not found" in err
    assert not (tmp_path / "x").exists()


def test_submit_with_an_s3_mount_sends_nothing(
    tenant: Tenant, api_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "task.yaml").write_text("file_mounts: {/data: s3://my-bucket/data}\nrun: echo hi\n")
    monkeypatch.chdir(tmp_path)
    before = _jobs(tenant)
    code, _, err = _run(capsys, api_url, tenant.token, "submit", "task.yaml", "--provider", tenant.provider_id)
    assert code == 2
    assert "S3 URIs are not supported" in err
    assert _jobs(tenant) == before


def _jobs(tenant: Tenant) -> Any:
    from controlplane.handlers import container

    return [j.job_id for j in container.get().jobs.list(tenant.team_id, None, 100, None).jobs]


SKYPILOT_STYLE_TASKS = {
    # Shapes SkyPilot's example task files use: a local workdir, mounts from local files (one into the home
    # directory), a GPU, setup and run.
    "finetune.yaml": (
        "name: finetune\n"
        "resources:\n  accelerators: L4:1\n  disk_size: 256\n"
        "workdir: .\n"
        "file_mounts:\n  ~/.kaggle/kaggle.json: ./kaggle.json\n  /data: ./data\n"
        "setup: |\n  pip install -r requirements.txt\n"
        "run: |\n  python train.py --data /data\n"
    ),
    "cpu-workdir.yaml": "resources:\n  cpus: 4+\nworkdir: .\nrun: python train.py\n",
}


@pytest.mark.parametrize("name", sorted(SKYPILOT_STYLE_TASKS))
def test_skypilot_style_tasks_with_a_local_workdir_and_local_file_mounts_are_accepted(
    name: str,
    tenant: Tenant,
    api_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text('{"x": 1}\n')
    (tmp_path / "kaggle.json").write_text("{}")
    (tmp_path / "train.py").write_text("print('hi')\n")
    (tmp_path / "requirements.txt").write_text("numpy\n")
    (tmp_path / name).write_text(SKYPILOT_STYLE_TASKS[name])
    monkeypatch.chdir(tmp_path)
    code, out, err = _run(capsys, api_url, tenant.token, "submit", name, "--provider", tenant.provider_id)
    assert code == 0, err
    assert "submitted job " in out
