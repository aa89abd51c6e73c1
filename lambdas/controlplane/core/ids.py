"""Identifiers and secrets-at-rest helpers (pure)."""

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
