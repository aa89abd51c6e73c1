"""The embedded control plane: everything `ec2jobs local up`, `make demo` and the e2e tests run.

One emulator process (moto on loopback, with local/moto_patches.py: the workflow's Lambdas run in-process, EventBridge
delivers to Lambda and Step Functions, and the instance simulator turns launched instances into local sandboxes)
plus, in this process, the local API front (authorizer + api Lambda handlers behind an HTTP server on loopback).
The control plane's resources are created in the emulator from the same definitions the CDK stack uses: the
tables (adapters/schema.py), the state machine (adapters/statemachine.py) and the event patterns (adapters/events.py).
"""

from __future__ import annotations

import io
import json
import logging
import os
import threading
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

from local import emulator, faults, guard, users
from local.apigw import LocalApiGateway, LocalHttpApi
from local.resources import ControlPlaneNames, create_artifacts, create_tables

REPO = Path(__file__).resolve().parent.parent
SEED_POLICY_FILE = REPO / "policy" / "provider-policy.json"
PREFIX = "ec2jobs"
REGION = "us-east-1"
INSTANCE_EVENTS_HANDLER = "controlplane.handlers.events.instance_state"
RECONCILE_HANDLER = "controlplane.handlers.reconcile.handler"
RECONCILE_EVERY_SECONDS = 60.0  # the deployed schedule: rate(1 minute)
# Local tuning: short relay invocations so the workflow loops often, and a short drain wait.
LOCAL_SETTINGS = {
    "RELAY_BUDGET_SECONDS": "30",
    "DRAIN_TIMEOUT_SECONDS": "60",
    "LOG_FLUSH_SECONDS": "0.5",
    "SSH_PORT": "22" if os.geteuid() == 0 else "2222",  # sandboxes' sshd: port 22 like EC2 needs root
    "POWERTOOLS_LOG_LEVEL": "WARNING",
    "POWERTOOLS_METRICS_DISABLED": "true",
}


@dataclass
class LocalControlPlane:
    api_url: str
    token: str
    endpoint: str
    region: str
    team_id: str
    env: dict[str, str]
    state_machine_arn: str
    event_bus_name: str
    _emulator: emulator.EmulatorProcess
    _api: LocalHttpApi
    reconcile_function: str = ""
    _stopped: threading.Event = field(default_factory=threading.Event)

    def start_schedule(self, every: float = RECONCILE_EVERY_SECONDS) -> None:
        """What EventBridge's rate(1 minute) rule does when deployed: invoke the reconcile function (moto has no
        scheduler)."""

        def tick() -> None:
            client = boto3.client("lambda")
            while not self._stopped.wait(every):
                try:
                    client.invoke(FunctionName=self.reconcile_function, Payload=b"{}")
                except Exception:
                    logging.getLogger("ec2jobs.local").warning("reconcile tick failed", exc_info=True)

        threading.Thread(target=tick, daemon=True, name="reconcile-schedule").start()

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._api.stop()
        self._emulator.stop()

    def wait(self) -> None:
        self._stopped.wait()

    def issue_token(self, team_id: str) -> str:
        from controlplane.handlers import container

        return container.get().teams.issue_token(team_id)

    def issue_admin_token(self) -> str:
        """An admin token (limits, every team's usage; docs/budgets.md)."""
        from controlplane.handlers import container

        return container.get().teams.issue_admin().token


def control_plane_environment(
    names: ControlPlaneNames, endpoint: str, state_machine_arn: str, transfer_role_arn: str = ""
) -> dict[str, str]:
    """The Lambda environment of every control-plane function, locally (the artifacts bucket's name and
    InstanceTransferRole's ARN included: `create_artifacts` makes both)."""
    return (
        names.environment(state_machine_arn=state_machine_arn)
        | LOCAL_SETTINGS
        | {
            "INSTANCE_TRANSFER_ROLE_ARN": transfer_role_arn,
            "EVENT_BUS_NAME": f"{names.prefix}-bus",
            # the job's user and the relay's (real local users as root, else both are the current user)
            "SSH_USER": users.instance_users()[0],
            "RELAY_USER": users.instance_users()[1],
            "PROVIDER_ENDPOINT_URL": endpoint,
            "AWS_REGION": REGION,
            "POWERTOOLS_SERVICE_NAME": "ec2jobs",
        }
    )


def _zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:  # the code runs in-process (moto_patches); this is a placeholder
        archive.writestr("README.txt", "ec2jobs Lambda asset: handlers are imported from lambdas/controlplane")
    return buffer.getvalue()


def create_resources(names: ControlPlaneNames, endpoint: str) -> tuple[str, dict[str, str]]:
    """Tables, functions, state machine, event bus and rules in the emulator. Returns (state machine ARN, env)."""
    state_machine_arn, env, _ = _create_resources(names, endpoint, {})
    return state_machine_arn, env


