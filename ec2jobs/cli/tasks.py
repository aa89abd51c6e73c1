"""Task YAML files and `--env`: what `ec2jobs submit` sends as the task spec.

`--env NAME=VALUE` sets an env; `--env NAME` takes NAME's value from this shell's environment (as `sky launch --env`
does). Either overrides the YAML's `envs`, and may add names it does not have. An env the YAML leaves without a value
(`HF_TOKEN:`, SkyPilot's "must be supplied") must be filled this way: the CLI refuses to submit without it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from controlplane.core.errors import InvalidSpec
from controlplane.core.spec import task_from_yaml
from ec2jobs.cli import output
from ec2jobs.cli.config import ENV_NAME
from ec2jobs.cli.errors import UsageError


def read_task_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"{path}: cannot read it: {getattr(error, 'strerror', None) or error}") from None
    try:
        spec = task_from_yaml(text, str(path))  # one sentence for several documents, a string, invalid YAML, …
    except InvalidSpec as error:
        raise UsageError(error.message) from None
    try:
        json.dumps(spec)
    except (TypeError, ValueError):
        spec = json.loads(json.dumps(spec, default=str))  # YAML dates and the like travel as text
    return spec


def parse_env_options(options: Sequence[str], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """`--env NAME=VALUE` / `--env NAME` (from `environ`) → {NAME: VALUE}; the last one of a name wins."""
    env = os.environ if environ is None else environ
    values: dict[str, str] = {}
    for option in options:
        name, sep, value = option.partition("=")
        if not ENV_NAME.fullmatch(name):
            shown = name if len(name) <= 40 else name[:40] + "…"
            raise UsageError(f"--env {shown!r}: an env name is letters, digits and '_', not starting with a digit")
        if not sep:
            if name not in env:
                raise UsageError(f"--env {name}: {name} is not set in your environment (or pass --env {name}=VALUE)")
            value = env[name]
        values[name] = value
        output.secrets.add(value)  # env values are often tokens: never echoed in an error line
    return values


def apply_envs(spec: dict[str, Any], overrides: Mapping[str, str], source: str) -> dict[str, Any]:
    """The spec with `overrides` merged into its `envs`; a UsageError names every env still without a value."""
    envs = spec.get("envs")
    if envs is None and not overrides:
        return spec
    if envs is not None and not isinstance(envs, dict):
        raise UsageError(f"{source}: envs must be a mapping of NAME: value, found {type(envs).__name__}")
    merged: dict[str, Any] = {**(envs or {}), **overrides}
    missing = [name for name, value in merged.items() if value is None]
    if missing:
        names = ", ".join(missing)
        flags = " ".join(f"--env {name}" for name in missing)
        raise UsageError(
            f"{source}: no value for env {names} (the task leaves it to be supplied): pass {flags} to take it from "
            f"your environment, or --env NAME=VALUE"
        )
    return {**spec, "envs": merged}
