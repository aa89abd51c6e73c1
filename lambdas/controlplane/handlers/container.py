"""Wiring: builds the services from typed config and the AWS adapters, once per Lambda container, at the first call
that needs them (a handler's import imports none of them). Tests replace it with `use(...)` to run handlers against
fakes."""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where each is built: a handler's import pays only for what its first call wires
    from controlplane.adapters.dynamodb import DynamoJobStore
    from controlplane.adapters.uploads import DynamoUploadStore
    from controlplane.service.admission import AdmissionService
    from controlplane.service.cancel import CancelService
    from controlplane.service.instance_events import InstanceEventsService
    from controlplane.service.jobs import JobService
    from controlplane.service.outputs import OutputsService
    from controlplane.service.pipeline import Pipeline
    from controlplane.service.providers import ProviderService
    from controlplane.service.reconcile import Reconciler
    from controlplane.service.relay import RelayService
    from controlplane.service.teams import TeamService
    from controlplane.service.uploads import UploadService


@dataclass
class Services:
    teams: TeamService
    providers: ProviderService
    jobs: JobService
    admission: AdmissionService | None = None  # per-team limits, the queue, usage (None: the routes answer 503)


logger = logging.getLogger(__name__)

_services: Services | None = None
_pipeline: Pipeline | None = None
_relayer: RelayService | None = None
_instance_events: InstanceEventsService | None = None
_cancel: CancelService | None = None
_reconciler: Reconciler | None = None
_uploads: UploadService | None = None
_outputs: OutputsService | None = None
_admission: AdmissionService | None = None
_artifacts_s3: Any = None
_frozen = False


@contextmanager
def _first_wiring() -> Iterator[None]:
    """A process's first wiring runs with Python's cyclic garbage collector paused, then freezes what exists by then
    (gc.freeze: the modules, clients and services, which live as long as the process, are never scanned again) and
    resumes collecting. Wiring leaves some 100,000 objects tracked by the collector and next to no garbage:
    collecting while it ran took ~40 ms of the relay's cold start, and every full collection afterwards (the relay
    runs for minutes) walked them all again. Later wirings in the same process (tests, the local runtime after
    use(None)) collect as usual."""
    global _frozen
    if _frozen:
        yield
        return
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
        gc.freeze()
        _frozen = True
    finally:
        if collecting:
            gc.enable()


def reconciler() -> Reconciler:
    global _reconciler
    if _reconciler is None:
        with _first_wiring():
            from controlplane import config
            from controlplane.adapters import aws
            from controlplane.adapters.dynamodb import DynamoBootstrapCache, DynamoProviderStore
            from controlplane.adapters.logs import DynamoLogStore
            from controlplane.adapters.secrets import SecretsManagerStore
            from controlplane.adapters.workflow import StepFunctionsStarter
            from controlplane.core.ports import ProviderCredentials
            from controlplane.service.reconcile import Reconciler, ReconcileSettings

            settings = config.get()
            dynamodb = aws.resource("dynamodb")
            state = dynamodb.Table(settings.state_table)

            def clients(service: str, credentials: ProviderCredentials, region: str) -> Any:
                return aws.provider_client(service, credentials, region)

            _reconciler = Reconciler(
                job_store(),
                DynamoProviderStore(state),
                DynamoBootstrapCache(state),
                SecretsManagerStore(aws.client("secretsmanager"), settings.secrets_prefix),
                clients,
                DynamoLogStore(dynamodb.Table(settings.logs_table), settings.log_retention_days),
                ReconcileSettings(
                    launch_timeout_seconds=settings.launch_timeout_seconds,
                    orphan_grace_seconds=settings.orphan_grace_seconds,
                    ended_grace_seconds=settings.ended_grace_seconds,
                    relay_stale_seconds=settings.relay_stale_seconds,
                ),
                relays=StepFunctionsStarter(aws.client("stepfunctions"), settings.state_machine_arn)
                if settings.state_machine_arn
                else None,
                admission=admission(),
            )
    return _reconciler


