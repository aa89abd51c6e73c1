"""Managed recovery on the local runtime (issue 16): the fault matrix's recovery rows.

One local control plane (real sshd, the real relay, Step Functions with Wait states, fault injection); every row's
job runs at once. For each row: the job's final state and reason, its attempts (how many, why each ended), its log
(every line of each attempt exactly once, a marker line before each attempt after the first), that at most one of its
instances ever ran at a time (sampled throughout), and that none is left running. The "Recovery" table in
docs/reliability.md lists these rows."""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest

from controlplane.core.ids import job_id_for_idempotency_key
from local.faults import FaultPlan
from tests.e2e.harness import NEEDS_SANDBOXES, Local, forget_process_state, start_local

pytestmark = NEEDS_SANDBOXES
TEAM = "recovery"
SETTINGS = {
    "CAPACITY_RETRY_SECONDS": "2",  # deployed default 60 s
    "RELAY_STALE_SECONDS": "10",
    "ENDED_GRACE_SECONDS": "30",
    "ORPHAN_GRACE_SECONDS": "60",
}
RELIABILITY_DOC = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"
MARKER = re.compile(r"--- attempt (\d+) on \S+ in \S+ \((spot|on-demand)\), after ([A-Z_]+) ---\n")
LIVE = {"pending", "running"}

# A training loop that checkpoints every step, resumes from its checkpoint and exits on SIGTERM (quietly, as a
# trainer that saves on SIGTERM does): attempt 1 stops after step 10 and waits (until AWS takes its instance); any
# later attempt runs to step 30.
TRAIN = (
    "trap 'exit 143' TERM; "
    'ck="$EC2JOBS_CHECKPOINT_DIR/step"; start=$(cat "$ck" 2>/dev/null || echo 0); '
    'echo "attempt $EC2JOBS_ATTEMPT (restarts $EC2JOBS_RESTARTS) from step $start"; '
    'for i in $(seq $((start + 1)) 30); do echo "step $i"; echo "$i" > "$ck"; '
    'if [ "$EC2JOBS_ATTEMPT" = 1 ] && [ "$i" = 10 ]; then sleep 600 & wait $!; fi; done'
)
TRAIN_OUTPUT = (
    ["attempt 1 (restarts 0) from step 0\n" + "".join(f"step {i}\n" for i in range(1, 11))],
    ["attempt 2 (restarts 1) from step 10\n" + "".join(f"step {i}\n" for i in range(11, 31))],
)
SPOT = {"accelerators": "T4", "use_spot": True}


@dataclass
class Row:
    name: str
    fault: str
    expected: tuple[str, str | None]
    task: dict[str, Any]
    attempts: list[str]  # why each attempt ended, in order (the last: the job's own end)
    outputs: list[str]  # each attempt's output, exactly
    act: Callable[[Recovery, Row], None] = lambda recovery, row: None
    arrange: Callable[[Recovery, Row], None] = lambda recovery, row: None
    job_id: str = ""
    rules: list[str] = field(default_factory=list)
    most_live: int = 0  # the most instances of the job seen live at once
    act_error: str = ""  # what went wrong in its act (run in a thread)


@dataclass
class Recovery:
    local: Local
    plan: FaultPlan

    def job(self, row: Row) -> dict[str, Any]:
        status, job = self.local.call("GET", f"/jobs/{row.job_id}")
        assert status == 200, job
        return dict(job)

    def wait_for(self, row: Row, check: Callable[[dict[str, Any], str], bool], timeout: float = 120) -> dict[str, Any]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            job = self.job(row)
            text, _ = self.local.logs(row.job_id)
            if check(job, text):
                return job
            time.sleep(0.3)
        raise AssertionError(f"{row.name}: condition not reached: {self.job(row)}")


def _warn_spot(instance_id: str) -> None:
    detail = {"instance-id": instance_id, "instance-action": "terminate"}
    boto3.client("events").put_events(
        Entries=[
            {"Source": "aws.ec2", "DetailType": "EC2 Spot Instance Interruption Warning", "Detail": json.dumps(detail)}
        ]
    )


