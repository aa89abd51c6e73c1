"""The fault matrix: every job ends, every instance dies, every log line arrives exactly once — whatever breaks.

One local control plane with fault injection on (local/faults.py). Phase 1 runs every row's job at once, each with
its own fault; phase 2 stops the whole control plane for OUTAGE_SECONDS while jobs run, then starts it again. For
every row: the job's final state and reason are right, its log is exactly what it wrote (nothing lost or doubled)
and final (also whole unless the instance ended under the job), no instance of it is left running, at most one
instance was ever launched for it, and its fault really fired. At the end no job of ours is non-terminal and no
instance of ours is running; an instance of ours that no job owns is terminated by the reconciler. The "Fault
matrix" table in docs/reliability.md lists these rows."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import boto3
import pytest

from controlplane.config import Settings
from controlplane.core.ids import job_id_for_idempotency_key
from controlplane.core.provisioning import MANAGED_BY_TAG, SELF_TERMINATION_POLICY_NAME, TEAM_TAG, TeamResources
from local import guard, runtime
from local.faults import FaultPlan
from tests.e2e.harness import (
    NEEDS_SANDBOXES,
    TERMINAL,
    Local,
    forget_process_state,
    instances_of,
    live_instances_of_ours,
    start_local,
)

pytestmark = NEEDS_SANDBOXES
T = TypeVar("T")
TEAM = "matrix"
NEW_TEAM = "matrix-new"  # its first job bootstraps a new instance profile (IAM propagation row)
ROLE_TEAM = "matrix-role"  # its instance role's policy is changed to deny self-termination (its own role)
# Longer than the outage row's jobs (40 s: they finish during it) and than the relay lease (RELAY_LEASE_SECONDS
# below: the dead loops' leases have ended when the control plane comes back).
OUTAGE_SECONDS = float(os.environ.get("EC2JOBS_OUTAGE_SECONDS", "60"))
FAULT_MATRIX_DOC = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"
# Short graces so the reconciler's repairs show within the test (deployed defaults: 600 s / 120 s / 120 s).
SETTINGS = {
    "ORPHAN_GRACE_SECONDS": "20",
    "ENDED_GRACE_SECONDS": "30",  # well past a normal self-termination (seconds), even on a loaded machine
    "RELAY_STALE_SECONDS": "10",
    # A dead relay loop's lease ends within this (deployed default 90 s): the shard-killed and outage rows wait for it.
    "RELAY_LEASE_SECONDS": "30",
    # The deployed default (the local runtime's own default is 60 s): the outage row's jobs finish during the
    # outage and their instances wait this long without relay progress for the relay to come back.
    "DRAIN_TIMEOUT_SECONDS": str(Settings.model_fields["drain_timeout_seconds"].default),
}
RECONCILE_EVERY = 5.0
ENDED_GRACE = float(SETTINGS["ENDED_GRACE_SECONDS"])
LATE_SECONDS = 10.0  # how late the out-of-order events arrive


def lines(count: int, text: str = "line") -> str:
    return "".join(f"{text} {i}\n" for i in range(1, count + 1))


@dataclass
class Row:
    """One fault: the job it hits, how it is injected, what must come out."""

    name: str
    fault: str
    expected: tuple[str, str | None]  # (status, failure_reason)
    task: dict[str, Any]
    output: str  # exactly what the job's log must hold
    instances: int = 1  # how many instances must have been launched for it
    arrange: Callable[[Matrix, str], None] = lambda matrix, job_id: None  # rules before submitting
    act: Callable[[Matrix, str], None] = lambda matrix, job_id: None  # what the test does while it runs
    team: str = TEAM
    job_id: str = ""
    rules: list[str] = field(default_factory=list)


@dataclass
class Matrix:
    local: Local
    plan: FaultPlan
    teams: dict[str, Local]  # the other teams' clients
    revoked_provider: str
    revoked_key: str
    marker_dir: Path  # files the tests create for jobs that wait on them (the sandboxes share the host's /tmp)

    def rule(self, row: Row, kind: str, **match: Any) -> None:
        row.rules.append(self.plan.add(kind, **match))

    def client(self, row: Row) -> Local:
        return self.teams.get(row.team, self.local)

    def job(self, row: Row) -> dict[str, Any]:
        status, job = self.client(row).call("GET", f"/jobs/{row.job_id}")
        assert status == 200, job
        return dict(job)

    def wait_for(self, row: Row, check: Callable[[dict[str, Any], str], bool], timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            job = self.job(row)
            text, _ = self.client(row).logs(row.job_id)
            if check(job, text):
                return
            time.sleep(0.5)
        raise AssertionError(f"{row.name}: condition not reached: {self.job(row)}")


# -- the rows -------------------------------------------------------------------------------------------------------

FAST = lines(400)
FAST_RUN = "for i in $(seq 1 400); do echo line $i; done"
PACED = lines(3000, "a longer line of output, numbered")
PACED_RUN = (
    'for i in $(seq 1 3000); do echo "a longer line of output, numbered $i"; '
    "if [ $((i % 250)) = 0 ]; then sleep 0.4; fi; done"
)
STEADY_RUN = PACED_RUN.replace("sleep 0.4", "sleep 1")  # 12 s of output: the relay is surely mid-stream
SLOW = lines(40, "tick")
SLOW_RUN = "for i in $(seq 1 40); do echo tick $i; sleep 0.5; done"


def _crash_after_run_instances(m: Matrix, job_id: str) -> None:
    m.rule(ROWS_BY_NAME["launch crashed after RunInstances"], "crash_after", service="ec2",
           operation="RunInstances", job=job_id, times=1)  # fmt: skip


def _launch_response_lost(m: Matrix, job_id: str) -> None:
    m.rule(ROWS_BY_NAME["launch step retried"], "lambda_error", function="ec2jobs-launch", when="after",
           job=job_id, times=1)  # fmt: skip


def _drop_events(name: str) -> Callable[[Matrix, str], None]:
    def arrange(m: Matrix, job_id: str) -> None:
        m.rule(ROWS_BY_NAME[name], "event", action="drop", detail_type="EC2 Instance State-change Notification",
               job=job_id)  # fmt: skip

    return arrange


def _terminate_when_logged(m: Matrix, job_id: str) -> None:
    row = ROWS_BY_NAME["EC2 events lost, instance killed"]
    m.wait_for(row, lambda job, text: text == lines(50) and job["status"] == "RUNNING")
    boto3.client("ec2").terminate_instances(InstanceIds=[m.job(row)["instance_id"]])


def _duplicate_events(m: Matrix, job_id: str) -> None:
    m.rule(ROWS_BY_NAME["every event delivered twice"], "event", action="duplicate", job=job_id)


def _delay_early_events(m: Matrix, job_id: str) -> None:
    m.rule(ROWS_BY_NAME["events out of order"], "event", action="delay", delay=LATE_SECONDS,
           state=["pending", "running"], job=job_id)  # fmt: skip


def _drop_ssh(m: Matrix, job_id: str) -> None:
    m.rule(ROWS_BY_NAME["SSH connection dropped mid-stream"], "ssh_drop", job=job_id, bytes=40_000, times=2)


def _kill_relay(m: Matrix, job_id: str) -> None:
    m.rule(ROWS_BY_NAME["relay invocation killed mid-stream"], "crash_after", service="dynamodb",
           operation="BatchWriteItem", job=job_id, skip=1, times=1)  # fmt: skip


def _kill_shard_when_streaming(m: Matrix, job_id: str) -> None:
    """The relay shard following the job dies mid-stream: its invocation crashes at its next read of its own shard
    item (every job it follows loses its loop at once, as in a crashed Lambda); the shard's execution retries it and
    the new invocation follows its jobs on from their committed offsets (docs/relay-fleet.md)."""
    row = ROWS_BY_NAME["relay shard killed mid-stream"]
    m.wait_for(row, lambda job, text: job["status"] == "RUNNING" and text.count("\n") >= 4)
    m.rule(row, "crash_after", service="dynamodb", operation="GetItem", contains="relay-fleet", times=1)


THROTTLED_WRITES = 15  # consecutive: three times the SDK's own retries (5 attempts a call, adapters/aws.py)


def _throttle(m: Matrix, job_id: str) -> None:
    """The job's chunk writes are throttled 15 times in a row: the SDK's retries give up again and again, and the
    relay's own recovery (backoff, resend what was not written, commit only after) carries it."""
    m.rule(ROWS_BY_NAME["DynamoDB throttling"], "aws_error", service="dynamodb", operation="BatchWriteItem",
           job=job_id, code="ProvisionedThroughputExceededException", status=400,
           message="Rate of requests exceeds the allowed throughput.", times=THROTTLED_WRITES)  # fmt: skip


