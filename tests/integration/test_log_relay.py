"""The log relay against a real OpenSSH sshd on loopback and the emulator's DynamoDB: every byte the job writes is
stored once, in order; the end is drained; the logs API pages through it. Every test runs twice: a relay writing
each flush as the job's own chunks, and one writing through a relay shard's shared pages (service/relay_pages.py),
as a shard does."""

from __future__ import annotations

import contextlib
import getpass
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest

from controlplane.adapters.logs import DynamoLogStore
from controlplane.adapters.ssh import SshConnector
from controlplane.core import logchunks, sshkeys
from controlplane.core.logpages import Entry, PagePointer
from controlplane.core.models import Job
from controlplane.service.relay import DIRECT_OWNER, Located, RelayOutcome, RelayService, RelaySettings
from controlplane.service.relay_pages import PageWriter
from local import sshd
from tests.integration.conftest import ControlPlane, Tenant, Workflow

_HAVE_SSHD = any(os.access(path, os.X_OK) for path in sshd.SSHD_CANDIDATES)
if not _HAVE_SSHD and os.environ.get("EC2JOBS_REQUIRE_SSHD") == "1":  # `make test` installs it: never skip there
    raise RuntimeError("OpenSSH sshd is required (apt-get install openssh-server); make test installs it")
pytestmark = pytest.mark.skipif(not _HAVE_SSHD, reason="OpenSSH sshd is not installed (make test installs it)")


class FixedLocator:
    def __init__(self, host: str | None = "127.0.0.1", state: str = "running") -> None:
        self.host = host
        self.state = state
        self.state_reason = ""

    def locate(self, job: Job) -> Located:
        return Located(self.host, self.state, self.state_reason)


class ShardRelay(RelayService):
    """A relay whose loops write through one page writer, as a relay shard's do."""

    pages: PageWriter | None = None

    def relay(
        self,
        job_id: str,
        time_left: Callable[[], float] = lambda: float("inf"),
        owner: str = DIRECT_OWNER,
        pages: PageWriter | None = None,
    ) -> RelayOutcome:
        return super().relay(job_id, time_left, owner, pages or self.pages)


@dataclass
class Instance:
    """A launched job whose "instance" is a sandbox directory served by a real sshd."""

    cp: ControlPlane
    tenant: Tenant
    job_id: str
    root: Path
    server: sshd.SshServer
    logs: DynamoLogStore
    pages: PageWriter | None = None
    locator: FixedLocator = field(default_factory=FixedLocator)

    @property
    def state(self) -> Path:
        return self.root / "var/lib/ec2jobs"

    @property
    def output(self) -> Path:
        return self.state / "output.log"

    def relay_service(self, **settings: Any) -> RelayService:
        from controlplane.handlers import container

        pipeline = container.pipeline()
        values: dict[str, Any] = {
            "ssh_user": getpass.getuser(),
            "ssh_port": self.server.port,
            "budget_seconds": 60,
            "flush_interval_seconds": 0.2,
        }
        relay = ShardRelay(
            pipeline.jobs,
            self.logs,
            pipeline.secrets,
            self.locator,
            SshConnector(connect_timeout=5),
            RelaySettings(**(values | settings)),
        )
        relay.pages = self.pages
        return relay

    def write(self, data: bytes) -> None:
        with self.output.open("ab") as sink:
            sink.write(data)
            sink.flush()

    def finish(self, phase: str = "run", code: int = 0, reason: str = "SUCCEEDED") -> None:
        tmp = self.state / "result.tmp"
        tmp.write_text(f"phase={phase}\nexit_code={code}\nreason={reason}\nfinished_at={int(time.time())}\n")
        tmp.rename(self.state / "result")

    def relayed(self) -> bytes:
        """What a reader sees: the chunks, then what the pages hold after the committed offset (not compacted)."""
        data = logchunks.assemble(self.logs.chunks(self.job_id, 0, 1 << 40), 0, 1 << 40)
        progress = self.logs.progress(self.job_id)
        if progress.pages is not None and not progress.complete:
            data = data[: progress.committed] + self.logs.paged(self.job_id, progress.pages, progress.committed)
        return data

    def job(self) -> dict[str, Any]:
        return dict(self.cp.call("GET", f"/jobs/{self.job_id}", self.tenant.token).json())


