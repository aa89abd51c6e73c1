"""Exit codes and the errors every command reports as one line on stderr."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """An error reported as one line on stderr, with its exit code."""

    exit_code = EXIT_FAILED


class UsageError(CliError):
    exit_code = EXIT_USAGE
