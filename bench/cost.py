"""Cost model: what the control plane consumes per job launch and per job-hour, counted on the embedded control
plane (the emulator's request log, Step Functions' execution history, the Lambda invocations), priced with
bench/prices.py.

- Per launch: everything, from `POST /jobs` to the job's end, of a job that runs `true`: the API request (authorizer
  and api Lambda), the workflow's state transitions and Lambda invocations (durations from the execution history),
  the instance-events invocations (EC2 state changes, captured on their own EventBridge rule; each one's duration
  measured by invoking it again with the same event), DynamoDB request units (from each request and the item it
  touched), Secrets Manager calls and Job State Change events.
- Per job-hour: a job that prints a 100-byte line every second ("typical"; then 10 per second, "busy"). A relay
  shard follows it the whole hour (docs/relay-fleet.md): a full shard's share of its Lambda time (512 MB / 25 jobs)
  and of its loop's invocations and transitions; the AWS calls made while the job streams are counted in a window
  of steady output and scaled to an hour: its writes and status reads in full, the shard's reads of its own item
  and its heartbeats as a full shard's share; the reconciler's sweeps (one a minute per provider-region) as a share
  of the jobs running in one provider-region (HEADLINE_JOBS, 100, for the per-hour figures; 1/N on the curve).
  The shard's log pages (core/logpages.py) are charged as a full shard writes them: the
  job's own page entries, as measured (their bytes and times), replayed for 25 jobs at random phases, grouped into
  the shard's ticks, encoded with the real codec and priced per page; a twenty-fifth is the job's.
- S3 (the artifacts bucket), in both: a typical job's bytes (bench/s3cost.py TypicalJob: a 50 MB workdir per
  launch, checkpoints synced every 2 minutes with 5 files changed, all kept until they expire), priced from the
  requests the CLI, the API and the instance's transfer tool make. Those requests are counted on a real run first
  (a workdir uploaded through the API, a job fetching it, a sync-up of 5 changed files, a sync-up of none) and
  checked against bench/s3cost.py's model, which then prices the typical sizes. A job's outputs (1 GB, kept 30
  days) are priced on their own row: they are the user's data, proportional to it, not to launches or hours.

    python -m bench.cost [--seconds 30]
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import random
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import artifacts, prices, s3cost
from bench.awsops import Op
from bench.plane import Session
from bench.prices import Deployment, Usage
from bench.report import Figure
from bench.s3cost import Requests, TypicalJob
from controlplane import config
from controlplane.adapters import events as event_patterns
from controlplane.adapters import logs as logs_adapter
from controlplane.adapters import statemachine
from controlplane.core import logpages
from controlplane.service.relay_fleet import SHARD_CAPACITY
from ec2jobs import packing
from local import runtime

SECTION = "4 cost"
LAUNCH_TARGET = 0.002
HOUR_TARGET = 0.002  # issue 17: ten times lower than the $0.02 of one relay Lambda per job
CURVE_JOBS = (1, 10, 100, 1000)  # the cost curve: per job-hour at this many concurrent jobs
# The per-hour figures: 100 jobs running around the clock (issue 17's reference), in one provider-region: 4 full relay
# shards, one reconciler sweep a minute shared by the 100
HEADLINE_JOBS = 100
SHARD_LOOP_TRANSITIONS = 2  # a relay shard's loop: Follow (a Task) and More? (a Choice), per invocation
LINE = "t={t:.6f} {phase} step {n:06d} loss=0.123456 lr=0.000300 tokens/s=12345.6 grad_norm=0.98"
COST_JOB = """python3 - <<'EOF'
import time
def phase(name, every, seconds):
    end, n = time.time() + seconds, 0
    while time.time() < end:
        n += 1
        print("{line}".format(t=time.time(), phase=name, n=n), flush=True)
        time.sleep(every)
time.sleep(3)
phase("typical", 1.0, {seconds})
phase("busy", 0.1, {seconds})
EOF"""
_ENDED = frozenset({"LambdaFunctionSucceeded", "LambdaFunctionFailed", "LambdaFunctionTimedOut"})
COUNT_WORKDIR_BYTES = 9 * 1024 * 1024  # more than one 8 MiB part: the counted upload is a multipart upload


@dataclass
class Measured:
    """One measured stretch: the control plane's requests, Lambda invocations and state transitions."""

    ops: list[Op] = field(default_factory=list)
    invocations: list[tuple[str, float]] = field(default_factory=list)  # (handler, seconds)
    transitions: int = 0
    api_requests: int = 0