def _interrupt_after_step_10(r: Recovery, row: Row) -> None:
    """The spot warning once step 10 is logged (and checkpointed); AWS would reclaim the instance 2 minutes later,
    but the relay stops the job at once, its checkpoints are uploaded and the next attempt starts."""
    job = r.wait_for(row, lambda job, text: "step 10\n" in text)
    _warn_spot(job["instance_id"])


def _terminate_when_waiting(r: Recovery, row: Row) -> None:
    """The instance is terminated from outside (no warning) while attempt 1 waits."""
    job = r.wait_for(row, lambda job, text: text.endswith("waiting\n"))
    boto3.client("ec2").terminate_instances(InstanceIds=[job["instance_id"]])


def _no_capacity(region: str = "us-east-1") -> Callable[[Recovery, Row], None]:
    def arrange(r: Recovery, row: Row) -> None:
        rule = {"service": "ec2", "operation": "RunInstances", "job": row.job_id, "region": region}
        row.rules.append(r.plan.add("aws_error", code="InsufficientInstanceCapacity", status=500, **rule))

    return arrange


def _cancel_while(status: str, first: Callable[[Recovery, Row], None] | None = None) -> Callable[[Recovery, Row], None]:
    def act(r: Recovery, row: Row) -> None:
        if first is not None:
            first(r, row)
        r.wait_for(row, lambda job, text: job["status"] == status, timeout=60)
        code, body = r.local.call("POST", f"/jobs/{row.job_id}/cancel")
        assert code == 200, body

    return act


def _capacity_back_when_waiting(r: Recovery, row: Row) -> None:
    """Capacity returns (the fault is removed) once the job waits for it."""
    r.wait_for(row, lambda job, text: job["status"] == "WAITING_CAPACITY", timeout=90)
    for rule in row.rules:
        r.plan.remove(rule)


def _warn_when_started(r: Recovery, row: Row) -> None:
    job = r.wait_for(row, lambda job, text: text == "started\n")
    _warn_spot(job["instance_id"])


ATTEMPT_ECHO = 'echo "attempt $EC2JOBS_ATTEMPT"'
ROWS: list[Row] = [
    Row("spot interruption, recovered", "a spot interruption warning mid-run; the job resumes from its checkpoint",
        ("SUCCEEDED", None), {"resources": SPOT, "run": TRAIN, "job_recovery": {"max_restarts": 2}},
        ["SPOT_INTERRUPTED", "SUCCEEDED"], [TRAIN_OUTPUT[0][0], TRAIN_OUTPUT[1][0]], act=_interrupt_after_step_10),
    Row("instance lost, relaunched", "the instance is terminated from outside, without warning",
        ("SUCCEEDED", None), {"run": f'{ATTEMPT_ECHO}; [ "$EC2JOBS_ATTEMPT" -ge 2 ] || {{ echo waiting; sleep 600; }}',
                              "job_recovery": {}},
        ["INSTANCE_LOST", "SUCCEEDED"], ["attempt 1\nwaiting\n", "attempt 2\n"], act=_terminate_when_waiting),
    Row("exit code in recover_on_exit_codes", "run exits 33 on its first attempt", ("SUCCEEDED", None),
        {"run": f'{ATTEMPT_ECHO}; [ "$EC2JOBS_ATTEMPT" -ge 2 ] || exit 33',
         "job_recovery": {"recover_on_exit_codes": [33]}},
        ["EXIT_NONZERO", "SUCCEEDED"], ["attempt 1\n", "attempt 2\n"]),
    Row("errors beyond max_restarts_on_errors", "run always exits 3; one error restart allowed",
        ("FAILED", "EXIT_NONZERO"), {"run": f"{ATTEMPT_ECHO}; exit 3", "job_recovery": {"max_restarts_on_errors": 1}},
        ["EXIT_NONZERO", "EXIT_NONZERO"], ["attempt 1\n", "attempt 2\n"]),
    Row("setup fails once", "setup exits 2 on the first attempt", ("SUCCEEDED", None),
        {"setup": f'{ATTEMPT_ECHO}; [ "$EC2JOBS_ATTEMPT" -ge 2 ] || exit 2', "run": "echo ran",
         "job_recovery": {"max_restarts_on_errors": 1}},
        ["SETUP_FAILED", "SUCCEEDED"], ["attempt 1\n", "attempt 2\nran\n"]),
    Row("capacity returns", "no capacity in any zone until the job waits for it, then capacity returns",
        ("SUCCEEDED", None), {"run": "echo launched", "job_recovery": {"max_wait_minutes": 5}}, ["SUCCEEDED"],
        ["launched\n"], arrange=_no_capacity(), act=_capacity_back_when_waiting),
    Row("capacity never returns", "no capacity in any zone, ever; max_wait_minutes 1", ("FAILED", "CAPACITY"),
        {"run": "echo never", "job_recovery": {"max_wait_minutes": 1}}, ["CAPACITY"], [""],
        arrange=_no_capacity()),
    Row("region fallback", "no capacity anywhere in us-east-1; the job lists us-west-2 next", ("SUCCEEDED", None),
        {"run": "echo launched", "resources": {"region": ["us-east-1", "us-west-2"]}}, ["SUCCEEDED"],
        ["launched\n"], arrange=_no_capacity()),
    Row("cancel while waiting for capacity", "no capacity, ever; cancelled while WAITING_CAPACITY",
        ("CANCELLED", None), {"run": "echo never", "job_recovery": {"max_wait_minutes": 10}}, ["CANCELLED"], [""],
        arrange=_no_capacity(), act=_cancel_while("WAITING_CAPACITY")),
    Row("cancel while recovering", "a spot warning, the job ignores SIGTERM; cancelled while RECOVERING",
        ("CANCELLED", None), {"resources": SPOT, "run": "trap '' TERM; echo started; sleep 600",
                              "job_recovery": {"max_restarts": 2}},
        ["SPOT_INTERRUPTED"], ["started\n"], act=_cancel_while("RECOVERING", _warn_when_started)),
]  # fmt: skip


