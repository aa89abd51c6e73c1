"""The on-instance transfer script end to end against the emulator's S3, run as a subprocess by the system python3
with -I -S (no site-packages: standard library only), as the job wrapper runs it on a plain Ubuntu AMI.

The credentials are what the relay hands an instance: an AssumeRole session (access key, secret, session token)
with the job's session policy from core/grants.py. The emulator enforces IAM, so it recomputes every request's
SigV4 signature and checks the session token, refusing a wrong one (the wrong-secret and wrong-token tests prove
those checks are on): each passing round trip is a signature S3's algorithm accepts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from controlplane.core import grants
from ec2jobs.packing import pack_directory, pack_mounts
from local import emulator

pytestmark = pytest.mark.emulator

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "lambdas" / "controlplane" / "core" / "data" / "ec2jobs_transfer.py"
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin")
TEAM = "t-transfer"
ROLE_POLICY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}


@pytest.fixture(scope="module")
def emu() -> Iterator[emulator.EmulatorInfo]:
    process = emulator.start(enforce_iam=True)
    try:
        yield process.info
    finally:
        process.stop()


@dataclass
class Bucket:
    info: emulator.EmulatorInfo
    name: str
    s3: Any
    tmp: Path
    role_arn: str

    def client(self, service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.info.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.info.access_key_id,
            aws_secret_access_key=self.info.secret_access_key,
        )

    def credentials(self, job: str = "job-1") -> dict[str, str]:
        """A job's storage session, as the control plane makes it (adapters/artifacts.py)."""
        policy = grants.session_policy(
            self.name,
            TEAM,
            job,
            read_prefixes=[grants.upload_prefix(TEAM, "up-1"), grants.job_area_prefix(TEAM, "job-0", "checkpoints")],
        )
        session = self.client("sts").assume_role(
            RoleArn=self.role_arn, RoleSessionName=job, Policy=grants.policy_text(policy), DurationSeconds=3600
        )["Credentials"]
        return {
            "access_key_id": session["AccessKeyId"],
            "secret_access_key": session["SecretAccessKey"],
            "session_token": session["SessionToken"],
            "expiration": session["Expiration"].strftime("%Y-%m-%dT%H:%M:%SZ"),
        }

    def grants(self, job: str = "job-1", name: str = "grants.json", **override: str) -> Path:
        path = self.tmp / name
        document = {
            "endpoint_url": self.info.endpoint,
            "addressing": "path",
            "region": "us-east-1",
            "bucket": self.name,
            "job_prefix": grants.job_prefix(TEAM, job),
            "credentials": self.credentials(job) | override,
        }
        path.write_text(json.dumps(document))
        path.chmod(0o600)
        return path

    def run(self, *args: str, grants: Path | None = None) -> subprocess.CompletedProcess[str]:
        assert SYSTEM_PYTHON, "no python3 in /usr/bin or /bin"
        command = [SYSTEM_PYTHON, "-I", "-S", str(SCRIPT), "--grants", str(grants or self.grants()), *args]
        environment = {"PATH": "/usr/bin:/bin", "TMPDIR": str(self.tmp), "LANG": "C.UTF-8"}
        return subprocess.run(command, capture_output=True, text=True, timeout=600, env=environment, check=False)

    def ok(self, *args: str) -> str:
        result = self.run(*args)
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        return result.stdout

    def body(self, key: str) -> bytes:
        return bytes(self.s3.get_object(Bucket=self.name, Key=key)["Body"].read())

    def keys(self, prefix: str) -> dict[str, int]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix)
        return {o["Key"][len(prefix) :]: o["Size"] for page in pages for o in page.get("Contents", [])}


