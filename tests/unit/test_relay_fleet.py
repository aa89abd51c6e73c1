"""The relay fleet (service/relay_fleet.py): enrolment packs jobs onto live shards, a shard follows each job in its
own thread and reports every outcome with the job's task token, and a slow job never holds up the others."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from botocore.exceptions import ClientError

from controlplane.service.relay import RelayOutcome
from controlplane.service.relay_fleet import SHARD_STALE_SECONDS, Enroller, Enrolment, Shard, ShardRunner


@dataclass
class FakeFleet:
    """The store's contract, in memory: conditional slots, one enrolment per job."""

    capacity: int = 25
    items: dict[str, dict[str, Any]] = field(default_factory=dict)
    enrolments: dict[str, Enrolment] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    fail_reads: int = 0  # the next reads of a shard item fail as if throttled

    def shards(self) -> list[Shard]:
        with self.lock:
            return [
                Shard(k, frozenset(v["jobs"]), len(v["jobs"]), v["hb"], v["ex"], v.get("started", False))
                for k, v in self.items.items()
            ]

    def shard(self, shard_id: str) -> Shard | None:
        with self.lock:
            if self.fail_reads > 0:
                self.fail_reads -= 1
                raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "slow down"}}, "GetItem")
            v = self.items.get(shard_id)
            if v is None:
                return None
            nudged = frozenset(v.get("nudged", ()))
            return Shard(shard_id, frozenset(v["jobs"]), len(v["jobs"]), v["hb"], v["ex"], nudged=nudged)

    def create_shard(self, shard_id: str, now: float, execution: str = "") -> bool:
        with self.lock:
            if shard_id in self.items:
                return False
            self.items[shard_id] = {"jobs": set(), "hb": now, "ex": execution}
            return True

    def hand_over(self, shard_id: str, execution: str) -> bool:
        with self.lock:
            if shard_id not in self.items:
                return False
            self.items[shard_id]["ex"] = execution
            return True

    def join(self, shard_id: str, job_id: str, task_token: str, owner: str, superseded: str | None = None) -> bool:
        with self.lock:
            self.enrolments[job_id] = Enrolment(job_id, task_token, owner, shard_id, superseded)
            item = self.items.get(shard_id)
            if item is None or len(item["jobs"]) >= self.capacity or job_id in item["jobs"]:
                return False
            item["jobs"].add(job_id)
            return True

    def leave(self, shard_id: str, job_id: str, token: str | None = None) -> bool:
        with self.lock:  # as the adapter: a re-enrolment on this shard under another token keeps the slot
            enrolment = self.enrolments.get(job_id)
            names_shard = enrolment is not None and enrolment.shard_id == shard_id
            if enrolment is not None and names_shard and token in (None, enrolment.task_token):
                self.enrolments[job_id] = Enrolment(job_id, enrolment.task_token, enrolment.owner, None)
            elif token is not None and names_shard:
                return False
            item = self.items.get(shard_id)
            left = item is not None and job_id in item["jobs"]
            if left:
                item["jobs"].discard(job_id)  # type: ignore[index]
            return left

    def enrolment(self, job_id: str) -> Enrolment | None:
        with self.lock:
            return self.enrolments.get(job_id)

    def forget_superseded(self, job_id: str, token: str) -> None:
        with self.lock:
            e = self.enrolments.get(job_id)
            if e is not None and e.superseded == token:
                self.enrolments[job_id] = Enrolment(job_id, e.task_token, e.owner, e.shard_id, None)

    def heartbeat(self, shard_id: str, now: float) -> bool:
        with self.lock:
            if shard_id not in self.items:
                return False
            self.items[shard_id]["hb"] = now
            self.items[shard_id]["started"] = True
            return True

    def nudge(self, shard_id: str, job_id: str) -> bool:
        with self.lock:
            item = self.items.get(shard_id)
            if item is None:
                return False
            item.setdefault("nudged", set()).add(job_id)
            return True

    def clear_nudges(self, shard_id: str, job_ids: frozenset[str]) -> None:
        with self.lock:
            item = self.items.get(shard_id)
            if item is not None:
                item.setdefault("nudged", set()).difference_update(job_ids)

    def retire(self, shard_id: str, stale_before: float | None = None) -> bool:
        with self.lock:
            item = self.items.get(shard_id)
            if item is not None and (item["jobs"] or (stale_before is not None and item["hb"] >= stale_before)):
                return False
            self.items.pop(shard_id, None)
            return True


