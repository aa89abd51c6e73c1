"""SkyPilot task files, as ec2jobs reads them (pure): what to do instead of each SkyPilot field ec2jobs does not
support yet, the shape checks a task document must pass before its fields are validated, and the YAML loader the
CLI (and anything else that takes YAML) calls. docs/task-spec-compat.md lists every field and its advice.

Every sentence here follows the field name in an error ("workdir: is not supported yet: ..."), names no value the
user sent (values may be secrets) and says what works today.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, get_args

from pydantic import ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError
from pydantic_core.core_schema import ErrorType

from controlplane.core.errors import InvalidSpec

_BUILTIN_ERROR_TYPES = frozenset(get_args(ErrorType))
UNSUPPORTED_FIELD = "unsupported_field"  # the pydantic error type of a SkyPilot field ec2jobs does not support
NOT_A_MAPPING = "task_not_a_mapping"

_ONE_INSTANCE = "a job runs on one instance"
_REMOVE_IT = "remove it"

_ONE_VOLUME = (
    "is not supported: a job gets one encrypted gp3 root volume; remove it and size that volume with "
    "resources.disk_size"
)

# Top-level SkyPilot task fields (sky/utils/schemas.py get_task_schema) → what to do instead, today.
TASK_FIELD_ADVICE: Mapping[str, str] = {
    "num_nodes": (
        f"is not supported: {_ONE_INSTANCE}. Remove num_nodes and ask for one bigger instance (e.g. accelerators: "
        "H100:8), or submit one job per node"
    ),
    "service": (
        "(SkyServe) is not supported: ec2jobs runs batch jobs that end, and exposes no ports for serving. Remove "
        "`service:` to run the task once as a job"
    ),
    "pool": f"(SkyPilot worker pools) is not supported: each job gets its own instance; {_REMOVE_IT}",
    "config": (
        f"(overrides of SkyPilot's ~/.sky/config.yaml) is not supported: ec2jobs does not read that file; {_REMOVE_IT}"
    ),
    "secrets": (
        "can only be given to POST /jobs (`ec2jobs submit --secret NAME`): an automation event or a console "
        "execution input is kept in Step Functions' execution history, where a secret must never be"
    ),
    "managed_secrets": (
        "is not supported: pass the values as envs instead (`ec2jobs submit --env NAME` takes NAME from your "
        "environment)"
    ),
    "volumes": _ONE_VOLUME,
    "volume_mounts": _ONE_VOLUME,
    "event_callback": (
        "is not supported: follow the job instead (`ec2jobs submit --follow`, `ec2jobs status ID`, GET /jobs/{id})"
    ),
    "inputs": f"(SkyPilot's data-size estimate) is not used by ec2jobs; {_REMOVE_IT}",
    "outputs": f"(SkyPilot's data-size estimate) is not used by ec2jobs; {_REMOVE_IT}",
    "experimental": f"is not supported; {_REMOVE_IT}",
    "file_mounts_mapping": f"is SkyPilot-internal; {_REMOVE_IT}",
    "api_server_access": f"is SkyPilot-internal; {_REMOVE_IT}",
    "_metadata": f"is SkyPilot-internal; {_REMOVE_IT}",
}

_ONE_RESOURCE_SET = (
    "is not supported yet: ec2jobs does not choose among several resource sets; keep one (e.g. one `accelerators:` "
    "value) and submit again with another if it cannot launch"
)

# SkyPilot `resources:` fields (sky/utils/schemas.py get_resources_schema) → what to do instead, today.
RESOURCES_FIELD_ADVICE: Mapping[str, str] = {
    "cloud": f"ec2jobs runs on AWS only, in your provider's account; {_REMOVE_IT}",
    "infra": (
        "ec2jobs runs on AWS only: remove infra and put the AWS region, if any, in `region:` (infra: aws/us-east-2 "
        "becomes region: us-east-2)"
    ),
    "zone": (
        "is chosen by ec2jobs (it tries the region's zones in turn when one has no capacity): remove it, or set "
        "`region:`"
    ),
    "image_id": (
        "is not supported yet: jobs boot the NVIDIA Deep Learning Base AMI (GPU types) or Ubuntu LTS (CPU types); "
        "remove it and install what you need in `setup`"
    ),
    "ports": (
        "is not supported: the instance's security group admits only ec2jobs's own SSH connection (port 22), so a "
        "server in the job is not reachable; remove it (the job's output reaches you through its logs)"
    ),
    "disk_tier": f"is not supported: the root volume is always encrypted gp3; {_REMOVE_IT}",
    "network_tier": f"is not supported (no EFA or placement groups, {_ONE_INSTANCE}); {_REMOVE_IT}",
    "any_of": _ONE_RESOURCE_SET,
    "ordered": _ONE_RESOURCE_SET,
    "candidates": _ONE_RESOURCE_SET,
    "spot_recovery": (
        "is SkyPilot's old name for job_recovery: use `job_recovery:` instead (e.g. `job_recovery: "
        "{max_restarts: 10}`); docs/recovery.md"
    ),
    "autostop": ("is not needed: the instance is terminated when `run` ends, or at max_runtime_minutes; remove it"),
    "labels": f"is not supported yet (the instance is tagged with the job id; name the job with `name:`); {_REMOVE_IT}",
    "max_hourly_cost": (
        "is not supported yet: ec2jobs already picks the cheapest type that fits; see prices with `ec2jobs catalog` "
        "and pin one with `instance_type:`"
    ),
    "priority": f"is not supported yet; {_REMOVE_IT}",
    "priority_class": f"is not supported yet; {_REMOVE_IT}",
    "local_disk": f"is not supported: use resources.disk_size for the root volume; {_REMOVE_IT}",
    "ephemeral_storage": "is not supported: use resources.disk_size (GiB) for the root volume",
    "volumes": _ONE_VOLUME,
    "accelerator_args": f"is for Google Cloud TPUs, which AWS does not sell; {_REMOVE_IT}",
}


def rewrite_unsupported_fields(error: ValidationError, advice: Mapping[str, str]) -> ValidationError:
    """`error` with each "extra field" problem for a SkyPilot field replaced by one that says what to do instead.
    Other problems are kept as they are. The new problems carry no input value."""
    problems: list[Any] = []
    changed = False
    for problem in error.errors():
        loc = problem.get("loc", ())
        field = loc[-1] if loc else None
        if problem.get("type") == "extra_forbidden" and isinstance(field, str) and field in advice:
            problems.append(
                InitErrorDetails(
                    type=PydanticCustomError(UNSUPPORTED_FIELD, "{advice}", {"advice": advice[field]}),
                    loc=loc,
                    input=None,
                )
            )
            changed = True
        elif problem.get("type") not in _BUILTIN_ERROR_TYPES:  # e.g. a nested model's rewritten problem: kept
            problems.append(
                InitErrorDetails(
                    type=PydanticCustomError(str(problem["type"]), "{message}", {"message": problem["msg"]}),
                    loc=loc,
                    input=None,
                )
            )
        else:
            problems.append(problem)
    if not changed:
        return error
    return ValidationError.from_exception_data(error.title, problems)


def not_a_mapping_reason(data: Any) -> str | None:
    """Why `data` cannot be a task spec when it is not a mapping (a string, a list, a number...), or None."""
    if isinstance(data, Mapping):
        return None
    if isinstance(data, str):
        return (
            "the task spec is a string, not a mapping of fields: send an object such as "
            '{"run": "python train.py"} (a YAML task file is parsed by `ec2jobs submit FILE`)'
        )
    if isinstance(data, list | tuple):
        return (
            "the task spec is a list, not a mapping of fields: ec2jobs runs one task per job, so submit each task "
            'as its own job, each an object such as {"run": "python train.py"}'
        )
    return 'the task spec must be a mapping of fields such as {"run": "python train.py"}'


def not_a_mapping_error(reason: str) -> PydanticCustomError:
    """The pydantic error a model validator raises for a task that is not a mapping."""
    return PydanticCustomError(NOT_A_MAPPING, "{reason}", {"reason": reason})


def task_from_yaml(text: str, source: str = "the task file") -> dict[str, Any]:
    """A task file's YAML text → the task mapping the API takes (YAML dates and the like become text). Raises
    InvalidSpec with one sentence for: invalid YAML, several documents (a SkyPilot pipeline), an empty file, and a
    document that is a string, a list or a number rather than a mapping."""
    import json

    import yaml  # the CLI's dependency; imported here so the Lambda code never needs it

    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(error, "problem", None) or "it cannot be parsed").split())
        raise InvalidSpec(f"{source} is not valid YAML{where}: {problem}") from None
    if len(documents) > 1:
        raise InvalidSpec(
            f"{source} holds {len(documents)} YAML documents (separated by `---`), like a SkyPilot pipeline; "
            "ec2jobs runs one task per job: put each task in its own file and submit them one after the other"
        )
    if not documents:
        raise InvalidSpec(f"{source} is empty: a task needs at least `run:` (e.g. `run: python train.py`)")
    (document,) = documents
    if isinstance(document, str):
        raise InvalidSpec(
            f"{source} is a YAML string, not a task: a task is a mapping with at least `run:` "
            "(e.g. `run: python train.py`; a multi-line command goes under `run: |`)"
        )
    reason = not_a_mapping_reason(document)
    if reason is not None:
        raise InvalidSpec(f"{source}: {reason}")
    try:
        return dict(json.loads(json.dumps(document, default=str)))  # YAML dates and the like travel as text
    except (TypeError, ValueError):
        raise InvalidSpec(f"{source} has a key that is not text (e.g. a date): quote it") from None
