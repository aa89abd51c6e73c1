"""The command groups, one module each (dstack-style): each `register(commands, parents)` adds its sub-parsers and
sets `func` on them; every command talks to the API through ec2jobs.client.Client."""

from __future__ import annotations

from ec2jobs.cli.commands import budgets, catalog, download, jobs, local, providers, tokens

GROUPS = (local, providers, jobs, download, catalog, tokens, budgets)

__all__ = ["GROUPS"]
