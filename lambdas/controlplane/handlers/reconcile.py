"""Scheduled (every minute): the reconciler makes every job end and every instance die (service/reconcile.py)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from controlplane.handlers import container

logger = Logger(service="ec2jobs-reconcile")


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    report = container.reconciler().run()
    summary = {
        "described": report.described,
        "finalized": report.finalized,
        "terminated": report.terminated,
        "relays_restarted": report.relays_restarted,
        "errors": report.errors,
        "job_failures": report.job_failures,
    }
    if report.finalized or report.terminated or report.relays_restarted or report.errors:
        logger.info("reconciled", extra=summary)
    return summary
