"""The recovery benchmark's pure parts (bench/recovery.py): finding an attempt's line in a job's log, the workflow
history's step ends, the phases, the summary and its rows; and its job script, run by bash as the wrapper runs it."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
from typing import Any

import pytest

from bench import recovery

MARKER_2 = "--- attempt 2 on g4dn.xlarge in us-east-1a (spot), after SPOT_INTERRUPTED ---\n"


def test_an_attempts_line_is_the_first_t_line_after_its_marker() -> None:
    text = "setting up\nt=100.5 attempt=1\nt=101.0 attempt=1\n" + MARKER_2 + "restoring\nt=200.25 attempt=2\n"
    assert recovery.attempt_line(text, 1) == (100.5, "t=100.5 attempt=1")
    assert recovery.attempt_line(text, 2) == (200.25, "t=200.25 attempt=2")
    assert recovery.attempt_line(text, 3) is None


def test_an_attempts_line_is_not_there_before_its_marker_nor_while_incomplete() -> None:
    assert recovery.attempt_line("t=100.5 attempt=1\n", 2) is None
    assert recovery.attempt_line("t=100.5 attempt=1\n" + MARKER_2, 2) is None
    assert recovery.attempt_line("t=100.5 attempt=1\n" + MARKER_2 + "t=200.2", 2) is None  # mid-line
    assert recovery.attempt_line("t=100.5 attem", 1) is None


def _event(kind: str, at: float, resource: str = "") -> dict[str, Any]:
    event: dict[str, Any] = {"type": kind, "timestamp": dt.datetime.fromtimestamp(at, dt.UTC)}
    if resource:
        event["lambdaFunctionScheduledEventDetails"] = {"resource": f"arn:aws:lambda:us-east-1:1:function:{resource}"}
    return event


def test_step_ends_follow_the_function_each_invocation_was_scheduled_for() -> None:
    history = [
        _event("LambdaFunctionScheduled", 1.0, "ec2jobs-launch"),
        _event("LambdaFunctionSucceeded", 2.0),
        _event("LambdaFunctionScheduled", 3.0, "ec2jobs-relay"),
        _event("LambdaFunctionFailed", 4.0),
        _event("LambdaFunctionScheduled", 5.0, "ec2jobs-relay"),
        _event("LambdaFunctionSucceeded", 6.0),
        _event("LambdaFunctionScheduled", 7.0, "ec2jobs-recover"),
        _event("LambdaFunctionSucceeded", 8.0),
        _event("LambdaFunctionScheduled", 9.0, "ec2jobs-launch"),
        _event("LambdaFunctionTimedOut", 10.0),
    ]
    assert recovery.step_ends(history, "relay") == [(4.0, False), (6.0, True)]
    assert recovery.step_ends(history, "launch") == [(2.0, True), (10.0, False)]
    assert recovery.step_ends(history, "recover") == [(8.0, True)]


def test_a_callback_task_ends_when_its_token_is_reported() -> None:
    """The Relay step is `lambda:invoke.waitForTaskToken`: its end is the TaskSucceeded the relay shard's callback
    makes, not the enrolling function's return."""
    scheduled = {
        "type": "TaskScheduled",
        "timestamp": dt.datetime.fromtimestamp(3.0, dt.UTC),
        "taskScheduledEventDetails": {
            "resourceType": "lambda",
            "resource": "invoke.waitForTaskToken",
            "parameters": json.dumps({"FunctionName": "arn:aws:lambda:us-east-1:123456789012:function:ec2jobs-relay"}),
        },
    }
    history = [
        _event("LambdaFunctionScheduled", 1.0, "ec2jobs-launch"),
        _event("LambdaFunctionSucceeded", 2.0),
        scheduled,
        {"type": "TaskSubmitted", "timestamp": dt.datetime.fromtimestamp(3.1, dt.UTC)},
        {"type": "TaskSucceeded", "timestamp": dt.datetime.fromtimestamp(9.0, dt.UTC)},
        _event("LambdaFunctionScheduled", 9.5, "ec2jobs-recover"),
        _event("LambdaFunctionSucceeded", 10.0),
    ]
    assert recovery.step_ends(history, "relay") == [(9.0, True)]
    assert recovery.step_ends(history, "recover") == [(10.0, True)]


