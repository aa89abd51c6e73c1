"""Fault injection for the local control plane: what the e2e fault matrix (tests/e2e/test_fault_matrix.py) breaks,
at the place where the real failure happens.

A plan file (JSON; its path in EC2JOBS_FAULTS_FILE) lists rules. The emulator process applies them and appends
every firing to `<plan>.fired.jsonl`, so a test proves that its fault really happened:

- `aws_error`    an AWS API call is answered with an error (throttling, capacity, quota, IAM propagation, revoked
                 keys, a denied TerminateInstances), in the emulator's HTTP front: the caller's SDK sees (and
                 retries) exactly what AWS would send;
- `crash_after`  a Lambda invocation dies right after an AWS call returned (after RunInstances, before the job
                 record was updated; mid-stream in the relay): the handler raises `Runtime.ExitError`, which is
                 what Step Functions reports for a Lambda whose runtime died;
- `lambda_error` an invocation of a control-plane function fails as the Lambda service would fail it, before the
                 handler runs or after it finished (its response lost);
- `ssh_drop`     the relay's SSH connection is cut after some bytes (its TCP socket is shut down under paramiko);
- `event`        EC2 events for a job's instance are dropped, delivered twice, or delayed (out of order);
- `down`         (a flag, not a rule) the whole control plane is stopped: its functions fail, invocations in
                 flight die, its workflow executions are stopped, events to its targets are lost. The emulated AWS
                 and the instances keep running.

Rules match on: `service`, `operation`, `job` (the job id of the Lambda invocation, of the instances a request
names, or found in the request), `region` (the region a request is signed for: the endpoint's), `zone` (a request
naming none gets the rule's first zone, as if AWS chose it), `access_key`, `contains`, `bytes` (ssh_drop: after this
many bytes of a stream); `skip` lets the first matches pass, `every` fires on every n-th match, `times` bounds the
firings. A test makes a fault end (say, capacity comes back) with `times`, or by removing the rule
(`FaultPlan.remove`). Test-side, FaultPlan writes plans and reads firings.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

PLAN_ENV = "EC2JOBS_FAULTS_FILE"
logger = logging.getLogger("ec2jobs.faults")

# The exception a Lambda invocation dies with: Step Functions names a crashed Python runtime "Runtime.ExitError".
RuntimeExit: type[Exception] = type("Runtime.ExitError", (Exception,), {"__module__": __name__})

current_job: contextvars.ContextVar[str | None] = contextvars.ContextVar("ec2jobs_fault_job", default=None)
in_lambda: contextvars.ContextVar[bool] = contextvars.ContextVar("ec2jobs_fault_in_lambda", default=False)


# -- the plan, as the test writes it ------------------------------------------------------------------------------


class FaultPlan:
    """Test side: write rules and the down flag; read which rules fired."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rules: list[dict[str, Any]] = []
        self.down = False
        self._lock = threading.Lock()  # tests add rules from several threads at once
        self._write()

    @property
    def fired_path(self) -> Path:
        return fired_path(self.path)

    def add(self, kind: str, **match: Any) -> str:
        rule_id = str(match.pop("id", None) or f"{kind}-{uuid.uuid4().hex[:8]}")
        with self._lock:
            self.rules.append({"id": rule_id, "kind": kind} | match)
            self._write()
        return rule_id

    def remove(self, rule_id: str) -> None:
        """Take a rule out of the plan: from now on it never fires (its firings stay recorded)."""
        with self._lock:
            self.rules = [rule for rule in self.rules if rule["id"] != rule_id]
            self._write()

    def set_down(self, down: bool) -> None:
        with self._lock:
            self.down = down
            self._write()

    def fired(self, rule_id: str | None = None) -> list[dict[str, Any]]:
        if not self.fired_path.exists():
            return []
        lines = [json.loads(line) for line in self.fired_path.read_text().splitlines() if line.strip()]
        return [line for line in lines if rule_id is None or line["rule"] == rule_id]

    def _write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"rules": self.rules, "down": self.down}))
        tmp.replace(self.path)


def fired_path(plan: Path) -> Path:
    return plan.with_name(plan.name + ".fired.jsonl")


# -- the emulator side ----------------------------------------------------------------------------------------------


