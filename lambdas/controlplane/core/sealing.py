"""A job's secrets at rest: sealed (AES-256-GCM) in the job record, never in clear.

The key is derived (HKDF-SHA256) from the team's seed, which lives only in Secrets Manager (the same seed the
jobs' SSH host keys are derived from, with another salt), and the job id is the associated data: a sealed value
copied into another job's record does not open there. Who can read the jobs table but not Secrets Manager sees
only names. Opened by the relay, which hands the values to the instance in the start bundle over SSH.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_VERSION = "v1"
_SALT = b"ec2jobs-job-secrets-v1"


class SealBroken(ValueError):
    """The sealed secrets do not open with this team's key for this job (tampered, or another job's)."""


def _key(seed_hex: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=b"job secrets").derive(bytes.fromhex(seed_hex))


def seal(seed_hex: str, job_id: str, secrets: Mapping[str, str]) -> str:
    """`v1:` + base64(nonce ‖ AES-GCM(JSON of the secrets)), bound to the job id."""
    nonce = os.urandom(12)
    plain = json.dumps(dict(sorted(secrets.items())), separators=(",", ":")).encode()
    sealed = AESGCM(_key(seed_hex)).encrypt(nonce, plain, job_id.encode())
    return f"{_VERSION}:{base64.b64encode(nonce + sealed).decode()}"


def unseal(seed_hex: str, job_id: str, sealed: str) -> dict[str, str]:
    version, _, body = sealed.partition(":")
    if version != _VERSION:
        raise SealBroken(f"unknown sealed-secrets version {version!r}")
    raw = base64.b64decode(body)
    try:
        plain = AESGCM(_key(seed_hex)).decrypt(raw[:12], raw[12:], job_id.encode())
    except InvalidTag:
        raise SealBroken("the job's secrets do not open with its team's key") from None
    values = json.loads(plain)
    return {str(name): str(value) for name, value in values.items()}
