"""Scheduled (every minute): the reconciler makes every job end and every instance die (service/reconcile.py)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from controlplane.adapters.events import JOB_STATE_CHANGE
from controlplane.handlers import container

logger = Logger(service="ec2jobs-reconcile")


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    if isinstance(event, dict) and event.get("detail-type") == JOB_STATE_CHANGE:
        return _job_ended(event)
    report = container.reconciler().run()
    summary = {
        "described": report.described,
        "finalized": report.finalized,
        "terminated": report.terminated,
        "relays_restarted": report.relays_restarted,
        "errors": report.errors,
        "job_failures": report.job_failures,
        "admission": report.admission,
    }
    if report.finalized or report.terminated or report.relays_restarted or report.errors:
        logger.info("reconciled", extra=summary)
    return summary


def _job_ended(event: dict[str, Any]) -> dict[str, Any]:
    """A job ended (the bus's Job State Change, JOB_ENDED_PATTERN): admit what now fits in its team's queue. The
    Lambda that ended the job booked it; it may not start workflows (only this function and the API may)."""
    detail = event.get("detail") or {}
    team_id = detail.get("team_id")
    if not isinstance(team_id, str) or not team_id:
        return {"admitted": []}
    admitted = container.admission().admit_queued(team_id)
    if admitted:
        logger.info("admitted queued jobs", extra={"team_id": team_id, "admitted": admitted})
    return {"admitted": admitted}
