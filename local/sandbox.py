"""One simulated EC2 instance on this machine: the sandbox part of the local instance simulator.

`InstanceSandbox(SandboxConfig(...)).boot()` does what an EC2 boot does for the job wrapper, under the sandbox root
`base_dir/instance_id` (the job wrapper's EC2JOBS_ROOT):

- a random "cloud-init" Ed25519 host key and a real OpenSSH sshd on (address, ssh_port) (local.sshd);
- an IMDSv2 server on (address, a free port): PUT /latest/api/token, then meta-data (instance-id, placement/region,
  ...) only with a valid token (401 without);
- the user data, decoded, written to var/lib/cloud/instance/user-data.txt and run as `bash <file>` in the
  background in its own session, output to var/log/cloud-init-output.log, with PATH starting with the command
  shims of local/shims (shutdown, aws, systemctl: they call `python -m local.sandbox <shim> ...` below) and the
  environment the shims need (EC2JOBS_SANDBOX_*, EC2JOBS_SSHD_*, fake AWS credentials pinned to the emulator).

`shutdown()` is the instance terminated: every process of the instance (the user data's process group, its
descendants, and anything else carrying the instance's EC2JOBS_ROOT in its environment, e.g. a daemon that left
the group, the scheduled-shutdown sleeper or an SSH session) is SIGKILLed, then IMDS and sshd stop.

The shims only ever call the loopback emulator endpoint with the fake keys (local.guard); nothing here can reach
real AWS or power off this machine through PATH.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

from local import sshd, users
from local.guard import (
    FAKE_ACCESS_KEY_ID,
    FAKE_SECRET_ACCESS_KEY,
    RealAwsRefused,
    assert_loopback_url,
    install_network_guard,
    is_loopback_host,
    isolated_aws_environment,
)

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
SHIM_DIR = Path(__file__).resolve().parent / "shims"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Paths relative to the sandbox root.
HOST_KEY = "etc/ssh/ssh_host_ed25519_key"
USER_DATA_FILE = "var/lib/cloud/instance/user-data.txt"
CLOUD_INIT_LOG = "var/log/cloud-init-output.log"
SCHEDULE_FILE = "var/lib/ec2jobs-sim/scheduled-shutdown"
SHUTDOWN_LOG = "var/log/shutdown-shim.log"
AWS_LOG = "var/log/aws-shim.log"
SYSTEMCTL_LOG = "var/log/systemctl-shim.log"

TOKEN_PATH = "/latest/api/token"  # noqa: S105 - a URL path, not a secret
TOKEN_TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"  # noqa: S105 - a header name
TOKEN_HEADER = "X-aws-ec2-metadata-token"  # noqa: S105 - a header name
MAX_TOKEN_TTL = 21600
SSH_UNITS = frozenset({"ssh", "sshd", "ssh.service", "sshd.service"})
RELOAD_VERBS = frozenset({"reload", "restart", "try-restart", "reload-or-restart", "try-reload-or-restart"})
UNSUPPORTED_AWS = "aws CLI shim: only `ec2 terminate-instances` is emulated"

_PROFILE = """\
# ec2jobs instance sandbox: /etc/profile resets PATH in login shells; put the sandbox's command shims (shutdown,
# aws, systemctl) back in front so that a job can never reach the host's real ones.
if [ -n "${EC2JOBS_SANDBOX_SHIMS:-}" ]; then
  case ":$PATH:" in
    *":$EC2JOBS_SANDBOX_SHIMS:"*) ;;
    *) PATH="$EC2JOBS_SANDBOX_SHIMS:$PATH" ;;
  esac
  export PATH