def _install_keys(root: Path, host_private: str, authorized: str) -> None:
    ssh_dir = root / "etc/ssh"
    ssh_dir.mkdir(parents=True, exist_ok=True)
    key = ssh_dir / "ssh_host_ed25519_key"
    key.write_text(host_private)
    key.chmod(0o600)
    home = root / "home" / getpass.getuser() / ".ssh"
    home.mkdir(parents=True, exist_ok=True)
    (home / "authorized_keys").write_text(authorized + "\n")


@pytest.fixture(params=["own chunks", "shared pages"])
def instance(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Instance]:
    from controlplane.handlers import container

    response = control_plane.call(
        "POST", "/jobs", tenant.token, body={"provider_id": tenant.provider_id, "run": "python train.py"}
    )
    job_id = response.json()["job_id"]
    workflow.run(job_id, tenant.team_id)
    team_key = container.pipeline().secrets.team_key(tenant.team_id)
    root = tmp_path / "instance"
    (root / "var/lib/ec2jobs/relay").mkdir(parents=True)
    _install_keys(
        root, sshkeys.derive_host_key(team_key.host_key_seed, job_id).private_openssh, team_key.public_openssh
    )
    server = sshd.start(root)
    logs = DynamoLogStore(boto3.resource("dynamodb").Table(control_plane.names.table("logs")))
    pages = PageWriter(logs, f"shard-test-{job_id}") if request.param == "shared pages" else None
    try:
        yield Instance(control_plane, tenant, job_id, root, server, logs, pages)
    finally:
        server.stop()
        if pages is not None:
            pages.close()


def run_job(instance: Instance, job: Callable[[], None], relay: RelayService | None = None) -> Any:
    """Run `job` (the writer) in a thread while the relay streams; returns the relay's outcome."""
    failures: list[BaseException] = []

    def target() -> None:
        try:
            job()
        except BaseException as error:  # surfaced below
            failures.append(error)

    writer = threading.Thread(target=target)
    writer.start()
    outcome = (relay or instance.relay_service()).relay(instance.job_id)
    writer.join(30)
    assert failures == []
    return outcome


# -- byte for byte -----------------------------------------------------------------------------------------------


def test_100k_short_lines_arrive_exactly_once_in_order(instance: Instance) -> None:
    lines = b"".join(b"step %06d loss=%.4f\n" % (i, 1 / (i + 1)) for i in range(100_000))

    def job() -> None:
        for start in range(0, len(lines), 64 * 1024):
            instance.write(lines[start : start + 64 * 1024])
        instance.finish()

    outcome = run_job(instance, job)

    assert outcome.finished
    assert instance.relayed() == lines
    record = instance.job()
    assert (record["status"], record["exit_code"]) == ("SUCCEEDED", 0)
    assert record["started_at"] is not None
    assert (instance.state / "relay" / "drained").exists()


def test_a_1mb_line_without_newline(instance: Instance) -> None:
    blob = (b"0123456789abcdef" * 65536)[: 1024 * 1024]

    def job() -> None:
        instance.write(blob)
        instance.finish()

    run_job(instance, job)
    assert instance.relayed() == blob


def test_invalid_utf8_and_a_character_split_across_a_flush_are_kept(instance: Instance) -> None:
    euro = "€".encode()
    data = b"bad \xff\xfe bytes\n" + b"price: " + euro[:2]

    def job() -> None:
        instance.write(data)
        time.sleep(0.8)  # several flush intervals: the relay must not cut the euro sign
        instance.write(euro[2:] + b" done\r\n")
        instance.finish()

    run_job(instance, job)
    expected = data + euro[2:] + b" done\r\n"
    assert instance.relayed() == expected
    chunks = instance.logs.chunks(instance.job_id, 0, 1 << 30)
    assert all(chunk.decode("utf-8", errors="replace").count("\ufffd") <= 2 for _, chunk in chunks)
    text = instance.cp.call("GET", f"/jobs/{instance.job_id}/logs", instance.tenant.token).json()["text"]
    assert text == "bad \ufffd\ufffd bytes\nprice: € done\r\n"


def test_crlf_output_is_byte_exact(instance: Instance) -> None:
    data = b"".join(b"progress %d%%\r" % i for i in range(100)) + b"\r\nend\r\n"

    def job() -> None:
        instance.write(data)
        instance.finish()

    run_job(instance, job)
    assert instance.relayed() == data