def _profile_not_propagated(m: Matrix, job_id: str) -> None:
    m.rule(ROWS_BY_NAME["IAM profile propagation delay"], "aws_error", service="ec2", operation="RunInstances",
           job=job_id, code="InvalidParameterValue", times=3,
           message="Value (transformerlab-matrix-new) for parameter iamInstanceProfile.name is invalid. "
           "Invalid IAM Instance Profile name")  # fmt: skip


def _no_capacity_in_first_zones(m: Matrix, job_id: str) -> None:
    m.rule(ROWS_BY_NAME["InsufficientInstanceCapacity in the first AZs"], "aws_error", service="ec2",
           operation="RunInstances", job=job_id, zone=["us-east-1a", "us-east-1b"],
           code="InsufficientInstanceCapacity", status=500)  # fmt: skip


def _over_quota(m: Matrix, job_id: str) -> None:
    m.rule(ROWS_BY_NAME["vCPU quota exceeded"], "aws_error", service="ec2", operation="RunInstances", job=job_id,
           code="VcpuLimitExceeded", message="You have requested more vCPU capacity than your current vCPU limit of "
           "0 allows for the instance bucket that the specified instance type belongs to. Please visit "
           "http://aws.amazon.com/contact-us/ec2-request to request an adjustment to this limit.")  # fmt: skip


