"""The task spec: a SkyPilot-compatible subset, identical in the API body, the CLI's YAML, a console execution
input and an automation event. Every rejection says what was wrong and what is allowed.

Semantics (README "Task spec"):
- `accelerators`: `TYPE[:COUNT]` (or SkyPilot's `{TYPE: COUNT}`), case-insensitive, aliases accepted
  (A10 → A10G, A100-40GB → A100, V100-32GB → V100 ...). Omit for a CPU-only job.
- `cpus`: `"8"` means exactly 8 vCPUs, `"8+"` at least 8 (SkyPilot).
- `memory` and `disk_size` take the same sizes, with SkyPilot's units: a plain number is GiB, and `KB MB GB TB`,
  `KiB MiB GiB TiB`, `Ki Mi Gi Ti` and `K M G T` are all binary (GB = GiB = 2**30 bytes, as in SkyPilot's
  MEMORY_SIZE_UNITS). `512MB` is half a GiB, never 512 GB. `memory` is a minimum (`"32"`/`"32+"` both mean at
  least 32 GiB); `disk_size` must come to a whole number of GiB (EBS sizes volumes in GiB).
- `envs`: a name with no value (`HF_TOKEN:`, SkyPilot's "must be supplied") is refused with a sentence saying how
  to pass it (`ec2jobs submit --env HF_TOKEN`).
- SkyPilot fields ec2jobs does not support yet are refused with what to do instead (core/spec_compat.py).
- `use_spot`: `true` (spot only), `false` (on-demand only) or `"auto"` (spot, else on-demand; core/markets.py).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from controlplane.core import catalog
from controlplane.core.errors import InvalidSpec
from controlplane.core.inputs import WORKDIR_PATH, MountsSource, WorkdirSource, parse_file_mounts, parse_workdir
from controlplane.core.markets import AUTO, Market, UseSpot, markets_for
from controlplane.core.recovery import JobRecovery
from controlplane.core.recovery import parse as parse_recovery
from controlplane.core.spec_compat import (
    RESOURCES_FIELD_ADVICE,
    TASK_FIELD_ADVICE,
    not_a_mapping_error,
    not_a_mapping_reason,
    rewrite_unsupported_fields,
    task_from_yaml,
)

__all__ = ["Accelerator", "Amount", "Resources", "TaskSpec", "task_from_yaml"]

MAX_RUNTIME_DEFAULT_MINUTES = 720
MAX_RUNTIME_LIMIT_MINUTES = 7 * 24 * 60
DISK_DEFAULT_GIB = 256
DISK_MIN_GIB = 8
DISK_MAX_GIB = 16_384  # gp3 volume limit
MAX_CPUS = 1024
MAX_MEMORY_GIB = 32 * 1024
MAX_ENV_VARS = 200
MAX_GPU_COUNT = 64
RESERVED_ENV_PREFIX = "EC2JOBS_"
DEFAULT_CPU_ONLY_CPUS = "2+"
# The most a task spec may take once stored (its JSON in the job record, UTF-8 bytes). The job record is one DynamoDB
# item (at most 400 KB = 409,600 bytes, attribute names included) that must still hold everything the job records
# later (instance, prices, notes, failure message, lease, timestamps): 256 KiB leaves 144 KiB for those, and it is
# also what a console execution input or an automation event can carry (both 256 KB). docs/limits.md.
MAX_SPEC_BYTES = 256 * 1024
MAX_REGIONS = 8
# The forms `resources.region` takes (the validator checks the names against the catalog).
REGION_JSON_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "minLength": 1},
        {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1, "maxItems": MAX_REGIONS},
        {"type": "null"},
    ]
}

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_GPU_COUNT = re.compile(r"(?P<whole>[0-9]{1,6})(?:\.0*)?", re.ASCII)  # "8", "8.0": ACCELERATORS_JSON_SCHEMA
_JOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_JOB_ID = re.compile(r"job-[0-9a-f]{20}")
_AMOUNT = re.compile(r"\s*(?P<num>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>[A-Za-z]*)\s*(?P<plus>\+)?\s*", re.ASCII)

_GIB = 1024**3
# Sizes in GiB per unit. Every unit is binary, as in SkyPilot (sky/skylet/constants.py MEMORY_SIZE_UNITS:
# 'gb': 2**30), so a SkyPilot file means the same here: `memory: 16GB` and `disk_size: 1TB` are 16 and 1024 GiB.
_SIZE_UNITS_GIB: dict[str, float] = {
    "": 1.0,
    "b": 1 / _GIB,
    **{unit: 1 / 1024**2 for unit in ("k", "kb", "ki", "kib")},
    **{unit: 1 / 1024 for unit in ("m", "mb", "mi", "mib")},
    **{unit: 1.0 for unit in ("g", "gb", "gi", "gib")},
    **{unit: 1024.0 for unit in ("t", "tb", "ti", "tib")},
}
_SIZE_UNITS_HELP = "MB, GB, TB or MiB, GiB, TiB (all binary, as in SkyPilot: 1 GB = 1 GiB); no unit = GiB"


@dataclass(frozen=True)
class Amount:
    """A resource amount: exactly `value`, or at least `value` when `at_least`."""

    value: float
    at_least: bool

    def satisfied_by(self, offered: float) -> bool:
        if self.at_least:
            return offered + 1e-9 >= self.value
        return math.isclose(offered, self.value, rel_tol=1e-9, abs_tol=1e-9)

    def __str__(self) -> str:
        number = f"{self.value:g}"
        return f"{number}+" if self.at_least else number


@dataclass(frozen=True)
class Accelerator:
    name: str  # canonical catalog name, e.g. "A10G"
    count: int
    requested_as: str  # what the user wrote, e.g. "a10"

    def __str__(self) -> str:
        return f"{self.name}:{self.count}"


def parse_cpus(raw: Any) -> Amount:
    """`8` / `"8"` → exactly 8 vCPUs; `"8+"` → at least 8."""
    text = _scalar_text(raw, "cpus", 'a whole number of vCPUs such as 8, or "8+" for at least 8')
    match = _AMOUNT.fullmatch(text)
    if not match or match["unit"]:
        raise ValueError(f'cpus {text!r} is not valid: use a whole number such as 8, or "8+" for at least 8')
    value = float(match["num"])
    if not value.is_integer() or value < 1:
        raise ValueError(f"cpus {text!r} is not valid: vCPUs are whole numbers of at least 1")
    if value > MAX_CPUS:
        raise ValueError(f"cpus {text!r} is too large: no AWS instance has more than {MAX_CPUS} vCPUs")
    return Amount(value, at_least=bool(match["plus"]))


def _size_gib(text: str, field: str, example: str) -> tuple[float, bool]:
    """`text` as (GiB, ends with '+'), with the units of `_SIZE_UNITS_GIB`; ValueError naming `field` if not."""
    match = _AMOUNT.fullmatch(text)
    if not match:
        raise ValueError(f"{field} {text!r} is not valid: use a size such as {example} ({_SIZE_UNITS_HELP})")
    unit = match["unit"].lower()
    if unit not in _SIZE_UNITS_GIB:
        raise ValueError(f"{field} {text!r} has an unknown unit {match['unit']!r}: use {_SIZE_UNITS_HELP}")
    return float(match["num"]) * _SIZE_UNITS_GIB[unit], bool(match["plus"])


def parse_memory_gib(raw: Any) -> Amount:
    """Memory as a minimum in GiB. `16` = `16GB` = 16 GiB, `512MB` = 0.5 GiB, `1.5TiB` = 1536 GiB."""
    text = _scalar_text(raw, "memory", f"a size such as 16, 16GB or 512MiB ({_SIZE_UNITS_HELP})")
    gib, _ = _size_gib(text, "memory", "32, 32+, 16GB or 512MiB")
    if gib <= 0:
        raise ValueError(f"memory {text!r} must be more than zero")
    if gib > MAX_MEMORY_GIB:
        raise ValueError(f"memory {text!r} is too large: no AWS instance has more than {MAX_MEMORY_GIB} GiB")
    return Amount(gib, at_least=True)


_SEVERAL_GPU_TYPES = (
    "accelerators must name one GPU type, e.g. 'A100:8' or {A100: 8}: ec2jobs does not choose among several types "
    "yet (SkyPilot's {L4, A10G} or [L4, A10G]), so keep the one you want and submit again with another if it cannot "
    "launch"
)


def parse_accelerator(raw: Any) -> Accelerator:
    """`"A100:8"`, `"a10g"`, `{"A100": 8}`, `{"A100:8": null}` (YAML `{A100:8}`) → Accelerator(name, count).
    Exactly the forms ACCELERATORS_JSON_SCHEMA describes: the count is ASCII digits (1..MAX_GPU_COUNT)."""
    bad_count = f"the count must be a whole number from 1 to {MAX_GPU_COUNT}, e.g. 'A100:8'"
    if isinstance(raw, dict):
        if len(raw) != 1:
            raise ValueError(_SEVERAL_GPU_TYPES)
        ((name, count),) = raw.items()
        if isinstance(count, float) and count.is_integer():
            count = int(count)
        if count is not None and (isinstance(count, bool) or not isinstance(count, int | str)):
            raise ValueError(f"accelerators {{TYPE: COUNT}}: {bad_count}")
        text = f"{name}" if count is None else f"{name}:{count}"
    elif isinstance(raw, str):
        text = raw.strip()
    elif isinstance(raw, list | tuple):
        raise ValueError(_SEVERAL_GPU_TYPES)
    else:
        raise ValueError("accelerators must be a string such as 'A100:8' (TYPE[:COUNT]) or a mapping {A100: 8}")
    name, sep, count_text = text.partition(":")
    name = name.strip()
    if not name:
        raise ValueError(f"accelerators {text!r} is not valid: use TYPE[:COUNT], e.g. 'A100:8' or 'T4'")
    count = 1
    if sep:
        count_text = count_text.strip()
        match = _GPU_COUNT.fullmatch(count_text)
        if not match or not 1 <= int(match["whole"]) <= MAX_GPU_COUNT:
            raise ValueError(f"accelerators {text!r} has count {count_text!r}: {bad_count}")
        count = int(match["whole"])
    canonical = catalog.get().canonical_gpu(name)  # raises ValueError listing the known GPU types
    return Accelerator(name=canonical, count=count, requested_as=name)


def _scalar_text(raw: Any, field: str, expected: str) -> str:
    if isinstance(raw, bool) or raw is None:
        raise ValueError(f"{field} must be {expected}")
    if isinstance(raw, int | float):
        if isinstance(raw, float) and not math.isfinite(raw):
            raise ValueError(f"{field} must be {expected}")
        return f"{raw:g}" if isinstance(raw, float) else str(raw)
    if isinstance(raw, str):
        return raw.strip()
    raise ValueError(f"{field} must be {expected}")


# What `accelerators` accepts, for the JSON schema of request bodies (validation mode). Stored and returned specs
# always hold the canonical "TYPE:COUNT" string (serialization mode keeps `string | null`).
ACCELERATORS_JSON_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {
            "type": "string",
            "pattern": r"^\s*[^:\s][^:]*(:\s*[0-9]+(\.0*)?\s*)?$",
            "description": "TYPE[:COUNT], e.g. A100:8 (count defaults to 1)",
            "examples": ["A100:8", "L4", "a10g:4"],
        },
        {
            "type": "object",
            "minProperties": 1,
            "maxProperties": 1,
            "additionalProperties": {
                "anyOf": [
                    {"type": "integer", "minimum": 1, "maximum": MAX_GPU_COUNT},
                    {"type": "string", "pattern": r"^\s*[0-9]+(\.0*)?\s*$"},
                    {"type": "null"},
                ]
            },
            "description": "SkyPilot's mapping form, e.g. {A100: 8}; one GPU type",
            "examples": [{"A100": 8}],
        },
        {"type": "null"},
    ],
}


class Resources(BaseModel):
    """What the job runs on. Everything is optional: an empty block means the cheapest small CPU instance."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    accelerators: Annotated[str | None, WithJsonSchema(ACCELERATORS_JSON_SCHEMA, mode="validation")] = Field(
        default=None,
        description="one GPU type and count, TYPE[:COUNT] (e.g. A100:8) or SkyPilot's {A100: 8}; omit for CPU-only",
    )
    cpus: str | None = Field(default=None, description='vCPUs: "8" exactly 8, "8+" at least 8')
    memory: str | None = Field(
        default=None, description="minimum memory, e.g. 32, 32+, 64GB, 512MiB (GB = GiB, as in SkyPilot)"
    )
    disk_size: int = Field(
        default=DISK_DEFAULT_GIB,
        description="root volume size in GiB (encrypted gp3): a number, or a size such as 1TB (GB = GiB, as in "
        f"SkyPilot); {DISK_MIN_GIB}..{DISK_MAX_GIB}",
    )
    use_spot: UseSpot = Field(
        default=False,
        description='true: spot; false: on-demand; "auto": spot, falling back to on-demand when AWS has no spot '
        "capacity in any zone tried, or the spot quota is too low",
    )
    region: Annotated[str | list[str] | None, WithJsonSchema(REGION_JSON_SCHEMA, mode="validation")] = Field(
        default=None,
        description="AWS region, or an ordered list of regions: the next is tried when one has no capacity for the "
        "instance type; defaults to the provider's region",
    )
    instance_type: str | None = Field(default=None, description="pin an exact EC2 instance type")
    _requested_gpu: str | None = PrivateAttr(default=None)  # what the user typed, e.g. "a10" (for the alias note)

    @model_validator(mode="wrap")
    @classmethod
    def _remember_requested_gpu(cls, data: Any, handler: ModelWrapValidatorHandler[Resources]) -> Resources:
        try:
            resources = handler(data)
        except ValidationError as error:
            raise rewrite_unsupported_fields(error, RESOURCES_FIELD_ADVICE) from None
        raw = data.get("accelerators") if isinstance(data, dict) else None
        if raw is not None:
            resources._requested_gpu = parse_accelerator(raw).requested_as
        return resources

    @field_validator("accelerators", mode="before")
    @classmethod
    def _accelerators(cls, raw: Any) -> str | None:
        if raw is None:
            return None
        return str(parse_accelerator(raw))

    @field_validator("cpus", mode="before")
    @classmethod
    def _cpus(cls, raw: Any) -> str | None:
        return None if raw is None else str(parse_cpus(raw))

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, raw: Any) -> str | None:
        if raw is None:
            return None
        parse_memory_gib(raw)
        return _scalar_text(raw, "memory", "a size")

    @field_validator("disk_size", mode="before")
    @classmethod
    def _disk(cls, raw: Any) -> int:
        allowed = f"a whole number of GiB from {DISK_MIN_GIB} to {DISK_MAX_GIB}, e.g. 512 or 1TB"
        text = _scalar_text(raw, "disk_size", allowed)
        gib, at_least = _size_gib(text, "disk_size", "512, 512GB or 1TB")
        if at_least or not gib.is_integer() or not DISK_MIN_GIB <= gib <= DISK_MAX_GIB:
            raise ValueError(f"disk_size {text!r} is not valid: use {allowed} ({_SIZE_UNITS_HELP})")
        return int(gib)

    @field_validator("use_spot", mode="before")
    @classmethod
    def _use_spot(cls, raw: Any) -> UseSpot:
        if isinstance(raw, bool):
            return raw
        text = raw.strip().lower() if isinstance(raw, str) else None
        if text in {"true", "false"}:
            return text == "true"
        if text == AUTO:
            return AUTO
        raise ValueError(
            'use_spot must be true, false or "auto" (auto: spot, falling back to on-demand when AWS has no spot '
            "capacity or the spot quota is too low)"
        )

    @field_validator("region", mode="before")
    @classmethod
    def _region(cls, raw: Any) -> str | list[str] | None:
        if raw is None:
            return None
        bad = "region must be an AWS region name such as us-east-1, or a list of them such as [us-east-1, us-west-2]"
        items = raw if isinstance(raw, list) else [raw]
        if not items or len(items) > MAX_REGIONS or not all(isinstance(item, str) for item in items):
            raise ValueError(f"{bad} (at most {MAX_REGIONS})")
        regions = [catalog.get().check_region(item.strip()) for item in items]
        if len(set(regions)) != len(regions):
            raise ValueError("region lists a region twice")
        return regions[0] if len(regions) == 1 else regions

    @field_validator("instance_type", mode="before")
    @classmethod
    def _instance_type(cls, raw: Any) -> str | None:
        if raw is None:
            return None
        if not isinstance(raw, str):
            raise ValueError("instance_type must be an EC2 instance type name such as g5.xlarge")
        return catalog.get().check_instance_type(raw.strip())

    @property
    def accelerator(self) -> Accelerator | None:
        if not self.accelerators:
            return None
        parsed = parse_accelerator(self.accelerators)
        return Accelerator(parsed.name, parsed.count, self._requested_gpu or parsed.requested_as)

    @property
    def regions(self) -> tuple[str, ...]:
        """The regions asked for, in order (empty: the provider's region)."""
        if self.region is None:
            return ()
        return (self.region,) if isinstance(self.region, str) else tuple(self.region)

    @property
    def markets(self) -> tuple[Market, ...]:
        """The EC2 markets to try, in order (auto: spot, then on-demand)."""
        return markets_for(self.use_spot)

    @property
    def cpu_requirement(self) -> Amount | None:
        return parse_cpus(self.cpus) if self.cpus else None

    @property
    def memory_requirement(self) -> Amount | None:
        return parse_memory_gib(self.memory) if self.memory else None


