"""SkyPilot task files (issue 14 §7): every SkyPilot field ec2jobs does not support yet is refused with what to do
instead, a task that is not a mapping says what it is, a task file's YAML is checked before its fields, and the
JSON schema of `accelerators` says what is accepted. The YAML snippets here are written for these tests.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import ValidationError

from controlplane.core.errors import InvalidSpec, describe_validation_problems
from controlplane.core.inputs import LOCAL_WORKDIR_HELP, S3_MOUNT_HELP
from controlplane.core.models import JobRequest
from controlplane.core.spec import TaskSpec, task_from_yaml
from controlplane.core.spec_compat import (
    NOT_A_MAPPING,
    RESOURCES_FIELD_ADVICE,
    TASK_FIELD_ADVICE,
    UNSUPPORTED_FIELD,
)

SECRET = "hf_do_not_echo_me_1234"
# Words that make a sentence advice rather than a bare refusal: each advice says what to do.
ACTIONS = ("instead", "remove", "use ", "pass ", "clone", "download", "put ", "keep ", "submit", "pin ", "follow")


def _problems(data: Any, model: type[TaskSpec] = TaskSpec) -> list[dict[str, Any]]:
    with pytest.raises(ValidationError) as raised:
        model.model_validate(data)
    return [dict(p) for p in raised.value.errors()]


# -- SkyPilot fields we do not support yet -----------------------------------------------------------------------


@pytest.mark.parametrize("field", sorted(TASK_FIELD_ADVICE))
def test_given_a_skypilot_task_field_when_validated_then_the_rejection_says_what_to_do_instead(field: str) -> None:
    # Given a task with a top-level SkyPilot field ec2jobs does not support (before: "is not a supported field")
    problems = _problems({"run": "echo hi", field: {"some": "value"}})
    # Then exactly that field is refused, with its advice, which names an action
    assert [(p["loc"], p["type"]) for p in problems] == [((field,), UNSUPPORTED_FIELD)]
    assert problems[0]["msg"] == TASK_FIELD_ADVICE[field]
    assert any(action in problems[0]["msg"].lower() for action in ACTIONS)


@pytest.mark.parametrize("field", sorted(RESOURCES_FIELD_ADVICE))
def test_given_a_skypilot_resources_field_when_validated_then_the_rejection_says_what_to_do_instead(
    field: str,
) -> None:
    problems = _problems({"run": "echo hi", "resources": {"accelerators": "L4", field: "x"}})
    assert [(p["loc"], p["type"]) for p in problems] == [(("resources", field), UNSUPPORTED_FIELD)]
    assert problems[0]["msg"] == RESOURCES_FIELD_ADVICE[field]
    assert any(action in problems[0]["msg"].lower() for action in ACTIONS)


def test_given_a_local_workdir_then_the_api_sentence_says_how_to_upload_it() -> None:
    # Given the API's request model (POST /jobs body) with SkyPilot's `workdir: .` (a path on the sender's disk)
    problems = _problems({"provider_id": "p-1", "run": "python train.py", "workdir": "."}, JobRequest)
    # Then the one sentence the API returns tells the user what works: the CLI uploads it, or POST /uploads
    summary, details = describe_validation_problems(problems)
    assert summary == f"workdir: {LOCAL_WORKDIR_HELP}"
    assert details == [{"field": "workdir", "message": LOCAL_WORKDIR_HELP}]


def test_given_several_skypilot_fields_then_each_gets_its_own_advice_and_other_problems_stay() -> None:
    problems = _problems(
        {
            "run": "echo hi",
            "num_nodes": 2,
            "file_mounts": {"/data": "s3://bucket"},
            "colour": "blue",
            "resources": {"cloud": "aws", "ports": 8080, "cpus": "lots"},
        }
    )
    by_loc = {p["loc"]: p for p in problems}
    assert by_loc[("num_nodes",)]["msg"] == TASK_FIELD_ADVICE["num_nodes"]
    assert S3_MOUNT_HELP in by_loc[("file_mounts",)]["msg"]
    assert by_loc[("resources", "cloud")]["msg"] == RESOURCES_FIELD_ADVICE["cloud"]
    assert by_loc[("resources", "ports")]["msg"] == RESOURCES_FIELD_ADVICE["ports"]
    assert by_loc[("colour",)]["type"] == "extra_forbidden"  # not a SkyPilot field: the generic refusal
    assert "cpus" in by_loc[("resources", "cpus")]["msg"]


def test_given_secret_values_in_unsupported_fields_then_no_error_repeats_them() -> None:
    # Given SkyPilot's `secrets:` with a value, and a value where a string is not expected
    with pytest.raises(ValidationError) as raised:
        JobRequest.model_validate(
            {
                "provider_id": "p-1",
                "run": "echo hi",
                "secrets": {"HF_TOKEN": SECRET},
                "resources": {"labels": {"token": SECRET}},
            }
        )
    # Then neither the errors nor their text carry the value
    assert SECRET not in str(raised.value)
    assert SECRET not in repr(raised.value.errors())
    assert all(p["input"] is None for p in raised.value.errors())


# -- tasks that are not a mapping --------------------------------------------------------------------------------


@pytest.mark.parametrize("model", [TaskSpec, JobRequest])
def test_given_a_task_that_is_a_string_then_the_error_says_so_not_that_run_is_missing(model: type[TaskSpec]) -> None:
    # Given YAML text sent where the task's fields belong (a console input, an event, an API body)
    problems = _problems("run: echo hi\nresources:\n  accelerators: L4\n", model)
    # Then one problem says the task is a string, and nothing claims `run` is missing
    assert [p["type"] for p in problems] == [NOT_A_MAPPING]
    assert "is a string, not a mapping" in problems[0]["msg"]
    assert all(p["type"] != "missing" for p in problems)


def test_given_a_list_of_tasks_then_the_error_says_one_task_per_job() -> None:
    problems = _problems([{"run": "echo 1"}, {"run": "echo 2"}])
    assert [p["type"] for p in problems] == [NOT_A_MAPPING]
    assert "one task per job" in problems[0]["msg"]


@pytest.mark.parametrize("data", [7, True, None])
def test_given_a_scalar_task_then_the_error_asks_for_a_mapping(data: Any) -> None:
    problems = _problems(data)
    assert [p["type"] for p in problems] == [NOT_A_MAPPING]


# -- task files (YAML) -------------------------------------------------------------------------------------------

PIPELINE = """\
name: two-steps
---
name: prepare
run: echo prepare
---
name: train
resources:
  accelerators: L4
