"""Launch overhead: from `POST /jobs` accepted (202 received) to RunInstances issued (the request reaching the
emulator), through the full local chain — the API front, Step Functions running the deployed definition, the
Validate and Launch Lambdas (and Bootstrap between them for a team's first launch: a warm launch skips it) —
against the same AWS calls made directly on the same emulator.

The direct baseline is not a hand-written imitation: it is the chain's own AWS requests of that window (from the
emulator's request log, without the Lambda invocations), sent again one after another from this process with
botocore, for a copy of the job (its id swapped, so the conditional writes succeed as they did) and with the
instance tagged so the simulator leaves it alone (it is terminated afterwards). For a team's first launch
(bootstrap) the team's resources are deleted before the replay, so the replay creates them again, as the chain did.
Chain and direct samples alternate, so the machine's noise hits both alike.

    python -m bench.launch [--jobs 20] [--bootstraps 2]
"""

from __future__ import annotations

import argparse
import itertools
import re
import secrets
import statistics
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

from bench.awsops import BASELINE_AGENT, Op, Replayer
from bench.plane import TERMINAL, Session
from bench.report import Figure
from controlplane.core.provisioning import MANAGED_BY_TAG, TeamResources
from local import runtime

SECTION = "1 launch"
TARGET_RATIO = 1.3
JOB = {"name": "bench-launch", "run": "true"}
STEPS = ("validate", "bootstrap", "launch")
_KEEP = {
    "job_id", "team_id", "provider_id", "region", "name", "spec", "instance_type", "hourly_price", "use_spot",
    "notes", "request_hash", "created_at", "updated_at", "execution_arn", "source", "version",
}  # fmt: skip
_INSTANCE_ID = re.compile(r"<instanceId>(i-[0-9a-f]+)</instanceId>")


@dataclass
class Sample:
    job_id: str
    chain: float
    direct: float = 0.0
    calls: int = 0
    segments: dict[str, float] = field(default_factory=dict)
    operations: list[str] = field(default_factory=list)


def _is_run_instances(op: Op) -> bool:
    return op.operation == "RunInstances" and not op.by_bench


def chain_launch(session: Session, provider_id: str, token: str | None = None) -> tuple[Sample, list[Op]]:
    """Submit a job over HTTP; time accepted → RunInstances; return the sample and the workflow's AWS requests up
    to RunInstances (without the API's own, which are tagged, and without Step Functions' Lambda invocations)."""
    before = session.recorder.mark()
    status, body = session.call("POST", "/jobs", JOB | {"provider_id": provider_id}, token)
    accepted = time.time()
    if status != 202:
        raise RuntimeError(f"POST /jobs answered {status}: {body}")
    run = session.recorder.wait_for(before, _is_run_instances, timeout=120)
    if run is None:
        raise RuntimeError(f"job {body['job_id']} issued no RunInstances within 120 s")
    window = [op for op in session.recorder.since(before) if not (op.by_bench or op.by_api)]
    window = window[: window.index(run) + 1]
    sample = Sample(str(body["job_id"]), run.seen_at - accepted)
    invoked = {op.function.removeprefix(f"{runtime.PREFIX}-"): op.seen_at for op in window if op.operation == "Invoke"}
    points = (
        [("accepted", accepted)] + [(s, invoked[s]) for s in STEPS if s in invoked] + [("RunInstances", run.seen_at)]
    )
    sample.segments = {f"{a}→{b}": end - start for (a, start), (b, end) in itertools.pairwise(points)}
    calls = [op for op in window if op.service not in {"lambda", "states"}]
    if not calls or calls[-1].operation != "RunInstances":
        raise RuntimeError("the launch window does not end with RunInstances")
    sample.calls = len(calls)
    sample.operations = [op.name for op in calls]
    return sample, calls