fi
"""


@dataclass(frozen=True)
class SandboxConfig:
    instance_id: str
    region: str
    address: str  # loopback address for this instance, e.g. "127.0.0.5" (its "public IP")
    user_data: bytes  # as given to RunInstances (may be gzip-compressed)
    endpoint_url: str  # the AWS emulator endpoint (loopback), for the shims' EC2 calls
    base_dir: Path  # the sandbox lives in base_dir / instance_id
    ssh_port: int = 22  # sshd port on `address`
    availability_zone: str = ""  # IMDS placement/availability-zone (default: region + "a")
    instance_type: str = ""  # IMDS instance-type (absent when empty)
    login_user: str = ""  # the AMI's login user, whose sandbox home gets a .profile (default: the current user)
    shutdown_minute_seconds: float = 60.0  # what one minute of `shutdown -h +N` lasts (tests shorten it)
    instance_role: str = ""  # the instance profile's role name (IMDS iam/security-credentials/<role>); "" = none
    # the role's current temporary credentials as IMDS serves them (Code, AccessKeyId, SecretAccessKey, Token,
    # Expiration, ...); called on every IMDS read, so the caller can rotate them as EC2 does
    role_credentials: Callable[[], Mapping[str, str]] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.instance_id or not all(c.isalnum() or c in "-_" for c in self.instance_id):
            raise ValueError(f"instance_id {self.instance_id!r} is not a plain identifier")
        if not is_loopback_host(self.address):
            raise ValueError(f"address {self.address!r} is not a loopback address")
        assert_loopback_url(self.endpoint_url)
        if self.shutdown_minute_seconds <= 0:
            raise ValueError("shutdown_minute_seconds must be positive")


class _MetadataService:
    """IMDSv2 state: session tokens and the metadata tree (flat "a/b" paths; directories are implied)."""

    def __init__(
        self,
        metadata: Mapping[str, str],
        user_data: bytes,
        identity: Mapping[str, Any],
        dynamic: Mapping[str, Callable[[], str]] | None = None,
    ) -> None:
        self.lock = threading.Lock()
        self.tokens: dict[str, float] = {}
        self.metadata = dict(metadata)
        self.dynamic = dict(dynamic or {})  # paths whose value is computed on each read (role credentials)
        self.user_data = user_data
        self.identity = dict(identity)

    def issue(self, ttl: int) -> str:
        token = secrets.token_urlsafe(32)
        with self.lock:
            now = time.monotonic()
            self.tokens = {t: end for t, end in self.tokens.items() if end > now}
            self.tokens[token] = now + ttl
        return token

    def valid(self, token: str | None) -> bool:
        if not token:
            return False
        with self.lock:
            end = self.tokens.get(token)
        return end is not None and end > time.monotonic()

    def set(self, path: str, value: str | None) -> None:
        path = path.strip("/")
        with self.lock:
            if value is None:
                self.metadata.pop(path, None)
            else:
                self.metadata[path] = value

    def lookup(self, path: str) -> tuple[int, bytes, str]:
        """(status, body, content type) for a GET of `path` (token already checked)."""
        text = "text/plain"
        if path in ("/latest", "/latest/"):
            return 200, b"dynamic\nmeta-data\nuser-data", text
        if path == "/latest/user-data":
            return (200, self.user_data, "application/octet-stream") if self.user_data else (404, b"", text)
        if path.rstrip("/") == "/latest/dynamic/instance-identity/document":
            return 200, json.dumps(self.identity, indent=2).encode(), "application/json"
        prefix = "/latest/meta-data"
        if path != prefix and not path.startswith(prefix + "/"):
            return 404, b"", text
        relative = path[len(prefix) :].strip("/")
        if relative in self.dynamic:
            value = self.dynamic[relative]()
            return 200, value.encode(), text
        with self.lock:
            if relative in self.metadata:
                return 200, self.metadata[relative].encode(), text
            below = relative + "/" if relative else ""
            names = set()
            for key in [*self.metadata, *self.dynamic]:
                if key.startswith(below):
                    head, slash, _ = key[len(below) :].partition("/")
                    names.add(head + slash)
        if not names:
            return 404, b"", text
        return 200, "\n".join(sorted(names)).encode(), text


class _ImdsHttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], service: _MetadataService) -> None:
        self.service = service
        super().__init__(address, _ImdsHandler)


class _ImdsHandler(BaseHTTPRequestHandler):
    server_version = "EC2ws"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _service(self) -> _MetadataService:
        return cast(_ImdsHttpServer, self.server).service

    def _reply(self, status: int, body: bytes = b"", content_type: str = "text/plain", **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_PUT(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        if urlsplit(self.path).path != TOKEN_PATH:
            self._reply(404)
            return
        if self.headers.get("X-Forwarded-For"):  # like IMDS: tokens are never handed to a proxied request
            self._reply(403)
            return
        raw = self.headers.get(TOKEN_TTL_HEADER, "")
        ttl = int(raw) if raw.strip().isdigit() else 0
        if not 1 <= ttl <= MAX_TOKEN_TTL:
            self._reply(400)
            return
        token = self._service().issue(ttl)
        self._reply(200, token.encode(), **{TOKEN_TTL_HEADER: str(ttl)})

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == TOKEN_PATH:
            self._reply(405)
            return
        service = self._service()
        if not service.valid(self.headers.get(TOKEN_HEADER)):
            self._reply(401)  # IMDSv2 required: no (valid) session token, no metadata
            return
        status, body, content_type = service.lookup(path)
        self._reply(status, body, content_type)


class SandboxTerminated(RuntimeError):
    """shutdown() was called while boot() was still running."""


def _write_private(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    path.chmod(mode)


def _host_key(comment: str) -> tuple[str, str]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()).decode()
    public = key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()
    return private, f"{public} {comment}"


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgrp) of a live process, None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2 :].split()
    return fields[0].decode(), int(fields[1]), int(fields[2])


def _alive(pid: int) -> bool:
    stat = _proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


class InstanceSandbox:
    """A simulated instance: boot() it once, shutdown() when the instance is terminated."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self._root = users.instance_root(config.base_dir, config.instance_id)
        self._lock = threading.Lock()
        self._booted = False
        self._stopped = False
        self._ssh: sshd.SshServer | None = None
        self._imds: _ImdsHttpServer | None = None
        self._imds_thread: threading.Thread | None = None
        self._metadata: _MetadataService | None = None
        self._process: subprocess.Popen[bytes] | None = None

    # -- public API ---------------------------------------------------------------------------------------------

    @property
    def root(self) -> Path:
        return self._root

    @property
    def ssh(self) -> sshd.SshServer | None:
        return self._ssh

    @property
    def imds_url(self) -> str:
        if self._imds is None:
            raise RuntimeError("the sandbox has not booted: no IMDS yet")
        host, port = self._imds.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def running(self) -> bool:
        """The user-data process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def exit_code(self) -> int | None:
        """The user-data script's exit status once it has ended (None while it runs or before boot)."""
        return None if self._process is None else self._process.poll()

    def set_metadata(self, path: str, value: str | None) -> None:
        """Add, change or (value None) remove an IMDS meta-data entry, e.g. "spot/instance-action"."""
        if self._metadata is None:
            raise RuntimeError("the sandbox has not booted: no IMDS yet")
        self._metadata.set(path, value)

    def boot(self) -> None:
        """Create the root, start sshd and IMDS, start the user data; returns once it runs (not when it ends).

        Raises SandboxTerminated if shutdown() was called meanwhile (from another thread), or the error of the step
        that failed (e.g. local.sshd.SshdUnavailable); either way nothing of the instance is left running."""
        with self._lock:
            if self._booted or self._stopped:
                raise RuntimeError(f"sandbox {self.config.instance_id} was already booted")
            self._booted = True
        try:
            self._prepare_root()
            self._ssh = sshd.start(self._root, host=self.config.address, port=self.config.ssh_port)
            _check_owns_listener(self._ssh)
            self._abort_if_stopped()
            self._start_imds()
            self._abort_if_stopped()
            self._run_user_data()
        except BaseException:
            with self._lock:
                self._stopped = True
            self._teardown()
            raise

    def shutdown(self) -> None:
        """The instance is terminated: kill all its processes, stop IMDS and sshd. Idempotent, never raises."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._teardown()

    # -- boot ---------------------------------------------------------------------------------------------------

    def _login_user(self) -> str:
        return self.config.login_user or users.instance_users()[0]

    def _prepare_root(self) -> None:
        root = self._root
        for directory in ("etc/ssh", "var/lib/cloud/instance", "var/log", "var/lib/ec2jobs-sim", "root", "tmp"):
            (root / directory).mkdir(parents=True, exist_ok=True)
        (root / "tmp").chmod(0o1777)
        users.ensure_login_user(self._login_user())  # the AMI has its login user
        for shared in (root, root / "var", root / "var/lib", root / "etc", root / "home"):
            shared.mkdir(parents=True, exist_ok=True)
            shared.chmod(0o755)
        users.make_traversable(root)
        users.make_traversable(SHIM_DIR)  # the job user's login shell finds the shims before any real command
        home = root / "home" / self._login_user()
        home.mkdir(parents=True, exist_ok=True)
        profile = home / ".profile"
        if not profile.exists():
            profile.write_text(_PROFILE)
        private, public = _host_key(f"root@{self.config.instance_id}")  # cloud-init's, not the job's pinned key
        _write_private(root / HOST_KEY, private, 0o600)
        (root / f"{HOST_KEY}.pub").write_text(public + "\n")

    def _start_imds(self) -> None:
        config = self.config
        zone = config.availability_zone or f"{config.region}a"
        hostname = f"ip-{config.address.replace('.', '-')}.{config.region}.compute.internal"
        metadata = {
            "instance-id": config.instance_id,
            "placement/region": config.region,
            "placement/availability-zone": zone,
            "local-ipv4": config.address,
            "public-ipv4": config.address,
            "hostname": hostname,
            "local-hostname": hostname,
            "services/domain": "amazonaws.com",
        }
        identity: dict[str, Any] = {
            "instanceId": config.instance_id,
            "region": config.region,
            "availabilityZone": zone,
            "privateIp": config.address,
        }
        if config.instance_type:
            metadata["instance-type"] = config.instance_type
            identity["instanceType"] = config.instance_type
        dynamic: dict[str, Callable[[], str]] = {}
        if config.instance_role and config.role_credentials is not None:
            provider = config.role_credentials
            dynamic[f"iam/security-credentials/{config.instance_role}"] = lambda: json.dumps(dict(provider()))
        self._metadata = _MetadataService(metadata, config.user_data, identity, dynamic)
        self._imds = _ImdsHttpServer((config.address, 0), self._metadata)
        self._imds_thread = threading.Thread(
            target=self._imds.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"imds-{config.instance_id}",
            daemon=True,
        )
        self._imds_thread.start()

    def environment(self) -> dict[str, str]:
        """The user data's environment (also what the shims read)."""
        config = self.config
        if self._ssh is None:
            raise RuntimeError("the sandbox has not booted: no sshd yet")
        env = isolated_aws_environment(config.endpoint_url, config.region)  # fake keys, emulator endpoint, no IMDS
        env.update(
            {
                "PATH": f"{SHIM_DIR}:{SYSTEM_PATH}",
                "HOME": str(self._root / "root"),
                "LANG": "C.UTF-8",
                "EC2JOBS_ROOT": str(self._root),
                "EC2JOBS_IMDS_ENDPOINT": self.imds_url,
                "EC2JOBS_SANDBOX_INSTANCE_ID": config.instance_id,
                "EC2JOBS_SANDBOX_REGION": config.region,
                "EC2JOBS_SANDBOX_ENDPOINT": config.endpoint_url,
                "EC2JOBS_SANDBOX_PYTHON": sys.executable,
                "EC2JOBS_SANDBOX_SHIMS": str(SHIM_DIR),
                "EC2JOBS_SANDBOX_MINUTE_SECONDS": repr(config.shutdown_minute_seconds),
                "EC2JOBS_SSHD_PID": str(self._ssh.process.pid),
                "EC2JOBS_SSHD_ADDRESS": self._ssh.host,
                "EC2JOBS_SSHD_PORT": str(self._ssh.port),
                # As on EC2, no keys in the environment: SDKs (and the aws shim) get the instance role's
                # credentials from this instance's IMDS, or none at all.
                "AWS_EC2_METADATA_DISABLED": "false",
                "AWS_EC2_METADATA_SERVICE_ENDPOINT": self.imds_url,
                "AWS_CONFIG_FILE": os.devnull,
                "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            }
        )
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            env.pop(name, None)
        return env

    def _run_user_data(self) -> None:
        from controlplane.core.userdata import decode

        script = self._root / USER_DATA_FILE
        _write_private(script, decode(self.config.user_data), 0o600)
        bash = shutil.which("bash", path=SYSTEM_PATH) or "/bin/bash"
        environment = self.environment()
        with open(self._root / CLOUD_INIT_LOG, "ab") as output, self._lock:
            if self._stopped:  # checked under the lock: shutdown() either sees the process or it never starts
                raise SandboxTerminated(f"instance {self.config.instance_id} was terminated while booting")
            self._process = subprocess.Popen(  # noqa: S603 - the instance's own user data, in its sandbox
                [bash, str(script)],
                cwd=self._root,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    # -- shutdown -----------------------------------------------------------------------------------------------

    def _instance_pids(self) -> set[int]:
        """Live processes of this instance: the user data's process group, anything carrying this sandbox's
        EC2JOBS_ROOT in its environment, and their descendants; never this process or its ancestors."""
        marker = f"EC2JOBS_ROOT={self._root}".encode()
        # The group only while its leader is unreaped (a zombie at worst): its id cannot have been reused then.
        process = self._process
        group = process.pid if process is not None and process.returncode is None else -1
        parents: dict[int, int] = {}
        found: set[int] = set()
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            stat = _proc_stat(pid)
            if stat is None or stat[0] in ("Z", "X"):
                continue
            parents[pid] = stat[1]
            if stat[2] == group:
                found.add(pid)
                continue
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes()
            except OSError:
                continue
            if marker in environ.split(b"\0"):
                found.add(pid)
        children: dict[int, list[int]] = {}
        for pid, parent in parents.items():
            children.setdefault(parent, []).append(pid)
        pending = list(found)
        while pending:
            for child in children.get(pending.pop(), []):
                if child not in found:
                    found.add(child)
                    pending.append(child)
        protected = set()
        pid = os.getpid()
        while pid > 0 and pid not in protected:
            protected.add(pid)
            pid = parents.get(pid, 0)
        return found - protected

    def _abort_if_stopped(self) -> None:
        with self._lock:
            if self._stopped:
                raise SandboxTerminated(f"instance {self.config.instance_id} was terminated while booting")

    def _teardown(self) -> None:
        for step in (self._kill_processes, self._stop_sshd, self._stop_imds):
            try:
                step()
            except Exception:
                logger.exception("sandbox %s: shutdown step %s failed", self.config.instance_id, step.__name__)

    def _kill_processes(self) -> None:
        process = self._process
        deadline = time.monotonic() + 1.0
        while True:
            if process is not None and process.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
            pids = self._instance_pids()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            if not pids or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        if process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=0.5)

    def _stop_sshd(self) -> None:
        if self._ssh is None:
            return
        self._ssh.drop_sessions()
        process = self._ssh.process
        if process.poll() is None:
            process.kill()  # the instance is gone: no graceful stop
        process.wait(timeout=1)

    def _stop_imds(self) -> None:
        if self._imds is not None:
            self._imds.shutdown()
            self._imds.server_close()
        if self._imds_thread is not None:
            self._imds_thread.join(timeout=1)


# -- the shims (run as `python -m local.sandbox <shim> ARGS`, from local/shims/<shim>) ----------------------------


class NotInSandbox(RuntimeError):
    pass


@dataclass(frozen=True)
class ShimEnvironment:
    root: Path
    instance_id: str
    region: str
    endpoint: str
    python: str
    minute_seconds: float = 60.0
    sshd_pid: int | None = None
    sshd_address: str = ""
    sshd_port: int = 0
    environ: Mapping[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None) -> ShimEnvironment:
        env = dict(os.environ if environ is None else environ)
        required = ("EC2JOBS_ROOT", "EC2JOBS_SANDBOX_INSTANCE_ID", "EC2JOBS_SANDBOX_REGION", "EC2JOBS_SANDBOX_ENDPOINT")
        missing = [name for name in required if not env.get(name)]
        if missing:
            raise NotInSandbox(f"not inside an instance sandbox ({', '.join(missing)} unset)")
        pid = env.get("EC2JOBS_SSHD_PID", "")
        port = env.get("EC2JOBS_SSHD_PORT", "")
        return cls(
            root=Path(env["EC2JOBS_ROOT"]),
            instance_id=env["EC2JOBS_SANDBOX_INSTANCE_ID"],
            region=env["EC2JOBS_SANDBOX_REGION"],
            endpoint=assert_loopback_url(env["EC2JOBS_SANDBOX_ENDPOINT"]),
            python=env.get("EC2JOBS_SANDBOX_PYTHON") or sys.executable,
            minute_seconds=float(env.get("EC2JOBS_SANDBOX_MINUTE_SECONDS") or 60.0),
            sshd_pid=int(pid) if pid.isdigit() else None,
            sshd_address=env.get("EC2JOBS_SSHD_ADDRESS", ""),
            sshd_port=int(port) if port.isdigit() else 0,
            environ=env,
        )

    def log(self, relative: str, message: str) -> None:
        path = self.root / relative
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            with open(path, "a", encoding="utf-8") as handle:
                handle.write(f"{stamp} [{os.getpid()}] {message}\n")


class NoCredentials(RuntimeError):
    """The instance has no role (no instance profile): the AWS CLI finds no credentials."""


def instance_credentials(env: ShimEnvironment) -> dict[str, str]:
    """The instance role's temporary credentials, read from this instance's IMDS (IMDSv2) as the AWS CLI does."""
    import urllib.error
    import urllib.request

    base = assert_loopback_url(env.environ.get("EC2JOBS_IMDS_ENDPOINT", ""))

    def call(path: str, method: str = "GET", headers: Mapping[str, str] | None = None) -> str:
        request = urllib.request.Request(base + path, method=method, headers=dict(headers or {}))  # noqa: S310
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - the sandbox's loopback IMDS
            return str(response.read().decode())

    try:
        token = call(TOKEN_PATH, "PUT", {TOKEN_TTL_HEADER: "60"})
        auth = {TOKEN_HEADER: token}
        listing = "/latest/meta-data/iam/security-credentials/"
        role = call(listing, headers=auth).splitlines()[0].strip()
        document = json.loads(call(listing + role, headers=auth))
    except (urllib.error.URLError, OSError, IndexError, ValueError) as error:
        raise NoCredentials("Unable to locate credentials (the instance has no IAM role)") from error
    return {key: str(value) for key, value in document.items()}


def terminate_instances(
    env: ShimEnvironment, instance_ids: list[str], region: str, credentials: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """EC2 TerminateInstances on the emulator (loopback only): with the instance role's `credentials` (what a
    program on the instance has), or, without them, as EC2 itself (the instance's shutdown behaviour)."""
    import boto3
    from botocore.config import Config

    keys: dict[str, str] = {"aws_access_key_id": FAKE_ACCESS_KEY_ID, "aws_secret_access_key": FAKE_SECRET_ACCESS_KEY}
    if credentials is not None:
        keys = {
            "aws_access_key_id": credentials["AccessKeyId"],
            "aws_secret_access_key": credentials["SecretAccessKey"],
            "aws_session_token": credentials["Token"],
        }
    client = boto3.client(
        "ec2",
        region_name=region,
        endpoint_url=assert_loopback_url(env.endpoint),
        config=Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=30),
        **keys,
    )
    response = client.terminate_instances(InstanceIds=instance_ids)
    response.pop("ResponseMetadata", None)
    return cast(dict[str, Any], response)


# -- aws ------------------------------------------------------------------------------------------------------------

_AWS_VALUE_OPTIONS = frozenset({"--region", "--output", "--endpoint-url", "--profile", "--color", "--query"})
_AWS_FLAGS = frozenset({"--no-cli-pager", "--no-paginate", "--no-dry-run", "--debug"})


def parse_aws(argv: list[str]) -> tuple[str | None, list[str]]:
    """(region, instance ids) of `aws ec2 terminate-instances ...`; ValueError for anything else."""
    words: list[str] = []
    options: dict[str, str] = {}
    ids: list[str] = []
    index = 0
    while index < len(argv):
        word = argv[index]
        index += 1
        name, eq, inline = word.partition("=")
        if name == "--instance-ids":
            ids += [inline] if eq else []
            while index < len(argv) and not argv[index].startswith("--"):
                ids.append(argv[index])
                index += 1
        elif name in _AWS_VALUE_OPTIONS:
            if not eq:
                if index >= len(argv):
                    raise ValueError(f"{name} needs a value")
                inline = argv[index]
                index += 1
            options[name] = inline
        elif word in _AWS_FLAGS:
            continue
        elif word.startswith("-"):
            raise ValueError(f"option {word} is not emulated")
        else:
            words.append(word)
    if words != ["ec2", "terminate-instances"]:
        raise ValueError("command not emulated")
    if "--endpoint-url" in options:
        assert_loopback_url(options["--endpoint-url"])
    if not ids:
        raise ValueError("--instance-ids is required")
    ids = [part for value in ids for part in value.split(",") if part]
    return options.get("--region"), ids


def aws_shim(argv: list[str], env: ShimEnvironment) -> int:
    env.log(AWS_LOG, "aws " + " ".join(argv))
    try:
        region, ids = parse_aws(argv)
    except ValueError as error:
        print(f"{UNSUPPORTED_AWS} ({error}): aws {' '.join(argv)}", file=sys.stderr)
        env.log(AWS_LOG, f"refused: {error}")
        return 2
    region = region or env.environ.get("AWS_REGION") or env.environ.get("AWS_DEFAULT_REGION") or env.region
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        response = terminate_instances(env, ids, region, instance_credentials(env))
    except NoCredentials as error:
        print(f'\n{error}. You can configure credentials by running "aws configure".', file=sys.stderr)
        env.log(AWS_LOG, f"TerminateInstances {ids} ({region}) failed: no credentials")
        return 253
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "Unknown")
        message = error.response.get("Error", {}).get("Message", "")
        print(f"\nAn error occurred ({code}) when calling the TerminateInstances operation: {message}", file=sys.stderr)
        env.log(AWS_LOG, f"TerminateInstances {ids} ({region}) failed: {code}")
        return 254
    except (BotoCoreError, RealAwsRefused, OSError) as error:
        print(f"\n{error}", file=sys.stderr)
        env.log(AWS_LOG, f"TerminateInstances {ids} ({region}) failed: {type(error).__name__}: {error}")
        return 255
    env.log(AWS_LOG, f"TerminateInstances {ids} ({region}) accepted")
    print(json.dumps(response, indent=4, default=str))
    return 0