class Faults:
    """The plan as the emulator process sees it (re-read when the file changes) and the firing bookkeeping."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._rules: list[dict[str, Any]] = []
        self._down = False
        self._matches: dict[str, int] = {}
        self._fired: dict[str, int] = {}
        self.on_down: list[Callable[[], None]] = []

    def _refresh(self) -> None:
        try:
            status = self.path.stat()
        except FileNotFoundError:
            return
        # Every write of the plan replaces the file (a new inode): the inode tells writes apart where the mtime
        # cannot (it advances at the kernel's clock tick, so two writes within a few ms share it).
        stamp = (status.st_ino, status.st_mtime_ns, status.st_size)
        if stamp == self._stamp:
            return
        plan = json.loads(self.path.read_text() or "{}")
        was_down = self._down
        self._stamp, self._rules, self._down = stamp, list(plan.get("rules", [])), bool(plan.get("down"))
        if self._down and not was_down:
            for hook in self.on_down:
                threading.Thread(target=hook, daemon=True, name="faults-down").start()

    def down(self) -> bool:
        with self._lock:
            self._refresh()
            return self._down

    def take(self, kind: str, **facts: Any) -> dict[str, Any] | None:
        """The first rule of `kind` matching these facts that fires now (its firing recorded), else None."""
        with self._lock:
            self._refresh()
            for rule in self._rules:
                if rule.get("kind") != kind or not _matches(rule, facts):
                    continue
                rule_id = str(rule["id"])
                seen = self._matches[rule_id] = self._matches.get(rule_id, 0) + 1
                if seen <= int(rule.get("skip", 0)):
                    continue
                if (seen - int(rule.get("skip", 0))) % int(rule.get("every", 1)) != 0:
                    continue
                if rule.get("times") is not None and self._fired.get(rule_id, 0) >= int(rule["times"]):
                    continue
                self._fired[rule_id] = self._fired.get(rule_id, 0) + 1
                record = {"rule": rule_id, "kind": kind, "at": time.time()}
                fact_names = {"service", "operation", "job", "region", "zone"}
                record |= {k: v for k, v in facts.items() if k in fact_names and v}
                with fired_path(self.path).open("a") as sink:
                    sink.write(json.dumps(record, default=sorted) + "\n")
                return rule
            return None


def _matches(rule: dict[str, Any], facts: dict[str, Any]) -> bool:
    if rule.get("bytes") is not None and int(facts.get("bytes", 0)) < int(rule["bytes"]):
        return False
    for name in ("service", "operation", "access_key", "region", "function", "when", "detail_type", "state"):
        wanted = rule.get(name)
        if wanted is not None and facts.get(name) not in (wanted if isinstance(wanted, list) else [wanted]):
            return False
    if rule.get("job") is not None:
        jobs = set(facts.get("jobs") or ())
        if facts.get("job"):
            jobs.add(facts["job"])
        if rule["job"] not in jobs and rule["job"] not in str(facts.get("body", "")):
            return False
    # A request naming no zone lets AWS choose: the rule's first zone (the one AWS would have picked) answers it.
    if rule.get("zone") is not None and (facts.get("zone") or rule["zone"][0]) not in rule["zone"]:
        return False
    return rule.get("contains") is None or str(rule["contains"]) in str(facts.get("body", ""))


_faults: Faults | None = None


def active() -> Faults | None:
    return _faults


# -- AWS errors, in the emulator's HTTP front -------------------------------------------------------------------


_CREDENTIAL = re.compile(r"Credential=([^/]+)/\d+/([^/]+)/([^/]+)/")


def request_facts(environ: dict[str, Any], body: bytes) -> dict[str, Any]:
    """Service, operation, access key and (for EC2) zone and the jobs of the named instances (pure but zone/jobs)."""
    match = _CREDENTIAL.search(str(environ.get("HTTP_AUTHORIZATION", "")))
    facts: dict[str, Any] = {"body": body.decode(errors="replace")}
    if match:
        facts |= {"access_key": match.group(1), "region": match.group(2), "service": match.group(3)}
    target = str(environ.get("HTTP_X_AMZ_TARGET", ""))
    form = parse_qs(facts["body"]) if not target and body else {}
    facts["operation"] = target.rpartition(".")[2] if target else (form.get("Action") or [""])[0]
    if facts.get("service") == "ec2":
        facts |= _ec2_facts(str(facts.get("region", "")), form)
    return facts


def _ec2_facts(region: str, form: dict[str, list[str]]) -> dict[str, Any]:
    from moto.ec2.models import ec2_backends

    facts: dict[str, Any] = {}
    instance_ids = [v[0] for k, v in form.items() if k.startswith("InstanceId")]
    subnet = next(iter(form.get("SubnetId", [])), None)
    zone = next(iter(form.get("Placement.AvailabilityZone", [])), None)
    jobs: set[str] = set()
    for regions in list(ec2_backends.values()):
        backend = regions.get(region) if region else None
        if backend is None:
            continue
        if subnet and not zone:
            try:
                zone = backend.get_subnet(subnet).availability_zone
            except Exception:  # noqa: BLE001 - an unknown subnet: EC2 answers that itself
                zone = None
        for instance_id in instance_ids:
            try:
                instance = backend.get_instance(instance_id)
            except Exception:  # noqa: BLE001, S112 - an unknown instance: EC2 answers that itself
                continue
            jobs |= {t["value"] for t in instance.get_tags() if t["key"] == "ec2jobs:job-id"}
    facts["zone"] = zone
    facts["jobs"] = sorted(jobs)
    return facts


def error_response(service: str, rule: dict[str, Any], facts: dict[str, Any]) -> tuple[int, str, bytes]:
    """(status, content type, body) of the AWS error the rule names, in the service's protocol."""
    code = str(rule.get("code", "InternalError"))
    message = str(rule.get("message") or _default_message(code, rule, facts))
    status = int(rule.get("status", 400))
    if service == "ec2" or not str(facts.get("body", "")).lstrip().startswith("{"):
        xml = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
            f"<Code>{code}</Code><Message>{_xml(message)}</Message></Error></Errors>"
            f"<RequestID>{uuid.uuid4()}</RequestID></Response>"
        )
        return status, "text/xml", xml.encode()
    prefix = "com.amazonaws.dynamodb.v20120810#" if service == "dynamodb" else ""
    return status, "application/x-amz-json-1.0", json.dumps({"__type": prefix + code, "message": message}).encode()


