"""`ec2jobs tokens list|revoke`: the team's own API tokens, never shown (issuing one is an admin action:
scripts/team_admin.py on a deployed stack, `ec2jobs local token` locally)."""

from __future__ import annotations

import argparse
from typing import Any

from ec2jobs.cli import output
from ec2jobs.cli.args import Parents
from ec2jobs.cli.config import client_for
from ec2jobs.cli.errors import EXIT_OK
from ec2jobs.cli.output import timestamp


def cmd_tokens_list(args: argparse.Namespace) -> int:
    body = client_for(args).list_tokens()
    if args.json:
        output.print_json(body)
        return EXIT_OK
    tokens = body.get("tokens") or []
    if not tokens:
        output.out("no tokens")
        return EXIT_OK
    output.table(
        ["TOKEN ID", "PREFIX", "LABEL", "CREATED", "EXPIRES", "STATE"],
        [
            [
                t.get("token_id"),
                f"{t.get('prefix')}…",
                t.get("label"),
                timestamp(t.get("created_at")),
                timestamp(t.get("expires_at")),
                ("expired" if t.get("expired") else "valid") + (" (this one)" if t.get("current") else ""),
            ]
            for t in tokens
        ],
    )
    return EXIT_OK


def cmd_tokens_revoke(args: argparse.Namespace) -> int:
    client_for(args).revoke_token(args.token_id)
    output.out(f"revoked token {args.token_id} (refused within 5 minutes on a deployed API: the authorizer's cache)")
    return EXIT_OK


def register(commands: Any, parents: Parents) -> None:
    tokens = commands.add_parser("tokens", help="the team's API tokens (ids and prefixes, never the tokens)")
    token_commands = tokens.add_subparsers(dest="tokens_command", metavar="COMMAND", required=True)
    listing = token_commands.add_parser(
        "list", parents=[parents.connection, parents.as_json], help="the team's tokens: id, prefix, label, expiry"
    )
    listing.set_defaults(func=cmd_tokens_list)
    revoke = token_commands.add_parser("revoke", parents=[parents.connection], help="revoke one of the team's tokens")
    revoke.add_argument("token_id", metavar="TOKEN_ID", help="tok-… (from `ec2jobs tokens list`)")
    revoke.set_defaults(func=cmd_tokens_revoke)
