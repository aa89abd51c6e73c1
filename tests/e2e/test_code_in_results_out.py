"""Issue 15 end to end on the local runtime (moto S3, real sshd, the real wrapper and relay): a task with a packed
workdir (a training script and a data file), a file mount and a secret runs; it writes a model to its outputs and
checkpoints every step; the model downloads byte-identical; a second job resumes from the first one's last
checkpoint; another team can neither list nor download them, nor use the first team's upload; the instance's grant
cannot write outside its job's prefix."""

from __future__ import annotations

import hashlib
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from ec2jobs import packing, transfer
from tests.e2e.harness import NEEDS_SANDBOXES, Local, forget_process_state, instances_of, start_local

pytestmark = NEEDS_SANDBOXES

TRAIN = """\
import hashlib, os, pathlib, sys
root = os.environ.get("EC2JOBS_ROOT", "")
data = pathlib.Path("data.txt").read_bytes()
mount = pathlib.Path(root + "/data/train.jsonl").read_bytes()
assert os.environ["HF_TOKEN"].startswith("hf_"), "the secret is missing"
ckpt = pathlib.Path(os.environ["EC2JOBS_CHECKPOINT_DIR"])
out = pathlib.Path(os.environ["EC2JOBS_OUTPUT_DIR"])
done = sorted(int(p.stem.split("-")[1]) for p in ckpt.glob("step-*.ckpt"))
start = done[-1] + 1 if done else 1
print(f"resuming after step {done[-1]}" if done else "starting fresh", flush=True)
state = hashlib.sha256(data + mount).digest()
for step in range(1, start):
    state = hashlib.sha256(state).digest()
for step in range(start, start + 3):
    state = hashlib.sha256(state).digest()
    (ckpt / f"step-{step}.ckpt").write_bytes(state * 1000)
    print(f"step {step}", flush=True)
(out / "model.bin").write_bytes(state * 50_000)
print("saved model", flush=True)
"""


def expected_model(data: bytes, mount: bytes, steps: int) -> bytes:
    state = hashlib.sha256(data + mount).digest()
    for _ in range(steps):
        state = hashlib.sha256(state).digest()
    return state * 50_000


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Local, Path]]:
    workdir = tmp_path_factory.mktemp("ec2jobs-artifacts")
    plane, saved = start_local(workdir, "e2e-artifacts")
    try:
        yield plane, workdir
    finally:
        plane.plane.stop()
        forget_process_state(saved)


def upload(client: Local, kind: str, archive: packing.PackedArchive) -> str:
    status, body = client.call("POST", "/uploads", {"kind": kind, "size": archive.size, "sha256": archive.sha256})
    assert status == 201, body
    etags = transfer.upload(body["parts"], archive.path, body["part_size"]) if body["parts"] else []
    status, done = client.call("POST", f"/uploads/{body['upload_id']}/complete", {"parts": etags})
    assert status == 200, done
    return str(body["upload_id"])


def outputs(client: Local, job_id: str, kind: str) -> dict[str, Any]:
    status, body = client.call("GET", f"/jobs/{job_id}/outputs?kind={kind}")
    assert status == 200, body
    return {f["path"]: f for f in body["files"]}


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - loopback emulator URL
        return bytes(response.read())