def test_output_continues_while_the_relay_reconnects_after_the_connection_is_killed(instance: Instance) -> None:
    parts = [b"part %04d " % i + b"x" * 2000 + b"\n" for i in range(400)]

    def job() -> None:
        for i, part in enumerate(parts):
            instance.write(part)
            if i in (100, 250):
                instance.server.drop_sessions()  # the SSH connection dies mid-stream
            time.sleep(0.002)
        instance.finish()

    outcome = run_job(instance, job)
    assert outcome.finished
    assert outcome.connections >= 2  # it really reconnected
    assert instance.relayed() == b"".join(parts)


def _instance_processes(instance: Instance) -> list[str]:
    """The command lines of processes working on the sandbox's files (the stream's tail and its watcher)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if "output.log" in text and str(instance.root) in text:
                found.append(text)
    return found


def test_the_watcher_reports_the_end_and_no_status_command_runs(
    instance: Instance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stream's watcher reports the wrapper's result and the final size: the relay finishes the job without the
    status command (its fallback, every 30 s while quiet)."""
    from controlplane.adapters.ssh import SshSession

    def no_status(self: SshSession) -> None:
        raise AssertionError("the relay ran the status command")

    monkeypatch.setattr(SshSession, "status", no_status)

    def job() -> None:
        instance.write(b"one\n")
        time.sleep(0.5)  # quiet: the old relay looked with a status command here
        instance.write(b"two\n")
        instance.finish()

    started = time.monotonic()
    outcome = run_job(instance, job)
    assert outcome.finished, outcome
    assert time.monotonic() - started < 10  # the watcher looks once a second
    assert instance.relayed() == b"one\ntwo\n"
    assert instance.job()["status"] == "SUCCEEDED"


def test_a_closed_stream_leaves_nothing_running_on_the_instance(instance: Instance) -> None:
    """Each connection's tail and watcher end once the relay closes the channel (the watcher's next heartbeat
    fails), so a job followed across many reconnects does not collect them."""
    instance.write(b"quiet job\n")
    outcome = instance.relay_service(budget_seconds=2).relay(instance.job_id)
    assert not outcome.finished, outcome
    assert "budget" in outcome.detail, outcome
    deadline = time.monotonic() + 10
    while _instance_processes(instance) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _instance_processes(instance) == []


def test_a_stalled_connection_is_dropped_and_the_relay_reconnects(instance: Instance) -> None:
    """Given the SSH server stops answering on the open connection (its session process stalls; new connections
    are still served), Then the relay, hearing no heartbeat for silence_seconds, reconnects and relays the rest."""

    def job() -> None:
        instance.write(b"before\n")
        for _ in range(400):
            if instance.relayed() == b"before\n":
                break
            time.sleep(0.05)
        instance.server.stall_sessions()
        instance.write(b"during\n")
        time.sleep(3.5)
        instance.write(b"after\n")
        instance.finish()

    try:
        outcome = run_job(instance, job, instance.relay_service(silence_seconds=2.0))
    finally:
        instance.server.resume_sessions()
    assert outcome.finished, outcome
    assert outcome.connections >= 2
    assert instance.relayed() == b"before\nduring\nafter\n"


def test_a_crash_between_writing_a_chunk_and_committing_loses_and_duplicates_nothing(instance: Instance) -> None:
    first = b"".join(b"line %d\n" % i for i in range(5000))
    second = b"".join(b"after %d\n" % i for i in range(5000))
    instance.write(first)

    class Crash(Exception):
        pass

    class CrashingLogs:
        """The real store, except that the first commit of written bytes dies after its chunks were written."""

        def __init__(self, real: DynamoLogStore) -> None:
            self.real = real
            self.write = real.write
            self.progress = real.progress
            self.fold_pages = real.fold_pages
            self.write_page = real.write_page
            self.discard_after = real.discard_after
            self.crashed = False

        def commit(self, job_id: str, committed: int, **flags: Any) -> None:
            if not self.crashed and committed > 0:
                self.crashed = True
                raise Crash("Lambda killed between the chunk write and the commit")
            self.real.commit(job_id, committed, **flags)

    crashing = instance.relay_service(chunk_bytes=1000)
    crashing.logs = CrashingLogs(instance.logs)  # type: ignore[assignment]
    with pytest.raises(Crash):
        crashing.relay(instance.job_id)
    assert instance.logs.progress(instance.job_id).committed == 0
    assert len(instance.logs.chunks(instance.job_id, 0, 1 << 30)) > 1  # written, not committed

    def job() -> None:
        instance.write(second)
        instance.finish()

    run_job(instance, job, instance.relay_service(chunk_bytes=1536))  # other chunk boundaries on the retry
    assert instance.relayed() == first + second
    # The leftovers were removed before resuming: the stored chunks are one contiguous sequence, so a reader
    # can start anywhere (no stale chunk hides the bytes that follow it).
    stored = instance.logs.chunks(instance.job_id, 0, 1 << 30)
    assert all(a + len(data) == b for (a, data), (b, _) in itertools.pairwise(stored))
    whole = first + second
    for cursor in (0, 999, 1000, 1001, 1535, 4321, len(first) - 1, len(whole) - 10):
        page = instance.cp.call(
            "GET", f"/jobs/{instance.job_id}/logs", instance.tenant.token, query={"after": str(cursor)}
        ).json()
        assert page["text"].encode() == whole[cursor : cursor + 256 * 1024], cursor