def _create_resources(
    names: ControlPlaneNames, endpoint: str, overrides: dict[str, str]
) -> tuple[str, dict[str, str], dict[str, str]]:
    from controlplane.adapters import events, statemachine

    create_tables(boto3.client("dynamodb"), names)
    iam = boto3.client("iam")
    role = iam.create_role(
        RoleName=f"{names.prefix}-functions",
        AssumeRolePolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": ["lambda.amazonaws.com", "states.amazonaws.com"]},
                        "Action": "sts:AssumeRole",
                    }
                ],
            }
        ),
    )["Role"]["Arn"]
    # The artifacts bucket and InstanceTransferRole, which only the functions' role may assume (as deployed).
    transfer_role_arn = create_artifacts(boto3.client("s3"), iam, names, [role])
    lambdas = boto3.client("lambda")
    sfn = boto3.client("stepfunctions")
    # The workflow functions do not need the state machine's ARN; the API (in this process) does.
    base_env = control_plane_environment(names, endpoint, "", transfer_role_arn) | overrides
    base_env.pop("STATE_MACHINE_ARN", None)
    code = _zip()
    arns: dict[str, str] = {}
    handlers = dict(statemachine.HANDLERS) | {
        "instance_events": INSTANCE_EVENTS_HANDLER,
        "reconcile": RECONCILE_HANDLER,
        "relay_shard": statemachine.FLEET_HANDLER,
    }
    for step, handler in handlers.items():
        arns[step] = lambdas.create_function(
            FunctionName=f"{names.prefix}-{step.replace('_', '-')}",
            Runtime="python3.12",
            Role=role,
            Handler=handler,
            Code={"ZipFile": code},
            Timeout=statemachine.TIMEOUTS.get(step, 60),
            MemorySize=256,
            Environment={"Variables": base_env},
        )["FunctionArn"]
    state_machine_arn = sfn.create_state_machine(
        name=f"{names.prefix}-jobs",
        definition=json.dumps(statemachine.definition(arns, jobs_table=names.table("jobs"))),
        roleArn=role,
    )["stateMachineArn"]
    # The reconciler restarts dead relay loops (a relay-only execution): it needs the state machine, as deployed.
    lambdas.update_function_configuration(
        FunctionName=arns["reconcile"],
        Environment={"Variables": base_env | {"STATE_MACHINE_ARN": state_machine_arn}},
    )
    # The relay fleet (docs/relay-fleet.md): one execution per shard; the Relay step starts shards.
    fleet_arn = sfn.create_state_machine(
        name=f"{names.prefix}-relay-fleet",
        definition=json.dumps(statemachine.fleet_definition(arns["relay_shard"])),
        roleArn=role,
    )["stateMachineArn"]
    lambdas.update_function_configuration(
        FunctionName=arns["relay"], Environment={"Variables": base_env | {"RELAY_FLEET_ARN": fleet_arn}}
    )
    bus = base_env["EVENT_BUS_NAME"]
    eventbridge = boto3.client("events")
    eventbridge.create_event_bus(Name=bus)
    eventbridge.put_rule(
        Name=f"{names.prefix}-submissions", EventBusName=bus, EventPattern=json.dumps(events.SUBMISSION_PATTERN)
    )
    eventbridge.put_targets(
        Rule=f"{names.prefix}-submissions",
        EventBusName=bus,
        Targets=[{"Id": "workflow", "Arn": state_machine_arn, "RoleArn": role}],
    )
    eventbridge.put_rule(
        Name=f"{names.prefix}-jobs-ended", EventBusName=bus, EventPattern=json.dumps(events.JOB_ENDED_PATTERN)
    )
    eventbridge.put_targets(
        Rule=f"{names.prefix}-jobs-ended", EventBusName=bus, Targets=[{"Id": "reconcile", "Arn": arns["reconcile"]}]
    )
    eventbridge.put_rule(Name=f"{names.prefix}-instance-states", EventPattern=json.dumps(events.EC2_STATE_PATTERN))
    eventbridge.put_targets(
        Rule=f"{names.prefix}-instance-states", Targets=[{"Id": "instance-events", "Arn": arns["instance_events"]}]
    )
    eventbridge.put_rule(
        Name=f"{names.prefix}-spot-interruptions", EventPattern=json.dumps(events.SPOT_INTERRUPTION_PATTERN)
    )
    eventbridge.put_targets(
        Rule=f"{names.prefix}-spot-interruptions", Targets=[{"Id": "instance-events", "Arn": arns["instance_events"]}]
    )
    env = control_plane_environment(names, endpoint, state_machine_arn, transfer_role_arn) | overrides
    return state_machine_arn, env, arns