class Units:
    """DynamoDB request units of recorded requests, from the request bodies and the items they touched (read
    afterwards, so a job item is counted at its final, largest size: an upper bound)."""

    def __init__(self, session: Session) -> None:
        self.client = session.client("dynamodb")
        self.sizes: dict[str, int] = {}

    def _size(self, table: str, key: dict[str, Any]) -> int:
        cache_key = table + json.dumps(key, sort_keys=True)
        if cache_key not in self.sizes:
            item = self.client.get_item(TableName=table, Key=key, ConsistentRead=True).get("Item") or {}
            self.sizes[cache_key] = prices.item_size(item)
        return self.sizes[cache_key]

    def _query(self, params: dict[str, Any]) -> int:
        try:
            items = self.client.query(**params).get("Items", [])
        except Exception:  # noqa: BLE001 - a query we cannot repeat counts its minimum
            return 0
        return sum(prices.item_size(item) for item in items)

    def of(self, op: Op) -> tuple[float, float]:
        """(write units, read units) of one DynamoDB request."""
        body = op.json_body()
        table = str(body.get("TableName", ""))
        if op.operation == "PutItem":
            return prices.write_units(prices.item_size(body.get("Item", {}))), 0.0
        if op.operation in {"UpdateItem", "DeleteItem"}:
            return prices.write_units(self._size(table, body.get("Key", {}))), 0.0
        if op.operation == "BatchWriteItem":
            units = 0
            for requests in body.get("RequestItems", {}).values():
                for request in requests:
                    put = request.get("PutRequest", {}).get("Item")
                    units += prices.write_units(prices.item_size(put)) if put else 1
            return float(units), 0.0
        if op.operation == "TransactWriteItems":
            units = 0
            for entry in body.get("TransactItems", []):
                ((kind, spec),) = entry.items()
                size = prices.item_size(spec["Item"]) if kind == "Put" else self._size(spec["TableName"], spec["Key"])
                units += prices.write_units(size, transactional=True)
            return float(units), 0.0
        if op.operation == "GetItem":
            size = self._size(table, body.get("Key", {}))
            return 0.0, prices.read_units(size, consistent=bool(body.get("ConsistentRead")))
        if op.operation == "Query":
            return 0.0, prices.read_units(self._query(body), consistent=bool(body.get("ConsistentRead")))
        return 0.0, 0.0


def usage_of(measured: Measured, units: Units, deployment: Deployment, shard_share: bool = True) -> Usage:
    """What the measured requests and invocations cost; a relay shard's upkeep as a full shard's share (or whole,
    `shard_share=False`)."""
    usage = Usage(state_transitions=float(measured.transitions), api_requests=float(measured.api_requests))
    for op in measured.ops:
        if op.by_bench:
            continue
        if op.service == "dynamodb":
            write, read = units.of(op)
            share = 1.0 / SHARD_CAPACITY if shard_share and _shard_upkeep(op) else 1.0
            usage.dynamodb_write_units += write * share
            usage.dynamodb_read_units += read * share
        elif op.service == "secretsmanager":
            usage.secrets_manager_calls += 1
        elif op.service == "events" and op.operation == "PutEvents":
            usage.eventbridge_events += len(op.json_body().get("Entries", []))
    for handler, seconds in measured.invocations:
        usage.lambda_requests += 1
        usage.lambda_gb_seconds += prices.gb_seconds(seconds, deployment.memory(handler))
    return usage


def _shard_upkeep(op: Op) -> bool:
    """A relay shard's reads of its own item (4 a second) and its heartbeats: shared by the shard's jobs, so a
    full shard's share is charged to each (docs/relay-fleet.md). Enrolment's own writes are the job's."""
    if '"relay-fleet"' not in op.body:
        return False
    return op.operation == "GetItem" or (op.operation == "UpdateItem" and "heartbeat_at" in op.body)


