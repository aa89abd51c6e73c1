"""`ec2jobs catalog`: GPU and instance types with their prices."""

from __future__ import annotations

import argparse
from typing import Any

from ec2jobs.cli import output
from ec2jobs.cli.args import Parents
from ec2jobs.cli.config import client_for
from ec2jobs.cli.errors import EXIT_OK
from ec2jobs.cli.output import dash, price


def cmd_catalog(args: argparse.Namespace) -> int:
    body = client_for(args).catalog(region=args.region, gpu=args.gpu)
    if args.json:
        output.print_json(body)
        return EXIT_OK
    gpus = body.get("gpus") or []
    if gpus:
        output.table(
            ["GPU", "GPU MEMORY GIB", "COUNTS", "INSTANCE TYPES"],
            [
                [
                    g.get("gpu"),
                    dash(g.get("gpu_memory_gib")),
                    ", ".join(str(c) for c in g.get("counts") or []),
                    ", ".join(g.get("instance_types") or []),
                ]
                for g in gpus
            ],
        )
        output.out()
    types = body.get("instance_types") or []
    if not types:
        output.out("no instance types match")
        return EXIT_OK
    output.table(
        ["INSTANCE TYPE", "VCPU", "MEMORY GIB", "GPU", "$/H"],
        [
            [
                t.get("instance_type"),
                t.get("vcpus"),
                t.get("memory_gib"),
                f"{t['gpu']} x{t.get('gpu_count')}" if t.get("gpu") else "-",
                price(t.get("price_per_hour")),
            ]
            for t in types
        ],
    )
    prices = body.get("prices") or {}
    if prices:
        output.out(
            f"\n$/h: on-demand {prices.get('currency', 'USD')} list prices per {prices.get('unit', 'hour')} "
            f"({prices.get('region', 'us-east-1')}); n/a = no recorded price"
        )
    return EXIT_OK


def register(commands: Any, parents: Parents) -> None:
    catalog = commands.add_parser(
        "catalog", parents=[parents.connection, parents.as_json], help="GPU and instance types, prices"
    )
    catalog.add_argument("--gpu", help="only this GPU type (aliases accepted)")
    catalog.add_argument("--region", help="only types offered in this region")
    catalog.set_defaults(func=cmd_catalog)
