"""What the e2e tests share: a local control plane driven over HTTP like a user would, with AWS-side checks."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest

from local import runtime, sshd

# Instance sandboxes run sshd on 127.0.0.x:22 (as on EC2), which needs root and OpenSSH; `make test` has both.
READY = any(Path(p).exists() for p in sshd.SSHD_CANDIDATES) and os.geteuid() == 0
if not READY and os.environ.get("EC2JOBS_REQUIRE_SSHD") == "1":
    raise RuntimeError("the e2e tests need OpenSSH sshd and root (make test installs sshd; run it as root)")
NEEDS_SANDBOXES = pytest.mark.skipif(not READY, reason="needs OpenSSH sshd and root (sandboxes listen on port 22)")
TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED"}
GONE = {"shutting-down", "terminated"}


@dataclass
class Local:
    plane: runtime.LocalControlPlane
    provider_id: str
    queue_url: str
    token: str = field(default="")
    stash: list[dict[str, Any]] = field(default_factory=list)

    def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(  # noqa: S310 - loopback URL of the local API
            self.plane.api_url + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.token or self.plane.token}", "Content-Type": "application/json"}
            | (headers or {}),
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def submit(self, task: dict[str, Any]) -> str:
        status, body = self.call("POST", "/jobs", task | {"provider_id": self.provider_id})
        assert status == 202, body
        return str(body["job_id"])

    def wait(self, job_id: str, timeout: float = 120) -> dict[str, Any]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            status, job = self.call("GET", f"/jobs/{job_id}")
            assert status == 200, job
            if job["status"] in TERMINAL and job.get("instance_state") in {None, "terminated"}:
                return dict(job)
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} did not finish: {job}")

    def logs(self, job_id: str) -> tuple[str, bool]:
        """The log as relayed so far: (text, complete). `complete`: final and whole (the drain handshake)."""
        text, cursor, complete = "", "", False
        for _ in range(1000):
            status, page = self.call("GET", f"/jobs/{job_id}/logs?after={cursor}")
            assert status == 200, page
            text += page["text"]
            cursor, complete = page["next_cursor"], page["complete"]
            if page["final"] or not page["text"]:
                break
        return text, complete

    def state_changes(self, job_id: str, until: str, timeout: float = 30) -> list[tuple[str | None, str]]:
        """(previous_status, status) of the job's Job State Change events, from the test rule's queue."""
        sqs = boto3.client("sqs")
        seen: list[dict[str, Any]] = list(self.stash)  # events of this job read while waiting for another one
        self.stash.clear()
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for message in sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10).get("Messages", []):
                seen.append(json.loads(message["Body"]))
                sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
            mine = [e["detail"] for e in seen if e["detail"]["job_id"] == job_id]
            if any(d["status"] == until for d in mine):
                break
            time.sleep(0.2)
        self.stash.extend(e for e in seen if e["detail"]["job_id"] != job_id)
        return [(d["previous_status"], d["status"]) for d in mine]


def forget_process_state(saved: dict[str, str]) -> None:
    """runtime.start() configures this process (env, cached clients/config, the handlers' services): undo it so the
    other test modules see their own emulator."""
    from controlplane import config
    from controlplane.adapters import aws
    from controlplane.handlers import container

    os.environ.clear()
    os.environ.update(saved)
    config.get.cache_clear()
    aws.client.cache_clear()
    aws.resource.cache_clear()
    container.use(None)
    boto3.setup_default_session()


def start_local(workdir: Path, team_id: str, **options: Any) -> tuple[Local, dict[str, str]]:
    """A local control plane with an emulated provider and a queue receiving its Job State Change events. Returns
    it and this process's environment before, for forget_process_state()."""
    saved = dict(os.environ)
    plane = runtime.start(workdir=workdir, team_id=team_id, **options)
    try:
        key_id, secret = runtime.create_provider_user()
        request = {"name": "emulated", "region": "us-east-1", "access_key_id": key_id, "secret_access_key": secret}
        holder = Local(plane, "", "")
        status, body = holder.call("POST", "/providers", request)
        assert status == 201, body
        sqs = boto3.client("sqs")
        queue_url = sqs.create_queue(QueueName=f"job-events-{uuid.uuid4().hex[:6]}")["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        events = boto3.client("events")
        events.put_rule(
            Name="test-job-events",
            EventBusName=plane.event_bus_name,
            EventPattern=json.dumps({"source": ["ec2jobs"], "detail-type": ["Job State Change"]}),
        )
        events.put_targets(
            Rule="test-job-events", EventBusName=plane.event_bus_name, Targets=[{"Id": "q", "Arn": queue_arn}]
        )
    except BaseException:
        plane.stop()
        forget_process_state(saved)
        raise
    return Local(plane, str(body["provider_id"]), queue_url), saved


def instances_of(job_id: str) -> list[dict[str, Any]]:
    """Every instance ever launched for the job (the emulator keeps terminated ones)."""
    ec2 = boto3.client("ec2")
    pages = ec2.describe_instances(Filters=[{"Name": "tag:ec2jobs:job-id", "Values": [job_id]}])["Reservations"]
    return [i for r in pages for i in r["Instances"]]


def live_instances_of_ours() -> list[str]:
    ec2 = boto3.client("ec2")
    pages = ec2.describe_instances(Filters=[{"Name": "tag:ec2jobs:managed-by", "Values": ["ec2jobs"]}])
    return [i["InstanceId"] for r in pages["Reservations"] for i in r["Instances"] if i["State"]["Name"] not in GONE]