run: echo train
"""


def test_given_a_multi_document_yaml_then_the_message_says_it_holds_several_tasks() -> None:
    # Given SkyPilot's pipeline form (several documents); before: "not valid YAML ... expected a single document"
    with pytest.raises(InvalidSpec) as raised:
        task_from_yaml(PIPELINE, "pipeline.yaml")
    message = raised.value.message
    assert message.startswith("pipeline.yaml holds 3 YAML documents")
    assert "one task per job" in message
    assert "not valid YAML" not in message


def test_given_a_yaml_file_that_is_a_string_then_the_message_says_so() -> None:
    with pytest.raises(InvalidSpec) as raised:
        task_from_yaml("python train.py --epochs 3\n", "task.yaml")
    assert raised.value.message.startswith("task.yaml is a YAML string, not a task")
    assert "run:" in raised.value.message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "is empty"),
        ("# only a comment\n", "is empty"),
        ("- run: echo 1\n- run: echo 2\n", "is a list"),
        ("run: [unclosed\n", "is not valid YAML at line"),
        ("2024-01-02: run\n", "key that is not text"),
    ],
)
def test_given_a_yaml_file_that_is_not_one_mapping_then_invalid_spec_explains(text: str, fragment: str) -> None:
    with pytest.raises(InvalidSpec) as raised:
        task_from_yaml(text)
    assert fragment in raised.value.message


def test_given_a_skypilot_style_task_file_then_it_loads_and_validates() -> None:
    text = """\
name: finetune
resources:
  accelerators: {A100:8}   # YAML reads this as {"A100:8": null}, as SkyPilot writes it
  disk_size: 1024GB
  memory: 64GB+
envs:
  MODEL: llama
  STARTED: 2024-01-02
run: |
  python train.py
