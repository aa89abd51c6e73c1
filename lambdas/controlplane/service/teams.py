"""Teams and their bearer tokens. A token is shown once, at creation; only its hash is stored."""

from __future__ import annotations

from controlplane.core.ids import hash_token, new_token
from controlplane.core.models import check_team_id
from controlplane.core.ports import TeamStore


class TeamService:
    def __init__(self, teams: TeamStore) -> None:
        self.teams = teams

    def issue_token(self, team_id: str, label: str = "default") -> str:
        """Create the team if needed and return a new token for it (the only time the token is visible)."""
        check_team_id(team_id)
        self.teams.create_team(team_id, team_id)
        token = new_token()
        self.teams.put_token(hash_token(token), team_id, label)
        return token

    def team_for(self, token: str) -> str | None:
        return self.teams.team_for_token(hash_token(token)) if token else None
