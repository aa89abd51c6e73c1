"""Where the API is and which token to send: `--api-url` / `--token`, then the environment (`EC2JOBS_API_URL`,
`EC2JOBS_TOKEN`), then `.ec2jobs/local.env` in the current directory (written by `ec2jobs local up`), per setting."""

from __future__ import annotations

import argparse
import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ec2jobs.cli import output
from ec2jobs.cli.errors import CliError, UsageError
from ec2jobs.client import ApiError, Client

LOCAL_DIR = Path(".ec2jobs")
LOCAL_ENV_FILE = LOCAL_DIR / "local.env"
API_URL_VAR = "EC2JOBS_API_URL"
TOKEN_VAR = "EC2JOBS_TOKEN"  # noqa: S105 - a variable name, not a secret
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SAFE_ENV_VALUE = re.compile(r"[A-Za-z0-9_@%+=:,./~-]*")


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (blank lines, `#` comments and an `export ` prefix are accepted; quoted values unquoted)."""
    values: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return values
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror or error}") from None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep or not ENV_NAME.fullmatch(name):
            continue
        value = value.strip()
        if value[:1] in ("'", '"'):
            try:
                value = "".join(shlex.split(value))
            except ValueError:
                value = value.strip("'\"")
        values[name] = value
    return values


def write_env_file(path: Path, values: Mapping[str, str]) -> None:
    """Write KEY=VALUE lines with mode 600 (created private, replaced atomically)."""
    lines = ["# written by `ec2jobs local up`; load it with: set -a; source .ec2jobs/local.env; set +a"]
    for name, value in values.items():
        if not ENV_NAME.fullmatch(name):
            raise CliError(f"the local runtime returned an invalid variable name {name!r}")
        if "\n" in value or "\r" in value:
            raise CliError(f"the local runtime returned a multi-line value for {name}")
        lines.append(f"{name}={value if _SAFE_ENV_VALUE.fullmatch(value) else shlex.quote(value)}")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write("\n".join(lines) + "\n")
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class Config:
    api_url: str
    token: str
    api_url_source: str
    token_source: str
    local_env: dict[str, str] = field(default_factory=dict)

    @property
    def is_local(self) -> bool:
        local_url = self.local_env.get(API_URL_VAR, "")
        return bool(local_url) and local_url.rstrip("/") == self.api_url.rstrip("/")


def resolve_config(
    api_url: str | None,
    token: str | None,
    environ: Mapping[str, str] | None = None,
    env_file: Path = LOCAL_ENV_FILE,
) -> Config:
    """Flags, then the environment, then `.ec2jobs/local.env`, for each setting separately."""
    env = os.environ if environ is None else environ
    local = read_env_file(env_file)

    def pick(flag: str | None, flag_name: str, variable: str) -> tuple[str, str]:
        if flag:
            return flag, flag_name
        if env.get(variable):
            return env[variable], f"${variable}"
        if local.get(variable):
            return local[variable], str(env_file)
        return "", ""

    url, url_source = pick(api_url, "--api-url", API_URL_VAR)
    secret, token_source = pick(token, "--token", TOKEN_VAR)
    output.secrets.add(secret)
    if not url:
        raise UsageError(
            f"no API URL: pass --api-url, set {API_URL_VAR}, or start the local control plane with `ec2jobs local up`"
        )
    if not secret:
        raise UsageError(f"no API token: pass --token, set {TOKEN_VAR}, or run `ec2jobs local up`")
    return Config(url, secret, url_source, token_source, local)


def config_for(args: argparse.Namespace) -> Config:
    return resolve_config(getattr(args, "api_url", None), getattr(args, "token", None))


def client_for(args: argparse.Namespace, config: Config | None = None) -> Client:
    """The API client for this invocation (the config is kept on `args` for error messages)."""
    config = config or config_for(args)
    try:
        client = Client(config.api_url, config.token)
    except ValueError as error:
        raise UsageError(f"{error} (from {config.api_url_source})") from None
    args.config = config
    return client


def describe_api_error(error: ApiError, config: Config | None) -> str:
    text = str(error)
    if config is not None:
        if error.status == 401:
            text += f"; the API rejected the token from {config.token_source} (expired or revoked? see docs/tokens.md)"
        elif error.status == 0 and config.api_url_source == str(LOCAL_ENV_FILE):
            text += f" (from {LOCAL_ENV_FILE}; is `ec2jobs local up` running?)"
    return text
