"""Cold start (issue 17): a handler module's import leaves the services, boto3, Pydantic and paramiko to the first
call that needs them; the control plane's own clients come from one boto3 Session; the API and the relay make one
S3 client between them; X-Ray's patch runs once, at the API's first request. The API handler's import, which leaves
its routes to its first request too, is test_api_import_lazy.py's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from controlplane import config
from controlplane.adapters import artifacts, aws
from controlplane.core.ports import ProviderCredentials
from controlplane.handlers import container, relay_shard
from controlplane.service.relay_fleet import SHARD_CAPACITY

REPO = Path(__file__).resolve().parents[2]
_LOADED = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
print(json.dumps(sorted(sys.modules)))
"""
# What no handler's import needs: the wiring (services, adapters), the AWS SDK, SSH and its cryptography.
WIRING = ("controlplane.service", "controlplane.adapters.aws", "boto3", "paramiko", "cryptography", "nacl")


def _loaded_by(module: str) -> set[str]:
    """The modules importing `module` loads, in a fresh interpreter."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO / "lambdas")}
    result = subprocess.run(
        [sys.executable, "-c", _LOADED, module], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout))


def _under(modules: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in prefixes))


@pytest.mark.parametrize("handler", ["authorizer", "workflow", "events", "reconcile"])
def test_a_handler_import_leaves_the_wiring_and_pydantic_to_its_first_call(handler: str) -> None:
    loaded = _loaded_by(f"controlplane.handlers.{handler}")
    assert "controlplane.handlers.container" in loaded
    assert not _under(loaded, (*WIRING, "pydantic", "controlplane.core.models"))


def test_the_relay_service_imports_paramiko_only_at_its_first_connect() -> None:
    """service/relay.py (which instance events wire for its locator) imports adapters/ssh.py, not paramiko."""
    loaded = _loaded_by("controlplane.service.relay")
    assert "controlplane.adapters.ssh" in loaded
    assert not _under(loaded, ("paramiko",))


@pytest.fixture
def fresh_wiring(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name, value in {
        "STATE_TABLE": "state",
        "JOBS_TABLE": "jobs",
        "LOGS_TABLE": "logs",
        "STATE_MACHINE_ARN": "arn:aws:states:us-east-1:123456789012:stateMachine:jobs",
        "EVENT_BUS_NAME": "bus",
        "ARTIFACT_BUCKET": "ec2jobs-artifacts",
        "INSTANCE_TRANSFER_ROLE_ARN": "arn:aws:iam::123456789012:role/transfer",
    }.items():
        monkeypatch.setenv(name, value)
    config.get.cache_clear()
    aws.client.cache_clear()
    aws.resource.cache_clear()
    container.use(None)
    yield
    container.use(None)
    aws.client.cache_clear()
    aws.resource.cache_clear()
    config.get.cache_clear()


def test_own_clients_come_from_one_session_until_cleared(fresh_wiring: None, monkeypatch: pytest.MonkeyPatch) -> None:
    sessions: list[Any] = []

    class Counted(boto3.session.Session):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            sessions.append(self)

    monkeypatch.setattr(aws.boto3.session, "Session", Counted)
    sts = aws.client("sts")
    assert aws.client("sts") is sts
    events, table = aws.client("events"), aws.resource("dynamodb")
    assert len(sessions) == 1
    assert events.meta.service_model.service_name == "events"
    assert table.meta.client.meta.service_model.service_name == "dynamodb"

    aws.client.cache_clear()  # the environment may have changed: a new Session, new clients
    assert aws.client("sts") is not sts
    assert len(sessions) == 2


def test_the_api_and_the_relay_share_one_s3_client_per_container(
    fresh_wiring: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[Any] = []
    real = artifacts.s3_client

    def counted() -> Any:
        made.append(real())
        return made[-1]

    monkeypatch.setattr(artifacts, "s3_client", counted)
    workflow = container.pipeline()  # the relay's artifact pages and its instance grants
    services = container.get()
    container.uploads()
    container.outputs()
    assert made == []  # made at its first use, not by the wiring
    assert workflow.relayer.grants is not None
    assert workflow.relayer.grants.store.s3.meta.service_model.service_name == "s3"
    assert len(made) == 1
    assert workflow.relayer.grants.store.s3.resolve() is made[0]
    assert container.uploads().bucket.s3.resolve() is made[0]
    assert services.jobs is not None

    container.use(None)  # tests and the local runtime start over: so does the client
    container.get().jobs.scripts.s3.resolve()
    assert len(made) == 2


def _recording(made: list[str], real: Any) -> Any:
    """aws.client's maker (session, service) → client, recording the services it makes clients of."""

    def make(session: Any, service: str) -> Any:
        made.append(service)
        return real(session, service)

    return make


def _publisher(relayer: Any) -> Any:
    """The job store's Job State Change publisher (its listener chain also books ended jobs: docs/budgets.md)."""
    return next(listener for listener in relayer.jobs.listener.chain if hasattr(listener, "client"))


