"""Section 8: the relay fleet at scale (issue 17). N jobs running at once (200), each printing a 100-byte line a
second for 3 minutes, followed the way relay shards follow them: ⌈N / 50⌉ groups of 50 relay loops
(service/relay.py, one thread each, as a shard runs them), each group writing through one page writer
(service/relay_pages.py), over real SSH to a real OpenSSH sshd per instance, into the emulator's DynamoDB with its
per-partition write limit on.

- Instances are light sandboxes: a directory with the wrapper's state layout and an sshd on its own loopback address;
  one writer process appends every job's lines (a line a second per job, phases spread over the second, each line
  carrying the time it was written) and writes each job's `result` at the end, as the wrapper would.
- **Latency**: a line is visible once the write that holds it returned (its page, or its chunks and their commit):
  from the store's own record of each write, for every line of every job. The same, read the way
  `GET /jobs/{id}/logs` reads (service/jobs.py over the same store), polled every 0.2 s for 5 of the jobs.
- **Byte-exact**: every job's stored log (its chunks, once the relay drained it) against the file it wrote.
- **Relay invocations**: the shard invocations that followed the jobs (their Lambda concurrency), and the log's
  DynamoDB writes and write units per job-hour at full shards (the cost model's page figure, here measured).
- **CPU**: the relay process's CPU time (every loop, paramiko, boto3, the page writers; not the sampled reads) per
  job, against what a 512 MB shard Lambda has (512 / 1,769 of a vCPU): what a shard's capacity can be.

Not covered: the shards' enrolment, heartbeats and task callbacks (tests/e2e/test_relay_fleet.py and the fault
matrix exercise those), the job store (an in-memory one: no status reads on DynamoDB), and the network (loopback).
"""

from __future__ import annotations

import bisect
import getpass
import math
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import boto3

from bench.relay import Jobs, Secrets, new_job
from bench.report import Figure
from controlplane.adapters.logs import DynamoLogStore
from controlplane.adapters.schema import LOGS
from controlplane.adapters.ssh import SshConnector
from controlplane.core import logchunks, logpages
from controlplane.core.models import Job
from controlplane.service.jobs import JobService
from controlplane.service.relay import Located, RelayService, RelaySettings
from controlplane.service.relay_fleet import SHARD_CAPACITY
from controlplane.service.relay_pages import PageWriter
from local import emulator, guard, sshd
from local.ddb_partitions import DEFAULT_WCU_PER_SECOND

SECTION = "8 relay fleet"
LINE_BYTES = 100
LAMBDA_VCPU_PER_MB = 1 / 1769  # Lambda: 1,769 MB of memory is one vCPU's worth
SHARD_MEMORY_MB = 512
SAMPLED_READERS = 5
POLL_SECONDS = 0.2  # each sampled job's log read this often (as a client following it closely would)
WRITER = r"""
import os, sys, time
roots, seconds, width = sys.argv[1].split(","), float(sys.argv[2]), int(sys.argv[3])
files = [open(os.path.join(r, "var/lib/ec2jobs/output.log"), "ab", buffering=0) for r in roots]
start = time.time() + 0.5
end = start + seconds
step = 0
while True:
    for n, out in enumerate(files):
        at = start + step + n / len(files)  # phases spread over the second
        if at >= end:
            continue
        delay = at - time.time()
        if delay > 0:
            time.sleep(delay)
        text = f"t={time.time():.6f} job={n:04d} step={step:06d} loss=0.123456 lr=0.000300"
        out.write((text + " " * (width - 1 - len(text)) + "\n").encode())
    step += 1
    if start + step >= end:
        break
for r in roots:
    state = os.path.join(r, "var/lib/ec2jobs")
    with open(os.path.join(state, "result.tmp"), "w") as f:
        f.write(f"phase=run\nexit_code=0\nreason=SUCCEEDED\nfinished_at={int(time.time())}\n")
    os.rename(os.path.join(state, "result.tmp"), os.path.join(state, "result"))
"""


class TimedLogs(DynamoLogStore):
    """The logs table, recording when each write that makes bytes visible returned: (time, job, end offset)."""

    def __init__(self, table: Any) -> None:
        super().__init__(table)
        self.lock = threading.Lock()
        self.visible: dict[str, list[tuple[float, int]]] = defaultdict(list)
        self.pages = 0
        self.page_units = 0
        self.chunk_writes = 0
        self.commits = 0

    def write_page(self, stream: str, seq: int, entries: list[logpages.Entry]) -> None:
        super().write_page(stream, seq, entries)
        now = time.time()
        size = len(logpages.encode(entries)) + len(f"pages#{stream}") + 40
        with self.lock:
            self.pages += 1
            self.page_units += max(1, math.ceil(size / 1024))
            for entry in entries:
                self.visible[entry.job_id].append((now, entry.end))

    def write(self, job_id: str, chunks: list[tuple[int, bytes]], **kwargs: Any) -> None:
        super().write(job_id, chunks, **kwargs)
        with self.lock:
            self.chunk_writes += len(chunks)

    def commit(self, job_id: str, committed: int, **flags: Any) -> None:
        super().commit(job_id, committed, **flags)
        now = time.time()
        with self.lock:
            self.commits += 1
            self.visible[job_id].append((now, committed))