def test_output_written_in_the_last_moments_before_the_exit_code_is_not_lost(instance: Instance) -> None:
    def job() -> None:
        instance.write(b"training...\n")
        time.sleep(1.0)  # quiet: the relay has polled for a result and found none
        instance.write(b"final metrics: acc=0.93\n" * 50)
        instance.finish(code=3, reason="EXIT_NONZERO")  # immediately after the last bytes

    run_job(instance, job)
    assert instance.relayed() == b"training...\n" + b"final metrics: acc=0.93\n" * 50
    record = instance.job()
    assert (record["status"], record["failure_reason"], record["exit_code"]) == ("FAILED", "EXIT_NONZERO", 3)
    assert (instance.state / "relay" / "drained").exists()


def test_a_setup_failure_is_recorded(instance: Instance) -> None:
    def job() -> None:
        instance.write(b"pip: error\n")
        instance.finish(phase="setup", code=2, reason="SETUP_FAILED")

    run_job(instance, job)
    record = instance.job()
    assert (record["status"], record["failure_reason"], record["exit_code"]) == ("FAILED", "SETUP_FAILED", 2)
    assert "run never started" in record["failure_message"]


# -- not reachable / refused -------------------------------------------------------------------------------------


def test_an_unknown_host_key_is_refused(instance: Instance) -> None:
    impostor = sshkeys.generate("impostor")
    (instance.root / "etc/ssh/ssh_host_ed25519_key").write_text(impostor.private_openssh)
    instance.server.reload()
    instance.write(b"secret training output\n")
    instance.finish()

    outcome = instance.relay_service(budget_seconds=3).relay(instance.job_id)

    assert not outcome.finished
    assert "pinned" in outcome.detail
    assert instance.job()["status"] == "PROVISIONING"
    assert instance.relayed() == b""
    assert not (instance.state / "relay" / "drained").exists()


def test_while_the_instance_boots_the_relay_backs_off_and_the_job_stays_provisioning(instance: Instance) -> None:
    instance.locator.host = None
    instance.locator.state = "pending"
    sleeps: list[float] = []
    relay = instance.relay_service(budget_seconds=2)
    relay.sleep = lambda seconds: (sleeps.append(seconds), time.sleep(seconds))  # type: ignore[assignment]

    outcome = relay.relay(instance.job_id)

    assert not outcome.finished
    assert instance.job()["status"] == "PROVISIONING"
    assert sleeps
    assert sleeps[0] == 1.0  # backing off from one second


def test_when_the_instance_is_gone_the_relay_finishes_and_the_job_is_lost(instance: Instance) -> None:
    instance.locator.state = "terminated"
    outcome = instance.relay_service().relay(instance.job_id)
    assert outcome.finished
    assert instance.logs.progress(instance.job_id).complete
    record = instance.job()
    assert (record["status"], record["failure_reason"]) == ("FAILED", "INSTANCE_LOST")
    body = instance.cp.call("GET", f"/jobs/{instance.job_id}/logs", instance.tenant.token).json()
    assert (body["final"], body["complete"]) == (True, False)  # over, but nobody confirmed the tail was read