@dataclass
class FakeCallbacks:
    calls: list[tuple[str, str, Any]] = field(default_factory=list)

    def succeed(self, token: str, output: dict[str, Any]) -> bool:
        self.calls.append(("succeed", token, output))
        return True

    def fail(self, token: str, error: str, cause: str) -> bool:
        self.calls.append(("fail", token, error))
        return True

    def heartbeat(self, token: str) -> bool:
        self.calls.append(("heartbeat", token, None))
        return True

    def of(self, kind: str) -> list[tuple[str, Any]]:
        return [(token, detail) for what, token, detail in self.calls if what == kind]


@dataclass
class FakeStarter:
    started: list[str] = field(default_factory=list)
    executions: list[str] = field(default_factory=list)

    def start(self, shard_id: str, execution: str) -> None:
        self.started.append(shard_id)
        self.executions.append(execution)


def enroller(fleet: FakeFleet, clock: Callable[[], float] = lambda: 1000.0) -> tuple[Enroller, FakeStarter]:
    starter = FakeStarter()
    return Enroller(fleet, starter, clock=clock, capacity=fleet.capacity), starter


def test_jobs_fill_a_shard_before_a_second_one_starts() -> None:
    fleet = FakeFleet(capacity=3)
    enroll, starter = enroller(fleet)
    shards = [enroll.enroll(f"job-{n}", f"token-{n}", f"exec-{n}") for n in range(7)]
    assert shards == ["shard-0001"] * 3 + ["shard-0002"] * 3 + ["shard-0003"]
    # each shard's one execution (joins to a shard not yet running start it again: idempotent, same name)
    assert sorted(set(starter.started)) == ["shard-0001", "shard-0002", "shard-0003"]
    assert len(set(starter.executions)) == 3
    assert {s.shard_id: s.count for s in fleet.shards()} == {"shard-0001": 3, "shard-0002": 3, "shard-0003": 1}


def test_a_shard_whose_creator_died_before_starting_it_is_started_by_the_next_enrolment() -> None:
    fleet = FakeFleet(capacity=3)
    fleet.create_shard("shard-0001", 1000.0, "shard-0001-5")  # created, never started (its enroller crashed)
    enroll, starter = enroller(fleet)
    assert enroll.enroll("job-1", "token-1", "exec-1") == "shard-0001"
    assert starter.executions == ["shard-0001-5"]
    fleet.heartbeat("shard-0001", 1000.0)  # it runs
    enroll.enroll("job-2", "token-2", "exec-2")
    assert starter.executions == ["shard-0001-5"]  # not again


def test_the_fullest_live_shard_with_room_is_chosen() -> None:
    fleet = FakeFleet(capacity=3)
    enroll, _ = enroller(fleet)
    for n in range(5):
        enroll.enroll(f"job-{n}", f"token-{n}", f"exec-{n}")
    fleet.leave("shard-0001", "job-0")  # shard-0001: 2 jobs, shard-0002: 2 jobs
    fleet.leave("shard-0002", "job-3")  # shard-0002: 1 job
    assert enroll.enroll("job-9", "token-9", "exec-9") == "shard-0001"


def test_a_stale_shard_gets_no_jobs_and_an_empty_one_is_removed() -> None:
    now = [1000.0]
    fleet = FakeFleet(capacity=3)
    enroll, _ = enroller(fleet, clock=lambda: now[0])
    enroll.enroll("job-1", "token-1", "exec-1")
    enroll.enroll("job-2", "token-2", "exec-2")
    fleet.leave("shard-0001", "job-2")
    now[0] += SHARD_STALE_SECONDS + 1  # shard-0001 stopped heartbeating
    assert enroll.enroll("job-3", "token-3", "exec-3") == "shard-0002"
    fleet.leave("shard-0001", "job-1")
    enroll.enroll("job-4", "token-4", "exec-4")
    assert fleet.shard("shard-0001") is None  # dead and empty: gone


