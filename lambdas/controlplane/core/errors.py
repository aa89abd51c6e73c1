"""Domain exceptions. Handlers map them to HTTP status (or Step Functions errors) in exactly one place each."""

from __future__ import annotations

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