def _page_entries(op: Op) -> list[logpages.Entry]:
    """The entries of the log pages a request wrote (none if it wrote no page)."""
    if op.service != "dynamodb" or op.operation not in {"BatchWriteItem", "PutItem"} or '"pages#' not in op.body:
        return []
    body = op.json_body()
    items = [body.get("Item", {})] if op.operation == "PutItem" else []
    for requests in body.get("RequestItems", {}).values():
        items += [request["PutRequest"]["Item"] for request in requests if "PutRequest" in request]
    entries: list[logpages.Entry] = []
    for item in items:
        if str(item.get("job_id", {}).get("S", "")).startswith(logs_adapter.PAGES_PREFIX):
            entries += logpages.decode(base64.b64decode(item["data"]["B"]))
    return entries


def full_shard_page_units(
    timed: list[tuple[float, list[logpages.Entry]]], seconds: float, jobs: int = SHARD_CAPACITY
) -> float:
    """Write units an hour, one job's share, of the pages a shard of `jobs` jobs writes when each prints what the
    measured job printed: its page entries (bytes and times within the window) replayed for every job at a random
    phase, grouped into the shard's ticks (PAGE_TICK_SECONDS), merged and encoded as the page writer does, each
    page priced as the item it is."""
    rng = random.Random(17)
    ticks: dict[int, list[logpages.Entry]] = defaultdict(list)
    for number in range(jobs):
        phase = rng.uniform(0.0, seconds)
        job_id = f"job-{number:020x}"  # as long as a real job id
        turn = rng.randrange(max(len(timed), 1))  # another job prints other lines (steps, times) at the same moment
        for index, (at, _) in enumerate(timed):
            entries = timed[(index + turn) % len(timed)][1]
            tick = int(((at + phase) % seconds) / logpages.PAGE_TICK_SECONDS)
            ticks[tick] += [logpages.Entry(job_id, e.writer, e.offset, e.data) for e in entries]
    units = 0
    for tick, entries in ticks.items():
        for page in logpages.split(logpages.merge(entries)):
            item = {
                "job_id": {"S": f"{logs_adapter.PAGES_PREFIX}shard-0001-{'0' * 12}"},
                "offset": {"N": str(100_000 + tick)},
                "data": {"B": logpages.encode(page)},
                "expires_at": {"N": "1790000000"},
            }
            units += prices.write_units(prices.item_size(item))
    return units * (3600 / seconds) / jobs


def _handler_of(function_name: str) -> str:
    step = function_name.removeprefix(f"{runtime.PREFIX}-").replace("-", "_")
    extra = {"instance_events": runtime.INSTANCE_EVENTS_HANDLER, "reconcile": runtime.RECONCILE_HANDLER}
    return statemachine.HANDLERS.get(step) or extra.get(step, function_name)


def workflow_of(history: list[dict[str, Any]]) -> tuple[int, list[tuple[str, float]], int]:
    """(state transitions, [(handler, seconds)] of its Lambda tasks, relay loop iterations) from an execution's
    history. Transitions: every state entered, plus every retried task attempt (AWS bills retries)."""
    entered = [e for e in history if e["type"].endswith("StateEntered")]
    scheduled = [e for e in history if e["type"] in {"LambdaFunctionScheduled", "TaskScheduled"}]
    task_entries = [e for e in entered if e["type"] == "TaskStateEntered"]
    transitions = len(entered) + max(0, len(scheduled) - len(task_entries))
    invocations: list[tuple[str, float]] = []
    current: tuple[str, Any] | None = None
    followed_since: Any = None  # the Relay callback task: the job followed by a relay shard until its callback
    for event in history:
        details = event.get("taskScheduledEventDetails", {})
        if event["type"] == "TaskScheduled" and details.get("resource") == "invoke.waitForTaskToken":
            followed_since = event["timestamp"]
        elif event["type"] in {"TaskSucceeded", "TaskFailed", "TaskTimedOut"} and followed_since is not None:
            # a full shard's share of the time the job was followed (plus the enrol call, a few ms, not counted)
            seconds = (event["timestamp"] - followed_since).total_seconds()
            invocations.append((statemachine.FLEET_HANDLER, seconds / SHARD_CAPACITY))
            followed_since = None
        if event["type"] == "LambdaFunctionScheduled":
            resource = event["lambdaFunctionScheduledEventDetails"]["resource"]
            current = (_handler_of(resource.rsplit(":", 1)[-1]), None)
        elif event["type"] == "LambdaFunctionStarted" and current is not None:
            current = (current[0], event["timestamp"])
        elif event["type"] in _ENDED and current is not None and current[1] is not None:
            invocations.append((current[0], (event["timestamp"] - current[1]).total_seconds()))
            current = None
    loops = sum(1 for e in entered if e.get("stateEnteredEventDetails", {}).get("name") == "Relay")
    return transitions, invocations, loops


