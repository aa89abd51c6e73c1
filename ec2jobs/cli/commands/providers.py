"""`ec2jobs providers add|list|show|delete`: the AWS accounts a team's jobs run in."""

from __future__ import annotations

import argparse
import os
from typing import Any

from ec2jobs.cli import output
from ec2jobs.cli.args import Parents
from ec2jobs.cli.commands.local import local_runtime, require_local_env
from ec2jobs.cli.config import API_URL_VAR, LOCAL_ENV_FILE, client_for, config_for
from ec2jobs.cli.errors import EXIT_OK, CliError, UsageError
from ec2jobs.cli.output import dash, timestamp


def cmd_providers_add(args: argparse.Namespace) -> int:
    if args.emulated and (args.access_key_id or args.secret_access_key):
        raise UsageError("--emulated creates its own keys: do not pass --access-key-id/--secret-access-key with it")
    config = config_for(args)
    client = client_for(args, config)
    if args.emulated:
        require_local_env()
        if not config.is_local:
            raise UsageError(
                f"--emulated works only against the local API ({config.local_env.get(API_URL_VAR)}); "
                f"the configured API is {config.api_url} (from {config.api_url_source})"
            )
        runtime_module = local_runtime()
        try:
            access_key_id, secret = runtime_module.emulated_provider_keys(env_file=LOCAL_ENV_FILE)
        except Exception as error:  # noqa: BLE001
            raise CliError(f"could not create emulated provider keys: {output.one_line(str(error))}") from None
        access_key_id, secret = str(access_key_id), str(secret)
    else:
        access_key_id = args.access_key_id or ""
        secret = args.secret_access_key or os.environ.get("AWS_SECRET_ACCESS_KEY", "")
        if not access_key_id:
            raise UsageError("pass --access-key-id and --secret-access-key, or --emulated for the local API")
        if not secret:
            raise UsageError("pass --secret-access-key or set AWS_SECRET_ACCESS_KEY")
    output.secrets.add(secret)
    provider = client.add_provider(args.name, args.region, access_key_id, secret)
    if args.json:
        output.print_json(provider)
    else:
        output.out(
            f"added provider {provider.get('provider_id')}: {provider.get('name')} in {provider.get('region')} "
            f"(account {dash(provider.get('account_id'))}, key {dash(provider.get('access_key_id'))})"
        )
    return EXIT_OK


def cmd_providers_list(args: argparse.Namespace) -> int:
    body = client_for(args).list_providers()
    if args.json:
        output.print_json(body)
        return EXIT_OK
    providers = body.get("providers") or []
    if not providers:
        output.out("no providers yet: add one with `ec2jobs providers add`")
        return EXIT_OK
    output.table(
        ["PROVIDER ID", "NAME", "REGION", "ACCOUNT", "ACCESS KEY", "CREATED"],
        [
            [
                p.get("provider_id"),
                p.get("name"),
                p.get("region"),
                dash(p.get("account_id")),
                dash(p.get("access_key_id")),
                timestamp(p.get("created_at")),
            ]
            for p in providers
        ],
    )
    return EXIT_OK


def cmd_providers_show(args: argparse.Namespace) -> int:
    provider = client_for(args).get_provider(args.provider_id)
    if args.json:
        output.print_json(provider)
        return EXIT_OK
    output.fields(
        [
            ("provider id", provider.get("provider_id")),
            ("name", provider.get("name")),
            ("region", provider.get("region")),
            ("account", provider.get("account_id")),
            ("user", provider.get("user_arn")),
            ("access key", provider.get("access_key_id")),
            ("created", timestamp(provider.get("created_at"))),
        ]
    )
    return EXIT_OK


def cmd_providers_delete(args: argparse.Namespace) -> int:
    client_for(args).delete_provider(args.provider_id)
    output.out(f"deleted provider {args.provider_id}")
    return EXIT_OK


def register(commands: Any, parents: Parents) -> None:
    connection, as_json = parents.connection, parents.as_json
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
