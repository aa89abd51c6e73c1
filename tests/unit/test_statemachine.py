"""The workflow definition: valid ASL (moto's parser, the same grammar the local runtime executes), every step
reachable, the relay loops until finished, failures end in RecordFailure → Fail with the job's reason."""

from __future__ import annotations

import importlib
import json

import pytest
from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser

from controlplane.adapters.statemachine import HANDLERS, definition

ARNS = {step: f"arn:aws:lambda:us-east-1:123456789012:function:ec2jobs-{step}" for step in HANDLERS}


def test_it_parses_as_amazon_states_language() -> None:
    AmazonStateLanguageParser.parse(json.dumps(definition(ARNS)))


def test_every_handler_exists() -> None:
    for handler in HANDLERS.values():
        module, _, function = handler.rpartition(".")
        assert callable(getattr(importlib.import_module(module), function))


def test_the_relay_loops_until_finished_and_failures_reach_record_failure() -> None:
    states = definition(ARNS)["States"]
    assert states["Relay"]["Next"] == "Drained?"
    recover, finished = states["Drained?"]["Choices"]
    assert (finished["Variable"], finished["Next"], states["Drained?"]["Default"]) == (
        "$.relay.finished",
        "Done",
        "Relay",
    )
    # an attempt that ended and relaunches goes to Recover (checked first: it is finished too), then as after
    # Validate: Launch with the cached bootstrap record Recover passes, else Bootstrap
    assert recover["Next"] == "Recover"
    assert [c["Variable"] for c in recover["And"]] == ["$.relay.recover", "$.relay.recover"]
    assert states["Recover"]["Next"] == "Bootstrapped?"
    assert states["Recover"]["Parameters"] == {"job_id.$": "$.job_id", "relay_owner.$": "$$.Execution.Id"}
    for step in ("Validate", "Bootstrap", "Launch", "Recover"):
        catches = {tuple(c["ErrorEquals"]): c["Next"] for c in states[step]["Catch"]}
        assert catches[("States.ALL",)] == "RecordFailure"
        assert catches[("JobNotActive", "DuplicateSubmission")] == "Done"
        assert any("UpstreamUnavailable" in r["ErrorEquals"] for r in states[step]["Retry"])
    assert states["RecordFailure"]["Next"] == "Failed"
    assert (states["Failed"]["ErrorPath"], states["Failed"]["CausePath"]) == ("$.Error", "$.Cause")


def test_validate_goes_to_launch_when_it_passed_a_bootstrap_record_else_to_bootstrap() -> None:
    states = definition(ARNS)["States"]
    assert states["Validate"]["Next"] == "Bootstrapped?"
    (known,) = states["Bootstrapped?"]["Choices"]
    assert (known["Variable"], known["IsPresent"], known["Next"]) == ("$.bootstrap", True, "Launch")
    assert states["Bootstrapped?"]["Default"] == "Bootstrap"
    # so does a recovering attempt (Recover passes the record of its region); a resumed launch goes through Bootstrap
    assert states["Recover"]["Next"] == "Bootstrapped?"


def test_validate_receives_the_execution_name_and_arn() -> None:
    parameters = definition(ARNS)["States"]["Validate"]["Parameters"]
    assert parameters == {"input.$": "$", "execution_name.$": "$$.Execution.Name", "execution_arn.$": "$$.Execution.Id"}


def test_a_resume_relay_input_goes_straight_to_the_relay_which_knows_its_execution() -> None:
    machine = definition(ARNS)
    resume, launch = machine["States"]["Route"]["Choices"]
    assert machine["StartAt"] == "Route"
    assert (resume["Variable"], resume["IsPresent"], resume["Next"]) == ("$.resume_relay", True, "Relay")
    # a job waiting for capacity whose execution died goes on launching
    assert (launch["Variable"], launch["IsPresent"], launch["Next"]) == ("$.resume_launch", True, "Bootstrap")
    assert machine["States"]["Route"]["Default"] == "Validate"
    # the relay lease's owner is the execution (then `#<shard>`): a restarted loop (another execution) is another
    # owner; the shard answers with the task's token
    assert machine["States"]["Relay"]["Parameters"]["Payload"] == {
        "job_id.$": "$.job_id",
        "relay_owner.$": "$$.Execution.Id",
        "task_token.$": "$$.Task.Token",
    }


def test_crashed_invocations_are_retried_by_every_step() -> None:
    states = definition(ARNS)["States"]
    for step in ("Validate", "Bootstrap", "Launch", "Relay"):
        crashed = [r for r in states[step]["Retry"] if "Runtime.ExitError" in r["ErrorEquals"]]
        assert crashed, step
        assert crashed[0]["MaxAttempts"] >= 2, step


def test_a_launch_without_capacity_waits_in_a_wait_state_or_bootstraps_the_next_region() -> None:
    states = definition(ARNS)["States"]
    assert states["Launch"]["Next"] == "Launched?"
    wait, region = states["Launched?"]["Choices"]
    assert (wait["Next"], wait["And"][1]["StringEquals"]) == ("WaitForCapacity", "wait")
    assert (region["Next"], region["And"][1]["StringEquals"]) == ("Bootstrap", "bootstrap")
    assert states["Launched?"]["Default"] == "Relay"
    # waiting holds no Lambda: a Wait state of the seconds Launch chose, then Launch again
    assert states["WaitForCapacity"] == {"Type": "Wait", "SecondsPath": "$.launch.wait_seconds", "Next": "Launch"}


def test_a_missing_function_is_an_error() -> None:
    with pytest.raises(ValueError, match="relay"):
        definition({k: v for k, v in ARNS.items() if k != "relay"})