@pytest.fixture(scope="module")
def recovery(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recovery]:
    workdir = tmp_path_factory.mktemp("recovery")
    plan = FaultPlan(workdir / "faults.json")
    local, saved = start_local(workdir, TEAM, settings=SETTINGS, reconcile_every=5.0, fault_plan=plan.path)
    try:
        yield Recovery(local, plan)
    finally:
        local.plane.stop()
        forget_process_state(saved)
        shutil.rmtree(workdir, ignore_errors=True)


def _watch(rows: list[Row], stop: threading.Event) -> None:
    """Sample every job's live instances (both regions) until stopped: at most one instance of a job runs at once."""
    while not stop.is_set():
        live: dict[str, int] = {}
        for instance in _instances_of_team():
            tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
            if instance["State"]["Name"] in LIVE:
                live[tags.get("ec2jobs:job-id", "")] = live.get(tags.get("ec2jobs:job-id", ""), 0) + 1
        for row in rows:
            row.most_live = max(row.most_live, live.get(row.job_id, 0))
        stop.wait(0.1)


def _instances_of_team() -> list[dict[str, Any]]:
    found = []
    for region in ("us-east-1", "us-west-2"):
        ec2 = boto3.client("ec2", region_name=region)
        pages = ec2.describe_instances(Filters=[{"Name": "tag:ec2jobs:team", "Values": [TEAM]}])["Reservations"]
        found += [i for page in pages for i in page["Instances"]]
    return found


def test_every_recovery_row(recovery: Recovery) -> None:
    r = recovery
    for row in ROWS:
        # The job id follows from the Idempotency-Key, so each row's faults are in place before its job exists: a
        # launch never races them (they were added after the submission, and a fast launch got there first).
        key = f"recovery-{row.name}-{uuid.uuid4().hex[:8]}"
        row.job_id = job_id_for_idempotency_key(TEAM, key)
        row.arrange(r, row)
        task = row.task | {"provider_id": r.local.provider_id}
        status, body = r.local.call("POST", "/jobs", task, {"Idempotency-Key": key})
        assert status == 202, body
        assert body["job_id"] == row.job_id
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(ROWS, stop), daemon=True)
    watcher.start()
    try:
        acts = [threading.Thread(target=_act, args=(r, row), daemon=True) for row in ROWS]
        for thread in acts:
            thread.start()
        for thread in acts:
            thread.join(timeout=300)
        results = {row.name: r.local.wait(row.job_id, timeout=300) for row in ROWS}
    finally:
        stop.set()
        watcher.join(timeout=10)
    failures = []
    for row in ROWS:  # every row is checked, and every failing one reported
        try:
            _check(r, row, results[row.name])
        except AssertionError as failure:
            failures.append(f"{row.name}: {failure}")
    assert not failures, "\n".join(failures)


