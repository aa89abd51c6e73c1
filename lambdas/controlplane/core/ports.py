"""Ports: what the services need from the outside world. AWS adapters implement them; unit tests use fakes."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from controlplane.core.lifecycle import JobStatus
from controlplane.core.logpages import PagePointer
from controlplane.core.models import BootstrapRecord, Job, Provider

if TYPE_CHECKING:  # only annotations: the admission models are built where admission runs, not with every port
    from controlplane.core.admission import Decision


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
        expected: JobStatus | Collection[JobStatus] | None = None,
        fields: dict[str, Any] | None = None,
        attempt: int | None = None,
    ) -> Job: ...
    def update(
        self,
        job_id: str,
        fields: dict[str, Any],
        *,
        expected: JobStatus | Collection[JobStatus] | None = None,
        attempt: int | None = None,
    ) -> Job: ...
    def has_active_jobs(self, provider_id: str) -> bool: ...


@dataclass(frozen=True)
class TeamKey:
    """A team's SSH login key and the seed its jobs' host keys are derived from (Secrets Manager only)."""

    private_openssh: str
    public_openssh: str
    host_key_seed: str

    def __repr__(self) -> str:
        return f"TeamKey(public={self.public_openssh[:32]}…)"


@dataclass(frozen=True)
class CachedImage:
    image_id: str
    name: str
    root_device_name: str
    expires_at: float
    min_disk_gib: int = 0  # the root snapshot's size


@dataclass(frozen=True)
class LogProgress:
    committed: int  # every byte of output before this offset is stored
    complete: bool  # final: nothing more will come (the relay drained the output, or the instance is gone)
    drained: bool = False  # the log is whole: the relay read everything the instance wrote (drain handshake)
    # Where the bytes after `committed` are, until compacted: a relay shard's pages (core/logpages.py)
    pages: PagePointer | None = None


class JobTransitions(Protocol):
    """A conditional status change (what ending an attempt needs of the job store, service/recovery.py)."""

    def transition(
        self,
        job_id: str,
        target: JobStatus,
        *,
        expected: JobStatus | Collection[JobStatus] | None = None,
        fields: dict[str, Any] | None = None,
        attempt: int | None = None,
    ) -> Job: ...


class JobStateWriter(JobTransitions, Protocol):
    """What the event handlers and the reconciler change on jobs: the instance's state and the job's status."""

    def set_instance_state(self, job_id: str, state: str) -> None: ...
    def get(self, job_id: str) -> Job | None: ...


class SecretStore(Protocol):
    def put_provider_credentials(self, team_id: str, provider_id: str, credentials: ProviderCredentials) -> str: ...
    def get_provider_credentials(self, secret_arn: str) -> ProviderCredentials: ...
    def delete(self, secret_arn: str) -> None: ...
    def team_key(self, team_id: str) -> TeamKey:
        """The team's key, created on first use (concurrent first uses agree on one key)."""
        ...


class BootstrapCache(Protocol):
    def get(self, provider_id: str, region: str) -> BootstrapRecord | None: ...
    def put(self, record: BootstrapRecord) -> None: ...
    def forget(self, provider_id: str, region: str) -> None: ...


class ImageCache(Protocol):
    def get(self, region: str, family: str) -> CachedImage | None: ...
    def put(self, region: str, family: str, image: CachedImage) -> None: ...


class ProviderClients(Protocol):
    """boto3 clients acting as a provider's IAM user (bounded by the seed policy)."""

    def __call__(self, service: str, credentials: ProviderCredentials, region: str) -> Any: ...


class IdentityVerifier(Protocol):
    def verify(self, credentials: ProviderCredentials, region: str) -> CallerIdentity: ...


class WorkflowStarter(Protocol):
    def start(self, job: Job) -> str: ...


class Admission(Protocol):
    """Per-team limits at submit (service/admission.py): admitted, queued (with the reason), or OverLimit."""

    def admit_new(self, job: Job) -> Decision: ...
