"""Identifiers and secrets-at-rest helpers (pure).

Job ids are never chosen by a submitter: the API draws them at random, or derives them from the team and the
request's Idempotency-Key; a console execution or a Job Submission event derives them from its team and its own
idempotency key, event id or execution name. The team is always the first part hashed, so no submission for one
team can produce an id another team's submission maps to (docs/events.md, "Job ids").
"""

from __future__ import annotations

import hashlib
import secrets

TOKEN_PREFIX = "ej_"  # noqa: S105 - a prefix, not a secret


def new_job_id() -> str:
    return "job-" + secrets.token_hex(10)


def job_id_for_idempotency_key(team_id: str, key: str) -> str:
    """The same team + Idempotency-Key always names the same job, so a retried POST can only create it once."""
    digest = hashlib.sha256(f"{team_id}\x00{key}".encode()).hexdigest()
    return "job-" + digest[:20]


def job_id_for_submission(team_id: str, kind: str, identity: str) -> str:
    """The id of a console/event submission without an idempotency key: its team, its kind ("event" / "execution")
    and that kind's identity (the event id, the execution name). Never equal to another team's id."""
    digest = hashlib.sha256(f"{team_id}\x00{kind}\x00{identity}".encode()).hexdigest()
    return "job-" + digest[:20]


# A Job Submission event's `source` names the team it submits for; an administrator allows a team's automation to
# put events with that source only (IAM condition key events:source, docs/events.md).
TEAM_SOURCE_PREFIX = "ec2jobs.team."


def team_event_source(team_id: str) -> str:
    return TEAM_SOURCE_PREFIX + team_id


def team_of_event_source(source: object) -> str | None:
    """The team a Job Submission event's source names (`ec2jobs.team.<team_id>`), or None for any other source."""
    if not isinstance(source, str) or not source.startswith(TEAM_SOURCE_PREFIX):
        return None
    team_id = source.removeprefix(TEAM_SOURCE_PREFIX)
    return team_id or None


def new_provider_id() -> str:
    return "prov-" + secrets.token_hex(6)


def new_token() -> str:
    """A bearer token: 256 random bits. Only its hash is stored."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """Tokens are high-entropy random strings, so a plain SHA-256 is a safe at-rest form (no salt/KDF needed)."""
    return hashlib.sha256(token.encode()).hexdigest()


def mask_access_key(access_key_id: str) -> str:
    return access_key_id[:4] + "…" + access_key_id[-4:] if len(access_key_id) > 8 else "…"
