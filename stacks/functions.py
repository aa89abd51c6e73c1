"""Functions: every Lambda of the control plane, from one code asset (lambdas/) and one dependency layer
(build/layer, made by scripts/build_layer.py without Docker), each with its own role holding only what its code
calls — the access table below is the single place that says which function may touch what.

The workflow steps come from controlplane.adapters.statemachine (HANDLERS, TIMEOUTS), the same definitions the local
runtime uses; the instance-events and reconcile handlers are the ones local/runtime.py deploys (tests/infra checks).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import cast

from aws_cdk import ArnFormat, CfnElement, Duration, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from controlplane.adapters import schema, statemachine
from stacks import asset_bundling, nag
from stacks.artifacts import Artifacts
from stacks.settings import Settings
from stacks.storage import Storage

RUNTIME = lambda_.Runtime.PYTHON_3_12  # the layer is built for exactly this (scripts/build_layer.py)
ARCHITECTURE = lambda_.Architecture.X86_64
RELAY_BUDGET_SECONDS = 600  # one relay invocation streams this long; its Lambda timeout (TIMEOUTS) leaves headroom
INSTANCE_EVENTS_HANDLER = "controlplane.handlers.events.instance_state"
RECONCILE_HANDLER = "controlplane.handlers.reconcile.handler"
POWERTOOLS = {
    "POWERTOOLS_SERVICE_NAME": "ec2jobs",
    "POWERTOOLS_METRICS_NAMESPACE": "ec2jobs",
    "POWERTOOLS_LOG_LEVEL": "INFO",
}
# Pydantic looks for plugins (importlib.metadata entry points, every distribution's metadata read) the first time
# it builds a model's validator: about 7 ms of a cold start. The layer has none (requirements.txt pins no plugin).
PYDANTIC = {"PYDANTIC_DISABLE_PLUGINS": "__all__"}


class Access(Enum):
    READ = "read"
    WRITE = "write"  # read and write


# DynamoDB actions the adapters issue: GetItem/BatchGetItem/Query to read (never Scan), Put/Update/Delete/BatchWrite
# to write.
# TransactWriteItems (providers) is authorised through the Put/Delete it contains.
TABLE_ACTIONS: dict[Access, tuple[str, ...]] = {
    Access.READ: ("dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:Query"),
    Access.WRITE: (
        "dynamodb:GetItem",
        "dynamodb:BatchGetItem",
        "dynamodb:Query",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:DeleteItem",
        "dynamodb:BatchWriteItem",
    ),
}


class SecretKind(Enum):
    """The control plane's secrets, by name under SECRETS_PREFIX (adapters/secrets.py)."""

    PROVIDER_KEYS = "teams/*/providers/*"  # <prefix>/teams/<team>/providers/<provider id>
    # <prefix>/teams/<team>/ssh-key. A trailing * rather than "-??????" (the ARN's random suffix) so that reading a
    # key that does not exist yet answers ResourceNotFound (which makes the code create it), not AccessDenied.
    TEAM_SSH_KEY = "teams/*/ssh-key*"


# S3 actions on the artifacts bucket (stacks/artifacts.py), objects under teams/ only. READ: downloads (presigned
# GET), listings (ListObjectsV2 is s3:ListBucket). WRITE adds uploads: s3:PutObject authorises PutObject, presigned
# PUTs, CreateMultipartUpload, UploadPart and CompleteMultipartUpload; aborting and listing an upload's parts are
# their own actions. No DeleteObject: the bucket's lifecycle rule removes objects.
BUCKET_ACTIONS: dict[Access, tuple[str, ...]] = {
    Access.READ: ("s3:ListBucket",),
    Access.WRITE: ("s3:ListBucket",),
}
OBJECT_ACTIONS: dict[Access, tuple[str, ...]] = {
    Access.READ: ("s3:GetObject",),
    Access.WRITE: ("s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"),
}

SECRET_READ = ("secretsmanager:GetSecretValue",)
SECRET_CREATE = ("secretsmanager:CreateSecret", "secretsmanager:TagResource")  # created with tags
SECRET_DELETE = ("secretsmanager:DeleteSecret",)