def _no_spot_quota(m: Matrix, job_id: str) -> None:
    m.rule(ROWS_BY_NAME["spot quota exceeded under use_spot: auto"], "aws_error", service="ec2",
           operation="RunInstances", job=job_id, contains="InstanceMarketOptions", code="MaxSpotInstanceCountExceeded",
           message="Max spot instance count exceeded")  # fmt: skip


def _revoke_mid_job(m: Matrix, job_id: str) -> None:
    row = ROWS_BY_NAME["provider credentials revoked mid-job"]
    m.wait_for(row, lambda job, text: job["status"] == "RUNNING" and text.count("\n") >= 5)
    # What EC2 answers for a deleted access key, from now on; then a dropped connection makes the relay look the
    # instance up again (with the revoked key).
    m.rule(row, "aws_error", access_key=m.revoked_key, code="AuthFailure", status=401,
           message="AWS was not able to validate the provided access credentials")  # fmt: skip
    m.rule(row, "ssh_drop", job=job_id, bytes=1, times=1)
    (m.marker_dir / REVOKED_MARKER).touch()  # the job prints the rest now: the drop has bytes to fire on


REVOKED_MARKER = "credentials-revoked"


SELF_TERMINATION_MARKER = "role-denied"
MARKERS = Path(tempfile.gettempdir()) / f"ec2jobs-matrix-{os.getpid()}"  # the sandboxes' /tmp is the host's


def _deny_self_termination(m: Matrix, job_id: str) -> None:
    """The instance role's own policy denies TerminateInstances (evaluated by the emulator as IAM would, for the
    instance's role-session credentials); EC2's own shutdown behaviour (the `shutdown -h now` fallback, which acts as
    EC2 itself, not with a key of ours) is failed by the fault plan."""
    row = ROWS_BY_NAME["instance self-termination fails"]
    m.rule(row, "aws_error", service="ec2", operation="TerminateInstances", job=job_id,
           access_key=guard.FAKE_ACCESS_KEY_ID, code="UnauthorizedOperation", status=403,
           message="You are not authorized to perform this operation.")  # fmt: skip
    m.wait_for(row, lambda job, text: job["status"] == "RUNNING" and text == "waiting\n")
    deny = {"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Action": "ec2:*", "Resource": "*"}]}
    boto3.client("iam").put_role_policy(
        RoleName=TeamResources("transformerlab", ROLE_TEAM).role,
        PolicyName=SELF_TERMINATION_POLICY_NAME,
        PolicyDocument=json.dumps(deny),
    )
    (m.marker_dir / SELF_TERMINATION_MARKER).touch()  # the job goes on now