def cancel() -> CancelService:
    global _cancel
    if _cancel is None:
        from controlplane import config
        from controlplane.adapters import aws
        from controlplane.adapters.dynamodb import DynamoProviderStore
        from controlplane.adapters.secrets import SecretsManagerStore
        from controlplane.core.ports import ProviderCredentials
        from controlplane.service.cancel import CancelService

        settings = config.get()

        def clients(service: str, credentials: ProviderCredentials, region: str) -> Any:
            return aws.provider_client(service, credentials, region)

        _cancel = CancelService(
            job_store(),
            DynamoProviderStore(aws.resource("dynamodb").Table(settings.state_table)),
            SecretsManagerStore(aws.client("secretsmanager"), settings.secrets_prefix),
            clients,
        )
    return _cancel


def job_store() -> DynamoJobStore:
    """The jobs table, publishing a Job State Change event for every state change when EVENT_BUS_NAME is set (its
    EventBridge client made at the first state change: many first calls change none)."""
    from controlplane import config
    from controlplane.adapters import aws
    from controlplane.adapters.dynamodb import DynamoJobStore
    from controlplane.adapters.events import JobEventPublisher

    settings = config.get()
    events = aws.lazy_client("events")
    publisher = JobEventPublisher(events, settings.event_bus_name) if settings.event_bus_name else None
    store = DynamoJobStore(aws.resource("dynamodb").Table(settings.jobs_table))
    released = _releaser(store)  # an ended job gives back what it held (docs/budgets.md)
    # Booked first, then published: the ended job's event brings the reconcile function to admit the team's queue,
    # which must find the job's claim released already.
    # A cancelled job or an ended attempt: its relay shard is nudged first, so the instance stops soonest.
    store.listener = _Listeners(_relay_nudger(), released, publisher)
    return store


def _relay_nudger() -> Any:
    """The listener that nudges a job's relay shard when the job is cancelled or its attempt ends (RECOVERING): the
    shard's loop for it then stops the job on its instance at once instead of at its next status read
    (docs/relay-fleet.md). Best effort, never raises: the loop reads the job every `nudged_check_seconds` anyway."""
    from controlplane.core.lifecycle import JobStatus

    nudged_states = {JobStatus.CANCELLED, JobStatus.RECOVERING}
    streaming = {JobStatus.PROVISIONING, JobStatus.RUNNING, JobStatus.RECOVERING}
    fleet: Any = None

    def on_transition(before: Any, after: Any) -> None:
        nonlocal fleet
        if after.status not in nudged_states or before is None or before.status not in streaming:
            return
        try:
            if fleet is None:
                from controlplane import config
                from controlplane.adapters import aws
                from controlplane.adapters.relay_fleet import DynamoFleetStore

                settings = config.get()
                dynamodb = aws.resource("dynamodb")
                fleet = DynamoFleetStore(dynamodb.Table(settings.state_table), dynamodb.Table(settings.jobs_table))
            shard_id = fleet.shard_of(after.job_id)
            if shard_id is not None:
                fleet.nudge(shard_id, after.job_id)
        except Exception:
            logger.warning("could not nudge the job's relay shard", extra={"job_id": after.job_id}, exc_info=True)

    return on_transition


def _releaser(store: DynamoJobStore) -> Any:
    """The listener that books an ended job (AdmissionService.on_transition), built at the first job that ends: a
    relay shard's first call does not import admission."""
    service: AdmissionService | None = None

    def on_transition(before: Any, after: Any) -> None:
        nonlocal service
        if not after.status.terminal:
            return
        if service is None:
            service = _admission_over(store)
        service.on_transition(before, after)

    return on_transition


class _Listeners:
    """One job-store listener calling each of `chain` in order (a None is skipped)."""

    def __init__(self, *listeners: Any) -> None:
        self.chain = [listener for listener in listeners if listener is not None]

    def __call__(self, before: Any, after: Any) -> None:
        for listener in self.chain:
            listener(before, after)