def test_when_a_spot_instance_is_reclaimed_the_job_says_so(instance: Instance) -> None:
    instance.locator.state = "terminated"
    instance.locator.state_reason = "Server.SpotInstanceTermination"
    instance.relay_service().relay(instance.job_id)
    assert instance.job()["failure_reason"] == "SPOT_INTERRUPTED"


# -- the logs API ------------------------------------------------------------------------------------------------


def test_the_logs_api_pages_through_a_large_log_and_reports_complete(instance: Instance) -> None:
    text = "".join(f"epoch {i}: loss {1 / (i + 1):.6f} ✓\n" for i in range(40_000))
    data = text.encode()

    def job() -> None:
        instance.write(data)
        instance.finish()

    instance.write(b"")
    partial = instance.cp.call("GET", f"/jobs/{instance.job_id}/logs", instance.tenant.token).json()
    assert partial == {"job_id": instance.job_id, "text": "", "next_cursor": "0", "complete": False, "final": False}
    run_job(instance, job)

    pages: list[str] = []
    cursor = None
    for _ in range(1000):
        query = {"limit": "65536"} | ({"after": cursor} if cursor else {})
        body = instance.cp.call("GET", f"/jobs/{instance.job_id}/logs", instance.tenant.token, query=query).json()
        pages.append(body["text"])
        if body["complete"]:
            break
        assert body["next_cursor"] != cursor, "no progress"
        cursor = body["next_cursor"]
    assert "".join(pages) == text
    assert len(pages) > 10
    assert body["next_cursor"] == str(len(data))


def test_logs_of_another_teams_job_are_not_found_and_foreign_cursors_are_refused(
    instance: Instance, new_team: Callable[[], str]
) -> None:
    other = new_team()
    assert instance.cp.call("GET", f"/jobs/{instance.job_id}/logs", other).status == 404
    for cursor in ("-1", "abc", "999999"):  # 999999: beyond what was relayed
        bad = instance.cp.call("GET", f"/jobs/{instance.job_id}/logs", instance.tenant.token, query={"after": cursor})
        assert bad.status == 400, cursor


# -- under DynamoDB's per-partition write limit (the emulator enforces it: local/ddb_partitions.py) ---------------


def test_a_backlog_drains_completely_under_the_partition_limit_and_drained_means_written(instance: Instance) -> None:
    """24 MB of incompressible output, all written before the relay connects (a job that printed faster than the
    logs table accepts): one partition key would take ≥ 24 s at 1,000 write units per second; spread over the
    job's partitions it drains well within that, every byte exactly once. The `drained` marker appears only once
    every byte is stored and committed, and `relay/progress` told the wrapper how far the writes got."""
    data = os.urandom(24 * 1024 * 1024)
    instance.write(data)
    instance.finish()
    seen_at_marker: list[Any] = []

    def watch() -> None:
        marker = instance.state / "relay" / "drained"
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        seen_at_marker.append(instance.logs.progress(instance.job_id))

    watcher = threading.Thread(target=watch)
    watcher.start()
    started = time.monotonic()
    outcome = instance.relay_service(flush_interval_seconds=0.5).relay(instance.job_id)
    elapsed = time.monotonic() - started
    watcher.join(70)

    assert outcome.finished, outcome
    assert seen_at_marker
    assert seen_at_marker[0].complete
    assert seen_at_marker[0].committed == len(data)
    assert elapsed < 20, f"{len(data) / elapsed / 1e6:.1f} MB/s"
    reported = int((instance.state / "relay" / "progress").read_text())
    assert 0 < reported <= len(data)
    assert instance.relayed() == data
    stored = instance.logs.chunks(instance.job_id, 0, 1 << 40)
    assert all(a + len(chunk) == b for (a, chunk), (b, _) in itertools.pairwise(stored))  # once, contiguous


# -- cancel ------------------------------------------------------------------------------------------------------


class Terminator:
    def __init__(self) -> None:
        self.terminated: list[str] = []

    def terminate(self, job: Job) -> None:
        self.terminated.append(job.job_id)


def _cancel_when_running(instance: Instance) -> dict[str, Any]:
    """POST /jobs/{id}/cancel once the relay has connected (RUNNING) and relayed the first line."""
    for _ in range(400):
        if instance.job()["status"] == "RUNNING" and instance.relayed():
            break
        time.sleep(0.05)
    response = instance.cp.call("POST", f"/jobs/{instance.job_id}/cancel", instance.tenant.token)
    assert response.status == 200, response.body
    return dict(response.json())