# -- shutdown -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShutdownRequest:
    action: str  # "poweroff", "reboot", "cancel" or "wall" (-k: message only)
    delay_minutes: float = 0.0  # 0: now
    spec: str = "now"


def parse_shutdown(argv: list[str], now: datetime | None = None) -> ShutdownRequest:
    """systemd's `shutdown [OPTIONS...] [TIME] [WALL...]`; ValueError for what it would refuse."""
    action = "poweroff"
    positional: list[str] = []
    for word in argv:
        if positional or not word.startswith("-") or word == "-":
            positional.append(word)
            continue
        if word.startswith("--"):
            long_flags = {"--halt": "poweroff", "--poweroff": "poweroff", "--reboot": "reboot"}
            if word in long_flags:
                action = long_flags[word]
            elif word != "--no-wall":
                raise ValueError(f"unrecognized option '{word}'")
            continue
        for flag in word[1:]:
            if flag in "hHP":
                action = action if action in ("cancel", "wall") else "poweroff"
            elif flag == "r":
                action = "reboot"
            elif flag == "c":
                action = "cancel"
            elif flag == "k":
                action = "wall"
            else:
                raise ValueError(f"invalid option -- '{flag}'")
    if action == "cancel":
        return ShutdownRequest("cancel", 0.0, "")
    spec = positional[0] if positional else "+1"  # systemd's default time is +1
    return ShutdownRequest(action, _delay_minutes(spec, now or datetime.now()), spec)