def _admission_over(jobs: DynamoJobStore) -> AdmissionService:
    """Per-team limits and the queue (service/admission.py) over a job store."""
    from controlplane import config
    from controlplane.adapters import aws
    from controlplane.adapters.admission import DynamoAdmissionStore
    from controlplane.adapters.workflow import StepFunctionsStarter
    from controlplane.service.admission import AdmissionService

    settings = config.get()

    def starter() -> StepFunctionsStarter | None:
        """Only the functions given STATE_MACHINE_ARN (the API, the reconcile function) start workflows; read at
        use (the local runtime runs every function's handler in one process)."""
        arn = config.get().state_machine_arn
        return StepFunctionsStarter(aws.client("stepfunctions"), arn) if arn else None

    store = DynamoAdmissionStore(aws.resource("dynamodb").Table(settings.state_table))
    return AdmissionService(store, jobs, starter, settings.shutdown_grace_seconds)


def admission() -> AdmissionService:
    """The admission service (the API's limits and usage routes, submissions, the reconciler's sweep)."""
    global _admission
    if _admission is None:
        _admission = _admission_over(job_store())
    return _admission


def instance_events() -> InstanceEventsService:
    global _instance_events
    if _instance_events is None:
        with _first_wiring():
            from controlplane import config
            from controlplane.adapters import aws
            from controlplane.adapters.dynamodb import DynamoProviderStore
            from controlplane.adapters.logs import DynamoLogStore
            from controlplane.adapters.secrets import SecretsManagerStore
            from controlplane.core.ports import ProviderCredentials
            from controlplane.service.instance_events import InstanceEventsService
            from controlplane.service.relay import ProviderInstanceLocator

            settings = config.get()
            logs = DynamoLogStore(aws.resource("dynamodb").Table(settings.logs_table), settings.log_retention_days)
            state = aws.resource("dynamodb").Table(settings.state_table)
            secrets = SecretsManagerStore(aws.client("secretsmanager"), settings.secrets_prefix)

            def clients(service: str, credentials: ProviderCredentials, region: str) -> Any:
                return aws.provider_client(service, credentials, region)

            reasons = ProviderInstanceLocator(DynamoProviderStore(state), secrets, clients)
            _instance_events = InstanceEventsService(job_store(), logs, reasons)
    return _instance_events


def upload_store() -> DynamoUploadStore:
    """Upload records in the state table (adapters/uploads.py): what submit and intake check a job's uploads in."""
    from controlplane import config
    from controlplane.adapters import aws
    from controlplane.adapters.uploads import DynamoUploadStore

    return DynamoUploadStore(aws.resource("dynamodb").Table(config.get().state_table))


def _artifacts_client() -> Any:
    """The S3 client for the artifacts bucket (adapters/artifacts.py s3_client()), one per container (the relay and
    the API wire two or three users of it), made at its first use (aws.Lazy): making it reads S3's model, about
    40 ms of a cold start, and a relay shard needs it only when a job's scripts or grants do."""
    global _artifacts_s3
    if _artifacts_s3 is None:
        from controlplane.adapters import artifacts, aws

        _artifacts_s3 = aws.Lazy(artifacts.s3_client)
    return _artifacts_s3


def _artifact_pages() -> Any:
    """The artifacts bucket with output pages (adapters/uploads.py); None without ARTIFACT_BUCKET."""
    from controlplane import config
    from controlplane.adapters.uploads import ArtifactPages

    bucket = config.get().artifact_bucket
    return ArtifactPages(_artifacts_client(), bucket) if bucket else None


def uploads() -> UploadService:
    """POST /uploads and friends (service/uploads.py)."""
    global _uploads
    if _uploads is None:
        from controlplane import config
        from controlplane.adapters import artifacts
        from controlplane.service.uploads import UploadService, UploadSettings

        _uploads = UploadService(
            upload_store(),
            _artifact_pages(),
            UploadSettings(expiry_days=config.get().artifact_expiry_days),
            artifacts.choose_part_size,
        )
    return _uploads


