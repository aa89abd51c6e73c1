"""The launch workflow's Lambda handlers (one asset, one function each): Validate, Bootstrap, Launch and the
failure catcher. Step Functions passes the state along; the error names it sees are the domain exception class
names (InvalidSpec, JobFailed, UpstreamUnavailable, JobNotActive, ...), and their messages are sentences for people.

Validate's input, as the state machine passes it: {"input": <execution input>, "execution_name", "execution_arn"};
a bare execution input (direct invocation) works too. A console or event submission Validate refuses is never
silent: where its team is known a FAILED job records why, and a `Job Submission Rejected` event goes to the bus
(docs/events.md).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from controlplane.core.errors import DomainError, InvalidSpec, InvalidSubmission
from controlplane.handlers import container

logger = Logger(service="ec2jobs-workflow")
_WRAPPER_KEYS = frozenset({"input", "execution_name", "execution_arn"})


def _unwrap(event: Any) -> tuple[Any, str | None, str | None]:
    if isinstance(event, dict) and "input" in event and set(event) <= _WRAPPER_KEYS:
        name, arn = event.get("execution_name"), event.get("execution_arn")
        return event["input"], str(name) if name else None, str(arn) if arn else None
    return event, None, None


def _logged(step: str, job_id: Any, error: DomainError) -> None:
    logger.warning(f"{step} stopped", extra={"job_id": job_id, "code": error.code, "error_message": error.message})


@logger.inject_lambda_context
def validate(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    raw, name, arn = _unwrap(event)
    try:
        state = container.pipeline().validate(raw, name, arn)
    except DomainError as error:
        _logged("validate", raw.get("job_id") if isinstance(raw, dict) else None, error)
        if isinstance(error, InvalidSubmission | InvalidSpec):
            _report_rejection(raw, name, arn, error)
        raise
    logger.info("job validated", extra={"job_id": state["job_id"], "instance_type": state["instance_type"]})
    return state


def _report_rejection(raw: Any, name: str | None, arn: str | None, error: DomainError) -> None:
    """The FAILED job (team known) and the Job Submission Rejected event. Best effort: the refusal stands anyway."""
    from controlplane import config
    from controlplane.adapters import aws
    from controlplane.adapters.events import RejectionPublisher

    try:
        rejection = container.pipeline().intake.reject(raw, error, name, arn)
        if rejection is None:
            return
        logger.info("submission rejected", extra={"job_id": rejection.job_id, "team_id": rejection.team_id})
        bus = config.get().event_bus_name
        if bus:
            RejectionPublisher(aws.client("events"), bus)(asdict(rejection))
    except Exception as failure:  # noqa: BLE001 - only its type is logged: an error text could quote the input
        logger.warning("could not report the rejection", extra={"error_type": type(failure).__name__})


@logger.inject_lambda_context
def bootstrap(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    try:
        state = container.pipeline().bootstrap(event)
    except DomainError as error:
        _logged("bootstrap", event.get("job_id"), error)
        raise
    logger.info("team resources ready", extra={"job_id": state["job_id"], "region": state.get("region")})
    return state


@logger.inject_lambda_context
def launch(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    try:
        state = container.pipeline().launch(event, lambda: context.get_remaining_time_in_millis() / 1000)
    except DomainError as error:
        _logged("launch", event.get("job_id"), error)
        raise
    logger.info("instance launched", extra={"job_id": state["job_id"], "instance_id": state.get("instance_id")})
    return state


@logger.inject_lambda_context
def relay(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """The relay loop's step: streams for minutes, returns `relay.finished` when the job's output is drained (or
    the job/instance ended)."""
    state = container.pipeline().relay(event, lambda: context.get_remaining_time_in_millis() / 1000)
    logger.info("relay step ended", extra={"job_id": event.get("job_id"), **state["relay"]})
    return state


@logger.inject_lambda_context
def recover(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """The Recover step: the attempt ended and the job relaunches (its instance terminated, the next attempt
    begun)."""
    try:
        state = container.pipeline().recover(event)
    except DomainError as error:
        _logged("recover", event.get("job_id"), error)
        raise
    logger.info("next attempt begun", extra={"job_id": state["job_id"], "attempt": state["attempt"]})
    return state


@logger.inject_lambda_context
def record_failure(event: dict[str, Any], context: LambdaContext) -> dict[str, str]:
    """Catch target: the state with the caught error at `error` ({"Error", "Cause"})."""
    error = event.get("error") if isinstance(event.get("error"), dict) else None
    result = container.pipeline().record_failure(event, error)
    logger.info("launch workflow failed", extra={"job_id": event.get("job_id"), "error": result["Error"]})
    return result
