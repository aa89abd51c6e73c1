"""The task spec: a SkyPilot-compatible subset, identical in the API body, the CLI's YAML, a console execution
input and an automation event. Every rejection says what was wrong and what is allowed.

Semantics (README "Task spec"):
- `accelerators`: `TYPE[:COUNT]` (or SkyPilot's `{TYPE: COUNT}`), case-insensitive, aliases accepted
  (A10 → A10G, A100-40GB → A100, V100-32GB → V100 ...). Omit for a CPU-only job.
- `cpus`: `"8"` means exactly 8 vCPUs, `"8+"` at least 8 (SkyPilot).
- `memory`: a minimum; `"32"`/`"32+"` both mean at least 32 GiB. Plain numbers are GiB; units are
  `KB MB GB TB` (decimal), `KiB MiB GiB TiB` or `K M G T` (binary). `512MB` is half a gigabyte, never 512 GB.
- `use_spot`: `true` (spot only), `false` (on-demand only) or `"auto"` (spot, else on-demand; core/markets.py).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    field_validator,
    model_validator,
)

from controlplane.core import catalog
from controlplane.core.errors import InvalidSpec
from controlplane.core.markets import AUTO, Market, UseSpot, markets_for

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

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_JOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_AMOUNT = re.compile(r"\s*(?P<num>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>[A-Za-z]*)\s*(?P<plus>\+)?\s*", re.ASCII)

_GIB = 1024**3
_MEMORY_UNITS: dict[str, float] = {
    "": 1.0,
    "b": 1 / _GIB,
    "kb": 1e3 / _GIB,
    "mb": 1e6 / _GIB,
    "gb": 1e9 / _GIB,
    "tb": 1e12 / _GIB,
    "k": 1 / 1024**2,
    "ki": 1 / 1024**2,
    "kib": 1 / 1024**2,
    "m": 1 / 1024,
    "mi": 1 / 1024,
    "mib": 1 / 1024,
    "g": 1.0,
    "gi": 1.0,
    "gib": 1.0,
    "t": 1024.0,
    "ti": 1024.0,
    "tib": 1024.0,
}
_MEMORY_UNITS_HELP = "KB, MB, GB, TB (decimal), KiB, MiB, GiB, TiB or K, M, G, T (binary); no unit = GiB"


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


def parse_memory_gib(raw: Any) -> Amount:
    """Memory as a minimum in GiB. `16` = 16 GiB, `512MB` = 0.477 GiB, `1.5TiB` = 1536 GiB."""
    text = _scalar_text(raw, "memory", f"a size such as 16, 16GB or 512MiB ({_MEMORY_UNITS_HELP})")
    match = _AMOUNT.fullmatch(text)
    if not match:
        raise ValueError(
            f"memory {text!r} is not valid: use a size such as 32, 32+, 16GB or 512MiB ({_MEMORY_UNITS_HELP})"
        )
    unit = match["unit"].lower()
    if unit not in _MEMORY_UNITS:
        raise ValueError(f"memory {text!r} has an unknown unit {match['unit']!r}: use {_MEMORY_UNITS_HELP}")
    gib = float(match["num"]) * _MEMORY_UNITS[unit]
    if gib <= 0:
        raise ValueError(f"memory {text!r} must be more than zero")
    if gib > MAX_MEMORY_GIB:
        raise ValueError(f"memory {text!r} is too large: no AWS instance has more than {MAX_MEMORY_GIB} GiB")
    return Amount(gib, at_least=True)


def parse_accelerator(raw: Any) -> Accelerator:
    """`"A100:8"`, `"a10g"`, `{"A100": 8}` → Accelerator(canonical name, count)."""
    if isinstance(raw, dict):
        if len(raw) != 1:
            raise ValueError(
                "accelerators must name one GPU type, e.g. 'A100:8' or {A100: 8}; "
                "choosing among several types is not supported"
            )
        ((name, count),) = raw.items()
        text = f"{name}:{count}"
    elif isinstance(raw, str):
        text = raw.strip()
    else:
        raise ValueError("accelerators must be a string such as 'A100:8' (TYPE[:COUNT])")
    name, sep, count_text = text.partition(":")
    name = name.strip()
    if not name:
        raise ValueError(f"accelerators {text!r} is not valid: use TYPE[:COUNT], e.g. 'A100:8' or 'T4'")
    count = 1
    if sep:
        count_text = count_text.strip()
        try:
            count_value = float(count_text)
        except ValueError:
            raise ValueError(
                f"accelerators {text!r} has count {count_text!r}: the count must be a whole number, e.g. 'A100:8'"
            ) from None
        if not count_value.is_integer() or not 1 <= count_value <= MAX_GPU_COUNT:
            raise ValueError(
                f"accelerators {text!r} has count {count_text!r}: the count must be a whole number from 1 to "
                f"{MAX_GPU_COUNT}"
            )
        count = int(count_value)
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


class Resources(BaseModel):
    """What the job runs on. Everything is optional: an empty block means the cheapest small CPU instance."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    accelerators: str | None = Field(default=None, description="TYPE[:COUNT], e.g. A100:8; omit for CPU-only")
    cpus: str | None = Field(default=None, description='vCPUs: "8" exactly 8, "8+" at least 8')
    memory: str | None = Field(default=None, description="minimum memory, e.g. 32, 32+, 64GB, 512MiB")
    disk_size: int = Field(default=DISK_DEFAULT_GIB, description="root volume size in GiB (encrypted gp3)")
    use_spot: UseSpot = Field(
        default=False,
        description='true: spot; false: on-demand; "auto": spot, falling back to on-demand when AWS has no spot '
        "capacity in any zone tried, or the spot quota is too low",
    )
    region: str | None = Field(default=None, description="AWS region; defaults to the provider's region")
    instance_type: str | None = Field(default=None, description="pin an exact EC2 instance type")
    _requested_gpu: str | None = PrivateAttr(default=None)  # what the user typed, e.g. "a10" (for the alias note)

    @model_validator(mode="wrap")
    @classmethod
    def _remember_requested_gpu(cls, data: Any, handler: ModelWrapValidatorHandler[Resources]) -> Resources:
        resources = handler(data)
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
        if isinstance(raw, bool) or not isinstance(raw, int | float | str):
            raise ValueError(f"disk_size must be a whole number of GiB from {DISK_MIN_GIB} to {DISK_MAX_GIB}")
        try:
            value = float(str(raw).strip().removesuffix("GiB").removesuffix("GB"))
        except ValueError:
            raise ValueError(
                f"disk_size {raw!r} is not valid: use a whole number of GiB from {DISK_MIN_GIB} to {DISK_MAX_GIB}"
            ) from None
        if not value.is_integer() or not DISK_MIN_GIB <= value <= DISK_MAX_GIB:
            raise ValueError(
                f"disk_size {raw!r} is not valid: use a whole number of GiB from {DISK_MIN_GIB} to {DISK_MAX_GIB}"
            )
        return int(value)

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
    def _region(cls, raw: Any) -> str | None:
        if raw is None:
            return None
        if not isinstance(raw, str):
            raise ValueError("region must be an AWS region name such as us-east-1")
        return catalog.get().check_region(raw.strip())

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
    def markets(self) -> tuple[Market, ...]:
        """The EC2 markets to try, in order (auto: spot, then on-demand)."""
        return markets_for(self.use_spot)

    @property
    def cpu_requirement(self) -> Amount | None:
        return parse_cpus(self.cpus) if self.cpus else None

    @property
    def memory_requirement(self) -> Amount | None:
        return parse_memory_gib(self.memory) if self.memory else None


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
        for name, value in raw.items():
            if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
                raise ValueError(
                    f"envs name {name!r} is not a valid variable name: use letters, digits and '_', "
                    "not starting with a digit"
                )
            if name.upper().startswith(RESERVED_ENV_PREFIX):
                raise ValueError(f"envs name {name!r} is reserved: names starting {RESERVED_ENV_PREFIX} are ours")
            if isinstance(value, bool):
                result[name] = "true" if value else "false"
            elif isinstance(value, str | int | float):
                result[name] = str(value)
            elif value is None:
                result[name] = ""
            else:
                raise ValueError(f"envs value of {name} must be a string or a number")
            if "\x00" in result[name]:
                raise ValueError(f"envs value of {name} contains a NUL byte")
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
