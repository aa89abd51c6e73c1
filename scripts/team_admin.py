"""Administer the teams and tokens of a deployed ec2jobs stack, with your own AWS credentials (an admin action: the
API lets a team list and revoke its own tokens, never issue them or act for another team).

    .venv/bin/python scripts/team_admin.py issue --team ml-team [--label laptop] [--expires-days 30]
    .venv/bin/python scripts/team_admin.py list --team ml-team
    .venv/bin/python scripts/team_admin.py revoke --team ml-team --token-id tok-0123456789ab
    .venv/bin/python scripts/team_admin.py delete-team --team ml-team
    .venv/bin/python scripts/team_admin.py issue-admin [--label ops] [--expires-days 30]

An admin token (`issue-admin`) sets teams' limits and reads every team's usage (docs/budgets.md) and acts for no
team; admin tokens are listed and revoked like a team's, with `--team _admin`.

Every command takes --stack (default "ec2jobs") and --region. `issue` prints the new token alone on stdout (once;
only its SHA-256 is stored) and gives a new team its usage key (an API key in the stack's usage plan, so API Gateway
throttles each team on its own). Revocation and team deletion take effect within the authorizer's cache TTL (300 s).
Permissions: cloudformation:DescribeStacks on the stack; dynamodb:GetItem/PutItem/UpdateItem/DeleteItem/Query on the
state table; apigateway:POST on /apikeys and /usageplans/*/keys and apigateway:DELETE on /apikeys/* (usage keys).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from controlplane.adapters.dynamodb import DynamoTeamStore
from controlplane.adapters.usage_plans import ApiGatewayUsageKeys
from controlplane.core.errors import DomainError
from controlplane.core.tokens import DEFAULT_TOKEN_DAYS, MAX_TOKEN_DAYS
from controlplane.service.teams import TeamService

DEFAULT_STACK = "ec2jobs"


def stack_outputs(cloudformation: Any, stack_name: str) -> dict[str, str]:
    """The stack's outputs by key (ApiUrl, StateTableName, UsagePlanId, ...)."""
    stacks = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    return {str(o["OutputKey"]): str(o["OutputValue"]) for o in stacks[0].get("Outputs", [])}


def team_service(session: Any, outputs: dict[str, str]) -> TeamService:
    """The stack's TeamService; with usage keys when the stack has a usage plan (stacks from before it have none)."""
    table = session.resource("dynamodb").Table(outputs["StateTableName"])
    plan = outputs.get("UsagePlanId")
    usage_keys = ApiGatewayUsageKeys(session.client("apigateway"), plan) if plan else None
    return TeamService(DynamoTeamStore(table), usage_keys)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--team", required=True, help="team id: 1-32 lowercase letters, digits or '-'")
    common.add_argument("--stack", default=DEFAULT_STACK, help=f"the deployed stack's name (default {DEFAULT_STACK})")
    common.add_argument("--region", help="the stack's region (default: your AWS configuration's)")
    commands = parser.add_subparsers(dest="command", required=True)
    issue = commands.add_parser("issue", parents=[common], help="a new token (creates the team if needed)")
    issue.add_argument("--label", default="default", help="a note stored with the token (e.g. who holds it)")
    issue.add_argument(
        "--expires-days",
        type=int,
        default=DEFAULT_TOKEN_DAYS,
        help=f"lifetime in days, 1-{MAX_TOKEN_DAYS} (default {DEFAULT_TOKEN_DAYS})",
    )
    commands.add_parser("list", parents=[common], help="the team's tokens (never the tokens themselves)")
    revoke = commands.add_parser("revoke", parents=[common], help="revoke one token")
    revoke.add_argument("--token-id", required=True, help="tok-… (from `list`)")
    commands.add_parser("delete-team", parents=[common], help="refuse every token of the team from now on")
    admin = commands.add_parser("issue-admin", help="a new admin token (limits, every team's usage; no team's jobs)")
    admin.add_argument("--stack", default=DEFAULT_STACK, help=f"the deployed stack's name (default {DEFAULT_STACK})")
    admin.add_argument("--region", help="the stack's region (default: your AWS configuration's)")
    admin.add_argument("--label", default="admin", help="a note stored with the token (e.g. who holds it)")
    admin.add_argument("--expires-days", type=int, default=DEFAULT_TOKEN_DAYS, help="lifetime in days")
    return parser


def run(args: argparse.Namespace, teams: TeamService, outputs: dict[str, str]) -> int:
    if args.command in {"issue", "issue-admin"}:
        admin = args.command == "issue-admin"
        issued = (
            teams.issue_admin(args.label, args.expires_days)
            if admin
            else teams.issue(args.team, args.label, args.expires_days)
        )
        print(issued.token)
        print(
            f"{'admin' if admin else 'team ' + args.team}: token {issued.record.token_id} ({issued.record.prefix}…), "
            f"expires {issued.record.expires_at.isoformat()}",
            file=sys.stderr,
        )
        if outputs.get("ApiUrl"):
            print(f"export EC2JOBS_API_URL={outputs['ApiUrl']} EC2JOBS_TOKEN=<the token>", file=sys.stderr)
    elif args.command == "list":
        now = dt.datetime.now(dt.UTC)
        for record in teams.list_tokens(args.team):
            state = "expired" if record.expired(now) else "valid"
            print(
                f"{record.token_id}  {record.prefix}…  {record.label}  created {record.created_at.isoformat()}  "
                f"expires {record.expires_at.isoformat()}  {state}"
            )
    elif args.command == "revoke":
        teams.revoke(args.team, args.token_id)
        print(f"revoked {args.token_id} (refused within the authorizer's 300 s cache)", file=sys.stderr)
    else:
        count = teams.delete_team(args.team)
        print(f"team {args.team} deleted; {count} token(s) revoked (refused within 300 s)", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None, session: Any = None) -> int:
    args = _parser().parse_args(argv)
    session = session or boto3.session.Session(region_name=args.region)
    try:
        outputs = stack_outputs(session.client("cloudformation"), args.stack)
        if not outputs.get("StateTableName"):
            print(f"stack {args.stack} has no StateTableName output: is it an ec2jobs stack?", file=sys.stderr)
            return 2
        return run(args, team_service(session, outputs), outputs)
    except (ValueError, DomainError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (ClientError, BotoCoreError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
