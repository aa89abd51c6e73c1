"""Log relay benchmark (issue 4's targets), measured on this machine in one run:

- throughput of the relay (SSH tail -F → chunks → the emulator's DynamoDB) vs a plain paramiko `cat` of the same
  file written into the same table with the same chunking; targets ≥ 20 MB/s and ≥ 0.5× the baseline;
- latency from a line written on the "instance" to the line being readable through the logs read path
  (JobService.logs, what GET /jobs/{id}/logs runs); targets p50 ≤ 1 s, p99 ≤ 3 s;
- the control-plane cost of relaying a quiet 1-hour job (measured writes per line, deployed budget and memory,
  AWS list prices); target ≤ $0.02.

    python -m bench.relay [--megabytes 64]
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import boto3
import paramiko

from controlplane.adapters.logs import DynamoLogStore
from controlplane.adapters.schema import LOGS
from controlplane.adapters.ssh import STATE_DIR, Remote, SshConnector
from controlplane.core import logchunks, sshkeys
from controlplane.core.errors import TransitionRefused
from controlplane.core.lifecycle import JobStatus
from controlplane.core.models import Job
from controlplane.core.ports import TeamKey
from controlplane.core.spec import TaskSpec
from controlplane.service.jobs import JobService
from controlplane.service.relay import Located, RelayService, RelaySettings
from local import emulator, guard, sshd

# AWS list prices, us-east-1 (2026): Lambda x86 per GB-second and per request; Step Functions Standard per state
# transition; DynamoDB on-demand per write request unit (1 KB).
LAMBDA_GB_SECOND = 0.0000166667
LAMBDA_REQUEST = 0.20 / 1_000_000
STATE_TRANSITION = 0.025 / 1000
WRITE_REQUEST_UNIT = 0.625 / 1_000_000
RELAY_MEMORY_GB = 0.25
TRANSITIONS_PER_RELAY_CALL = 2  # the relay Task and the Choice that loops back


class Jobs:
    """An in-memory job store (the relay only reads the job and moves its status)."""

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


class Secrets:
    def __init__(self, key: TeamKey) -> None:
        self.key = key

    def team_key(self, team_id: str) -> TeamKey:
        return self.key


class Locator:
    def locate(self, job: Job) -> Located:
        return Located("127.0.0.1", "running")


class CountingLogs(DynamoLogStore):
    def __init__(self, table: Any) -> None:
        super().__init__(table)
        self.items = 0
        self.kilobytes = 0
        self.commits = 0

    def write(self, job_id: str, chunks: list[tuple[int, bytes]]) -> None:
        self.items += len(chunks)
        self.kilobytes += sum(-(-len(data) // 1024) for _, data in chunks)
        super().write(job_id, chunks)

    def commit(self, job_id: str, committed: int, *, complete: bool = False) -> None:
        self.commits += 1
        super().commit(job_id, committed, complete=complete)


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


def reset(state: Path) -> None:
    for name in ("output.log", "result", "relay/drained"):
        (state / name).unlink(missing_ok=True)


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=int, default=64)
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    args = parser.parse_args(argv)

    guard.check_environment()
    guard.install_network_guard()
    emu = emulator.start()
    try:
        guard.apply_isolated_environment(emu.info.endpoint)
        boto3.setup_default_session()
        client = boto3.client("dynamodb")
        client.create_table(**LOGS.create_table_kwargs("bench-logs"))
        logs = CountingLogs(boto3.resource("dynamodb").Table("bench-logs"))
        run(args, logs)
    finally:
        emu.stop()


def run(args: argparse.Namespace, logs: CountingLogs) -> None:
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
            remote = Remote("127.0.0.1", server.port, getpass.getuser())

            # -- throughput ------------------------------------------------------------------------------
            line = b"step 000000 loss=0.123456 lr=0.000300 tokens/s=123456.7 " + b"x" * 60 + b"\n"
            block = line * (1024 * 1024 // len(line) + 1)
            with (state / "output.log").open("wb") as out:
                for _ in range(args.megabytes):
                    out.write(block[: 1024 * 1024])
            size = (state / "output.log").stat().st_size
            write_result(state)
            new_job(jobs, "job-throughput", host.public_openssh)
            started = time.perf_counter()
            outcome = relay.relay("job-throughput")
            relay_seconds = time.perf_counter() - started
            assert outcome.finished, outcome
            stored = logchunks.assemble(logs.chunks("job-throughput", 0, size + 1), 0, size + 1)
            assert stored == (state / "output.log").read_bytes(), "relayed bytes differ from the file"
            cat_seconds = baseline_cat(remote, team, host, logs, "job-baseline", settings)
            relay_rate, cat_rate = size / relay_seconds / 1e6, size / cat_seconds / 1e6
            print(f"throughput  file {size / 1e6:.0f} MB")
            print(f"  relay (tail -F → chunks → DynamoDB)   {relay_rate:7.1f} MB/s  ({relay_seconds:.2f} s)")
            print(f"  baseline (paramiko cat → same writes) {cat_rate:7.1f} MB/s  ({cat_seconds:.2f} s)")
            print(f"  ratio relay / baseline                {relay_rate / cat_rate:7.2f}   (target ≥ 0.5; ≥ 20 MB/s)")

            # -- latency ----------------------------------------------------------------------------------
            reset(state)
            new_job(jobs, "job-latency", host.public_openssh)
            api = JobService(jobs, None, None, logs)  # type: ignore[arg-type]
            latencies: list[float] = []
            stop = threading.Event()

            def writer() -> None:
                end = time.time() + args.latency_seconds
                with (state / "output.log").open("ab", buffering=0) as out:
                    while time.time() < end:
                        out.write(f"t={time.time():.6f} step\n".encode())
                        time.sleep(0.02)
                write_result(state)

            def reader() -> None:
                cursor = "0"
                buffer = ""
                while not stop.is_set():
                    page = api.logs("bench", "job-latency", cursor, 1 << 20)
                    seen = time.time()
                    buffer += page.text
                    *complete_lines, buffer = buffer.split("\n")
                    latencies.extend(seen - float(item.split()[0][2:]) for item in complete_lines if item)
                    cursor = page.next_cursor
                    if page.complete:
                        return
                    time.sleep(0.02)

            threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
            for thread in threads:
                thread.start()
            outcome = relay.relay("job-latency")
            threads[0].join()
            threads[1].join(10)
            stop.set()
            ordered = sorted(latencies)
            p50 = statistics.median(ordered)
            p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
            print(f"latency     {len(ordered)} lines written every 20 ms, read through JobService.logs every 20 ms")
            print(f"  p50 {p50:.3f} s   p99 {p99:.3f} s   max {ordered[-1]:.3f} s   (targets p50 ≤ 1 s, p99 ≤ 3 s)")

            # -- a quiet job's cost ------------------------------------------------------------------------
            reset(state)
            new_job(jobs, "job-quiet", host.public_openssh)
            before = (logs.items, logs.kilobytes, logs.commits)
            quiet = RelayService(
                jobs,  # type: ignore[arg-type]
                logs,
                Secrets(team),  # type: ignore[arg-type]
                Locator(),
                SshConnector(),
                RelaySettings(ssh_user=getpass.getuser(), ssh_port=server.port, budget_seconds=6),
            )
            lines = 0

            def quiet_writer() -> None:
                nonlocal lines
                for _ in range(5):
                    with (state / "output.log").open("ab") as out:
                        out.write(b"epoch done, loss 0.0123\n")
                    lines += 1
                    time.sleep(1.0)

            writer_thread = threading.Thread(target=quiet_writer)
            writer_thread.start()
            quiet.relay("job-quiet")
            writer_thread.join()
            items, kilobytes, commits = (
                now - was for now, was in zip((logs.items, logs.kilobytes, logs.commits), before, strict=True)
            )
            wru_per_line = (kilobytes + commits) / max(lines, 1)
            per_hour_lines = 360  # a quiet job: one line every 10 s
            invocations = 3600 / 600  # RELAY_BUDGET_SECONDS
            cost = (
                3600 * RELAY_MEMORY_GB * LAMBDA_GB_SECOND
                + invocations * LAMBDA_REQUEST
                + invocations * TRANSITIONS_PER_RELAY_CALL * STATE_TRANSITION
                + per_hour_lines * wru_per_line * WRITE_REQUEST_UNIT
            )
            print(f"quiet hour  measured {wru_per_line:.1f} write units per line ({items} chunks, {commits} commits)")
            print(
                f"  1 h, 1 line / 10 s, {invocations:.0f} × 600 s invocations at {RELAY_MEMORY_GB * 1024:.0f} MB: "
                f"${cost:.4f}   (target ≤ $0.02)"
            )
        finally:
            server.stop()


if __name__ == "__main__":
    main()