class EventCapture:
    """The EC2 events the instance-events rule matches, also delivered to a queue (to count and replay them)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        sqs, eventbridge = session.client("sqs"), session.client("events")
        self.queue_url = sqs.create_queue(QueueName="bench-instance-events")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        for name, pattern in (
            ("bench-ec2-states", event_patterns.EC2_STATE_PATTERN),
            ("bench-spot", event_patterns.SPOT_INTERRUPTION_PATTERN),
        ):
            eventbridge.put_rule(Name=name, EventPattern=json.dumps(pattern))
            eventbridge.put_targets(Rule=name, Targets=[{"Id": "queue", "Arn": arn}])
        self.pending: list[dict[str, Any]] = []

    def drain(self) -> list[dict[str, Any]]:
        sqs = self.session.client("sqs")
        while True:
            messages = sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10).get("Messages", [])
            if not messages:
                break
            for message in messages:
                self.pending.append(json.loads(message["Body"]))
                sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
        return self.pending

    def take(self, instance_id: str) -> list[dict[str, Any]]:
        events = [e for e in self.drain() if e.get("detail", {}).get("instance-id") == instance_id]
        self.pending = [e for e in self.pending if e not in events]
        return events


def _measure_job(session: Session, capture: EventCapture, task: dict[str, Any]) -> tuple[Measured, str, float]:
    """Run one job to its end; what the control plane did for it (job id, seconds from submission to end)."""
    mark = session.recorder.mark()
    first_invocation = len(session.invocations)
    started = time.time()
    status, body = session.call("POST", "/jobs", task)
    if status != 202:
        raise RuntimeError(f"POST /jobs answered {status}: {body}")
    job_id = str(body["job_id"])
    item = session.wait_done(job_id, timeout=300)
    ended = time.time()
    time.sleep(1.0)  # the last instance event (terminated) is delivered asynchronously
    measured = Measured(ops=[op for op in session.recorder.since(mark) if not op.by_bench])
    api = session.invocations[first_invocation:]
    measured.invocations += [(i.handler, i.seconds) for i in api]
    measured.api_requests = sum(1 for i in api if i.handler.endswith("api.handler"))
    history = session.history(item["execution_arn"]["S"])
    measured.transitions, workflow, _ = workflow_of(history)
    measured.invocations += workflow
    instance_id = item.get("instance_id", {}).get("S", "")
    for event in capture.take(instance_id) if instance_id else []:
        seconds, _ = session.invoke(session.function_name("instance_events"), event)
        measured.invocations.append((runtime.INSTANCE_EVENTS_HANDLER, seconds))
    return measured, job_id, ended - started


def _phase_windows(session: Session, job_id: str) -> dict[str, tuple[float, float]]:
    """The job's own line timestamps: per phase, a window of steady output (2 s in from its first line, 1 s
    before its last)."""
    text, cursor = "", ""
    for _ in range(10_000):
        status, page = session.call("GET", f"/jobs/{job_id}/logs?after={cursor}&limit=1048576")
        if status != 200:
            raise RuntimeError(f"GET logs answered {status}: {page}")
        text += page["text"]
        cursor = page["next_cursor"]
        if page["complete"] or not page["text"]:
            break
    stamps: dict[str, list[float]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) > 1 and parts[0].startswith("t="):
            stamps.setdefault(parts[1], []).append(float(parts[0][2:]))
    return {phase: (min(t) + 2.0, max(t) - 1.0) for phase, t in stamps.items() if max(t) - min(t) > 4}


def _sweep(session: Session) -> tuple[Measured, int]:
    """One reconciler sweep, invoked as the schedule would: what it did, and how many provider-regions it swept."""
    mark = session.recorder.mark()
    seconds, answer = session.invoke(session.function_name("reconcile"), {})
    time.sleep(0.1)
    measured = Measured(ops=[op for op in session.recorder.since(mark) if not op.by_bench])
    measured.invocations.append((runtime.RECONCILE_HANDLER, seconds))
    described = int(answer.get("described", 0)) if isinstance(answer, dict) else 0
    return measured, described


def _follow_hour(session: Session, job_id: str, units: Units, deployment: Deployment, requests: int = 5) -> Usage:
    """A client polling GET /jobs/{id}/logs once a second for an hour, from a few measured requests. API Gateway
    caches the authorizer's answer for 5 minutes (stacks/api.py): 12 authorizer invocations an hour, not 3600."""
    mark = session.recorder.mark()
    first = len(session.invocations)
    for _ in range(requests):
        session.call("GET", f"/jobs/{job_id}/logs?after=0&limit=4096")
    time.sleep(0.1)
    measured = Measured(ops=[op for op in session.recorder.since(mark) if not op.by_bench], api_requests=requests)
    calls = session.invocations[first:]
    measured.invocations = [(i.handler, i.seconds) for i in calls if i.handler.endswith("api.handler")]
    authorizer = Measured(
        invocations=[(i.handler, i.seconds) for i in calls if i.handler.endswith("authorizer.handler")]
    )
    per_authorization = usage_of(authorizer, units, deployment).scaled(1 / max(len(authorizer.invocations), 1))
    return usage_of(measured, units, deployment).scaled(3600 / requests) + per_authorization.scaled(12)