def _finish(session: Session, job_id: str, token: str | None = None, timeout: float = 120.0) -> None:
    """End the sample's job quickly so the next one starts quiet: cancel it once its instance is up. Not sooner: the
    instance simulator (local/simulator.py) looks for new instances every 0.2 s, and one terminated before it was
    seen never sends its state changes, so the job would wait for a reconciler sweep, which the benchmark does not
    run on a timer (bench/plane.py)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        item = session.job(job_id)
        ended = item.get("status", {}).get("S") in TERMINAL
        if ended or item.get("instance_state", {}).get("S") not in {None, "pending"}:
            break
        time.sleep(0.05)
    else:
        raise TimeoutError(f"job {job_id}: its instance did not come up within {timeout:.0f} s")
    session.cancel(job_id, token)
    session.wait_done(job_id)


def _swap_job(body: str, old: str, new: str) -> str:
    return body.replace(old, new)


def _untagged_run(body: str, attempt: str) -> str:
    """The RunInstances form with the managed-by tag changed (the simulator ignores the instance) and its own
    ClientToken (so EC2 does not answer with the chain's instance)."""
    pairs = parse_qsl(body, keep_blank_values=True)
    managed = {key.rsplit(".", 1)[0] for key, value in pairs if key.endswith(".Key") and value == MANAGED_BY_TAG}
    changed = []
    for key, value in pairs:
        if key.endswith(".Value") and key.rsplit(".", 1)[0] in managed:
            value = "ec2jobs-bench"
        elif key == "ClientToken":
            value = f"{value[:56]}{attempt}"[:64]
        changed.append((key, value))
    return urlencode(changed)


def _copy_job(session: Session, job_id: str, copy_id: str) -> None:
    """A PENDING copy of the job under another id (what the chain's job was when it was accepted)."""
    item = session.job(job_id)
    copy = {k: v for k, v in item.items() if k in _KEEP}
    team, provider, region = item["team_id"]["S"], item["provider_id"]["S"], item["region"]["S"]
    copy |= {
        "job_id": {"S": copy_id},
        "status": {"S": "PENDING"},
        "team_status": {"S": f"{team}#PENDING"},
        "active": {"S": "ACTIVE"},
        "active_sk": {"S": f"{provider}#{region}#{copy_id}"},
    }
    session.client("dynamodb").put_item(TableName=session.table_name("jobs"), Item=copy)


def _forget_team_resources(session: Session, team_id: str, provider_id: str, region: str = "us-east-1") -> None:
    """Delete what the chain's bootstrap created, so that replaying its requests creates it all again."""
    names = TeamResources("transformerlab", team_id)
    ec2, iam = session.client("ec2"), session.client("iam")
    for group in ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": [names.security_group]}])[
        "SecurityGroups"
    ]:
        ec2.delete_security_group(GroupId=group["GroupId"])
    ec2.delete_key_pair(KeyName=names.key_pair)
    iam.remove_role_from_instance_profile(InstanceProfileName=names.instance_profile, RoleName=names.role)
    iam.delete_instance_profile(InstanceProfileName=names.instance_profile)
    for policy in iam.list_role_policies(RoleName=names.role)["PolicyNames"]:
        iam.delete_role_policy(RoleName=names.role, PolicyName=policy)
    iam.delete_role(RoleName=names.role)
    session.client("secretsmanager").delete_secret(
        SecretId=f"ec2jobs/teams/{team_id}/ssh-key", ForceDeleteWithoutRecovery=True
    )
    session.client("dynamodb").delete_item(
        TableName=session.table_name("state"),
        Key={"pk": {"S": f"PROVIDER#{provider_id}"}, "sk": {"S": f"BOOTSTRAP#{region}"}},
    )


