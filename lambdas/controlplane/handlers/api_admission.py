"""The HTTP API's routes for budgets (a Powertools Router that handlers/api_routes.py includes; docs/budgets.md):
a team reads its limits and its month's usage; an admin token sets any team's limits and reads every team's usage.
A team token on an admin route, or an admin token on a team's route, answers 403."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.params import Path, Query
from aws_lambda_powertools.event_handler.router import APIGatewayRouter

from controlplane.core.admission import Limits
from controlplane.core.errors import UpstreamUnavailable
from controlplane.core.models import TEAM_ID
from controlplane.handlers import caller, container
from controlplane.handlers import schemas as views
from controlplane.handlers.openapi_doc import responses
from controlplane.service.admission import AdmissionService

logger = Logger(service="ec2jobs-api")
router = APIGatewayRouter()  # type: ignore[no-untyped-call]  # powertools leaves its __init__ untyped

MONTH_PATTERN = r"^20[0-9]{2}-(0[1-9]|1[0-2])$"
TeamId = Annotated[str, Path(pattern=f"^{TEAM_ID.pattern}$", max_length=32, description="a team id")]
Month = Annotated[str | None, Query(pattern=MONTH_PATTERN, description="YYYY-MM (UTC); default: this month")]


def _json(body: Any, status: int = 200) -> Response[Any]:
    return Response(status_code=status, content_type="application/json", body=body)


def _authorizer() -> Any:
    return router.current_event.request_context.authorizer


def _service() -> AdmissionService:
    service = container.get().admission
    if service is None:
        raise UpstreamUnavailable("limits and usage are not configured on this control plane")
    return service


def _month(month: str | None) -> str:
    return month or dt.datetime.now(dt.UTC).strftime("%Y-%m")


@router.get("/limits", responses=responses(200, Limits, "the team's limits (none set: every field null)", 403))
def get_limits() -> Response[Any]:
    """Your team's limits, as an admin set them (docs/budgets.md)."""
    return _json(_service().limits(caller.team_of(_authorizer())).model_dump(mode="json"))


@router.get(
    "/usage",
    responses=responses(
        200, views.Usage, "the team's month (with an admin token: views.UsageList, every team's)", 400, 403, 422
    ),
)
def get_usage(
    month: Month = None,
    team_id: Annotated[
        str | None, Query(pattern=f"^{TEAM_ID.pattern}$", max_length=32, description="admin tokens only: one team")
    ] = None,
) -> Response[Any]:
    """Spend, reserved, budget left, GPU-hours by type, jobs by final state and per provider for a month. With an
    admin token, every team's (or `team_id`'s)."""
    chosen = _month(month)
    if caller.is_admin(_authorizer()):
        if team_id:
            return _json(_service().usage(team_id, chosen))
        return _json({"teams": _service().usage_all(chosen)})
    own = caller.team_of(_authorizer())
    if team_id and team_id != own:
        caller.require_admin(_authorizer())  # another team's usage: admins only (403)
    return _json(_service().usage(own, chosen))


@router.get("/admin/teams/<team_id>/limits", responses=responses(200, Limits, "the team's limits", 403, 422))
def admin_get_limits(team_id: TeamId) -> Response[Any]:
    """A team's limits (admin token)."""
    caller.require_admin(_authorizer())
    return _json(_service().limits(team_id).model_dump(mode="json"))


@router.put(
    "/admin/teams/<team_id>/limits", responses=responses(200, Limits, "the team's limits, as stored", 400, 403, 422)
)
def admin_set_limits(team_id: TeamId, body: Limits) -> Response[Any]:
    """Set a team's limits (admin token); queued jobs that now fit are admitted at once. Running jobs are never
    stopped by a lower limit: it applies to the jobs admitted from then on."""
    caller.require_admin(_authorizer())
    stored = _service().set_limits(team_id, body)
    logger.info("team limits set", extra={"team_id": team_id})
    return _json(stored.model_dump(mode="json"))


@router.delete("/admin/teams/<team_id>/limits", responses=responses(204, None, "the team has no limits now", 403, 422))
def admin_clear_limits(team_id: TeamId) -> Response[Any]:
    """Remove a team's limits (admin token): its queued jobs are admitted."""
    caller.require_admin(_authorizer())
    _service().set_limits(team_id, None)
    return Response(status_code=204)