class Hosts:
    """Each job's instance address (its own loopback address, as the local runtime gives sandboxes)."""

    def __init__(self) -> None:
        self.hosts: dict[str, str] = {}

    def locate(self, job: Job) -> Located:
        return Located(self.hosts[job.job_id], "running")


def _sandbox(root: Path, host: str, port: int, host_private: str, authorized: str) -> sshd.SshServer:
    state = root / "var/lib/ec2jobs"
    (state / "relay").mkdir(parents=True)
    (state / "output.log").touch()
    (root / "etc/ssh").mkdir(parents=True)
    key = root / "etc/ssh/ssh_host_ed25519_key"
    key.write_text(host_private)
    key.chmod(0o600)
    home = root / "home" / getpass.getuser() / ".ssh"
    home.mkdir(parents=True)
    (home / "authorized_keys").write_text(authorized + "\n")
    return sshd.start(root, host=host, port=port)


def _lines(data: bytes) -> list[tuple[int, float]]:
    """(end offset, written at) of each line of a job's output."""
    out: list[tuple[int, float]] = []
    offset = 0
    for line in data.splitlines(keepends=True):
        offset += len(line)
        out.append((offset, float(line.split(b" ", 1)[0].removeprefix(b"t="))))
    return out


class Visibility:
    """When each prefix of a job's log first was visible, from its write records."""

    def __init__(self, records: list[tuple[float, int]]) -> None:
        self.times: list[float] = []
        self.reaches: list[int] = []
        reach = 0
        for at, upto in sorted(records):
            reach = max(reach, upto)
            self.times.append(at)
            self.reaches.append(reach)

    def at(self, end: int) -> float | None:
        """The earliest record reaching offset `end`."""
        index = bisect.bisect_left(self.reaches, end)
        return self.times[index] if index < len(self.times) else None


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))] if ordered else math.nan


def run(jobs: int, seconds: float) -> tuple[list[Figure], dict[str, Any]]:
    guard.check_environment()
    guard.install_network_guard()
    emu = emulator.start()
    try:
        guard.apply_isolated_environment(emu.info.endpoint)
        boto3.setup_default_session()
        boto3.client("dynamodb").create_table(**LOGS.create_table_kwargs("bench-fleet-logs"))
        logs = TimedLogs(boto3.resource("dynamodb").Table("bench-fleet-logs"))
        with tempfile.TemporaryDirectory(prefix="ec2jobs-bench-fleet-") as tmp:
            return _run(Path(tmp), logs, jobs, seconds)
    except Exception as error:
        code = emu.process.poll()
        if code is not None:  # say so: the loops' errors alone only show refused connections
            raise RuntimeError(f"the emulator process ended during the run (exit code {code})") from error
        raise
    finally:
        emu.stop()


