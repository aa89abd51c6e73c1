"""Code in, results out (issue 15): a job's bytes through ec2jobs against boto3 on the same emulator, and what a
workdir adds to the time from submit to a job's first line. On the embedded control plane (bench/plane.py): its API,
its artifacts bucket (`<prefix>-artifacts`, local/resources.py) and its instance-transfer role.

- Client side: a file of incompressible bytes uploaded as the CLI uploads a workdir (`POST /uploads`,
  ec2jobs.transfer.upload with 4 parts in flight, `POST /uploads/{id}/complete`) against boto3's `upload_file`
  (TransferConfig defaults: 8 MB parts, 10 threads) of the same file to the same bucket; downloaded as
  `ec2jobs download` does (`GET /jobs/{id}/outputs`, ec2jobs.transfer.download of the presigned URL) against
  boto3's `download_file`. Both sides sign with the control plane's local key.
- Instance side: lambdas/controlplane/core/data/ec2jobs_transfer.py run as the job wrapper runs it, a subprocess of
  the system python3 (standard library only), with the grants file the relay writes (service/job_io.py: an
  AssumeRole session scoped to one job, which the emulator evaluates on every request); `sync-up` against boto3's
  `upload_file` with the same credentials, `get` and `sync-down` against `download_file`.
- First line: a job printing a timestamped first line, submitted once without a workdir and once with a packed
  workdir of incompressible files, each timed from the moment the CLI would start (pack_directory → POST /uploads
  → transfer.upload → complete → POST /jobs; or POST /jobs alone) until the line is visible via
  `GET /jobs/{id}/logs`.

Rounds alternate which side goes first; each rate is the median of its rounds, each ratio the ratio of medians.
The emulator's request recorder is off while bytes move (it would log every body).

    python -m bench.artifacts [--megabytes 200] [--workdir-megabytes 100] [--rounds 3] [--first-line-samples 5]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from bench.awsops import BASELINE_CONFIG, OBSERVER_CONFIG
from bench.plane import Session
from bench.relay import FIRST_LINE_JOB
from bench.report import Figure
from controlplane import config
from controlplane.adapters.artifacts import ArtifactStore
from controlplane.adapters.dynamodb import DynamoJobStore
from controlplane.core import grants
from controlplane.core.data import ec2jobs_transfer
from controlplane.service.job_io import ArtifactSettings, InstanceGrants
from ec2jobs import packing, transfer

SECTION = "6 code in, results out"
TARGET_RATIO = 0.8
MB = 1_000_000
MIB = 1024 * 1024
SCRIPT = Path(ec2jobs_transfer.__file__)
PAYLOAD = "payload.bin"
WORKDIR_FILES = 4
LIMITS = (
    "not covered: the network. A loopback emulator has no latency, no bandwidth limit, no TLS and no per-connection "
    "throughput cap, and moto's S3 (one Python process on 2 shared cores, which also checks every role session's "
    "request against its policies) sets the pace of both sides; so this compares how the clients fare on top of "
    "moto, not what either reaches against S3, where parallel connections matter far more"
)
RANGES = (
    "boto3 fetches an object over 8 MB as 8 MB ranged GETs, 10 at a time; moto answers each range by copying the "
    "whole object and slicing it, so for a large object this figure is moto's cost of ranges, not boto3's (on S3, "
    "parallel ranges are how boto3 beats one stream); the one-stream row below is the like-for-like baseline"
)


# -- helpers (bench/cost.py uses them too) ----------------------------------------------------------------------


def system_python() -> str:
    """The python3 a plain AMI has (the job wrapper runs the transfer tool with it)."""
    found = shutil.which("python3", path="/usr/bin:/bin")
    if not found:
        raise RuntimeError("no python3 in /usr/bin or /bin (the instance side runs the system python3)")
    return found


def incompressible(path: Path, size: int) -> Path:
    """A file of `size` random bytes."""
    with path.open("wb") as out:
        left = size
        while left > 0:
            chunk = os.urandom(min(left, MIB))
            out.write(chunk)
            left -= len(chunk)
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


def upload_through_api(session: Session, path: Path, size: int, sha256: str, kind: str = "workdir") -> dict[str, Any]:
    """What the CLI does for a workdir: POST /uploads, the parts PUT (4 at a time), complete. The create answer."""
    status, body = session.call("POST", "/uploads", {"kind": kind, "size": size, "sha256": sha256})
    if status != 201:
        raise RuntimeError(f"POST /uploads answered {status}: {body}")
    parts = transfer.upload(body["parts"], path, int(body["part_size"]))
    status, done = session.call("POST", f"/uploads/{body['upload_id']}/complete", {"parts": parts})
    if status != 200:
        raise RuntimeError(f"POST /uploads/{body['upload_id']}/complete answered {status}: {done}")
    return dict(body)


def submit(session: Session, task: dict[str, Any]) -> str:
    status, body = session.call("POST", "/jobs", task)
    if status != 202:
        raise RuntimeError(f"POST /jobs answered {status}: {body}")
    return str(body["job_id"])


def issue_grants(session: Session, job_id: str, path: Path) -> dict[str, Any]:
    """The grants file the relay hands the job's instance (service/job_io.py InstanceGrants, the control plane's
    own settings: AssumeRole of the instance-transfer role with the job's session policy)."""
    settings = config.get()
    artifact_settings = ArtifactSettings(
        bucket=settings.artifact_bucket,
        role_arn=settings.instance_transfer_role_arn,
        region=settings.region,
        endpoint_url=settings.endpoint_url or "",
    )
    store = ArtifactStore(session.client("s3"), settings.artifact_bucket)
    job = _jobs(session).get(job_id)
    if job is None:
        raise RuntimeError(f"job {job_id} not found")
    document = InstanceGrants(store, session.client("sts"), artifact_settings).issue(job)
    path.write_bytes(document)
    path.chmod(0o600)
    return dict(json.loads(document))