"""
    task = task_from_yaml(text)
    assert task["envs"]["STARTED"] == "2024-01-02"  # a YAML date travels as text
    spec = TaskSpec.model_validate(task)
    assert spec.resources.accelerators == "A100:8"
    assert spec.resources.disk_size == 1024
    assert spec.resources.memory_requirement is not None
    assert spec.resources.memory_requirement.value == 64


# -- accelerators in the JSON schema -----------------------------------------------------------------------------


def _accelerators_schema(model: type[TaskSpec]) -> dict[str, Any]:
    schema = model.model_json_schema(mode="validation")
    return dict(schema["$defs"]["Resources"]["properties"]["accelerators"])


@pytest.mark.parametrize("model", [TaskSpec, JobRequest])
def test_the_request_schema_types_accelerators_as_a_string_or_a_one_entry_mapping(model: type[TaskSpec]) -> None:
    # Before: {"anyOf": [{"type": "string"}, {"type": "null"}]} though {A100: 8} is accepted
    schema = _accelerators_schema(model)
    types = [branch.get("type") for branch in schema["anyOf"]]
    assert types == ["string", "object", "null"]
    mapping = schema["anyOf"][1]
    assert mapping["maxProperties"] == 1


@pytest.mark.parametrize(
    "value", ["A100:8", "l4", "a10g:4", "T4:4.0", {"A100": 8}, {"A100": 8.0}, {"t4": "4"}, {"A100:8": None}, None]
)
def test_every_accelerators_form_the_schema_allows_here_is_accepted(value: Any) -> None:
    jsonschema.validate(value, _accelerators_schema(TaskSpec))
    spec = TaskSpec.model_validate({"run": "echo hi", "resources": {"accelerators": value}})
    assert (spec.resources.accelerators is None) == (value is None)


@pytest.mark.parametrize(
    "value",
    [
        *(8, ["A100", "H100"], {"A100": 8, "H100": 8}, {"A100": 0}, {}, {"A100": "many"}, {"A100": True}),
        *(":8", "A100:1e1", "A100:+8", "A100:８", "A100:8:8"),
    ],
)
def test_accelerators_forms_the_parser_refuses_are_outside_the_schema(value: Any) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(value, _accelerators_schema(TaskSpec))
    with pytest.raises(ValidationError):
        TaskSpec.model_validate({"run": "echo hi", "resources": {"accelerators": value}})


def test_the_response_schema_keeps_accelerators_a_string() -> None:
    # Stored and returned specs hold the canonical "TYPE:COUNT" string
    schema = TaskSpec.model_json_schema(mode="serialization")["$defs"]["Resources"]["properties"]["accelerators"]
    assert [branch.get("type") for branch in schema["anyOf"]] == ["string", "null"]


# -- SkyPilot's own example files, when a copy is at hand (never committed) ---------------------------------------


def _example_files() -> list[Path]:
    folder = os.environ.get("SKYPILOT_EXAMPLES_DIR")
    return sorted(Path(folder).rglob("*.yaml")) if folder else []


@pytest.mark.skipif(not _example_files(), reason="set SKYPILOT_EXAMPLES_DIR to a copy of SkyPilot's examples")
def test_skypilot_example_files_are_accepted_or_refused_with_advice() -> None:
    problems: list[str] = []
    for path in _example_files():
        try:
            TaskSpec.model_validate(task_from_yaml(path.read_text(encoding="utf-8"), path.name))
        except InvalidSpec as error:
            problems.extend([] if error.message.startswith(path.name) else [f"{path}: {error.message}"])
        except ValidationError as error:
            summary, _ = describe_validation_problems(error.errors())
            # every SkyPilot field has advice: none gets the generic refusal
            problems.extend([f"{path}: {summary}"] if "is not a supported field" in summary else [])
    assert problems == []


def test_the_compatibility_page_lists_every_field_with_its_advice() -> None:
    page = (Path(__file__).resolve().parents[2] / "docs" / "task-spec-compat.md").read_text(encoding="utf-8")
    for field, advice in TASK_FIELD_ADVICE.items():
        assert f"| `{field}` | {advice} |" in page, field
    for field, advice in RESOURCES_FIELD_ADVICE.items():
        assert f"| `resources.{field}` | {advice} |" in page, field