def direct_launch(session: Session, sample: Sample, calls: list[Op]) -> float:
    """Replay the window's AWS calls for a copy of the job; seconds from the first call to RunInstances issued."""
    copy_id = "job-" + secrets.token_hex(10)
    _copy_job(session, sample.job_id, copy_id)
    bodies = [_swap_job(op.body, sample.job_id, copy_id) for op in calls]
    bodies[-1] = _untagged_run(bodies[-1], "d" + secrets.token_hex(3))
    replayer = Replayer(session.keys)
    mark = session.recorder.mark()
    started = time.time()
    answer = ""
    for op, body in zip(calls, bodies, strict=True):
        _, answer = replayer.send(op, body)
    seen = session.recorder.wait_for(
        mark, lambda op: op.operation == "RunInstances" and BASELINE_AGENT in op.agent, timeout=30
    )
    if seen is None:
        raise RuntimeError("the replayed RunInstances never reached the emulator")
    for instance_id in _INSTANCE_ID.findall(answer):
        session.client("ec2").terminate_instances(InstanceIds=[instance_id])
    session.client("dynamodb").delete_item(TableName=session.table_name("jobs"), Key={"job_id": {"S": copy_id}})
    return seen.seen_at - started


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def run(session: Session, provider_id: str, jobs: int = 20, bootstraps: int = 2) -> tuple[list[Figure], dict[str, Any]]:
    """`provider_id`'s team has launched before (bench.plane.warm_up): these are warm launches."""
    warm: list[Sample] = []
    for _ in range(jobs):
        sample, calls = chain_launch(session, provider_id)
        _finish(session, sample.job_id)
        sample.direct = direct_launch(session, sample, calls)
        warm.append(sample)
    cold: list[Sample] = []
    for index in range(bootstraps):
        team = f"bench-boot-{index}-{uuid.uuid4().hex[:6]}"
        token = session.new_team(team)
        team_provider = session.add_provider(token)
        sample, calls = chain_launch(session, team_provider, token)
        _finish(session, sample.job_id, token)
        _forget_team_resources(session, team, team_provider)
        sample.direct = direct_launch(session, sample, calls)
        cold.append(sample)

    chain, direct = median([s.chain for s in warm]), median([s.direct for s in warm])
    boot_chain, boot_direct = median([s.chain for s in cold]), median([s.direct for s in cold])
    names = dict.fromkeys(name for s in warm for name in s.segments)
    segments = {name: median([s.segments[name] for s in warm if name in s.segments]) for name in names}
    note = f"{jobs} jobs; {warm[0].calls if warm else 0} AWS calls each"
    figures = [
        Figure(SECTION, "POST /jobs accepted → RunInstances, full chain (median)", chain * 1000, "ms", note=note),
        Figure(SECTION, "the same AWS calls made directly (median)", direct * 1000, "ms"),
        Figure(SECTION, "chain / direct", chain / direct if direct else None, "×", ("<=", TARGET_RATIO)),
        Figure(SECTION, "first launch of a new team (bootstrap), chain (median)", boot_chain * 1000, "ms"),
        Figure(SECTION, "… its AWS calls made directly (median)", boot_direct * 1000, "ms"),
        Figure(SECTION, "… bootstrap chain / direct", boot_chain / boot_direct if cold else None, "×"),
    ]
    details = {
        "jobs": jobs,
        "bootstraps": bootstraps,
        "chain_seconds": [round(s.chain, 4) for s in warm],
        "direct_seconds": [round(s.direct, 4) for s in warm],
        "bootstrap_chain_seconds": [round(s.chain, 4) for s in cold],
        "bootstrap_direct_seconds": [round(s.direct, 4) for s in cold],
        "segments_median_seconds": {k: round(v, 4) for k, v in segments.items()},
        "calls": warm[0].operations if warm else [],
        "bootstrap_calls": cold[0].operations if cold else [],
        "new_boto3_session_ec2_client_seconds": round(_new_session_client_seconds(), 4),
    }
    return figures, details


def _new_session_client_seconds(samples: int = 3) -> float:
    """What building an EC2 client in a fresh boto3 Session costs here (adapters/aws.py provider_client does it
    on every call): the median of a few."""
    import boto3

    times = []
    for _ in range(samples):
        started = time.perf_counter()
        session = boto3.session.Session(region_name="us-east-1")
        session.client("ec2", endpoint_url="http://127.0.0.1:9")
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    from bench import __main__ as entry

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--bootstraps", type=int, default=2)
    args = parser.parse_args(argv)
    entry.main(["--only", "launch", "--launch-jobs", str(args.jobs), "--bootstraps", str(args.bootstraps)])


if __name__ == "__main__":
    main()