@dataclass(frozen=True)
class FunctionSpec:
    construct_id: str
    handler: str
    description: str
    timeout_seconds: int
    memory_mb: int = 256
    tables: Mapping[str, Access] = field(default_factory=dict)  # schema logical name → access
    secrets: Mapping[SecretKind, tuple[str, ...]] = field(default_factory=dict)
    publishes_events: bool = False  # its job store puts Job State Change events (events.py grants PutEvents)
    artifacts: Access | None = None  # the artifacts bucket (use_artifacts grants it and sets ARTIFACT_*)
    # may assume InstanceTransferRole (named in its trust policy) to mint an instance's per-job S3 credentials
    assumes_transfer_role: bool = False


def _step(
    step: str,
    description: str,
    tables: Mapping[str, Access],
    secrets: Mapping[SecretKind, tuple[str, ...]] | None = None,
    artifacts: Access | None = None,
    assumes_transfer_role: bool = False,
) -> FunctionSpec:
    return FunctionSpec(
        construct_id="".join(part.capitalize() for part in step.split("_")),
        handler=statemachine.HANDLERS[step],
        description=f"ec2jobs workflow: {description}",
        timeout_seconds=statemachine.TIMEOUTS[step],
        tables=tables,
        secrets=secrets or {},
        publishes_events=True,  # every step's job store publishes Job State Change events
        artifacts=artifacts,
        assumes_transfer_role=assumes_transfer_role,
    )


STATE, JOBS, LOGS = schema.STATE.logical_name, schema.JOBS.logical_name, schema.LOGS.logical_name
R, RW = Access.READ, Access.WRITE

