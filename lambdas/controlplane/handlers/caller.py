"""Who is calling: the team (or admin) the authorizer put on the request. The team always comes from the token,
never from the body; an admin token (core/tokens.py ADMIN_TEAM) acts for no team, and a team token is no admin."""

from __future__ import annotations

from typing import Any

from controlplane.core.errors import Forbidden, Unauthorized
from controlplane.core.tokens import ADMIN_TEAM


def _authorised(authorizer: Any) -> str:
    team_id = authorizer.get("team_id") if authorizer else None
    if not team_id:
        raise Unauthorized("the request carries no authorised team (is the authorizer attached to this route?)")
    return str(team_id)


def team_of(authorizer: Any) -> str:
    """The calling team; an admin token is refused (403): it acts for no team."""
    team_id = _authorised(authorizer)
    if team_id == ADMIN_TEAM:
        raise Forbidden("an admin token acts for no team: use a team's token for this route")
    return team_id


def is_admin(authorizer: Any) -> bool:
    return _authorised(authorizer) == ADMIN_TEAM


def require_admin(authorizer: Any) -> None:
    """Admin routes: a team's token is refused (403)."""
    if not is_admin(authorizer):
        raise Forbidden("this route needs an admin token (scripts/team_admin.py issue-admin); a team token cannot")