def count_s3(session: Session, provider_id: str, typical: TypicalJob) -> dict[str, Any]:
    """The S3 requests of a real run, by price class (the recorder must be on): a workdir uploaded through the API
    as the CLI does, a job (`true`) fetching it on its instance, then, with that job's grants, a sync-up of
    `typical.files_per_sync` changed files and a sync-up of none. Each is checked against bench/s3cost.py."""
    bucket = config.get().artifact_bucket

    def s3_since(mark: int) -> Requests:
        time.sleep(0.3)  # the recorder's tail thread
        ops = [op for op in session.recorder.since(mark) if not op.by_bench]
        return s3cost.count(((op.method, op.url) for op in ops), bucket)

    counted: dict[str, Requests] = {}
    expected: dict[str, Requests] = {}
    with tempfile.TemporaryDirectory(prefix="ec2jobs-bench-cost-") as name:
        tmp = Path(name)
        (tmp / "project").mkdir()
        artifacts.incompressible(tmp / "project" / "data.bin", COUNT_WORKDIR_BYTES)
        with packing.pack_directory(tmp / "project") as archive:
            mark = session.recorder.mark()
            created = artifacts.upload_through_api(session, archive.path, archive.size, archive.sha256)
            counted["workdir upload"], expected["workdir upload"] = s3_since(mark), s3cost.cli_upload(archive.size)
        mark = session.recorder.mark()
        task = {"name": "bench-cost-s3", "run": "true", "workdir": {"upload": created["upload_id"]}}
        job_id = artifacts.submit(session, task | _p(provider_id))
        session.wait_done(job_id, timeout=300)
        time.sleep(1.0)
        counted["job with that workdir"], expected["job with that workdir"] = s3_since(mark), Requests(get=1)
        artifacts.issue_grants(session, job_id, tmp / "grants.json")
        tool = artifacts.Tool(tmp / "grants.json", tmp)
        (tmp / "checkpoints").mkdir()
        sizes = s3cost.split(typical.checkpoint_bytes, typical.files_per_sync)
        for index, size in enumerate(sizes):
            artifacts.incompressible(tmp / "checkpoints" / f"step-{index}.ckpt", size)
        for label, want in (
            (f"sync-up of {len(sizes)} changed files", s3cost.sync_up(sizes)),
            ("sync-up, none", Requests()),
        ):
            mark = session.recorder.mark()
            tool("sync-up", str(tmp / "checkpoints"), "checkpoints", "--state", str(tmp / "sync-state.json"))
            counted[label], expected[label] = s3_since(mark), want
    mismatches = [
        f"{label}: counted {counted[label]}, model {expected[label]}"
        for label in counted
        if counted[label] != expected[label]
    ]
    return {
        "counted": {label: vars(requests) for label, requests in counted.items()},
        "model": {label: vars(requests) for label, requests in expected.items()},
        "archive_bytes": archive.size,
        "mismatches": mismatches,
    }