def outputs() -> OutputsService:
    """GET /jobs/{id}/outputs (service/outputs.py)."""
    global _outputs
    if _outputs is None:
        from controlplane.service.outputs import OutputsService

        _outputs = OutputsService(job_store(), _artifact_pages())
    return _outputs


def get() -> Services:
    global _services
    if _services is None:
        with _first_wiring():
            _services = _from_environment()
    return _services


def pipeline() -> Pipeline:
    """The launch workflow's services (built on first use: the API Lambda never pays for them)."""
    global _pipeline
    if _pipeline is None:
        with _first_wiring():
            _pipeline = _pipeline_from_environment()
    return _pipeline


def relayer() -> RelayService:
    """The relay's service, which a relay shard follows its jobs with (handlers/relay_shard.py): the pipeline's when
    one is wired or installed (use()), else built alone, so a shard's first call does not pay for the other steps'
    services (intake, bootstrap, launch: their modules and objects)."""
    global _relayer
    if _pipeline is not None:
        return _pipeline.relayer
    if _relayer is None:
        with _first_wiring():
            _relayer = _relay_from_environment()
    return _relayer


def use(services: Services | None, workflow: Pipeline | None = None) -> None:
    """Install (or with None, forget) the services the handlers use."""
    global _services, _pipeline, _relayer, _instance_events, _cancel, _reconciler, _uploads, _outputs, _artifacts_s3
    global _admission
    _services = services
    _admission = None
    _artifacts_s3 = None
    _uploads = None
    _outputs = None
    _pipeline = workflow
    _relayer = None
    _instance_events = None
    _cancel = None
    _reconciler = None


def _from_environment() -> Services:
    from controlplane import config
    from controlplane.adapters import aws
    from controlplane.adapters.dynamodb import DynamoProviderStore, DynamoTeamStore
    from controlplane.adapters.identity import StsIdentityVerifier
    from controlplane.adapters.logs import DynamoLogStore
    from controlplane.adapters.secrets import SecretsManagerStore
    from controlplane.adapters.workflow import StepFunctionsStarter
    from controlplane.service.jobs import JobService
    from controlplane.service.providers import ProviderService
    from controlplane.service.teams import TeamService

    settings = config.get()
    dynamodb = aws.resource("dynamodb")
    state = dynamodb.Table(settings.state_table)
    jobs = job_store()
    providers = DynamoProviderStore(state)
    return Services(
        teams=TeamService(DynamoTeamStore(state)),
        providers=ProviderService(
            providers,
            jobs,
            SecretsManagerStore(aws.client("secretsmanager"), settings.secrets_prefix),
            StsIdentityVerifier(),
        ),
        jobs=JobService(
            jobs,
            providers,
            StepFunctionsStarter(aws.client("stepfunctions"), settings.state_machine_arn),
            DynamoLogStore(dynamodb.Table(settings.logs_table), settings.log_retention_days),
            SecretsManagerStore(aws.client("secretsmanager"), settings.secrets_prefix),
            uploads=upload_store(),
            scripts=_artifact_pages(),
            admission=admission(),
        ),
        admission=admission(),
    )


def _instance_grants(settings: Any) -> Any:
    """The relay's issuer of instances' S3 grants; None when the stack has no artifacts bucket configured."""
    from controlplane.adapters import artifacts, aws
    from controlplane.service.job_io import ArtifactSettings, InstanceGrants

    chosen = ArtifactSettings(
        bucket=settings.artifact_bucket,
        role_arn=settings.instance_transfer_role_arn,
        region=settings.region,
        endpoint_url=settings.endpoint_url,
    )
    if not chosen.enabled:
        return None
    store = artifacts.ArtifactStore(_artifacts_client(), chosen.bucket)
    return InstanceGrants(store, aws.lazy_client("sts"), chosen)  # both made when a job's grants are first issued


def _provider_clients() -> Any:
    """Clients acting as a provider (aws.provider_client), looked up per call (tests observe it)."""
    from controlplane.adapters import aws
    from controlplane.core.ports import ProviderCredentials

    def clients(service: str, credentials: ProviderCredentials, region: str) -> Any:
        return aws.provider_client(service, credentials, region)

    return clients


