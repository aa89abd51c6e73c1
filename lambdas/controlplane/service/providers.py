"""Providers: verify keys with STS first, then keep the secret in Secrets Manager and the rest in DynamoDB."""

from __future__ import annotations

from controlplane.core.errors import Conflict, NotFound
from controlplane.core.ids import mask_access_key, new_provider_id
from controlplane.core.models import Provider, ProviderCreate, utcnow
from controlplane.core.ports import IdentityVerifier, JobStore, ProviderCredentials, ProviderStore, SecretStore


class ProviderService:
    def __init__(
        self, providers: ProviderStore, jobs: JobStore, secrets: SecretStore, verifier: IdentityVerifier
    ) -> None:
        self.providers = providers
        self.jobs = jobs
        self.secrets = secrets
        self.verifier = verifier

    def add(self, team_id: str, request: ProviderCreate) -> Provider:
        credentials = ProviderCredentials(request.access_key_id, request.secret_access_key.get_secret_value())
        identity = self.verifier.verify(credentials, request.region)  # nothing is stored unless this passes
        if any(p.name.lower() == request.name.lower() for p in self.providers.list(team_id)):
            raise Conflict(f"a provider named {request.name!r} already exists in this team")
        provider_id = new_provider_id()
        secret_arn = self.secrets.put_provider_credentials(team_id, provider_id, credentials)
        provider = Provider(
            provider_id=provider_id,
            team_id=team_id,
            name=request.name,
            region=request.region,
            account_id=identity.account_id,
            user_arn=identity.arn,
            access_key_hint=mask_access_key(request.access_key_id),
            secret_arn=secret_arn,
            created_at=utcnow(),
            permissions_boundary=request.permissions_boundary,  # None: bootstrap detects the provider's policy
        )
        try:
            self.providers.create(provider)
        except Conflict:
            self.secrets.delete(secret_arn)  # lost a race on the name: leave nothing behind
            raise
        return provider

    def get(self, team_id: str, provider_id: str) -> Provider:
        provider = self.providers.get(team_id, provider_id)
        if provider is None:
            raise NotFound("provider", provider_id)
        return provider

    def list(self, team_id: str) -> list[Provider]:
        return sorted(self.providers.list(team_id), key=lambda p: p.created_at)

    def delete(self, team_id: str, provider_id: str) -> None:
        provider = self.get(team_id, provider_id)
        if self.jobs.has_active_jobs(provider_id):
            raise Conflict(
                f"provider {provider_id} still has active jobs; cancel them or wait for them to end, then delete it"
            )
        self.providers.delete(provider)
        self.secrets.delete(provider.secret_arn)