# Seconds the instance writes on after the warning (AWS reclaims it up to 120 s after it). Longer than the ended
# grace plus two reconciler ticks: a reconciler that gave a spot-interrupted job's instance only the ended grace, not
# AWS's notice, would have terminated it before the last tick (and the log would miss lines).
SPOT_TICKS = int(ENDED_GRACE + 4 * RECONCILE_EVERY)  # 50
SPOT_OUTPUT = "started\n" + lines(SPOT_TICKS, "tick")
SPOT_RUN = f"echo started; sleep 1; for i in $(seq 1 {SPOT_TICKS}); do echo tick $i; sleep 1; done; sleep 600"


def _interrupt_spot(m: Matrix, job_id: str) -> None:
    """The warning ends the job at once; the instance writes on for 50 s of AWS's two-minute notice, and every line
    of it reaches the log (neither the relay nor the reconciler stops early); then AWS reclaims the instance."""
    row = ROWS_BY_NAME["spot interruption"]
    m.wait_for(row, lambda job, text: job["status"] == "RUNNING" and text.startswith("started\n"))
    instance_id = m.job(row)["instance_id"]
    detail = {"instance-id": instance_id, "instance-action": "terminate"}
    boto3.client("events").put_events(
        Entries=[
            {"Source": "aws.ec2", "DetailType": "EC2 Spot Instance Interruption Warning", "Detail": json.dumps(detail)}
        ]
    )
    m.wait_for(row, lambda job, text: job["status"] == "FAILED", timeout=30)
    m.wait_for(row, lambda job, text: text == SPOT_OUTPUT, timeout=SPOT_TICKS + 60)  # streamed through the notice
    assert _state(instance_id) == "running"  # the reconciler left it its notice window
    boto3.client("ec2").terminate_instances(InstanceIds=[instance_id])  # AWS reclaims it


