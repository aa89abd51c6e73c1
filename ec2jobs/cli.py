"""The `ec2jobs` command line: the same commands against the local control plane (`ec2jobs local up`) and a deployed
API. `main(argv) -> int`; exit codes: 0 ok, 1 a failed job or an API error, 2 a usage or configuration error,
130 interrupted. Every error is one line on stderr.

Configuration, first found wins, per setting: `--api-url` / `--token`, then the environment (`EC2JOBS_API_URL`,
`EC2JOBS_TOKEN`), then `.ec2jobs/local.env` in the current directory (written by `ec2jobs local up`).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import importlib
import json
import os
import re
import shlex
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any, NoReturn, Protocol, cast

import yaml

from ec2jobs.client import TERMINAL_STATUSES, ApiError, Client, JsonObject

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

LOCAL_DIR = Path(".ec2jobs")
LOCAL_ENV_FILE = LOCAL_DIR / "local.env"
API_URL_VAR = "EC2JOBS_API_URL"
TOKEN_VAR = "EC2JOBS_TOKEN"  # noqa: S105 - a variable name, not a secret
JOB_STATUSES = ("PENDING", "LAUNCHING", "PROVISIONING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")
LOG_GRACE_SECONDS = 60.0  # after the job ended, how long to wait for the rest of its log before giving up
MAX_PAGE = 100  # the API's largest page of jobs
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SAFE_ENV_VALUE = re.compile(r"[A-Za-z0-9_@%+=:,./~-]*")

_sleep: Callable[[float], None] = time.sleep  # tests replace it (e.g. to simulate Ctrl-C while following)


class CliError(Exception):
    """An error reported as one line on stderr, with its exit code."""

    exit_code = EXIT_FAILED


class UsageError(CliError):
    exit_code = EXIT_USAGE


class _Terminated(BaseException):
    """SIGTERM/SIGHUP while `local up` waits (a BaseException, like KeyboardInterrupt, so nothing swallows it)."""


class _Runtime(Protocol):
    """What `local.runtime.start()` returns."""

    api_url: str
    token: str
    endpoint: str
    region: str
    team_id: str
    env: Mapping[str, str]

    def stop(self) -> None: ...

    def wait(self) -> None: ...


# -- output helpers ------------------------------------------------------------------------------------------


class _Secrets:
    """Values that must never reach the terminal (the API token, a provider's secret key)."""

    def __init__(self) -> None:
        self.values: set[str] = set()

    def add(self, value: str | None) -> None:
        if value and len(value) >= 4:
            self.values.add(value)

    def redact(self, text: str) -> str:
        for value in sorted(self.values, key=len, reverse=True):
            text = text.replace(value, "<redacted>")
        return text


_secrets = _Secrets()


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _print_json(value: Any) -> None:
    _out(json.dumps(value, indent=2, ensure_ascii=False))


def _table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max([len(header)] + [len(row[i]) for row in cells]) for i, header in enumerate(headers)]
    for row in [list(headers), *cells]:
        _out("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _price(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:.4f}"
    return "n/a"


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _duration(seconds: float) -> str:
    """`45s`, `12m 05s`, `3h 04m`, `2d 03h`."""
    whole = max(0, int(seconds))
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _market(job: Mapping[str, Any]) -> str:
    """The market the job runs in (recorded at launch), else the one it asked for."""
    if job.get("market"):
        return str(job["market"])
    use_spot = job.get("use_spot")
    if use_spot == "auto":
        return "auto"
    return "spot" if use_spot is True else "on-demand"


def _hourly(job: Mapping[str, Any]) -> str:
    """The hourly price with its market; on spot no price is recorded, only its ceiling (the on-demand price)."""
    price, ceiling, market = _number(job.get("hourly_price")), _number(job.get("on_demand_price")), _market(job)
    if price is not None:
        return f"{_price(price)} on-demand" if market == "on-demand" else _price(price)
    bound = f"; at most {_price(ceiling)}, the on-demand price" if ceiling is not None else ""
    if market == "spot":
        return f"n/a on spot (no spot price is recorded{bound})"
    if market == "auto":
        fallback = f" at {_price(ceiling)}" if ceiling is not None else ""
        return f"n/a until launch (use_spot: auto: spot, else on-demand{fallback})"
    return "n/a (no price recorded)"


def _market_detail(job: Mapping[str, Any]) -> str:
    """The detail view's market: what it runs in, saying when `use_spot: auto` chose it."""
    if job.get("use_spot") != "auto":
        return _market(job)
    return f"{job['market']} (use_spot: auto)" if job.get("market") else "auto: spot, else on-demand (at launch)"


@dataclass(frozen=True)
class Cost:
    """What a job cost (terminal) or has cost so far (running), as far as the recorded data tells."""

    seconds: float | None  # billed (terminal) or since launch (running); None: nothing launched
    amount: float | None  # USD at the recorded hourly price; None: no price recorded (spot)
    ceiling: float | None  # USD at the on-demand price: what a spot job cost at most
    running: bool


def job_cost(job: Mapping[str, Any], now: dt.datetime) -> Cost:
    """The job's cost: `billed_seconds`/`cost_estimate` once it ended; while it runs, launch → now (at least
    EC2's one-minute minimum) at the recorded hourly price. Never a price the API did not record."""
    terminal = job.get("status") in TERMINAL_STATUSES
    seconds = _number(job.get("billed_seconds"))
    if not terminal and seconds is None and isinstance(job.get("launched_at"), str):
        with contextlib.suppress(ValueError):
            launched = dt.datetime.fromisoformat(job["launched_at"])
            if launched.tzinfo is None:
                launched = launched.replace(tzinfo=dt.UTC)
            seconds = max(60.0, (now - launched).total_seconds())
    if seconds is None:
        return Cost(None, None, None, running=not terminal)
    price, ceiling = _number(job.get("hourly_price")), _number(job.get("on_demand_price"))
    amount = _number(job.get("cost_estimate")) if terminal else None
    if amount is None and price is not None:
        amount = round(price * seconds / 3600, 4)
    bound = round(ceiling * seconds / 3600, 4) if ceiling is not None else None
    return Cost(seconds, amount, bound, running=not terminal)


def _cost_cell(cost: Cost) -> str:
    """The jobs table's COST: `0.1060`, `~0.0123` so far while running, `<=0.1060` on spot (at most), `-` none."""
    if cost.seconds is None:
        return "-"
    if cost.amount is not None:
        return ("~" if cost.running else "") + _price(cost.amount)
    if cost.ceiling is not None:
        return "<=" + _price(cost.ceiling)
    return "n/a"


def _cost_fields(job: Mapping[str, Any], now: dt.datetime) -> list[tuple[str, Any]]:
    """The detail view's duration and cost lines (none before launch)."""
    cost = job_cost(job, now)
    if cost.seconds is None:
        return []
    if cost.running:
        pairs: list[tuple[str, Any]] = [("instance up", f"{_duration(cost.seconds)} (since launch)")]
        label, about = "cost so far", "about "
    else:
        pairs = [("billed", f"{_duration(cost.seconds)} (launch to end, at least a minute)")]
        label, about = "cost", ""
    if cost.amount is not None:
        rate = f" at {_price(job.get('hourly_price'))} $/h" if _number(job.get("hourly_price")) is not None else ""
        pairs.append((label, f"{about}${_price(cost.amount)} (estimate{rate} {_market(job)})"))
    elif cost.ceiling is not None:
        pairs.append((label, f"n/a on spot (no spot price is recorded); at most ${_price(cost.ceiling)}"))
    else:
        pairs.append((label, "n/a (no price recorded)"))
    return pairs


def _dash(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def _timestamp(value: Any) -> str:
    if not isinstance(value, str) or not value:
        return "-"
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        return value
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S") + ("Z" if moment.tzinfo is not None else "")


# -- configuration -------------------------------------------------------------------------------------------


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
        if not sep or not _ENV_NAME.fullmatch(name):
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
        if not _ENV_NAME.fullmatch(name):
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
    _secrets.add(secret)
    if not url:
        raise UsageError(
            f"no API URL: pass --api-url, set {API_URL_VAR}, or start the local control plane with `ec2jobs local up`"
        )
    if not secret:
        raise UsageError(f"no API token: pass --token, set {TOKEN_VAR}, or run `ec2jobs local up`")
    return Config(url, secret, url_source, token_source, local)


def _config(args: argparse.Namespace) -> Config:
    return resolve_config(getattr(args, "api_url", None), getattr(args, "token", None))


def _client(args: argparse.Namespace, config: Config | None = None) -> Client:
    config = config or _config(args)
    try:
        client = Client(config.api_url, config.token)
    except ValueError as error:
        raise UsageError(f"{error} (from {config.api_url_source})") from None
    args.config = config
    return client


def _describe_api_error(error: ApiError, config: Config | None) -> str:
    text = str(error)
    if config is not None:
        if error.status == 401:
            text += f"; the API rejected the token from {config.token_source}"
        elif error.status == 0 and config.api_url_source == str(LOCAL_ENV_FILE):
            text += f" (from {LOCAL_ENV_FILE}; is `ec2jobs local up` running?)"
    return text


# -- the local control plane ---------------------------------------------------------------------------------


def _local_runtime() -> ModuleType:
    try:
        return importlib.import_module("local.runtime")
    except ImportError as error:
        raise UsageError(
            f"the local control plane is not available ({error}); run ec2jobs from a checkout of the repository"
        ) from None


def _require_local_env() -> None:
    if not LOCAL_ENV_FILE.is_file():
        raise UsageError(f"no {LOCAL_ENV_FILE} here: start the local control plane with `ec2jobs local up` first")


def cmd_local_up(args: argparse.Namespace) -> int:
    runtime_module = _local_runtime()
    options: dict[str, Any] = {"workdir": LOCAL_DIR}
    if args.team:
        options["team_id"] = args.team
    with _stop_signals():  # SIGTERM/SIGHUP act like Ctrl-C from here on, also while the runtime starts
        try:
            runtime = cast(_Runtime, runtime_module.start(**options))
        except (KeyboardInterrupt, _Terminated):
            _err("interrupted while starting the local control plane")
            return EXIT_INTERRUPTED
        except Exception as error:  # noqa: BLE001 - whatever went wrong, report it on one line
            reason = _one_line(str(error)) or type(error).__name__
            raise CliError(f"could not start the local control plane: {reason}") from None
        return _serve_until_stopped(runtime)


@contextlib.contextmanager
def _stop_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into `_Terminated` (raised in the main thread) and restore the handlers after."""

    def terminate(signum: int, _frame: FrameType | None) -> NoReturn:
        raise _Terminated(signum)

    previous: dict[signal.Signals, Any] = {}
    for signum in (signal.SIGTERM, signal.SIGHUP):
        try:
            previous[signum] = signal.signal(signum, terminate)
        except ValueError:  # not the main thread: Ctrl-C still works
            break
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _serve_until_stopped(runtime: _Runtime) -> int:
    """Write local.env, say how to use it, wait for Ctrl-C/SIGTERM, stop the runtime (always)."""
    stopped_by_itself = False
    try:
        values = {
            API_URL_VAR: runtime.api_url,
            TOKEN_VAR: runtime.token,
            "AWS_ENDPOINT_URL": runtime.endpoint,
            "AWS_DEFAULT_REGION": runtime.region,
        }
        for name, value in dict(runtime.env).items():
            values.setdefault(name, str(value))
        write_env_file(LOCAL_ENV_FILE, values)
        _print_local_up(runtime, values)
        runtime.wait()
        stopped_by_itself = True
    except (KeyboardInterrupt, _Terminated):
        _err("stopping the local control plane ...")
    except OSError as error:
        raise CliError(f"cannot write {LOCAL_ENV_FILE}: {error.strerror or error}") from None
    finally:
        try:
            runtime.stop()
        except Exception as error:  # noqa: BLE001 - one line, whatever it was
            raise CliError(f"stopping the local control plane failed: {_one_line(str(error))}") from None
    if stopped_by_itself:
        _err("the local control plane stopped by itself")
        return EXIT_FAILED
    _err("stopped.")
    return EXIT_OK


def _print_local_up(runtime: _Runtime, values: Mapping[str, str]) -> None:
    _out(f"ec2jobs local control plane is up (team {runtime.team_id})")
    _out(f"  API:               {runtime.api_url}")
    _out(f"  AWS emulator:      {runtime.endpoint} (region {runtime.region})")
    _out(f"Wrote {LOCAL_ENV_FILE} (mode 600):")
    for name, value in values.items():
        _out(f"  {name}={value}")
    _out("Use it from another terminal, in this directory (ec2jobs reads the file by itself):")
    _out(f"  ec2jobs providers add --name local --region {runtime.region} --emulated")
    _out("  ec2jobs submit task.yaml --follow")
    _out(f"  set -a; source {LOCAL_ENV_FILE}; set +a    # for curl and the AWS CLI:")
    _out(f"  aws --endpoint-url {runtime.endpoint} ec2 describe-instances")
    _out("Press Ctrl-C to stop.")


def cmd_local_token(args: argparse.Namespace) -> int:
    runtime_module = _local_runtime()
    _require_local_env()
    try:
        token = str(runtime_module.issue_token(env_file=LOCAL_ENV_FILE, team_id=args.team))
    except Exception as error:  # noqa: BLE001
        raise CliError(f"could not issue a token for team {args.team!r}: {_one_line(str(error))}") from None
    _out(token)
    return EXIT_OK


# -- providers -----------------------------------------------------------------------------------------------


def cmd_providers_add(args: argparse.Namespace) -> int:
    if args.emulated and (args.access_key_id or args.secret_access_key):
        raise UsageError("--emulated creates its own keys: do not pass --access-key-id/--secret-access-key with it")
    config = _config(args)
    client = _client(args, config)
    if args.emulated:
        _require_local_env()
        if not config.is_local:
            raise UsageError(
                f"--emulated works only against the local API ({config.local_env.get(API_URL_VAR)}); "
                f"the configured API is {config.api_url} (from {config.api_url_source})"
            )
        runtime_module = _local_runtime()
        try:
            access_key_id, secret = runtime_module.emulated_provider_keys(env_file=LOCAL_ENV_FILE)
        except Exception as error:  # noqa: BLE001
            raise CliError(f"could not create emulated provider keys: {_one_line(str(error))}") from None
        access_key_id, secret = str(access_key_id), str(secret)
    else:
        access_key_id = args.access_key_id or ""
        secret = args.secret_access_key or os.environ.get("AWS_SECRET_ACCESS_KEY", "")
        if not access_key_id:
            raise UsageError("pass --access-key-id and --secret-access-key, or --emulated for the local API")
        if not secret:
            raise UsageError("pass --secret-access-key or set AWS_SECRET_ACCESS_KEY")
    _secrets.add(secret)
    provider = client.add_provider(args.name, args.region, access_key_id, secret)
    if args.json:
        _print_json(provider)
    else:
        _out(
            f"added provider {provider.get('provider_id')}: {provider.get('name')} in {provider.get('region')} "
            f"(account {_dash(provider.get('account_id'))}, key {_dash(provider.get('access_key_id'))})"
        )
    return EXIT_OK


def cmd_providers_list(args: argparse.Namespace) -> int:
    body = _client(args).list_providers()
    if args.json:
        _print_json(body)
        return EXIT_OK
    providers = body.get("providers") or []
    if not providers:
        _out("no providers yet: add one with `ec2jobs providers add`")
        return EXIT_OK
    _table(
        ["PROVIDER ID", "NAME", "REGION", "ACCOUNT", "ACCESS KEY", "CREATED"],
        [
            [
                p.get("provider_id"),
                p.get("name"),
                p.get("region"),
                _dash(p.get("account_id")),
                _dash(p.get("access_key_id")),
                _timestamp(p.get("created_at")),
            ]
            for p in providers
        ],
    )
    return EXIT_OK


def cmd_providers_show(args: argparse.Namespace) -> int:
    provider = _client(args).get_provider(args.provider_id)
    if args.json:
        _print_json(provider)
        return EXIT_OK
    _fields(
        [
            ("provider id", provider.get("provider_id")),
            ("name", provider.get("name")),
            ("region", provider.get("region")),
            ("account", provider.get("account_id")),
            ("user", provider.get("user_arn")),
            ("access key", provider.get("access_key_id")),
            ("created", _timestamp(provider.get("created_at"))),
        ]
    )
    return EXIT_OK


def cmd_providers_delete(args: argparse.Namespace) -> int:
    _client(args).delete_provider(args.provider_id)
    _out(f"deleted provider {args.provider_id}")
    return EXIT_OK


def _fields(pairs: Sequence[tuple[str, Any]]) -> None:
    width = max(len(label) for label, _ in pairs)
    for label, value in pairs:
        _out(f"{label + ':':<{width + 1}}  {_dash(value)}")


# -- jobs ----------------------------------------------------------------------------------------------------


def _read_task_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"{path}: cannot read it: {getattr(error, 'strerror', None) or error}") from None
    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise UsageError(f"{path}: not valid YAML{where}: {_one_line(str(problem))}") from None
    if not isinstance(spec, dict):
        raise UsageError(f"{path}: expected a task spec (a mapping with at least `run:`), found {type(spec).__name__}")
    try:
        json.dumps(spec)
    except (TypeError, ValueError):
        spec = json.loads(json.dumps(spec, default=str))  # YAML dates and the like travel as text
    return cast(dict[str, Any], spec)


def _pick_provider(client: Client, flag: str | None, from_file: Any) -> str:
    if flag:
        return flag
    if from_file:
        return str(from_file)
    providers = client.list_providers().get("providers") or []
    if not providers:
        raise UsageError("no provider to run on: add one with `ec2jobs providers add`")
    if len(providers) > 1:
        names = ", ".join(f"{p.get('provider_id')} ({p.get('name')})" for p in providers)
        raise UsageError(f"this team has several providers: pass --provider ID (one of: {names})")
    return str(providers[0]["provider_id"])


def cmd_submit(args: argparse.Namespace) -> int:
    if args.json and args.follow:
        raise UsageError("--json and --follow cannot be combined")
    spec = _read_task_file(Path(args.file))
    from_file = spec.pop("provider_id", None)
    client = _client(args)
    provider_id = _pick_provider(client, args.provider, from_file)
    job = client.submit_job(provider_id, spec, args.idempotency_key)
    if args.json:
        _print_json(job)
        return EXIT_OK
    job_id = str(job.get("job_id"))
    # While following, stdout carries the job's output only; ec2jobs's own lines go to stderr.
    say = _err if args.follow else _out
    say(f"submitted job {job_id} ({job.get('status')})")
    say(f"  instance type: {_dash(job.get('instance_type'))} in {_dash(job.get('region'))}, $/h {_hourly(job)}")
    for note in job.get("notes") or []:
        say(f"  note: {note}")
    if not args.follow:
        _out(f"follow it with: ec2jobs logs {job_id} --follow   (status: ec2jobs status {job_id})")
        return EXIT_OK
    return _follow_job(client, job_id, args.poll)


def _status_line(job: Mapping[str, Any]) -> str:
    status = job.get("status")
    details = []
    if job.get("instance_id"):
        details.append(f"instance {job['instance_id']}")
        if job.get("instance_type"):
            details.append(str(job["instance_type"]))
    if job.get("instance_state") and status != "RUNNING":
        details.append(f"EC2 state {job['instance_state']}")
    suffix = f" ({', '.join(details)})" if details else ""
    return f"[{time.strftime('%H:%M:%S')}] job {job.get('job_id')}: {status}{suffix}"


def _final_line(job: Mapping[str, Any]) -> str:
    status = job.get("status")
    line = f"job {job.get('job_id')} {status}"
    parts = []
    if job.get("failure_reason"):
        parts.append(str(job["failure_reason"]))
    if job.get("exit_code") is not None:
        parts.append(f"exit code {job['exit_code']}")
    if parts:
        line += ": " + ", ".join(parts)
    if job.get("failure_message"):
        line += f" - {_one_line(str(job['failure_message']))}"
    cost = job_cost(job, _now())
    if status in TERMINAL_STATUSES and cost.seconds is not None:
        if cost.amount is not None:
            spent = f"about ${_price(cost.amount)}"
        elif cost.ceiling is not None:
            spent = f"at most ${_price(cost.ceiling)} on spot"
        else:
            spent = "cost n/a"
        line += f" (billed {_duration(cost.seconds)}, {spent})"
    return line


class _Transient:
    """Retry a call through short outages while following (connection errors, 429, 5xx)."""

    def __init__(self, poll: float, attempts: int = 6) -> None:
        self.poll = poll
        self.attempts = attempts

    def __call__(self, call: Callable[[], JsonObject]) -> JsonObject:
        for attempt in range(self.attempts):
            try:
                return call()
            except ApiError as error:
                retryable = error.status == 0 or error.status == 429 or error.status >= 500
                if not retryable or attempt == self.attempts - 1:
                    raise
                _sleep(min(max(self.poll, 0.5) * 2**attempt, 10.0))
        raise AssertionError("unreachable")


def _follow_job(client: Client, job_id: str, poll: float) -> int:
    """Status changes (stderr) until the job runs, its output as it arrives (stdout), then the final status line."""
    retry = _Transient(poll)
    last_seen: tuple[Any, Any] | None = None
    cursor: str | None = None
    ended_at: float | None = None
    last_char = "\n"
    try:
        while True:
            job = retry(lambda: client.get_job(job_id))
            status = job.get("status")
            terminal = status in TERMINAL_STATUSES
            seen = (status, job.get("instance_id"))
            if not terminal and seen != last_seen:
                _err(_status_line(job))
                last_seen = seen
            complete = False
            if status == "RUNNING" or terminal or cursor is not None:
                while True:
                    page = retry(functools.partial(client.get_logs, job_id, after=cursor))
                    text = str(page.get("text") or "")
                    if text:
                        sys.stdout.write(text)
                        sys.stdout.flush()
                        last_char = text[-1]
                    if page.get("next_cursor") is not None:
                        cursor = str(page["next_cursor"])
                    complete = bool(page.get("complete"))
                    if complete or not text:
                        break
            if terminal:
                if complete:
                    break
                ended_at = ended_at if ended_at is not None else time.monotonic()
                if time.monotonic() - ended_at > LOG_GRACE_SECONDS:
                    _err(f"the rest of the log did not arrive (see `ec2jobs logs {job_id}` later)")
                    break
            _sleep(poll)
    except KeyboardInterrupt:
        if last_char != "\n":
            _err("")
        _err(f"stopped following job {job_id}; it keeps running (`ec2jobs cancel {job_id}` cancels it)")
        return EXIT_INTERRUPTED
    if last_char != "\n":
        _err("")  # the output did not end with a newline: start the status line on a line of its own
    _err(_final_line(job))
    return EXIT_OK if job.get("status") == "SUCCEEDED" else EXIT_FAILED


def _collect_jobs(client: Client, status: str | None, limit: int) -> JsonObject:
    jobs: list[Any] = []
    cursor: str | None = None
    while True:
        page = client.list_jobs(status=status, limit=min(limit - len(jobs), MAX_PAGE), cursor=cursor)
        jobs.extend(page.get("jobs") or [])
        cursor = page.get("next_cursor")
        if not cursor or len(jobs) >= limit:
            return {"jobs": jobs[:limit], "next_cursor": cursor}


def cmd_jobs(args: argparse.Namespace) -> int:
    body = _collect_jobs(_client(args), args.status, args.limit)
    if args.json:
        _print_json(body)
        return EXIT_OK
    jobs = body["jobs"]
    if not jobs:
        _out("no jobs" + (f" with status {args.status}" if args.status else ""))
        return EXIT_OK
    now = _now()
    costs = [_cost_cell(job_cost(j, now)) for j in jobs]
    _table(
        ["JOB ID", "NAME", "STATUS", "INSTANCE TYPE", "MARKET", "$/H", "COST", "CREATED"],
        [
            [
                j.get("job_id"),
                _dash(j.get("name")),
                j.get("status"),
                _dash(j.get("instance_type")),
                _market(j),
                _price(j.get("hourly_price")),
                cost,
                _timestamp(j.get("created_at")),
            ]
            for j, cost in zip(jobs, costs, strict=True)
        ],
    )
    if any(cost[:1] in {"~", "<"} for cost in costs):
        _err("(COST: ~ so far, the job still runs; <= at most, on spot: no spot price is recorded)")
    if body["next_cursor"]:
        _err(f"(the newest {len(jobs)} shown; pass --limit for more)")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    job = _client(args).get_job(args.job_id)
    if args.json:
        _print_json(job)
        return EXIT_OK
    pairs: list[tuple[str, Any]] = [
        ("job id", job.get("job_id")),
        ("name", job.get("name")),
        ("status", job.get("status")),
    ]
    if job.get("status") == "FAILED" or job.get("failure_reason"):
        pairs += [("failure reason", job.get("failure_reason")), ("failure message", job.get("failure_message"))]
    pairs += [
        ("exit code", job.get("exit_code")),
        ("provider", job.get("provider_id")),
        ("region", job.get("region")),
        ("instance type", job.get("instance_type")),
        ("market", _market_detail(job)),
        ("$/h", _hourly(job)),
        *_cost_fields(job, _now()),
        ("instance id", job.get("instance_id")),
        ("instance state", job.get("instance_state")),
        ("zone", job.get("availability_zone")),
        ("created", _timestamp(job.get("created_at"))),
        ("launched", _timestamp(job.get("launched_at"))),
        ("started", _timestamp(job.get("started_at"))),
        ("ended", _timestamp(job.get("ended_at"))),
    ]
    pairs += [("note", note) for note in job.get("notes") or []]
    _fields(pairs)
    return EXIT_OK


def cmd_logs(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.follow:
        try:
            for text in client.follow_logs(args.job_id, poll=args.poll, sleep=lambda seconds: _sleep(seconds)):
                sys.stdout.write(text)
                sys.stdout.flush()
        except KeyboardInterrupt:
            _err(f"\nstopped following the log of job {args.job_id}")
            return EXIT_INTERRUPTED
        return EXIT_OK
    cursor: str | None = None
    while True:
        page = client.get_logs(args.job_id, after=cursor)
        text = str(page.get("text") or "")
        sys.stdout.write(text)
        sys.stdout.flush()
        if page.get("next_cursor") is not None:
            cursor = str(page["next_cursor"])
        if page.get("complete") or not text:
            return EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    body = _client(args).cancel_job(args.job_id)
    _out(f"cancel requested for job {args.job_id}" + (f" ({body['status']})" if body.get("status") else ""))
    return EXIT_OK


# -- catalog -------------------------------------------------------------------------------------------------


def cmd_catalog(args: argparse.Namespace) -> int:
    body = _client(args).catalog(region=args.region, gpu=args.gpu)
    if args.json:
        _print_json(body)
        return EXIT_OK
    gpus = body.get("gpus") or []
    if gpus:
        _table(
            ["GPU", "GPU MEMORY GIB", "COUNTS", "INSTANCE TYPES"],
            [
                [
                    g.get("gpu"),
                    _dash(g.get("gpu_memory_gib")),
                    ", ".join(str(c) for c in g.get("counts") or []),
                    ", ".join(g.get("instance_types") or []),
                ]
                for g in gpus
            ],
        )
        _out()
    types = body.get("instance_types") or []
    if not types:
        _out("no instance types match")
        return EXIT_OK
    _table(
        ["INSTANCE TYPE", "VCPU", "MEMORY GIB", "GPU", "$/H"],
        [
            [
                t.get("instance_type"),
                t.get("vcpus"),
                t.get("memory_gib"),
                f"{t['gpu']} x{t.get('gpu_count')}" if t.get("gpu") else "-",
                _price(t.get("price_per_hour")),
            ]
            for t in types
        ],
    )
    prices = body.get("prices") or {}
    if prices:
        _out(
            f"\n$/h: on-demand {prices.get('currency', 'USD')} list prices per {prices.get('unit', 'hour')} "
            f"({prices.get('region', 'us-east-1')}); n/a = no recorded price"
        )
    return EXIT_OK


# -- the parser ----------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """Usage errors become one line (UsageError) instead of argparse's usage block and exit."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see `{self.prog} --help`)")


def _poll(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}") from None
    if not 0 < seconds <= 60:
        raise argparse.ArgumentTypeError("must be between 0 and 60 seconds")
    return seconds


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ec2jobs",
        description="Run ML jobs on ephemeral EC2 instances through the ec2jobs API (local or deployed).",
        epilog=f"Configuration: --api-url/--token, else ${API_URL_VAR}/${TOKEN_VAR}, else {LOCAL_ENV_FILE}. "
        "Exit codes: 0 ok, 1 failed job or API error, 2 usage or configuration error, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version="ec2jobs 0.1.0")
    connection = _Parser(add_help=False)
    for target, default in ((parser, None), (connection, argparse.SUPPRESS)):
        target.add_argument("--api-url", default=default, help=f"the API's base URL (else ${API_URL_VAR})")
        target.add_argument("--token", default=default, help=f"the API bearer token (else ${TOKEN_VAR})")
    as_json = _Parser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print the API's JSON")
    poll = _Parser(add_help=False)
    poll.add_argument("--poll", type=_poll, default=1.0, metavar="SECONDS", help="poll interval (default 1)")

    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    local = commands.add_parser("local", help="the embedded local control plane")
    local_commands = local.add_subparsers(dest="local_command", metavar="COMMAND", required=True)
    up = local_commands.add_parser("up", help="start it here (writes .ec2jobs/local.env), until Ctrl-C")
    up.add_argument("--team", help="the team the printed token belongs to")
    up.set_defaults(func=cmd_local_up)
    token = local_commands.add_parser("token", help="print a new API token for a team of the local control plane")
    token.add_argument("--team", required=True)
    token.set_defaults(func=cmd_local_token)

    providers = commands.add_parser("providers", help="AWS accounts jobs run in")
    provider_commands = providers.add_subparsers(dest="providers_command", metavar="COMMAND", required=True)
    add = provider_commands.add_parser("add", parents=[connection, as_json], help="add a provider (keys are checked)")
    add.add_argument("--name", required=True)
    add.add_argument("--region", required=True)
    add.add_argument("--access-key-id")
    add.add_argument("--secret-access-key", help="else $AWS_SECRET_ACCESS_KEY; never printed")
    add.add_argument(
        "--emulated", action="store_true", help="local API only: keys of an emulated IAM user with the seed policy"
    )
    add.set_defaults(func=cmd_providers_add)
    plist = provider_commands.add_parser("list", parents=[connection, as_json], help="the team's providers")
    plist.set_defaults(func=cmd_providers_list)
    show = provider_commands.add_parser("show", parents=[connection, as_json], help="one provider")
    show.add_argument("provider_id", metavar="ID")
    show.set_defaults(func=cmd_providers_show)
    delete = provider_commands.add_parser("delete", parents=[connection], help="delete a provider")
    delete.add_argument("provider_id", metavar="ID")
    delete.set_defaults(func=cmd_providers_delete)

    submit = commands.add_parser("submit", parents=[connection, as_json, poll], help="submit a task YAML")
    submit.add_argument("file", metavar="TASK_YAML")
    submit.add_argument("--provider", metavar="ID", help="else the YAML's provider_id, else the team's only provider")
    submit.add_argument("--follow", "-f", action="store_true", help="show status changes and logs until it ends")
    submit.add_argument("--idempotency-key", metavar="KEY", help="a retry with the same key never makes a second job")
    submit.set_defaults(func=cmd_submit)

    jobs = commands.add_parser("jobs", parents=[connection, as_json], help="list jobs, newest first")
    jobs.add_argument("--status", choices=JOB_STATUSES, type=str.upper)
    jobs.add_argument("--limit", type=_positive, default=20, help="at most this many (default 20)")
    jobs.set_defaults(func=cmd_jobs)

    status = commands.add_parser("status", parents=[connection, as_json], help="one job")
    status.add_argument("job_id", metavar="JOB")
    status.set_defaults(func=cmd_status)

    logs = commands.add_parser("logs", parents=[connection, poll], help="a job's output")
    logs.add_argument("job_id", metavar="JOB")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")
    logs.set_defaults(func=cmd_logs)

    cancel = commands.add_parser("cancel", parents=[connection], help="cancel a job")
    cancel.add_argument("job_id", metavar="JOB")
    cancel.set_defaults(func=cmd_cancel)

    catalog = commands.add_parser("catalog", parents=[connection, as_json], help="GPU and instance types, prices")
    catalog.add_argument("--gpu", help="only this GPU type (aliases accepted)")
    catalog.add_argument("--region", help="only types offered in this region")
    catalog.set_defaults(func=cmd_catalog)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (0 ok, 1 failed job or API error, 2 usage/config, 130 interrupted)."""
    global _secrets  # one set of secrets per invocation
    _secrets = _Secrets()
    args: argparse.Namespace | None = None
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args))
    except SystemExit as exit_:  # --help / --version
        return exit_.code if isinstance(exit_.code, int) else EXIT_OK
    except CliError as error:
        _err(_secrets.redact(f"ec2jobs: error: {_one_line(str(error))}"))
        return error.exit_code
    except ApiError as error:
        config = getattr(args, "config", None)
        _err(_secrets.redact(f"ec2jobs: error: {_one_line(_describe_api_error(error, config))}"))
        return EXIT_FAILED
    except KeyboardInterrupt:
        _err("ec2jobs: interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_FAILED
    except Exception as error:  # never a traceback; EC2JOBS_DEBUG=1 shows it
        if os.environ.get("EC2JOBS_DEBUG"):
            raise
        message = _one_line(str(error)) or "no details"
        _err(
            _secrets.redact(f"ec2jobs: internal error: {type(error).__name__}: {message} (EC2JOBS_DEBUG=1 shows more)")
        )
        return EXIT_FAILED


def _silence_stdout() -> None:
    """After a closed pipe (`ec2jobs logs JOB | head`), point stdout at /dev/null so the exit flush cannot fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass
