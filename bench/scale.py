"""Scale: 1,000 active jobs across 3 providers (one team each) × 2 regions, 10,000 jobs in the table.

On a fresh emulator (no instance simulator: these instances only need to exist): providers are added through the
API (POST /providers, with their real key checks), their bootstrap records and the job items are written through
the real adapters (adapters/dynamodb.py), and the instances are started with RunInstances in batches, tagged as
the launch tags them (core/provisioning.py), then each tagged with its job. Then:

- the real Reconciler (service/reconcile.py, wired by handlers/container.py) sweeps; the emulator's request log
  counts its AWS calls per provider-region (target: ⌈active/1000⌉ DescribeInstances each) and it is timed;
- `GET /jobs` over HTTP (the API front, authorizer, api Lambda) is timed with 100 jobs in the table and again with
  10,000 (the ratio shows whether it grows with the table);
- every DynamoDB operation of the sweeps and the listings is counted: no Scan (target 0).

    python -m bench.scale [--active 1000] [--total 10000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import statistics
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3

from bench.awsops import CallClock, Op, Recorder
from bench.report import Figure
from controlplane.core import provisioning
from controlplane.core.lifecycle import JobStatus
from controlplane.core.models import BootstrapRecord, Job, utcnow
from controlplane.core.spec import TaskSpec
from local import emulator, guard, runtime
from local.apigw import LocalApiGateway, LocalHttpApi
from local.resources import ControlPlaneNames, create_tables

SECTION = "5 scale"
REGIONS = ("us-east-1", "us-west-2")
PROVIDERS = 3
BATCH = 100  # instances per RunInstances
PREFIX = "bench"


def _reset_process() -> None:
    """Forget cached config, clients and services (another benchmark may have configured this process)."""
    from controlplane import config
    from controlplane.adapters import aws
    from controlplane.handlers import container

    config.get.cache_clear()
    aws.client.cache_clear()
    aws.resource.cache_clear()
    container.use(None)


class Api:
    """The local API front over HTTP, in this process, for one team's token."""

    def __init__(self) -> None:
        from controlplane.handlers import api, authorizer

        self.front = LocalHttpApi(LocalApiGateway(api.handler, authorizer.handler, api.PUBLIC_ROUTES)).start()

    def call(self, method: str, path: str, token: str, body: bytes | None = None) -> tuple[int, bytes]:
        request = urllib.request.Request(  # noqa: S310 - the loopback API front
            self.front.url + path,
            data=body,
            method=method,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()


def _job(team: str, provider: str, region: str, status: JobStatus, instance_id: str | None, age: float) -> Job:
    now = utcnow()
    created = now - dt.timedelta(seconds=age)
    fields: dict[str, Any] = {
        "job_id": f"job-{uuid.uuid4().hex[:20]}",
        "team_id": team,
        "provider_id": provider,
        "region": region,
        "name": "scale",
        "spec": TaskSpec(run="python train.py"),
        "status": status,
        "instance_type": "c7i.large",
        "hourly_price": 0.08925,
        "created_at": created,
        "updated_at": created,
    }
    if instance_id:
        fields |= {
            "instance_id": instance_id,
            "instance_state": "running",
            "launched_at": created,
            "deadline_at": now + dt.timedelta(hours=12),
        }
        if "relay_lease_until" in Job.model_fields:  # a healthy relay loop holds the lease
            fields |= {"relay_owner": "bench", "relay_lease_until": now + dt.timedelta(minutes=10)}
    if status.terminal:
        fields |= {"ended_at": created + dt.timedelta(minutes=5)}
    return Job.model_validate(fields)


def _put_jobs(jobs: list[Job], table: str) -> None:
    """Through the real adapter (DynamoJobStore.create), four writers at a time."""
    from controlplane.adapters.dynamodb import DynamoJobStore

    def write(part: list[Job]) -> None:
        store = DynamoJobStore(boto3.session.Session().resource("dynamodb").Table(table))
        for job in part:
            store.create(job)

    parts = [jobs[i::4] for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(write, parts))


def _run_instances(key: tuple[str, str], team: str, provider: str, region: str, count: int) -> list[str]:
    """RunInstances in batches, tagged as the launch tags them (team, provider, managed-by)."""
    ec2 = boto3.session.Session(aws_access_key_id=key[0], aws_secret_access_key=key[1], region_name=region).client(
        "ec2"
    )
    image = ec2.describe_images(Owners=["099720109477"])["Images"][0]["ImageId"]
    tags = provisioning.team_tags(team, provider)
    ids: list[str] = []
    while len(ids) < count:
        batch = min(BATCH, count - len(ids))
        reservation = ec2.run_instances(
            ImageId=image,
            InstanceType="c7i.large",
            MinCount=batch,
            MaxCount=batch,
            TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
        )
        ids += [i["InstanceId"] for i in reservation["Instances"]]
    return ids


def _tag_jobs(key: tuple[str, str], region: str, pairs: list[tuple[str, str]]) -> None:
    ec2 = boto3.session.Session(aws_access_key_id=key[0], aws_secret_access_key=key[1], region_name=region).client(
        "ec2"
    )
    for instance_id, job_id in pairs:
        ec2.create_tags(Resources=[instance_id], Tags=[{"Key": provisioning.JOB_TAG, "Value": job_id}])


def _list_latency(api: Api, token: str, requests: int) -> tuple[list[float], list[float]]:
    """GET /jobs over HTTP: each request's seconds, and the seconds it spent inside its DynamoDB calls."""
    times, in_aws = [], []
    for _ in range(requests):
        with CallClock() as clock:
            started = time.perf_counter()
            status, body = api.call("GET", "/jobs?limit=50", token)
            times.append(time.perf_counter() - started)
        in_aws.append(clock.seconds)
        if status != 200:
            raise RuntimeError(f"GET /jobs answered {status}: {body[:200]!r}")
    return times, in_aws


def run(active: int = 1000, total: int = 10_000, requests: int = 30) -> tuple[list[Figure], dict[str, Any]]:
    guard.check_environment()
    guard.install_network_guard()
    with tempfile.TemporaryDirectory(prefix="ec2jobs-scale-") as tmp:
        path = Path(tmp) / "requests.jsonl"
        saved = dict(os.environ)
        Recorder.configure(path)
        emu = emulator.start()
        try:
            guard.apply_isolated_environment(emu.info.endpoint)
            boto3.setup_default_session()
            return _run(Recorder(emu.info.endpoint, path), emu.info.endpoint, active, total, requests)
        finally:
            emu.stop()
            os.environ.clear()
            os.environ.update(saved)
            _reset_process()
            boto3.setup_default_session()


def _run(
    recorder: Recorder, endpoint: str, active: int, total: int, requests: int
) -> tuple[list[Figure], dict[str, Any]]:
    names = ControlPlaneNames(PREFIX)
    create_tables(boto3.client("dynamodb"), names)
    quiet = {"POWERTOOLS_METRICS_DISABLED": "true", "POWERTOOLS_LOG_LEVEL": "WARNING"}
    os.environ.update(names.environment() | quiet | {"AWS_REGION": REGIONS[0], "PROVIDER_ENDPOINT_URL": endpoint})
    _reset_process()
    from controlplane.adapters.dynamodb import DynamoBootstrapCache
    from controlplane.handlers import container

    api = Api()
    try:
        teams: list[tuple[str, str, str, tuple[str, str]]] = []  # (team, token, provider, keys)
        for index in range(PROVIDERS):
            team = f"scale-{index}"
            token = container.get().teams.issue_token(team)
            key = runtime.create_provider_user(f"scale-provider-{index}")
            body = {"name": f"p{index}", "region": REGIONS[0], "access_key_id": key[0], "secret_access_key": key[1]}
            status, answer = api.call("POST", "/providers", token, json.dumps(body).encode())
            if status != 201:
                raise RuntimeError(f"POST /providers answered {status}")
            provider = str(json.loads(answer)["provider_id"])
            cache = DynamoBootstrapCache(boto3.resource("dynamodb").Table(names.table("state")))
            for region in REGIONS:
                cache.put(
                    BootstrapRecord(
                        provider_id=provider,
                        team_id=team,
                        region=region,
                        security_group_id="sg-0123456789abcdef0",
                        key_name=f"transformerlab-{team}",
                        instance_profile_name=f"transformerlab-ec2-profile-{team}",
                        instance_profile_arn=f"arn:aws:iam::123456789012:instance-profile/transformerlab-ec2-profile-{team}",
                        role_name=f"transformerlab-ec2-role-{team}",
                        created_at=utcnow(),
                    )
                )
            teams.append((team, token, provider, key))

        places = [(t, r) for t in teams for r in REGIONS]
        per_place = [active // len(places) + (1 if i < active % len(places) else 0) for i in range(len(places))]
        seeded = time.perf_counter()
        active_jobs: list[Job] = []
        for ((team, _, provider, key), region), count in zip(places, per_place, strict=True):
            ids = _run_instances(key, team, provider, region, count)
            jobs = [_job(team, provider, region, JobStatus.RUNNING, i, 600) for i in ids]
            _tag_jobs(key, region, [(j.instance_id or "", j.job_id) for j in jobs])
            active_jobs += jobs
        _put_jobs(active_jobs, names.table("jobs"))
        ended = [
            _job(teams[i % PROVIDERS][0], teams[i % PROVIDERS][2], REGIONS[0], JobStatus.SUCCEEDED, None, 3600 + i)
            for i in range(max(0, total - active))
        ]
        first_token = teams[0][1]
        _put_jobs(ended[:100], names.table("jobs"))
        small, small_aws = _list_latency(api, first_token, requests)  # 100 ended jobs + the active ones
        _put_jobs(ended[100:], names.table("jobs"))
        seed_seconds = time.perf_counter() - seeded

        recorder.start()
        sweeps: list[tuple[float, list[Op], dict[str, Any]]] = []
        sweep_aws: list[float] = []
        for _ in range(2):
            container.use(None)  # a fresh container: a cold Lambda's first sweep, then a warm one
            mark = recorder.mark()
            with CallClock() as clock:
                started = time.perf_counter()
                report = container.reconciler().run()
                seconds = time.perf_counter() - started
            sweep_aws.append(clock.seconds)
            time.sleep(0.05)
            summary = {"described": report.described, "finalized": len(report.finalized), "errors": report.errors}
            sweeps.append((seconds, recorder.since(mark), summary))
        mark = recorder.mark()
        large, large_aws = _list_latency(api, first_token, requests)
        time.sleep(0.05)
        listing_ops = recorder.since(mark)
        recorder.stop()
        recorder.close()
    finally:
        api.front.stop()

    key_to_provider = {t[3][0]: t[2] for t in teams}
    describe = Counter(
        (key_to_provider.get(op.key_id, op.key_id), op.region)
        for op in sweeps[-1][1]
        if op.operation == "DescribeInstances"
    )
    expected = {(t[2], r): math.ceil(n / 1000) for ((t, r), n) in zip(places, per_place, strict=True)}
    worst = max((describe.get(place, 0) - bound for place, bound in expected.items()), default=0)
    all_ops = [op for _, ops, _ in sweeps for op in ops] + listing_ops
    dynamodb = Counter(op.operation for op in all_ops if op.service == "dynamodb")
    small_p50, large_p50 = statistics.median(small), statistics.median(large)
    own_small = statistics.median(t - a for t, a in zip(small, small_aws, strict=True))
    own_large = statistics.median(t - a for t, a in zip(large, large_aws, strict=True))
    ordered = sorted(large)
    p99 = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
    sweep_seconds = sweeps[-1][0]
    figures = [
        Figure(
            SECTION,
            f"reconcile sweep: DescribeInstances ({len(places)} provider-regions, {active} active)",
            float(sum(describe.values())),
            "calls",
            ("<=", float(sum(expected.values()))),
            f"per provider-region: max {max(describe.values(), default=0)}; "
            f"{'each within' if worst <= 0 else 'over'} ⌈active/1000⌉",
        ),
        Figure(
            SECTION,
            "reconcile sweep time (warm)",
            sweep_seconds,
            "s",
            note=f"{sweep_aws[-1]:.1f} s in its {len(sweeps[-1][1])} AWS calls; cold container {sweeps[0][0]:.1f} s",
        ),
        Figure(
            SECTION,
            f"GET /jobs (50 per page), {total} jobs in the table, p50",
            large_p50 * 1000,
            "ms",
            note=f"{statistics.median(large_aws) * 1000:.0f} ms inside its DynamoDB calls (the emulator)",
        ),
        Figure(SECTION, "… p99", p99 * 1000, "ms"),
        Figure(
            SECTION,
            f"… p50 vs {active + 100} jobs in the table",
            large_p50 / small_p50,
            "×",
            note=f"without the DynamoDB calls: {own_large / own_small:.2f}× ({own_large * 1000:.0f} ms)",
        ),
        Figure(
            SECTION,
            "DynamoDB Scan operations (sweeps + listings)",
            float(dynamodb.get("Scan", 0)),
            "ops",
            ("<=", 0.0),
            ", ".join(f"{name} {n}" for name, n in sorted(dynamodb.items())),
        ),
    ]
    details = {
        "active": active,
        "total_jobs": total,
        "places": {f"{p}/{r}": n for ((t, r), n) in zip(places, per_place, strict=True) for p in [t[2]]},
        "describe_instances_per_place": {f"{p}/{r}": n for (p, r), n in describe.items()},
        "sweeps": [
            {"seconds": round(s, 3), "operations": dict(Counter(op.name for op in ops)), "report": summary}
            for s, ops, summary in sweeps
        ],
        "list_seconds_small": [round(x, 4) for x in small],
        "list_seconds_large": [round(x, 4) for x in large],
        "list_seconds_in_dynamodb_small": [round(x, 4) for x in small_aws],
        "list_seconds_in_dynamodb_large": [round(x, 4) for x in large_aws],
        "sweep_seconds_in_aws_calls": [round(x, 3) for x in sweep_aws],
        "listing_operations": dict(Counter(op.name for op in listing_ops)),
        "seed_seconds": round(seed_seconds, 1),
    }
    return figures, details


def main(argv: list[str] | None = None) -> None:
    from bench import __main__ as entry

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--active", type=int, default=1000)
    parser.add_argument("--total", type=int, default=10_000)
    args = parser.parse_args(argv)
    entry.main(["--only", "scale", "--active", str(args.active), "--total", str(args.total)])


if __name__ == "__main__":
    main()
