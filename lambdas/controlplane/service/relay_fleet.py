"""The relay fleet: a few relay shards follow every running job's output (docs/relay-fleet.md).

A job's workflow execution no longer holds a Lambda while its job runs. Its Relay step *enrolls* the job
(`Enroller.enroll`, a `lambda:invoke.waitForTaskToken` task that returns at once) and waits, at no cost, until a
shard reports the job's relay outcome with its task token (SendTaskSuccess / SendTaskFailure). Meanwhile:

- A **shard** is one Step Functions execution (the relay-fleet state machine) looping one Lambda,
  `ShardRunner.follow`: an invocation follows up to SHARD_CAPACITY jobs at once, each in its own thread running the
  same per-job relay loop as before (service/relay.py: one SSH connection, the job's relay lease, byte-exact writes,
  the drain handshake). So one job's stalled SSH server or flood of output never blocks another's loop.
- **Assignment** is a conditional write: a shard item (state table, pk `relay-fleet`) counts its jobs, and a job
  joins the fullest live shard with room (so shards fill up and idle ones retire), or a new shard is created and its
  execution started. The job item records its shard and its current task token.
- **Liveness**: a shard heartbeats its item every HEARTBEAT_SECONDS and each of its jobs' tasks (SendTaskHeartbeat)
  as often. A shard whose invocation crashes is retried by its execution at once and takes its jobs back (same
  lease owner). A shard whose execution died stops heartbeating the tasks: each job's Relay task times out after
  the workflow's HeartbeatSeconds, its Retry enrolls it again, and enrolment skips shards whose item is stale
  (SHARD_STALE_SECONDS). The new shard takes the job's relay lease once the dead one's has ended
  (service/relay_lease.py). Bound: task heartbeat timeout + the lease + one tick (docs/relay-fleet.md).
- **One follower per job**: a shard stops following a job that left its item (enrolled elsewhere) and releases
  its lease; a job whose lease another loop still holds is tried again every CONTENDED_RETRY_SECONDS for as long
  as it is this shard's. A shard item names its one execution: any other execution of that shard follows nothing.
- A failing DynamoDB or Step Functions call skips a tick; only failures lasting MAX_FAILING_SECONDS end the
  invocation (and every loop with it).
- A shard with no jobs for IDLE_SECONDS deletes its item (conditional on its count being 0) and its execution ends.
- A shard's execution older than RENEW_AFTER_SECONDS hands over to a new execution of the same shard at the end
  of an invocation (each loop adds 7 events; an execution holds at most 25,000).

The relay lease owner of a job followed by a shard is `<the job's execution ARN>#<shard id>`: the execution's
other steps (Recover) recognise their own relay, and two shards never share a lease.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from controlplane.core.models import utcnow
from controlplane.service.relay import RelayOutcome, RelayService
from controlplane.service.relay_pages import PageWriter

logger = logging.getLogger(__name__)

# Jobs one shard follows at once: the Lambda concurrency held is ⌈running jobs / 50⌉. A job with typical logs takes
# about 0.65 % of a 512 MB Lambda's vCPU (bench section 8, since the stream's watcher replaced the per-second status
# command), so a full shard uses about a third of it (docs/relay-fleet.md).
SHARD_CAPACITY: Final = 50
HEARTBEAT_SECONDS: Final = 30.0  # a shard heartbeats its item and its jobs' tasks this often
# A shard item not heartbeaten for this long is dead: enrolment skips it. Below the Relay task's HeartbeatSeconds
# (120), so a job whose task timed out on a dead shard never joins that shard again.
SHARD_STALE_SECONDS: Final = 90.0
IDLE_SECONDS: Final = 60.0  # a shard without jobs this long retires (its execution ends)
TICK_SECONDS: Final = 0.25  # how often a shard looks for newly enrolled jobs and finished threads
CONTENDED_RETRY_SECONDS: Final = 5.0  # the job's previous shard still holds its lease: try again after this
JOB_THREAD_PREFIX: Final = "relay-job:"  # a job's loop runs in thread `relay-job:<job_id>` (logs, local faults)
END_RESERVE_SECONDS: Final = 20.0  # an invocation stops following this long before its Lambda's timeout
MAX_FAILING_SECONDS: Final = 60.0  # a shard whose own calls fail this long lets its invocation fail (and retry)
RENEW_AFTER_SECONDS: Final = 7 * 24 * 3600.0  # ~700 loops of 15 minutes: far below the history's 25,000 events


@dataclass(frozen=True)
class Shard:
    shard_id: str
    jobs: frozenset[str]
    count: int
    heartbeat_at: float  # epoch seconds
    execution: str = ""  # the name of the shard's one execution (another execution of it stops at once)
    started: bool = False  # its execution has heartbeaten: it runs
    nudged: frozenset[str] = frozenset()  # jobs cancelled or whose attempt ended since the shard last looked


@dataclass(frozen=True)
class Enrolment:
    job_id: str
    task_token: str
    owner: str  # the job's workflow execution (its relay lease owner, before `#<shard>`)
    shard_id: str | None
    superseded: str | None = None  # the task token of another execution that followed the job before


class FleetStore(Protocol):
    """adapters/relay_fleet.py DynamoFleetStore."""

    def shards(self) -> list[Shard]: ...
    def shard(self, shard_id: str) -> Shard | None: ...
    def create_shard(self, shard_id: str, now: float, execution: str) -> bool: ...
    def hand_over(self, shard_id: str, execution: str) -> bool: ...
    def join(self, shard_id: str, job_id: str, task_token: str, owner: str, superseded: str | None) -> bool: ...
    def forget_superseded(self, job_id: str, token: str) -> None: ...
    def leave(self, shard_id: str, job_id: str, token: str | None = None) -> bool: ...
    def enrolment(self, job_id: str) -> Enrolment | None: ...
    def heartbeat(self, shard_id: str, now: float) -> bool: ...
    def retire(self, shard_id: str, stale_before: float | None = None) -> bool: ...
    def nudge(self, shard_id: str, job_id: str) -> bool: ...
    def clear_nudges(self, shard_id: str, job_ids: frozenset[str]) -> None: ...


class TaskCallbacks(Protocol):
    """Step Functions' callback API (SendTaskSuccess / SendTaskFailure / SendTaskHeartbeat). Each returns False
    when the token is no longer waited on (the execution moved on, timed out or was stopped)."""

    def succeed(self, token: str, output: dict[str, Any]) -> bool: ...
    def fail(self, token: str, error: str, cause: str) -> bool: ...
    def heartbeat(self, token: str) -> bool: ...


class ShardStarter(Protocol):
    def start(self, shard_id: str, execution: str) -> None:
        """Start the shard's execution named `execution` (idempotent)."""


def _shard_name(number: int) -> str:
    return f"shard-{number:04d}"


def _shard_number(shard_id: str) -> int:
    try:
        return int(shard_id.removeprefix("shard-"))
    except ValueError:
        return 0


class Enroller:
    """The Relay step: put the job on a shard (the execution then waits for the shard's callback)."""

    def __init__(
        self,
        store: FleetStore,
        starter: ShardStarter,
        clock: Callable[[], float] = time.time,
        capacity: int = SHARD_CAPACITY,
    ) -> None:
        self.store = store
        self.starter = starter
        self.clock = clock
        self.capacity = capacity

    def enroll(self, job_id: str, task_token: str, owner: str) -> str:
        """The shard now following the job. A previous enrolment of the job (another execution's, or this one's
        before its task timed out) is replaced: its shard lets the job go, and a different execution still waiting
        on its token is told by the new shard that another execution follows the job (its workflow ends)."""
        previous = self.store.enrolment(job_id)
        if previous is not None and previous.shard_id is not None:
            self.store.leave(previous.shard_id, job_id)
        superseded = None
        if previous is not None and previous.task_token != task_token and previous.owner != owner:
            superseded = previous.task_token  # the new shard tells that execution (ShardRunner._start)
        for _ in range(5):  # lost races for the last slot of a shard: pick again
            shard_id = self._place(job_id, task_token, owner, superseded)
            if shard_id is not None:
                logger.info("job enrolled on a relay shard", extra={"job_id": job_id, "shard": shard_id})
                return shard_id
        raise RuntimeError(f"could not place job {job_id} on a relay shard (contention); the workflow retries")

    def _place(self, job_id: str, task_token: str, owner: str, superseded: str | None) -> str | None:
        now = self.clock()
        shards = self.store.shards()
        for dead in (s for s in shards if now - s.heartbeat_at >= SHARD_STALE_SECONDS and s.count <= 0):
            self.store.retire(dead.shard_id, stale_before=now - SHARD_STALE_SECONDS)  # its jobs all moved on
        live = [s for s in shards if now - s.heartbeat_at < SHARD_STALE_SECONDS]
        open_shards = sorted((s for s in live if s.count < self.capacity), key=lambda s: (-s.count, s.shard_id))
        for shard in open_shards:  # the fullest first: shards fill up, idle ones retire
            if self.store.join(shard.shard_id, job_id, task_token, owner, superseded):
                if not shard.started and shard.execution:
                    # Its creator may have died between creating it and starting it: start it (idempotent).
                    self.starter.start(shard.shard_id, shard.execution)
                return shard.shard_id
        # The lowest free number: enrolments racing for a new shard race for the same id, and one creates it.
        shard_id = _shard_name(min(set(range(1, len(shards) + 2)) - {_shard_number(s.shard_id) for s in shards}))
        execution = f"{shard_id}-{int(now * 1000)}"
        if not self.store.create_shard(shard_id, now, execution):
            return None  # another enrolment created it first: join it on the next pass
        joined = self.store.join(shard_id, job_id, task_token, owner, superseded)
        self.starter.start(shard_id, execution)  # after the join: an empty shard would only wait for it
        return shard_id if joined else None


