"""EventBridge-triggered handler: EC2 "Instance State-change Notification" → the instance's job."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from controlplane.adapters.events import SPOT_INTERRUPTION
from controlplane.handlers import container

logger = Logger(service="ec2jobs-instance-events")


@logger.inject_lambda_context
def instance_state(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    raw = event.get("detail")
    detail: dict[str, Any] = raw if isinstance(raw, dict) else {}
    if event.get("detail-type") == SPOT_INTERRUPTION:
        handled = container.instance_events().spot_interruption(str(detail.get("instance-id", "")))
        logger.info("spot interruption warning", extra={"job_id": handled.job_id, "action": handled.action})
        return {"handled": handled.job_id is not None, "job_id": handled.job_id, "action": handled.action}
    instance_id, state = str(detail.get("instance-id", "")), str(detail.get("state", ""))
    if not instance_id or not state:
        logger.warning("not an EC2 state-change event", extra={"detail_type": event.get("detail-type")})
        return {"handled": False}
    handled = container.instance_events().handle(instance_id, state)  # the reason: DescribeInstances' StateReason
    logger.info("instance state change", extra={"instance_id": instance_id, "state": state, "action": handled.action})
    return {"handled": handled.job_id is not None, "job_id": handled.job_id, "action": handled.action}