ROWS: list[Row] = [
    Row("launch crashed after RunInstances", "the launch Lambda dies right after RunInstances returned, before the "
        "job record names the instance; Step Functions retries it", ("SUCCEEDED", None),
        {"run": FAST_RUN}, FAST, arrange=_crash_after_run_instances),
    Row("launch step retried", "the launch step completed but its response was lost (Lambda.ServiceException); "
        "Step Functions runs it again", ("SUCCEEDED", None), {"run": FAST_RUN}, FAST, arrange=_launch_response_lost),
    Row("EC2 events lost, instance killed", "every EC2 state-change event of the instance is lost, and the instance "
        "is terminated from outside mid-job", ("FAILED", "INSTANCE_LOST"),
        {"run": "for i in $(seq 1 50); do echo line $i; done; sleep 600"}, lines(50),
        arrange=_drop_events("EC2 events lost, instance killed"), act=_terminate_when_logged),
    Row("EC2 events lost, job succeeds", "every EC2 state-change event of the instance is lost",
        ("SUCCEEDED", None), {"run": FAST_RUN}, FAST, arrange=_drop_events("EC2 events lost, job succeeds")),
    Row("every event delivered twice", "EventBridge delivers every EC2 event twice", ("SUCCEEDED", None),
        {"run": FAST_RUN}, FAST, arrange=_duplicate_events),
    Row("events out of order", "the pending/running events arrive 10 s late, after shutting-down/terminated",
        ("SUCCEEDED", None), {"run": FAST_RUN}, FAST, arrange=_delay_early_events),
    Row("SSH connection dropped mid-stream", "the relay's TCP connection is cut twice, 40 KB into each stream",
        ("SUCCEEDED", None), {"run": PACED_RUN}, PACED, arrange=_drop_ssh),
    Row("relay invocation killed mid-stream", "the relay Lambda dies after writing its second batch of chunks, "
        "before committing their offset", ("SUCCEEDED", None), {"run": STEADY_RUN}, PACED, arrange=_kill_relay),
    Row("relay shard killed mid-stream", "the relay shard following the job (and any other job on it) dies "
        "mid-stream", ("SUCCEEDED", None), {"run": STEADY_RUN}, PACED, act=_kill_shard_when_streaming),
    Row("DynamoDB throttling", "15 chunk writes of the job in a row are throttled "
        "(ProvisionedThroughputExceededException)", ("SUCCEEDED", None), {"run": PACED_RUN}, PACED,
        arrange=_throttle),
    Row("IAM profile propagation delay", "a new team's first launch: RunInstances rejects the new instance "
        "profile three times", ("SUCCEEDED", None), {"run": FAST_RUN}, FAST, arrange=_profile_not_propagated,
        team=NEW_TEAM),
    Row("InsufficientInstanceCapacity in the first AZs", "no capacity in us-east-1a and us-east-1b (HTTP 500, "
        "as EC2 sends it)", ("SUCCEEDED", None), {"run": FAST_RUN}, FAST, arrange=_no_capacity_in_first_zones),
    Row("vCPU quota exceeded", "RunInstances answers VcpuLimitExceeded", ("FAILED", "QUOTA"), {"run": FAST_RUN}, "",
        instances=0, arrange=_over_quota),
    Row("spot quota exceeded under use_spot: auto", "every spot RunInstances answers MaxSpotInstanceCountExceeded",
        ("SUCCEEDED", None), {"resources": {"accelerators": "T4", "use_spot": "auto"}, "run": FAST_RUN}, FAST,
        arrange=_no_spot_quota),
    Row("provider credentials revoked mid-job", "EC2 rejects the provider's key (AuthFailure) from mid-job on, and "
        "the relay's connection drops right then", ("SUCCEEDED", None),
        # half the ticks, then (once the faults are in place, however slowly the relay showed the first ones) the rest
        {"run": f"for i in $(seq 1 20); do echo tick $i; sleep 0.5; done; "
                f"while [ ! -e {MARKERS / REVOKED_MARKER} ]; do sleep 0.2; done; "
                "for i in $(seq 21 40); do echo tick $i; sleep 0.5; done"}, SLOW,
        act=_revoke_mid_job),
    Row("instance self-termination fails", "the instance role's own policy denies its TerminateInstances (and its "
        "shutdown fallback fails)", ("SUCCEEDED", None),
        {"run": f"echo waiting; while [ ! -e {MARKERS / SELF_TERMINATION_MARKER} ]; do sleep 0.2; done; "
         + FAST_RUN}, "waiting\n" + FAST, act=_deny_self_termination, team=ROLE_TEAM),
    Row("setup fails", "the setup script exits 2", ("FAILED", "SETUP_FAILED"),
        {"setup": "echo broken setup >&2; exit 2", "run": "echo never runs"}, "broken setup\n"),
    Row("spot interruption", "an EC2 Spot Instance Interruption Warning for the instance; it writes on for 50 s "
        "(inside AWS's two-minute notice)", ("FAILED", "SPOT_INTERRUPTED"),
        {"resources": {"accelerators": "T4", "use_spot": True}, "run": SPOT_RUN}, SPOT_OUTPUT, act=_interrupt_spot),
]  # fmt: skip
ROWS_BY_NAME = {row.name: row for row in ROWS}
OUTAGE_ROW = "control plane stopped while jobs run"
ORPHAN_ROW = "an instance of ours that no job owns"


# -- the run --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Matrix]:
    workdir = tmp_path_factory.mktemp("matrix")
    plan = FaultPlan(workdir / "faults.json")
    local, saved = start_local(workdir, TEAM, settings=SETTINGS, reconcile_every=RECONCILE_EVERY, fault_plan=plan.path)
    try:
        teams = {}
        for team in (NEW_TEAM, ROLE_TEAM):
            teams[team] = Local(local.plane, "", local.queue_url, token=local.plane.issue_token(team))
            teams[team].provider_id = _provider(teams[team], team)[0]
        revoked_provider, revoked_key = _provider(local, "revoked later")
        MARKERS.mkdir(exist_ok=True)
        yield Matrix(local, plan, teams, revoked_provider, revoked_key, MARKERS)
    finally:
        local.plane.stop()
        forget_process_state(saved)
        shutil.rmtree(MARKERS, ignore_errors=True)