API = FunctionSpec(
    construct_id="Api",
    handler="controlplane.handlers.api.handler",
    description="ec2jobs HTTP API (behind API Gateway)",
    timeout_seconds=29,  # API Gateway's integration timeout
    memory_mb=512,
    tables={STATE: RW, JOBS: RW, LOGS: R},
    # Adding a provider stores its key, deleting it deletes the secret; cancelling a job reads the key to terminate
    # the job's instance with it.
    secrets={SecretKind.PROVIDER_KEYS: SECRET_READ + SECRET_CREATE + SECRET_DELETE},
    publishes_events=True,
    # Presigns uploads (workdir, file_mounts; multipart: Create/Complete/Abort, ListParts) and downloads of outputs,
    # lists a job's outputs.
    artifacts=RW,
    assumes_transfer_role=True,
)
AUTHORIZER = FunctionSpec(
    construct_id="Authorizer",
    handler="controlplane.handlers.authorizer.handler",
    description="ec2jobs API Gateway TOKEN authorizer (bearer token to team)",
    timeout_seconds=10,
    memory_mb=512,
    tables={STATE: R},
)
STEPS: dict[str, FunctionSpec] = {
    # STATE: write for admission (docs/budgets.md): a submission's claim or queue entry in its team's ledger, and
    # every function that can end a job books it there (the job store's listener).
    "validate": _step("validate", "validate the submission, record the job", tables={JOBS: RW, STATE: RW}),
    "bootstrap": _step(
        "bootstrap",
        "the team's security group, key pair and instance role in the provider's account",
        tables={JOBS: RW, STATE: RW},  # STATE: providers, the bootstrap cache
        secrets={SecretKind.PROVIDER_KEYS: SECRET_READ, SecretKind.TEAM_SSH_KEY: SECRET_READ + SECRET_CREATE},
    ),
    "launch": _step(
        "launch",
        "start the job's instance",
        tables={JOBS: RW, STATE: RW},  # STATE: providers, the AMI cache, forgetting a stale bootstrap record
        secrets={SecretKind.PROVIDER_KEYS: SECRET_READ, SecretKind.TEAM_SSH_KEY: SECRET_READ + SECRET_CREATE},
    ),
    # Puts the job on a relay shard (the relay fleet's items in STATE, the enrolment on the job) and returns; the
    # execution waits for the shard's callback (docs/relay-fleet.md).
    "relay": _step("relay", "enroll the job on a relay shard", tables={JOBS: RW, STATE: RW}),
    "recover": _step(
        "recover",
        "end an attempt that relaunches: terminate its instance, begin the next attempt",
        tables={JOBS: RW, STATE: RW, LOGS: R},  # LOGS: where the next attempt's marker goes (the committed offset)
        secrets={SecretKind.PROVIDER_KEYS: SECRET_READ},
    ),
    "record_failure": _step(
        "record_failure",
        "end a failed job, terminate what it launched",
        tables={JOBS: RW, STATE: RW, LOGS: RW},
        secrets={SecretKind.PROVIDER_KEYS: SECRET_READ},
    ),
}
INSTANCE_EVENTS = FunctionSpec(
    construct_id="InstanceEvents",
    handler=INSTANCE_EVENTS_HANDLER,
    description="ec2jobs EC2 instance state changes, recorded on the instance's job",
    timeout_seconds=30,
    # STATE + the provider's key: DescribeInstances' StateReason tells a spot reclaim whose warning was missed
    # (EC2 state-change events carry no reason). STATE: write to book the jobs it ends (admission's ledger).
    tables={JOBS: RW, STATE: RW, LOGS: RW},
    secrets={SecretKind.PROVIDER_KEYS: SECRET_READ},
    publishes_events=True,
)
RECONCILE = FunctionSpec(
    construct_id="Reconcile",
    handler=RECONCILE_HANDLER,
    description="ec2jobs reconciler (every minute): every job ends, every instance dies",
    timeout_seconds=120,  # one DescribeInstances per provider and region; runs are idempotent if they overlap
    tables={JOBS: RW, STATE: RW, LOGS: RW},  # STATE: providers, bootstrapped regions; admission's ledgers (write)
    secrets={SecretKind.PROVIDER_KEYS: SECRET_READ},
    publishes_events=True,
)
RELAY_SHARD = FunctionSpec(
    construct_id="RelayShard",
    handler=statemachine.FLEET_HANDLER,
    description="ec2jobs relay shard: streams up to 50 jobs' output over SSH into the logs table",
    timeout_seconds=statemachine.TIMEOUTS["relay_shard"],
    memory_mb=512,  # up to 50 SSH sessions and their writers; CPU scales with memory
    tables={JOBS: RW, STATE: RW, LOGS: RW},  # STATE: its shard item, providers
    # Reads the team's key, never creates one: a key made now could not log in to an instance already running.
    secrets={SecretKind.PROVIDER_KEYS: SECRET_READ, SecretKind.TEAM_SSH_KEY: SECRET_READ},
    publishes_events=True,
    # Hands each instance its start bundle and per-job S3 credentials (InstanceTransferRole, narrowed by a session
    # policy), reads and writes the jobs' objects.
    artifacts=RW,
    assumes_transfer_role=True,
)
FUNCTIONS: tuple[FunctionSpec, ...] = (API, AUTHORIZER, *STEPS.values(), INSTANCE_EVENTS, RECONCILE, RELAY_SHARD)


def reserved_concurrency(settings: Settings) -> dict[str, int]:
    """Reserved concurrency by function construct id (only those that have one). The workflow steps share the
    unreserved pool with nothing of ours, so a running job's relay never takes what these need."""
    reserved = {
        API.construct_id: settings.api_reserved_concurrency,
        AUTHORIZER.construct_id: settings.authorizer_reserved_concurrency,
        INSTANCE_EVENTS.construct_id: settings.instance_events_reserved_concurrency,
        RECONCILE.construct_id: settings.reconcile_reserved_concurrency,
    }
    return {construct_id: value for construct_id, value in reserved.items() if value > 0}


