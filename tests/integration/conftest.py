"""Integration fixtures: one IAM-enforcing emulator per session, the control plane's tables in it, and the
authorizer + api Lambdas behind the local API Gateway front."""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from local import emulator, guard
from local.apigw import HttpResponse, LocalApiGateway
from local.resources import ControlPlaneNames, create_artifacts, create_tables

REPO = Path(__file__).resolve().parents[2]
SEED_POLICY = json.loads((REPO / "policy" / "provider-policy.json").read_text())


class ScanForbidden(AssertionError):
    pass


def _refuse_scan(**_: Any) -> None:
    raise ScanForbidden("a DynamoDB Scan was issued; product paths must use a key or an index")


def fake_client(endpoint: str, service: str, region: str = "us-east-1") -> Any:
    """A client of an emulator with the fake keys (an emulator without IAM enforcement accepts them)."""
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=guard.FAKE_ACCESS_KEY_ID,
        aws_secret_access_key=guard.FAKE_SECRET_ACCESS_KEY,
    )


@pytest.fixture(scope="module")
def aws() -> Iterator[Callable[[str], Any]]:
    """A module's own emulator without IAM enforcement, as a client factory: aws("lambda")."""
    process = emulator.start()
    try:
        yield lambda service: fake_client(process.info.endpoint, service)
    finally:
        process.stop()


@pytest.fixture(scope="session")
def emu() -> Iterator[emulator.EmulatorInfo]:
    process = emulator.start(enforce_iam=True)
    try:
        yield process.info
    finally:
        process.stop()