def _provider(local: Local, name: str) -> tuple[str, str]:
    key_id, secret = runtime.create_provider_user()
    request = {"name": name, "region": "us-east-1", "access_key_id": key_id, "secret_access_key": secret}
    status, body = local.call("POST", "/providers", request)
    assert status == 201, body
    return str(body["provider_id"]), key_id


def _submit(m: Matrix, row: Row) -> None:
    client = m.client(row)
    key = f"matrix-{row.name}"
    row.job_id = job_id_for_idempotency_key(row.team, key)
    row.arrange(m, row.job_id)
    provider = m.revoked_provider if row.act is _revoke_mid_job else client.provider_id
    status, body = client.call(
        "POST", "/jobs", row.task | {"name": _slug(row.name), "provider_id": provider}, {"Idempotency-Key": key}
    )
    assert status == 202, body
    assert body["job_id"] == row.job_id


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")[:100]


def _check(m: Matrix, row: Row, timeout: float = 240) -> dict[str, Any]:
    client = m.client(row)
    job = client.wait(row.job_id, timeout=timeout)
    outcome = (job["status"], job.get("failure_reason"))
    assert outcome == row.expected, f"{row.name}: {outcome} ({job.get('failure_message')}; notes {job.get('notes')})"
    text, complete = client.logs(row.job_id)
    # Whole (the wrapper's drain handshake) unless the instance ended under the job: then the log is final only.
    assert complete == (row.expected[1] not in {"INSTANCE_LOST", "SPOT_INTERRUPTED"}), row.name
    assert text == row.output, f"{row.name}: the log differs from what the job wrote"
    launched = _eventually(
        lambda: instances_of(row.job_id),
        lambda found: all(i["State"]["Name"] == "terminated" for i in found),
        timeout=ENDED_GRACE + 2 * RECONCILE_EVERY + 30,  # a failed self-termination: the reconciler's ended grace
    )
    assert len(launched) == row.instances, (row.name, [i["InstanceId"] for i in launched])
    assert all(i["State"]["Name"] == "terminated" for i in launched), row.name
    for rule in row.rules:
        assert m.plan.fired(rule), f"{row.name}: its fault ({rule}) never fired"
    return job


def _eventually(probe: Callable[[], T], done: Callable[[T], bool], timeout: float) -> T:
    """Probe until `done` holds or `timeout` passes; the last probe's value (the caller asserts on it)."""
    end = time.monotonic() + timeout
    while True:
        value = probe()
        if done(value) or time.monotonic() > end:
            return value
        time.sleep(0.5)


def _launch_orphan() -> str:
    """An instance tagged for the team (as ec2jobs tags them) that no job owns: e.g. one started by hand."""
    ec2 = boto3.client("ec2")
    image = ec2.describe_images()["Images"][0]["ImageId"]
    tags = [{"Key": TEAM_TAG, "Value": TEAM}, {"Key": MANAGED_BY_TAG, "Value": "ec2jobs"}]
    return str(
        ec2.run_instances(
            ImageId=image,
            InstanceType="t3.micro",
            MinCount=1,
            MaxCount=1,
            TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
        )["Instances"][0]["InstanceId"]
    )


def _state(instance_id: str) -> str:
    reservations = boto3.client("ec2").describe_instances(InstanceIds=[instance_id])["Reservations"]
    return str(reservations[0]["Instances"][0]["State"]["Name"])