def test_the_warnings_are_spread_over_the_relays_status_check_cycle() -> None:
    assert recovery.warning_delays(1, 2.0) == [1.0]
    assert recovery.warning_delays(2, 2.0) == [0.5, 1.5]
    assert recovery.warning_delays(3, 2.0) == [0.333, 1.0, 1.667]


def test_phases_are_the_spans_between_consecutive_instants() -> None:
    marks: dict[str, float | None] = {"a": 10.0, "b": 10.25, "c": None, "d": 13.0}
    assert recovery.phases(marks, ("a", "b", "c", "d")) == {"a→b": 0.25, "b→c": None, "c→d": None}
    assert recovery.phases({"a": 1.0, "b": 0.5}, ("a", "b")) == {"a→b": -0.5}


def _sample(fresh: float, again: float, *, fresh_raced: bool = False, recovery_raced: bool = False) -> dict[str, Any]:
    return {
        "fresh": {"seconds": fresh, "raced": fresh_raced, "phases": {"accepted→launched": fresh / 4}},
        "recovery": {"seconds": again, "raced": recovery_raced, "phases": {"launched→running": None}},
    }


def test_the_summary_is_the_ratio_of_the_medians_over_race_free_samples() -> None:
    samples = [_sample(4.0, 9.0), _sample(20.0, 10.0, fresh_raced=True), _sample(6.0, 30.0, recovery_raced=True)]
    summary = recovery.summarize(samples)
    assert summary["fresh_seconds"] == 5.0  # 4 and 6: the raced 20 is left out
    assert summary["recovery_seconds"] == 9.5  # 9 and 10: the raced 30 is left out
    assert summary["ratio"] == pytest.approx(1.9)
    assert summary["sample_ratios"] == [2.25, 0.5, 5.0]
    assert summary["raced"] == {"fresh": 1, "recovery": 1}
    assert summary["over"] == {"fresh": "2 race-free of 3", "recovery": "2 race-free of 3"}
    assert summary["fresh_phases"] == {"accepted→launched": 1.25}
    assert summary["recovery_phases"] == {"launched→running": None}


def test_the_summary_uses_every_sample_when_all_raced_and_refuses_none() -> None:
    summary = recovery.summarize([_sample(4.0, 12.0, fresh_raced=True), _sample(8.0, 12.0, fresh_raced=True)])
    assert (summary["fresh_seconds"], summary["over"]["fresh"]) == (6.0, "all 2 (all raced)")
    assert summary["ratio"] == 2.0
    with pytest.raises(ValueError):
        recovery.summarize([])


def test_the_rows_judge_the_ratio_against_two_and_show_every_phase() -> None:
    summary = recovery.summarize([_sample(4.0, 8.0)])
    rows = recovery.figures(summary, 1, 2.0)
    ratio = next(row for row in rows if row.unit == "×")
    assert (ratio.value, ratio.target, ratio.verdict) == (2.0, ("<=", 2.0), "pass")
    assert len(rows) == 3 + len(recovery.PHASES)
    assert all(row.section == recovery.SECTION for row in rows)
    missed = recovery.figures(recovery.summarize([_sample(4.0, 8.5)]), 1, 2.0)
    assert next(row for row in missed if row.unit == "×").verdict == "MISS"


def _run_job(attempt: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["bash", "-c", recovery.RECOVERY_JOB],
        stdout=subprocess.PIPE,
        text=True,
        env={"PATH": os.environ["PATH"], "EC2JOBS_ATTEMPT": str(attempt)},
        start_new_session=True,  # its own process group, which the wrapper's SIGTERM reaches whole
    )


def test_the_job_prints_its_attempt_then_waits_on_attempt_1_and_exits_on_sigterm() -> None:
    job = _run_job(1)
    assert job.stdout is not None
    line = job.stdout.readline()  # blocks until the line is written
    assert recovery.attempt_line(line, 1) is not None
    assert line.split()[1] == "attempt=1"
    assert job.poll() is None  # still waiting
    os.killpg(job.pid, signal.SIGTERM)  # as the wrapper stops a job: every process of it
    assert job.wait(timeout=10) == 143


def test_the_job_prints_its_attempt_and_exits_0_on_attempt_2() -> None:
    job = _run_job(2)
    out, _ = job.communicate(timeout=10)
    assert job.returncode == 0
    assert recovery.attempt_line(MARKER_2 + out, 2) is not None
    assert out.split()[1] == "attempt=2"
