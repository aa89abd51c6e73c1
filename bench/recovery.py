"""Managed recovery (issue 16): the time from a spot interruption to the next attempt's first line, against the time
from submit to the first line of a fresh job. On the embedded control plane (bench/plane.py): its API, the
instance-events Lambda behind the default EventBridge bus, the workflow's Relay → Recover → Bootstrap → Launch →
Relay, and simulated instances with real sshd.

Each sample is one spot T4 job with `job_recovery: {max_restarts: 2}` whose run prints a timestamped line (with
$EC2JOBS_ATTEMPT) and then, on attempt 1, waits until it is stopped (SIGTERM → exit 143); on attempt 2 it exits 0.

- (a) fresh: from the 202 of `POST /jobs` until attempt 1's line is visible via `GET /jobs/{id}/logs`;
- (b) recovery: from the moment EventBridge accepted an EC2 Spot Instance Interruption Warning for the instance
  (`events.put_events` on the default bus, as tests/e2e/test_recovery.py sends it) until attempt 2's line — the
  first line after the marker `--- attempt 2 on … ---` — is visible the same way.

When the warning comes matters: while it streams a spot job with job_recovery, the relay reads the job's status
every `interruption_check_seconds` (1 s, RelaySettings) and only then stops the job, and the benchmark's warnings
would all land at the same point of that cycle (it starts with the stream, which starts shortly before the first
line). So sample i of n sends its
warning (i + 0.5) / n of a cycle after attempt 1's line became visible: the samples spread over the cycle, as
interruptions at random moments would.

Both are split into phases from the job record (`GET /jobs/{id}`: attempts[0].ended_at, launch_started_at,
started_at), the workflow's history (when the Launch step returned after RunInstances, when the relay step that
streamed attempt 1 ended; EC2's LaunchTime has whole seconds in the emulator's answers, too coarse here) and the
line's own timestamp. The job's log is polled every 20 ms.

Not covered: boot. A simulated instance is up (sshd listening) within a fraction of a second of RunInstances; an EC2
GPU instance takes about 1–2 minutes to boot, in (a) and (b) alike, which would move the ratio towards 1. Nor
AWS's 2-minute notice: ec2jobs stops the job at the warning and launches the next attempt once the old instance is
drained and terminated, without waiting for AWS to reclaim it.

    python -m bench.recovery [--samples 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import re
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import boto3

from bench.artifacts import submit
from bench.awsops import OBSERVER_CONFIG
from bench.plane import Session
from bench.report import Figure
from controlplane.service.relay import RelaySettings
from ec2jobs import transfer

SECTION = "7 recovery"
TARGET_RATIO = 2.0
TASK: dict[str, Any] = {
    "name": "bench-recovery",
    "resources": {"accelerators": "T4", "use_spot": True},
    "job_recovery": {"max_restarts": 2},
}
# attempt 1: its line, then waits to be stopped (quietly, as a trainer that saves on SIGTERM does); attempt 2: its
# line, then exit 0
RECOVERY_JOB = (
    "trap 'exit 143' TERM; "
    "python3 -c 'import sys, time; print(f\"t={time.time():.6f} attempt={sys.argv[1]}\", flush=True)' "
    '"$EC2JOBS_ATTEMPT"; '
    '[ "$EC2JOBS_ATTEMPT" = 1 ] || exit 0; '
    "sleep 600 & wait $!"
)
MARKER = re.compile(r"^--- attempt (\d+) on .* ---$")
FRESH_MARKS = ("accepted", "launched", "running", "printed", "visible")
# "launched": the Launch step returned (RunInstances answered); "running": the relay connected (job RUNNING)
RECOVERY_MARKS = (
    "warned",
    "attempt_ended",
    "relay_ended",
    "recover_began",
    "launched",
    "running",
    "printed",
    "visible",
)
PHASES = {
    "warned→attempt_ended": "warning → attempt 1 ended (EventBridge → instance-events Lambda → RECOVERING)",
    "attempt_ended→relay_ended": "attempt 1 ended → its relay step ended (the relay's next status read, SIGTERM, "
    "the wrapper's final sync and result, the tail)",
    "relay_ended→recover_began": "relay step ended → Recover began (Step Functions hand-off, Lambda invocation)",
    "recover_began→launched": "Recover began → attempt 2's Launch step returned (terminate, Bootstrap, RunInstances)",
    "launched→running": "Launch returned → RUNNING (hand-off to the relay step, boot, its SSH connection)",
    "running→printed": "RUNNING → the line printed (start bundle, the wrapper starts the job)",
    "printed→visible": "line printed → visible via GET /jobs/{id}/logs (the relay's flush, the poll)",
}
LIMITS = (
    "not covered: boot. A simulated instance is up within a fraction of a second of RunInstances; an EC2 GPU "
    "instance boots in about 1–2 minutes, in both (a) and (b), which would bring the ratio closer to 1. Nor AWS's "
    "2-minute notice: ec2jobs stops the job at the warning and launches the next attempt once the old instance is "
    "drained and terminated, without waiting for AWS to reclaim it"
)


# -- pure helpers (tests/unit/test_bench_recovery.py) -----------------------------------------------------------


def attempt_line(text: str, attempt: int) -> tuple[float, str] | None:
    """The first `t=` line of `attempt`'s output in a job's log and its timestamp, or None if not there yet. Attempt
    1's output is everything before the first marker line; attempt n's follows `--- attempt n on … ---`. Only
    complete lines count (a poll can end mid-line)."""
    current = 1
    for line in text.split("\n")[:-1]:
        match = MARKER.match(line)
        if match:
            current = int(match.group(1))
        elif current == attempt and line.startswith("t="):
            return float(line.split()[0][2:]), line
    return None


def step_ends(history: list[dict[str, Any]], step: str) -> list[tuple[float, bool]]:
    """When each invocation of a workflow step's function (its name ending in `step`: "relay", "launch") ended,
    in epoch seconds, and whether it succeeded; in order. A callback task (the Relay step's
    `lambda:invoke.waitForTaskToken`: it ends when the relay shard reports the job) counts as its function's."""
    ends: list[tuple[float, bool]] = []
    current = ""
    for event in history:
        kind = event["type"]
        if kind == "LambdaFunctionScheduled":
            current = event["lambdaFunctionScheduledEventDetails"]["resource"].rsplit(":", 1)[-1]
        elif kind == "TaskScheduled":
            details = event.get("taskScheduledEventDetails", {})
            try:
                parameters = json.loads(details.get("parameters") or "{}")
            except ValueError:
                parameters = {}
            current = str(parameters.get("FunctionName", "")).rsplit(":", 1)[-1]
        elif current.endswith(step) and kind in {
            "LambdaFunctionSucceeded",
            "LambdaFunctionFailed",
            "LambdaFunctionTimedOut",
            "TaskSucceeded",
            "TaskFailed",
            "TaskTimedOut",
        }:
            ends.append((event["timestamp"].timestamp(), kind in {"LambdaFunctionSucceeded", "TaskSucceeded"}))
    return ends


