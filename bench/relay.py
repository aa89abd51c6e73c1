"""Log relay: sustained throughput and end-to-end latency.

- Throughput: the relay (SSH `tail -F` → chunks → the emulator's DynamoDB) streaming a ≥ 200 MB output file of
  training-log-like text from a real OpenSSH sshd on loopback, with DynamoDB's per-partition write limit enforced
  by the emulator (1,000 WCU/s per partition key value, local/ddb_partitions.py): target ≥ 10 MB/s per job, and the
  same for incompressible output; for comparison the same with the limit off (moto unlimited: not an AWS figure),
  and a plain paramiko `cat` of the file into the same table with the same chunking (≥ 0.5× that baseline).
- Latency: on the embedded control plane, a job on a simulated instance prints a timestamped line every 20 ms; the
  benchmark follows `GET /jobs/{id}/logs` over HTTP (the API front, the authorizer, the api Lambda) every 20 ms and
  takes, for each line, the time it first came back minus the time it was written; targets p50 ≤ 1 s, p99 ≤ 3 s.

    python -m bench.relay [--megabytes 200] [--latency-seconds 10]
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import math
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import paramiko

from bench.plane import Session
from bench.report import Figure
from controlplane.adapters.logs import DynamoLogStore
from controlplane.adapters.schema import LOGS
from controlplane.adapters.ssh import STATE_DIR, Remote, SshConnector
from controlplane.core import logchunks, sshkeys
from controlplane.core.errors import TransitionRefused
from controlplane.core.lifecycle import JobStatus
from controlplane.core.models import Job
from controlplane.core.ports import TeamKey
from controlplane.core.spec import TaskSpec
from controlplane.service.relay import Located, RelayService, RelaySettings
from controlplane.service.relay_pages import PageWriter
from local import ddb_partitions, emulator, guard, sshd

SECTION = "2 log relay"
LATENCY_JOB = """python3 - <<'EOF'
import time
time.sleep(2)
end = time.time() + {seconds}
while time.time() < end:
    print(f"t={{time.time():.6f}} step loss=0.1234", flush=True)
    time.sleep(0.02)
EOF"""


FIRST_LINE_JOB = "python3 -c 'import time; print(f\"t={time.time():.6f} first\", flush=True); time.sleep(1)'"


class Jobs:
    """An in-memory job store (the relay only reads the job, moves its status and records its address)."""

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    def transition(self, job_id: str, target: JobStatus, **kwargs: Any) -> Job:
        job = self.jobs[job_id]
        if job.status.terminal:
            raise TransitionRefused(job_id, job.status, target)
        fields = dict(kwargs.get("fields") or {})
        self.jobs[job_id] = job.model_copy(update=fields | {"status": target})
        return self.jobs[job_id]

    def update(self, job_id: str, fields: dict[str, Any], **_: Any) -> Job:
        """Non-status fields (the relay records the address it reached the instance at)."""
        self.jobs[job_id] = self.jobs[job_id].model_copy(update=fields)
        return self.jobs[job_id]


class Secrets:
    def __init__(self, key: TeamKey) -> None:
        self.key = key

    def team_key(self, team_id: str) -> TeamKey:
        return self.key


class Locator:
    def locate(self, job: Job) -> Located:
        return Located("127.0.0.1", "running")


def new_job(jobs: Jobs, job_id: str, host_public: str) -> None:
    now = dt.datetime.now(dt.UTC)
    jobs.jobs[job_id] = Job(
        job_id=job_id,
        team_id="bench",
        provider_id="prov-bench",
        region="us-east-1",
        spec=TaskSpec(run="python train.py"),
        status=JobStatus.RUNNING,
        instance_type="c7i.large",
        ssh_host_key=host_public,
        created_at=now,
        updated_at=now,
    )


def write_result(state: Path) -> None:
    (state / "result.tmp").write_text(f"phase=run\nexit_code=0\nreason=SUCCEEDED\nfinished_at={int(time.time())}\n")
    (state / "result.tmp").rename(state / "result")


def baseline_cat(
    remote: Remote, team: TeamKey, host: sshkeys.KeyPair, logs: DynamoLogStore, job_id: str, settings: RelaySettings
) -> float:
    """A plain paramiko `cat` of the file, written into the same table with the same chunking (flush size, chunk
    size, a commit per flush)."""
    session = SshConnector().connect(remote, team.private_openssh, host.public_openssh)
    started = time.perf_counter()
    _, stdout, _ = session.client.exec_command(f"cat {STATE_DIR}/output.log")
    offset = 0
    pending = bytearray()
    channel: paramiko.Channel = stdout.channel
    while True:
        data = channel.recv(settings.recv_bytes)
        if data:
            pending += data
        if len(pending) >= settings.flush_bytes or (not data and pending):
            logs.write(job_id, logchunks.cut(offset, bytes(pending), settings.chunk_bytes))
            offset += len(pending)
            logs.commit(job_id, offset)
            pending.clear()
        if not data:
            break
    elapsed = time.perf_counter() - started
    session.close()
    return elapsed


def log_block(size: int = 4 * 1024 * 1024, seed: int = 11) -> bytes:
    """Training-log-like lines whose numbers vary (they compress like real logs do, about 3-4× with zlib level 1,
    not like one repeated line). A block this large repeats beyond zlib's 32 KB window, so repeating it is fair."""
    rng = random.Random(seed)
    out = bytearray()
    step = 0
    while len(out) < size:
        out += (
            f"{step:07d} step loss={rng.random() * 4:.6f} lr={rng.random() / 1000:.8f} "
            f"grad_norm={rng.random() * 10:.4f} tokens/s={rng.randint(10_000, 99_999)} mem={rng.randint(1, 80)}GB\n"
        ).encode()
        step += 1
    return bytes(out[:size])


