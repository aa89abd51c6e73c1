"""The embedded control plane (local/runtime.py) as the benchmarks drive it: over HTTP like a user, with the
emulator's request recorder on hand, the API front's handler invocations timed, and observers that read state
without being mistaken for the control plane (their requests are tagged, see bench/awsops.py).

Differences from `ec2jobs local up`, on purpose: the reconciler is not invoked by the 60-second timer thread (so a
sweep never lands inside a measured window); benchmarks invoke it themselves where they measure it. Optionally the
relay streams with the deployed budget instead of the local 30 s.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

from bench.awsops import API_APP_ID, OBSERVER_CONFIG, Recorder
from local import guard, runtime

TERMINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
NO_TIMER = 7 * 24 * 3600.0  # the reconcile timer's first tick: never, within a benchmark


@dataclass(frozen=True)
class Invocation:
    """A handler call made in this process (the API front's authorizer and api Lambdas)."""

    handler: str
    started: float
    seconds: float


@dataclass
class Session:
    plane: runtime.LocalControlPlane
    recorder: Recorder
    workdir: Path
    invocations: list[Invocation] = field(default_factory=list)
    keys: dict[str, str] = field(default_factory=lambda: {guard.FAKE_ACCESS_KEY_ID: guard.FAKE_SECRET_ACCESS_KEY})
    _clients: dict[str, Any] = field(default_factory=dict)
    _tempdir: tempfile.TemporaryDirectory[str] | None = None

    # -- HTTP, like a user ----------------------------------------------------------------------------------

    def call(self, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(  # noqa: S310 - the loopback API front
            self.plane.api_url + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {token or self.plane.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def new_team(self, team_id: str) -> str:
        """A team and its token (the state table, as `ec2jobs local token` does)."""
        return self.plane.issue_token(team_id)

    def add_provider(self, token: str | None = None, name: str = "bench", region: str = "us-east-1") -> str:
        """An emulated AWS account (an IAM user holding exactly the seed policy) added through POST /providers."""
        key_id, secret = runtime.create_provider_user()
        self.keys[key_id] = secret  # the direct baseline signs the provider's calls with it (never printed)
        body = {"name": name, "region": region, "access_key_id": key_id, "secret_access_key": secret}
        status, answer = self.call("POST", "/providers", body, token)
        if status != 201:
            raise RuntimeError(f"POST /providers answered {status}: {answer}")
        return str(answer["provider_id"])

    def cancel(self, job_id: str, token: str | None = None) -> None:
        status, body = self.call("POST", f"/jobs/{job_id}/cancel", token=token)
        if status not in {200, 409}:  # 409: it ended already
            raise RuntimeError(f"POST /jobs/{job_id}/cancel answered {status}: {body}")

    def warm_up(self, provider_id: str, token: str | None = None) -> None:
        """One job to its end: the team's first launch bootstraps its resources (measured apart, in launch)."""
        task = {"name": "bench-warm-up", "run": "true", "provider_id": provider_id}
        status, body = self.call("POST", "/jobs", task, token)
        if status != 202:
            raise RuntimeError(f"POST /jobs answered {status}: {body}")
        self.wait_done(str(body["job_id"]))

    # -- observers (tagged: not counted as the control plane's calls) ----------------------------------------

    def client(self, service: str) -> Any:
        if service not in self._clients:
            self._clients[service] = boto3.client(service, config=OBSERVER_CONFIG)
        return self._clients[service]

    def table_name(self, logical: str) -> str:
        return str(self.plane.env[f"{logical.upper()}_TABLE"])

    def job(self, job_id: str) -> dict[str, Any]:
        item = self.client("dynamodb").get_item(
            TableName=self.table_name("jobs"), Key={"job_id": {"S": job_id}}, ConsistentRead=True
        )
        return dict(item.get("Item") or {})

    def wait_done(self, job_id: str, timeout: float = 180.0) -> dict[str, Any]:
        """Until the job ended, its instance (if any) is terminated and its workflow execution stopped."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            item = self.job(job_id)
            status = item.get("status", {}).get("S", "")
            instance_state = item.get("instance_state", {}).get("S")
            execution = item.get("execution_arn", {}).get("S")
            instance_ended = not item.get("instance_id") or instance_state == "terminated"
            if (
                status in TERMINAL
                and instance_ended
                and (not execution or self.execution_status(execution) != "RUNNING")
            ):
                return item
            time.sleep(0.2)
        raise TimeoutError(f"job {job_id} did not finish within {timeout:.0f} s")

    def wait_status(self, job_id: str, statuses: set[str], timeout: float = 120.0) -> float:
        """Poll until the job reaches one of `statuses`; returns when (time.time())."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.job(job_id).get("status", {}).get("S") in statuses:
                return time.time()
            time.sleep(0.05)
        raise TimeoutError(f"job {job_id} did not reach {sorted(statuses)} within {timeout:.0f} s")

    def execution_status(self, execution_arn: str) -> str:
        return str(self.client("stepfunctions").describe_execution(executionArn=execution_arn)["status"])

    def history(self, execution_arn: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"executionArn": execution_arn, "maxResults": 1000}
        while True:
            page = self.client("stepfunctions").get_execution_history(**kwargs)
            events += page["events"]
            if not page.get("nextToken"):
                return events
            kwargs["nextToken"] = page["nextToken"]

    def invoke(self, function_name: str, payload: Any) -> tuple[float, Any]:
        """A synchronous invocation through the emulator's Lambda API; (seconds, result)."""
        started = time.perf_counter()
        answer = self.client("lambda").invoke(FunctionName=function_name, Payload=json.dumps(payload).encode())
        seconds = time.perf_counter() - started
        return seconds, json.loads(answer["Payload"].read() or b"null")

    def function_name(self, step: str) -> str:
        return f"{runtime.PREFIX}-{step.replace('_', '-')}"

    def stop(self) -> None:
        self.recorder.close()
        self.plane.stop()
        if self._tempdir is not None:
            self._tempdir.cleanup()


def _timed(handler: Callable[..., Any], name: str, sink: list[Invocation]) -> Callable[..., Any]:
    def call(event: Any, context: Any) -> Any:
        started = time.time()
        clock = time.perf_counter()
        try:
            return handler(event, context)
        finally:
            sink.append(Invocation(name, started, time.perf_counter() - clock))

    return call


def start(workdir: Path | None = None, *, relay_budget_seconds: float | None = None) -> Session:
    """Start the embedded control plane for a benchmark (see the module docstring for what differs)."""
    holder = tempfile.TemporaryDirectory(prefix="ec2jobs-bench-") if workdir is None else None
    root = Path(holder.name) if holder is not None else workdir
    assert root is not None
    Recorder.configure(root / "requests.jsonl")
    settings = {"RELAY_BUDGET_SECONDS": str(int(relay_budget_seconds))} if relay_budget_seconds else {}
    plane = runtime.start(workdir=root / "plane", team_id="bench", settings=settings, reconcile_every=NO_TIMER)
    # The API handlers run in this process: tag their AWS calls (User-Agent "app/…") so that they can be told from
    # the workflow's, and rebuild their clients so that the tag applies. The emulator (started already) has no tag.
    os.environ["AWS_SDK_UA_APP_ID"] = API_APP_ID
    from controlplane.adapters import aws
    from controlplane.handlers import container

    aws.client.cache_clear()
    aws.resource.cache_clear()
    container.use(None)
    session = Session(plane, Recorder(plane.endpoint, root / "requests.jsonl"), root, _tempdir=holder)
    gateway = plane._api.gateway  # the API front's handlers run in this process: time them
    gateway.api_handler = _timed(gateway.api_handler, "controlplane.handlers.api.handler", session.invocations)
    gateway.authorizer_handler = _timed(
        gateway.authorizer_handler, "controlplane.handlers.authorizer.handler", session.invocations
    )
    return session
