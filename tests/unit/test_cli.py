"""The `ec2jobs` CLI and its HTTP client against a fake API: an in-memory `http.server` on 127.0.0.1 implementing the
routes (jobs that advance PENDING → LAUNCHING → PROVISIONING → RUNNING → SUCCEEDED/FAILED across polls, logs that
arrive in pieces), and a fake `local.runtime` module. No emulator, no AWS."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import types
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ec2jobs import cli
from ec2jobs import client as cli_client
from ec2jobs.cli import output
from ec2jobs.cli.commands import jobs as jobs_commands
from ec2jobs.client import ApiError, Client

TOKEN = "tok-Sup3rSecret-9f8e7d6c5b4a"
OTHER_TOKEN = "tok-Wr0ng-0000111122223333"
INSTANCE_ID = "i-0123456789abcdef0"
LOG_PIECES = [
    "setup: ok\n",
    "epoch 1/2 loss=0.50\r\nprogress ▇▇ 50%\r",
    "progress ▇▇▇▇ 100%\nünïcödé ✓ 🙂\n",
    "done (no newline at the end)",
]
LOG = "".join(LOG_PIECES)
CRASH_PIECES = ["starting\n", "Traceback: boom\n"]
LAUNCHED_AT = "2026-11-24T03:01:00+00:00"
NOW = dt.datetime(2026, 11, 24, 3, 31, tzinfo=dt.UTC)  # 30 minutes after LAUNCHED_AT
ROUTE_MISSING = {"code": "NOT_FOUND", "message": "no such route; see GET /openapi.json"}
CATALOG: dict[str, Any] = {
    "prices": {"region": "us-east-1", "currency": "USD", "unit": "hour", "notes": ["test prices"]},
    "regions": ["us-east-1", "us-west-2"],
    "gpus": [
        {"gpu": "H100", "gpu_memory_gib": 80, "counts": [1, 8], "instance_types": ["p5.4xlarge", "p5.48xlarge"]},
        {"gpu": "T4", "gpu_memory_gib": 16, "counts": [1, 4], "instance_types": ["g4dn.xlarge", "g4dn.12xlarge"]},
    ],
    "instance_types": [
        {"instance_type": "p5.4xlarge", "vcpus": 16, "memory_gib": 256, "gpu": "H100", "gpu_count": 1,
         "gpu_memory_gib": 80, "price_per_hour": None, "regions": ["us-east-1"]},
        {"instance_type": "p5.48xlarge", "vcpus": 192, "memory_gib": 2048, "gpu": "H100", "gpu_count": 8,
         "gpu_memory_gib": 80, "price_per_hour": 98.32, "regions": ["us-east-1"]},
        {"instance_type": "g4dn.xlarge", "vcpus": 4, "memory_gib": 16, "gpu": "T4", "gpu_count": 1,
         "gpu_memory_gib": 16, "price_per_hour": 0.526, "regions": ["us-east-1", "us-west-2"]},
        {"instance_type": "g4dn.12xlarge", "vcpus": 48, "memory_gib": 192, "gpu": "T4", "gpu_count": 4,
         "gpu_memory_gib": 16, "price_per_hour": 3.912, "regions": ["us-east-1", "us-west-2"]},
        {"instance_type": "c7i.large", "vcpus": 2, "memory_gib": 4, "gpu": None, "gpu_count": 0,
         "gpu_memory_gib": None, "price_per_hour": 0.08925, "regions": ["us-east-1", "us-west-2"]},
    ],
}  # fmt: skip


# -- the fake API ----------------------------------------------------------------------------------------------


@dataclass
class FakeJob:
    record: dict[str, Any]
    log: str
    timeline: list[tuple[str, int, dict[str, Any]]]  # (status, log pieces released, fields set from then on)
    pieces: list[str]
    tick: int = -1
    advance_on_logs: bool = True  # False: only GETs of the job step its life (every status is seen once)

    def advance(self) -> None:
        """Every GET of the job or its logs is one step of its life (the last step repeats)."""
        if self.record["status"] == "CANCELLED":
            return
        self.tick = min(self.tick + 1, len(self.timeline) - 1)
        status, _, fields = self.timeline[self.tick]
        self.record.update(fields, status=status)

    @property
    def released(self) -> int:
        if self.record["status"] == "CANCELLED":
            return len(self.log)
        return len("".join(self.pieces[: self.timeline[max(self.tick, 0)][1]]))


@dataclass
class FakeApi:
    url: str = ""
    token: str = TOKEN
    cancel_supported: bool = False
    outages: int = 0  # answer this many GET requests with 503 first
    legacy_logs: bool = False  # logs pages without `final`, as an API from before it existed sent them
    providers: dict[str, dict[str, Any]] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)
    jobs: dict[str, FakeJob] = field(default_factory=dict)
    idempotency: dict[str, str] = field(default_factory=dict)
    tokens: list[dict[str, Any]] = field(default_factory=list)
    requests: list[tuple[str, str, dict[str, str], Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_provider(self, name: str = "main", region: str = "us-east-1") -> str:
        provider_id = f"prov-{len(self.providers) + 1}"
        self.providers[provider_id] = {
            "provider_id": provider_id,
            "name": name,
            "region": region,
            "account_id": "123456789012",
            "user_arn": f"arn:aws:iam::123456789012:user/{name}",
            "access_key_id": "AKIA************CDEF",
            "created_at": "2026-11-24T03:00:00+00:00",
        }
        return provider_id

    def paths(self, method: str) -> list[str]:
        return [path for m, path, _, _ in self.requests if m == method]

    # Each handler returns (status, body).
    def handle(self, method: str, url: str, headers: dict[str, str], body: Any) -> tuple[int, Any]:
        parsed = urllib.parse.urlsplit(url)
        query = dict(urllib.parse.parse_qsl(parsed.query))
        parts = [urllib.parse.unquote(p) for p in parsed.path.strip("/").split("/")]
        with self.lock:
            self.requests.append((method, parsed.path, headers, body))
            if headers.get("authorization") != f"Bearer {self.token}":
                return 401, {"message": "Unauthorized"}
            if self.outages and method == "GET":
                self.outages -= 1
                return 503, {"code": "UPSTREAM_UNAVAILABLE", "message": "AWS could not be reached; retry"}
            return self.route(method, parts, query, headers, body)

    def route(
        self, method: str, parts: list[str], query: dict[str, str], headers: dict[str, str], body: Any
    ) -> tuple[int, Any]:
        match method, parts:
            case "GET", ["catalog"]:
                if query.get("gpu") == "nope":
                    return 400, {"code": "INVALID_QUERY", "message": "unknown GPU 'nope'"}
                gpus = [g for g in CATALOG["gpus"] if query.get("gpu") in (None, g["gpu"])]
                types_ = [t for t in CATALOG["instance_types"] if query.get("gpu") in (None, t["gpu"])]
                return 200, {**CATALOG, "gpus": gpus, "instance_types": types_}
            case "POST", ["providers"]:
                if body["name"] == "echo-token":  # a careless server that echoes the request
                    return 400, {"code": "INVALID_REQUEST", "message": f"bad request: {headers['authorization']}"}
                if body["secret_access_key"] == "wrong":
                    message = "the secret access key does not match the access key id"
                    return 400, {"code": "INVALID_CREDENTIALS", "message": message, "details": [{"check": "x"}]}
                provider_id = self.add_provider(body["name"], body["region"])
                self.secrets[provider_id] = body["secret_access_key"]
                return 201, self.providers[provider_id]
            case "GET", ["providers"]:
                return 200, {"providers": list(self.providers.values())}
            case "GET", ["providers", provider_id] if provider_id in self.providers:
                return 200, self.providers[provider_id]
            case "DELETE", ["providers", provider_id] if provider_id in self.providers:
                del self.providers[provider_id]
                return 204, None
            case "POST", ["jobs"]:
                return self.submit(body, headers.get("idempotency-key"))
            case "GET", ["jobs"]:
                return self.list_jobs(query)
            case "GET", ["jobs", job_id] if job_id in self.jobs:
                self.jobs[job_id].advance()
                return 200, self.jobs[job_id].record
            case "GET", ["jobs", job_id, "logs"] if job_id in self.jobs:
                return self.logs(self.jobs[job_id], query.get("after"))
            case "POST", ["jobs", job_id, "cancel"] if self.cancel_supported and job_id in self.jobs:
                self.jobs[job_id].record["status"] = "CANCELLED"
                return 200, self.jobs[job_id].record
            case "GET", ["tokens"]:
                return 200, {"tokens": self.tokens}
            case "DELETE", ["tokens", token_id] if any(t["token_id"] == token_id for t in self.tokens):
                self.tokens = [t for t in self.tokens if t["token_id"] != token_id]
                return 204, None
            case _, ["providers" | "jobs" | "tokens", _] | ["jobs", _, "logs"]:
                return 404, {"code": "NOT_FOUND", "message": f"no such {parts[0].rstrip('s')}: {parts[1]}"}
        return 404, ROUTE_MISSING

    def submit(self, body: dict[str, Any], key: str | None) -> tuple[int, Any]:
        if key and key in self.idempotency:
            return 202, self.summary(self.jobs[self.idempotency[key]])
        if "run" not in body:
            details = [{"field": "run", "message": "Field required"}]
            return 422, {"code": "VALIDATION_ERROR", "message": "run: Field required", "details": details}
        if body.get("resources", {}).get("accelerators") == "T4:16":
            message = "AWS has no instance with 16 × T4. Valid counts for T4: 1, 4, 8 (g4dn.xlarge, g4dn.12xlarge, …)"
            return 400, {"code": "INVALID_SPEC", "message": message}
        if body["provider_id"] not in self.providers:
            return 404, {"code": "NOT_FOUND", "message": f"no such provider: {body['provider_id']}"}
        job_id = f"job-{len(self.jobs) + 1:04d}"
        crash = body.get("name") == "crash"
        pieces = CRASH_PIECES if crash else LOG_PIECES
        running = {"instance_state": "running", "started_at": "2026-11-24T03:02:00+00:00"}
        timeline: list[tuple[str, int, dict[str, Any]]] = [
            ("PENDING", 0, {}),
            ("LAUNCHING", 0, {}),
            (
                "PROVISIONING",
                0,
                {
                    "instance_id": INSTANCE_ID,
                    "instance_state": "pending",
                    "market": "on-demand",
                    "launched_at": LAUNCHED_AT,
                },
            ),
            ("RUNNING", 0, running),
            ("RUNNING", 1, {}),
            ("RUNNING", 1, {}),  # nothing new on this poll
            ("RUNNING", 2, {}),
        ]
        if crash:
            reason = {"failure_reason": "EXIT_NONZERO", "exit_code": 3, "failure_message": "run exited with status 3"}
            timeline.append(("FAILED", len(pieces), reason))
        elif body.get("name") == "lost":  # the instance went before the relay read its last two pieces
            reason = {"failure_reason": "INSTANCE_LOST", "failure_message": "the instance was terminated"}
            timeline.append(("FAILED", 2, reason))
        else:
            billed = {"exit_code": 0, "billed_seconds": 150, "cost_estimate": 0.0419}  # 150 s at 1.006 $/h
            timeline += [("RUNNING", 3, {}), ("SUCCEEDED", len(pieces), billed)]
        record = {
            "job_id": job_id,
            "name": body.get("name"),
            "provider_id": body["provider_id"],
            "region": "us-east-1",
            "status": "PENDING",
            "failure_reason": None,
            "failure_message": None,
            "exit_code": None,
            "instance_id": None,
            "instance_type": "g5.xlarge",
            "instance_state": None,
            "hourly_price": 1.006,
            "on_demand_price": 1.006,
            "use_spot": False,
            "market": None,
            "launched_at": None,
            "billed_seconds": None,
            "cost_estimate": None,
            "notes": ["A10 is sold by AWS as A10G"],
            "spec": {**body, "envs": dict.fromkeys(body.get("envs") or {}, "<redacted>")},
            "created_at": f"2026-11-24T03:00:{len(self.jobs):02d}+00:00",
            "started_at": None,
            "ended_at": None,
        }
        self.jobs[job_id] = FakeJob(record, "".join(pieces), timeline, pieces)
        if key:
            self.idempotency[key] = job_id
        return 202, self.summary(self.jobs[job_id])

    @staticmethod
    def summary(job: FakeJob) -> dict[str, Any]:
        fields = ("job_id", "status", "instance_type", "region", "hourly_price", "use_spot", "on_demand_price", "notes")
        return {name: job.record[name] for name in fields}

    def list_jobs(self, query: dict[str, str]) -> tuple[int, Any]:
        jobs = [j.record for j in reversed(self.jobs.values())]
        if "status" in query:
            jobs = [j for j in jobs if j["status"] == query["status"]]
        start = int(query.get("cursor", "0"))
        limit = int(query.get("limit", "50"))
        page = jobs[start : start + limit]
        more = start + limit < len(jobs)
        return 200, {"jobs": page, "next_cursor": str(start + limit) if more else None}

    def logs(self, job: FakeJob, after: str | None) -> tuple[int, Any]:
        if job.advance_on_logs:
            job.advance()
        offset = int(after) if after and after.isdigit() else 0
        if after is not None and (not after.isdigit() or offset > job.released):
            return 400, {"code": "INVALID_REQUEST", "message": f"cursor {after!r} is not one we issued"}
        text = job.log[offset : job.released]
        end = offset + len(text)
        # Final: the job ended and this page reached the end of what was relayed; complete: and that is all of it
        # (a "lost" job's instance went before its last pieces were read).
        final = job.record["status"] in ("SUCCEEDED", "FAILED", "CANCELLED") and end == job.released
        complete = final and end == len(job.log)
        if self.legacy_logs:
            return 200, {"job_id": job.record["job_id"], "text": text, "next_cursor": str(end), "complete": final}
        page = {"job_id": job.record["job_id"], "text": text, "next_cursor": str(end), "complete": complete}
        return 200, page | {"final": final}


def _handler_for(api: FakeApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            headers = {name.lower(): value for name, value in self.headers.items()}
            status, answer = api.handle(self.command, self.path, headers, body)
            data = b"" if answer is None else json.dumps(answer).encode()
            self.send_response(status)
            if data:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeApi]:
    """The fake API, configured through the environment; the current directory is an empty temporary one."""
    fake = FakeApi()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(fake))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EC2JOBS_API_URL", fake.url)
    monkeypatch.setenv("EC2JOBS_TOKEN", TOKEN)
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Any:
    def invoke(*argv: str, show_token: bool = False) -> Result:
        code = cli.main(list(argv))
        captured = capsys.readouterr()
        result = Result(code, captured.out, captured.err)
        assert "Traceback" not in result.err
        if not show_token:
            assert TOKEN not in result.out + result.err
        if code != 0 and "--follow" not in argv:
            assert len(result.err.strip().splitlines()) == 1, result.err  # every error is one line
        return result

    return invoke


def _fields(text: str) -> dict[str, str]:
    """`label:   value` lines → {label: value} (notes collected under "note")."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        label, _, value = line.partition(":")
        fields[label] = value.strip() if label not in fields else f"{fields[label]} | {value.strip()}"
    return fields