def test_every_row_of_the_fault_matrix(matrix: Matrix) -> None:
    m = matrix
    only = [name for name in os.environ.get("EC2JOBS_MATRIX_ROWS", "").split(",") if name]  # to debug a few rows
    rows = [row for row in ROWS if not only or row.name in only]
    orphan = _launch_orphan()
    for row in rows:
        _submit(m, row)
    with ThreadPoolExecutor(max_workers=len(rows)) as pool:  # what the test does to running jobs, concurrently
        for done in [pool.submit(row.act, m, row.job_id) for row in rows]:
            done.result()
    ended = {row.name: _check(m, row) for row in rows}
    end = time.monotonic() + 60  # the orphan grace (20 s here) and a reconcile tick have passed by now, or soon
    while _state(orphan) != "terminated" and time.monotonic() < end:
        time.sleep(1)
    assert _state(orphan) == "terminated", "the reconciler did not terminate an instance no job owns"
    if only:
        return

    # Row-specific facts beyond the common checks.
    ice = "InsufficientInstanceCapacity in the first AZs"
    assert ended[ice]["availability_zone"] not in {"us-east-1a", "us-east-1b"}
    assert {f.get("zone") or "us-east-1a" for f in m.plan.fired(ROWS_BY_NAME[ice].rules[0])} == {
        "us-east-1a",
        "us-east-1b",
    }
    twice = ROWS_BY_NAME["every event delivered twice"]
    assert m.local.state_changes(twice.job_id, until="SUCCEEDED") == [
        (None, "PENDING"),
        ("PENDING", "LAUNCHING"),
        ("LAUNCHING", "PROVISIONING"),
        ("PROVISIONING", "RUNNING"),
        ("RUNNING", "SUCCEEDED"),
    ]
    late = ROWS_BY_NAME["events out of order"]
    delayed = m.plan.fired(late.rules[0])
    assert delayed
    arrived = max(f["at"] for f in delayed) + LATE_SECONDS  # when the last late event has been delivered
    states = _eventually(lambda: (time.time(), m.job(late)["instance_state"]), lambda seen: seen[0] > arrived + 2, 30)
    assert states[1] == "terminated"  # a late event never moves the state backwards
    assert "quota" in ended["vCPU quota exceeded"]["failure_message"].lower()
    assert ended["spot quota exceeded under use_spot: auto"]["market"] == "on-demand"
    throttled = m.plan.fired(ROWS_BY_NAME["DynamoDB throttling"].rules[0])
    assert len(throttled) == THROTTLED_WRITES  # every throttle was met, and outlived by, the relay's recovery
    assert max(f["at"] for f in throttled) - min(f["at"] for f in throttled) >= 3.0  # seconds, not one retry
    revoked = ended["provider credentials revoked mid-job"]
    assert revoked["instance_address"]  # the relay kept streaming to the address it had reached


def test_the_control_plane_stopped_while_jobs_run_then_started_again(matrix: Matrix) -> None:
    m = matrix
    rows = [
        Row(f"{OUTAGE_ROW} {n}", "", ("SUCCEEDED", None), {"run": "for i in $(seq 1 80); do echo tick $i; "
            "sleep 0.5; done"}, lines(80, "tick")) for n in (1, 2)
    ]  # fmt: skip
    for row in rows:
        _submit(m, row)
    for row in rows:  # 40 s jobs: both are still running when the control plane stops
        m.wait_for(row, lambda job, text: job["status"] == "RUNNING" and text.count("\n") >= 3)

    m.plan.set_down(True)  # functions fail, invocations in flight die, executions stop, events are lost
    time.sleep(OUTAGE_SECONDS)  # the jobs finish meanwhile; their instances wait for the relay to drain them
    for row in rows:
        assert m.job(row)["status"] == "RUNNING"  # nothing of the control plane ran
    m.plan.set_down(False)

    for row in rows:
        job = _check(m, row)
        assert job["relay_restarts"] >= 1  # the reconciler restarted its dead relay loop


def test_nothing_is_left_running_and_no_job_is_left_unfinished(matrix: Matrix) -> None:
    for client in (matrix.local, *matrix.teams.values()):
        status, page = client.call("GET", "/jobs?limit=100")
        assert status == 200
        assert [j["job_id"] for j in page["jobs"] if j["status"] not in TERMINAL] == []
    assert live_instances_of_ours() == []


def test_the_docs_list_every_row_with_its_expected_end() -> None:
    readme = FAULT_MATRIX_DOC.read_text()
    for row in ROWS:
        status, reason = row.expected
        assert f"| {row.name} |" in readme, row.name
        assert f"{status}{' / ' + reason if reason else ''}" in readme.split(f"| {row.name} |")[1].split("\n")[0]
    assert f"| {OUTAGE_ROW} |" in readme
    assert f"| {ORPHAN_ROW} |" in readme
