"""The log relay: stream a job's output over SSH into the logs table, exactly once, in order, about a second after
it is written, and finish the job when the wrapper has recorded its outcome.

One invocation streams for a bounded budget (minutes, below the Lambda timeout); the workflow calls it again until
it reports finished. Per invocation: locate the instance; connect (retrying every half second once it has an
address: the job stays PROVISIONING); the first successful connection moves it to RUNNING and hands the instance the
job's start bundle (envs, setup, run: core/bundle.py), which the wrapper waits for before it starts the job, so the
relay is already following the output when the job's first line is written; follow the output file from the
committed byte offset (`tail -F`), flushing chunks at least every FLUSH_INTERVAL or FLUSH_BYTES and committing the
offset only after they are written. A watcher on the same channel's stderr (adapters/ssh.py `watched_tail`) says
once a second that the instance is alive (silence_seconds without it or output: reconnect) and reports the wrapper's
`result` and the output's final size as soon as they exist (a tenth of a second once the relay asked for a stop); so
no command runs per look while a job is quiet. Once the result is known, read through to the file's final size,
commit the log as complete (and whole), record the outcome on the job, and write the `drained` marker the wrapper
waits for before it terminates the instance. A dropped connection resumes from the committed offset.

Recovery (service/recovery.py): an attempt that ends while the relay streams it — the wrapper's failure, which the
job's job_recovery relaunches, or a spot interruption warning — leaves the job RECOVERING. The relay then stops the
job on the instance (`relay/interrupt`: SIGTERM, then SIGKILL; the wrapper uploads its outputs and checkpoints),
reads the output to its end as for any result, and ends its loop with `recover`, on which the workflow's Recover
step begins the next attempt. Past RECOVERY_DRAIN_SECONDS after the attempt ended, the instance is terminated
whatever is left unread. The log is one stream across attempts: attempt N's output begins after a marker line
written at the offset Recover recorded (`log_marker_at`), so the instance's file offsets are the log's minus
that base.

Cancel: the API ends a RUNNING job CANCELLED and leaves its instance to the relay, which notices within
`cancel_check_seconds` (in a relay shard: at once, as the job store's listener nudges the shard; its loop's own read
every `nudged_check_seconds` is the fallback), writes the wrapper's `relay/cancel` marker (the job is stopped:
SIGTERM, then SIGKILL) and reads the output to its end as for any result, so the log is complete; the instance is
terminated by the relay CANCEL_DRAIN_SECONDS after the cancel at the latest (the log is then final but not
complete).

At most one relay loop streams a job: each invocation first claims the job's relay lease (a conditional write on
the job) for LEASE_SECONDS and renews it while it streams, never past its Lambda's remaining time (service/
relay_lease.py); it writes nothing once its own hold has ended, so a loop killed mid-stream cannot write after its
lease ends, and a dead loop's lease ends within LEASE_SECONDS. An invocation that ends normally shortens the lease to
LOOP_GAP_SECONDS, within which its loop comes back. A lease nobody renews means the loop died: the reconciler
starts a relay-only execution, which claims the lease and resumes from the committed offset; a stale loop that
comes back later finds the lease taken and stops.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from typing import Any, Protocol

from controlplane.adapters.logs import DynamoLogStore, LogWriteAbandoned
from controlplane.adapters.ssh import STATE_DIR, ConnectionLost, InstanceNotReady, Remote, SshConnector, SshSession
from controlplane.core import logchunks, outcomes, recovery, sealing
from controlplane.core.bundle import StartBundle
from controlplane.core.errors import TransitionRefused
from controlplane.core.launch_errors import AUTH_CODES
from controlplane.core.lifecycle import WITH_INSTANCE, FailureReason, JobStatus
from controlplane.core.logpages import PagePointer
from controlplane.core.markets import Market
from controlplane.core.models import Job, utcnow
from controlplane.core.ports import JobStore, SecretStore, TeamKey
from controlplane.service import job_io
from controlplane.service.recovery import RECOVERY_DRAIN_SECONDS, AttemptEnder, ended_attempts, in_recovery_drain
from controlplane.service.relay_lease import LEASE_SECONDS, LeaseHold, RelayLease
from controlplane.service.relay_pages import PagedTail, PageWriter

logger = logging.getLogger(__name__)

GONE_STATES = frozenset({"shutting-down", "terminated", "stopping", "stopped"})
TIME_RESERVE_SECONDS = 15.0
LOOP_GAP_SECONDS = 60.0  # after an invocation ends, its loop renews the lease within this (else: it died)
DRAIN_REPORT_SECONDS = 5.0  # at most this often, the wrapper learns the committed offset (its drain wait follows it)
DIRECT_OWNER = "direct"  # invocations outside a workflow execution (tests, benchmarks, operators)


@dataclass(frozen=True)
class RelaySettings:
    ssh_user: str = "ubuntu"
    ssh_port: int = 22
    budget_seconds: float = 600.0
    flush_interval_seconds: float = 0.5
    flush_bytes: int = 4 * 1024 * 1024
    chunk_bytes: int = logchunks.MAX_CHUNK_BYTES
    recv_bytes: int = 256 * 1024
    # The stream's watcher says when the job's result is there (adapters/ssh.py OutputStream); a status command is
    # only run as a fallback: while the output is quiet this often, and this often once the relay asked for a stop.
    status_poll_seconds: float = 30.0
    stall_seconds: float = 20.0  # the job ended but the stream delivers nothing: reconnect
    idle_before_status_seconds: float = 0.3
    max_backoff_seconds: float = 10.0
    connect_retry_seconds: float = 0.5  # the instance has an address but SSH is not ready yet: retry this often
    locate_seconds: float = 2.0  # while not connected, DescribeInstances at most this often
    cancel_check_seconds: float = 2.0  # while streaming, read the job's status this often (is it cancelled?)
    # ... this often in a relay shard, whose loops are nudged when their job is cancelled or its attempt ends (the
    # job store's listener writes the nudge on the shard's item, which the shard reads every tick)
    nudged_check_seconds: float = 30.0
    # ... this often for a spot job with job_recovery: an interruption warning stops it, and the next attempt waits
    interruption_check_seconds: float = 1.0
    stopping_poll_seconds: float = 2.0
    # No output and no heartbeat from the stream's watcher (one a second) this long: the connection is dead (a
    # stalled SSH server, a lost network path); reconnect.
    silence_seconds: float = 15.0
    cancel_drain_seconds: float = outcomes.CANCEL_DRAIN_SECONDS
    lease_seconds: float = LEASE_SECONDS  # a dead relay's lease ends within this (service/relay_lease.py)


@dataclass(frozen=True)
class Located:
    host: str | None  # None while the instance has no address yet
    state: str  # the EC2 instance state name
    state_reason: str = ""  # EC2's StateReason code, e.g. Server.SpotInstanceTermination
    unverified: str = ""  # why the address is the recorded one, not a fresh DescribeInstances answer
    launched_at: dt.datetime | None = None  # EC2's LaunchTime


@dataclass(frozen=True)
class RelayOutcome:
    finished: bool
    detail: str
    relayed_bytes: int = 0
    connections: int = 0
    recover: bool = False  # the attempt ended and the job relaunches: the workflow's Recover step is next
    contended_by: str | None = None  # another relay loop holds the job's lease (this one did not stream)

    def as_state(self) -> dict[str, Any]:
        return {
            "finished": self.finished,
            "detail": self.detail,
            "relayed_bytes": self.relayed_bytes,
            "connections": self.connections,
            "recover": self.recover,
        }


class LeaseExpired(Exception):
    """This invocation outlived its relay lease: it must not write (the workflow retries; the claim decides)."""


class InstanceLocator(Protocol):
    def locate(self, job: Job) -> Located: ...


class ScriptReader(Protocol):
    def get_bytes(self, key: str) -> bytes: ...


class InstanceTerminator(Protocol):
    def terminate(self, job: Job) -> None: ...


def _no_deadline() -> float:
    return float("inf")


class RelayService:
    def __init__(
        self,
        jobs: JobStore,
        logs: DynamoLogStore,
        secrets: SecretStore,
        locator: InstanceLocator,
        connector: SshConnector,
        settings: RelaySettings,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        lease: RelayLease | None = None,
        terminator: InstanceTerminator | None = None,
        grants: job_io.InstanceGrants | None = None,
        scripts: ScriptReader | None = None,
    ) -> None:
        self.grants = grants
        self.scripts = scripts
        self.lease = lease
        self.terminator = terminator
        self.jobs = jobs
        self.logs = logs
        self.secrets = secrets
        self.locator = locator
        self.connector = connector
        self.settings = settings
        self.clock = clock
        self.sleep = sleep
        self.ender = AttemptEnder(jobs)

    def relay(
        self,
        job_id: str,
        time_left: Callable[[], float] = _no_deadline,
        owner: str = DIRECT_OWNER,
        pages: PageWriter | None = None,
        nudge: threading.Event | None = None,
    ) -> RelayOutcome:
        """One invocation of `owner`'s relay loop (the workflow passes its execution's ARN). `pages`: a relay shard's
        page writer, which the loop's small flushes go through (service/relay_pages.py); without it, every flush is
        written as the job's own chunks and committed. `nudge`: set by a relay shard when the job was cancelled or
        its attempt ended (service/relay_fleet.py); the loop then reads the job at once, and otherwise only every
        `nudged_check_seconds` instead of `cancel_check_seconds`."""
        job = self.jobs.get(job_id)
        if job is None:
            return RelayOutcome(True, "the job does not exist")
        now = utcnow()
        if job.status == JobStatus.RECOVERING and not in_recovery_drain(job, now):
            return RelayOutcome(True, f"attempt {job.attempt} ended; the next attempt follows", recover=True)
        # Spot-interrupted or cancelled: the instance writes on; a recovering attempt's instance uploads and drains.
        streams_on = outcomes.streams_after_end(job, now) or in_recovery_drain(job, now)
        if job.status.terminal and not streams_on:
            progress = self.logs.fold_pages(job_id)
            if not progress.complete:
                self.logs.commit(job_id, progress.committed, complete=True)
            return RelayOutcome(True, f"the job is {job.status}")
        if (job.status not in {JobStatus.PROVISIONING, JobStatus.RUNNING} and not streams_on) or not job.ssh_host_key:
            # Only reachable if the relay ran before Launch recorded an instance: nothing to wait for here, and
            # returning "not finished" would make the workflow loop without pause.
            return RelayOutcome(True, f"the job is {job.status}: it has no instance to relay from")
        budget = min(self.settings.budget_seconds, time_left() - TIME_RESERVE_SECONDS)
        # A short lease, renewed while this invocation streams (its last flush and the drain included), never past
        # the Lambda's remaining time; nothing is written once this invocation's hold has ended (_store checks).
        hold = LeaseHold(job_id, owner, self.lease, self.clock, time_left, self.settings.lease_seconds)
        if not hold.claim():
            return self._not_claimed(job_id)
        outcome = self._relay(job, budget, hold, pages, nudge)
        if not outcome.finished:
            hold.release_for(LOOP_GAP_SECONDS)
            return outcome
        after = self.jobs.get(job_id)
        if after is not None and after.status == JobStatus.RECOVERING:
            return RelayOutcome(True, outcome.detail, outcome.relayed_bytes, outcome.connections, recover=True)
        return outcome

    def _not_claimed(self, job_id: str) -> RelayOutcome:
        job = self.jobs.get(job_id)
        if job is None or job.status.terminal:
            return RelayOutcome(True, f"the job is {job.status if job else 'gone'}")
        if job.status not in {JobStatus.PROVISIONING, JobStatus.RUNNING, JobStatus.RECOVERING}:
            return RelayOutcome(True, f"the job is {job.status}: it has no instance to relay from")
        logger.info("another relay loop holds the lease", extra={"job_id": job_id, "owner": job.relay_owner})
        return RelayOutcome(
            True,
            f"another relay loop streams this job's output ({job.relay_owner}); this one stops",
            contended_by=job.relay_owner or "",
        )

    def _relay(
        self, job: Job, budget: float, hold: LeaseHold, pages: PageWriter | None, nudge: threading.Event | None = None
    ) -> RelayOutcome:
        job_id, host_key = job.job_id, str(job.ssh_host_key)
        deadline = self.clock() + max(0.0, budget)
        team_key = self.secrets.team_key(job.team_id)
        backoff = 1.0
        drops = 0
        relayed = 0
        connections = 0
        last_reason = "not connected yet"
        located: Located | None = None
        located_at = float("-inf")
        stop_checked = self.clock()  # _stream checks for a cancel while connected; this loop, while not
        while self.clock() < deadline:
            hold.renew_if_due()
            if not hold.valid():
                raise LeaseExpired(f"job {job_id}: this relay invocation's hold on the lease has ended")
            if self.clock() - stop_checked >= self.settings.cancel_check_seconds:
                stop_checked = self.clock()
                unreachable = self._unreachable_past_drain_bound(job_id)
                if unreachable is not None:
                    return replace(unreachable, relayed_bytes=relayed, connections=connections)
            if located is None or located.host is None or self.clock() - located_at >= self.settings.locate_seconds:
                located, located_at = self.locator.locate(job), self.clock()
            pause = backoff
            if located.state in GONE_STATES:
                self._instance_gone(job, located)
                return RelayOutcome(True, f"the instance is {located.state}", relayed, connections)
            if located.host is None:
                if self._without_public_address(located):
                    self._no_public_address(job)
                    return RelayOutcome(True, "the instance has no public IPv4 address", relayed, connections)
                last_reason = located.unverified or f"the instance is {located.state} and has no address yet"
                job = self._waiting(job, last_reason)
                pause = min(backoff, self.settings.locate_seconds)
            else:
                job = self._remember_address(job, located.host)
                try:
                    session = self.connector.connect(
                        Remote(located.host, self.settings.ssh_port, self.settings.ssh_user),
                        team_key.private_openssh,
                        host_key,
                    )
                except InstanceNotReady as not_ready:
                    last_reason = not_ready.reason
                    job = self._waiting(job, f"the instance is {located.state}; SSH: {not_ready.reason}")
                    pause = self.settings.connect_retry_seconds  # a booting instance: each try is cheap
                else:
                    connections += 1
                    try:
                        job = self._running(job)
                        if job.status.terminal and not outcomes.streams_after_end(job, utcnow()):
                            return RelayOutcome(True, f"the job is {job.status}", relayed, connections)
                        if job.status == JobStatus.RECOVERING and not in_recovery_drain(job, utcnow()):
                            return RelayOutcome(True, f"attempt {job.attempt} ended", relayed, connections)
                        self._start(session, job, team_key)
                        outcome = self._stream(session, job, deadline, hold, pages, nudge)
                        relayed += outcome.relayed_bytes
                        drops = 0
                        backoff = 1.0
                        if outcome.finished:
                            return RelayOutcome(True, outcome.detail, relayed, connections)
                        if self.clock() >= deadline:
                            break
                        last_reason = outcome.detail
                        pause = backoff
                    except ConnectionLost as lost:
                        last_reason = f"the connection dropped ({lost}); resuming from the committed offset"
                        logger.info("relay reconnecting", extra={"job_id": job_id, "reason": last_reason})
                        # Reconnect promptly after a blip; repeated drops back off like an unreachable instance.
                        backoff = min(0.25 * 2**drops, self.settings.max_backoff_seconds)
                        pause = backoff
                        drops += 1
                        located = None  # where is it now (and is it still there)?
                    finally:
                        session.close()
            pause = min(pause, max(0.0, deadline - self.clock()))
            if pause <= 0:
                break
            self.sleep(pause)
            backoff = min(backoff * 2, self.settings.max_backoff_seconds)
        return RelayOutcome(False, f"budget used; {last_reason}", relayed, connections)

    def _unreachable_past_drain_bound(self, job_id: str) -> RelayOutcome | None:
        """While no connection stands: a cancelled job (or an ended attempt) whose drain bound has passed gets its
        instance terminated now, as a connected relay does (_stream), instead of billing until this loop's budget
        runs out. None while the job runs on, or its bound is still ahead."""
        current = self.jobs.get(job_id)
        if current is None:
            return None
        if current.status not in {JobStatus.CANCELLED, JobStatus.RECOVERING}:
            return None
        cancel_by = self._cancel_by(current)
        if self.clock() < cancel_by:
            return None
        self._cancel_unfinished(current)
        return RelayOutcome(True, "cancelled: the drain bound was reached while the instance was unreachable")

    def _waiting(self, job: Job, why: str) -> Job:
        """While PROVISIONING, say on the job why it is not RUNNING yet (API `status_detail`, and in `notes`);
        written only when the reason changes."""
        if job.status != JobStatus.PROVISIONING or job.status_detail == why:
            return job
        try:
            return self.jobs.update(job.job_id, {"status_detail": why}, expected=JobStatus.PROVISIONING)
        except TransitionRefused:
            return self.jobs.get(job.job_id) or job

    @staticmethod
    def _without_public_address(located: Located) -> bool:
        """Running, long enough after launch for EC2 to have assigned any public address, and still none."""
        if located.unverified:
            return False
        return outcomes.without_public_address(located.state, located.host, located.launched_at, utcnow())

    def _no_public_address(self, job: Job) -> None:
        """Nothing can reach the instance: end the job FAILED / NO_PUBLIC_ADDRESS and terminate the instance now
        (it would otherwise bill until its deadline)."""
        if self.terminator is not None:
            try:
                self.terminator.terminate(job)
            except Exception:  # noqa: BLE001 - the reconciler terminates an ended job's instance if this failed
                logger.warning("could not terminate an instance without a public address", extra={"job_id": job.job_id})
        fields = {"failure_reason": FailureReason.NO_PUBLIC_ADDRESS, "failure_message": outcomes.NO_ADDRESS_HELP}
        with contextlib.suppress(TransitionRefused):
            self.jobs.transition(job.job_id, JobStatus.FAILED, fields=fields)
        progress = self.logs.fold_pages(job.job_id)
        self.logs.commit(job.job_id, progress.committed, complete=True)
        logger.warning("the job's instance has no public address", extra={"job_id": job.job_id})

    def _remember_address(self, job: Job, host: str) -> Job:
        """Keep the address on the job: if the provider's keys are revoked mid-job, the relay still reaches it."""
        if job.instance_address == host:
            return job
        try:
            return self.jobs.update(job.job_id, {"instance_address": host})
        except TransitionRefused:
            return job

    def _instance_gone(self, job: Job, located: Located) -> None:
        """The instance ended before its output was drained: nothing more of this attempt can be relayed. The
        attempt ends with the reason the instance's end implies (it never recorded an exit status here): the job
        relaunches if its job_recovery allows, else it ends FAILED and its log is final."""
        current = self.jobs.get(job.job_id) or job
        if current.attempt == job.attempt and current.status in WITH_INSTANCE:
            reason, message = outcomes.lost_instance(current, located.state_reason, utcnow())
            # It may have ended already (cancelled, or another observer recorded it): then this is refused.
            self.ender.end(current, reason, message, fields={"instance_state": located.state})
        after = self.jobs.get(job.job_id)
        if after is None or after.status.terminal:
            progress = self.logs.fold_pages(job.job_id)
            self.logs.commit(job.job_id, progress.committed, complete=True)

    def _running(self, job: Job) -> Job:
        """The first successful connection means the wrapper is up: PROVISIONING → RUNNING."""
        if job.status != JobStatus.PROVISIONING:
            return job
        try:
            return self.jobs.transition(
                job.job_id, JobStatus.RUNNING, expected=JobStatus.PROVISIONING, fields={"started_at": utcnow()}
            )
        except TransitionRefused:
            return self.jobs.get(job.job_id) or job

    def _start(self, session: SshSession, job: Job, team_key: TeamKey) -> None:
        """Hand the instance the job's start bundle (idempotent: a reconnection finds it there) and fresh grants,
        or, for a job cancelled before it started, the cancel marker instead."""
        if job.status == JobStatus.CANCELLED:
            session.request_cancel()
            return
        if job.status == JobStatus.RECOVERING:  # the attempt ended: stop the job, keep its checkpoints
            session.request_stop()
            return
        if job.spec is None or job.instance_type is None:
            raise ConnectionLost("the job has no task spec to start")  # never for a launched job
        secrets = sealing.unseal(team_key.host_key_seed, job.job_id, job.sealed_secrets) if job.sealed_secrets else {}
        spec = job.spec
        if job.stored_scripts:  # setup/run too large for the job record: kept in the artifacts bucket
            if self.scripts is None:
                raise ConnectionLost("the job's scripts are in the artifacts bucket, which this relay cannot read")
            texts = {name: self.scripts.get_bytes(key).decode("utf-8") for name, key in job.stored_scripts.items()}
            spec = spec.model_copy(update=texts)
        inputs = job_io.inputs(job, own_checkpoints=self._has_checkpoints(job))
        start = StartBundle.for_spec(
            job.job_id,
            job.team_id,
            job.instance_type,
            spec,
            secrets=secrets,
            inputs=inputs,
            attempt=job.attempt,
            restarts=job.attempt - 1,
        )
        if not session.deliver_bundle(start.tar()):
            raise ConnectionLost("the start bundle could not be written on the instance")
        self._grant(session, job)

    def _has_checkpoints(self, job: Job) -> bool:
        """Did an earlier attempt sync checkpoints? (Then the next attempt restores them, not resume_from's.)"""
        if job.attempt <= 1 or self.grants is None:
            return False
        try:
            return self.grants.has_checkpoints(job)
        except Exception as error:  # noqa: BLE001 - without the bucket the attempt cannot restore anything either
            raise ConnectionLost(f"could not look for the job's checkpoints ({type(error).__name__})") from None

    def _grant(self, session: SshSession, job: Job) -> None:
        """Write the instance's short-lived S3 credentials (best effort: without them its uploads fail, are retried
        and are reported on the job; the stream goes on)."""
        if self.grants is None:
            return
        try:
            document = self.grants.issue(job)
        except Exception:  # noqa: BLE001 - an STS or config failure must not stop the log stream
            logger.warning("could not issue the instance's storage grants", extra={"job_id": job.job_id})
            return
        if not session.write_grants(document):
            logger.warning("could not write the instance's storage grants", extra={"job_id": job.job_id})

    def _cancel_by(self, job: Job) -> float:
        """The relay clock's time by which a cancelled job's (or an ended attempt's) instance is terminated,
        drained or not."""
        if job.status == JobStatus.RECOVERING and job.attempts:
            ended = job.attempts[-1].ended_at or utcnow()
            bound = RECOVERY_DRAIN_SECONDS
        else:
            ended = job.ended_at or utcnow()
            bound = self.settings.cancel_drain_seconds
        left = bound - (utcnow() - ended).total_seconds()
        return self.clock() + max(0.0, left)

    def _stream(
        self,
        session: SshSession,
        job: Job,
        deadline: float,
        hold: LeaseHold,
        pages: PageWriter | None = None,
        nudge: threading.Event | None = None,
    ) -> RelayOutcome:
        """Follow the output from the committed offset. Writing to DynamoDB overlaps reading the next bytes (one
        write in flight at a time, so commits stay in order); every exit waits for that write first. Through a
        shard's pages, the bytes only pages hold are compacted at every exit (and by whoever resumes, if this loop
        dies: `fold_pages`)."""
        settings = self.settings
        base = self._attempt_base(job, hold)  # where this attempt's output begins in the log (after its marker)
        offset = self.logs.progress(job.job_id).committed  # bytes handed to the writer (durable once written)
        self.logs.discard_after(job.job_id, offset)  # leftovers of a relay that died before committing them
        if pages is not None:  # then a dead loop's paged bytes, folded in (as chunks: one contiguous run stays)
            offset = self.logs.fold_pages(job.job_id).committed
        start = offset
        paged: PagedTail | None = None
        if pages is not None:

            def compact_to(at: int, data: bytes, pointer: PagePointer) -> None:
                self._store(job.job_id, at, data, hold, pointer)

            def check_lease() -> None:
                if not hold.valid():
                    raise LeaseExpired(f"job {job.job_id}: this relay invocation's lease has ended")

            paged = PagedTail(job.job_id, pages, offset, compact_to, check_lease, self.clock)
            paged.compact(repoint=True)  # readers: this loop's entries follow the committed offset
        channel = session.stream(offset - base, poll_seconds=min(0.1, settings.flush_interval_seconds))
        writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relay-write")
        in_flight: Future[None] | None = None
        in_flight_end = offset
        paging: deque[tuple[Future[None], int]] = deque()  # bytes handed to the shard's pages, not stored yet
        committed = offset  # written and committed: what the drain progress reports
        reported = offset
        last_report = 0.0
        pending = bytearray()
        pending_since = 0.0
        last_data = self.clock()
        last_heard = last_data  # the stream's watcher's last heartbeat (or its connection's start)
        last_status = self.clock()  # the fallback status command: the watcher reports the result first
        final_size: int | None = None
        result: dict[str, str] | None = None
        cancel_by: float | None = None
        last_cancel_check = self.clock()
        grant_due = self.clock() + job_io.GRANT_REFRESH_SECONDS
        if job.status in {JobStatus.CANCELLED, JobStatus.RECOVERING}:
            cancel_by = self._cancel_by(job)
        check_every = settings.cancel_check_seconds
        if job.market == Market.SPOT and job.spec is not None and job.spec.job_recovery is not None:
            check_every = min(check_every, settings.interruption_check_seconds)
        if nudge is not None:  # a shard's loop: the cancel and the attempt's end nudge it; this is the fallback
            check_every = settings.nudged_check_seconds

        def settle() -> None:
            nonlocal in_flight, committed
            if in_flight is not None:
                done, in_flight = in_flight, None
                done.result()  # re-raises a failed write here
                committed = in_flight_end
            stored_pages(wait=True)

        def stored_pages(wait: bool) -> None:
            """Count what the shard's pages stored (in order; wait: all of it), re-raising a failed page here."""
            nonlocal committed
            while paging and (wait or paging[0][0].done()):
                page, end = paging.popleft()
                page.result()
                committed = max(committed, end)

        def flush(final: bool) -> None:
            nonlocal offset, in_flight, in_flight_end
            ready = logchunks.ready_bytes(pending, final)
            if ready <= 0:
                return
            data = bytes(pending[:ready])
            del pending[:ready]
            if paged is not None and in_flight is not None:
                settle()  # a compaction in flight first: the tail is the writer thread's until it ends
            if paged is not None and paged.can_page(len(data), final):
                paging.append((paged.append(offset, data), offset + ready))  # no wait: pages are written per tick
            elif paged is not None:
                settle()
                in_flight = writer.submit(paged.store, offset, data, final)
            else:
                settle()
                in_flight = writer.submit(self._store, job.job_id, offset, data, hold)
            offset += ready
            in_flight_end = offset

        def compact(strict: bool) -> None:
            """The bytes only pages hold, written as the job's chunks (strict: or the exit fails; else a failure
            leaves them to whoever resumes: fold_pages)."""
            if paged is None:
                return
            try:
                paged.compact()
            except Exception:
                if strict:
                    raise
                logger.warning("could not compact the log's tail", extra={"job_id": job.job_id}, exc_info=True)

        def lost(reason: str) -> ConnectionLost:
            flush(final=False)
            settle()
            compact(strict=False)
            return ConnectionLost(reason)

        flush_interval = 0.0 if paged is not None else settings.flush_interval_seconds  # pages batch the writes

        try:
            while True:
                hold.renew_if_due()
                if not hold.valid():  # the invocation is dying (or outlived the lease): write nothing more
                    raise LeaseExpired(f"job {job.job_id}: this relay invocation's hold on the lease has ended")
                if in_flight is not None and in_flight.done():
                    settle()  # a failed write surfaces now, not at the next flush
                stored_pages(wait=False)
                now = self.clock()
                if now >= deadline:
                    flush(final=False)
                    settle()
                    compact(strict=False)
                    return RelayOutcome(False, "budget used while streaming", offset - start)
                try:
                    data = channel.recv(settings.recv_bytes)
                except TimeoutError:
                    data = None
                except OSError as error:
                    raise lost(type(error).__name__) from None
                ended = data == b""
                now = self.clock()
                spoke, watched = channel.heard()
                if spoke:
                    last_heard = now
                if final_size is None and watched is not None and watched[0] is not None:
                    result, final_size = watched[0], base + watched[1]
                if data:
                    if not pending:
                        pending_since = now
                    pending += data
                    last_data = now
                idle_writer = in_flight is None or in_flight.done()
                if pending and (
                    len(pending) >= settings.flush_bytes
                    or (now - pending_since >= flush_interval and (paged is None or idle_writer))
                ):
                    flush(final=False)
                    pending_since = now
                elif paged is not None and idle_writer and paged.due():
                    settle()
                    in_flight = writer.submit(paged.compact)  # a quiet job's tail (or pointer), in the background
                if now >= grant_due and job.status in WITH_INSTANCE:
                    grant_due = now + job_io.GRANT_REFRESH_SECONDS
                    self._grant(session, job)
                nudged = nudge is not None and nudge.is_set()
                if cancel_by is None and (nudged or now - last_cancel_check >= check_every):
                    if nudge is not None:
                        nudge.clear()  # before the read: a nudge after it is seen on the next pass
                    last_cancel_check = now
                    current = self.jobs.get(job.job_id)
                    if current is not None and current.status == JobStatus.CANCELLED:
                        logger.info("the job was cancelled: stopping it", extra={"job_id": job.job_id})
                        session.request_cancel()
                        job, cancel_by = current, self._cancel_by(current)
                    elif current is not None and current.status == JobStatus.RECOVERING:
                        logger.info("the attempt ended: stopping it", extra={"job_id": job.job_id})
                        session.request_stop()
                        job, cancel_by = current, self._cancel_by(current)
                if cancel_by is not None and now >= cancel_by and final_size is None:
                    flush(final=False)
                    settle()
                    compact(strict=False)
                    self._cancel_unfinished(job)
                    return RelayOutcome(True, "cancelled: the drain bound was reached", offset - start)
                quiet = now - last_data >= settings.idle_before_status_seconds
                poll_every = settings.status_poll_seconds if cancel_by is None else settings.stopping_poll_seconds
                if final_size is None and (ended or (quiet and now - last_status >= poll_every)):
                    last_status = now
                    result, size = session.status()
                    if result is not None:
                        final_size = base + size
                if final_size is not None and committed > reported and now - last_report >= DRAIN_REPORT_SECONDS:
                    # After the job ended, the wrapper keeps the instance up while this advances (a backlog drains
                    # at the write rate). Only then: the wrapper reads it only once its result is written, and an
                    # SSH command per job every few seconds while it streams would cost the shard and the instance
                    # (and block this loop for the command's timeout on a stalled server, not silence_seconds).
                    reported, last_report = committed, now
                    self._report_drain(session, committed - base)
                if final_size is not None and offset + len(pending) >= final_size:
                    flush(final=True)
                    settle()
                    compact(strict=True)
                    self._finish(job, result or {}, offset)
                    self._mark_drained(session, job)
                    return RelayOutcome(True, "the output is drained", offset - start)
                if ended:
                    raise lost("the output stream ended")
                if now - max(last_data, last_heard) > settings.silence_seconds:
                    raise lost(f"no word from the instance for {settings.silence_seconds:.0f} s")
                if final_size is not None and now - last_data > settings.stall_seconds:
                    raise lost(f"no output for {settings.stall_seconds:.0f} s although the job has ended")
        finally:
            channel.close()
            if in_flight is not None:
                in_flight.cancel()
                wait([in_flight])
            writer.shutdown(wait=True)

    def _cancel_unfinished(self, job: Job) -> None:
        """A cancelled job's (or an ended attempt's) instance did not finish within the drain bound: terminate it
        now; the log goes on without the tail the instance did not hand over (final, for a cancelled job)."""
        logger.warning("drain bound reached; terminating the instance", extra={"job_id": job.job_id})
        if self.terminator is not None:
            try:
                self.terminator.terminate(job)
            except Exception:  # noqa: BLE001 - the reconciler (or Recover) terminates it if this failed
                logger.warning("could not terminate an ended job's instance", extra={"job_id": job.job_id})
        if job.status != JobStatus.RECOVERING:
            progress = self.logs.fold_pages(job.job_id)
            self.logs.commit(job.job_id, progress.committed, complete=True)

    def _report_drain(self, session: SshSession, committed: int) -> None:
        """Tell the wrapper how far the output is durably written (`relay/progress`, replaced atomically): while it
        advances, the wrapper keeps waiting for `drained` (it gives up after DRAIN_TIMEOUT without progress)."""
        path = f"{STATE_DIR}/relay/progress"
        with contextlib.suppress(ConnectionLost):  # best effort: the stream notices a dead connection itself
            session.run(f"printf '%s\\n' {int(committed)} > {path}.tmp && mv -f {path}.tmp {path}")

    def _mark_drained(self, session: SshSession, job: Job) -> None:
        """Tell the wrapper it may terminate the instance now (else it waits out DRAIN_TIMEOUT_SECONDS, billing)."""
        for attempt in range(3):
            try:
                if session.mark_drained():
                    return
            except ConnectionLost:
                pass
            self.sleep(0.5 * (attempt + 1))
        logger.warning("could not write the drained marker; the instance stops after its drain timeout",
                       extra={"job_id": job.job_id})  # fmt: skip

    def _store(
        self, job_id: str, offset: int, data: bytes, hold: LeaseHold | None = None, pages: PagePointer | None = None
    ) -> None:
        """Write the chunks, then (only then) commit the offset after them — never once the lease has ended. `pages`:
        where the bytes after them will be (a shard loop's pages)."""
        hold = hold or LeaseHold.unbounded(self.clock)
        expired = f"job {job_id}: this relay invocation's lease has ended; another loop may own it"
        if not hold.valid():
            raise LeaseExpired(expired)
        chunks = logchunks.cut(offset, data, self.settings.chunk_bytes)

        def give_up() -> bool:  # called while throttled chunks are retried: keep the lease meanwhile
            hold.renew_if_due()
            return not hold.valid()

        try:  # throttled chunks are retried until written (write returns only then), never past the lease
            self.logs.write(job_id, chunks, give_up=give_up)
        except LogWriteAbandoned:
            if not hold.valid():
                raise LeaseExpired(expired) from None
            raise
        if not hold.valid():  # a long throttled write: the lease may have ended meanwhile
            raise LeaseExpired(expired)
        self.logs.commit(job_id, offset + len(data), pages=pages)

    def _attempt_base(self, job: Job, hold: LeaseHold) -> int:
        """The log offset where the current attempt's output begins. From attempt 2 on, its marker line goes at
        `log_marker_at` (recorded by Recover when the previous attempt's log was final) and the output follows it;
        the marker is written once (a deterministic text: a retried write rewrites the same bytes)."""
        if job.attempt <= 1 or job.log_marker_at is None:
            return 0
        previous = job.attempts[-1].end_reason if job.attempts else "a failure"
        text = recovery.marker(
            job.attempt, job.instance_type or "?", job.availability_zone, job.region, str(job.market or "?"),
            str(previous),
        )  # fmt: skip
        data = text.encode()
        base = job.log_marker_at + len(data)
        if self.logs.progress(job.job_id).committed < base:
            self.logs.discard_after(job.job_id, job.log_marker_at)
            self._store(job.job_id, job.log_marker_at, data, hold)
            self.logs.commit(job.job_id, base, new_attempt=True)  # this attempt's drain is still to come
        return base

    def _finish(self, job: Job, result: dict[str, str], committed: int) -> None:
        """Record the wrapper's outcome once the output is drained: the job relaunches (RECOVERING, its log goes
        on with the next attempt) if it is recovering already or its job_recovery relaunches after this failure;
        else the log is complete and the job ends SUCCEEDED, or FAILED with the reason and exit code."""
        current = self.jobs.get(job.job_id) or job
        if current.status == JobStatus.RECOVERING:
            return  # the attempt ended while it ran (e.g. a spot interruption warning): the next one follows
        target, fields = outcomes.from_result(current, result)
        reason = fields.get("failure_reason")
        if target == JobStatus.FAILED and reason is not None and current.status in WITH_INSTANCE:
            policy = current.spec.job_recovery if current.spec else None
            ending = recovery.EndedAttempt(str(reason), fields.get("exit_code"))
            if recovery.decide(policy, ended_attempts(current), ending).relaunch:
                extra = {k: v for k, v in fields.items() if k not in {"failure_reason", "failure_message", "exit_code"}}
                message = str(fields.get("failure_message", ""))
                changed = self.ender.end(current, reason, message, exit_code=fields.get("exit_code"), fields=extra)
                if changed is not None and changed.status == JobStatus.RECOVERING:
                    return
                current = self.jobs.get(job.job_id) or current
                if not current.status.terminal:
                    return
        self.logs.commit(job.job_id, committed, complete=True, drained=True)
        if current.status.terminal:
            return
        if target == JobStatus.FAILED and reason is not None:
            message = str(fields.get("failure_message", ""))
            extra = {k: v for k, v in fields.items() if k not in {"failure_reason", "failure_message", "exit_code"}}
            if self.ender.end(current, reason, message, exit_code=fields.get("exit_code"), fields=extra) is None:
                logger.info("job already ended; outcome not recorded", extra={"job_id": job.job_id})
            return
        try:
            self.jobs.transition(job.job_id, target, fields=fields, attempt=current.attempt)
        except TransitionRefused:
            logger.info("job already ended; outcome not recorded", extra={"job_id": job.job_id})