def _task(tmp: Path, text: str, name: str = "task.yaml") -> str:
    path = tmp / name
    path.write_text(text)
    return str(path)


TASK = """\
name: train
resources:
  accelerators: A10:1
  cpus: 4+
envs: {HF_TOKEN: hf_do_not_show}
setup: pip install -r requirements.txt
run: python train.py
max_runtime_minutes: 30
"""

# -- configuration ---------------------------------------------------------------------------------------------


def test_config_precedence_is_flags_then_environment_then_local_env(tmp_path: Path) -> None:
    env_file = tmp_path / "local.env"
    env_file.write_text("# comment\nEC2JOBS_API_URL=http://127.0.0.1:1111\nexport EC2JOBS_TOKEN='from-file'\n")
    from_file = cli.resolve_config(None, None, environ={}, env_file=env_file)
    assert (from_file.api_url, from_file.token) == ("http://127.0.0.1:1111", "from-file")
    assert from_file.is_local
    environ = {"EC2JOBS_TOKEN": "from-env"}
    mixed = cli.resolve_config(None, None, environ=environ, env_file=env_file)  # each setting on its own
    assert (mixed.api_url, mixed.token, mixed.token_source) == ("http://127.0.0.1:1111", "from-env", "$EC2JOBS_TOKEN")
    environ["EC2JOBS_API_URL"] = "http://127.0.0.1:2222"
    from_env = cli.resolve_config(None, None, environ=environ, env_file=env_file)
    assert (from_env.api_url, from_env.token) == ("http://127.0.0.1:2222", "from-env")
    assert not from_env.is_local
    flags = cli.resolve_config("https://api.example", "from-flag", environ=environ, env_file=env_file)
    assert (flags.api_url, flags.token, flags.api_url_source) == ("https://api.example", "from-flag", "--api-url")
    with pytest.raises(cli.UsageError, match="no API URL"):
        cli.resolve_config(None, "t", environ={}, env_file=tmp_path / "missing.env")


