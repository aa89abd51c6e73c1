"""The argument parser's pieces shared by every command group: one-line usage errors, option types, parents."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import NoReturn

from ec2jobs.cli.config import API_URL_VAR, TOKEN_VAR
from ec2jobs.cli.errors import UsageError


class Parser(argparse.ArgumentParser):
    """Usage errors become one line (UsageError) instead of argparse's usage block and exit."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see `{self.prog} --help`)")


def poll_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}") from None
    if not 0 < seconds <= 60:
        raise argparse.ArgumentTypeError("must be between 0 and 60 seconds")
    return seconds


def positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


@dataclass(frozen=True)
class Parents:
    """Option groups a command adds with `parents=[...]`."""

    connection: argparse.ArgumentParser  # --api-url, --token
    as_json: argparse.ArgumentParser  # --json
    poll: argparse.ArgumentParser  # --poll


def add_connection_options(target: argparse.ArgumentParser, default: object) -> None:
    target.add_argument("--api-url", default=default, help=f"the API's base URL (else ${API_URL_VAR})")
    target.add_argument("--token", default=default, help=f"the API bearer token (else ${TOKEN_VAR})")


def parents() -> Parents:
    connection = Parser(add_help=False)
    add_connection_options(connection, argparse.SUPPRESS)
    as_json = Parser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print the API's JSON")
    poll = Parser(add_help=False)
    poll.add_argument("--poll", type=poll_seconds, default=1.0, metavar="SECONDS", help="poll interval (default 1)")
    return Parents(connection, as_json, poll)
