"""Wiring: builds the services from typed config and the AWS adapters, once per Lambda container.
Tests replace it with `use(...)` to run handlers against fakes."""

from __future__ import annotations

from dataclasses import dataclass

from controlplane.service.jobs import JobService
from controlplane.service.providers import ProviderService
from controlplane.service.teams import TeamService


@dataclass
class Services:
    teams: TeamService
    providers: ProviderService
    jobs: JobService


_services: Services | None = None


def get() -> Services:
    global _services
    if _services is None:
        _services = _from_environment()
    return _services


def use(services: Services | None) -> None:
    """Install (or with None, forget) the services the handlers use."""
    global _services
    _services = services


def _from_environment() -> Services:
    from controlplane import config
    from controlplane.adapters import aws
    from controlplane.adapters.dynamodb import DynamoJobStore, DynamoProviderStore, DynamoTeamStore
    from controlplane.adapters.identity import StsIdentityVerifier
    from controlplane.adapters.secrets import SecretsManagerStore
    from controlplane.adapters.workflow import StepFunctionsStarter

    settings = config.get()
    dynamodb = aws.resource("dynamodb")
    state = dynamodb.Table(settings.state_table)
    jobs = DynamoJobStore(dynamodb.Table(settings.jobs_table))
    providers = DynamoProviderStore(state)
    return Services(
        teams=TeamService(DynamoTeamStore(state)),
        providers=ProviderService(
            providers,
            jobs,
            SecretsManagerStore(aws.client("secretsmanager"), settings.secrets_prefix),
            StsIdentityVerifier(),
        ),
        jobs=JobService(jobs, providers, StepFunctionsStarter(aws.client("stepfunctions"), settings.state_machine_arn)),
    )