def _delay_minutes(spec: str, now: datetime) -> float:
    if spec == "now":
        return 0.0
    minutes = spec.removeprefix("+")
    if minutes.isdigit():  # "+N" (and a bare "N", as sysvinit took it)
        return float(int(minutes))
    hours, colon, minutes = spec.partition(":")
    if colon and hours.isdigit() and minutes.isdigit() and int(hours) < 24 and int(minutes) < 60:
        at = now.replace(hour=int(hours), minute=int(minutes), second=0, microsecond=0)
        if at <= now:
            at += timedelta(days=1)
        return (at - now).total_seconds() / 60
    raise ValueError(f"Failed to parse time specification: {spec}")


def read_schedule(root: Path) -> dict[str, str]:
    """The pending scheduled shutdown (keys due, due_utc, pid, spec, scheduled_at), {} if none."""
    try:
        text = (root / SCHEDULE_FILE).read_text()
    except OSError:
        return {}
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def _write_schedule(root: Path, values: Mapping[str, str]) -> None:
    path = root / SCHEDULE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + f".{os.getpid()}")
    temporary.write_text("".join(f"{key}={value}\n" for key, value in values.items()))
    os.replace(temporary, path)


def _is_sleeper(pid: int) -> bool:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"scheduled-shutdown" in command and _alive(pid)