def run(session: Session, provider_id: str, seconds: float = 30.0) -> tuple[list[Figure], dict[str, Any]]:
    deployment = prices.deployment()
    units = Units(session)
    capture = EventCapture(session)
    session.recorder.start()

    launch, _, launch_seconds = _measure_job(session, capture, {"name": "bench-cost", "run": "true"} | _p(provider_id))
    per_launch = usage_of(launch, units, deployment)

    task = {"name": "bench-hour", "run": COST_JOB.format(seconds=int(seconds), line=LINE)} | _p(provider_id)
    mark = session.recorder.mark()
    status, body = session.call("POST", "/jobs", task)
    if status != 202:
        raise RuntimeError(f"POST /jobs answered {status}: {body}")
    job_id = str(body["job_id"])
    session.wait_status(job_id, {"RUNNING"}, timeout=120)
    time.sleep(1.0)  # let the RUNNING transition's own writes and event land before the sweep is measured
    sweep, described = _sweep(session)
    session.wait_done(job_id, timeout=300)
    streaming = [op for op in session.recorder.since(mark) if not op.by_bench]
    windows = _phase_windows(session, job_id)
    follow_hour = _follow_hour(session, job_id, units, deployment)

    # The relay: the job is followed by a relay shard (docs/relay-fleet.md), one 512 MB invocation for up to
    # SHARD_CAPACITY jobs, looping every TIMEOUTS["relay_shard"] seconds (a few transitions each). Charged as a full
    # shard's share, as are its reads of its own item in the window below (_shard_upkeep); its task heartbeats
    # (SendTaskHeartbeat) are free API calls.
    shard_memory = deployment.memory(statemachine.FLEET_HANDLER)
    shard_loops_per_hour = 3600 / statemachine.TIMEOUTS["relay_shard"]
    sweeps_per_hour = 3600 / deployment.reconcile_every_seconds
    shard_hour = Usage(
        lambda_gb_seconds=prices.gb_seconds(3600, shard_memory),
        lambda_requests=shard_loops_per_hour,
        state_transitions=shard_loops_per_hour * SHARD_LOOP_TRANSITIONS,
    )
    # The reconciler sweeps once a minute per provider-region, whatever runs there: its share is 1/N at N jobs in one
    # provider-region (HEADLINE_JOBS for the per-hour figures; the curve below divides by its own N).
    sweep_hour = usage_of(sweep, units, deployment).scaled(sweeps_per_hour)
    fixed_hour = shard_hour.scaled(1 / SHARD_CAPACITY) + sweep_hour.scaled(1 / HEADLINE_JOBS)
    # S3: a typical job's bytes, from requests counted on a real run and checked against the model
    typical_job = TypicalJob(keep_days=float(s3cost.expiry_days()))
    s3_counted = count_s3(session, provider_id, typical_job)
    launch_s3, hour_s3, outputs_s3 = (
        s3cost.launch_usage(typical_job),
        s3cost.hour_usage(typical_job),
        s3cost.outputs_usage(typical_job),
    )
    per_launch_all = per_launch + launch_s3
    hours: dict[str, Usage] = {}
    upkeep_hour = Usage()  # one shard's reads of its own item and heartbeats, for an hour (typical window)
    page_units: dict[str, float] = {}
    for phase, (start, end) in windows.items():
        in_window = [op for op in streaming if start <= op.seen_at <= end]
        pages = [(op.seen_at - start, _page_entries(op)) for op in in_window]
        window = Measured(ops=[op for op in in_window if not _page_entries(op)])  # pages: as a full shard's below
        rate = usage_of(window, units, deployment).scaled(3600 / (end - start))
        page_units[phase] = full_shard_page_units([(at, e) for at, e in pages if e], end - start)
        rate.dynamodb_write_units += page_units[phase]
        hours[phase] = fixed_hour + rate + hour_s3
        if phase == "typical":
            upkeep = Measured(ops=[op for op in window.ops if _shard_upkeep(op)])
            upkeep_hour = usage_of(upkeep, units, deployment, shard_share=False).scaled(3600 / (end - start))
    # The curve: at N concurrent jobs, ⌈N/25⌉ shards' Lambda and upkeep are shared by the N jobs (the figure above
    # assumes full shards); everything else is per job. The reconciler's sweeps stay charged to each job in full.
    per_shard = shard_hour + upkeep_hour
    curve: dict[int, float] = {}
    if "typical" in hours:
        for n in CURVE_JOBS:
            shared = per_shard.scaled(math.ceil(n / SHARD_CAPACITY) / n - 1 / SHARD_CAPACITY)
            shared = shared + sweep_hour.scaled(1 / n - 1 / HEADLINE_JOBS)
            curve[n] = prices.dollars(hours["typical"] + shared)["total"]
    launch_cost = prices.dollars(per_launch_all)["total"]
    typical = prices.dollars(hours["typical"])["total"] if "typical" in hours else None
    busy = prices.dollars(hours["busy"])["total"] if "busy" in hours else None
    check = (
        "requests as counted on a real run"
        if not s3_counted["mismatches"]
        else "MODEL DIFFERS FROM THE COUNT: " + "; ".join(s3_counted["mismatches"])
    )
    launch_requests, hour_requests = s3cost.launch_requests(typical_job), s3cost.hour_requests(typical_job)
    outputs_requests = s3cost.outputs_requests(typical_job)
    figures = [
        Figure(
            SECTION,
            "per job launch (a job running `true`, submit → end; S3 for a typical job's workdir)",
            launch_cost,
            "$",
            ("<=", LAUNCH_TARGET),
            f"{per_launch.lambda_requests:.0f} invocations, {per_launch.state_transitions:.0f} transitions, "
            f"{per_launch.dynamodb_write_units:.0f} WRU, {per_launch.dynamodb_read_units:.0f} RRU; "
            f"S3 ${_total(launch_s3):.5f}",
        ),
        Figure(
            SECTION,
            f"… of which S3: a {typical_job.workdir_bytes / s3cost.MB:.0f} MB workdir uploaded and fetched, the last "
            f"checkpoint sync, both kept {typical_job.keep_days:.0f} days",
            _total(launch_s3),
            "$",
            note=f"{launch_requests.put} PUT-class + {launch_requests.get} GET-class requests "
            f"({_s3_lines(launch_s3)}); {typical_job.describe()}; {check}",
        ),
        Figure(
            SECTION,
            f"per job-hour, typical logs (a 100-byte line a second; S3 checkpoint syncs), {HEADLINE_JOBS} jobs running",
            typical,
            "$",
            ("<=", HOUR_TARGET),
            _hour_note(hours.get("typical")),
        ),
        Figure(
            SECTION,
            f"… of which S3: {typical_job.syncs_per_hour:.0f} checkpoint syncs of {typical_job.files_per_sync} "
            f"changed files ({typical_job.checkpoint_bytes / s3cost.MB:.0f} MB)",
            _total(hour_s3),
            "$",
            note=f"{hour_requests.put} PUTs per sync, no LIST (sync-up's changes come from its state file); "
            f"{_s3_lines(hour_s3)}",
        ),
        *(
            Figure(
                SECTION,
                f"… typical logs with {n} job{'s' if n > 1 else ''} running at once "
                f"({math.ceil(n / SHARD_CAPACITY)} relay shard{'s' if n > SHARD_CAPACITY else ''})",
                dollars,
                "$",
                note="the cost curve: the shards' Lambda and upkeep shared by the jobs running" if n == 1 else "",
            )
            for n, dollars in curve.items()
        ),
        Figure(
            SECTION,
            f"per job-hour, busy logs (10 lines per second), {HEADLINE_JOBS} jobs running",
            busy,
            "$",
            note=_hour_note(hours.get("busy")),
        ),
        Figure(SECTION, "a client following the log once a second, per hour", _total(follow_hour), "$"),
        Figure(
            SECTION,
            f"a job's outputs in S3: {typical_job.outputs_bytes / s3cost.MB / 1000:.0f} GB in "
            f"{typical_job.outputs_files} files, uploaded at its end, downloaded once, kept "
            f"{typical_job.keep_days:.0f} days",
            _total(outputs_s3),
            "$",
            note=f"{outputs_requests.put} PUT/LIST-class + {outputs_requests.get} GET-class requests "
            f"({_s3_lines(outputs_s3)}); not included: data transfer out to the internet ($0.09 per GB after the "
            "first 100 GB a month), free within the region",
        ),
    ]
    details = {
        "prices_as_of": prices.PRICES_AS_OF,
        "region": prices.REGION,
        "unit_prices": prices.UNIT_PRICES,
        "deployment": {
            "relay_budget_seconds": deployment.relay_budget_seconds,
            "relay_shard_capacity": SHARD_CAPACITY,
            "relay_shard_memory_mb": deployment.memory(statemachine.FLEET_HANDLER),
            "reconcile_every_seconds": deployment.reconcile_every_seconds,
            "memory_mb": dict(deployment.memory_mb),
        },
        "per_launch": {
            "usage": per_launch_all.as_dict(),
            "dollars": _rounded(prices.dollars(per_launch_all)),
            "without_s3": _rounded(prices.dollars(per_launch)),
            "operations": dict(Counter(op.name for op in launch.ops)),
            "invocations": [(".".join(h.split(".")[-2:]), round(s, 3)) for h, s in launch.invocations],
            "submit_to_end_seconds": round(launch_seconds, 1),
        },
        "per_hour": {p: {"usage": u.as_dict(), "dollars": _rounded(prices.dollars(u))} for p, u in hours.items()},
        "per_hour_curve": {str(n): round(dollars, 6) for n, dollars in curve.items()},
        "relay_shard_hour": {"usage": per_shard.as_dict(), "dollars": _rounded(prices.dollars(per_shard))},
        "windows_seconds": {phase: round(end - start, 1) for phase, (start, end) in windows.items()},
        "page_write_units_per_hour": {phase: round(units, 1) for phase, units in page_units.items()},
        "reconcile_sweep": {
            "provider_regions": described,
            "operations": dict(Counter(op.name for op in sweep.ops)),
            "seconds": round(sweep.invocations[0][1], 3),
        },
        "follow_log_per_hour": {"usage": follow_hour.as_dict(), "dollars": _rounded(prices.dollars(follow_hour))},
        "s3": {
            "prices_as_of": prices.S3_PRICES_AS_OF,
            "typical_job": vars(typical_job) | {"description": typical_job.describe()},
            "requests_check": s3_counted,
            "per_launch": {"usage": launch_s3.as_dict(), "dollars": _rounded(prices.dollars(launch_s3))},
            "per_hour": {"usage": hour_s3.as_dict(), "dollars": _rounded(prices.dollars(hour_s3))},
            "outputs": {"usage": outputs_s3.as_dict(), "dollars": _rounded(prices.dollars(outputs_s3))},
        },
    }
    return figures, details


def _total(usage: Usage) -> float:
    return prices.dollars(usage)["total"]


def _p(provider_id: str) -> dict[str, str]:
    return {"provider_id": provider_id}


def _rounded(lines: dict[str, float]) -> dict[str, float]:
    return {k: float(f"{v:.3g}") if v else 0.0 for k, v in lines.items()}


def _s3_lines(usage: Usage) -> str:
    """`requests $x, storage $y` of a usage's S3 lines."""
    lines = prices.dollars(usage)
    requests = lines["s3_put_requests"] + lines["s3_get_requests"]
    return f"requests ${requests:.5f}, storage ${lines['s3_gb_months']:.5f}"


def _hour_note(usage: Usage | None) -> str:
    if usage is None:
        return "not measured"
    lines = prices.dollars(usage)
    top = sorted(((v, k) for k, v in lines.items() if k != "total"), reverse=True)[:2]
    return "; ".join(f"{k.replace('_', ' ')} ${v:.4f}" for v, k in top)


def main(argv: list[str] | None = None) -> None:
    from bench import __main__ as entry

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each logging phase of the hour job")
    args = parser.parse_args(argv)
    entry.main(["--only", "cost", "--cost-seconds", str(args.seconds)])


if __name__ == "__main__":
    main()
