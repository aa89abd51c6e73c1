"""`ec2jobs local up|token`: the embedded local control plane (local.runtime, only in a checkout)."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
from collections.abc import Iterator, Mapping
from types import FrameType, ModuleType
from typing import Any, NoReturn, Protocol, cast

from ec2jobs.cli import output
from ec2jobs.cli.args import Parents
from ec2jobs.cli.config import API_URL_VAR, LOCAL_DIR, LOCAL_ENV_FILE, TOKEN_VAR, write_env_file
from ec2jobs.cli.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, CliError, UsageError


class Terminated(BaseException):
    """SIGTERM/SIGHUP while `local up` waits (a BaseException, like KeyboardInterrupt, so nothing swallows it)."""


class Runtime(Protocol):
    """What `local.runtime.start()` returns."""

    api_url: str
    token: str
    endpoint: str
    region: str
    team_id: str
    env: Mapping[str, str]

    def stop(self) -> None: ...

    def wait(self) -> None: ...


def local_runtime() -> ModuleType:
    try:
        return importlib.import_module("local.runtime")
    except ImportError as error:
        raise UsageError(
            f"the local control plane is not available ({error}); run ec2jobs from a checkout of the repository"
        ) from None


def require_local_env() -> None:
    if not LOCAL_ENV_FILE.is_file():
        raise UsageError(f"no {LOCAL_ENV_FILE} here: start the local control plane with `ec2jobs local up` first")


def hidden(name: str) -> bool:
    """Variables `local up` writes to the file but never prints: the bearer token and anything secret-like."""
    return name == TOKEN_VAR or "TOKEN" in name or "SECRET" in name


def cmd_local_up(args: argparse.Namespace) -> int:
    runtime_module = local_runtime()
    options: dict[str, Any] = {"workdir": LOCAL_DIR}
    if args.team:
        options["team_id"] = args.team
    with _stop_signals():  # SIGTERM/SIGHUP act like Ctrl-C from here on, also while the runtime starts
        try:
            runtime = cast(Runtime, runtime_module.start(**options))
        except (KeyboardInterrupt, Terminated):
            output.err("interrupted while starting the local control plane")
            return EXIT_INTERRUPTED
        except Exception as error:  # noqa: BLE001 - whatever went wrong, report it on one line
            reason = output.one_line(str(error)) or type(error).__name__
            raise CliError(f"could not start the local control plane: {reason}") from None
        return _serve_until_stopped(runtime)


@contextlib.contextmanager
def _stop_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into `Terminated` (raised in the main thread) and restore the handlers after."""

    def terminate(signum: int, _frame: FrameType | None) -> NoReturn:
        raise Terminated(signum)

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


def _serve_until_stopped(runtime: Runtime) -> int:
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
        output.secrets.add(runtime.token)
        _print_local_up(runtime, values)
        runtime.wait()
        stopped_by_itself = True
    except (KeyboardInterrupt, Terminated):
        output.err("stopping the local control plane ...")
    except OSError as error:
        raise CliError(f"cannot write {LOCAL_ENV_FILE}: {error.strerror or error}") from None
    finally:
        try:
            runtime.stop()
        except Exception as error:  # noqa: BLE001 - one line, whatever it was
            raise CliError(f"stopping the local control plane failed: {output.one_line(str(error))}") from None
    if stopped_by_itself:
        output.err("the local control plane stopped by itself")
        return EXIT_FAILED
    output.err("stopped.")
    return EXIT_OK


def _print_local_up(runtime: Runtime, values: Mapping[str, str]) -> None:
    """Where everything is; the bearer token is in the file (mode 600), never on the terminal."""
    out = output.out
    out(f"ec2jobs local control plane is up (team {runtime.team_id})")
    out(f"  API:               {runtime.api_url}")
    out(f"  AWS emulator:      {runtime.endpoint} (region {runtime.region})")
    out(f"Wrote {LOCAL_ENV_FILE} (mode 600):")
    for name, value in values.items():
        if name == TOKEN_VAR:
            out(f"  {name}=<team {runtime.team_id}'s bearer token: in {LOCAL_ENV_FILE}, not shown>")
        elif hidden(name):
            out(f"  {name}=<in {LOCAL_ENV_FILE}, not shown>")
        else:
            out(f"  {name}={value}")
    out("Use it from another terminal, in this directory (ec2jobs reads the file by itself):")
    out(f"  ec2jobs providers add --name local --region {runtime.region} --emulated")
    out("  ec2jobs submit task.yaml --follow")
    out(f"  set -a; source {LOCAL_ENV_FILE}; set +a    # for curl and the AWS CLI:")
    out(f"  aws --endpoint-url {runtime.endpoint} ec2 describe-instances")
    out("Press Ctrl-C to stop.")


def cmd_local_token(args: argparse.Namespace) -> int:
    """A new token for a team (or with --admin, an admin token), alone on stdout (TOKEN=$(ec2jobs local token --team
    t) works): its whole purpose."""
    if bool(args.team) == bool(args.admin):
        raise CliError("give either --team TEAM or --admin")
    runtime_module = local_runtime()
    require_local_env()
    whose = "an admin" if args.admin else f"team {args.team!r}"
    try:
        token = str(runtime_module.issue_token(env_file=LOCAL_ENV_FILE, team_id=None if args.admin else args.team))
    except Exception as error:  # noqa: BLE001
        raise CliError(f"could not issue a token for {whose}: {output.one_line(str(error))}") from None
    output.out(token)
    return EXIT_OK


def register(commands: Any, parents: Parents) -> None:
    local = commands.add_parser("local", help="the embedded local control plane")
    local_commands = local.add_subparsers(dest="local_command", metavar="COMMAND", required=True)
    up = local_commands.add_parser("up", help="start it here (writes .ec2jobs/local.env), until Ctrl-C")
    up.add_argument("--team", help="the team whose token goes into .ec2jobs/local.env")
    up.set_defaults(func=cmd_local_up)
    token = local_commands.add_parser("token", help="print a new API token for a team of the local control plane")
    token.add_argument("--team", help="the team the token acts for")
    token.add_argument("--admin", action="store_true", help="an admin token: team limits, every team's usage")
    token.set_defaults(func=cmd_local_token)