def test_racing_enrolments_create_one_shard() -> None:
    fleet = FakeFleet(capacity=25)
    enroll, starter = enroller(fleet)
    barrier = threading.Barrier(8)

    def one(n: int) -> None:
        barrier.wait()
        enroll.enroll(f"job-{n}", f"token-{n}", f"exec-{n}")

    threads = [threading.Thread(target=one, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [s.count for s in fleet.shards()] == [8]
    assert set(starter.started) == {"shard-0001"}
    assert len(set(starter.executions)) == 1  # one execution, whoever started it


def test_another_execution_enrolling_the_job_supersedes_the_first() -> None:
    fleet = FakeFleet(capacity=3)
    enroll, _ = enroller(fleet)
    enroll.enroll("job-1", "token-a", "exec-a")
    enroll.enroll("job-1", "token-b", "exec-b")
    assert fleet.enrolment("job-1") == Enrolment("job-1", "token-b", "exec-b", "shard-0001", superseded="token-a")
    assert [s.count for s in fleet.shards()] == [1]
    # the shard that follows the job on tells the first execution, once
    callbacks = FakeCallbacks()
    relayer = ScriptedRelayer({"job-1": RelayOutcome(True, "drained")})
    runner(fleet, relayer, callbacks).follow("shard-0001", lambda: 600.0)
    assert [token for token, _ in callbacks.of("succeed")] == ["token-a", "token-b"]
    assert "another workflow execution" in callbacks.of("succeed")[0][1]["detail"]
    enroll.enroll("job-1", "token-c", "exec-b")  # the same execution again (its task timed out): nobody to tell
    assert fleet.enrolment("job-1").superseded is None  # type: ignore[union-attr]


class ScriptedRelayer:
    """relay(job_id, time_left, owner) as scripted per job: an outcome, an exception, or a wait on an event."""

    def __init__(self, script: dict[str, Any]) -> None:
        self.script = script
        self.owners: dict[str, str] = {}
        self.calls: list[str] = []
        self.pages: dict[str, Any] = {}  # the page writer each job's loop was given
        self.logs = self  # the page store of the shard's page writer
        self.written_pages: list[tuple[str, int, list[Any]]] = []

    def write_page(self, stream: str, seq: int, entries: list[Any]) -> None:
        self.written_pages.append((stream, seq, entries))

    def relay(
        self, job_id: str, time_left: Callable[[], float], owner: str, pages: Any = None, nudge: Any = None
    ) -> RelayOutcome:
        self.owners[job_id] = owner
        self.calls.append(job_id)
        self.pages[job_id] = pages
        step = self.script[job_id]
        if callable(step):
            step = step()
        if isinstance(step, BaseException):
            raise step
        return step  # type: ignore[no-any-return]


def shard_with(fleet: FakeFleet, jobs: dict[str, str]) -> None:
    fleet.create_shard("shard-0001", time.time())
    for job_id, owner in jobs.items():
        assert fleet.join("shard-0001", job_id, f"token-{job_id}", owner)


def runner(fleet: FakeFleet, relayer: ScriptedRelayer, callbacks: FakeCallbacks, **kwargs: Any) -> ShardRunner:
    return ShardRunner(fleet, callbacks, relayer, FakeStarter(), tick_seconds=0.01, idle_seconds=0.2, **kwargs)  # type: ignore[arg-type]


def test_a_shard_reports_each_outcome_with_its_token_and_retires_when_idle() -> None:
    fleet, callbacks = FakeFleet(), FakeCallbacks()
    shard_with(fleet, {"job-1": "exec-1", "job-2": "exec-2"})
    relayer = ScriptedRelayer({
        "job-1": RelayOutcome(True, "the output is drained"),
        "job-2": RuntimeError("boom"),
    })  # fmt: skip
    report = runner(fleet, relayer, callbacks).follow("shard-0001", lambda: 600.0)
    assert report.retired
    assert sorted(report.finished) == ["job-1", "job-2"]
    assert callbacks.of("succeed") == [("token-job-1", RelayOutcome(True, "the output is drained").as_state())]
    assert callbacks.of("fail") == [("token-job-2", "RuntimeError")]
    assert relayer.owners == {"job-1": "exec-1#shard-0001", "job-2": "exec-2#shard-0001"}
    assert fleet.shard("shard-0001") is None  # retired


def test_a_nudge_on_the_shard_s_item_reaches_only_that_job_s_loop_and_is_cleared() -> None:
    """The job store's listener nudges a cancelled job's shard (adapters/relay_fleet.py `nudge`): the shard sets
    that job's loop's nudge event at its next tick and removes the nudge from its item; other loops are not woken."""
    fleet, callbacks = FakeFleet(), FakeCallbacks()
    shard_with(fleet, {"job-1": "exec-1", "job-2": "exec-2"})
    events: dict[str, threading.Event] = {}
    both = threading.Barrier(3)

    class Nudged(ScriptedRelayer):
        def relay(
            self, job_id: str, time_left: Callable[[], float], owner: str, pages: Any = None, nudge: Any = None
        ) -> RelayOutcome:
            events[job_id] = nudge
            both.wait(5)
            if job_id == "job-1":
                assert nudge.wait(5)  # the loop of the nudged job hears it
                return RelayOutcome(True, "cancelled: drained")
            while time_left() > 0 and not events["job-1"].is_set():
                time.sleep(0.01)
            time.sleep(0.05)
            return RelayOutcome(True, "drained", relayed_bytes=int(nudge.is_set()))

    relayer = Nudged({})
    shard = runner(fleet, relayer, callbacks)
    done = threading.Thread(target=lambda: shard.follow("shard-0001", lambda: 600.0))
    done.start()
    both.wait(5)
    assert fleet.nudge("shard-0001", "job-1")
    done.join(10)
    assert not done.is_alive()
    outcomes = dict(callbacks.of("succeed"))
    assert outcomes["token-job-1"]["detail"] == "cancelled: drained"
    assert outcomes["token-job-2"]["relayed_bytes"] == 0  # job-2's loop was not nudged
    assert not fleet.items.get("shard-0001", {}).get("nudged")  # cleared (or the shard retired)


def test_the_jobs_of_one_invocation_share_one_page_writer_which_is_closed_at_its_end() -> None:
    """One shard invocation writes its jobs' small flushes as shared pages: every loop gets the same page writer,
    named after the shard, and it stops (after writing what is pending) once the invocation's loops ended."""
    fleet, callbacks = FakeFleet(), FakeCallbacks()
    shard_with(fleet, {"job-1": "exec-1", "job-2": "exec-2"})
    relayer = ScriptedRelayer({"job-1": RelayOutcome(True, "drained"), "job-2": RelayOutcome(True, "drained")})
    runner(fleet, relayer, callbacks).follow("shard-0001", lambda: 600.0)
    writers = {id(writer) for writer in relayer.pages.values()}
    assert len(writers) == 1
    writer = relayer.pages["job-1"]
    assert writer.stream.startswith("shard-0001-")
    with pytest.raises(RuntimeError, match="stopped"):
        writer.append(None)
    relayer.pages.clear()
    shard_with(fleet, {"job-3": "exec-3"})
    relayer.script["job-3"] = RelayOutcome(True, "drained")
    runner(fleet, relayer, callbacks, shared_pages=False).follow("shard-0001", lambda: 600.0)
    assert relayer.pages == {"job-3": None}


def test_a_lease_another_loop_still_holds_is_waited_for_while_the_job_is_this_shard_s() -> None:
    fleet, callbacks = FakeFleet(), FakeCallbacks()
    shard_with(fleet, {"job-1": "exec-1", "job-2": "exec-2"})
    first = iter([RelayOutcome(True, "held", contended_by="exec-1#shard-0009"), RelayOutcome(True, "drained 1")])
    second = iter([RelayOutcome(True, "held", contended_by="exec-other#shard-0003"), RelayOutcome(True, "drained 2")])
    relayer = ScriptedRelayer({"job-1": lambda: next(first), "job-2": lambda: next(second)})
    import controlplane.service.relay_fleet as fleet_module

    saved = fleet_module.CONTENDED_RETRY_SECONDS
    fleet_module.CONTENDED_RETRY_SECONDS = 0.05
    try:
        runner(fleet, relayer, callbacks).follow("shard-0001", lambda: 600.0)
    finally:
        fleet_module.CONTENDED_RETRY_SECONDS = saved
    # whoever held the lease (a dying shard, a loop told to stop), the job's own shard waits and then streams it
    assert relayer.calls.count("job-1") == 2
    assert relayer.calls.count("job-2") == 2
    assert sorted(detail["detail"] for _, detail in callbacks.of("succeed")) == ["drained 1", "drained 2"]


class ReleasedLeases:
    """The relay's lease as the shard releases it (shorten_relay): who released which job's lease."""

    def __init__(self) -> None:
        self.released: list[tuple[str, str]] = []

    def shorten_relay(self, job_id: str, owner: str, until: Any) -> bool:
        self.released.append((job_id, owner))
        return True


class StreamingRelayer(ScriptedRelayer):
    """A loop that streams until its hold ends (then fails as the relay does); owners in `drained_for` drain at
    once. Records each call's owner."""

    def __init__(self, drained_for: frozenset[str] = frozenset()) -> None:
        super().__init__({})
        self.lease = ReleasedLeases()
        self.streaming = threading.Event()
        self.drained_for = drained_for

    def relay(
        self, job_id: str, time_left: Callable[[], float], owner: str, pages: Any = None, nudge: Any = None
    ) -> RelayOutcome:
        self.calls.append(owner)
        if owner in self.drained_for:
            return RelayOutcome(True, "the output is drained")
        self.streaming.set()
        while time_left() > 0:
            time.sleep(0.01)
        raise RuntimeError("this invocation's hold on the lease has ended")


def test_a_job_enrolled_elsewhere_is_stopped_its_slot_freed_and_its_lease_released() -> None:
    fleet, callbacks = FakeFleet(), FakeCallbacks()
    shard_with(fleet, {"job-1": "exec-1"})
    relayer = StreamingRelayer()

    def move() -> None:  # another enrolment takes the job to shard-0002 while shard-0001 streams it
        relayer.streaming.wait(10)
        fleet.create_shard("shard-0002", time.time())
        with fleet.lock:
            fleet.items["shard-0001"]["jobs"].discard("job-1")
            fleet.enrolments["job-1"] = Enrolment("job-1", "token-b", "exec-b", "shard-0002")

    mover = threading.Thread(target=move)
    mover.start()
    report = runner(fleet, relayer, callbacks).follow("shard-0001", lambda: 600.0)
    mover.join()
    assert report.retired  # it had nothing left to follow
    assert [c for c in callbacks.calls if c[0] != "heartbeat"] == []  # shard-0002 reports the job, not this one
    assert relayer.lease.released == [("job-1", "exec-1#shard-0001")]


def test_a_job_enrolled_again_on_the_same_shard_is_followed_for_the_new_enrolment_only() -> None:
    """The job's workflow restarted (a reconciler's relay-only execution) and enrolled it again, on the same shard,
    while its loop streamed: the loop is stopped; what it ended with (its hold ended) is not reported to the new
    enrolment, whose execution would otherwise see its Relay fail; the old owner's lease is released and the job
    followed again, for the new execution (which tells the superseded one)."""
    fleet, callbacks = FakeFleet(), FakeCallbacks()
    shard_with(fleet, {"job-1": "exec-1"})
    relayer = StreamingRelayer(drained_for=frozenset({"exec-b#shard-0001"}))

    def enroll_again() -> None:  # the Enroller: leave the old shard, then join (here the same one) with a new token
        relayer.streaming.wait(10)
        with fleet.lock:  # at once: the shard's ticks never see the job gone
            fleet.enrolments["job-1"] = Enrolment("job-1", "token-b", "exec-b", "shard-0001", "token-job-1")

    mover = threading.Thread(target=enroll_again)
    mover.start()
    # the heartbeat, which reads every enrolment of the shard, sees the new token and stops the old loop
    report = runner(fleet, relayer, callbacks, heartbeat_seconds=0.05).follow("shard-0001", lambda: 600.0)
    mover.join()
    assert relayer.calls == ["exec-1#shard-0001", "exec-b#shard-0001"]
    assert callbacks.of("fail") == []
    drained = RelayOutcome(True, "the output is drained").as_state()
    assert ("token-b", drained) in callbacks.of("succeed")  # the new enrolment hears the outcome of its own loop
    assert relayer.lease.released == [("job-1", "exec-1#shard-0001")]
    assert report.finished == ["job-1"]


def test_a_stale_slot_left_by_racing_enrolments_is_freed_not_followed() -> None:
    fleet, callbacks = FakeFleet(), FakeCallbacks()
    shard_with(fleet, {"job-1": "exec-1"})
    fleet.create_shard("shard-0002", time.time())
    fleet.join("shard-0002", "job-1", "token-2", "exec-2")  # the job item names shard-0002; shard-0001 keeps a slot
    relayer = ScriptedRelayer({})
    report = runner(fleet, relayer, callbacks).follow("shard-0001", lambda: 600.0)
    assert relayer.calls == []
    assert report.retired
    assert fleet.shard("shard-0001") is None


def test_a_throttled_tick_is_skipped_without_stopping_the_loops() -> None:
    fleet, callbacks = FakeFleet(), FakeCallbacks()
    shard_with(fleet, {"job-1": "exec-1"})
    fleet.fail_reads = 3
    relayer = ScriptedRelayer({"job-1": RelayOutcome(True, "drained")})
    report = runner(fleet, relayer, callbacks).follow("shard-0001", lambda: 600.0)
    assert relayer.calls == ["job-1"]
    assert report.finished == ["job-1"]


def test_an_execution_that_is_not_the_shard_s_follows_nothing() -> None:
    fleet, callbacks = FakeFleet(), FakeCallbacks()
    fleet.create_shard("shard-0001", time.time(), "shard-0001-2")
    fleet.join("shard-0001", "job-1", "token-1", "exec-1")
    relayer = ScriptedRelayer({"job-1": RelayOutcome(True, "drained")})
    report = runner(fleet, relayer, callbacks).follow("shard-0001", lambda: 600.0, execution="shard-0001-1")
    assert report.retired
    assert relayer.calls == []


def test_an_old_execution_hands_the_shard_over_to_the_next() -> None:
    fleet, callbacks = FakeFleet(), FakeCallbacks()
    shard_with(fleet, {"job-1": "exec-1"})
    starter = FakeStarter()
    relayer = ScriptedRelayer({"job-1": RelayOutcome(False, "budget used")})
    left = [600.0]

    def time_left() -> float:
        left[0] -= 200.0
        return left[0]

    shard = ShardRunner(fleet, callbacks, relayer, starter, tick_seconds=0.01)  # type: ignore[arg-type]
    report = shard.follow("shard-0001", time_left, execution_age=8 * 24 * 3600.0, execution="shard-0001-1")
    assert report.renewed
    assert report.as_state()["retired"] is True  # this execution ends
    assert fleet.shard("shard-0001").execution == starter.executions[0]  # type: ignore[union-attr]


def test_an_unfinished_loop_is_followed_on_and_an_ending_invocation_stops_starting_loops() -> None:
    fleet, callbacks = FakeFleet(), FakeCallbacks()
    shard_with(fleet, {"job-1": "exec-1"})
    left = [600.0]

    def budget_used() -> RelayOutcome:
        left[0] -= 300.0
        return RelayOutcome(False, "budget used")

    relayer = ScriptedRelayer({"job-1": budget_used})
    report = runner(fleet, relayer, callbacks).follow("shard-0001", lambda: left[0])
    assert not report.retired
    assert relayer.calls == ["job-1", "job-1"]  # followed on once, then the invocation's time was up
    assert callbacks.of("succeed") == []
    assert fleet.shard("shard-0001") is not None


def test_a_stalled_job_does_not_hold_up_the_others() -> None:
    fleet, callbacks = FakeFleet(), FakeCallbacks()
    shard_with(fleet, {"job-stalled": "exec-1", "job-quick": "exec-2"})
    release, reported = threading.Event(), threading.Event()
    real_succeed = callbacks.succeed

    def succeed(token: str, output: dict[str, Any]) -> bool:
        if token == "token-job-quick":
            reported.set()
        return real_succeed(token, output)

    callbacks.succeed = succeed  # type: ignore[method-assign]

    def stalled() -> RelayOutcome:
        release.wait(30)
        return RelayOutcome(True, "drained at last")

    relayer = ScriptedRelayer({"job-stalled": stalled, "job-quick": RelayOutcome(True, "drained")})
    done: list[Any] = []
    thread = threading.Thread(
        target=lambda: done.append(runner(fleet, relayer, callbacks).follow("shard-0001", lambda: 600.0))
    )
    thread.start()
    try:
        assert reported.wait(10), "the quick job's outcome waited for the stalled one"
        assert [token for token, _ in callbacks.of("succeed")] == ["token-job-quick"]
    finally:
        release.set()
        thread.join(30)
    assert done
    assert sorted(done[0].finished) == ["job-quick", "job-stalled"]


def test_a_dying_invocation_stops_its_loops_and_raises() -> None:
    fleet, callbacks = FakeFleet(), FakeCallbacks()
    shard_with(fleet, {"job-1": "exec-1"})
    seen_budget: list[float] = []
    started = threading.Event()

    def streaming(time_left: Callable[[], float]) -> RelayOutcome:
        started.set()
        while time_left() > 0:
            time.sleep(0.01)
        seen_budget.append(time_left())
        return RelayOutcome(False, "budget used")

    class Relayer(ScriptedRelayer):
        def relay(
            self, job_id: str, time_left: Callable[[], float], owner: str, pages: Any = None, nudge: Any = None
        ) -> RelayOutcome:
            return streaming(time_left)

    class Dying(FakeFleet):
        def shard(self, shard_id: str) -> Shard | None:
            if started.is_set():
                raise RuntimeError("the runtime died")
            return super().shard(shard_id)

    dying = Dying(items=fleet.items, enrolments=fleet.enrolments)
    with pytest.raises(RuntimeError):
        runner(dying, Relayer({}), callbacks).follow("shard-0001", lambda: 600.0)
    assert seen_budget == [0.0]  # the job's loop saw its time end with the invocation
    assert callbacks.calls == [("heartbeat", "token-job-1", None)]  # nothing reported for the job


def test_a_re_enrolment_made_while_the_old_one_is_reported_keeps_its_slot() -> None:
    """The job's Relay task is retried and enrols again on the same shard while the shard reports the old task's
    outcome: the old report must not free the new enrolment's slot (else the new task is never followed, and times
    out after HeartbeatSeconds)."""
    fleet = FakeFleet()
    shard_with(fleet, {"job-1": "exec-1"})
    enroll, _ = enroller(fleet)

    class ReEnrolling(FakeCallbacks):
        def succeed(self, token: str, output: dict[str, Any]) -> bool:
            if token == "token-job-1":
                enroll.enroll("job-1", "token-2", "exec-1")  # the retried Relay task: same shard, a new token
            return super().succeed(token, output)

    callbacks = ReEnrolling()
    relayer = ScriptedRelayer({"job-1": RelayOutcome(True, "the job is CANCELLED")})
    runner(fleet, relayer, callbacks).follow("shard-0001", lambda: 600.0)
    assert [token for token, _ in callbacks.of("succeed")] == ["token-job-1", "token-2"]