def warning_delays(samples: int, cycle: float) -> list[float]:
    """How long after attempt 1's line each sample sends its warning: the middles of `samples` equal slices of the
    relay's status-check cycle (module doc)."""
    return [round(cycle * (index + 0.5) / samples, 3) for index in range(samples)]


def phases(marks: dict[str, float | None], order: tuple[str, ...]) -> dict[str, float | None]:
    """Seconds between consecutive instants of `order` ("a→b": b - a), None where either is unknown."""
    spans: dict[str, float | None] = {}
    for start, end in itertools.pairwise(order):
        first, second = marks.get(start), marks.get(end)
        spans[f"{start}→{end}"] = round(second - first, 3) if first is not None and second is not None else None
    return spans


def summarize(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of (a) and (b), each over the samples the local race left alone when there is one, else over all;
    the ratio of those medians (the figure) and each sample's own ratio (on a noisy machine a slow moment tends to
    slow both parts of one sample); the median of each phase (over the samples that have it)."""
    if not samples:
        raise ValueError("no samples")
    chosen: dict[str, list[dict[str, Any]]] = {}
    over: dict[str, str] = {}
    for kind in ("fresh", "recovery"):
        clean = [s for s in samples if not s[kind]["raced"]]
        chosen[kind] = clean or samples
        over[kind] = f"{len(clean)} race-free of {len(samples)}" if clean else f"all {len(samples)} (all raced)"
    fresh = statistics.median(s["fresh"]["seconds"] for s in chosen["fresh"])
    recovery = statistics.median(s["recovery"]["seconds"] for s in chosen["recovery"])
    return {
        "fresh_seconds": fresh,
        "recovery_seconds": recovery,
        "ratio": recovery / fresh,
        "sample_ratios": [round(s["recovery"]["seconds"] / s["fresh"]["seconds"], 3) for s in samples],
        "over": over,
        "raced": {kind: sum(bool(s[kind]["raced"]) for s in samples) for kind in ("fresh", "recovery")},
        "fresh_phases": _median_phases([s["fresh"]["phases"] for s in chosen["fresh"]]),
        "recovery_phases": _median_phases([s["recovery"]["phases"] for s in chosen["recovery"]]),
    }


def _median_phases(rows: list[dict[str, float | None]]) -> dict[str, float | None]:
    names = [name for row in rows for name in row]
    medians: dict[str, float | None] = {}
    for name in dict.fromkeys(names):
        known = [row[name] for row in rows if row.get(name) is not None]
        medians[name] = statistics.median(v for v in known if v is not None) if known else None
    return medians


def _instant(value: Any) -> float | None:
    """An ISO 8601 instant from the job record as epoch seconds."""
    if not value:
        return None
    stamp = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)).timestamp()


# -- one sample -------------------------------------------------------------------------------------------------


@dataclass
class Seen:
    """A job's `t=` line of one attempt, as the benchmark first saw it via GET /jobs/{id}/logs."""

    perf: float  # time.perf_counter() when the poll that showed it returned
    wall: float  # time.time() then
    printed: float  # the line's own timestamp (written by the job)
    line: str
    addresses: set[str] = field(default_factory=set)  # addresses the relay recorded meanwhile