def test_the_same_commands_work_from_local_env_env_and_flags(
    api: FakeApi, run: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    api.add_provider()
    monkeypatch.delenv("EC2JOBS_API_URL")
    monkeypatch.delenv("EC2JOBS_TOKEN")
    missing = run("jobs")
    assert missing.code == 2
    assert "no API URL" in missing.err
    (tmp_path / ".ec2jobs").mkdir()
    (tmp_path / ".ec2jobs" / "local.env").write_text(f"EC2JOBS_API_URL={api.url}\nEC2JOBS_TOKEN={TOKEN}\n")
    assert run("providers", "list").code == 0
    monkeypatch.setenv("EC2JOBS_TOKEN", OTHER_TOKEN)  # the environment beats the file ...
    rejected = run("providers", "list")
    assert rejected.code == 1
    assert "Unauthorized" in rejected.err
    assert "$EC2JOBS_TOKEN" in rejected.err
    assert OTHER_TOKEN not in rejected.err
    flagged = run("providers", "list", "--token", TOKEN)  # ... and a flag beats both
    assert flagged.code == 0
    assert "prov-1" in flagged.out
    assert run("--token", TOKEN, "providers", "list").code == 0  # before or after the command


def test_a_dead_local_api_is_one_line_with_a_hint(run: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EC2JOBS_API_URL", raising=False)
    monkeypatch.delenv("EC2JOBS_TOKEN", raising=False)
    (tmp_path / ".ec2jobs").mkdir()
    (tmp_path / ".ec2jobs" / "local.env").write_text(
        f"EC2JOBS_API_URL=http://127.0.0.1:{port}\nEC2JOBS_TOKEN={TOKEN}\n"
    )
    result = run("jobs")
    assert result.code == 1
    assert "cannot reach the API" in result.err
    assert "ec2jobs local up" in result.err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["status", "job-1", "--api-url", "ftp://127.0.0.1/x"], "http:// or https://"),
        (["status", "job-1", "--api-url", "file:///etc/passwd"], "http:// or https://"),
        (["frobnicate"], "invalid choice"),
        (["jobs", "--limit", "0"], "at least 1"),
        (["jobs", "--status", "SLEEPING"], "invalid choice"),
        (["submit", "missing.yaml"], "missing.yaml: no such file"),
        (["submit", "task.yaml", "--json", "--follow"], "cannot be combined"),
        ([], "required"),
    ],
)
def test_usage_errors_exit_2_on_one_line(api: FakeApi, run: Any, argv: list[str], expected: str) -> None:
    Path("task.yaml").write_text(TASK)
    result = run(*argv)
    assert result.code == 2
    assert expected in result.err
    assert api.requests == []


def test_help_exits_0(run: Any) -> None:
    result = run("submit", "--help")
    assert result.code == 0
    assert "--follow" in result.out


# -- submit and follow -----------------------------------------------------------------------------------------


def test_submit_follow_shows_status_changes_the_exact_log_and_the_final_line(
    api: FakeApi, run: Any, tmp_path: Path
) -> None:
    api.add_provider()
    result = run("submit", _task(tmp_path, TASK), "--follow", "--poll", "0.01")
    assert result.code == 0
    assert result.out == LOG  # stdout is the job's output, byte for byte (\r, \r\n, non-ASCII, no final newline)
    lines = result.err.splitlines()
    assert lines[0] == "submitted job job-0001 (PENDING)"
    assert "g5.xlarge" in lines[1]
    assert "$/h 1.0060 on-demand" in lines[1]
    assert "note: A10 is sold by AWS as A10G" in lines[2]
    changes = [line.split(": ", 1)[1] for line in lines if line.startswith("[")]
    assert changes == [
        "PENDING",
        "LAUNCHING",
        f"PROVISIONING (instance {INSTANCE_ID}, g5.xlarge, EC2 state pending)",
        f"RUNNING (instance {INSTANCE_ID}, g5.xlarge)",
    ]
    assert lines[-2] == ""  # the output ended mid-line: the final line starts on its own
    assert lines[-1] == "job job-0001 SUCCEEDED: exit code 0 (billed 2m 30s, about $0.0419)"
    assert "hf_do_not_show" not in result.out + result.err
    submitted = next(body for method, path, _, body in api.requests if method == "POST")
    assert submitted["provider_id"] == "prov-1"
    assert submitted["resources"] == {"accelerators": "A10:1", "cpus": "4+"}
    assert submitted["max_runtime_minutes"] == 30


def test_a_failed_job_exits_1_with_its_reason(api: FakeApi, run: Any, tmp_path: Path) -> None:
    api.add_provider()
    task = _task(tmp_path, TASK.replace("name: train", "name: crash"))
    result = run("submit", task, "--follow", "--poll", "0.01")
    assert result.code == 1
    assert result.out == "".join(CRASH_PIECES)
    assert result.err.splitlines()[-1] == "job job-0001 FAILED: EXIT_NONZERO, exit code 3 - run exited with status 3"
    status = run("status", "job-0001")
    assert status.code == 0
    shown = _fields(status.out)
    assert (shown["status"], shown["failure reason"], shown["exit code"]) == ("FAILED", "EXIT_NONZERO", "3")
    assert shown["failure message"] == "run exited with status 3"