@pytest.fixture
def bucket(emu: emulator.EmulatorInfo, tmp_path: Path) -> Bucket:
    made = Bucket(emu, f"artifacts-{uuid.uuid4().hex[:12]}", None, tmp_path, "")
    made.s3 = made.client("s3")
    made.s3.create_bucket(Bucket=made.name)
    iam = made.client("iam")
    admin = made.client("sts").get_caller_identity()["Arn"]
    trust = {"Effect": "Allow", "Principal": {"AWS": admin}, "Action": "sts:AssumeRole"}
    role = iam.create_role(
        RoleName=f"transfer-{uuid.uuid4().hex[:8]}",
        AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [trust]}),
        MaxSessionDuration=3600,
    )["Role"]
    iam.put_role_policy(RoleName=role["RoleName"], PolicyName="TeamObjects", PolicyDocument=json.dumps(ROLE_POLICY))
    made.role_arn = role["Arn"]
    return made


def sha256_tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_runs_with_the_system_python_alone(bucket: Bucket) -> None:
    result = bucket.run("--help")
    assert result.returncode == 0, result.stderr
    assert "sync-up" in result.stdout


def test_get_a_key_with_spaces_and_unicode(bucket: Bucket) -> None:
    key = f"teams/{TEAM}/uploads/up-1/my data ü 名前 (1)+100%~&=.bin"
    data = os.urandom(300_000)
    bucket.s3.put_object(Bucket=bucket.name, Key=key, Body=data)
    dest = bucket.tmp / "in" / "data.bin"
    assert bucket.ok("get", key, str(dest)) == f"downloaded {key} to {dest} (300000 bytes)\n"
    assert dest.read_bytes() == data


@pytest.mark.parametrize("size", [0, 5, 16 * 1024 * 1024, 40 * 1024 * 1024 + 12345])
def test_get_is_byte_exact_in_one_request_or_in_signed_ranges(bucket: Bucket, size: int) -> None:
    """Up to 16 MiB: one GET (for ranges, an empty object answers 416 and is fetched plainly); larger: ranges of
    8 MiB, several at a time, each signed with its Range and If-Match headers (the emulator checks every one)."""
    key = f"teams/{TEAM}/uploads/up-1/blob-{size}.bin"
    data = os.urandom(size)
    bucket.s3.put_object(Bucket=bucket.name, Key=key, Body=data)
    dest = bucket.tmp / "in" / "blob.bin"
    assert bucket.ok("get", key, str(dest)) == f"downloaded {key} to {dest} ({size} bytes)\n"
    assert dest.read_bytes() == data
    assert sorted(p.name for p in dest.parent.iterdir()) == ["blob.bin"]


@pytest.mark.parametrize(
    ("field", "error"),
    [("secret_access_key", "SignatureDoesNotMatch"), ("session_token", "InvalidToken")],
)
def test_wrong_credentials_are_refused_and_reported_without_secrets(bucket: Bucket, field: str, error: str) -> None:
    key = f"teams/{TEAM}/uploads/up-1/x"
    bucket.s3.put_object(Bucket=bucket.name, Key=key, Body=b"x")
    wrong = "wrong-value-0000000000000000000000000000"
    grants_file = bucket.grants(name="wrong.json", **{field: wrong})
    credentials = json.loads(grants_file.read_text())["credentials"]
    result = bucket.run("get", key, str(bucket.tmp / "x"), grants=grants_file)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert error in result.stderr
    for secret in (*credentials.values(), "Signature=", "?"):
        assert secret not in result.stderr or secret == credentials["expiration"]
    assert not (bucket.tmp / "x").exists()


def test_a_missing_key_fails_with_one_line(bucket: Bucket) -> None:
    result = bucket.run("get", f"teams/{TEAM}/uploads/up-1/none.tar.gz", str(bucket.tmp / "x"))
    assert result.returncode == 1
    assert result.stderr == (
        f"ec2jobs_transfer: get failed: download teams/{TEAM}/uploads/up-1/none.tar.gz: HTTP 404 NoSuchKey: "
        "The specified key does not exist.\n"
    )