def _loop_owner(enrolment: Enrolment, shard_id: str) -> str:
    """The relay lease owner of a shard's loop for an enrolment: the job's execution, then `#<shard>`."""
    return f"{enrolment.owner}#{shard_id}"


@dataclass
class _Followed:
    thread: threading.Thread
    owner: str = ""
    task_token: str = ""  # the enrolment this loop follows the job for
    stop: threading.Event = field(default_factory=threading.Event)  # the job left this shard: stop following it
    nudge: threading.Event = field(default_factory=threading.Event)  # the job was cancelled or its attempt ended
    done: threading.Event = field(default_factory=threading.Event)  # the loop returned (its thread is ending)
    outcome: RelayOutcome | None = None
    error: BaseException | None = None


@dataclass
class ShardReport:
    shard_id: str
    retired: bool
    renewed: bool = False
    followed: int = 0
    finished: list[str] = field(default_factory=list)

    def as_state(self) -> dict[str, Any]:
        return {"shard_id": self.shard_id, "retired": self.retired or self.renewed, "renewed": self.renewed,
                "followed": self.followed, "finished": len(self.finished)}  # fmt: skip


class ShardRunner:
    """One invocation of a shard: follow its jobs until the invocation's time is up (or the shard retires)."""

    def __init__(
        self,
        store: FleetStore,
        callbacks: TaskCallbacks,
        relayer: RelayService,
        starter: ShardStarter,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        tick_seconds: float = TICK_SECONDS,
        idle_seconds: float = IDLE_SECONDS,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
        shared_pages: bool = True,
    ) -> None:
        self.shared_pages = shared_pages  # the jobs' small flushes go out as shared pages (service/relay_pages.py)
        self.store = store
        self.callbacks = callbacks
        self.relayer = relayer
        self.starter = starter
        self.clock = clock
        self.wall = wall
        self.tick_seconds = tick_seconds
        self.idle_seconds = idle_seconds
        self.heartbeat_seconds = heartbeat_seconds

    def follow(
        self, shard_id: str, time_left: Callable[[], float], execution_age: float = 0.0, execution: str = ""
    ) -> ShardReport:
        """Follow the shard's jobs until this invocation's time is up. `execution` (this execution's name) must be
        the shard's; `execution_age` (seconds since it started) decides whether the next invocation runs in a new
        execution. A failing call to DynamoDB or Step Functions skips a tick; only failures lasting
        MAX_FAILING_SECONDS end the invocation (and every loop with it)."""
        report = ShardReport(shard_id, retired=False)
        followed: dict[str, _Followed] = {}
        not_before: dict[str, float] = {}
        stopping = threading.Event()
        wake = threading.Event()  # a loop returned: report it now, not at the next tick
        idle_since = self.clock()
        last_heartbeat = float("-inf")
        failing_since: float | None = None
        pages = PageWriter(self.relayer.logs, f"{shard_id}-{secrets.token_hex(6)}") if self.shared_pages else None

        try:
            while True:
                now = self.clock()
                ending = time_left() < END_RESERVE_SECONDS
                try:
                    shard = self.store.shard(shard_id)
                    if shard is None or (execution and shard.execution and shard.execution != execution):
                        report.retired = True  # retired, or handed to another execution: nothing to follow here
                        break
                    if now - last_heartbeat >= self.heartbeat_seconds:
                        self.store.heartbeat(shard_id, self.wall())
                        self._heartbeat_tasks(shard_id, shard.jobs, followed)
                        last_heartbeat = now
                    for job_id, entry in followed.items():
                        if job_id not in shard.jobs:
                            entry.stop.set()  # it left this shard (enrolled elsewhere): stop writing its log
                        elif job_id in shard.nudged:
                            entry.nudge.set()  # its loop reads the job now (a loop not started yet reads it first)
                    if shard.nudged:
                        self.store.clear_nudges(shard_id, shard.nudged)
                    settled: set[str] = set()  # `shard` was read before they left it
                    wake.clear()
                    for job_id, entry in list(followed.items()):
                        if entry.done.is_set() or not entry.thread.is_alive():
                            entry.thread.join()
                            del followed[job_id]
                            retry_at = self._settle(shard_id, job_id, entry, report)
                            if retry_at is None:
                                settled.add(job_id)
                            else:
                                not_before[job_id] = now + retry_at
                    if not ending:
                        for job_id in sorted(shard.jobs - set(followed) - settled):
                            if not_before.get(job_id, 0.0) > now:
                                continue
                            not_before.pop(job_id, None)
                            started = self._start(shard_id, job_id, time_left, stopping, pages, wake)
                            if started is not None:
                                followed[job_id] = started
                                report.followed += 1
                    if shard.jobs or followed:
                        idle_since = now
                    elif now - idle_since >= self.idle_seconds and self.store.retire(shard_id):
                        report.retired = True
                        break
                    failing_since = None
                except (ClientError, BotoCoreError) as error:  # e.g. throttled: the next tick retries
                    failing_since = now if failing_since is None else failing_since
                    failure = {"shard": shard_id, "error_type": type(error).__name__}
                    logger.warning("relay shard tick failed", extra=failure)
                    if now - failing_since >= MAX_FAILING_SECONDS:
                        raise
                if ending and not followed:
                    break
                wake.wait(self.tick_seconds)
        except BaseException:
            stopping.set()  # this invocation dies: its jobs' loops stop writing (their leases end with it)
            raise
        finally:
            for entry in followed.values():
                entry.thread.join()
            if pages is not None:
                pages.close()
        if not report.retired and execution_age >= RENEW_AFTER_SECONDS:
            successor = f"{shard_id}-{int(self.wall() * 1000)}"
            if self.store.hand_over(shard_id, successor):  # from now on only the successor follows the shard
                self.starter.start(shard_id, successor)
                report.renewed = True
        return report

    def _start(
        self,
        shard_id: str,
        job_id: str,
        time_left: Callable[[], float],
        stopping: threading.Event,
        pages: PageWriter | None = None,
        wake: threading.Event | None = None,
    ) -> _Followed | None:
        """Start following a job of the shard in its own thread (None: it is enrolled elsewhere now)."""
        enrolment = self.store.enrolment(job_id)
        if enrolment is None or enrolment.shard_id != shard_id:
            self.store.leave(shard_id, job_id)  # a stale slot (two enrolments raced): free it
            return None
        owner = _loop_owner(enrolment, shard_id)
        if enrolment.superseded:  # the execution that followed the job before ends; this shard's is the job's now
            detail = f"another workflow execution follows this job's output ({enrolment.owner})"
            self.callbacks.succeed(enrolment.superseded, RelayOutcome(True, detail).as_state())
            self.store.forget_superseded(job_id, enrolment.superseded)
        entry = _Followed(threading.Thread(target=lambda: None), owner=owner, task_token=enrolment.task_token)

        def job_time_left() -> float:
            if stopping.is_set() or entry.stop.is_set():
                return 0.0
            return time_left() - END_RESERVE_SECONDS + 5.0

        def run() -> None:
            try:
                entry.outcome = self.relayer.relay(job_id, job_time_left, owner, pages, nudge=entry.nudge)
            except BaseException as error:  # noqa: BLE001 - reported to the job's workflow as the step's error
                entry.error = error
            finally:
                entry.done.set()
                if wake is not None:
                    wake.set()

        entry.thread = threading.Thread(target=run, name=f"{JOB_THREAD_PREFIX}{job_id}", daemon=True)
        entry.thread.start()
        return entry

    def _settle(self, shard_id: str, job_id: str, entry: _Followed, report: ShardReport) -> float | None:
        """A job's loop returned: report a finished relay (or its error) to the job's workflow and let the job go;
        None, or the seconds after which to follow it again."""
        outcome, error = entry.outcome, entry.error
        enrolment = self.store.enrolment(job_id)
        if enrolment is None or enrolment.shard_id != shard_id:
            # Enrolled elsewhere meanwhile: that shard reports it. Free the slot, and the lease at once (its loop
            # stopped writing), so the new shard's loop takes over without waiting for the lease to run out.
            self.store.leave(shard_id, job_id)
            self._release(job_id, entry.owner)
            return None
        if enrolment.task_token != entry.task_token:
            # Enrolled again, on this shard, while this loop ran (the job's Relay task was retried, or a restarted
            # workflow took the job over): how this loop ended is not the new enrolment's to hear. Follow the job
            # again at once for it, without waiting out the old owner's lease.
            if entry.owner != _loop_owner(enrolment, shard_id):
                self._release(job_id, entry.owner)
            return 0.0
        if outcome is not None and not outcome.finished:
            return 0.0  # the invocation's time is up (the next invocation follows it on)
        if outcome is not None and outcome.contended_by is not None:
            # Another loop holds the lease (a shard that followed the job before, dying or told to stop): this shard
            # is the job's, so it waits for that lease to end rather than telling its execution it is finished.
            return CONTENDED_RETRY_SECONDS
        if error is not None:
            name = type(error).__name__
            logger.warning("relay loop failed", extra={"job_id": job_id, "shard": shard_id, "error_type": name})
            self.callbacks.fail(enrolment.task_token, name, str(error)[:1000])
        else:
            assert outcome is not None
            self.callbacks.succeed(enrolment.task_token, outcome.as_state())
        self.store.leave(shard_id, job_id, enrolment.task_token)  # a re-enrolment made meanwhile stays
        report.finished.append(job_id)
        return None

    def _release(self, job_id: str, owner: str) -> None:
        lease = getattr(self.relayer, "lease", None)
        if lease is None or not owner:
            return
        with contextlib.suppress(Exception):  # best effort: otherwise the lease runs out by itself
            lease.shorten_relay(job_id, owner, utcnow())

    def _heartbeat_tasks(self, shard_id: str, jobs: frozenset[str], followed: dict[str, _Followed]) -> None:
        """Heartbeat each job's Relay task; a loop following a job for an enrolment since replaced (on this shard)
        is stopped, and _settle follows the job again for the new one."""
        for job_id in jobs:
            enrolment = self.store.enrolment(job_id)
            if enrolment is None or enrolment.shard_id != shard_id:
                continue
            entry = followed.get(job_id)
            if entry is not None and entry.task_token != enrolment.task_token:
                entry.stop.set()
            with contextlib.suppress(Exception):  # best effort: a missed heartbeat is caught up 30 s later
                self.callbacks.heartbeat(enrolment.task_token)