def test_following_rides_out_a_short_outage(
    api: FakeApi, run: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api.add_provider()
    naps: list[float] = []
    monkeypatch.setattr(jobs_commands, "_sleep", naps.append)
    api.outages = 3
    result = run("submit", _task(tmp_path, TASK), "--provider", "prov-1", "--follow", "--poll", "0.01")
    assert result.code == 0
    assert result.out == LOG
    assert naps[:3] == [0.5, 1.0, 2.0]  # retried with a backoff, then polled as usual
    assert set(naps[3:]) == {0.01}
    api.outages = 1
    status = run("status", "job-0001")  # outside of following, an outage is reported at once
    assert status.code == 1
    assert "AWS could not be reached; retry (HTTP 503 UPSTREAM_UNAVAILABLE)" in status.err


def test_ctrl_c_while_following_stops_following_without_cancelling(
    api: FakeApi, run: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api.add_provider()

    def interrupt(_seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(jobs_commands, "_sleep", interrupt)
    result = run("submit", _task(tmp_path, TASK), "--follow")
    assert result.code == 130
    assert "stopped following job job-0001; it keeps running" in result.err
    assert not any(path.endswith("/cancel") for path in api.paths("POST"))
    assert api.jobs["job-0001"].record["status"] == "PENDING"


LOST_TAIL_NOTICE = (
    "ec2jobs: the log ended without the instance's drain confirmation: output written in the job's last moments "
    "may be missing (job FAILED/INSTANCE_LOST)"
)


def test_following_a_job_whose_log_lost_its_tail_stops_at_final_and_says_so(
    api: FakeApi, run: Any, tmp_path: Path
) -> None:
    api.add_provider()
    result = run("submit", _task(tmp_path, TASK.replace("name: train", "name: lost")), "--follow", "--poll", "0.01")
    assert result.code == 1
    assert result.out == "".join(LOG_PIECES[:2])  # what was relayed, nothing invented
    lines = result.err.splitlines()
    assert lines[-3:] == [
        "",  # the output ended mid-line
        LOST_TAIL_NOTICE,
        "job job-0001 FAILED: INSTANCE_LOST - the instance was terminated",
    ]
    assert "did not arrive" not in result.err  # it stopped at `final`, without waiting for a `complete` never sent


def test_a_whole_log_ends_without_the_notice_and_an_api_without_final_still_ends(
    api: FakeApi, run: Any, tmp_path: Path
) -> None:
    api.add_provider()
    whole = run("submit", _task(tmp_path, TASK), "--follow", "--poll", "0.01")
    assert (whole.code, whole.out) == (0, LOG)
    assert "may be missing" not in whole.err
    api.legacy_logs = True  # `complete` alone, meaning "final"
    legacy = run("submit", _task(tmp_path, TASK), "--follow", "--poll", "0.01")
    assert (legacy.code, legacy.out) == (0, LOG)
    assert "may be missing" not in legacy.err
    assert run("logs", "job-0002", "--follow", "--poll", "0.01").out == LOG


def test_logs_of_a_job_whose_tail_was_lost_prints_what_was_relayed_and_the_notice(
    api: FakeApi, run: Any, tmp_path: Path
) -> None:
    api.add_provider()
    run("submit", _task(tmp_path, TASK.replace("name: train", "name: lost")))
    followed = run("logs", "job-0001", "--follow", "--poll", "0.01")
    assert (followed.code, followed.out) == (0, "".join(LOG_PIECES[:2]))
    assert followed.err.splitlines() == ["", LOST_TAIL_NOTICE]
    again = run("logs", "job-0001")  # after the end: all of it at once, and the same notice
    assert (again.code, again.out) == (0, "".join(LOG_PIECES[:2]))
    assert again.err.splitlines() == ["", LOST_TAIL_NOTICE]


def test_submit_without_follow_prints_the_summary(api: FakeApi, run: Any, tmp_path: Path) -> None:
    api.add_provider()
    result = run("submit", _task(tmp_path, TASK), "--idempotency-key", "retry-me")
    assert result.code == 0
    assert result.out.splitlines()[0] == "submitted job job-0001 (PENDING)"
    assert "ec2jobs logs job-0001 --follow" in result.out
    again = run("submit", _task(tmp_path, TASK), "--idempotency-key", "retry-me", "--json")
    assert json.loads(again.out)["job_id"] == "job-0001"  # the same job: the key reached the API
    assert [h.get("idempotency-key") for m, _, h, _ in api.requests if m == "POST"] == ["retry-me", "retry-me"]


def test_the_provider_comes_from_the_flag_the_yaml_or_the_only_one(api: FakeApi, run: Any, tmp_path: Path) -> None:
    task = _task(tmp_path, TASK)
    none = run("submit", task)
    assert none.code == 2
    assert "no provider" in none.err
    api.add_provider("main")
    assert run("submit", task).code == 0
    api.add_provider("second")
    several = run("submit", task)
    assert several.code == 2
    assert "prov-1 (main), prov-2 (second)" in several.err
    assert run("submit", _task(tmp_path, "provider_id: prov-2\n" + TASK, "with-provider.yaml")).code == 0
    assert run("submit", task, "--provider", "prov-1").code == 0
    posted = [body["provider_id"] for method, path, _, body in api.requests if method == "POST"]
    assert posted == ["prov-1", "prov-2", "prov-1"]


def test_a_bad_yaml_file_is_a_usage_error(api: FakeApi, run: Any, tmp_path: Path) -> None:
    broken = run("submit", _task(tmp_path, "run: [unclosed\n"))
    assert broken.code == 2
    assert "not valid YAML at line" in broken.err
    scalar = run("submit", _task(tmp_path, "just a string\n"))
    assert scalar.code == 2
    assert "is a YAML string, not a task" in scalar.err
    several = run("submit", _task(tmp_path, "run: echo a\n---\nrun: echo b\n", "two.yaml"))
    assert several.code == 2
    assert "2 YAML documents" in several.err


# -- API errors ------------------------------------------------------------------------------------------------


def test_api_errors_are_one_line_with_the_server_message_and_never_the_token(
    api: FakeApi, run: Any, tmp_path: Path
) -> None:
    api.add_provider()
    spec = run("submit", _task(tmp_path, TASK.replace("A10:1", "T4:16")))
    assert spec.code == 1
    assert spec.err.strip() == (
        "ec2jobs: error: AWS has no instance with 16 × T4. Valid counts for T4: 1, 4, 8 "
        "(g4dn.xlarge, g4dn.12xlarge, …) (HTTP 400 INVALID_SPEC)"
    )
    invalid = run("submit", _task(tmp_path, "name: x\n"))
    assert invalid.code == 1
    assert "run: Field required (HTTP 422 VALIDATION_ERROR)" in invalid.err
    missing = run("status", "job-404")
    assert missing.code == 1
    assert "no such job: job-404 (HTTP 404 NOT_FOUND)" in missing.err
    echoed = run("providers", "add", "--name", "echo-token", "--region", "us-east-1", "--access-key-id", "AKIAX" * 4,
                 "--secret-access-key", "s3cret-value")  # fmt: skip
    assert echoed.code == 1
    assert "bad request: Bearer <token>" in echoed.err  # a server echoing the token is redacted
    catalog = run("catalog", "--gpu", "nope")
    assert catalog.code == 1
    assert "unknown GPU 'nope' (HTTP 400 INVALID_QUERY)" in catalog.err


def test_cancel_says_clearly_when_the_api_cannot_cancel_yet(api: FakeApi, run: Any, tmp_path: Path) -> None:
    api.add_provider()
    run("submit", _task(tmp_path, TASK))
    unsupported = run("cancel", "job-0001")
    assert unsupported.code == 1
    assert "does not support cancelling jobs yet" in unsupported.err
    unknown = run("cancel", "job-9999")
    assert unknown.code == 1
    assert "no such job: job-9999" in unknown.err
    api.cancel_supported = True
    cancelled = run("cancel", "job-0001")
    assert cancelled.code == 0
    assert cancelled.out.strip() == "cancel requested for job job-0001 (CANCELLED)"


# -- jobs, status, logs, catalog -------------------------------------------------------------------------------


def test_jobs_table_filters_pagination_and_json(api: FakeApi, run: Any, tmp_path: Path) -> None:
    api.add_provider()
    task = _task(tmp_path, TASK)
    for _ in range(3):
        run("submit", task)
    table = run("jobs")
    assert table.code == 0
    lines = table.out.splitlines()
    assert lines[0].split() == ["JOB", "ID", "NAME", "STATUS", "INSTANCE", "TYPE", "MARKET", "$/H", "COST", "CREATED"]
    assert [line.split()[0] for line in lines[1:]] == ["job-0003", "job-0002", "job-0001"]
    assert lines[1].split()[1:8] == ["train", "PENDING", "g5.xlarge", "on-demand", "1.0060", "-", "2026-11-24"]
    limited = run("jobs", "--limit", "2")
    assert [line.split()[0] for line in limited.out.splitlines()[1:]] == ["job-0003", "job-0002"]
    assert "pass --limit for more" in limited.err
    raw = json.loads(run("jobs", "--json", "--status", "pending").out)
    assert [job["job_id"] for job in raw["jobs"]] == ["job-0003", "job-0002", "job-0001"]
    assert ("GET", "/jobs") in [(m, p) for m, p, _, _ in api.requests]
    assert run("jobs", "--status", "FAILED").out.strip() == "no jobs with status FAILED"


def test_status_table_and_json(api: FakeApi, run: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(output, "now", lambda: NOW)
    api.add_provider()
    run("submit", _task(tmp_path, TASK))
    run("status", "job-0001")  # PENDING
    run("status", "job-0001")  # LAUNCHING
    shown = run("status", "job-0001")  # PROVISIONING
    assert shown.code == 0
    fields = _fields(shown.out)
    assert fields["status"] == "PROVISIONING"
    assert fields["instance id"] == INSTANCE_ID
    assert fields["instance state"] == "pending"
    assert fields["market"] == "on-demand"
    assert fields["$/h"] == "1.0060 on-demand"
    assert fields["instance up"] == "30m 00s (since launch)"
    assert fields["cost so far"] == "about $0.5030 (estimate at 1.0060 $/h on-demand)"
    assert fields["note"] == "A10 is sold by AWS as A10G"
    assert fields["created"] == "2026-11-24 03:00:00Z"
    assert "failure reason" not in fields
    raw = json.loads(run("status", "job-0001", "--json").out)
    assert raw["status"] == "RUNNING"
    assert raw["spec"]["envs"] == {"HF_TOKEN": "<redacted>"}


# -- price and cost -------------------------------------------------------------------------------------------


def _put_job(api: FakeApi, job_id: str, status: str, **fields: Any) -> None:
    """A job frozen in one state (every GET shows the same record)."""
    record: dict[str, Any] = {
        "job_id": job_id,
        "name": None,
        "status": status,
        "instance_type": "g4dn.xlarge",
        "hourly_price": None,
        "on_demand_price": 0.526,
        "use_spot": False,
        "market": None,
        "launched_at": None,
        "billed_seconds": None,
        "cost_estimate": None,
        "created_at": "2026-11-24T03:00:00+00:00",
    } | fields
    api.jobs[job_id] = FakeJob(record, "", [(status, 0, {})], [])


def test_given_a_job_that_ended_on_demand_then_status_shows_price_market_billed_time_and_cost(
    api: FakeApi, run: Any
) -> None:
    _put_job(api, "job-od", "SUCCEEDED", market="on-demand", hourly_price=0.526, launched_at=LAUNCHED_AT,
             billed_seconds=5430, cost_estimate=0.7934)  # fmt: skip

    fields = _fields(run("status", "job-od").out)

    assert fields["market"] == "on-demand"
    assert fields["$/h"] == "0.5260 on-demand"
    assert fields["billed"] == "1h 30m (launch to end, at least a minute)"
    assert fields["cost"] == "$0.7934 (estimate at 0.5260 $/h on-demand)"
    assert "cost so far" not in fields


def test_given_a_job_that_ended_on_spot_then_no_spot_price_is_invented_only_the_on_demand_ceiling(
    api: FakeApi, run: Any
) -> None:
    _put_job(api, "job-spot", "SUCCEEDED", use_spot="auto", market="spot", launched_at=LAUNCHED_AT,
             billed_seconds=1800)  # fmt: skip

    fields = _fields(run("status", "job-spot").out)

    assert fields["market"] == "spot (use_spot: auto)"
    assert fields["$/h"] == "n/a on spot (no spot price is recorded; at most 0.5260, the on-demand price)"
    assert fields["billed"] == "30m 00s (launch to end, at least a minute)"
    assert fields["cost"] == "n/a on spot (no spot price is recorded); at most $0.2630"


def test_given_a_running_job_then_status_shows_time_since_launch_and_cost_so_far(
    api: FakeApi, run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(output, "now", lambda: NOW)
    _put_job(api, "job-run", "RUNNING", market="on-demand", hourly_price=0.526, launched_at=LAUNCHED_AT)
    _put_job(api, "job-new", "PENDING", use_spot="auto")

    running = _fields(run("status", "job-run").out)
    pending = _fields(run("status", "job-new").out)

    assert running["instance up"] == "30m 00s (since launch)"
    assert running["cost so far"] == "about $0.2630 (estimate at 0.5260 $/h on-demand)"
    assert pending["market"] == "auto: spot, else on-demand (at launch)"
    assert pending["$/h"] == "n/a until launch (use_spot: auto: spot, else on-demand at 0.5260)"
    assert "instance up" not in pending  # nothing launched, nothing billed
    assert "cost" not in pending


def test_given_jobs_in_each_market_and_state_then_the_jobs_table_has_a_cost_column(
    api: FakeApi, run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(output, "now", lambda: NOW)
    _put_job(api, "job-od", "SUCCEEDED", market="on-demand", hourly_price=0.526, launched_at=LAUNCHED_AT,
             billed_seconds=3600, cost_estimate=0.526)  # fmt: skip
    _put_job(api, "job-spot", "FAILED", use_spot=True, market="spot", launched_at=LAUNCHED_AT, billed_seconds=1800)
    _put_job(api, "job-run", "RUNNING", market="on-demand", hourly_price=0.526, launched_at=LAUNCHED_AT)
    _put_job(api, "job-new", "PENDING", use_spot="auto")
    _put_job(api, "job-invalid", "FAILED", instance_type=None, on_demand_price=None)

    table = run("jobs")

    rows = {line.split()[0]: line.split()[4:7] for line in table.out.splitlines()[1:]}  # MARKET, $/H, COST
    assert rows == {
        "job-od": ["on-demand", "0.5260", "0.5260"],
        "job-spot": ["spot", "n/a", "<=0.2630"],
        "job-run": ["on-demand", "0.5260", "~0.2630"],
        "job-new": ["auto", "n/a", "-"],
        "job-invalid": ["on-demand", "n/a", "-"],
    }
    assert "~ so far" in table.err
    assert "<= at most" in table.err


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (59.9, "59s"), (60, "1m 00s"), (3599, "59m 59s"), (3600, "1h 00m"), (90_061, "1d 01h")],
)
def test_given_seconds_then_a_short_duration(seconds: float, text: str) -> None:
    assert output.duration(seconds) == text


def test_given_a_job_launched_seconds_ago_then_its_cost_so_far_counts_ec2s_minimum_minute() -> None:
    job = {"status": "PROVISIONING", "hourly_price": 3.6, "launched_at": "2026-11-24T03:30:50+00:00"}

    cost = cli.job_cost(job, NOW)

    assert (cost.seconds, cost.amount, cost.running) == (60.0, 0.06, True)


# -- managed recovery (job_recovery: attempts, RECOVERING, WAITING_CAPACITY) -----------------------------------

OTHER_INSTANCE = "i-0fedcba9876543210"
MARKER = "--- attempt 2 on g4dn.xlarge in us-east-1c (on-demand), after SPOT_INTERRUPTED ---\n"
RECOVERY_PIECES = ["attempt 1 from step 0\nstep 1\n", "step 2\n", MARKER, "attempt 2 from step 2\nstep 3\n"]
RECOVERING_DETAIL = (
    "attempt 1 ended (AWS is reclaiming the spot instance (a 2-minute interruption warning)); relaunching: "
    "SPOT_INTERRUPTED (restart 1 of max_restarts 10)"
)
WAITING_DETAIL = (
    "no capacity for g4dn.xlarge in us-east-1 (a, b, c, d, e, f); trying again at 03:33:00 UTC, until 04:31 UTC "
    "(max_wait_minutes 60)"
)
POLICY = {"max_restarts_on_errors": 2, "recover_on_exit_codes": [], "max_restarts": 10, "max_wait_minutes": 60,
          "strategy": "FAILOVER"}  # fmt: skip
SPOT_ATTEMPT = {
    "attempt": 1, "instance_id": INSTANCE_ID, "instance_type": "g4dn.xlarge", "region": "us-east-1",
    "availability_zone": "us-east-1b", "market": "spot", "hourly_price": None, "launched_at": LAUNCHED_AT,
    "ended_at": "2026-11-24T03:21:00+00:00", "end_reason": "SPOT_INTERRUPTED", "exit_code": None,
    "message": "AWS is reclaiming the spot instance", "billed_seconds": 1200, "cost_estimate": None,
}  # fmt: skip


def _recovering_job(api: FakeApi) -> str:
    """A spot job AWS interrupts after two lines: RECOVERING, then attempt 2 waits for capacity, launches on-demand
    in another zone and succeeds; its log goes on after the marker line."""
    second = {
        "instance_id": OTHER_INSTANCE,
        "instance_state": "pending",
        "market": "on-demand",
        "availability_zone": "us-east-1c",
        "launched_at": "2026-11-24T03:25:00+00:00",
        "status_detail": None,
    }
    timeline: list[tuple[str, int, dict[str, Any]]] = [
        ("RUNNING", 1, {}),
        ("RUNNING", 2, {}),
        ("RECOVERING", 2, {"status_detail": RECOVERING_DETAIL, "attempts": [SPOT_ATTEMPT]}),
        ("LAUNCHING", 2, {"attempt": 2, "instance_id": None, "status_detail": "launching attempt 2"}),
        ("WAITING_CAPACITY", 2, {"status_detail": WAITING_DETAIL}),
        ("WAITING_CAPACITY", 2, {}),
        ("PROVISIONING", 2, second),
        ("RUNNING", 4, {"instance_state": "running"}),
        (
            "SUCCEEDED",
            4,
            {
                "exit_code": 0,
                "billed_seconds": 1500,
                "cost_estimate": 0.0438,
                "attempts": [
                    SPOT_ATTEMPT,
                    SPOT_ATTEMPT | second | {"attempt": 2, "end_reason": "SUCCEEDED", "cost_estimate": 0.0438},
                ],
            },
        ),
    ]
    _put_job(api, "job-rec", "RUNNING", use_spot="auto", market="spot", instance_id=INSTANCE_ID, attempt=1,
             launched_at=LAUNCHED_AT, spec={"run": "python train.py", "job_recovery": POLICY})  # fmt: skip
    api.jobs["job-rec"].timeline = timeline
    api.jobs["job-rec"].pieces = RECOVERY_PIECES
    api.jobs["job-rec"].log = "".join(RECOVERY_PIECES)
    api.jobs["job-rec"].advance_on_logs = False
    return "job-rec"


def test_following_a_job_across_attempts_shows_why_it_waits_and_the_whole_log(
    api: FakeApi, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jobs_commands, "_sleep", lambda _seconds: None)
    job_id = _recovering_job(api)

    code = jobs_commands._follow_job(Client(api.url, TOKEN), job_id, 0.01)

    captured = capsys.readouterr()
    assert code == 0
    assert captured.out == "".join(RECOVERY_PIECES)  # one stream: attempt 1, the marker, attempt 2
    changes = [line.split(": ", 1)[1] for line in captured.err.splitlines() if line.startswith("[")]
    assert changes == [
        f"RUNNING (instance {INSTANCE_ID}, g4dn.xlarge)",
        f"RECOVERING (instance {INSTANCE_ID}, g4dn.xlarge): {RECOVERING_DETAIL}",
        "LAUNCHING (attempt 2)",
        f"WAITING_CAPACITY (attempt 2): {WAITING_DETAIL}",  # once, not at every poll
        f"PROVISIONING (attempt 2, instance {OTHER_INSTANCE}, g4dn.xlarge, EC2 state pending)",
        f"RUNNING (attempt 2, instance {OTHER_INSTANCE}, g4dn.xlarge)",
    ]
    assert (
        captured.err.splitlines()[-1]
        == "job job-rec SUCCEEDED: exit code 0 after 2 attempts (billed 25m 00s, about $0.0438)"
    )


def test_status_of_a_relaunched_job_lists_its_attempts_and_what_the_ended_ones_cost(
    api: FakeApi, run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(output, "now", lambda: NOW)
    current = SPOT_ATTEMPT | {
        "attempt": 2,
        "instance_id": OTHER_INSTANCE,
        "availability_zone": "us-east-1c",
        "market": "on-demand",
        "hourly_price": 0.526,
        "launched_at": "2026-11-24T03:25:00+00:00",
        "ended_at": None,
        "end_reason": None,
        "billed_seconds": None,
        "message": None,
    }
    on_demand = SPOT_ATTEMPT | {"market": "on-demand", "hourly_price": 0.526, "cost_estimate": 0.1753}
    _put_job(api, "job-two", "RUNNING", attempt=2, attempts=[SPOT_ATTEMPT, current], market="on-demand",
             hourly_price=0.526, launched_at="2026-11-24T03:25:00+00:00", instance_id=OTHER_INSTANCE,
             spec={"run": "x", "job_recovery": POLICY})  # fmt: skip
    _put_job(api, "job-od", "RUNNING", attempt=2, attempts=[on_demand, current], market="on-demand",
             hourly_price=0.526, launched_at="2026-11-24T03:25:00+00:00", spec={"run": "x"})  # fmt: skip

    shown = run("status", "job-two")

    fields = _fields(shown.out)
    assert fields["attempt"] == "2 of at most 13 (job_recovery)"  # 1 + max_restarts 10 + max_restarts_on_errors 2
    assert fields["earlier attempts"] == "1 ended: billed 20m 00s, cost n/a (no spot price is recorded)"
    assert fields["cost so far"] == "about $0.0526 (estimate at 0.5260 $/h on-demand)"  # this attempt: 6 minutes
    lines = shown.out.splitlines()
    table = lines[lines.index("attempts:") + 1 :]
    assert table[0].split() == ["ATTEMPT", "INSTANCE", "ZONE", "MARKET", "ENDED", "REASON", "COST"]
    assert table[2].split() == ["1", INSTANCE_ID, "us-east-1b", "spot", "2026-11-24", "03:21:00Z",
                                "SPOT_INTERRUPTED", "<=0.1753"]  # fmt: skip
    assert table[3].split() == ["2", OTHER_INSTANCE, "us-east-1c", "on-demand", "-", "-", "~0.0526"]
    both_priced = _fields(run("status", "job-od").out)
    assert both_priced["earlier attempts"] == "1 ended: billed 20m 00s, $0.1753"
    assert both_priced["attempt"] == "2"  # no job_recovery in the spec: no bound to show


def test_status_of_a_job_waiting_for_capacity_says_until_when_once(api: FakeApi, run: Any) -> None:
    note = f"waiting for capacity: {WAITING_DETAIL}"
    _put_job(api, "job-wait", "WAITING_CAPACITY", status_detail=WAITING_DETAIL, notes=["A10 is sold as A10G", note],
             attempts=[SPOT_ATTEMPT | {"instance_id": None, "ended_at": None, "end_reason": None,
                                       "billed_seconds": None, "launched_at": None}],
             spec={"run": "x", "job_recovery": POLICY})  # fmt: skip

    shown = run("status", "job-wait")

    fields = _fields(shown.out)
    assert fields["status"] == "WAITING_CAPACITY"
    assert fields["status detail"] == WAITING_DETAIL
    assert fields["note"] == "A10 is sold as A10G"  # the API's note repeating the detail is not shown twice
    assert fields["attempt"] == "1 of at most 13 (job_recovery)"
    assert "cost so far" not in fields  # nothing launched
    assert "attempts:" not in shown.out  # one attempt: no table


def test_jobs_filters_on_the_recovery_states_and_refuses_unknown_ones(api: FakeApi, run: Any) -> None:
    _put_job(api, "job-wait", "WAITING_CAPACITY")
    _put_job(api, "job-rec", "RECOVERING", market="spot", launched_at=LAUNCHED_AT)

    waiting = run("jobs", "--status", "waiting_capacity")
    recovering = run("jobs", "--status", "RECOVERING")
    unknown = run("jobs", "--status", "RESTARTING")

    assert [line.split()[0] for line in waiting.out.splitlines()[1:]] == ["job-wait"]
    assert [line.split()[:3] for line in recovering.out.splitlines()[1:]] == [["job-rec", "-", "RECOVERING"]]
    assert unknown.code == 2
    assert "RECOVERING" in unknown.err
    assert "WAITING_CAPACITY" in unknown.err


def test_logs_prints_what_is_there_and_follows_to_the_end(api: FakeApi, run: Any, tmp_path: Path) -> None:
    api.add_provider()
    run("submit", _task(tmp_path, TASK))
    run("submit", _task(tmp_path, TASK))
    followed = run("logs", "job-0001", "--follow", "--poll", "0.01")
    assert followed.code == 0
    assert followed.out == LOG
    assert followed.err == ""
    assert run("logs", "job-0001").out == LOG  # complete: all of it, in one go
    early = run("logs", "job-0002")  # not running yet: nothing, and no error
    assert (early.code, early.out) == (0, "")


def test_catalog_tables_show_na_for_unknown_prices(api: FakeApi, run: Any) -> None:
    result = run("catalog")
    assert result.code == 0
    lines = result.out.splitlines()
    assert lines[0].split() == ["GPU", "GPU", "MEMORY", "GIB", "COUNTS", "INSTANCE", "TYPES"]
    assert lines[1].split() == ["H100", "80", "1,", "8", "p5.4xlarge,", "p5.48xlarge"]
    rows = {line.split()[0]: line.split() for line in lines if line.startswith(("p5", "g4dn", "c7i"))}
    assert rows["p5.4xlarge"] == ["p5.4xlarge", "16", "256", "H100", "x1", "n/a"]
    assert rows["g4dn.xlarge"] == ["g4dn.xlarge", "4", "16", "T4", "x1", "0.5260"]
    assert rows["c7i.large"] == ["c7i.large", "2", "4", "-", "0.0892"]
    filtered = run("catalog", "--gpu", "T4", "--region", "us-west-2")
    assert "p5.4xlarge" not in filtered.out
    assert ("GET", "/catalog") in [(m, p) for m, p, _, _ in api.requests]
    raw = json.loads(run("catalog", "--json").out)
    assert raw["instance_types"][0]["price_per_hour"] is None


# -- providers -------------------------------------------------------------------------------------------------


def test_providers_add_list_show_delete_never_print_the_secret(
    api: FakeApi, run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    added = run("providers", "add", "--name", "main", "--region", "us-east-1", "--access-key-id", "AKIAEXAMPLEKEY00001",
                "--secret-access-key", "flag-secret-123456")  # fmt: skip
    assert added.code == 0
    assert added.out.startswith("added provider prov-1: main in us-east-1 (account 123456789012")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret-654321")
    from_env = run(
        "providers", "add", "--name", "second", "--region", "us-west-2", "--access-key-id", "AKIAEXAMPLEKEY2"
    )
    assert from_env.code == 0
    assert api.secrets == {"prov-1": "flag-secret-123456", "prov-2": "env-secret-654321"}
    wrong = run("providers", "add", "--name", "x", "--region", "us-east-1", "--access-key-id", "AKIAEXAMPLEKEY3",
                "--secret-access-key", "wrong")  # fmt: skip
    assert wrong.code == 1
    assert "(HTTP 400 INVALID_CREDENTIALS)" in wrong.err
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    no_secret = run("providers", "add", "--name", "x", "--region", "us-east-1", "--access-key-id", "AKIAEXAMPLEKEY3")
    assert no_secret.code == 2
    listed = run("providers", "list")
    assert [line.split()[0] for line in listed.out.splitlines()] == ["PROVIDER", "prov-1", "prov-2"]
    shown = run("providers", "show", "prov-2")
    assert _fields(shown.out)["user"] == "arn:aws:iam::123456789012:user/second"
    assert json.loads(run("providers", "show", "prov-2", "--json").out)["name"] == "second"
    assert run("providers", "delete", "prov-2").out.strip() == "deleted provider prov-2"
    gone = run("providers", "delete", "prov-2")
    assert gone.code == 1
    assert "no such provider: prov-2" in gone.err
    everything = "".join(str(r) for r in (added, from_env, listed, shown))
    assert "flag-secret-123456" not in everything
    assert "env-secret-654321" not in everything


# -- the local control plane (a fake local.runtime) ------------------------------------------------------------


EMULATED_KEY_ID = "AKIAEMULATEDUSER0001"
EMULATED_SECRET = "emulated-secret-never-print-me"


class FakeRuntime:
    def __init__(self, api_url: str, token: str, team_id: str, ending: str) -> None:
        self.api_url = api_url
        self.token = token
        self.endpoint = "http://127.0.0.1:4566"
        self.region = "us-east-1"
        self.team_id = team_id
        self.env = {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "AKIAFAKEEC2JOBSLOCAL",
            "EC2JOBS_STATE_MACHINE_ARN": "arn:aws:states:us-east-1:123456789012:stateMachine:ec2jobs",
            "JOBS_TABLE": "ec2jobs-jobs",
        }
        self.ending = ending
        self.stop_calls = 0
        self.stopped = threading.Event()

    def wait(self) -> None:
        if self.ending == "interrupt":
            raise KeyboardInterrupt
        if self.ending == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
        self.stopped.wait(5)

    def stop(self) -> None:
        self.stop_calls += 1
        self.stopped.set()


@dataclass
class FakeRuntimeModule:
    api_url: str
    ending: str = "interrupt"
    started: list[dict[str, Any]] = field(default_factory=list)
    runtimes: list[FakeRuntime] = field(default_factory=list)
    calls: list[tuple[str, Path, str | None]] = field(default_factory=list)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        module = types.ModuleType("local.runtime")
        module.start = self.start  # type: ignore[attr-defined]
        module.issue_token = self.issue_token  # type: ignore[attr-defined]
        module.emulated_provider_keys = self.emulated_provider_keys  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "local.runtime", module)

    def start(self, workdir: Path, team_id: str = "default") -> FakeRuntime:
        if self.ending == "fail":
            raise RuntimeError("emulator did not start:\n port 4566 in use")
        if self.ending == "sigterm-while-starting":
            os.kill(os.getpid(), signal.SIGTERM)  # the runtime cleans up after itself (BaseException)
        self.started.append({"workdir": workdir, "team_id": team_id})
        runtime = FakeRuntime(self.api_url, TOKEN, team_id, self.ending)
        self.runtimes.append(runtime)
        return runtime

    def issue_token(self, env_file: Path, team_id: str) -> str:
        self.calls.append(("issue_token", env_file, team_id))
        return f"tok-for-{team_id}"

    def emulated_provider_keys(self, env_file: Path) -> tuple[str, str]:
        self.calls.append(("emulated_provider_keys", env_file, None))
        return EMULATED_KEY_ID, EMULATED_SECRET


@pytest.fixture
def runtime(api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> FakeRuntimeModule:
    """A fake local.runtime whose control plane is the fake API; the environment names no API (local.env does)."""
    fake = FakeRuntimeModule(api.url)
    fake.install(monkeypatch)
    monkeypatch.delenv("EC2JOBS_API_URL")
    monkeypatch.delenv("EC2JOBS_TOKEN")
    return fake


@pytest.mark.parametrize("ending", ["interrupt", "sigterm"])
def test_local_up_writes_local_env_and_stops_on_ctrl_c_or_sigterm(
    runtime: FakeRuntimeModule, run: Any, ending: str
) -> None:
    runtime.ending = ending
    before = signal.getsignal(signal.SIGTERM)
    result = run("local", "up", "--team", "ml-team")  # the run fixture asserts the token is not printed
    assert result.code == 0
    assert "EC2JOBS_TOKEN=<team ml-team's bearer token: in .ec2jobs/local.env, not shown>" in result.out
    assert runtime.started == [{"workdir": Path(".ec2jobs"), "team_id": "ml-team"}]
    assert runtime.runtimes[0].stop_calls == 1
    assert signal.getsignal(signal.SIGTERM) == before
    env_file = Path(".ec2jobs/local.env")
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    values = cli.read_env_file(env_file)
    assert values["EC2JOBS_API_URL"] == runtime.api_url
    assert values["EC2JOBS_TOKEN"] == TOKEN
    assert values["AWS_ENDPOINT_URL"] == "http://127.0.0.1:4566"
    assert values["AWS_DEFAULT_REGION"] == "us-east-1"
    assert values["EC2JOBS_STATE_MACHINE_ARN"].startswith("arn:aws:states:")
    assert values["JOBS_TABLE"] == "ec2jobs-jobs"
    assert all("=" in line for line in env_file.read_text().splitlines() if not line.startswith("#"))
    assert f"EC2JOBS_API_URL={runtime.api_url}" in result.out
    assert "source .ec2jobs/local.env" in result.out
    assert "aws --endpoint-url http://127.0.0.1:4566" in result.out
    assert "stopped." in result.err
    assert run("jobs").code == 0  # the other commands now find the API through local.env


def test_local_up_without_team_uses_the_runtime_default_and_a_start_failure_is_one_line(
    runtime: FakeRuntimeModule, run: Any
) -> None:
    assert run("local", "up").code == 0
    assert runtime.started == [{"workdir": Path(".ec2jobs"), "team_id": "default"}]
    runtime.ending = "fail"
    failed = run("local", "up")
    assert failed.code == 1
    assert (
        failed.err.strip()
        == "ec2jobs: error: could not start the local control plane: emulator did not start: port 4566 in use"
    )
    runtime.ending = "sigterm-while-starting"
    before = signal.getsignal(signal.SIGTERM)
    interrupted = run("local", "up")
    assert interrupted.code == 130
    assert interrupted.err.strip() == "interrupted while starting the local control plane"
    assert len(runtime.runtimes) == 1
    assert signal.getsignal(signal.SIGTERM) == before


def test_local_token_prints_a_new_token(runtime: FakeRuntimeModule, run: Any) -> None:
    missing = run("local", "token", "--team", "ml-team")
    assert missing.code == 2
    assert "ec2jobs local up" in missing.err
    run("local", "up")
    result = run("local", "token", "--team", "ml-team")
    assert (result.code, result.out) == (0, "tok-for-ml-team\n")
    assert runtime.calls == [("issue_token", Path(".ec2jobs/local.env"), "ml-team")]


def test_providers_add_emulated_uses_the_runtime_keys_and_never_prints_the_secret(
    runtime: FakeRuntimeModule, api: FakeApi, run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    run("local", "up")
    result = run("providers", "add", "--name", "local", "--region", "us-east-1", "--emulated")
    assert result.code == 0
    assert result.out.startswith("added provider prov-1: local in us-east-1")
    assert EMULATED_SECRET not in result.out + result.err
    assert runtime.calls == [("emulated_provider_keys", Path(".ec2jobs/local.env"), None)]
    posted = next(body for method, path, _, body in api.requests if (method, path) == ("POST", "/providers"))
    assert (posted["access_key_id"], posted["secret_access_key"]) == (EMULATED_KEY_ID, EMULATED_SECRET)
    as_json = run("providers", "add", "--name", "local2", "--region", "us-east-1", "--emulated", "--json")
    assert EMULATED_SECRET not in as_json.out
    both = run("providers", "add", "--name", "x", "--region", "us-east-1", "--emulated", "--access-key-id", "AKIAX")
    assert both.code == 2
    monkeypatch.setenv("EC2JOBS_API_URL", "https://api.example.invalid")
    remote = run("providers", "add", "--name", "x", "--region", "us-east-1", "--emulated")
    assert remote.code == 2
    assert "--emulated works only against the local API" in remote.err
    assert len(runtime.calls) == 2


# -- the client on its own -------------------------------------------------------------------------------------


def test_client_hides_the_token_and_refuses_other_schemes(api: FakeApi) -> None:
    client = Client(api.url + "/", TOKEN, timeout=5)
    assert TOKEN not in repr(client)
    assert client.base_url == api.url
    for url in ("ftp://127.0.0.1", "file:///tmp/x", "127.0.0.1:8080", "http://"):
        with pytest.raises(ValueError, match="http"):
            Client(url, TOKEN)
    with pytest.raises(ApiError) as caught:
        Client(api.url, OTHER_TOKEN).list_jobs()
    assert (caught.value.status, caught.value.code, caught.value.message) == (401, "UNAUTHORIZED", "Unauthorized")
    assert OTHER_TOKEN not in str(caught.value) + repr(caught.value)


def test_client_follow_logs_yields_pieces_until_complete(api: FakeApi) -> None:
    client = Client(api.url, TOKEN)
    provider_id = api.add_provider()
    job = client.submit_job(provider_id, {"name": "train", "run": "python train.py"})
    naps: list[float] = []
    pieces = list(client.follow_logs(job["job_id"], poll=0.25, sleep=naps.append))
    assert "".join(pieces) == LOG
    assert len(pieces) == len(LOG_PIECES)
    assert naps
    assert set(naps) == {0.25}
    with pytest.raises(ApiError, match="no such job"):
        client.get_job("../providers")  # ids are one path segment


def test_client_follow_logs_stops_at_final_and_returns_the_last_page(api: FakeApi) -> None:
    client = Client(api.url, TOKEN)
    provider_id = api.add_provider()
    job = client.submit_job(provider_id, {"name": "lost", "run": "python train.py"})
    naps: list[float] = []

    def nap(seconds: float) -> None:
        assert len(naps) < 50, "still polling a log that is final"
        naps.append(seconds)

    stream = client.follow_logs(job["job_id"], poll=0.25, sleep=nap)
    pieces: list[str] = []
    while True:
        try:
            pieces.append(next(stream))
        except StopIteration as end:
            last = end.value
            break
    assert "".join(pieces) == "".join(LOG_PIECES[:2])
    assert (last["final"], last["complete"]) == (True, False)
    assert cli_client.log_final(last)
    assert cli_client.log_tail_missing(last)
    assert cli_client.log_final({"complete": True})  # an API from before `final`: complete meant final
    assert not cli_client.log_tail_missing({"complete": True})
    assert not cli_client.log_final({"complete": False})


def test_python_dash_m_runs_the_cli(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": f"{root}:{root / 'lambdas'}"}
    env.pop("EC2JOBS_API_URL", None)
    env.pop("EC2JOBS_TOKEN", None)
    done = subprocess.run(
        [sys.executable, "-m", "ec2jobs", "jobs"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("ec2jobs: error: no API URL")
