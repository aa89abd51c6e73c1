"""Domain exceptions. Handlers map them to HTTP status (or Step Functions errors) in exactly one place each."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


class DomainError(Exception):
    """Base class: a stable machine-readable `code` plus a sentence a person can act on."""

    code = "ERROR"

    def __init__(self, message: str, *, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []


class InvalidSpec(DomainError):
    """The task spec cannot be satisfied as written (bad field, or nothing AWS sells matches it)."""

    code = "INVALID_SPEC"


class InvalidRequest(DomainError):
    """A malformed request parameter (e.g. a pagination cursor that we did not issue)."""

    code = "INVALID_REQUEST"


class NotFound(DomainError):
    """The resource does not exist *for this team* (other teams' resources look the same as missing ones)."""

    code = "NOT_FOUND"

    def __init__(self, kind: str, identifier: str) -> None:
        super().__init__(f"{kind} '{identifier}' not found")
        self.kind = kind
        self.identifier = identifier


class Conflict(DomainError):
    """The request conflicts with the current state (duplicate name, provider still in use...)."""

    code = "CONFLICT"


class IdempotencyKeyReused(DomainError):
    """The same Idempotency-Key was sent with a different request body."""

    code = "IDEMPOTENCY_KEY_REUSED"


class InvalidCredentials(DomainError):
    """Provider credentials failed a check; `check` names which one."""

    code = "INVALID_CREDENTIALS"

    def __init__(self, check: str, message: str) -> None:
        super().__init__(message, details=[{"check": check}])
        self.check = check


class UpstreamUnavailable(DomainError):
    """An AWS dependency could not be reached or kept failing; retrying later may work."""

    code = "UPSTREAM_UNAVAILABLE"


class Unauthorized(DomainError):
    """Missing or unknown bearer token."""

    code = "UNAUTHORIZED"


class Forbidden(DomainError):
    """A valid token that may not do this: an admin token on a team's route, a team token on an admin route."""

    code = "FORBIDDEN"


class TransitionRefused(DomainError):
    """A conditional job-state write lost: the job is not in a state that allows the move."""

    code = "TRANSITION_REFUSED"

    def __init__(self, job_id: str, current: str | None, attempted: str) -> None:
        super().__init__(
            f"job {job_id} cannot move to {attempted}: it is {current or 'missing'}",
        )
        self.job_id = job_id
        self.current = current
        self.attempted = attempted


class JobFailed(DomainError):
    """A workflow step ended the job FAILED (already recorded); `reason` is the job's failure_reason."""

    code = "JOB_FAILED"

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class JobNotActive(DomainError):
    """The job already ended (e.g. cancelled while it waited): the workflow stops without touching it."""

    code = "JOB_NOT_ACTIVE"


class InvalidSubmission(DomainError):
    """A workflow input that names no usable team/provider/job, so no job record can be made for it."""

    code = "INVALID_SUBMISSION"


class DuplicateSubmission(DomainError):
    """Another execution already owns this job (e.g. an event delivered twice): this one stops."""

    code = "DUPLICATE_SUBMISSION"


def describe_validation_problems(problems: Iterable[Mapping[str, Any]]) -> tuple[str, list[dict[str, str]]]:
    """Pydantic error dicts → one readable sentence plus per-field details. Input values are never echoed (they may
    be secrets)."""
    details = []
    for problem in problems:
        location = ".".join(str(part) for part in problem.get("loc", ()) if part not in {"body", "query", "header"})
        message = str(problem.get("msg", "is not valid")).removeprefix("Value error, ")
        if problem.get("type") == "extra_forbidden":
            message = "is not a supported field (see the task spec in the README)"
        elif problem.get("type") == "missing":
            message = "is required"
        elif problem.get("type") == "json_invalid":
            message = "the request body is not valid JSON"
        details.append({"field": location or "body", "message": message})
    summary = "; ".join(f"{d['field']}: {d['message']}" for d in details) or "the request is not valid"
    return summary, details