def wait_attempt_line(session: Session, job_id: str, attempt: int, timeout: float = 300.0) -> Seen:
    """Poll GET /jobs/{id}/logs every 20 ms, from the log's start, until `attempt`'s `t=` line is there (the job
    record every 10th time, for the address its relay recorded)."""
    end = time.monotonic() + timeout
    cursor, text = "", ""
    addresses: set[str] = set()
    polls = 0
    while time.monotonic() < end:
        status, page = session.call("GET", f"/jobs/{job_id}/logs?after={cursor}")
        perf, wall = time.perf_counter(), time.time()
        if status != 200:
            raise RuntimeError(f"GET /jobs/{job_id}/logs answered {status}: {page}")
        if polls % 10 == 0 or page["text"]:
            address = session.job(job_id).get("instance_address", {}).get("S")
            addresses |= {address} if address else set()
        polls += 1
        text += page["text"]
        found = attempt_line(text, attempt)
        if found is not None:
            printed, line = found
            return Seen(perf, wall, printed, line, addresses)
        if page["complete"]:
            raise RuntimeError(f"job {job_id}: its log ended without attempt {attempt}'s line: {text[-400:]!r}")
        cursor = page["next_cursor"]
        time.sleep(0.02)
    raise TimeoutError(f"job {job_id}: attempt {attempt}'s line not visible within {timeout:.0f} s: {text[-400:]!r}")


def warn_spot(instance_id: str) -> None:
    """An EC2 Spot Instance Interruption Warning for the instance, on the default bus (as EC2 sends it)."""
    detail = {"instance-id": instance_id, "instance-action": "terminate"}
    answer = boto3.client("events", config=OBSERVER_CONFIG).put_events(
        Entries=[
            {"Source": "aws.ec2", "DetailType": "EC2 Spot Instance Interruption Warning", "Detail": json.dumps(detail)}
        ]
    )
    if answer.get("FailedEntryCount"):
        raise RuntimeError(f"put_events refused the warning: {answer['Entries']}")


def job_record(session: Session, job_id: str) -> dict[str, Any]:
    status, body = session.call("GET", f"/jobs/{job_id}")
    if status != 200:
        raise RuntimeError(f"GET /jobs/{job_id} answered {status}: {body}")
    return dict(body)


