"""Counting AWS operations from the emulator's own request log (moto's recorder), not from assumptions.

The emulator (moto in server mode) appends every request it receives to MOTO_RECORDER_FILEPATH while recording is
on — whoever sent it: the in-process Lambdas, Step Functions' own Lambda client, the API handlers in this process,
the instance sandboxes. `Recorder` switches recording on and off through moto's own endpoints, and a tail thread
stamps each request with the time it was seen (used to time "RunInstances issued"). Each entry is parsed into an
`Op`: the service and region (from the SigV4 credential scope), the access key (a provider's keys sign EC2 and IAM
calls; the control plane's own calls use the local fake key), the operation, and the request body.

Requests sent by the benchmark itself (its observers and its direct baseline) carry OBSERVER_AGENT or
BASELINE_AGENT in their User-Agent, so the control plane's own calls can be told apart.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

from botocore.config import Config

API_APP_ID = "ec2jobs-bench-api"  # AWS_SDK_UA_APP_ID of this process's API handlers: "app/<id>" in their User-Agent
OBSERVER_AGENT = "ec2jobs-bench-observer"
BASELINE_AGENT = "ec2jobs-bench-baseline"
OBSERVER_CONFIG = Config(user_agent_extra=OBSERVER_AGENT, retries={"mode": "standard", "max_attempts": 3})
BASELINE_CONFIG = Config(user_agent_extra=BASELINE_AGENT, retries={"mode": "standard", "max_attempts": 3})
RECORDER_PATH_VARIABLE = "MOTO_RECORDER_FILEPATH"


@dataclass(frozen=True)
class Op:
    """One request the emulator received."""

    service: str
    operation: str
    region: str
    key_id: str
    agent: str
    body: str
    url: str
    seen_at: float = 0.0  # time.time() when the tail thread saw it (0 when parsed from a file afterwards)
    method: str = "POST"
    headers: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def name(self) -> str:
        return f"{self.service}:{self.operation}"

    @property
    def by_bench(self) -> bool:
        return OBSERVER_AGENT in self.agent or BASELINE_AGENT in self.agent

    @property
    def by_api(self) -> bool:
        """Sent by the API front's handlers (in the benchmark's process; part of the control plane)."""
        return f"app/{API_APP_ID}" in self.agent

    @property
    def function(self) -> str:
        """The function a Lambda Invoke names (its ARN or name in the URL path), else ''."""
        if self.service != "lambda" or "/functions/" not in self.url:
            return ""
        name = unquote(self.url.split("/functions/", 1)[1].split("/", 1)[0])
        return name.rsplit(":", 1)[-1] if name.startswith("arn:") else name

    def json_body(self) -> dict[str, Any]:
        try:
            value = json.loads(self.body) if self.body else {}
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    def query_param(self, name: str) -> str:
        values = parse_qs(self.body).get(name)
        return values[0] if values else ""


def _header(headers: dict[str, Any], name: str) -> str:
    lowered = name.lower()
    return next((str(v) for k, v in headers.items() if k.lower() == lowered), "")


def parse_entry(entry: dict[str, Any], seen_at: float = 0.0) -> Op:
    """An Op from one recorder entry: {"headers", "method", "url", "body", "body_encoded"}."""
    headers = dict(entry.get("headers") or {})
    body = str(entry.get("body") or "")
    if entry.get("body_encoded"):
        body = base64.b64decode(body).decode("utf-8", errors="replace")
    authorization = _header(headers, "Authorization")
    scope: list[str] = []
    if "Credential=" in authorization:
        scope = authorization.split("Credential=", 1)[1].split(",", 1)[0].strip().split("/")
    key_id = scope[0] if scope else ""
    region = scope[2] if len(scope) > 2 else ""
    service = scope[3] if len(scope) > 3 else ""
    url = str(entry.get("url") or "")
    target = _header(headers, "X-Amz-Target")
    if target:
        operation = target.rsplit(".", 1)[-1]
    elif "Action=" in body:
        operation = parse_qs(body).get("Action", [""])[0]
    elif service == "lambda" and url.rstrip("/").endswith("/invocations"):
        operation = "Invoke"
    else:
        operation = f"{entry.get('method', '')} {url.split('?', 1)[0].split('//', 1)[-1].partition('/')[2]}"
    agent = _header(headers, "User-Agent")
    method = str(entry.get("method") or "POST")
    plain = {str(k): str(v) for k, v in headers.items()}
    return Op(service, operation, region, key_id, agent, body, url, seen_at, method, plain)


def parse_stream(text: str) -> tuple[list[dict[str, Any]], int]:
    """The complete JSON entries at the start of `text` and how many characters they used. Concurrent requests
    may put two entries on one line (moto writes each entry and its newline separately), so entries are decoded
    one after another rather than split on newlines; an incomplete last entry is left for the next read."""
    decoder = json.JSONDecoder()
    entries: list[dict[str, Any]] = []
    position = 0
    while True:
        start = position
        while start < len(text) and text[start].isspace():
            start += 1
        if start >= len(text):
            return entries, start
        try:
            entry, end = decoder.raw_decode(text, start)
        except ValueError:
            return entries, position
        entries.append(entry)
        position = end


def counts(ops: Iterable[Op], *, control_plane_only: bool = True) -> Counter[str]:
    """service:operation → count (by default without the benchmark's own requests)."""
    return Counter(op.name for op in ops if not (control_plane_only and op.by_bench))


@dataclass
class Recorder:
    """moto's request recorder in the emulator process, switched on and off over HTTP, tailed by a thread."""

    endpoint: str
    path: Path
    poll_seconds: float = 0.002
    ops: list[Op] = field(default_factory=list)
    _offset: int = 0
    _buffer: str = ""
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @staticmethod
    def configure(path: Path) -> None:
        """Where the emulator will write (read by moto when the emulator process starts)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
        os.environ[RECORDER_PATH_VARIABLE] = str(path)

    def _moto(self, action: str) -> None:
        url = f"{self.endpoint}/moto-api/recorder/{action}"
        request = urllib.request.Request(url, data=b"", method="POST")  # noqa: S310 - the loopback emulator
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - the loopback emulator
            response.read()

    def start(self) -> None:
        self._moto("start-recording")
        if self._thread is None:
            self._thread = threading.Thread(target=self._tail, daemon=True, name="bench-recorder")
            self._thread.start()

    def stop(self) -> None:
        self._moto("stop-recording")
        time.sleep(0.05)
        self.poll()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)

    def _tail(self) -> None:
        while not self._stop.is_set():
            self.poll()
            time.sleep(self.poll_seconds)

    def poll(self) -> None:
        with self._lock:
            try:
                with self.path.open("rb") as handle:
                    handle.seek(self._offset)
                    data = handle.read()
            except FileNotFoundError:
                return
            if not data:
                return
            now = time.time()
            self._offset += len(data)
            self._buffer += data.decode("utf-8", errors="replace")
            entries, used = parse_stream(self._buffer)
            self._buffer = self._buffer[used:]
            self.ops.extend(parse_entry(entry, now) for entry in entries)

    def mark(self) -> int:
        """The index of the next op (to slice the ops seen after this point)."""
        self.poll()
        with self._lock:
            return len(self.ops)

    def since(self, mark: int) -> list[Op]:
        self.poll()
        with self._lock:
            return list(self.ops[mark:])

    def wait_for(self, mark: int, predicate: Any, timeout: float = 60.0, poll_seconds: float = 0.002) -> Op | None:
        """The first op after `mark` for which predicate(op) holds, waiting for it up to `timeout` seconds."""
        end = time.monotonic() + timeout
        checked = mark
        while time.monotonic() < end:
            with self._lock:
                fresh = self.ops[checked:]
                checked += len(fresh)
            for op in fresh:
                if predicate(op):
                    return op
            time.sleep(poll_seconds)
        return None


_UNSIGNED = frozenset(
    {"authorization", "x-amz-date", "x-amz-security-token", "content-length", "host", "user-agent"}
    | {"amz-sdk-invocation-id", "amz-sdk-request", "x-amz-content-sha256"}
)


@dataclass
class Replayer:
    """Sends recorded requests again, one after another, as botocore sends them (SigV4-signed, botocore's HTTP
    session): the same AWS calls without the workflow around them. `secrets` maps each access key id to its
    secret (the control plane's own is the emulator's fake key)."""

    secrets: dict[str, str]
    agent: str = BASELINE_AGENT

    def __post_init__(self) -> None:
        from botocore.httpsession import URLLib3Session

        self._http = URLLib3Session()

    def send(self, op: Op, body: str | None = None) -> tuple[int, str]:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        from local.guard import assert_loopback_url

        assert_loopback_url(op.url)
        headers = {k: v for k, v in op.headers.items() if k.lower() not in _UNSIGNED}
        headers["User-Agent"] = f"Botocore {self.agent}"
        data = (op.body if body is None else body).encode()
        request = AWSRequest(method=op.method, url=op.url, data=data, headers=headers)
        SigV4Auth(Credentials(op.key_id, self.secrets.get(op.key_id, "")), op.service, op.region).add_auth(request)
        response = self._http.send(request.prepare())
        return response.status_code, response.text


class CallClock:
    """Time spent inside AWS calls made from this process (botocore's Endpoint.make_request, every session):
    separates the emulator's share of a measured stretch from the control plane's own code."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0
        self._original: Any = None
        self._lock = threading.Lock()

    def __enter__(self) -> CallClock:
        from botocore.endpoint import Endpoint

        self._original = original = Endpoint.make_request
        clock = self

        def timed(endpoint: Any, operation_model: Any, request_dict: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(endpoint, operation_model, request_dict)
            finally:
                with clock._lock:
                    clock.seconds += time.perf_counter() - started
                    clock.calls += 1

        Endpoint.make_request = timed  # type: ignore[method-assign]
        return self

    def __exit__(self, *_: object) -> None:
        from botocore.endpoint import Endpoint

        Endpoint.make_request = self._original  # type: ignore[method-assign]