def throughput(megabytes: int) -> tuple[list[Figure], dict[str, Any]]:
    """The relay with DynamoDB's per-partition write limit on (the emulator's default) for log text and for
    incompressible output, against the same with the limit off and a plain `cat` of the same file; each on a fresh
    emulator and a real sshd."""
    guard.check_environment()
    guard.install_network_guard()
    text = log_block()
    runs: dict[str, dict[str, Any]] = {}
    runs["on"] = _on_emulator(None, lambda logs: _throughput(megabytes, logs, text, baseline=True))
    runs["noise"] = _on_emulator(None, lambda logs: _throughput(max(8, megabytes // 4), logs, None))
    runs["off"] = _on_emulator("0", lambda logs: _throughput(megabytes, logs, text))
    on, noise = runs["on"], runs["noise"]
    rate = {name: run["bytes"] / run["relay_seconds"] / 1e6 for name, run in runs.items()}
    cat_rate = on["bytes"] / on["cat_seconds"] / 1e6
    limit = f"limit on: {ddb_partitions.DEFAULT_WCU_PER_SECOND:.0f} WCU/s per partition key"
    figures = [
        Figure(SECTION, "throughput per job: log text, partition limit on", rate["on"], "MB/s", (">=", 10.0),
               f"{on['bytes'] / 1e6:.0f} MB; {limit}; {logchunks.PARTITIONS} partitions, zlib"),
        Figure(SECTION, "… incompressible output, partition limit on", rate["noise"], "MB/s", (">=", 10.0),
               f"{noise['bytes'] / 1e6:.0f} MB of random bytes (stored raw)"),
        Figure(SECTION, "… log text, partition limit off (moto unlimited)", rate["off"], "MB/s"),
        Figure(SECTION, "… paramiko cat → the same writes, limit on", cat_rate, "MB/s"),
        Figure(SECTION, "relay / cat", rate["on"] / cat_rate, "×", (">=", 0.5)),
    ]  # fmt: skip
    details = {
        "runs": runs,
        "partition_wcu_per_second": ddb_partitions.DEFAULT_WCU_PER_SECOND,
        "partitions_per_job": logchunks.PARTITIONS,
        "span_bytes": logchunks.SPAN_BYTES,
        "flush_bytes": RelaySettings().flush_bytes,
        "chunk_bytes": RelaySettings().chunk_bytes,
    }
    return figures, details


def _on_emulator(partition_wcu: str | None, measure: Callable[[DynamoLogStore], dict[str, Any]]) -> dict[str, Any]:
    """Run `measure` against a fresh emulator; `partition_wcu` "0" switches the per-partition limit off."""
    env = {ddb_partitions.ENV: partition_wcu} if partition_wcu is not None else {}
    emu = emulator.start(env=env)
    try:
        guard.apply_isolated_environment(emu.info.endpoint)
        boto3.setup_default_session()
        boto3.client("dynamodb").create_table(**LOGS.create_table_kwargs("bench-logs"))
        return measure(DynamoLogStore(boto3.resource("dynamodb").Table("bench-logs")))
    finally:
        emu.stop()


def _throughput(megabytes: int, logs: DynamoLogStore, block: bytes | None, baseline: bool = False) -> dict[str, Any]:
    """Relay a `megabytes` output file (repeated `block`, or random bytes when None); optionally the cat baseline."""
    team_pair, host = sshkeys.generate("bench-team"), sshkeys.generate("bench-host")
    team = TeamKey(team_pair.private_openssh, team_pair.public_openssh, sshkeys.new_seed())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        state = root / "var/lib/ec2jobs"
        (state / "relay").mkdir(parents=True)
        (root / "etc/ssh").mkdir(parents=True)
        (root / "etc/ssh/ssh_host_ed25519_key").write_text(host.private_openssh)
        (root / "etc/ssh/ssh_host_ed25519_key").chmod(0o600)
        home = root / "home" / getpass.getuser() / ".ssh"
        home.mkdir(parents=True)
        (home / "authorized_keys").write_text(team.public_openssh + "\n")
        server = sshd.start(root)
        try:
            jobs = Jobs()
            settings = RelaySettings(ssh_user=getpass.getuser(), ssh_port=server.port, budget_seconds=600)
            relay = RelayService(jobs, logs, Secrets(team), Locator(), SshConnector(), settings)  # type: ignore[arg-type]
            with (state / "output.log").open("wb") as out:
                for _ in range(megabytes * 1024 * 1024 // len(block) if block else megabytes):
                    out.write(block if block else os.urandom(1024 * 1024))
            size = (state / "output.log").stat().st_size
            write_result(state)
            new_job(jobs, "job-throughput", host.public_openssh)
            pages = PageWriter(logs)  # as a relay shard relays: its small flushes would be paged
            started = time.perf_counter()
            try:
                outcome = relay.relay("job-throughput", pages=pages)
            finally:
                pages.close()
            relay_seconds = time.perf_counter() - started
            if not outcome.finished:
                raise RuntimeError(f"the relay did not finish: {outcome}")
            stored = logchunks.assemble(logs.chunks("job-throughput", 0, size + 1), 0, size + 1)
            if stored != (state / "output.log").read_bytes():
                raise RuntimeError("relayed bytes differ from the file")
            del stored
            run: dict[str, Any] = {"bytes": size, "relay_seconds": round(relay_seconds, 3)}
            if baseline:
                remote = Remote("127.0.0.1", server.port, getpass.getuser())
                run["cat_seconds"] = round(baseline_cat(remote, team, host, logs, "job-baseline", settings), 3)
        finally:
            server.stop()
    return run


def percentile(ordered: list[float], fraction: float) -> float:
    """The nearest-rank percentile of sorted values."""
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def latency(session: Session, provider_id: str, seconds: float = 10.0) -> tuple[list[Figure], dict[str, Any]]:
    """A job prints a timestamped line every 20 ms; follow GET /jobs/{id}/logs every 20 ms over HTTP."""
    task = {"name": "bench-latency", "run": LATENCY_JOB.format(seconds=seconds), "provider_id": provider_id}
    status, body = session.call("POST", "/jobs", task)
    if status != 202:
        raise RuntimeError(f"POST /jobs answered {status}: {body}")
    job_id = str(body["job_id"])
    running = session.wait_status(job_id, {"RUNNING", "SUCCEEDED", "FAILED"}, timeout=120)
    latencies: list[float] = []
    early = 0
    cursor, buffer, requests = "", "", 0
    end = time.monotonic() + seconds + 120
    while time.monotonic() < end:
        status, page = session.call("GET", f"/jobs/{job_id}/logs?after={cursor}")
        seen = time.time()
        requests += 1
        if status != 200:
            raise RuntimeError(f"GET logs answered {status}: {page}")
        buffer += page["text"]
        *lines, buffer = buffer.split("\n")
        for line in lines:
            if line.startswith("t="):
                written = float(line.split()[0][2:])
                if written < running:  # written before the relay's first connection: boot, not relay latency
                    early += 1
                else:
                    latencies.append(seen - written)
        cursor = page["next_cursor"]
        if page["complete"]:
            break
        time.sleep(0.02)
    session.wait_done(job_id)
    ordered = sorted(latencies)
    p50, p99 = statistics.median(ordered) if ordered else float("nan"), percentile(ordered, 0.99)
    note = f"{len(ordered)} lines, one per 20 ms, polled every 20 ms over HTTP"
    figures = [
        Figure(SECTION, "line written → visible via GET /jobs/{id}/logs, p50", p50, "s", ("<=", 1.0), note),
        Figure(SECTION, "… p99", p99, "s", ("<=", 3.0)),
    ]
    details = {
        "lines": len(ordered),
        "excluded_before_relay_connected": early,
        "max_seconds": round(ordered[-1], 3) if ordered else None,
        "requests": requests,
    }
    return figures, details


def first_line(session: Session, provider_id: str, jobs: int = 10) -> tuple[list[Figure], dict[str, Any]]:
    """Jobs whose first act is to print a timestamped line, submitted two at a time: how long after it was written the
    first line is visible through GET /jobs/{id}/logs (the relay's connect, the start bundle and the first flush all
    come before it), and how long after the instance was launched (EC2's LaunchTime)."""
    lags: list[float] = []
    since_launch: list[float] = []
    ec2 = session.client("ec2")

    def one(index: int) -> None:
        task = {"name": f"bench-first-line-{index}", "run": FIRST_LINE_JOB, "provider_id": provider_id}
        status, body = session.call("POST", "/jobs", task)
        if status != 202:
            raise RuntimeError(f"POST /jobs answered {status}: {body}")
        job_id = str(body["job_id"])
        end = time.monotonic() + 180
        while time.monotonic() < end:
            status, page = session.call("GET", f"/jobs/{job_id}/logs")
            seen = time.time()
            if status != 200:
                raise RuntimeError(f"GET logs answered {status}: {page}")
            if page["text"].startswith("t="):
                lags.append(seen - float(page["text"].split()[0][2:]))
                instance_id = session.job(job_id)["instance_id"]["S"]
                found = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
                since_launch.append(seen - found["LaunchTime"].timestamp())
                break
            time.sleep(0.02)
        else:
            raise RuntimeError(f"job {job_id}: no first line within 180 s")
        session.wait_done(job_id)

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(one, range(jobs)))
    ordered, launched = sorted(lags), sorted(since_launch)
    note = f"{len(ordered)} jobs, 2 at a time, logs polled every 20 ms over HTTP from submit on"
    figures = [
        Figure(SECTION, "first line written → visible, p95", percentile(ordered, 0.95), "s", ("<=", 2.0), note),
        Figure(SECTION, "instance launched → first line visible, p50 (boot, SSH, start bundle; informational)",
               statistics.median(launched), "s"),
    ]  # fmt: skip
    details = {
        "first_line_seconds": [round(x, 3) for x in ordered],
        "since_launch_seconds": [round(x, 3) for x in launched],
    }
    return figures, details


def main(argv: list[str] | None = None) -> None:
    from bench import __main__ as entry

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=int, default=200)
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    entry.main(["--only", "relay", "--megabytes", str(args.megabytes), "--latency-seconds", str(args.latency_seconds)])


if __name__ == "__main__":
    main()
