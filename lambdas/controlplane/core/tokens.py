"""Tokens and teams as the control plane stores them (pure): records, lifetimes, and the ports that keep them."""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from typing import Any, Protocol

DEFAULT_TOKEN_DAYS = 90
MAX_TOKEN_DAYS = 365
TOKEN_PREFIX_CHARS = 8  # "ej_" + 5 random characters: enough to tell your tokens apart, far too few to guess one
MAX_LABEL = 100
# Admin tokens belong to this pseudo-team: no real team can have its id (team ids start with a letter or digit), so
# an admin token is never a team's token, and a team token is never an admin's (docs/budgets.md).
ADMIN_TEAM = "_admin"


@dataclass(frozen=True)
class TokenRecord:
    """What is stored about a token (never the token itself)."""

    token_id: str
    team_id: str
    label: str
    prefix: str
    created_at: dt.datetime
    expires_at: dt.datetime

    def expired(self, now: dt.datetime) -> bool:
        return now >= self.expires_at

    def public(self, now: dt.datetime, current_token_id: str | None = None) -> dict[str, Any]:
        """The listing's view: no hash, no token."""
        return {
            "token_id": self.token_id,
            "label": self.label,
            "prefix": self.prefix,
            "created_at": self.created_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "expired": self.expired(now),
            "current": self.token_id == current_token_id,
        }


@dataclass(frozen=True)
class TeamRecord:
    team_id: str
    deleted: bool = False
    usage_key: str | None = None  # the API Gateway API key *value* API Gateway throttles this team by
    usage_key_id: str | None = None


@dataclass(frozen=True)
class Principal:
    """Who a valid token speaks for."""

    team_id: str
    token_id: str
    usage_key: str | None


@dataclass(frozen=True)
class IssuedToken:
    token: str  # shown once
    record: TokenRecord

    def __repr__(self) -> str:  # never the token, even by accident
        return f"IssuedToken(token=<hidden>, record={self.record!r})"


class TokenStore(Protocol):
    """The state table's team and token items (adapters/dynamodb.py DynamoTeamStore)."""

    def create_team(self, team_id: str, name: str) -> None: ...
    def get_team(self, team_id: str) -> TeamRecord | None: ...
    def set_usage_key(self, team_id: str, key_id: str, value: str) -> bool: ...
    def mark_team_deleted(self, team_id: str) -> None: ...
    def put_token(self, token_hash: str, record: TokenRecord) -> None: ...
    def token(self, token_hash: str) -> TokenRecord | None: ...
    def list_tokens(self, team_id: str) -> list[TokenRecord]: ...
    def delete_token(self, team_id: str, token_id: str) -> bool: ...


class UsageKeys(Protocol):
    """API keys in the stack's usage plan (adapters/usage_plans.py; the admin's credentials, never a Lambda's)."""

    def create(self, team_id: str) -> tuple[str, str]: ...  # (key id, key value)
    def delete(self, key_id: str) -> None: ...


def new_token_id() -> str:
    return "tok-" + secrets.token_hex(6)


def check_expiry_days(days: int) -> int:
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_TOKEN_DAYS:
        raise ValueError(f"a token's lifetime must be 1-{MAX_TOKEN_DAYS} days, not {days!r}")
    return days
