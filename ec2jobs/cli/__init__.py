"""The `ec2jobs` command line: the same commands against the local control plane (`ec2jobs local up`) and a deployed
API. `main(argv) -> int`; exit codes: 0 ok, 1 a failed job or an API error, 2 a usage or configuration error,
130 interrupted. Every error is one line on stderr; the token and secrets never appear in output.

Layout (one module per command group, over the Python client in ec2jobs/client.py):
  main.py              the parser and main()          commands/local.py      local up | token
  args.py              parser pieces, option types    commands/providers.py  providers add | list | show | delete
  config.py            API URL and token resolution   commands/jobs.py       submit | jobs | status | logs | cancel
  output.py, costs.py  printing, prices and costs     commands/catalog.py    catalog
  tasks.py             task YAML files and --env      commands/tokens.py     tokens list | revoke
  inputs.py            workdir/file_mounts uploads,   commands/download.py   download (outputs, checkpoints)
                       --secret
  errors.py            exit codes, CliError
"""

from __future__ import annotations

from ec2jobs.cli.config import Config, read_env_file, resolve_config, write_env_file
from ec2jobs.cli.costs import Cost, job_cost
from ec2jobs.cli.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, CliError, UsageError
from ec2jobs.cli.main import build_parser, main

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "CliError",
    "Config",
    "Cost",
    "UsageError",
    "build_parser",
    "job_cost",
    "main",
    "read_env_file",
    "resolve_config",
    "write_env_file",
]