def _act(r: Recovery, row: Row) -> None:
    try:
        row.act(r, row)
    except Exception as error:
        row.act_error = f"{type(error).__name__}: {error}"


def _instances(job_id: str) -> list[dict[str, Any]]:
    """Every instance ever launched for the job, in both regions the rows use."""
    found = []
    for region in ("us-east-1", "us-west-2"):
        ec2 = boto3.client("ec2", region_name=region)
        pages = ec2.describe_instances(Filters=[{"Name": "tag:ec2jobs:job-id", "Values": [job_id]}])["Reservations"]
        found += [i for page in pages for i in page["Instances"]]
    return found


def _check(r: Recovery, row: Row, job: dict[str, Any]) -> None:
    assert not row.act_error, f"{row.name}: {row.act_error}"
    outcome = (job["status"], job.get("failure_reason"))
    assert outcome == row.expected, f"{row.name}: {outcome} ({job.get('failure_message')}; notes {job.get('notes')})"
    ended = [a["end_reason"] for a in job["attempts"]]
    assert ended == row.attempts, f"{row.name}: attempts ended {ended}"
    assert [a["attempt"] for a in job["attempts"]] == list(range(1, len(row.attempts) + 1)), row.name
    text, complete = r.local.logs(row.job_id)
    pieces = MARKER.split(text)  # [attempt 1's output, n, market, reason, attempt n's output, ...]
    outputs = pieces[0::4]
    assert outputs == row.outputs, f"{row.name}: the log differs from what each attempt wrote: {text!r}"
    markers = list(zip(pieces[1::4], pieces[3::4], strict=True))
    assert markers == [(str(n), reason) for n, reason in enumerate(row.attempts[:-1], start=2)], row.name
    if row.expected[0] != "CANCELLED":  # a cancelled job's instance may not have handed over its tail
        assert complete, f"{row.name}: the log is not complete"
    assert row.most_live <= 1, f"{row.name}: {row.most_live} instances of the job ran at once"
    instances = _instances(row.job_id)
    launched = len([a for a in job["attempts"] if a["instance_id"]])
    assert len(instances) == launched, (row.name, [i["InstanceId"] for i in instances])
    assert all(i["State"]["Name"] not in LIVE for i in instances), row.name
    costs = [a["cost_estimate"] for a in job["attempts"] if a["cost_estimate"] is not None]
    if costs:
        assert job["cost_estimate"] == pytest.approx(sum(costs), abs=1e-3), row.name
    for rule in row.rules:
        assert r.plan.fired(rule), f"{row.name}: its fault ({rule}) never fired"
    _row_specific(row, job)


def _row_specific(row: Row, job: dict[str, Any]) -> None:
    if row.name == "region fallback":
        assert (job["region"], job["attempts"][0]["region"]) == ("us-west-2", "us-west-2")
        assert any("us-west-2" in note for note in job["notes"]), job["notes"]
    if row.name == "capacity never returns":
        assert "max_wait_minutes" in str(job["failure_message"]), job["failure_message"]
    if row.name == "errors beyond max_restarts_on_errors":
        assert job["exit_code"] == 3
        assert any("not relaunched" in n for n in job["notes"]), job["notes"]
    if row.name == "cancel while recovering":
        assert len(job["attempts"]) == 1  # no attempt launched after the cancel (its act saw RECOVERING)


def test_every_row_is_documented() -> None:
    doc = RELIABILITY_DOC.read_text()
    for row in ROWS:
        assert f"| {row.name} |" in doc, row.name
        status, reason = row.expected
        assert f"{status}{' / ' + reason if reason else ''}" in doc.split(f"| {row.name} |")[1].split("\n")[0]