def sample(session: Session, provider_id: str, delay: float) -> dict[str, Any]:
    """One job through (a) and (b) (module doc), the warning sent `delay` seconds after attempt 1's line became
    visible. If anything goes wrong before the job ends, the error names the job's state at that moment and the job
    is cancelled."""
    task = TASK | {"run": RECOVERY_JOB, "provider_id": provider_id}
    before = time.perf_counter()
    job_id = submit(session, task)
    accepted_perf, accepted_wall = time.perf_counter(), time.time()
    done = False
    try:
        first = wait_attempt_line(session, job_id, 1)
        during = job_record(session, job_id)  # attempt 1's started_at and instance
        _expect_attempt(first, 1, job_id)
        time.sleep(max(0.0, first.perf + delay - time.perf_counter()))  # where in the relay's cycle: not a wait
        warn_spot(str(during["instance_id"]))
        warned_perf, warned_wall = time.perf_counter(), time.time()
        second = wait_attempt_line(session, job_id, 2)
        _expect_attempt(second, 2, job_id)
        item = session.wait_done(job_id, timeout=300.0)
        done = True
        record = job_record(session, job_id)
        _expect_recovered(session, job_id, record)
    except Exception as error:
        if done:
            raise
        state = _describe(session, job_id)
        _end(session, job_id)
        raise RuntimeError(f"{error}; job {job_id} then: {state}") from error
    history = session.history(item["execution_arn"]["S"])
    ends = step_ends(history, "relay")
    launches = [t for t, ok in step_ends(history, "launch") if ok]
    attempts = record["attempts"]
    fresh_marks = {
        "accepted": accepted_wall,
        "launched": _first_after(launches, accepted_wall),
        "running": _instant(during.get("started_at")),
        "printed": first.printed,
        "visible": first.wall,
    }
    recovery_marks = {
        "warned": warned_wall,
        "attempt_ended": _instant(attempts[0]["ended_at"]),
        "relay_ended": _first_after([t for t, _ in ends], warned_wall),
        "recover_began": _instant(record.get("launch_started_at")),
        "launched": _first_after(launches, warned_wall),
        "running": _instant(record.get("started_at")),
        "printed": second.printed,
        "visible": second.wall,
    }
    failed = [t for t, ok in ends if not ok]
    return {
        "job_id": job_id,
        "post_seconds": round(accepted_perf - before, 3),
        "warning_after_line_seconds": round(warned_perf - first.perf, 3),
        "instances": [a["instance_id"] for a in attempts],
        "fresh": {
            "seconds": round(first.perf - accepted_perf, 3),
            "phases": phases(fresh_marks, FRESH_MARKS),
            "addresses": sorted(first.addresses),
            "relay_failures": sum(t < warned_wall for t in failed),
            "raced": _raced(first.addresses, [t for t in failed if t < warned_wall]),
        },
        "recovery": {
            "seconds": round(second.perf - warned_perf, 3),
            "phases": phases(recovery_marks, RECOVERY_MARKS),
            "addresses": sorted(second.addresses),
            "relay_failures": sum(t >= warned_wall for t in failed),
            "raced": _raced(second.addresses, [t for t in failed if t >= warned_wall]),
        },
    }


def _first_after(instants: list[float], start: float) -> float | None:
    return next((t for t in instants if t >= start), None)


def _raced(addresses: set[str], relay_failures: list[float]) -> bool:
    """The local race (bench/artifacts.py first_line_summary): the relay went to moto's made-up address first."""
    return bool(relay_failures) or any(not transfer.is_loopback(a) for a in addresses)


def _expect_attempt(seen: Seen, attempt: int, job_id: str) -> None:
    if f"attempt={attempt}" not in seen.line.split():
        raise RuntimeError(f"job {job_id}: attempt {attempt}'s line says {seen.line!r} (EC2JOBS_ATTEMPT)")


def _expect_recovered(session: Session, job_id: str, record: dict[str, Any]) -> None:
    """The job SUCCEEDED after exactly one relaunch for SPOT_INTERRUPTED, on two different instances."""
    ended = [a.get("end_reason") for a in record.get("attempts", [])]
    instances = {a.get("instance_id") for a in record.get("attempts", [])}
    if record.get("status") != "SUCCEEDED" or ended != ["SPOT_INTERRUPTED", "SUCCEEDED"] or len(instances) != 2:
        status, page = session.call("GET", f"/jobs/{job_id}/logs")
        log = page.get("text", "") if status == 200 and isinstance(page, dict) else page
        raise RuntimeError(
            f"job {job_id} did not recover as expected: status {record.get('status')} "
            f"({record.get('failure_reason')}: {record.get('failure_message')}), attempts ended {ended}, "
            f"instances {sorted(map(str, instances))}, notes {record.get('notes')}; log {log!r}"
        )


