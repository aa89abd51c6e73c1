"""Log relay: sustained throughput and end-to-end latency.

- Throughput: the relay (SSH `tail -F` → chunks → the emulator's DynamoDB) streaming a ≥ 200 MB output file from a
  real OpenSSH sshd on loopback, against a plain paramiko `cat` of the same file written into the same table with
  the same chunking (flush size, chunk size, a commit per flush); targets ≥ 20 MB/s and ≥ 0.5× the baseline.
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
import statistics
import tempfile
import time
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
from local import emulator, guard, sshd

SECTION = "2 log relay"
LATENCY_JOB = """python3 - <<'EOF'
import time
time.sleep(2)
end = time.time() + {seconds}
while time.time() < end:
    print(f"t={{time.time():.6f}} step loss=0.1234", flush=True)
    time.sleep(0.02)
EOF"""


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


def throughput(megabytes: int) -> tuple[list[Figure], dict[str, Any]]:
    """Relay vs plain cat, same file, same table, same chunking, on a fresh emulator and a real sshd."""
    guard.check_environment()
    guard.install_network_guard()
    emu = emulator.start()
    try:
        guard.apply_isolated_environment(emu.info.endpoint)
        boto3.setup_default_session()
        boto3.client("dynamodb").create_table(**LOGS.create_table_kwargs("bench-logs"))
        logs = DynamoLogStore(boto3.resource("dynamodb").Table("bench-logs"))
        return _throughput(megabytes, logs)
    finally:
        emu.stop()


def _throughput(megabytes: int, logs: DynamoLogStore) -> tuple[list[Figure], dict[str, Any]]:
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
            line = b"step 000000 loss=0.123456 lr=0.000300 tokens/s=123456.7 " + b"x" * 60 + b"\n"
            block = (line * (1024 * 1024 // len(line) + 1))[: 1024 * 1024]
            with (state / "output.log").open("wb") as out:
                for _ in range(megabytes):
                    out.write(block)
            size = (state / "output.log").stat().st_size
            write_result(state)
            new_job(jobs, "job-throughput", host.public_openssh)
            started = time.perf_counter()
            outcome = relay.relay("job-throughput")
            relay_seconds = time.perf_counter() - started
            if not outcome.finished:
                raise RuntimeError(f"the relay did not finish: {outcome}")
            stored = logchunks.assemble(logs.chunks("job-throughput", 0, size + 1), 0, size + 1)
            if stored != (state / "output.log").read_bytes():
                raise RuntimeError("relayed bytes differ from the file")
            del stored
            remote = Remote("127.0.0.1", server.port, getpass.getuser())
            cat_seconds = baseline_cat(remote, team, host, logs, "job-baseline", settings)
        finally:
            server.stop()
    relay_rate, cat_rate = size / relay_seconds / 1e6, size / cat_seconds / 1e6
    note = f"{size / 1e6:.0f} MB file; relay {relay_seconds:.1f} s, cat {cat_seconds:.1f} s"
    figures = [
        Figure(SECTION, "throughput: relay (tail -F → chunks → DynamoDB)", relay_rate, "MB/s", (">=", 20.0), note),
        Figure(SECTION, "throughput: paramiko cat → the same writes", cat_rate, "MB/s"),
        Figure(SECTION, "relay / cat", relay_rate / cat_rate, "×", (">=", 0.5)),
    ]
    details = {
        "bytes": size,
        "relay_seconds": round(relay_seconds, 3),
        "cat_seconds": round(cat_seconds, 3),
        "flush_bytes": RelaySettings().flush_bytes,
        "chunk_bytes": RelaySettings().chunk_bytes,
    }
    return figures, details


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


def main(argv: list[str] | None = None) -> None:
    from bench import __main__ as entry

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=int, default=200)
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    entry.main(["--only", "relay", "--megabytes", str(args.megabytes), "--latency-seconds", str(args.latency_seconds)])


if __name__ == "__main__":
    main()