class ProviderInstanceLocator:
    """Where the job's instance is, from the provider's EC2 (DescribeInstances, in the seed policy). The relay runs
    outside any VPC, so it connects to the public address."""

    def __init__(self, providers: Any, secrets: SecretStore, clients: Any) -> None:
        self.providers = providers
        self.secrets = secrets
        self.clients = clients
        self._credentials: dict[str, tuple[float, Any]] = {}  # provider → (read at, credentials)

    def locate(self, job: Job) -> Located:
        from botocore.exceptions import ClientError

        from controlplane.adapters.ec2 import Ec2Account, error_code

        if not job.instance_id:
            return Located(None, "pending")
        cached = self._credentials.get(job.provider_id)
        if cached is not None and time.monotonic() - cached[0] < 300:
            credentials = cached[1]
        else:
            provider = self.providers.get(job.team_id, job.provider_id)
            if provider is None:
                return Located(None, "unknown")
            credentials = self.secrets.get_provider_credentials(provider.secret_arn)
            self._credentials[job.provider_id] = (time.monotonic(), credentials)
        ec2 = Ec2Account(self.clients("ec2", credentials, job.region), job.region)
        try:
            found = ec2.describe_instances([job.instance_id])
        except ClientError as error:
            code = error_code(error)
            if code in AUTH_CODES:
                # The provider's keys were revoked (or their policy detached) while the job runs: the relay needs
                # no AWS call to stream, so keep going to the address it reached the instance at.
                self._credentials.pop(job.provider_id, None)
                why = f"the provider's credentials are rejected ({code})"
                logger.warning("relay cannot describe the instance", extra={"job_id": job.job_id, "code": code})
                return Located(job.instance_address, "unknown", unverified=why + "; no recorded address to use")
            if code != "InvalidInstanceID.NotFound":
                raise
            found = []
        if not found:
            # Asked by id and not found: right after RunInstances DescribeInstances may not know the instance yet
            # (eventual consistency); past the visibility grace, this is the confirmation that it is gone.
            return Located(None, "pending" if outcomes.not_yet_visible(job, utcnow()) else "terminated")
        instance = found[0]
        launched = instance.get("LaunchTime")
        return Located(
            instance.get("PublicIpAddress"),
            str(instance.get("State", {}).get("Name", "pending")),
            str(instance.get("StateReason", {}).get("Code", "")),
            launched_at=launched if isinstance(launched, dt.datetime) else None,
        )

    def state_reason(self, job: Job) -> str:
        """EC2's StateReason code for the job's instance (e.g. Server.SpotInstanceTermination); "" if unknown."""
        return self.locate(job).state_reason

    def terminate(self, job: Job) -> None:
        """Terminate the job's instance with its provider's keys (ec2:TerminateInstances, in the seed policy)."""
        from controlplane.adapters.ec2 import Ec2Account

        provider = self.providers.get(job.team_id, job.provider_id)
        if provider is None or not job.instance_id:
            return
        credentials = self.secrets.get_provider_credentials(provider.secret_arn)
        Ec2Account(self.clients("ec2", credentials, job.region), job.region).terminate([job.instance_id])
