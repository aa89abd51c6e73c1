"""ec2jobs command-line interface and HTTP client (`ec2jobs.client.Client`, `ec2jobs.cli.main`)."""

from __future__ import annotations

from ec2jobs.client import ApiError, Client

__all__ = ["ApiError", "Client"]
