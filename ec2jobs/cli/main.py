"""The parser (every command group from ec2jobs.cli.commands) and `main(argv) -> int`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ec2jobs.cli import output
from ec2jobs.cli.args import Parser, add_connection_options, parents
from ec2jobs.cli.commands import GROUPS
from ec2jobs.cli.config import API_URL_VAR, LOCAL_ENV_FILE, TOKEN_VAR, describe_api_error
from ec2jobs.cli.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, CliError
from ec2jobs.client import ApiError


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="ec2jobs",
        description="Run ML jobs on ephemeral EC2 instances through the ec2jobs API (local or deployed).",
        epilog=f"Configuration: --api-url/--token, else ${API_URL_VAR}/${TOKEN_VAR}, else {LOCAL_ENV_FILE}. "
        "Exit codes: 0 ok, 1 failed job or API error, 2 usage or configuration error, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version="ec2jobs 0.1.0")
    add_connection_options(parser, None)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    shared = parents()
    for group in GROUPS:
        group.register(commands, shared)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (0 ok, 1 failed job or API error, 2 usage/config, 130 interrupted)."""
    secrets = output.reset_secrets()  # one set of secrets per invocation
    args: argparse.Namespace | None = None
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args))
    except SystemExit as exit_:  # --help / --version
        return exit_.code if isinstance(exit_.code, int) else EXIT_OK
    except CliError as error:
        output.err(secrets.redact(f"ec2jobs: error: {output.one_line(str(error))}"))
        return error.exit_code
    except ApiError as error:
        config = getattr(args, "config", None)
        output.err(secrets.redact(f"ec2jobs: error: {output.one_line(describe_api_error(error, config))}"))
        return EXIT_FAILED
    except KeyboardInterrupt:
        output.err("ec2jobs: interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_FAILED
    except Exception as error:  # never a traceback; EC2JOBS_DEBUG=1 shows it
        if os.environ.get("EC2JOBS_DEBUG"):
            raise
        message = output.one_line(str(error)) or "no details"
        output.err(
            secrets.redact(f"ec2jobs: internal error: {type(error).__name__}: {message} (EC2JOBS_DEBUG=1 shows more)")
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