def _default_message(code: str, rule: dict[str, Any], facts: dict[str, Any]) -> str:
    if code == "InsufficientInstanceCapacity":
        zones = list(rule.get("zone") or [])
        region = str(facts.get("region") or "us-east-1")
        requested = facts.get("zone") or (zones[0] if zones else f"{region}a")
        others = [f"{region}{letter}" for letter in "abcdef" if f"{region}{letter}" != requested]
        return (
            "We currently do not have sufficient capacity in the Availability Zone you requested "
            f"({requested}). Our system will be working on provisioning additional capacity. You can currently get "
            f"capacity by not specifying an Availability Zone in your request or choosing {', '.join(others)}."
        )
    return f"{code} (injected by the ec2jobs fault plan, rule {rule.get('id')})"


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class FaultMiddleware:
    """WSGI middleware in front of moto: answers requests an `aws_error` rule matches with that error."""

    def __init__(self, app: Any, faults: Faults) -> None:
        self.app = app
        self.faults = faults

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        if "HTTP_AUTHORIZATION" in environ:
            facts = request_facts(environ, body)
            rule = self.faults.take("aws_error", **facts)
            if rule is not None:
                status, content_type, payload = error_response(str(facts.get("service", "")), rule, facts)
                start_response(
                    f"{status} Injected", [("Content-Type", content_type), ("Content-Length", str(len(payload)))]
                )
                return [payload]
        return self.app(environ, start_response)  # type: ignore[no-any-return]


# -- inside the control plane's Lambdas (same process) -----------------------------------------------------------


def _patch_botocore(faults: Faults) -> None:
    """Crash a Lambda invocation right after an AWS call returned; kill invocations in flight while down."""
    from botocore.client import BaseClient

    original = BaseClient._make_api_call

    def make_api_call(self: Any, operation_name: str, api_params: dict[str, Any]) -> Any:
        if in_lambda.get() and faults.down():
            raise RuntimeExit("the control plane is stopped (fault plan): this invocation dies")
        result = original(self, operation_name, api_params)
        facts = {
            "service": self.meta.service_model.endpoint_prefix,
            "operation": operation_name,
            "job": job_now(),
            "body": json.dumps(api_params, default=str),
        }
        if faults.take("crash_after", **facts) is not None:
            raise RuntimeExit(f"the Lambda runtime died right after {operation_name} returned (fault plan)")
        return result

    BaseClient._make_api_call = make_api_call  # type: ignore[method-assign]


class _DroppingChannel:
    """The relay's stream channel, cut (TCP shutdown) when an `ssh_drop` rule fires after its byte count."""

    def __init__(self, channel: Any, session: Any, faults: Faults, job: str | None) -> None:
        self._channel = channel
        self._session = session
        self._faults = faults
        self._job = job
        self._received = 0
        self._cut = False

    def recv(self, size: int) -> bytes:
        if self._faults.down():
            raise RuntimeExit("the control plane is stopped (fault plan): this invocation dies")
        data: bytes = self._channel.recv(size)
        self._received += len(data)
        if data and not self._cut and self._faults.take("ssh_drop", job=self._job, bytes=self._received):
            self._cut = True
            transport = self._session.client.get_transport()
            if transport is not None and transport.sock is not None:
                with contextlib.suppress(OSError):
                    transport.sock.shutdown(socket.SHUT_RDWR)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._channel, name)