def test_a_cancelled_running_job_is_stopped_on_its_instance_and_its_tail_is_kept(instance: Instance) -> None:
    """Given a RUNNING job streamed by the relay, When it is cancelled, Then the API leaves its instance alone, the
    relay writes the wrapper's cancel marker, and what the job printed while stopping is relayed: the log is whole
    (complete), the job stays CANCELLED, and the wrapper gets its drained marker."""
    relay_dir = instance.state / "relay"
    answered: dict[str, Any] = {}

    def job() -> None:
        instance.write(b"step 1\n")
        answered["cancel"] = _cancel_when_running(instance)
        for _ in range(200):  # the wrapper's side: stop the job when the marker comes
            if (relay_dir / "cancel").exists():
                break
            time.sleep(0.05)
        assert (relay_dir / "cancel").exists(), "the relay never asked the instance to stop the job"
        instance.write(b"caught SIGTERM, saving\n")
        instance.finish(code=143, reason="CANCELLED")

    terminator = Terminator()
    relay = instance.relay_service(cancel_check_seconds=0.2)
    relay.terminator = terminator
    outcome = run_job(instance, job, relay)

    assert outcome.finished, outcome
    assert answered["cancel"]["terminated_instances"] == []
    assert instance.relayed() == b"step 1\ncaught SIGTERM, saving\n"
    progress = instance.logs.progress(instance.job_id)
    assert (progress.complete, progress.drained) == (True, True)
    assert instance.job()["status"] == "CANCELLED"
    assert (relay_dir / "drained").exists()
    assert terminator.terminated == []  # the instance terminates itself after the drain


def test_a_cancelled_job_whose_instance_does_not_stop_is_terminated_at_the_drain_bound(instance: Instance) -> None:
    """Given a cancelled job whose instance never records a result, Then the relay terminates the instance at the
    cancel drain bound and the log is final but not complete."""

    def job() -> None:
        instance.write(b"step 1\n")
        _cancel_when_running(instance)

    terminator = Terminator()
    relay = instance.relay_service(cancel_check_seconds=0.2, cancel_drain_seconds=1.0)
    relay.terminator = terminator
    started = time.monotonic()
    outcome = run_job(instance, job, relay)

    assert outcome.finished, outcome
    assert "drain bound" in outcome.detail
    assert time.monotonic() - started < 20
    assert terminator.terminated == [instance.job_id]
    assert instance.relayed() == b"step 1\n"
    progress = instance.logs.progress(instance.job_id)
    assert (progress.complete, progress.drained) == (True, False)
    body = instance.cp.call("GET", f"/jobs/{instance.job_id}/logs", instance.tenant.token).json()
    assert (body["final"], body["complete"]) == (True, False)


def test_a_cancelled_job_whose_instance_is_unreachable_is_terminated_at_the_drain_bound(instance: Instance) -> None:
    """Given a RUNNING job whose instance stops answering SSH (the connection dropped, the address no longer
    answers), When it is cancelled, Then the relay, still trying to reconnect, terminates the instance at the cancel
    drain bound instead of retrying until its budget runs out; the log keeps what was relayed, final, not complete."""
    unreachable = threading.Event()

    def job() -> None:
        instance.write(b"step 1\n")
        for _ in range(400):
            if instance.job()["status"] == "RUNNING" and instance.relayed():
                break
            time.sleep(0.05)
        instance.server.cut_off()  # the instance stops answering: no listener, the open session dropped
        unreachable.set()
        response = instance.cp.call("POST", f"/jobs/{instance.job_id}/cancel", instance.tenant.token)
        assert response.status == 200, response.body

    terminator = Terminator()
    relay = instance.relay_service(budget_seconds=45, cancel_check_seconds=0.2, cancel_drain_seconds=2.0)
    relay.terminator = terminator
    started = time.monotonic()
    outcome = run_job(instance, job, relay)

    assert unreachable.is_set()
    assert outcome.finished, outcome
    assert "drain bound" in outcome.detail, outcome.detail
    assert "unreachable" in outcome.detail, outcome.detail
    assert time.monotonic() - started < 30  # well before the 45 s budget
    assert terminator.terminated == [instance.job_id]
    assert instance.relayed() == b"step 1\n"
    progress = instance.logs.progress(instance.job_id)
    assert (progress.complete, progress.drained) == (True, False)
    assert instance.job()["status"] == "CANCELLED"