def test_extract_a_packed_workdir(bucket: Bucket) -> None:
    source = bucket.tmp / "workdir"
    (source / "src").mkdir(parents=True)
    (source / "src" / "train.py").write_text("print('train')\n")
    (source / "run.sh").write_text("#!/bin/sh\n")
    (source / "run.sh").chmod(0o755)
    (source / "latest").symlink_to("src/train.py")
    key = f"teams/{TEAM}/uploads/up-1/workdir.tar.gz"
    with pack_directory(source) as packed:
        bucket.s3.upload_file(str(packed.path), bucket.name, key)
    dest = bucket.tmp / "workspace"
    assert bucket.ok("extract", key, str(dest)) == f"extracted 3 files into {dest}\n"
    assert sha256_tree(dest) == sha256_tree(source)
    assert os.readlink(dest / "latest") == "src/train.py"
    assert (dest / "run.sh").stat().st_mode & 0o777 == 0o755
    assert sorted(p.name for p in bucket.tmp.iterdir() if p.name.startswith("ec2jobs-transfer-")) == []


def test_mounts_are_placed_under_root(bucket: Bucket) -> None:
    data = bucket.tmp / "local-data"
    (data / "nested").mkdir(parents=True)
    (data / "nested" / "a.csv").write_text("a,b\n")
    config = bucket.tmp / "config.yaml"
    config.write_text("lr: 0.1\n")
    key = f"teams/{TEAM}/uploads/up-1/mounts.tar.gz"
    with pack_mounts({"/data/train": data, "/home/ubuntu/config.yaml": config}) as packed:
        bucket.s3.upload_file(str(packed.path), bucket.name, key)
    root = bucket.tmp / "instance-root"
    assert bucket.ok("mounts", key, str(root)).splitlines() == [
        f"placed {root}/data/train (dir, 1 files)",
        f"placed {root}/home/ubuntu/config.yaml (file)",
    ]
    assert (root / "data" / "train" / "nested" / "a.csv").read_text() == "a,b\n"
    assert (root / "home" / "ubuntu" / "config.yaml").read_text() == "lr: 0.1\n"


def write_sparse(path: Path, size: int, marks: dict[int, bytes]) -> None:
    """A file of `size` bytes that is mostly a hole (fast to make; reads as zeros) with a few marked spots."""
    with path.open("wb") as handle:
        handle.truncate(size)
        for offset, data in marks.items():
            handle.seek(offset)
            handle.write(data)


def test_sync_up_then_sync_down_round_trip(bucket: Bucket) -> None:
    job = bucket.tmp / "job"
    outputs = job / "outputs"
    (outputs / "metrics").mkdir(parents=True)
    (outputs / "metrics" / "loss.csv").write_text("step,loss\n1,0.9\n")
    (outputs / "notes ü.txt").write_text("unicode name\n")
    (outputs / "small.bin").write_bytes(os.urandom(1000))
    mib = 1024 * 1024
    big_size = 70 * mib  # multipart: 8 MiB parts (the last 6 MiB), several at a time; sync-down in ranges
    write_sparse(
        outputs / "model.pt",
        big_size,
        {0: b"head", 64 * mib - 2: b"span", 69 * mib: os.urandom(4096), big_size - 4: b"tail"},
    )
    prefix = f"teams/{TEAM}/jobs/job-1/outputs/"

    first = bucket.ok("sync-up", str(outputs), "outputs")
    assert first == f"uploaded 4 files, {big_size + 1000 + 13 + 16} bytes; 0 unchanged\n"
    assert bucket.keys(prefix) == {
        "metrics/loss.csv": 16,
        "model.pt": big_size,
        "notes ü.txt": 13,
        "small.bin": 1000,
    }
    assert hashlib.sha256(bucket.body(prefix + "model.pt")).hexdigest() == sha256_tree(outputs)["model.pt"]
    state = job / ".ec2jobs-sync-outputs.json"
    assert sorted(json.loads(state.read_text())["files"]) == [
        "metrics/loss.csv",
        "model.pt",
        "notes ü.txt",
        "small.bin",
    ]
    uploads = bucket.s3.list_multipart_uploads(Bucket=bucket.name).get("Uploads", [])
    assert uploads == []  # completed, none left behind

    (outputs / "metrics" / "loss.csv").write_text("step,loss\n1,0.9\n2,0.7\n")
    second = bucket.ok("sync-up", str(outputs), "outputs")
    assert second == "uploaded 1 files, 22 bytes; 3 unchanged\n"
    assert bucket.body(prefix + "metrics/loss.csv") == b"step,loss\n1,0.9\n2,0.7\n"

    restored = bucket.tmp / "restored" / "outputs"
    assert (
        bucket.ok("sync-down", "outputs", str(restored)) == f"downloaded 4 files, {big_size + 1000 + 13 + 22} bytes\n"
    )
    assert sha256_tree(restored) == sha256_tree(outputs)