def _run(tmp: Path, logs: TimedLogs, count: int, seconds: float) -> tuple[list[Figure], dict[str, Any]]:
    from controlplane.core import sshkeys
    from controlplane.core.ports import TeamKey

    team_pair, host = sshkeys.generate("bench-team"), sshkeys.generate("bench-host")
    team = TeamKey(team_pair.private_openssh, team_pair.public_openssh, sshkeys.new_seed())
    port = sshd.free_port()
    jobs, hosts = Jobs(), Hosts()
    servers: list[sshd.SshServer] = []
    roots: list[Path] = []
    ids = [f"job-fleet{n:04d}" for n in range(count)]
    try:
        for n, job_id in enumerate(ids):
            address = f"127.0.{1 + n // 250}.{1 + n % 250}"
            roots.append(tmp / job_id)
            servers.append(_sandbox(roots[-1], address, port, host.private_openssh, team.public_openssh))
            hosts.hosts[job_id] = address
            new_job(jobs, job_id, host.public_openssh)
        settings = RelaySettings(ssh_user=getpass.getuser(), ssh_port=port, budget_seconds=seconds + 300)
        relay = RelayService(jobs, logs, Secrets(team), hosts, SshConnector(), settings)  # type: ignore[arg-type]
        shards = [ids[i : i + SHARD_CAPACITY] for i in range(0, count, SHARD_CAPACITY)]
        writers = [PageWriter(logs, f"shard-{k + 1:04d}") for k in range(len(shards))]
        outcomes: dict[str, Any] = {}
        threads = [
            threading.Thread(
                # each with its nudge, as a shard's loops: they read their job every 30 s, not every 2 s
                target=lambda j=job_id, w=writer: outcomes.__setitem__(
                    j, relay.relay(j, pages=w, nudge=threading.Event())
                ),
                name=f"relay-job:{job_id}",
                daemon=True,
            )
            for shard, writer in zip(shards, writers, strict=True)
            for job_id in shard
        ]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and any(logs.progress(j).pages is None for j in ids):
            time.sleep(0.5)  # every loop has connected and pointed its job at its pages
        cpu_before = resource.getrusage(resource.RUSAGE_SELF)
        wall_before = time.monotonic()
        writer = subprocess.Popen(  # noqa: S603 - our own script, our own interpreter
            [sys.executable, "-c", WRITER, ",".join(str(r) for r in roots), str(seconds), str(LINE_BYTES)]
        )
        sampled = ids[:: max(1, count // SAMPLED_READERS)][:SAMPLED_READERS]
        reader = subprocess.Popen(  # noqa: S603 - the logs API's read, in its own process as the API Lambda is
            [sys.executable, "-m", "bench.fleet", "read", logs.table.name, ",".join(sampled), str(writer.pid)],
            stdout=subprocess.PIPE,
        )
        writer.wait()
        cpu_after = resource.getrusage(resource.RUSAGE_SELF)
        output, _ = reader.communicate(timeout=120)
        api_latency = [float(value) for value in output.split()]
        streaming_wall = time.monotonic() - wall_before
        for thread in threads:
            thread.join(timeout=120)
        for writer_ in writers:
            writer_.close()
    finally:
        for server in servers:
            server.stop()
    cpu = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)
    return _report(logs, ids, roots, outcomes, shards, api_latency, cpu, streaming_wall, seconds)


def _poll_through_api(table: str, sampled: list[str], writer_pid: int) -> list[float]:
    """Read the sampled jobs' logs as GET /jobs/{id}/logs does (service/jobs.py over the logs table), every 0.2 s,
    until the writer is done and nothing more comes; each line's latency from its timestamp to the read that first
    returned it."""
    jobs = Jobs()
    for job_id in sampled:
        new_job(jobs, job_id, "unused")
        jobs.jobs[job_id] = jobs.jobs[job_id].model_copy(update={"instance_id": "i-bench"})
    logs = DynamoLogStore(boto3.resource("dynamodb").Table(table))
    service = JobService(jobs, None, None, logs)  # type: ignore[arg-type]
    cursors = dict.fromkeys(sampled, "0")
    partial = dict.fromkeys(sampled, b"")
    latencies: list[float] = []
    quiet_until: float | None = None
    while True:
        for job_id in sampled:
            page = service.logs("bench", job_id, cursors[job_id], 256 * 1024)
            now = time.time()
            cursors[job_id] = page.next_cursor
            text = partial[job_id] + page.text.encode()
            *complete, partial[job_id] = text.split(b"\n")
            latencies += [now - float(line.split(b" ", 1)[0].removeprefix(b"t=")) for line in complete]
        if not Path(f"/proc/{writer_pid}").exists():
            quiet_until = quiet_until or time.monotonic() + 10
            if time.monotonic() > quiet_until:
                return latencies
        time.sleep(POLL_SECONDS)


def _report(
    logs: TimedLogs,
    ids: list[str],
    roots: list[Path],
    outcomes: dict[str, Any],
    shards: list[list[str]],
    api_latency: list[float],
    cpu: float,
    streaming_wall: float,
    seconds: float,
) -> tuple[list[Figure], dict[str, Any]]:
    exact = 0
    mismatched: list[str] = []
    latencies: list[float] = []
    timeline: list[tuple[float, float]] = []  # (when written, latency): where in the run the slow lines are
    unseen = 0
    for job_id, root in zip(ids, roots, strict=True):
        data = (root / "var/lib/ec2jobs/output.log").read_bytes()
        stored = logchunks.assemble(logs.chunks(job_id, 0, len(data) + 1), 0, len(data) + 1)
        progress = logs.progress(job_id)
        if stored == data and progress.drained and progress.committed == len(data):
            exact += 1
        else:
            mismatched.append(job_id)
        visibility = Visibility(logs.visible[job_id])
        for end, written in _lines(data):
            seen = visibility.at(end)
            if seen is None:
                unseen += 1
            else:
                latencies.append(seen - written)
                timeline.append((written, seen - written))
    lines = len(latencies) + unseen
    job_hours = len(ids) * streaming_wall / 3600
    per_job_cpu = cpu / (len(ids) * streaming_wall)  # CPU seconds per job-second
    shard_vcpu = SHARD_MEMORY_MB * LAMBDA_VCPU_PER_MB
    finished = sum(1 for o in outcomes.values() if getattr(o, "finished", False))
    note = (
        f"{len(ids)} jobs × {seconds:.0f} s, a {LINE_BYTES}-byte line a second each ({lines} lines); "
        f"{len(shards)} shard groups of {SHARD_CAPACITY}; partition limit {DEFAULT_WCU_PER_SECOND:.0f} WCU/s"
    )
    figures = [
        Figure(SECTION, "jobs whose stored log is byte-exact and drained", float(exact), "jobs",
               (">=", float(len(ids))), f"{len(ids)} running at once; {finished} relay loops finished"),
        Figure(SECTION, "line written → visible (its write returned), p50", statistics.median(latencies), "s",
               ("<=", 0.5), note),
        Figure(SECTION, "… p99", _percentile(latencies, 0.99), "s", ("<=", 2.0),
               f"{unseen} lines never seen by a write record"),
        Figure(SECTION, f"line written → returned by the logs API's read, p50 ({len(api_latency)} lines of "
               f"{SAMPLED_READERS} jobs, polled every {POLL_SECONDS} s)",
               statistics.median(api_latency) if api_latency else None, "s"),
        Figure(SECTION, "… p99", _percentile(api_latency, 0.99) if api_latency else None, "s"),
        Figure(SECTION, "relay shard invocations (Lambda concurrency for relaying)", float(len(shards)), "",
               ("<=", float(math.ceil(len(ids) / 25))), f"⌈{len(ids)} / 25⌉ = {math.ceil(len(ids) / 25)}"),
        Figure(SECTION, "log write units per job-hour (pages + compactions), measured at full shards",
               (logs.page_units + logs.chunk_writes + logs.commits) / job_hours, "WRU",
               note=f"{logs.pages} pages ({logs.page_units} WRU), {logs.chunk_writes} chunk puts, "
               f"{logs.commits} commits in {streaming_wall:.0f} s"),
        Figure(SECTION, "relay CPU per job (loops, SSH, page writers), share of a 512 MB shard Lambda's vCPU",
               per_job_cpu / shard_vcpu * 100, "%",
               note=f"{cpu:.1f} CPU-s over {streaming_wall:.0f} s for {len(ids)} jobs on this machine; a shard of "
               f"{SHARD_CAPACITY} would use {per_job_cpu * SHARD_CAPACITY / shard_vcpu * 100:.0f} % of its "
               f"{shard_vcpu:.2f} vCPU"),
    ]  # fmt: skip
    details = {
        "jobs": len(ids),
        "seconds": seconds,
        "lines": lines,
        "exact": exact,
        "mismatched": mismatched[:20],
        "latency_p50": statistics.median(latencies) if latencies else None,
        "latency_p99": _percentile(latencies, 0.99),
        "latency_max": max(latencies, default=None),
        "api_latency_p50": statistics.median(api_latency) if api_latency else None,
        "api_latency_p99": _percentile(api_latency, 0.99),
        "shards": len(shards),
        "pages": logs.pages,
        "page_units": logs.page_units,
        "chunk_puts": logs.chunk_writes,
        "commits": logs.commits,
        "streaming_seconds": round(streaming_wall, 1),
        "cpu_seconds": round(cpu, 1),
        "cpu_per_job_second": per_job_cpu,
        "p99_by_5s": slow_windows(timeline),
    }
    return figures, details


def slow_windows(timeline: list[tuple[float, float]], width: float = 5.0) -> list[list[float]]:
    """Per `width`-second window of write time from the first line: [window start (s), p99 (s), lines], so a tail
    that is periodic (every job compacting at once) or at one moment (start, end) shows where it is."""
    if not timeline:
        return []
    first = min(at for at, _ in timeline)
    windows: dict[int, list[float]] = defaultdict(list)
    for at, latency in timeline:
        windows[int((at - first) // width)].append(latency)
    return [
        [index * width, round(_percentile(values, 0.99), 3), float(len(values))]
        for index, values in sorted(windows.items())
    ]


if __name__ == "__main__" and sys.argv[1:2] == ["read"]:  # the sampled reader's process (see _run)
    guard.check_environment()
    guard.install_network_guard()
    print("\n".join(f"{v:.6f}" for v in _poll_through_api(sys.argv[2], sys.argv[3].split(","), int(sys.argv[4]))))