# -- shared pages: what a dead loop paged ------------------------------------------------------------------------


def _a_dead_loop_paged(instance: Instance, data: bytes) -> None:
    """A shard loop that handed `data` (the start of the output) to its pages, then died before compacting it."""
    pointer = PagePointer("shard-dead-0001", 0, "dead-writer")
    instance.logs.commit(instance.job_id, 0, pages=pointer)
    instance.logs.write_page(pointer.stream, 0, [Entry(instance.job_id, pointer.writer, 0, data)])
    instance.logs.write_page(pointer.stream, 1, [Entry("job-someone-else", pointer.writer, 0, b"not yours\n")])


@pytest.mark.parametrize("instance", ["shared pages"], indirect=True)
def test_bytes_a_dead_loop_only_paged_are_shown_and_kept_when_the_next_loop_resumes(instance: Instance) -> None:
    """Readers see what a shard loop paged before it was compacted; when that loop dies, the next one folds those
    bytes into the job's chunks before it resumes: the log is whole, nothing doubled, and a cursor a reader got from
    the pages stays valid."""
    instance.write(b"hello ")
    _a_dead_loop_paged(instance, b"hello ")
    page = instance.cp.call("GET", f"/jobs/{instance.job_id}/logs", instance.tenant.token).json()
    assert (page["text"], page["next_cursor"], page["final"]) == ("hello ", "6", False)
    assert instance.logs.progress(instance.job_id).committed == 0  # only pages hold it

    def job() -> None:
        instance.write(b"world\n")
        instance.finish()

    run_job(instance, job)
    assert instance.relayed() == b"hello world\n"
    page = instance.cp.call("GET", f"/jobs/{instance.job_id}/logs", instance.tenant.token, query={"after": "6"}).json()
    assert (page["text"], page["complete"]) == ("world\n", True)


@pytest.mark.parametrize("instance", ["shared pages"], indirect=True)
def test_bytes_a_dead_loop_only_paged_are_kept_when_the_instance_is_gone_too(instance: Instance) -> None:
    """The loop died and then the instance: whoever finalises the log folds the paged bytes in first."""
    _a_dead_loop_paged(instance, b"epoch 1 loss=0.5\n")
    instance.locator.state = "terminated"
    assert instance.relay_service().relay(instance.job_id).finished
    progress = instance.logs.progress(instance.job_id)
    assert (progress.committed, progress.complete) == (len(b"epoch 1 loss=0.5\n"), True)
    assert instance.relayed() == b"epoch 1 loss=0.5\n"
    body = instance.cp.call("GET", f"/jobs/{instance.job_id}/logs", instance.tenant.token).json()
    assert (body["text"], body["final"]) == ("epoch 1 loss=0.5\n", True)


def test_a_new_attempt_drops_the_previous_attempt_s_page_pointer(instance: Instance) -> None:
    _a_dead_loop_paged(instance, b"attempt 1\n")
    assert instance.logs.progress(instance.job_id).pages is not None
    instance.logs.commit(instance.job_id, 10, new_attempt=True)
    assert instance.logs.progress(instance.job_id).pages is None


@pytest.mark.parametrize("instance", ["shared pages"], indirect=True)
def test_a_dead_loop_s_paged_bytes_and_uncommitted_chunks_leave_one_contiguous_run(instance: Instance) -> None:
    """The dead loop had paged the start of the output, then died between writing its compaction's chunks and
    committing them. The next loop removes those leftovers before folding the paged bytes in: the stored chunks are
    one contiguous run again (a flaky fresh-clone failure: the fold's chunk overlapped the leftovers it left)."""
    data = b"".join(b"line %d\n" % i for i in range(3000))
    instance.write(data)
    head = data[:8192]
    _a_dead_loop_paged(instance, head)
    instance.logs.write(instance.job_id, logchunks.cut(0, data[:20000], 1000))  # its compaction: never committed
    instance.finish()
    outcome = instance.relay_service().relay(instance.job_id)
    assert outcome.finished, outcome
    assert instance.relayed() == data
    stored = instance.logs.chunks(instance.job_id, 0, 1 << 30)
    assert all(a + len(chunk) == b for (a, chunk), (b, _) in itertools.pairwise(stored)), [a for a, _ in stored][:30]