def test_sync_down_of_own_checkpoints_is_not_sent_back(bucket: Bucket) -> None:
    prefix = f"teams/{TEAM}/jobs/job-1/checkpoints/"
    bucket.s3.put_object(Bucket=bucket.name, Key=prefix + "step-100/model.pt", Body=b"weights")
    bucket.s3.put_object(Bucket=bucket.name, Key=prefix + "latest", Body=b"step-100")
    checkpoints = bucket.tmp / "job" / "checkpoints"
    assert bucket.ok("sync-down", "checkpoints", str(checkpoints)) == "downloaded 2 files, 15 bytes\n"
    assert (checkpoints / "step-100" / "model.pt").read_bytes() == b"weights"
    assert bucket.ok("sync-up", str(checkpoints), "checkpoints") == "uploaded 0 files, 0 bytes; 2 unchanged\n"


def test_sync_down_from_a_previous_job(bucket: Bucket) -> None:
    old = f"teams/{TEAM}/jobs/job-0/checkpoints/"
    for name in ("model.pt", "optimizer.pt", "step/latest"):
        bucket.s3.put_object(Bucket=bucket.name, Key=old + name, Body=name.encode())
    bucket.s3.put_object(Bucket=bucket.name, Key=f"teams/{TEAM}/jobs/job-0/outputs/other", Body=b"not this")
    checkpoints = bucket.tmp / "ck"
    assert bucket.ok("sync-down", "checkpoints", str(checkpoints), "--from-prefix", old) == (
        "downloaded 3 files, 31 bytes\n"
    )
    assert sha256_tree(checkpoints) == {
        name: hashlib.sha256(name.encode()).hexdigest() for name in ("model.pt", "optimizer.pt", "step/latest")
    }
    # restored from another job: this job's first sync-up sends them to its own prefix
    assert bucket.ok("sync-up", str(checkpoints), "checkpoints") == "uploaded 3 files, 31 bytes; 0 unchanged\n"
    assert sorted(bucket.keys(f"teams/{TEAM}/jobs/job-1/checkpoints/")) == ["model.pt", "optimizer.pt", "step/latest"]


def test_sync_down_follows_continuation_tokens(bucket: Bucket) -> None:
    prefix = f"teams/{TEAM}/jobs/job-1/checkpoints/"
    with ThreadPoolExecutor(8) as pool:  # one more than a ListObjectsV2 page holds (1,000 keys)
        list(
            pool.map(
                lambda i: bucket.s3.put_object(Bucket=bucket.name, Key=f"{prefix}s/{i:04d}", Body=b""), range(1001)
            )
        )
    checkpoints = bucket.tmp / "ck"
    assert bucket.ok("sync-down", "checkpoints", str(checkpoints)) == "downloaded 1001 files, 0 bytes\n"
    assert len(list((checkpoints / "s").iterdir())) == 1001


def test_sync_down_refuses_a_key_that_climbs(bucket: Bucket) -> None:
    prefix = f"teams/{TEAM}/jobs/job-1/checkpoints/"
    bucket.s3.put_object(Bucket=bucket.name, Key=prefix + "a/../../../escape", Body=b"x")
    result = bucket.run("sync-down", "checkpoints", str(bucket.tmp / "ck"))
    assert result.returncode == 1
    assert "refusing to download" in result.stderr
    assert not (bucket.tmp / "escape").exists()
