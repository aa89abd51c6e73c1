"""Ports: what the services need from the outside world. AWS adapters implement them; unit tests use fakes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from controlplane.core.lifecycle import JobStatus
from controlplane.core.models import Job, Provider


@dataclass(frozen=True)
class CallerIdentity:
    account_id: str
    arn: str


@dataclass(frozen=True)
class ProviderCredentials:
    access_key_id: str
    secret_access_key: str

    def __repr__(self) -> str:  # never print the secret, even by accident
        return f"ProviderCredentials(access_key_id={self.access_key_id[:4]}…)"


@dataclass(frozen=True)
class JobPage:
    jobs: list[Job]
    next_cursor: str | None


class TeamStore(Protocol):
    def create_team(self, team_id: str, name: str) -> None: ...
    def put_token(self, token_hash: str, team_id: str, label: str) -> None: ...
    def team_for_token(self, token_hash: str) -> str | None: ...


class ProviderStore(Protocol):
    def create(self, provider: Provider) -> None: ...
    def get(self, team_id: str, provider_id: str) -> Provider | None: ...
    def list(self, team_id: str) -> list[Provider]: ...
    def delete(self, provider: Provider) -> None: ...


class JobStore(Protocol):
    def create(self, job: Job) -> tuple[Job, bool]: ...
    def get(self, job_id: str) -> Job | None: ...
    def list_for_team(self, team_id: str, status: JobStatus | None, limit: int, cursor: str | None) -> JobPage: ...
    def transition(
        self,
        job_id: str,
        target: JobStatus,
        *,
        expected: JobStatus | None = None,
        fields: dict[str, Any] | None = None,
    ) -> Job: ...
    def update(self, job_id: str, fields: dict[str, Any], *, expected: JobStatus | None = None) -> Job: ...
    def has_active_jobs(self, provider_id: str) -> bool: ...


class SecretStore(Protocol):
    def put_provider_credentials(self, team_id: str, provider_id: str, credentials: ProviderCredentials) -> str: ...
    def get_provider_credentials(self, secret_arn: str) -> ProviderCredentials: ...
    def delete(self, secret_arn: str) -> None: ...


class IdentityVerifier(Protocol):
    def verify(self, credentials: ProviderCredentials, region: str) -> CallerIdentity: ...


class WorkflowStarter(Protocol):
    def start(self, job: Job) -> str: ...