def _relay_from_environment() -> RelayService:
    """The relay's service and what it needs only: a relay shard wires nothing else. Its Secrets Manager client is
    made at a job loop's first use, not by the shard's first tick (which reads and heartbeats its shard item)."""
    from controlplane import config
    from controlplane.adapters import aws
    from controlplane.adapters.dynamodb import DynamoProviderStore
    from controlplane.adapters.logs import DynamoLogStore
    from controlplane.adapters.secrets import SecretsManagerStore
    from controlplane.adapters.ssh import SshConnector
    from controlplane.service.relay import ProviderInstanceLocator, RelayService, RelaySettings

    settings = config.get()
    dynamodb = aws.resource("dynamodb")
    jobs = job_store()
    secrets = SecretsManagerStore(aws.lazy_client("secretsmanager"), settings.secrets_prefix)
    locator = ProviderInstanceLocator(
        DynamoProviderStore(dynamodb.Table(settings.state_table)), secrets, _provider_clients()
    )
    return RelayService(
        jobs,
        DynamoLogStore(dynamodb.Table(settings.logs_table), settings.log_retention_days),
        secrets,
        locator,
        SshConnector(),
        RelaySettings(
            ssh_user=settings.relay_user,
            ssh_port=settings.ssh_port,
            budget_seconds=settings.relay_budget_seconds,
            flush_interval_seconds=settings.log_flush_seconds,
            lease_seconds=settings.relay_lease_seconds,
        ),
        lease=jobs,
        terminator=locator,
        grants=_instance_grants(settings),
        scripts=_artifact_pages(),
    )


def _pipeline_from_environment() -> Pipeline:
    """Every workflow step's services; the relay's is the one relayer() built if a shard in this process built it
    first (one RelayService per process)."""
    from controlplane import config
    from controlplane.adapters import aws
    from controlplane.adapters.dynamodb import (
        DynamoBootstrapCache,
        DynamoImageCache,
        DynamoProviderStore,
    )
    from controlplane.adapters.secrets import SecretsManagerStore
    from controlplane.service.bootstrap import BootstrapService, BootstrapSettings
    from controlplane.service.images import ImageResolver
    from controlplane.service.intake import IntakeService
    from controlplane.service.launch import LaunchService, LaunchSettings
    from controlplane.service.pipeline import Pipeline

    settings = config.get()
    dynamodb = aws.resource("dynamodb")
    state = dynamodb.Table(settings.state_table)
    jobs = job_store()
    providers = DynamoProviderStore(state)
    secrets = SecretsManagerStore(aws.client("secretsmanager"), settings.secrets_prefix)
    # Kept per (service, region, key) for the container's life; aws.provider_client is looked up per miss.
    clients = aws.ProviderClientCache()
    bootstrap = BootstrapService(
        DynamoBootstrapCache(state),
        secrets,
        clients,
        BootstrapSettings(resource_prefix=settings.resource_prefix, ssh_ingress_cidr=settings.ssh_ingress_cidr),
    )
    launch = LaunchService(
        jobs,
        secrets,
        clients,
        ImageResolver(DynamoImageCache(state), settings.image_cache_seconds),
        bootstrap,
        LaunchSettings(
            ssh_user=settings.ssh_user,
            relay_user=settings.relay_user,
            bundle_timeout_seconds=settings.bundle_timeout_seconds,
            drain_timeout_seconds=settings.drain_timeout_seconds,
            shutdown_grace_seconds=settings.shutdown_grace_seconds,
            boot_allowance_seconds=settings.boot_allowance_seconds,
            profile_propagation_wait_seconds=settings.profile_propagation_wait_seconds,
            capacity_retry_seconds=settings.capacity_retry_seconds,
        ),
    )
    relay = _relayer if _relayer is not None else _relay_from_environment()
    intake = IntakeService(jobs, providers, uploads=upload_store(), admission=admission())
    return Pipeline(jobs, providers, secrets, intake, bootstrap, launch, relay)
