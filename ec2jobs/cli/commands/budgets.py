"""`ec2jobs usage` and `ec2jobs limits show|set|clear`: a team's month (spend, reserved, budget left, GPU-hours, jobs
by final state) and its limits (docs/budgets.md). Setting limits, and every team's usage, need an admin token."""

from __future__ import annotations

import argparse
from typing import Any

from ec2jobs.cli import output
from ec2jobs.cli.args import Parents
from ec2jobs.cli.config import client_for
from ec2jobs.cli.errors import EXIT_OK, UsageError


def _usd(value: Any) -> str:
    return "—" if value is None else f"${float(value):,.2f}"


def _print_usage(usage: dict[str, Any]) -> None:
    output.out(f"team {usage.get('team_id')}, {usage.get('month')} (UTC)")
    output.table(
        ["SPENT", "RESERVED", "BUDGET", "REMAINING", "ACTIVE JOBS", "QUEUED JOBS"],
        [
            [
                _usd(usage.get("spent_usd")),
                _usd(usage.get("reserved_usd")),
                _usd(usage.get("budget_usd")),
                _usd(usage.get("remaining_usd")),
                usage.get("active_jobs", 0),
                usage.get("queued_jobs", 0),
            ]
        ],
    )
    states = usage.get("jobs_by_state") or {}
    if states:
        output.out("jobs ended: " + ", ".join(f"{count} {state}" for state, count in sorted(states.items())))
    hours = usage.get("gpu_hours_by_type") or {}
    if hours:
        output.out("GPU-hours: " + ", ".join(f"{gpu} {value:,.2f}" for gpu, value in sorted(hours.items())))
    providers = usage.get("providers") or []
    if providers:
        output.table(
            ["PROVIDER", "SPENT", "JOBS"],
            [[p.get("provider_id"), _usd(p.get("spent_usd")), p.get("jobs")] for p in providers],
        )


def cmd_usage(args: argparse.Namespace) -> int:
    body = client_for(args).get_usage(args.month, args.team)
    if args.json:
        output.print_json(body)
        return EXIT_OK
    for usage in body.get("teams", [body]) if "teams" in body else [body]:
        _print_usage(usage)
    if "teams" in body and not body["teams"]:
        output.out("no team has usage that month")
    return EXIT_OK


def cmd_limits_show(args: argparse.Namespace) -> int:
    client = client_for(args)
    limits = client.admin_get_limits(args.team) if args.team else client.get_limits()
    if args.json:
        output.print_json(limits)
        return EXIT_OK
    shown = {name: value for name, value in limits.items() if value not in (None, {}, [])}
    if set(shown) <= {"max_queue_minutes"}:
        output.out(f"no limits (jobs wait at most {limits.get('max_queue_minutes')} minutes when queued)")
        return EXIT_OK
    output.table(["LIMIT", "VALUE"], [[name, value] for name, value in shown.items()])
    return EXIT_OK


def _gpu_limits(values: list[str]) -> dict[str, int]:
    limits: dict[str, int] = {}
    for value in values:
        name, _, count = value.partition("=")
        if not name or not count.isdigit():
            raise UsageError(f"--max-gpus-of {value!r}: write TYPE=COUNT, e.g. A100=8")
        limits[name] = int(count)
    return limits


def _limits_file(path: str) -> dict[str, Any]:
    """A whole limits document (JSON or YAML), e.g. with per-provider limits under `providers`."""
    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            loaded = yaml.safe_load(handle)
    except (OSError, yaml.YAMLError) as error:
        raise UsageError(f"--file {path}: {output.one_line(str(error))}") from None
    if not isinstance(loaded, dict):
        raise UsageError(f"--file {path}: expected a mapping of limits (docs/budgets.md)")
    return loaded


def cmd_limits_set(args: argparse.Namespace) -> int:
    if args.file:
        stored = client_for(args).admin_set_limits(args.team, _limits_file(args.file))
        if args.json:
            output.print_json(stored)
        else:
            output.out(f"limits of team {args.team} set from {args.file}")
        return EXIT_OK
    limits: dict[str, Any] = {
        "monthly_budget_usd": args.monthly_budget,
        "max_concurrent_instances": args.max_instances,
        "max_concurrent_gpus": args.max_gpus,
        "max_gpus_by_type": _gpu_limits(args.max_gpus_of or []),
        "max_hourly_price_usd": args.max_hourly_price,
    }
    if args.max_queue_minutes is not None:
        limits["max_queue_minutes"] = args.max_queue_minutes
    stored = client_for(args).admin_set_limits(args.team, limits)
    if args.json:
        output.print_json(stored)
    else:
        output.out(f"limits of team {args.team} set; queued jobs that fit now are admitted")
    return EXIT_OK


def cmd_limits_clear(args: argparse.Namespace) -> int:
    client_for(args).admin_clear_limits(args.team)
    output.out(f"team {args.team} has no limits now")
    return EXIT_OK


def register(commands: Any, parents: Parents) -> None:
    usage = commands.add_parser(
        "usage", parents=[parents.connection, parents.as_json], help="a month's spend, reservations and budget left"
    )
    usage.add_argument("--month", metavar="YYYY-MM", help="the UTC month (default: this month)")
    usage.add_argument("--team", metavar="TEAM", help="admin token: one team's (default: every team's)")
    usage.set_defaults(func=cmd_usage)

    limits = commands.add_parser("limits", help="the team's limits: budget, concurrency, GPUs, price (docs/budgets.md)")
    limit_commands = limits.add_subparsers(dest="limits_command", metavar="COMMAND", required=True)
    show = limit_commands.add_parser("show", parents=[parents.connection, parents.as_json], help="show limits")
    show.add_argument("--team", metavar="TEAM", help="admin token: that team's limits")
    show.set_defaults(func=cmd_limits_show)
    setter = limit_commands.add_parser(
        "set", parents=[parents.connection, parents.as_json], help="set a team's limits (admin token; replaces them)"
    )
    setter.add_argument("--team", metavar="TEAM", required=True)
    setter.add_argument("--monthly-budget", type=float, metavar="USD", help="per UTC month, worst cases reserved")
    setter.add_argument("--max-instances", type=int, metavar="N", help="jobs admitted at once")
    setter.add_argument("--max-gpus", type=int, metavar="N", help="GPUs of admitted jobs at once, any type")
    setter.add_argument("--max-gpus-of", action="append", metavar="TYPE=N", help="GPUs of one type at once (repeat)")
    setter.add_argument("--max-hourly-price", type=float, metavar="USD", help="the most one job's instance may cost")
    setter.add_argument("--max-queue-minutes", type=int, metavar="MINUTES", help="how long a job may wait queued")
    setter.add_argument(
        "--file", metavar="PATH", help="the whole set from a JSON or YAML file (per-provider limits under `providers`)"
    )
    setter.set_defaults(func=cmd_limits_set)
    clear = limit_commands.add_parser("clear", parents=[parents.connection], help="remove a team's limits (admin)")
    clear.add_argument("--team", metavar="TEAM", required=True)
    clear.set_defaults(func=cmd_limits_clear)