def _patch_ssh(faults: Faults) -> None:
    from controlplane.adapters.ssh import SshSession

    original = SshSession.stream

    def stream(self: Any, offset: int, poll_seconds: float) -> Any:
        return _DroppingChannel(original(self, offset, poll_seconds), self, faults, job_now())

    SshSession.stream = stream  # type: ignore[method-assign]


def job_now() -> str | None:
    """The job the current code works on: the Lambda invocation's, or, in a relay shard (one invocation following
    many jobs), the job whose loop this thread runs (service/relay_fleet.py JOB_THREAD_PREFIX)."""
    job = current_job.get()
    if job is None:
        name = threading.current_thread().name
        if name.startswith("relay-job:"):
            return name.removeprefix("relay-job:")
    return job


def lambda_job(event: Any) -> str | None:
    """The job a control-plane invocation works on (workflow steps and direct invocations carry job_id)."""
    if isinstance(event, dict):
        if isinstance(event.get("job_id"), str):
            return str(event["job_id"])
        inner = event.get("input")
        if isinstance(inner, dict) and isinstance(inner.get("job_id"), str):
            return str(inner["job_id"])
    return None


def before_invoke(function_name: str, event: Any) -> dict[str, Any] | None:
    """Called by the in-process Lambda patch: an error payload if the invocation must fail before running."""
    faults = _faults
    if faults is None:
        return None
    if faults.down():
        return _service_error("the control plane is stopped (fault plan)")
    rule = faults.take("lambda_error", function=function_name, job=lambda_job(event), when="before")
    return _service_error(str(rule.get("message", "injected"))) if rule else None


def after_invoke(function_name: str, event: Any) -> dict[str, Any] | None:
    """An error payload replacing a finished invocation's result (its response was lost), if a rule says so."""
    faults = _faults
    if faults is None:
        return None
    rule = faults.take("lambda_error", function=function_name, job=lambda_job(event), when="after")
    return _service_error(str(rule.get("message", "injected"))) if rule else None


def _service_error(message: str) -> dict[str, Any]:
    return {"errorType": "Lambda.ServiceException", "errorMessage": message, "stackTrace": []}


def event_deliveries(event: dict[str, Any]) -> list[float]:
    """How an event reaches our targets: [] dropped, [0.0] once now, [0.0, 0.0] twice, [d] after d seconds."""
    faults = _faults
    if faults is None:
        return [0.0]
    if faults.down():
        return []
    raw = event.get("detail")
    detail: dict[str, Any] = raw if isinstance(raw, dict) else {}
    instance_id = str(detail.get("instance-id", ""))
    facts = {
        "detail_type": event.get("detail-type"),
        "state": detail.get("state"),
        "jobs": _jobs_of_instance(instance_id, str(event.get("region", ""))) if instance_id else [],
    }
    rule = faults.take("event", **facts)
    if rule is None:
        return [0.0]
    action = rule.get("action")
    if action == "drop":
        return []
    if action == "duplicate":
        return [0.0, float(rule.get("delay", 0.5))]
    return [float(rule.get("delay", 5.0))]


def _jobs_of_instance(instance_id: str, region: str) -> list[str]:
    from moto.ec2.models import ec2_backends

    for regions in list(ec2_backends.values()):
        for name, backend in list(regions.items()):
            if region and name != region:
                continue
            try:
                instance = backend.get_instance(instance_id)
            except Exception:  # noqa: BLE001, S112 - not in this account/region
                continue
            return [t["value"] for t in instance.get_tags() if t["key"] == "ec2jobs:job-id"]
    return []


def _stop_executions() -> None:
    """The control plane is stopped: its workflow executions do not survive it."""
    from moto.stepfunctions.parser.models import stepfunctions_parser_backends

    for regions in list(stepfunctions_parser_backends.values()):
        for backend in list(regions.values()):
            for machine in list(backend.state_machines):
                for execution in list(getattr(machine, "executions", [])):
                    if str(getattr(execution, "status", "")).endswith("RUNNING"):
                        try:
                            backend.stop_execution(execution.execution_arn)
                        except Exception:  # noqa: BLE001 - it ended meanwhile
                            logger.info("could not stop %s", execution.execution_arn)


def install(server: Any) -> Faults | None:
    """In the emulator process, when EC2JOBS_FAULTS_FILE is set: the middleware, the botocore and SSH hooks."""
    global _faults
    path = os.environ.get(PLAN_ENV)
    if not path:
        return None
    faults = Faults(Path(path))
    faults.on_down.append(_stop_executions)
    server._server.app = FaultMiddleware(server._server.app, faults)  # werkzeug serves `server.app`
    _patch_botocore(faults)
    _patch_ssh(faults)
    _faults = faults
    return faults