@dataclass
class ControlPlane:
    info: emulator.EmulatorInfo
    names: ControlPlaneNames
    state_machine_arn: str
    gateway: LocalApiGateway

    def admin(self, service: str) -> Any:
        return boto3.client(service)

    def call(self, method: str, path: str, token: str | None = None, **kwargs: Any) -> HttpResponse:
        headers = dict(kwargs.pop("headers", {}) or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return self.gateway.request(method, path, headers=headers, **kwargs)


@pytest.fixture(scope="session")
def control_plane(emu: emulator.EmulatorInfo) -> Iterator[ControlPlane]:
    with running_control_plane(emu) as plane:
        yield plane


@contextlib.contextmanager
def running_control_plane(emu: emulator.EmulatorInfo) -> Iterator[ControlPlane]:
    """A control plane with tables of its own in the emulator; on exit, this process is back to what it was (an
    outer control plane, if one was running, is usable again). Modules whose reconciler sweeps every active job use
    their own (`control_plane = module_control_plane()`), so that they do not sweep every other module's jobs."""
    saved = dict(os.environ)
    guard.apply_isolated_environment(emu.endpoint)
    os.environ["AWS_ACCESS_KEY_ID"] = emu.access_key_id  # the control plane's own (administrator) identity
    os.environ["AWS_SECRET_ACCESS_KEY"] = emu.secret_access_key
    boto3.setup_default_session()  # forget credentials an earlier test's default session resolved
    names = ControlPlaneNames(f"it{uuid.uuid4().hex[:6]}")
    create_tables(boto3.client("dynamodb"), names)
    create_artifacts(boto3.client("s3"), boto3.client("iam"), names, ["arn:aws:iam::123456789012:root"])
    state_machine_arn = boto3.client("stepfunctions").create_state_machine(
        name=f"{names.prefix}-jobs",
        definition=json.dumps({"StartAt": "Wait", "States": {"Wait": {"Type": "Pass", "End": True}}}),
        roleArn="arn:aws:iam::123456789012:role/ec2jobs-workflow",
    )["stateMachineArn"]
    os.environ.update(names.environment(state_machine_arn=state_machine_arn))

    from controlplane import config
    from controlplane.adapters import aws
    from controlplane.handlers import api, authorizer, container

    config.get.cache_clear()
    aws.client.cache_clear()
    aws.resource.cache_clear()
    container.use(None)
    aws.resource("dynamodb").meta.client.meta.events.register("before-call.dynamodb.Scan", _refuse_scan)
    gateway = LocalApiGateway(api.handler, authorizer.handler, api.PUBLIC_ROUTES)
    try:
        yield ControlPlane(emu, names, state_machine_arn, gateway)
    finally:
        container.use(None)
        config.get.cache_clear()
        aws.client.cache_clear()
        aws.resource.cache_clear()
        os.environ.clear()
        os.environ.update(saved)
        boto3.setup_default_session()
        if "STATE_TABLE" in saved:  # an outer control plane: its clients are made anew, with the same guard
            aws.resource("dynamodb").meta.client.meta.events.register("before-call.dynamodb.Scan", _refuse_scan)


def module_control_plane() -> Any:
    """A module-scoped `control_plane` fixture with tables of its own (assign it to `control_plane` in a module)."""

    @pytest.fixture(scope="module")
    def control_plane(emu: emulator.EmulatorInfo) -> Iterator[ControlPlane]:
        with running_control_plane(emu) as plane:
            yield plane

    return control_plane


@pytest.fixture
def new_team(control_plane: ControlPlane) -> Callable[[], str]:
    """Issue a token for a fresh team; returns the token."""
    from controlplane.handlers import container

    def make() -> str:
        return container.get().teams.issue_token(f"t-{uuid.uuid4().hex[:10]}")

    return make


@dataclass(frozen=True)
class Keys:
    access_key_id: str
    secret_access_key: str


@pytest.fixture
def provider_keys(control_plane: ControlPlane) -> Callable[..., Keys]:
    """An IAM user in the emulator holding exactly the given policy (the seed policy by default)."""

    def make(policy: dict[str, Any] | None = None) -> Keys:
        iam = control_plane.admin("iam")
        user = f"provider-{uuid.uuid4().hex[:8]}"
        iam.create_user(UserName=user)
        iam.put_user_policy(
            UserName=user, PolicyName="TransformerLabComputePolicy", PolicyDocument=json.dumps(policy or SEED_POLICY)
        )
        key = iam.create_access_key(UserName=user)["AccessKey"]
        return Keys(key["AccessKeyId"], key["SecretAccessKey"])

    return make


@pytest.fixture
def team_with_provider(
    control_plane: ControlPlane, new_team: Callable[[], str], provider_keys: Callable[..., Keys]
) -> tuple[str, str]:
    token = new_team()
    return token, register_provider(control_plane, token, provider_keys())


def register_provider(control_plane: ControlPlane, token: str, keys: Keys, name: str = "main") -> str:
    """POST /providers with these keys (us-east-1); returns the provider id."""
    body = {
        "name": name,
        "region": "us-east-1",
        "access_key_id": keys.access_key_id,
        "secret_access_key": keys.secret_access_key,
    }
    response = control_plane.call("POST", "/providers", token, body=body)
    assert response.status == 201, response.body
    return str(response.json()["provider_id"])


# -- the launch workflow ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tenant:
    """A team with a token and a provider whose IAM user holds exactly the seed policy."""

    token: str
    team_id: str
    provider_id: str
    keys: Keys


@pytest.fixture
def tenant(control_plane: ControlPlane, provider_keys: Callable[..., Keys]) -> Tenant:
    from controlplane.handlers import container

    team_id = f"t-{uuid.uuid4().hex[:10]}"
    token = container.get().teams.issue_token(team_id)
    keys = provider_keys()
    return Tenant(token, team_id, register_provider(control_plane, token, keys), keys)


class Workflow:
    """Runs the workflow's Lambda handlers in-process, in the order the state machine does."""

    def __init__(self) -> None:
        from local.lambda_context import LocalLambdaContext

        self.context = LocalLambdaContext

    def validate(self, raw: Any, execution_name: str | None = None, execution_arn: str | None = None) -> Any:
        from controlplane.handlers import workflow

        event = {"input": raw, "execution_name": execution_name, "execution_arn": execution_arn}
        return workflow.validate(event, self.context("validate"))

    def bootstrap(self, state: dict[str, Any]) -> Any:
        from controlplane.handlers import workflow

        return workflow.bootstrap(state, self.context("bootstrap"))

    def launch(self, state: dict[str, Any]) -> Any:
        from controlplane.handlers import workflow

        return workflow.launch(state, self.context("launch", timeout_seconds=180))  # the deployed timeout

    def recover(self, job_id: str, relay_owner: str) -> Any:
        from controlplane.handlers import workflow

        return workflow.recover({"job_id": job_id, "relay_owner": relay_owner}, self.context("recover"))

    def record_failure(self, state: dict[str, Any], error: dict[str, Any]) -> Any:
        from controlplane.handlers import workflow

        return workflow.record_failure(state | {"error": error}, self.context("record-failure"))

    def api_input(self, job_id: str, team_id: str) -> dict[str, str]:
        return {"source": "api", "job_id": job_id, "team_id": team_id}

    def run(self, job_id: str, team_id: str) -> dict[str, Any]:
        """Validate, then Bootstrap unless Validate passed the team's cached record (the `Bootstrapped?` choice),
        then Launch, bootstrapping again while Launch answers `bootstrap` (at most 3 times here)."""
        state = self.validate(self.api_input(job_id, team_id), job_id, f"arn:aws:states:::execution:x:{job_id}")
        if "bootstrap" not in state:
            state = self.bootstrap(state)
        state = self.launch(state)
        for _ in range(3):
            if state.get("launch", {}).get("next") != "bootstrap":
                break
            state = self.launch(self.bootstrap(state))
        return dict(state)


@pytest.fixture
def workflow(control_plane: ControlPlane) -> Iterator[Workflow]:
    from controlplane.handlers import container

    container.use(None)
    sleeps: list[float] = []
    pipeline = container.pipeline()
    pipeline.launcher.sleep = sleeps.append  # IAM-propagation backoff without waiting
    runner = Workflow()
    runner.sleeps = sleeps  # type: ignore[attr-defined]
    yield runner
    container.use(None)


@dataclass
class _Injected:
    code: str
    message: str
    times: int | None
    when: Callable[[dict[str, Any]], bool] | None = None  # only calls whose API parameters match


class ProviderCalls:
    """Observes (and can fail) every AWS call the control plane makes with a provider's keys."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.params: list[tuple[str, dict[str, Any]]] = []  # (operation, API parameters) in call order
        self._failures: dict[str, list[_Injected]] = {}
        self._after: dict[str, list[Callable[[], None]]] = {}

    def fail(
        self,
        operation: str,
        code: str,
        message: str = "",
        times: int | None = 1,
        when: Callable[[dict[str, Any]], bool] | None = None,
    ) -> None:
        """Make the next `times` calls of `operation` (e.g. "RunInstances") fail with this AWS error (None: all);
        with `when`, only the calls whose API parameters it accepts (e.g. spot requests)."""
        self._failures.setdefault(operation, []).append(_Injected(code, message, times, when))

    def after(self, operation: str, action: Callable[[], None]) -> None:
        """Run `action` once right after `operation` succeeded (e.g. simulate a crash)."""
        self._after.setdefault(operation, []).append(action)

    def requests(self, operation: str) -> list[dict[str, Any]]:
        return [params for name, params in self.params if name == operation]

    def _before(self, service: str, operation: str) -> Any:
        import types

        self.calls.append((service, operation))
        params = self.params[-1][1] if self.params and self.params[-1][0] == operation else {}
        queue = self._failures.get(operation, [])
        injected = next((i for i in queue if i.when is None or i.when(params)), None)
        if injected is None:
            return None
        if injected.times is not None:
            injected.times -= 1
            if injected.times <= 0:
                queue.remove(injected)
        parsed = {
            "Error": {"Code": injected.code, "Message": injected.message},
            "ResponseMetadata": {"HTTPStatusCode": 400},
        }
        return types.SimpleNamespace(status_code=400, headers={}, content=b""), parsed

    def _after_call(self, operation: str) -> None:
        pending = self._after.get(operation, [])
        if pending:
            pending.pop(0)()

    def wrap(self, factory: Callable[..., Any]) -> Callable[..., Any]:
        def make(service: str, credentials: Any, region: str) -> Any:
            client = factory(service, credentials, region)
            prefix = client.meta.service_model.signing_name

            def before(model: Any, **_: Any) -> Any:
                return self._before(prefix, model.name)

            def after(model: Any, **_: Any) -> None:
                self._after_call(model.name)

            def parameters(params: dict[str, Any], model: Any, **_: Any) -> None:
                self.params.append((model.name, dict(params)))

            client.meta.events.register("before-parameter-build.*.*", parameters)
            client.meta.events.register("before-call.*.*", before)
            client.meta.events.register("after-call.*.*", after)
            return client

        return make


@pytest.fixture
def provider_calls(control_plane: ControlPlane, monkeypatch: pytest.MonkeyPatch) -> ProviderCalls:
    from controlplane.adapters import aws

    calls = ProviderCalls()
    monkeypatch.setattr(aws, "provider_client", calls.wrap(aws.provider_client))
    return calls