def test_code_in_results_out(local: tuple[Local, Path], tmp_path: Path) -> None:
    client, plane_dir = local
    project = tmp_path / "project"
    project.mkdir()
    (project / "train.py").write_text(TRAIN)
    (project / "data.txt").write_bytes(b"the training data\n" * 100)
    (project / ".gitignore").write_text("*.log\n")
    (project / "noise.log").write_text("ignored")
    mounted = tmp_path / "train.jsonl"
    mounted.write_bytes(b'{"text": "hello"}\n' * 50)

    config = tmp_path / "app.json"
    config.write_text('{"lr": 0.1}')
    mount_map = {"/data/train.jsonl": str(mounted), "~/.config/app.json": str(config)}
    with packing.pack_directory(project) as workdir, packing.pack_mounts(mount_map) as mounts:
        workdir_upload = upload(client, "workdir", workdir)
        mounts_upload = upload(client, "file_mounts", mounts)
    task = {
        "provider_id": client.provider_id,
        "workdir": {"upload": workdir_upload},
        "file_mounts": {"upload": mounts_upload},
        "secrets": {"HF_TOKEN": "hf_e2e_secret_value"},
        "setup": "test ! -e noise.log && grep -q lr ~/.config/app.json && echo 'workdir ok'",
        "run": "python3 train.py",
    }
    status, body = client.call("POST", "/jobs", task)
    assert status == 202, body
    first = body["job_id"]
    job = client.wait(first, timeout=180)
    text, complete = client.logs(first)
    assert job["status"] == "SUCCEEDED", (job, text)
    assert complete
    assert text == "workdir ok\nstarting fresh\nstep 1\nstep 2\nstep 3\nsaved model\n"
    assert job.get("upload_failures", []) == []

    model = outputs(client, first, "outputs")
    assert list(model) == ["model.bin"]
    want = expected_model((project / "data.txt").read_bytes(), mounted.read_bytes(), 3)
    got = fetch(model["model.bin"]["url"])
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(want).hexdigest()
    assert sorted(outputs(client, first, "checkpoints")) == ["step-1.ckpt", "step-2.ckpt", "step-3.ckpt"]

    # A second job resumes from the first one's checkpoints.
    status, body = client.call("POST", "/jobs", task | {"resume_from": first})
    assert status == 202, body
    second = body["job_id"]
    job = client.wait(second, timeout=180)
    text, _ = client.logs(second)
    assert job["status"] == "SUCCEEDED", (job, text)
    assert text.splitlines()[1:5] == ["resuming after step 3", "step 4", "step 5", "step 6"]
    want = expected_model((project / "data.txt").read_bytes(), mounted.read_bytes(), 6)
    assert fetch(outputs(client, second, "outputs")["model.bin"]["url"]) == want

    # Another team sees none of it and cannot use the first team's upload.
    other = client.plane.issue_token("e2e-artifacts-other")
    stranger = Local(client.plane, client.provider_id, client.queue_url, token=other)
    assert stranger.call("GET", f"/jobs/{first}/outputs?kind=outputs")[0] == 404
    assert stranger.call("POST", f"/uploads/{workdir_upload}/complete", {"parts": []})[0] == 404

    # The instance's grant (left on its sandbox's disk) writes only under its own job.
    (instance,) = instances_of(first)
    grants_file = (plane_dir / "instances" / instance["InstanceId"]).resolve() / "var/lib/ec2jobs/relay/grants.json"
    grants = json.loads(grants_file.read_text())
    creds = grants["credentials"]
    s3 = boto3.client(
        "s3",
        endpoint_url=grants["endpoint_url"],
        aws_access_key_id=creds["access_key_id"],
        aws_secret_access_key=creds["secret_access_key"],
        aws_session_token=creds["session_token"],
        config=Config(s3={"addressing_style": "path"}),
    )
    s3.put_object(Bucket=grants["bucket"], Key=grants["job_prefix"] + "outputs/extra.txt", Body=b"mine")
    for key in (
        grants["job_prefix"].replace(first, second) + "outputs/forged.txt",
        "teams/e2e-artifacts-other/jobs/x/outputs/forged.txt",
        "forged.txt",
    ):
        with pytest.raises(ClientError) as denied:
            s3.put_object(Bucket=grants["bucket"], Key=key, Body=b"forged")
        assert denied.value.response["Error"]["Code"] == "AccessDenied", key


def test_a_megabyte_run_reaches_the_instance(local: tuple[Local, Path]) -> None:
    """setup + run over the job record's room (here 1.2 MB) are kept in the artifacts bucket and handed over in the
    start bundle; the API shows a placeholder naming their size."""
    client, _ = local
    padding = "".join(f"# line {i:07d} of a long generated script\n" for i in range(30_000))
    run = f': <<\'PAD\'\n{padding}PAD\necho "ran $(wc -c <"$0") bytes"\n'
    status, body = client.call("POST", "/jobs", {"provider_id": client.provider_id, "run": run})
    assert status == 202, body
    job = client.wait(body["job_id"], timeout=180)
    text, _ = client.logs(body["job_id"])
    assert job["status"] == "SUCCEEDED", (job, text)
    assert text == f"ran {len(run.encode())} bytes\n"
    assert job["spec"]["run"].startswith(f"# ec2jobs: this job's run ({len(run.encode()):,} bytes")