def _describe(session: Session, job_id: str) -> str:
    """A job's status, attempts and notes as GET /jobs/{id} shows them (for an error message)."""
    status, job = session.call("GET", f"/jobs/{job_id}")
    if status != 200 or not isinstance(job, dict):
        return f"GET /jobs/{job_id} answered {status}: {job}"
    attempts = [
        {k: a.get(k) for k in ("attempt", "instance_id", "market", "launched_at", "ended_at", "end_reason")}
        for a in job.get("attempts", [])
    ]
    return (
        f"status {job.get('status')} ({job.get('failure_reason')}: {job.get('failure_message')}), "
        f"attempt {job.get('attempt')}, attempts {attempts}, notes {job.get('notes')}"
    )


def _end(session: Session, job_id: str) -> None:
    """Cancel a job a failed sample left behind and wait for its end (best effort: the failure is raised anyway)."""
    try:
        session.cancel(job_id)
        session.wait_done(job_id, timeout=240.0)
    except Exception as error:  # noqa: BLE001 - the original failure matters more
        print(f"[bench] recovery: could not end job {job_id}: {error}", flush=True)


# -- the section ------------------------------------------------------------------------------------------------


def run(session: Session, provider_id: str, samples: int = 3) -> tuple[list[Figure], dict[str, Any]]:
    """`samples` jobs one after another, their warnings spread over the relay's status-check cycle (module doc),
    after one spot T4 job run to its end unmeasured (the first launch of an instance type and market the warm-up
    did not use)."""
    warm = submit(session, TASK | {"name": "bench-recovery-warm-up", "run": "true", "provider_id": provider_id})
    session.wait_done(warm)
    cycle = RelaySettings().interruption_check_seconds
    runs = [sample(session, provider_id, delay) for delay in warning_delays(samples, cycle)]
    summary = summarize(runs)
    return figures(summary, samples, cycle), {"samples": runs, "status_check_seconds": cycle} | summary


def _phase_note(spans: dict[str, float | None]) -> str:
    return ", ".join(f"{name} {value:.2f} s" for name, value in spans.items() if value is not None)


def figures(summary: dict[str, Any], samples: int, cycle: float) -> list[Figure]:
    """The section's rows: (a), (b), their ratio against the target, and where (b)'s time goes."""
    over = summary["over"]
    raced = summary["raced"]
    rows = [
        Figure(SECTION, "spot T4 job with job_recovery: POST /jobs accepted → attempt 1's first line visible, median",
               summary["fresh_seconds"], "s",
               note=f"{samples} jobs one after another, medians over {over['fresh']} (fresh) and "
               f"{over['recovery']} (recovery) samples, raced {raced['fresh']} / {raced['recovery']} (the local "
               f"address race, section 6); phases (each phase's own median: they need not add up to the total): "
               f"{_phase_note(summary['fresh_phases'])}"),
        Figure(SECTION, "spot interruption warning (put_events) → attempt 2's first line visible, median",
               summary["recovery_seconds"], "s",
               note=f"each warning sent {' / '.join(f'{d:.2f}' for d in warning_delays(samples, cycle))} s after "
               f"attempt 1's line (spread over the relay's {cycle:g} s status check); {LIMITS}"),
        Figure(SECTION, "… interruption → next first line / submit → first line", summary["ratio"], "×",
               ("<=", TARGET_RATIO), note="ratio of the medians; each sample's own ratio: "
               + ", ".join(f"{r:.2f}×" for r in summary["sample_ratios"])),
    ]  # fmt: skip
    for name, label in PHASES.items():
        value = summary["recovery_phases"].get(name)
        rows.append(Figure(SECTION, f"… {label}, median", value, "s"))
    return rows


def main(argv: list[str] | None = None) -> None:
    from bench import __main__ as entry

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=3)
    args = parser.parse_args(argv)
    entry.main(["--only", "recovery", "--recovery-samples", str(args.samples)])


if __name__ == "__main__":
    main()
