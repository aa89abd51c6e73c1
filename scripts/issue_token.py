"""Issue an API token for a team of a deployed ec2jobs stack (this is how the first team gets one). Creates the team
if it does not exist and prints a new bearer token once; only its SHA-256 is stored (the stack's state table).

    .venv/bin/python scripts/issue_token.py --team ml-team                 # stack "ec2jobs", your default region
    .venv/bin/python scripts/issue_token.py --team ml-team --stack ec2jobs --region eu-west-1 --label laptop

This talks to your AWS account with your own credentials (environment or profile), like the AWS CLI: it needs
cloudformation:DescribeStacks on the stack (for its outputs), dynamodb:GetItem/PutItem/UpdateItem on the state table
and, for a new team's usage key, apigateway:POST on /apikeys and /usageplans/*/keys. The token goes
to stdout alone (TOKEN=$(...) works); the API URL and hints go to stderr.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from controlplane.adapters.dynamodb import DynamoTeamStore
from controlplane.adapters.usage_plans import ApiGatewayUsageKeys
from controlplane.service.teams import TeamService

DEFAULT_STACK = "ec2jobs"


def stack_outputs(cloudformation: Any, stack_name: str) -> dict[str, str]:
    """The stack's outputs by key (ApiUrl, StateTableName, ...)."""
    stacks = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    return {str(o["OutputKey"]): str(o["OutputValue"]) for o in stacks[0].get("Outputs", [])}


def issue(state_table: Any, team_id: str, label: str = "default", usage_keys: Any = None) -> str:
    """A new token for `team_id` (the team is created if needed, with its usage key when the stack has a usage plan),
    stored hashed in `state_table`. It expires after the default 90 days (scripts/team_admin.py issues, lists and
    revokes tokens with other lifetimes)."""
    return TeamService(DynamoTeamStore(state_table), usage_keys).issue_token(team_id, label)


def main(argv: list[str] | None = None, session: Any = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--team", required=True, help="team id: 1-32 lowercase letters, digits or '-'")
    parser.add_argument("--stack", default=DEFAULT_STACK, help=f"the deployed stack's name (default {DEFAULT_STACK})")
    parser.add_argument("--region", help="the stack's region (default: your AWS configuration's)")
    parser.add_argument("--label", default="default", help="a note stored with the token (e.g. who holds it)")
    args = parser.parse_args(argv)
    session = session or boto3.session.Session(region_name=args.region)
    try:
        outputs = stack_outputs(session.client("cloudformation"), args.stack)
        table_name = outputs.get("StateTableName")
        if not table_name:
            print(f"stack {args.stack} has no StateTableName output: is it an ec2jobs stack?", file=sys.stderr)
            return 2
        plan = outputs.get("UsagePlanId")
        usage_keys = ApiGatewayUsageKeys(session.client("apigateway"), plan) if plan else None
        token = issue(session.resource("dynamodb").Table(table_name), args.team, args.label, usage_keys)
    except ValueError as error:  # an invalid team id
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (ClientError, BotoCoreError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(token)
    if outputs.get("ApiUrl"):
        print(
            f"team {args.team}: export EC2JOBS_API_URL={outputs['ApiUrl']} EC2JOBS_TOKEN=<the token>", file=sys.stderr
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