def _no_value_message(names: list[str]) -> str:
    """The sentence for envs given with no value (SkyPilot's "must be supplied at launch")."""
    one = len(names) == 1
    first = names[0]
    return (
        f'{", ".join(names)} {"has" if one else "have"} no value (SkyPilot\'s "must be supplied at launch"): pass '
        f"{'it' if one else 'each'} at submit time with `ec2jobs submit --env {first}` (takes the value from your "
        f"environment) or `--env {first}=VALUE`, or write the value in envs"
    )


class TaskSpec(BaseModel):
    """A job: what to run and what to run it on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(default=None, description="a label for the job (letters, digits, . _ -)")
    resources: Resources = Field(default_factory=Resources)
    envs: dict[str, str] = Field(default_factory=dict, description="environment variables for setup and run")
    setup: str | None = Field(default=None, description="shell commands run once before `run`")
    run: str = Field(description="shell commands that are the job; its exit code decides SUCCEEDED/FAILED")
    max_runtime_minutes: int = Field(
        default=MAX_RUNTIME_DEFAULT_MINUTES,
        description=f"hard deadline enforced on the instance (1..{MAX_RUNTIME_LIMIT_MINUTES})",
    )
    workdir: WorkdirSource | None = Field(
        default=None, description=f"code for the job, at {WORKDIR_PATH} (the working directory of setup and run)"
    )
    file_mounts: MountsSource | None = Field(default=None, description="files placed at their paths before setup")
    resume_from: str | None = Field(
        default=None, description="a job of the same team whose last checkpoints are restored before setup"
    )
    priority: int = Field(
        default=0,
        ge=-1000,
        le=1000,
        strict=True,
        description="order within the team's queue: a higher priority is admitted first (docs/budgets.md)",
    )
    max_queue_minutes: int | None = Field(
        default=None,
        ge=1,
        le=7 * 24 * 60,
        strict=True,
        description="how long the job may wait QUEUED for its team's limits before it fails QUEUE_TIMEOUT (at most "
        "the team's max_queue_minutes, the default)",
    )
    job_recovery: JobRecovery | None = Field(
        default=None,
        description="relaunch the job (resuming from its checkpoints) when AWS interrupts or loses its instance, "
        "when it fails, or wait when no zone has capacity; absent: no recovery (docs/recovery.md)",
    )

    @model_validator(mode="wrap")
    @classmethod
    def _task_shape(cls, data: Any, handler: ModelWrapValidatorHandler[TaskSpec]) -> TaskSpec:
        """A task that is not a mapping says what it is; a SkyPilot field we lack says what to do instead."""
        reason = not_a_mapping_reason(data) if not isinstance(data, BaseModel) else None
        if reason is not None:
            raise not_a_mapping_error(reason)
        data = _recovery_at_top(data)
        try:
            return handler(data)
        except ValidationError as error:
            raise rewrite_unsupported_fields(error, TASK_FIELD_ADVICE) from None

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, raw: Any) -> str | None:
        if raw is None:
            return None
        if not isinstance(raw, str) or not _JOB_NAME.fullmatch(raw.strip()):
            raise ValueError(
                "name must be 1-128 characters: letters, digits, '.', '_' or '-', starting with a letter or digit"
            )
        return raw.strip()

    @field_validator("resources", mode="before")
    @classmethod
    def _resources(cls, raw: Any) -> Any:
        return {} if raw is None else raw

    @field_validator("envs", mode="before")
    @classmethod
    def _envs(cls, raw: Any) -> dict[str, str]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise ValueError("envs must be a mapping of NAME: value")
        if len(raw) > MAX_ENV_VARS:
            raise ValueError(f"envs has {len(raw)} variables; at most {MAX_ENV_VARS} are allowed")
        result: dict[str, str] = {}
        missing: list[str] = []
        for name, value in raw.items():
            if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
                raise ValueError(
                    f"envs name {name!r} is not a valid variable name: use letters, digits and '_', "
                    "not starting with a digit"
                )
            if name.upper().startswith(RESERVED_ENV_PREFIX):
                raise ValueError(f"envs name {name!r} is reserved: names starting {RESERVED_ENV_PREFIX} are ours")
            if value is None:
                missing.append(name)
                continue
            if isinstance(value, bool):
                result[name] = "true" if value else "false"
            elif isinstance(value, str | int | float):
                result[name] = str(value)
            else:
                raise ValueError(f"envs value of {name} must be a string or a number")
            if "\x00" in result[name]:
                raise ValueError(f"envs value of {name} contains a NUL byte")
        if missing:
            raise ValueError(_no_value_message(missing))
        return result

    @field_validator("setup", mode="before")
    @classmethod
    def _setup(cls, raw: Any) -> str | None:
        if raw is None:
            return None
        if not isinstance(raw, str):
            raise ValueError("setup must be a string of shell commands")
        if "\x00" in raw:
            raise ValueError("setup contains a NUL byte")
        return raw if raw.strip() else None

    @field_validator("run", mode="before")
    @classmethod
    def _run(cls, raw: Any) -> str:
        if not isinstance(raw, str) or not raw.strip():
            raise ValueError("run must be a non-empty string of shell commands")
        if "\x00" in raw:
            raise ValueError("run contains a NUL byte")
        return raw

    @field_validator("workdir", mode="before")
    @classmethod
    def _workdir(cls, raw: Any) -> Any:
        return parse_workdir(raw)

    @field_validator("file_mounts", mode="before")
    @classmethod
    def _file_mounts(cls, raw: Any) -> Any:
        return parse_file_mounts(raw)

    @field_validator("job_recovery", mode="before")
    @classmethod
    def _job_recovery(cls, raw: Any) -> JobRecovery | None:
        return parse_recovery(raw)

    @field_validator("resume_from", mode="before")
    @classmethod
    def _resume_from(cls, raw: Any) -> str | None:
        if raw is None:
            return None
        if not isinstance(raw, str) or not _JOB_ID.fullmatch(raw):
            raise ValueError("resume_from must be the id of an earlier job of your team (job-<20 hex digits>)")
        return raw

    @field_validator("max_runtime_minutes", mode="before")
    @classmethod
    def _max_runtime(cls, raw: Any) -> int:
        bad = f"max_runtime_minutes must be a whole number of minutes from 1 to {MAX_RUNTIME_LIMIT_MINUTES} (7 days)"
        if raw is None:
            return MAX_RUNTIME_DEFAULT_MINUTES
        if isinstance(raw, bool):
            raise ValueError(bad)
        try:
            value = float(raw)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(bad) from None
        if not value.is_integer() or not 1 <= value <= MAX_RUNTIME_LIMIT_MINUTES:
            raise ValueError(bad)
        return int(value)


def _recovery_at_top(data: Any) -> Any:
    """SkyPilot writes `job_recovery` under `resources`; ec2jobs keeps it at the top of the task. Moved up (both
    places at once is an error)."""
    if not isinstance(data, dict):
        return data
    resources = data.get("resources")
    if not isinstance(resources, dict) or "job_recovery" not in resources:
        return data
    if data.get("job_recovery") is not None:
        raise ValueError("job_recovery is given twice (at the top and under resources); keep one")
    rest = {key: value for key, value in resources.items() if key != "job_recovery"}
    return data | {"resources": rest, "job_recovery": resources["job_recovery"]}


def stored_spec_bytes(spec: TaskSpec) -> int:
    """The spec's size in the job record: its JSON (as the job store writes it), in UTF-8 bytes."""
    return len(spec.model_dump_json(exclude_none=True).encode("utf-8"))


def check_spec_size(spec: TaskSpec) -> None:
    """Refuse a spec too large for the job record to hold with everything the job records later (InvalidSpec)."""
    size = stored_spec_bytes(spec)
    if size > MAX_SPEC_BYTES:
        raise InvalidSpec(
            f"The task spec is {size:,} bytes as stored; at most {MAX_SPEC_BYTES:,} bytes (256 KiB) are allowed, "
            "because the job record (a DynamoDB item of at most 400 KB) must also hold everything the job records "
            "later. Move long setup/run commands or env values into a script in your repository or image and call "
            "it from run."
        )