class Functions(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, storage: Storage, settings: Settings) -> None:
        super().__init__(scope, construct_id)
        if not (settings.layer_dir / "python").is_dir():
            raise FileNotFoundError(
                f"{settings.layer_dir}/python is missing: build the dependency layer first (make layer)"
            )
        stack = Stack.of(self)
        # lambdas/ with its CPython 3.12 bytecode, compiled at synth when this machine has a 3.12, else as source
        # (stacks/asset_bundling.py; no Docker either way)
        code = asset_bundling.code_asset(RUNTIME)
        self.layer = lambda_.LayerVersion(
            self,
            "Dependencies",
            # with its CPython 3.12 bytecode when the build machine had a 3.12 (scripts/build_layer.py)
            code=lambda_.Code.from_asset(str(settings.layer_dir), exclude=[".stamp"]),
            compatible_runtimes=[RUNTIME],
            compatible_architectures=[ARCHITECTURE],
            description="ec2jobs runtime dependencies (requirements.txt) for CPython 3.12 x86_64",
        )
        environment = {
            "STATE_TABLE": storage.state.table_name,
            "JOBS_TABLE": storage.jobs.table_name,
            "LOGS_TABLE": storage.logs.table_name,
            "SECRETS_PREFIX": settings.secrets_prefix,
            "RESOURCE_PREFIX": settings.resource_prefix,
            "SSH_INGRESS_CIDR": settings.ssh_ingress_cidr,
            "LOG_RETENTION_DAYS": str(settings.log_chunk_ttl_days),
            "RELAY_BUDGET_SECONDS": str(RELAY_BUDGET_SECONDS),
            **POWERTOOLS,
            **PYDANTIC,
        }
        self.functions: dict[str, lambda_.Function] = {}
        self.publishers: list[lambda_.Function] = []
        reserved = reserved_concurrency(settings)
        for spec in FUNCTIONS:
            role = iam.Role(
                self,
                f"{spec.construct_id}Role",
                assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
                description=f"{spec.description}: only what its code calls",
            )
            log_group = logs.LogGroup(self, f"{spec.construct_id}Logs", retention=settings.log_retention)
            log_group.grant_write(role)  # instead of AWSLambdaBasicExecutionRole's logs on every group
            function = lambda_.Function(
                self,
                spec.construct_id,
                code=code,
                handler=spec.handler,
                runtime=RUNTIME,
                architecture=ARCHITECTURE,
                layers=[self.layer],
                memory_size=spec.memory_mb,
                timeout=Duration.seconds(spec.timeout_seconds),
                description=spec.description,
                environment=dict(environment),
                role=role,
                log_group=log_group,
                tracing=lambda_.Tracing.ACTIVE,
                reserved_concurrent_executions=reserved.get(spec.construct_id),
            )
            for logical_name, access in spec.tables.items():
                storage.tables[logical_name].grant(function, *TABLE_ACTIONS[access])
            for kind, actions in spec.secrets.items():
                iam.Grant.add_to_principal(
                    grantee=function, actions=list(actions), resource_arns=[secret_arn(stack, settings, kind)]
                )
            self._acknowledge(function, role, spec, storage, settings)
            self.functions[spec.construct_id] = function
            if spec.publishes_events:
                self.publishers.append(function)

    @property
    def transfer_role_users(self) -> list[iam.IRole]:
        """The Lambda roles InstanceTransferRole trusts (the functions whose spec says assumes_transfer_role)."""
        return [
            cast(iam.IRole, self.functions[spec.construct_id].role) for spec in FUNCTIONS if spec.assumes_transfer_role
        ]

    def use_artifacts(self, artifacts: Artifacts, settings: Settings) -> None:
        """The artifacts bucket and InstanceTransferRole, once they exist (the role's trust names these functions'
        roles, so it is made after them): each function's bucket grant from its spec, sts:AssumeRole on the role for
        those that assume it, and the ARTIFACT_* / INSTANCE_TRANSFER_ROLE_ARN variables controlplane.config reads."""
        for spec in FUNCTIONS:
            if spec.artifacts is None:
                if spec.assumes_transfer_role:
                    raise ValueError(f"{spec.construct_id} assumes InstanceTransferRole without bucket access")
                continue
            function = self.functions[spec.construct_id]
            iam.Grant.add_to_principal(
                grantee=function,
                actions=list(BUCKET_ACTIONS[spec.artifacts]),
                resource_arns=[artifacts.bucket.bucket_arn],
            )
            iam.Grant.add_to_principal(
                grantee=function, actions=list(OBJECT_ACTIONS[spec.artifacts]), resource_arns=[artifacts.objects_arn]
            )
            function.add_environment("ARTIFACT_BUCKET", artifacts.bucket.bucket_name)
            function.add_environment("ARTIFACT_EXPIRY_DAYS", str(settings.artifact_expiry_days))
            if spec.assumes_transfer_role:
                iam.Grant.add_to_principal(
                    grantee=function, actions=["sts:AssumeRole"], resource_arns=[artifacts.transfer_role.role_arn]
                )
                function.add_environment("INSTANCE_TRANSFER_ROLE_ARN", artifacts.transfer_role.role_arn)
            nag.acknowledge(
                function.role,
                "AwsSolutions-IAM5",
                "The artifacts bucket's objects are written at run time under teams/<team>/... (uploads, outputs, "
                "checkpoints), so they cannot be named in the template; the grant is bounded to that prefix of the "
                "control plane's own bucket, for only the actions this function calls (no DeleteObject).",
                finding=artifacts.objects_finding(),
            )

    @staticmethod
    def _acknowledge(
        function: lambda_.Function, role: iam.Role, spec: FunctionSpec, storage: Storage, settings: Settings
    ) -> None:
        """cdk-nag findings that are deliberate, each with the reason, for exactly the resources concerned."""
        stack = Stack.of(function)
        wildcards = {
            "Resource::*": (
                "X-Ray only: Lambda's active tracing adds xray:PutTraceSegments and xray:PutTelemetryRecords, which "
                "support no resource-level permissions (tests/infra checks that no other action has *)."
            )
        }
        indexed = {t.logical_name for t in schema.TABLES if t.indexes}
        for logical_name in spec.tables:
            if logical_name in indexed:
                table = cast(CfnElement, storage.tables[logical_name].node.default_child)
                logical_id = stack.resolve(stack.get_logical_id(table))
                wildcards[f"Resource::<{logical_id}.Arn>/index/*"] = (
                    f"The {logical_name} table's own GSIs (Query by team, status, active jobs, instance): the grant "
                    "is scoped to this table's indexes, which DynamoDB authorises as <table ARN>/index/<name>."
                )
        for kind in spec.secrets:
            arn = "arn:<AWS::Partition>:secretsmanager:<AWS::Region>:<AWS::AccountId>:secret:"
            wildcards[f"Resource::{arn}{secret_name_pattern(settings, kind)}"] = (
                "Secrets are created at run time, one per team (SSH key) or provider (keys), so they cannot be "
                "named in the template; the grant is bounded to the control plane's own names, "
                f"{settings.secrets_prefix}/teams/<team>/..., in this account and region, for only the actions "
                "this function calls."
            )
        for finding, reason in wildcards.items():
            nag.acknowledge(role, "AwsSolutions-IAM5", reason, finding=finding)
        nag.acknowledge(
            function.node.default_child,
            "AwsSolutions-L1",
            "python3.12 is pinned on purpose: the dependency layer's native wheels (pydantic-core, cryptography, "
            "bcrypt, PyNaCl) are built for exactly CPython 3.12 (scripts/build_layer.py); moving to a newer runtime "
            "means rebuilding the layer for it, in one change.",
        )

    @property
    def api(self) -> lambda_.Function:
        return self.functions[API.construct_id]

    @property
    def authorizer(self) -> lambda_.Function:
        return self.functions[AUTHORIZER.construct_id]

    @property
    def steps(self) -> dict[str, lambda_.Function]:
        """The workflow's functions by step name (statemachine.HANDLERS' keys)."""
        return {step: self.functions[spec.construct_id] for step, spec in STEPS.items()}

    @property
    def instance_events(self) -> lambda_.Function:
        return self.functions[INSTANCE_EVENTS.construct_id]

    @property
    def reconcile(self) -> lambda_.Function:
        return self.functions[RECONCILE.construct_id]

    @property
    def relay_shard(self) -> lambda_.Function:
        return self.functions[RELAY_SHARD.construct_id]


def secret_name_pattern(settings: Settings, kind: SecretKind) -> str:
    return f"{settings.secrets_prefix}/{kind.value}"


def secret_arn(stack: Stack, settings: Settings, kind: SecretKind) -> str:
    arn: str = stack.format_arn(
        service="secretsmanager",
        resource="secret",
        resource_name=secret_name_pattern(settings, kind),
        arn_format=ArnFormat.COLON_RESOURCE_NAME,
    )
    return arn
