"""The job wrapper: the EC2 user data that boots a job's instance, runs the job and terminates the instance.

`render(config)` fills the bash template `data/job_wrapper.sh`. User data carries only what boots the instance and
lets the relay in; the job's envs, setup and run arrive later over SSH as its start bundle (core/bundle.py), so no
user text is in user data. Values go in as `shlex.quote`d words or quoted here-documents, in one substitution pass.
Rendering is deterministic (same config → same bytes) because EC2's ClientToken idempotency needs identical
parameters on a retried launch.

Users on the instance: root runs the wrapper; the relay logs in as `relay_user` (created by the wrapper, a system
user whose home and authorized_keys are root's, so nothing on the instance can change who may log in); the job
runs as `ssh_user` (the AMI's login user), stripped of the ways to become root (sudoers entries, the sudo/admin/
wheel/docker/lxd groups) and of IMDS (an iptables owner rule): it can neither write the outcome, the output file,
the relay's directory or its keys, nor read user data (the host key) from IMDS.

State-file contract with the log relay (under `$EC2JOBS_ROOT/var/lib/ec2jobs`, root's, 755):
- `relay/` (700, the relay user's): the relay writes `bundle/` (the start bundle: core/bundle.py), `progress` (the
  byte offset of output.log durably written to the logs table), `cancel` (stop the job now: the job was cancelled)
  and `drained` (all of output.log is written and committed complete after `result` appeared);
- `output.log` (644, root's): setup's then run's stdout+stderr, copied from a pipe by a root process (the job holds
  only the pipe, so it can neither truncate nor rewrite the file); complete once `result` exists;
- `phase` (644): `setup` or `run` plus a newline, replaced atomically as each phase starts (absent before);
- `result` (644): the lines `phase=<start|setup|run>`, `exit_code=<N>`, `reason=<SUCCEEDED|SETUP_FAILED|
  EXIT_NONZERO|MAX_RUNTIME|CANCELLED>`, `finished_at=<unix seconds>`, written atomically after every job process
  that held the output pipe is gone; MAX_RUNTIME has exit_code 124 (137 if the job ignored SIGTERM for 30 s);
- `wrapper.log` (644): the wrapper's own timestamped progress (no secrets); `env.sh`, `setup.sh`, `run.sh` (600,
  the job user's).
The wrapper waits `bundle_timeout_seconds` for the bundle, then terminates the instance (nothing ran); after the
result it waits for `drained` while `progress` advances (`drain_timeout_seconds` without progress end the wait).
The pinned host key goes to `$EC2JOBS_ROOT/etc/ssh/ssh_host_ed25519_key{,.pub}`, the relay's key to
`$EC2JOBS_ROOT/var/lib/<relay_user>/.ssh/authorized_keys`, and the job's working directory is
`$EC2JOBS_ROOT/workspace`.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import re
import shlex
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from controlplane.core import bundle
from controlplane.core.spec import TaskSpec

USER_DATA_LIMIT = 16384  # bytes, before base64 (EC2's limit)
TEMPLATE_FILE = Path(__file__).parent / "data" / "job_wrapper.sh"
GZIP_MAGIC = b"\x1f\x8b"
DEFAULT_RELAY_USER = "ec2jobs-relay"

_LOGIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")
_PLACEHOLDER = re.compile(r"@@([A-Z0-9_]+)@@")


@dataclass(frozen=True, kw_only=True, repr=False)
class WrapperConfig:
    """Everything the wrapper script needs. repr shows only identifiers (never keys)."""

    job_id: str
    team_id: str
    instance_type: str
    max_runtime_seconds: int  # hard deadline for setup + run together, from wrapper start
    ssh_authorized_key: str  # one OpenSSH public key line: the log relay's login key
    host_private_key: str = field(repr=False)  # OpenSSH PEM of the pinned Ed25519 host key
    host_public_key: str  # its "ssh-ed25519 AAAA..." line
    shutdown_grace_seconds: int = 600
    drain_timeout_seconds: int = 300
    bundle_timeout_seconds: int = 900  # no start bundle within this after boot: terminate (nothing ran)
    cancel_grace_seconds: int = 10  # after a cancel: SIGTERM, then SIGKILL this much later
    ssh_user: str = "ubuntu"  # the job user (the AMI's login user)
    relay_user: str = DEFAULT_RELAY_USER  # the relay's login user (created by the wrapper when missing)

    def __post_init__(self) -> None:
        for name in (
            "max_runtime_seconds",
            "shutdown_grace_seconds",
            "drain_timeout_seconds",
            "bundle_timeout_seconds",
            "cancel_grace_seconds",
        ):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or value < (1 if name in ("max_runtime_seconds", "bundle_timeout_seconds") else 0)
            ):
                raise ValueError(f"{name} must be a non-negative integer (at least 1 for timeouts): {value!r}")
        for name in ("ssh_user", "relay_user"):
            if not _LOGIN_NAME.fullmatch(getattr(self, name)):
                raise ValueError(f"{name} {getattr(self, name)!r} is not a valid login name")
        for name in ("ssh_authorized_key", "host_public_key"):
            value = getattr(self, name).strip()
            if not value or "\n" in value or "\r" in value or "\0" in value:
                raise ValueError(f"{name} must be a single OpenSSH public key line")
        if "\0" in self.host_private_key or "PRIVATE KEY" not in self.host_private_key:
            raise ValueError("host_private_key must be an OpenSSH private key PEM")
        for what in ("job_id", "team_id", "instance_type"):
            bundle.check_text(what, getattr(self, what))

    def __repr__(self) -> str:
        return f"WrapperConfig(job_id={self.job_id!r}, team_id={self.team_id!r}, instance_type={self.instance_type!r})"

    @property
    def shutdown_minutes(self) -> int:
        """Minutes from boot to the last-resort `shutdown -h +N`: the max runtime plus the grace, rounded up."""
        return math.ceil((self.max_runtime_seconds + self.shutdown_grace_seconds) / 60)


@lru_cache(maxsize=1)
def _template() -> str:
    """The template without full-line comments and blank lines (the shebang stays)."""
    lines = TEMPLATE_FILE.read_text(encoding="utf-8").splitlines()
    kept = [lines[0]] + [line for line in lines[1:] if line.strip() and not line.lstrip().startswith("#")]
    return "\n".join(kept) + "\n"


def _delimiter(body: str) -> str:
    """A here-document delimiter that is not a line of `body`, derived from it (so rendering is deterministic)."""
    lines = set(body.split("\n"))
    counter = 0
    while True:
        digest = hashlib.sha256(f"{counter}\0{body}".encode()).hexdigest()[:20]
        delimiter = f"EC2JOBS_EOF_{digest}"
        if delimiter not in lines:
            return delimiter
        counter += 1


def _heredoc_body(text: str) -> str:
    """The body as placed between the `<<'DELIM'` line and the delimiter line: bash adds the final newline back."""
    return text[:-1] if text.endswith("\n") else text


def render_script(config: WrapperConfig) -> str:
    """The complete bash script for `config`."""
    values = {
        "JOB_ID": shlex.quote(config.job_id),
        "INSTANCE_TYPE": shlex.quote(config.instance_type),
        "SSH_USER": shlex.quote(config.ssh_user),
        "RELAY_USER": shlex.quote(config.relay_user),
        "SSH_AUTHORIZED_KEY": shlex.quote(config.ssh_authorized_key.strip()),
        "HOST_PUBLIC_KEY": shlex.quote(config.host_public_key.strip()),
        "MAX_RUNTIME_SECONDS": str(config.max_runtime_seconds),
        "SHUTDOWN_MINUTES": str(config.shutdown_minutes),
        "DRAIN_TIMEOUT_SECONDS": str(config.drain_timeout_seconds),
        "BUNDLE_TIMEOUT_SECONDS": str(config.bundle_timeout_seconds),
        "CANCEL_GRACE_SECONDS": str(config.cancel_grace_seconds),
        "HOST_KEY_DELIM": _delimiter(config.host_private_key),
        "HOST_PRIVATE_KEY": _heredoc_body(config.host_private_key),
    }

    def substitute(match: re.Match[str]) -> str:
        try:
            return values[match.group(1)]
        except KeyError:
            raise RuntimeError(f"job_wrapper.sh has an unknown placeholder {match.group(0)}") from None

    return _PLACEHOLDER.sub(substitute, _template())  # one pass: substituted text is never scanned again


def _compress(script: bytes) -> bytes:
    return gzip.compress(script, compresslevel=9, mtime=0)


def render(config: WrapperConfig) -> bytes:
    """The user data to send (raw bytes; EC2 base64-encodes them): the script, gzipped if it is over 16 KB.
    Its size does not depend on the job (no user text): a RuntimeError here is a bug in the template."""
    script = render_script(config).encode("utf-8")
    if len(script) <= USER_DATA_LIMIT:
        return script
    compressed = _compress(script)
    if len(compressed) > USER_DATA_LIMIT:
        raise RuntimeError(f"the job wrapper is {len(compressed)} bytes gzipped, over EC2's {USER_DATA_LIMIT}")
    return compressed


def decode(user_data: bytes) -> str:
    """The script inside user data made by render() (gunzipped if needed)."""
    if user_data.startswith(GZIP_MAGIC):
        user_data = gzip.decompress(user_data)
    return user_data.decode("utf-8")


def check_spec_fits(job_id: str, team_id: str, instance_type: str, spec: TaskSpec) -> None:
    """What submission and the workflow's Validate step check: the spec's envs, setup and run can be carried to the
    instance (their size is bounded by the spec's own limit: they travel in the start bundle, not in user data)."""
    for what, text in (("job_id", job_id), ("team_id", team_id), ("instance_type", instance_type)):
        bundle.check_text(what, text)
    bundle.check_spec(spec)