def _cancel_schedule(env: ShimEnvironment) -> bool:
    schedule = read_schedule(env.root)
    if not schedule:
        return False
    pid = int(schedule.get("pid", "0") or 0)
    if pid > 0 and _is_sleeper(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    (env.root / SCHEDULE_FILE).unlink(missing_ok=True)
    env.log(SHUTDOWN_LOG, f"cancelled the scheduled shutdown (due {schedule.get('due_utc', '?')}, sleeper {pid})")
    return True


def _terminate_self(env: ShimEnvironment, why: str) -> bool:
    """The instance powers off; its shutdown behaviour is terminate. A few tries: a power-off does not fail."""
    from botocore.exceptions import BotoCoreError, ClientError

    for attempt in range(3):
        try:
            terminate_instances(env, [env.instance_id], env.region)
        except (BotoCoreError, ClientError, RealAwsRefused, OSError) as error:
            env.log(SHUTDOWN_LOG, f"{why}: TerminateInstances failed ({type(error).__name__}: {error})")
            time.sleep(0.5 * (attempt + 1))
            continue
        env.log(SHUTDOWN_LOG, f"{why}: TerminateInstances {env.instance_id} ({env.region}) accepted")
        return True
    return False


def shutdown_shim(argv: list[str], env: ShimEnvironment) -> int:
    env.log(SHUTDOWN_LOG, "shutdown " + " ".join(argv))
    try:
        request = parse_shutdown(argv)
    except ValueError as error:
        print(f"shutdown: {error}", file=sys.stderr)
        env.log(SHUTDOWN_LOG, f"refused: {error}")
        return 1
    if request.action == "cancel":
        _cancel_schedule(env)
        return 0
    if request.action == "wall":
        return 0
    if request.action == "reboot":
        print("shutdown (ec2jobs sandbox shim): reboot is not emulated", file=sys.stderr)
        env.log(SHUTDOWN_LOG, "refused: reboot is not emulated")
        return 1
    if request.delay_minutes <= 0:
        env.log(SHUTDOWN_LOG, "powering off now (the instance terminates)")
        if _terminate_self(env, "shutdown now"):
            return 0
        print("shutdown (ec2jobs sandbox shim): TerminateInstances failed, see the shim log", file=sys.stderr)
        return 1
    return _schedule(env, request)


def _schedule(env: ShimEnvironment, request: ShutdownRequest) -> int:
    _cancel_schedule(env)  # like systemd: a new time replaces the pending one
    now = time.time()
    due = now + request.delay_minutes * env.minute_seconds
    log_path = env.root / SHUTDOWN_LOG
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        sleeper = subprocess.Popen(  # noqa: S603 - this module, fixed arguments
            [env.python, "-P", "-m", "local.sandbox", "scheduled-shutdown", f"{due:.3f}"],
            cwd="/",
            env=dict(os.environ),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    due_utc = datetime.fromtimestamp(due, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    _write_schedule(
        env.root,
        {
            "due": f"{due:.3f}",
            "due_utc": due_utc,
            "pid": str(sleeper.pid),
            "spec": request.spec,
            "scheduled_at": f"{now:.3f}",
        },
    )
    env.log(SHUTDOWN_LOG, f"power-off scheduled for {due_utc} ({request.spec}), sleeper {sleeper.pid}")
    print(f"Shutdown scheduled for {due_utc}, use 'shutdown -c' to cancel.", file=sys.stderr)
    return 0


def scheduled_shutdown(argv: list[str], env: ShimEnvironment) -> int:
    """The detached sleeper of `shutdown +N`: sleep until due, then power off unless cancelled or replaced."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    due = float(argv[0])
    while (remaining := due - time.time()) > 0:
        time.sleep(min(remaining, 30.0))
    if read_schedule(env.root).get("pid") != str(os.getpid()):
        env.log(SHUTDOWN_LOG, "scheduled power-off superseded or cancelled")
        return 0
    schedule = read_schedule(env.root) | {"fired_at": f"{time.time():.3f}"}
    _write_schedule(env.root, schedule)
    env.log(SHUTDOWN_LOG, "scheduled power-off due: the instance terminates")
    return 0 if _terminate_self(env, f"scheduled shutdown {schedule.get('spec', '')}") else 1


# -- systemctl ------------------------------------------------------------------------------------------------------


def _listening_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def _socket_inodes(pid: int) -> set[str]:
    inodes: set[str] = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[len("socket:[") : -1])
    return inodes


def _check_owns_listener(server: sshd.SshServer, timeout: float = 5.0) -> None:
    """local.sshd.start only checks that *something* listens on the port (e.g. a wildcard listener of another
    server); make sure it is this sshd, else raise SshdUnavailable."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if server.process.poll() is not None:
            error = b""
            if server.process.stderr is not None:
                with contextlib.suppress(OSError, ValueError):
                    error = server.process.stderr.read()
            raise sshd.SshdUnavailable(
                f"sshd could not listen on {server.host}:{server.port}: {error.decode(errors='replace').strip()[:500]}"
            )
        if _listening_inodes(server.port) & _socket_inodes(server.process.pid):
            return
        time.sleep(0.01)
    raise sshd.SshdUnavailable(f"sshd did not take {server.host}:{server.port} within {timeout:.0f}s")


def reload_sshd(pid: int, host: str, port: int, timeout: float = 10.0) -> None:
    """SIGHUP (sshd re-executes itself, re-reading its config and host keys), then wait for the new listener."""
    before = _listening_inodes(port) if port else set()
    os.kill(pid, signal.SIGHUP)
    if not port:
        return
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        now = _listening_inodes(port)
        if now and not now & before:
            break
        time.sleep(0.01)
    sshd.wait_listening(host, port, timeout=max(0.5, end - time.monotonic()))


def systemctl_shim(argv: list[str], env: ShimEnvironment) -> int:
    env.log(SYSTEMCTL_LOG, "systemctl " + " ".join(argv))
    words = [word for word in argv if not word.startswith("-")]
    if not words or not SSH_UNITS.intersection(words[1:]):
        return 0  # anything but sshd: nothing to do in a sandbox
    verb = words[0]
    pid = env.sshd_pid
    alive = pid is not None and _alive(pid)
    if verb == "is-active":
        print("active" if alive else "inactive")
        return 0 if alive else 3
    if verb not in RELOAD_VERBS and verb != "start":
        return 0
    if not alive or pid is None:
        if verb.startswith("try-"):
            return 0
        print(f"Job for ssh.service failed: the sandbox's sshd (pid {pid}) is not running", file=sys.stderr)
        return 1
    if verb == "start":
        return 0
    try:
        reload_sshd(pid, env.sshd_address or "127.0.0.1", env.sshd_port)
    except (OSError, sshd.SshdUnavailable) as error:
        print(f"Job for ssh.service failed: {error}", file=sys.stderr)
        env.log(SYSTEMCTL_LOG, f"sshd reload failed: {error}")
        return 1
    env.log(SYSTEMCTL_LOG, f"sshd (pid {pid}) reloaded")
    return 0


SHIMS = {
    "aws": aws_shim,
    "shutdown": shutdown_shim,
    "systemctl": systemctl_shim,
    "scheduled-shutdown": scheduled_shutdown,
}


def main(argv: Iterable[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in SHIMS:
        print(f"usage: python -m local.sandbox {{{','.join(SHIMS)}}} ARGS...", file=sys.stderr)
        return 2
    install_network_guard()  # belt and braces: a shim only ever talks to loopback
    try:
        env = ShimEnvironment.load()
    except (NotInSandbox, RealAwsRefused) as error:
        print(f"{args[0]} (ec2jobs sandbox shim): {error}", file=sys.stderr)
        return 1
    return SHIMS[args[0]](args[1:], env)


if __name__ == "__main__":
    raise SystemExit(main())