class Tool:
    """ec2jobs_transfer.py as the job wrapper runs it: `python3 ec2jobs_transfer.py --grants FILE ...`."""

    def __init__(self, grants_file: Path, tmp: Path) -> None:
        self.command = [system_python(), "-I", "-S", str(SCRIPT), "--grants", str(grants_file)]
        self.env = {"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp), "LANG": "C.UTF-8"}

    def __call__(self, *args: str) -> str:
        result = subprocess.run(  # noqa: S603 - our own script, fixed arguments
            [*self.command, *args], capture_output=True, text=True, timeout=1800, env=self.env, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"ec2jobs_transfer {args[0]} failed: {result.stderr.strip()}")
        return result.stdout


def baseline_s3(endpoint: str, credentials: dict[str, str] | None = None) -> Any:
    """boto3's S3 client as a user would make it (path-style on the loopback endpoint), tagged as the benchmark's."""
    keys: dict[str, str] = {}
    if credentials is not None:
        keys = {
            "aws_access_key_id": credentials["access_key_id"],
            "aws_secret_access_key": credentials["secret_access_key"],
            "aws_session_token": credentials["session_token"],
        }
    client_config = BASELINE_CONFIG.merge(Config(s3={"addressing_style": "path"}))
    return boto3.client("s3", endpoint_url=endpoint, region_name=config.get().region, config=client_config, **keys)


@dataclass
class FirstLine:
    """When a job's first line was seen (perf_counter and wall clock), and every address the relay recorded for
    its instance meanwhile."""

    perf: float
    wall: float
    addresses: set[str] = field(default_factory=set)


def wait_first_line(session: Session, job_id: str, timeout: float = 300.0) -> FirstLine:
    """Poll GET /jobs/{id}/logs every 20 ms until a line starting `t=` is there (and the job record every 10th time,
    for the address its relay recorded)."""
    end = time.monotonic() + timeout
    cursor, text = "", ""
    addresses: set[str] = set()
    polls = 0
    while time.monotonic() < end:
        status, page = session.call("GET", f"/jobs/{job_id}/logs?after={cursor}")
        seen, wall = time.perf_counter(), time.time()
        if status != 200:
            raise RuntimeError(f"GET /jobs/{job_id}/logs answered {status}: {page}")
        if polls % 10 == 0 or page["text"]:
            address = session.job(job_id).get("instance_address", {}).get("S")
            addresses |= {address} if address else set()
        polls += 1
        text += page["text"]
        if any(line.startswith("t=") for line in text.splitlines()):
            return FirstLine(seen, wall, addresses)
        if page["complete"]:
            raise RuntimeError(f"job {job_id} ended without its first line: {text[-300:]!r}")
        cursor = page["next_cursor"]
        time.sleep(0.02)
    raise TimeoutError(f"job {job_id}: no first line within {timeout:.0f} s")


def _timed(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


# -- throughput -------------------------------------------------------------------------------------------------


class Transfers:
    """One round's measurements; each method returns seconds for `size` bytes."""

    def __init__(self, session: Session, job_id: str, source: Path, tmp: Path) -> None:
        self.session = session
        self.job_id = job_id
        self.source = source
        self.size = source.stat().st_size
        self.sha256 = sha256_file(source)
        self.tmp = tmp
        settings = config.get()
        self.bucket = settings.artifact_bucket
        self.endpoint = session.plane.endpoint
        document = issue_grants(session, job_id, tmp / "grants.json")
        self.job_prefix = str(document["job_prefix"])
        self.team_id = self.job_prefix.split("/")[1]
        self.tool = Tool(tmp / "grants.json", tmp)
        self.admin = baseline_s3(self.endpoint)  # the control plane's local key, as the API signs with
        self.scoped = baseline_s3(self.endpoint, document["credentials"])  # the instance's session
        self.up_dir = tmp / "outputs"
        self.up_dir.mkdir()
        os.link(source, self.up_dir / PAYLOAD)
        self.output_key = f"{self.job_prefix}outputs/{PAYLOAD}"
        self.uploads: list[dict[str, Any]] = []
        for client in (self.admin, self.scoped):  # connections and the service model, before anything is timed
            client.list_objects_v2(Bucket=self.bucket, Prefix=self.job_prefix, MaxKeys=1)

    def client_upload_ec2jobs(self) -> float:
        created: dict[str, Any] = {}
        seconds = _timed(lambda: created.update(upload_through_api(self.session, self.source, self.size, self.sha256)))
        self.uploads.append({"part_size": created["part_size"], "parts": len(created["parts"])})
        self.admin.delete_object(Bucket=self.bucket, Key=grants.upload_key(self.team_id, created["upload_id"]))
        return seconds

    def client_upload_boto3(self) -> float:
        key = f"bench/boto3/{PAYLOAD}"
        seconds = _timed(lambda: self.admin.upload_file(str(self.source), self.bucket, key))
        self.admin.delete_object(Bucket=self.bucket, Key=key)
        return seconds

    def instance_upload_ec2jobs(self) -> float:
        state = self.tmp / "sync-state.json"
        state.unlink(missing_ok=True)  # everything is new: the whole file is sent
        seconds = _timed(lambda: self.tool("sync-up", str(self.up_dir), "outputs", "--state", str(state)))
        head = self.admin.head_object(Bucket=self.bucket, Key=self.output_key)
        if head["ContentLength"] != self.size:
            raise RuntimeError(f"sync-up stored {head['ContentLength']} bytes, not {self.size}")
        return seconds

    def instance_upload_boto3(self) -> float:
        key = f"{self.job_prefix}checkpoints/{PAYLOAD}"
        return _timed(lambda: self.scoped.upload_file(str(self.source), self.bucket, key))

    def client_download_ec2jobs(self, dest: Path) -> float:
        def work() -> None:
            status, page = self.session.call("GET", f"/jobs/{self.job_id}/outputs?kind=outputs")
            if status != 200:
                raise RuntimeError(f"GET /jobs/{self.job_id}/outputs answered {status}: {page}")
            (listed,) = [f for f in page["files"] if f["path"] == PAYLOAD]
            transfer.download(listed["url"], dest, int(listed["size"]))

        return _timed(work)

    def client_download_boto3(self, dest: Path) -> float:
        return _timed(lambda: self.admin.download_file(self.bucket, self.output_key, str(dest)))

    def client_download_boto3_stream(self, dest: Path) -> float:
        return _timed(lambda: _stream_object(self.admin, self.bucket, self.output_key, dest))

    def instance_get(self, dest: Path) -> float:
        return _timed(lambda: self.tool("get", self.output_key, str(dest)))

    def instance_sync_down(self, dest: Path) -> float:
        state = self.tmp / "sync-down-state.json"
        state.unlink(missing_ok=True)
        seconds = _timed(lambda: self.tool("sync-down", "outputs", str(dest.parent), "--state", str(state)))
        return seconds

    def instance_download_boto3(self, dest: Path) -> float:
        return _timed(lambda: self.scoped.download_file(self.bucket, self.output_key, str(dest)))

    def instance_download_boto3_stream(self, dest: Path) -> float:
        return _timed(lambda: _stream_object(self.scoped, self.bucket, self.output_key, dest))

    def check(self, path: Path, what: str, verify: bool) -> None:
        """The downloaded file has the source's size (and, when `verify`, its sha256); then it is removed."""
        try:
            if path.stat().st_size != self.size:
                raise RuntimeError(f"{what}: downloaded {path.stat().st_size} bytes, not {self.size}")
            if verify and sha256_file(path) != self.sha256:
                raise RuntimeError(f"{what}: the downloaded bytes differ from the source")
        finally:
            path.unlink(missing_ok=True)


def _stream_object(client: Any, bucket: str, key: str, dest: Path) -> None:
    """boto3's GetObject read as one stream into a file (one GET, as ec2jobs' downloads of small objects make)."""
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    with dest.open("wb") as out:
        shutil.copyfileobj(body, out, MIB)


METHODS = {
    "client_upload": ("client_upload_ec2jobs", "client_upload_boto3"),
    "instance_upload": ("instance_upload_ec2jobs", "instance_upload_boto3"),
    "client_download": ("client_download_ec2jobs", "client_download_boto3", "client_download_boto3_stream"),
    "instance_download": (
        "instance_get",
        "instance_sync_down",
        "instance_download_boto3",
        "instance_download_boto3_stream",
    ),
}


def _round(transfers: Transfers, index: int, seconds: dict[str, list[float]]) -> None:
    """Every measurement once; uploads first (the downloads read what sync-up stored). The order within each group
    turns by one every round."""
    for group, names in METHODS.items():
        turn = index % len(names)
        for name in names[turn:] + names[:turn]:
            method = getattr(transfers, name)
            if group.endswith("download"):
                dest = transfers.tmp / f"down-{name}" / PAYLOAD
                dest.parent.mkdir(exist_ok=True)
                seconds[name].append(method(dest))
                transfers.check(dest, name, verify=index == 0)
            else:
                seconds[name].append(method())


def throughput(session: Session, job_id: str, megabytes: int, rounds: int, tmp: Path) -> dict[str, Any]:
    source = incompressible(tmp / "source.bin", megabytes * MB)
    transfers = Transfers(session, job_id, source, tmp)
    seconds: dict[str, list[float]] = {name: [] for names in METHODS.values() for name in names}
    for index in range(rounds):
        _round(transfers, index, seconds)
    rates = {name: [round(transfers.size / s / MB, 2) for s in samples] for name, samples in seconds.items()}
    return {
        "bytes": transfers.size,
        "rounds": rounds,
        "seconds": {name: [round(s, 3) for s in samples] for name, samples in seconds.items()},
        "mb_per_second": rates,
        "median_mb_per_second": {name: statistics.median(samples) for name, samples in rates.items()},
        "api_upload": transfers.uploads[0] if transfers.uploads else {},
        "tool_part_bytes": ec2jobs_transfer.multipart_part_size(transfers.size),
        "tool_multipart": transfers.size > ec2jobs_transfer.MULTIPART_THRESHOLD,
    }


# -- submit → first line ----------------------------------------------------------------------------------------


def first_line(session: Session, provider_id: str, workdir_megabytes: int, samples: int, tmp: Path) -> dict[str, Any]:
    """`samples` jobs without a workdir and as many with a packed workdir of incompressible files, alternating
    (module doc). Each sample records whether the relay's first invocation failed and Step Functions retried it."""
    project = tmp / "project"
    project.mkdir()
    for index, size in enumerate(_split(workdir_megabytes * MB, WORKDIR_FILES)):
        incompressible(project / f"data-{index}.bin", size)
    runs: dict[str, list[dict[str, Any]]] = {"plain": [], "workdir": []}
    for index in range(samples):
        kinds = ("plain", "workdir") if index % 2 == 0 else ("workdir", "plain")
        for kind in kinds:
            runs[kind].append(_first_line_once(session, provider_id, project if kind == "workdir" else None))
    return {"workdir_bytes": workdir_megabytes * MB, "samples": runs} | first_line_summary(runs)


def _first_line_once(session: Session, provider_id: str, project: Path | None) -> dict[str, Any]:
    """One job, timed from the moment the CLI would start until its first line is visible; also from the moment its
    relay connected (RUNNING: the start bundle follows at once) until then, which leaves out everything before."""
    task: dict[str, Any] = {"name": "bench-first-line", "run": FIRST_LINE_JOB, "provider_id": provider_id}
    sample: dict[str, Any] = {}
    started = time.perf_counter()
    if project is not None:
        with packing.pack_directory(project) as archive:
            packed = time.perf_counter()
            created = upload_through_api(session, archive.path, archive.size, archive.sha256)
            sample |= {"archive_bytes": archive.size, "parts": len(created["parts"])}
        uploaded = time.perf_counter()
        sample |= {"pack_seconds": round(packed - started, 3), "upload_seconds": round(uploaded - packed, 3)}
        task["workdir"] = {"upload": created["upload_id"]}
    submitted = time.perf_counter()
    job_id = submit(session, task)
    seen = wait_first_line(session, job_id)
    item = session.wait_done(job_id)
    if item.get("status", {}).get("S") != "SUCCEEDED":
        raise RuntimeError(f"job {job_id} ended {item.get('status', {}).get('S')}")
    job = _jobs(session).get(job_id)
    running = job.started_at.timestamp() if job is not None and job.started_at is not None else float("nan")
    history = session.history(item["execution_arn"]["S"])
    return sample | {
        "job_id": job_id,
        "seconds": round(seen.perf - started, 3),
        "after_submit_seconds": round(seen.perf - submitted, 3),
        "running_to_line_seconds": round(seen.wall - running, 3),
        "addresses": sorted(seen.addresses),
        "raced": relay_retried(history) or any(not transfer.is_loopback(a) for a in seen.addresses),
    }


def relay_retried(history: list[dict[str, Any]]) -> bool:
    """Whether an invocation of the relay step failed (Step Functions retries it 10 s later)."""
    current = ""
    for event in history:
        if event["type"] == "LambdaFunctionScheduled":
            current = event["lambdaFunctionScheduledEventDetails"]["resource"].rsplit(":", 1)[-1]
        elif event["type"] in {"LambdaFunctionFailed", "LambdaFunctionTimedOut"} and current.endswith("relay"):
            return True
    return False


def _jobs(session: Session) -> DynamoJobStore:
    return DynamoJobStore(boto3.resource("dynamodb", config=OBSERVER_CONFIG).Table(session.table_name("jobs")))


def first_line_summary(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians per kind: over the samples the local simulator's race left alone when both kinds have one, else
    over all. The race: the relay read the instance's address before the instance simulator gave it its loopback
    one, so its first connection went to an unreachable address (about 10 s lost before the retry). The workdir's
    own share needs no such choice: pack + upload, plus the difference of the medians from the relay's connection
    (RUNNING, the start bundle follows at once) to the first line, which comes after the race."""
    clean = {kind: [s for s in samples if not s["raced"]] for kind, samples in runs.items()}
    use_clean = all(clean.values())
    chosen = clean if use_clean else runs
    median = {kind: statistics.median(s["seconds"] for s in samples) for kind, samples in chosen.items()}
    on_instance = {kind: statistics.median(s["running_to_line_seconds"] for s in runs[kind]) for kind in runs}
    workdir = runs["workdir"]
    pack = statistics.median(s["pack_seconds"] for s in workdir)
    upload = statistics.median(s["upload_seconds"] for s in workdir)
    return {
        "over": "samples without the race" if use_clean else "all samples",
        "raced": {kind: sum(s["raced"] for s in samples) for kind, samples in runs.items()},
        "no_workdir_seconds": median["plain"],
        "workdir_seconds": median["workdir"],
        "pack_seconds": pack,
        "upload_seconds": upload,
        "running_to_line_seconds": on_instance,
        "workdir_share_seconds": pack + upload + on_instance["workdir"] - on_instance["plain"],
        "archive_bytes": workdir[0]["archive_bytes"],
        "upload_parts": workdir[0]["parts"],
    }


def _split(total: int, files: int) -> list[int]:
    return [total // files + (1 if index < total % files else 0) for index in range(files)]


# -- the section ------------------------------------------------------------------------------------------------


def run(
    session: Session,
    provider_id: str,
    megabytes: int = 200,
    workdir_megabytes: int = 100,
    rounds: int = 3,
    first_line_samples: int = 3,
) -> tuple[list[Figure], dict[str, Any]]:
    session.recorder.stop()  # moto's recorder would write every body to its log
    try:
        with tempfile.TemporaryDirectory(prefix="ec2jobs-bench-artifacts-") as name:
            tmp = Path(name)
            holder = submit(session, {"name": "bench-artifacts", "run": "true", "provider_id": provider_id})
            session.wait_done(holder)  # a job of the team: the instance side's grants and the outputs listing
            (tmp / "throughput").mkdir()
            moved = throughput(session, holder, megabytes, rounds, tmp / "throughput")
            shutil.rmtree(tmp / "throughput")
            (tmp / "first-line").mkdir()
            started = first_line(session, provider_id, workdir_megabytes, first_line_samples, tmp / "first-line")
    finally:
        session.recorder.start()
    return figures(moved, started, megabytes, workdir_megabytes), {"throughput": moved, "first_line": started}


def figures(moved: dict[str, Any], started: dict[str, Any], megabytes: int, workdir_megabytes: int) -> list[Figure]:
    """The section's rows from the measurements (rates are medians of the rounds; ratios of those medians)."""
    rate = moved["median_mb_per_second"]
    on_instance = started["running_to_line_seconds"]
    upload = moved.get("api_upload") or {}
    parts = f"{upload.get('parts', '?')} parts of {int(upload.get('part_size', 0)) / MIB:.0f} MiB"
    tool_parts = (
        f"multipart, {moved['tool_part_bytes'] / MIB:.0f} MiB parts, {ec2jobs_transfer.CONCURRENCY} in flight"
        if moved["tool_multipart"]
        else "one PUT"
    )
    rounds = f"{megabytes} MB of random bytes, median of {moved['rounds']} rounds"

    def ratio(ours: str, theirs: str) -> float:
        return float(rate[ours] / rate[theirs])

    rows = [
        Figure(SECTION, "client upload: POST /uploads → ec2jobs.transfer (4 parts in flight) → complete",
               rate["client_upload_ec2jobs"], "MB/s", note=f"{rounds}; {parts}; {LIMITS}"),
        Figure(SECTION, "… boto3 upload_file (TransferConfig defaults), same file and bucket",
               rate["client_upload_boto3"], "MB/s"),
        Figure(SECTION, "… ec2jobs / boto3", ratio("client_upload_ec2jobs", "client_upload_boto3"), "×",
               (">=", TARGET_RATIO)),
        Figure(SECTION, "client download: GET /jobs/{id}/outputs → ec2jobs.transfer.download",
               rate["client_download_ec2jobs"], "MB/s"),
        Figure(SECTION, "… boto3 download_file", rate["client_download_boto3"], "MB/s", note=RANGES),
        Figure(SECTION, "… boto3 get_object read as one stream (informational)",
               rate["client_download_boto3_stream"], "MB/s"),
        Figure(SECTION, "… ec2jobs / boto3", ratio("client_download_ec2jobs", "client_download_boto3"), "×",
               (">=", TARGET_RATIO)),
        Figure(SECTION, "instance upload: ec2jobs_transfer.py sync-up (python3 subprocess, the job's STS session)",
               rate["instance_upload_ec2jobs"], "MB/s",
               note=f"{tool_parts} (boto3: 8 MB parts, 10 at a time); process start included"),
        Figure(SECTION, "… boto3 upload_file, same credentials", rate["instance_upload_boto3"], "MB/s"),
        Figure(SECTION, "… sync-up / boto3", ratio("instance_upload_ec2jobs", "instance_upload_boto3"), "×",
               (">=", TARGET_RATIO)),
        Figure(SECTION, "instance download: ec2jobs_transfer.py get", rate["instance_get"], "MB/s",
               note="a first 16 MiB GET, then 8 ranged GETs in flight; process start included; boto3's rows as for "
               "the client download"),
        Figure(SECTION, "… sync-down (ListObjectsV2, then get)", rate["instance_sync_down"], "MB/s"),
        Figure(SECTION, "… boto3 download_file, same credentials", rate["instance_download_boto3"], "MB/s"),
        Figure(SECTION, "… boto3 get_object read as one stream, same credentials (informational)",
               rate["instance_download_boto3_stream"], "MB/s"),
        Figure(SECTION, "… get / boto3", ratio("instance_get", "instance_download_boto3"), "×", (">=", TARGET_RATIO)),
        Figure(SECTION, "… sync-down / boto3", ratio("instance_sync_down", "instance_download_boto3"), "×",
               (">=", TARGET_RATIO)),
        Figure(SECTION, "submit → first line visible via GET /jobs/{id}/logs, no workdir, median",
               started["no_workdir_seconds"], "s", note=first_line_note(started)),
        Figure(SECTION, f"… with a {workdir_megabytes} MB workdir (pack → POST /uploads → upload → complete → "
               "POST /jobs → first line)", started["workdir_seconds"], "s"),
        Figure(SECTION, "… difference (informational)", started["workdir_seconds"] - started["no_workdir_seconds"],
               "s"),
        Figure(SECTION, "… the workdir's own share: pack + upload + its fetch on the instance (informational)",
               started["workdir_share_seconds"], "s",
               note=f"pack {started['pack_seconds']:.2f} s, upload {started['upload_seconds']:.2f} s "
               f"({started['archive_bytes'] / MB:.0f} MB archive, {started['upload_parts']} parts), relay connected "
               f"→ first line {on_instance['workdir']:.2f} s with the workdir against {on_instance['plain']:.2f} s "
               "without (medians; not affected by the race)"),
    ]  # fmt: skip
    return rows


def first_line_note(started: dict[str, Any]) -> str:
    samples = started["samples"]
    raced = started["raced"]
    return (
        f"{len(samples['plain'])} jobs of each kind, alternating, on simulated instances; medians over "
        f"{started['over']}. The race ({raced['plain']} without, {raced['workdir']} with a workdir): the relay read "
        "the instance's address before the local instance simulator gave it its loopback one, and lost about 10 s "
        "on the address moto made up (a local artifact)"
    )


def main(argv: list[str] | None = None) -> None:
    from bench import __main__ as entry

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=int, default=200)
    parser.add_argument("--workdir-megabytes", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--first-line-samples", type=int, default=5)
    args = parser.parse_args(argv)
    entry.main(
        [
            "--only", "artifacts",
            "--transfer-megabytes", str(args.megabytes),
            "--workdir-megabytes", str(args.workdir_megabytes),
            "--transfer-rounds", str(args.rounds),
            "--workdir-jobs", str(args.first_line_samples),
        ]
    )  # fmt: skip


if __name__ == "__main__":
    main()