def test_a_relay_shards_wiring_makes_only_the_clients_its_first_tick_uses(
    fresh_wiring: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[str] = []
    monkeypatch.setattr(aws.client, "_make", _recording(made, aws.client._make))
    real_s3 = artifacts.s3_client
    monkeypatch.setattr(artifacts, "s3_client", lambda: made.append("s3") or real_s3())
    monkeypatch.setattr(relay_shard, "_wired", {})
    relay_shard.wire()
    assert made == ["stepfunctions"]  # and the DynamoDB resource: the shard's item, its jobs' tasks
    relayer = container.relayer()
    assert not container._pipeline  # the other steps' services are not built
    assert relayer.grants is not None
    for lazy in (relayer.secrets.client, relayer.grants.sts, relayer.grants.store.s3, _publisher(relayer).client):
        assert isinstance(lazy, aws.Lazy)
        assert not lazy.made
    secrets = relayer.secrets.client.meta.service_model.service_name  # a job loop's first use makes it, only it
    assert (secrets, made) == ("secretsmanager", ["stepfunctions", "secretsmanager"])
    assert relayer.grants.sts.meta.service_model.service_name == "sts"
    assert relayer.grants.store.s3.meta.service_model.service_name == "s3"
    assert made == ["stepfunctions", "secretsmanager", "sts", "s3"]
    assert container.pipeline().relayer is relayer  # the workflow's steps in the same process share it


def test_a_lazy_client_is_made_once_when_threads_first_use_it_together() -> None:
    calls: list[int] = []
    started = threading.Barrier(8)

    def make() -> Any:
        calls.append(1)
        time.sleep(0.05)  # long enough for every thread to be waiting on it
        return object()

    lazy = aws.Lazy(make)
    got: list[Any] = []

    def use() -> None:
        started.wait()
        got.append(lazy.resolve())

    threads = [threading.Thread(target=use) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert len(got) == 8
    assert all(client is got[0] for client in got)
    assert lazy.made


def test_a_lazy_client_delegates_to_the_client() -> None:
    class Client:
        region = "eu-west-1"

        def describe(self, name: str) -> str:
            return f"described {name}"

    lazy = aws.Lazy(Client)
    assert lazy.describe("x") == "described x"
    assert lazy.region == "eu-west-1"
    with pytest.raises(AttributeError):
        lazy.missing  # noqa: B018


def test_a_relay_shards_clients_pool_enough_connections_for_all_its_job_loops(fresh_wiring: None) -> None:
    """A shard's up to SHARD_CAPACITY job loops share its clients, each loop with its log writer: with botocore's
    default pool (10), urllib3 warned "Connection pool is full" and closed the connections beyond it."""
    needed = 2 * SHARD_CAPACITY + 1  # every loop and its writer at once, and the shard's tick
    relay_shard._wired.clear()
    relay_shard.wire()
    store, callbacks, starter = relay_shard._fleet()
    relayer = container.relayer()
    assert relayer.grants is not None
    credentials = ProviderCredentials(access_key_id="AKIAFAKE", secret_access_key="fake")
    clients = {
        "dynamodb": store.state.meta.client,
        "jobs": relayer.jobs.table.meta.client,
        "logs": relayer.logs.table.meta.client,
        "stepfunctions": callbacks.client,
        "starter": starter.client,
        "secretsmanager": relayer.secrets.client.resolve(),
        "events": _publisher(relayer).client.resolve(),
        "sts": relayer.grants.sts.resolve(),
        "s3": relayer.grants.store.s3.resolve(),
        "ec2 (a provider's)": aws.provider_client("ec2", credentials, "us-east-1"),
    }
    small = {name: c.meta.config.max_pool_connections for name, c in clients.items()}
    assert {name: size for name, size in small.items() if size < needed} == {}
    relay_shard._wired.clear()


def test_the_api_patches_what_x_ray_traces_once_at_its_first_request(monkeypatch: pytest.MonkeyPatch) -> None:
    from controlplane.handlers import api

    patched: list[Any] = []
    monkeypatch.setattr(api.tracer, "patch", lambda modules=None: patched.append(modules))
    monkeypatch.setattr(api, "_patched", False)
    assert api.tracer.auto_patch is False  # not at import
    api._trace_aws_calls()
    api._trace_aws_calls()
    assert patched == [None]  # None: everything X-Ray supports, as auto_patch would


class FakeCollector:
    """The gc functions _first_wiring uses, recorded."""

    def __init__(self) -> None:
        self.enabled = True
        self.freezes = 0

    def isenabled(self) -> bool:
        return self.enabled

    def disable(self) -> None:
        self.enabled = False

    def enable(self) -> None:
        self.enabled = True

    def freeze(self) -> None:
        self.freezes += 1


def test_the_first_wiring_pauses_the_collector_then_freezes_what_it_built(monkeypatch: pytest.MonkeyPatch) -> None:
    collector = FakeCollector()
    monkeypatch.setattr(container, "gc", collector)
    monkeypatch.setattr(container, "_frozen", False)

    paused: list[bool] = []

    def failing_wiring() -> None:
        with container._first_wiring():
            paused.append(not collector.enabled)
            raise RuntimeError("no STATE_TABLE")

    with pytest.raises(RuntimeError):  # a failed wiring: collecting again, nothing frozen
        failing_wiring()
    assert paused == [True]
    assert collector.enabled
    assert collector.freezes == 0

    with container._first_wiring():
        assert not collector.enabled
    assert collector.enabled
    assert collector.freezes == 1

    with container._first_wiring():  # later wirings (tests, the local runtime) collect as usual
        assert collector.enabled
    assert collector.freezes == 1


def test_a_collector_turned_off_by_someone_else_stays_off(monkeypatch: pytest.MonkeyPatch) -> None:
    collector = FakeCollector()
    collector.enabled = False
    monkeypatch.setattr(container, "gc", collector)
    monkeypatch.setattr(container, "_frozen", False)
    with container._first_wiring():
        pass
    assert not collector.enabled
    assert collector.freezes == 1


def test_the_relay_lease_comes_from_the_environment(fresh_wiring: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """RELAY_LEASE_SECONDS (the fault matrix shortens it) reaches the relay's settings; 90 s when unset."""
    assert container.relayer().settings.lease_seconds == 90.0
    monkeypatch.setenv("RELAY_LEASE_SECONDS", "30")
    config.get.cache_clear()
    container.use(None)
    assert container.relayer().settings.lease_seconds == 30.0