def start(
    workdir: Path = Path(".ec2jobs"),
    team_id: str = "default",
    api_port: int = 0,
    *,
    settings: dict[str, str] | None = None,
    reconcile_every: float = RECONCILE_EVERY_SECONDS,
    fault_plan: Path | None = None,
) -> LocalControlPlane:
    """Start the emulator (with the instance simulator), create the control plane in it, serve the API.

    `settings` override the functions' environment (e.g. shorter reconciler graces for tests); `fault_plan` turns
    on fault injection in the emulator (local/faults.py), driven by that plan file."""
    guard.check_environment()
    guard.install_network_guard()
    # The API's Powertools Metrics warns on every request that published no metric; locally that is noise.
    warnings.filterwarnings("ignore", message="No application metrics to publish")
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    guard.apply_isolated_environment("http://127.0.0.1:9")  # fake keys for the emulator process too
    process = emulator.start(
        simulate_instances=True,
        sandbox_dir=workdir / "instances",
        log_file=workdir / "emulator.log",
        env={"EC2JOBS_SANDBOX_SSH_PORT": LOCAL_SETTINGS["SSH_PORT"]}
        | ({faults.PLAN_ENV: str(fault_plan.resolve())} if fault_plan is not None else {}),
    )
    try:
        endpoint = process.info.endpoint
        guard.apply_isolated_environment(endpoint, REGION)
        boto3.setup_default_session()
        names = ControlPlaneNames(PREFIX)
        state_machine_arn, env, arns = _create_resources(names, endpoint, settings or {})
        os.environ.update(env)  # the API handlers run in this process
        from controlplane import config
        from controlplane.adapters import aws
        from controlplane.handlers import api, authorizer, container

        config.get.cache_clear()
        aws.client.cache_clear()
        aws.resource.cache_clear()
        container.use(None)
        token = container.get().teams.issue_token(team_id)
        front = LocalHttpApi(LocalApiGateway(api.handler, authorizer.handler, api.PUBLIC_ROUTES), port=api_port)
        front.start()
    except BaseException:
        process.stop()
        raise
    exported = env | {
        "EC2JOBS_API_URL": front.url,
        "EC2JOBS_TOKEN": token,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": guard.FAKE_ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": guard.FAKE_SECRET_ACCESS_KEY,
        "EC2JOBS_STATE_MACHINE_ARN": state_machine_arn,
    }
    plane = LocalControlPlane(
        api_url=front.url,
        token=token,
        endpoint=endpoint,
        region=REGION,
        team_id=team_id,
        env=exported,
        state_machine_arn=state_machine_arn,
        event_bus_name=env["EVENT_BUS_NAME"],
        _emulator=process,
        _api=front,
        reconcile_function=arns["reconcile"],
    )
    plane.start_schedule(reconcile_every)
    return plane


# -- helpers for the CLI, against a running local control plane (.ec2jobs/local.env) ----------------------------


def read_env(env_file: Path) -> dict[str, str]:
    if not env_file.exists():
        raise FileNotFoundError(f"{env_file} not found: start the local control plane with `ec2jobs local up`")
    values: dict[str, str] = {}
    for line in env_file.read_text().splitlines():
        line = line.strip().removeprefix("export ")
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip().strip("'\"")
    return values


def _use_env(env_file: Path) -> dict[str, str]:
    values = read_env(env_file)
    guard.install_network_guard()
    guard.apply_isolated_environment(guard.assert_loopback_url(values["AWS_ENDPOINT_URL"]), REGION)
    os.environ.update({k: v for k, v in values.items() if not k.startswith("EC2JOBS_")})
    boto3.setup_default_session()
    return values


def issue_token(env_file: Path, team_id: str | None) -> str:
    """A new token for `team_id` on the running local control plane (None: an admin token)."""
    _use_env(env_file)
    from controlplane import config
    from controlplane.handlers import container

    config.get.cache_clear()
    container.use(None)
    teams = container.get().teams
    return teams.issue_admin().token if team_id is None else teams.issue_token(team_id)


def emulated_provider_keys(env_file: Path) -> tuple[str, str]:
    """An IAM user in the emulator holding exactly the seed policy: the local stand-in for a team's AWS account."""
    _use_env(env_file)
    return create_provider_user()


def create_provider_user(name: str | None = None) -> tuple[str, str]:
    import uuid

    iam = boto3.client("iam")
    user = name or f"transformerlab-provider-{uuid.uuid4().hex[:6]}"
    iam.create_user(UserName=user)
    iam.put_user_policy(
        UserName=user, PolicyName="TransformerLabComputePolicy", PolicyDocument=SEED_POLICY_FILE.read_text()
    )
    key = iam.create_access_key(UserName=user)["AccessKey"]
    return str(key["AccessKeyId"]), str(key["SecretAccessKey"])


def describe(plane: LocalControlPlane) -> dict[str, Any]:
    return {"api_url": plane.api_url, "endpoint": plane.endpoint, "team": plane.team_id}
