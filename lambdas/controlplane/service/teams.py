"""Teams and their bearer tokens. A token is shown once, at creation; only its SHA-256 is stored.

Every token expires (90 days by default, at most 365), can be revoked, and is listed without revealing it (its id,
its first characters, label, created, expires). A deleted team's tokens are refused. The authorizer's answer is
cached by API Gateway per token (stacks/api.py AUTHORIZER_CACHE, 300 s), so a revocation, an expiry or a team
deletion takes effect within that TTL on a deployed stack (at once on the local front, which does not cache).

Per-team fairness: a team may carry a usage key (an API Gateway API key in the stack's usage plan); the authorizer
returns it as `usageIdentifierKey` so that API Gateway throttles each team on its own bucket (docs/tokens.md).
"""

from __future__ import annotations

import datetime as dt

from controlplane.core.errors import InvalidRequest, NotFound
from controlplane.core.ids import hash_token, new_token
from controlplane.core.models import check_team_id, utcnow
from controlplane.core.tokens import (
    ADMIN_TEAM,
    DEFAULT_TOKEN_DAYS,
    MAX_LABEL,
    TOKEN_PREFIX_CHARS,
    IssuedToken,
    Principal,
    TokenRecord,
    TokenStore,
    UsageKeys,
    check_expiry_days,
    new_token_id,
)


class TeamService:
    def __init__(self, teams: TokenStore, usage_keys: UsageKeys | None = None) -> None:
        self.teams = teams
        self.usage_keys = usage_keys

    # -- admin: issuing, deleting a team -------------------------------------------------------------------

    def issue(
        self,
        team_id: str,
        label: str = "default",
        expires_in_days: int = DEFAULT_TOKEN_DAYS,
        now: dt.datetime | None = None,
    ) -> IssuedToken:
        """Create the team if needed and a new token for it (an admin action: scripts/ and the local runtime)."""
        check_team_id(team_id)
        return self._issue(team_id, label, expires_in_days, now)

    def issue_admin(
        self, label: str = "admin", expires_in_days: int = DEFAULT_TOKEN_DAYS, now: dt.datetime | None = None
    ) -> IssuedToken:
        """A new admin token: it sets teams' limits and reads every team's usage, and acts for no team."""
        return self._issue(ADMIN_TEAM, label, expires_in_days, now)

    def _issue(self, team_id: str, label: str, expires_in_days: int, now: dt.datetime | None) -> IssuedToken:
        check_expiry_days(expires_in_days)
        label = label.strip()[:MAX_LABEL] or "default"
        self.teams.create_team(team_id, team_id)
        team = self.teams.get_team(team_id)
        if team is not None and team.deleted:
            raise ValueError(f"team {team_id!r} was deleted; its id is not reused")
        if self.usage_keys is not None and (team is None or team.usage_key is None):
            self._give_usage_key(team_id)
        created = (now or utcnow()).replace(microsecond=0)
        token = new_token()
        record = TokenRecord(
            token_id=new_token_id(),
            team_id=team_id,
            label=label,
            prefix=token[:TOKEN_PREFIX_CHARS],
            created_at=created,
            expires_at=created + dt.timedelta(days=expires_in_days),
        )
        self.teams.put_token(hash_token(token), record)
        return IssuedToken(token, record)

    def issue_token(self, team_id: str, label: str = "default", expires_in_days: int = DEFAULT_TOKEN_DAYS) -> str:
        """A new token for `team_id` (the only time it is visible)."""
        return self.issue(team_id, label, expires_in_days).token

    def _give_usage_key(self, team_id: str) -> None:
        assert self.usage_keys is not None
        key_id, value = self.usage_keys.create(team_id)
        if not self.teams.set_usage_key(team_id, key_id, value):  # a concurrent issue gave it one first
            self.usage_keys.delete(key_id)

    def delete_team(self, team_id: str) -> int:
        """Mark the team deleted (its tokens are refused from then on), revoke every token, drop its usage key.
        Returns how many tokens were revoked."""
        team = self.teams.get_team(team_id)
        if team is None:
            raise NotFound("team", team_id)
        self.teams.mark_team_deleted(team_id)
        revoked = sum(self.teams.delete_token(team_id, t.token_id) for t in self.teams.list_tokens(team_id))
        if self.usage_keys is not None and team.usage_key_id:
            self.usage_keys.delete(team.usage_key_id)
        return revoked

    # -- the authorizer ------------------------------------------------------------------------------------

    def authorize(self, token: str, now: dt.datetime | None = None) -> Principal | None:
        """The principal of a valid token; None when it is unknown, expired, or its team is missing or deleted."""
        if not token:
            return None
        record = self.teams.token(hash_token(token))
        if record is None or record.expired(now or utcnow()):
            return None
        team = self.teams.get_team(record.team_id)
        if team is None or team.deleted:
            return None
        return Principal(record.team_id, record.token_id, team.usage_key)

    def team_for(self, token: str) -> str | None:
        principal = self.authorize(token)
        return principal.team_id if principal else None

    # -- a team's own tokens (the API) ---------------------------------------------------------------------

    def list_tokens(self, team_id: str) -> list[TokenRecord]:
        return sorted(self.teams.list_tokens(team_id), key=lambda t: (t.created_at, t.token_id))

    def revoke(self, team_id: str, token_id: str) -> None:
        """Revoke one of the team's tokens; another team's token answers NotFound like a missing one."""
        if not token_id.startswith("tok-") or len(token_id) > 64:
            raise InvalidRequest(f"{token_id[:64]!r} is not a token id (tok-…; see GET /tokens)")
        if not self.teams.delete_token(team_id, token_id):
            raise NotFound("token", token_id)
