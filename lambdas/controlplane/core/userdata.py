"""The job wrapper: the EC2 user data that runs a job on its instance and terminates the instance afterwards.

`render(config)` fills the bash template `data/job_wrapper.sh`. User text (env values, setup, run) goes in only as
`shlex.quote`d words or quoted here-documents whose delimiter provably is not a line of the body, and the
substitution is one pass, so nothing a user writes can be read as a placeholder or as shell syntax.
Rendering is deterministic (same config → same bytes) because EC2's ClientToken idempotency needs identical
parameters on a retried launch.

State-file contract with the log relay (under `$EC2JOBS_ROOT/var/lib/ec2jobs`, a 755 directory owned by the SSH
user so that the relay, logged in as that user, can create `drained`):
- `output.log` (644): setup's then run's stdout+stderr, append-only, never truncated; complete once `result` exists;
- `phase` (644): `setup` or `run` plus a newline, replaced atomically as each phase starts (absent before);
- `result` (644): the lines `phase=<setup|run>`, `exit_code=<N>`, `reason=<SUCCEEDED|SETUP_FAILED|EXIT_NONZERO|
  MAX_RUNTIME>`, `finished_at=<unix seconds>`, written atomically (temp file + rename) after every job process
  that held output.log is gone; MAX_RUNTIME has exit_code 124 (137 if the job ignored SIGTERM for 30 s);
- `relay/progress`: written by the relay (replaced atomically): the byte offset of output.log durably written to
  the logs table and committed; while it advances, the wrapper keeps waiting for `drained`;
- `drained`: created by the relay once all of output.log is written to the logs table and committed complete
  after `result` appeared; the wrapper then terminates the instance (or after `drain_timeout_seconds` without
  relay progress);
- `wrapper.log` (644): the wrapper's own timestamped progress (no secrets); `env.sh`, `setup.sh`, `run.sh` (600).
The pinned host key goes to `$EC2JOBS_ROOT/etc/ssh/ssh_host_ed25519_key{,.pub}`, the relay's key is appended to
`~<ssh_user>/.ssh/authorized_keys` (`$EC2JOBS_ROOT/home/<ssh_user>` when EC2JOBS_ROOT is set), and the job's working
directory is `$EC2JOBS_ROOT/workspace`.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import math
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from controlplane.core.errors import InvalidSpec
from controlplane.core.spec import TaskSpec

USER_DATA_LIMIT = 16384  # bytes, before base64 (EC2's limit)
TEMPLATE_FILE = Path(__file__).parent / "data" / "job_wrapper.sh"
GZIP_MAGIC = b"\x1f\x8b"

# check_fits() renders with placeholder keys at least this long (real Ed25519 keys are ~400 / ~80-150 chars);
# keys longer than these void its guarantee that render() fits.
PLACEHOLDER_PRIVATE_KEY_CHARS = 640
PLACEHOLDER_PUBLIC_KEY_CHARS = 200
# ... and keeps this many bytes of headroom when the script has to be gzipped (deflate is not strictly monotonic).
FIT_MARGIN_BYTES = 256

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SSH_USER = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")
_PLACEHOLDER = re.compile(r"@@([A-Z0-9_]+)@@")
_ADVICE = "move long setup/run commands or env values into a script in your repository or image and call it"


class UserDataTooLarge(InvalidSpec):
    """The job's setup, run and envs do not fit in EC2 user data, even gzipped."""


@dataclass(frozen=True, kw_only=True, repr=False)
class WrapperConfig:
    """Everything the wrapper script needs. repr shows only identifiers (never keys, envs or commands)."""

    job_id: str
    team_id: str
    instance_type: str
    envs: Mapping[str, str]
    setup: str | None
    run: str
    max_runtime_seconds: int  # hard deadline for setup + run together, from wrapper start
    ssh_authorized_key: str  # one OpenSSH public key line: the log relay's login key
    host_private_key: str = field(repr=False)  # OpenSSH PEM of the pinned Ed25519 host key
    host_public_key: str  # its "ssh-ed25519 AAAA..." line
    shutdown_grace_seconds: int = 600
    drain_timeout_seconds: int = 300
    ssh_user: str = "ubuntu"

    def __post_init__(self) -> None:
        for name in ("max_runtime_seconds", "shutdown_grace_seconds", "drain_timeout_seconds"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or value < (1 if name == "max_runtime_seconds" else 0)
            ):
                raise ValueError(f"{name} must be a non-negative integer (max_runtime_seconds at least 1): {value!r}")
        if not _SSH_USER.fullmatch(self.ssh_user):
            raise ValueError(f"ssh_user {self.ssh_user!r} is not a valid login name")
        for name in ("ssh_authorized_key", "host_public_key"):
            value = getattr(self, name).strip()
            if not value or "\n" in value or "\r" in value or "\0" in value:
                raise ValueError(f"{name} must be a single OpenSSH public key line")
        if "\0" in self.host_private_key or "PRIVATE KEY" not in self.host_private_key:
            raise ValueError("host_private_key must be an OpenSSH private key PEM")

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


def _check_text(what: str, text: str) -> None:
    """Reject what cannot travel through a bash script or a process environment."""
    if "\0" in text:
        raise InvalidSpec(f"{what} contains a NUL character, which a shell script cannot carry")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidSpec(f"{what} is not valid Unicode text (it contains a lone surrogate)") from None


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


def _env_file(config: WrapperConfig) -> str:
    """env.sh: PYTHONUNBUFFERED=1 (the user's value wins), the user's envs, then ours (ours always win)."""
    lines = ["export PYTHONUNBUFFERED=1"]
    for name in sorted(config.envs):  # sorted: the same envs in any order render the same bytes
        value = config.envs[name]
        if not _ENV_NAME.fullmatch(name):
            raise InvalidSpec(f"envs name {name!r} is not a valid variable name")
        _check_text(f"envs value of {name}", value)
        lines.append(f"export {name}={shlex.quote(value)}")
    lines += [
        f"export EC2JOBS_JOB_ID={shlex.quote(config.job_id)}",
        f"export EC2JOBS_TEAM_ID={shlex.quote(config.team_id)}",
        f"export EC2JOBS_INSTANCE_TYPE={shlex.quote(config.instance_type)}",
    ]
    return "\n".join(lines) + "\n"


def render_script(config: WrapperConfig) -> str:
    """The complete bash script for `config`."""
    for what, text in (
        ("job_id", config.job_id),
        ("team_id", config.team_id),
        ("instance_type", config.instance_type),
        ("setup", config.setup or ""),
        ("run", config.run),
    ):
        _check_text(what, text)
    setup = config.setup or ""
    values = {
        "JOB_ID": shlex.quote(config.job_id),
        "INSTANCE_TYPE": shlex.quote(config.instance_type),
        "SSH_USER": shlex.quote(config.ssh_user),
        "SSH_AUTHORIZED_KEY": shlex.quote(config.ssh_authorized_key.strip()),
        "HOST_PUBLIC_KEY": shlex.quote(config.host_public_key.strip()),
        "MAX_RUNTIME_SECONDS": str(config.max_runtime_seconds),
        "SHUTDOWN_MINUTES": str(config.shutdown_minutes),
        "DRAIN_TIMEOUT_SECONDS": str(config.drain_timeout_seconds),
        "HAS_SETUP": "1" if setup.strip() else "0",
    }
    bodies = {
        "HOST_KEY": ("HOST_PRIVATE_KEY", config.host_private_key),
        "ENV": ("ENV_BODY", _env_file(config)),
        "SETUP": ("SETUP_BODY", setup),
        "RUN": ("RUN_BODY", config.run),
    }
    for prefix, (placeholder, text) in bodies.items():
        values[f"{prefix}_DELIM"] = _delimiter(text)
        values[placeholder] = _heredoc_body(text)

    def substitute(match: re.Match[str]) -> str:
        try:
            return values[match.group(1)]
        except KeyError:
            raise RuntimeError(f"job_wrapper.sh has an unknown placeholder {match.group(0)}") from None

    return _PLACEHOLDER.sub(substitute, _template())  # one pass: substituted text is never scanned again


def _largest_part(config: WrapperConfig) -> str:
    parts = {"the run commands": config.run, "the setup commands": config.setup or ""}
    parts |= {f"the value of env {name}": value for name, value in config.envs.items()}
    name, text = max(parts.items(), key=lambda item: len(item[1].encode("utf-8")))
    return f"{name}, {len(text.encode('utf-8')) / 1024:.1f} KB"


def _too_large(config: WrapperConfig, gzipped_size: int) -> UserDataTooLarge:
    return UserDataTooLarge(
        f"the job does not fit in EC2 user data: the wrapper script with this job's setup, run and envs is "
        f"{gzipped_size / 1024:.1f} KB even gzipped, over the 16 KB EC2 limit (largest part: "
        f"{_largest_part(config)}); {_ADVICE}",
        details=[{"size_bytes_gzipped": gzipped_size, "limit_bytes": USER_DATA_LIMIT}],
    )


def _compress(script: bytes) -> bytes:
    return gzip.compress(script, compresslevel=9, mtime=0)


def render(config: WrapperConfig) -> bytes:
    """The user data to send (raw bytes; EC2 base64-encodes them): the script, gzipped if it is over 16 KB.

    Raises UserDataTooLarge if even the gzipped script is over the limit."""
    script = render_script(config).encode("utf-8")
    if len(script) <= USER_DATA_LIMIT:
        return script
    compressed = _compress(script)
    if len(compressed) > USER_DATA_LIMIT:
        raise _too_large(config, len(compressed))
    return compressed


def decode(user_data: bytes) -> str:
    """The script inside user data made by render() (gunzipped if needed)."""
    if user_data.startswith(GZIP_MAGIC):
        user_data = gzip.decompress(user_data)
    return user_data.decode("utf-8")


def _filler(label: str, chars: int) -> str:
    """Deterministic incompressible base64 text (compresses like real key material)."""
    raw = hashlib.shake_256(f"ec2jobs-placeholder-{label}".encode()).digest(chars)
    return base64.b64encode(raw).decode("ascii")[:chars]


def _placeholder_private_key() -> str:
    head, tail = "-----BEGIN OPENSSH PRIVATE KEY-----\n", "-----END OPENSSH PRIVATE KEY-----\n"
    body = _filler("private", PLACEHOLDER_PRIVATE_KEY_CHARS)
    lines = [body[i : i + 70] for i in range(0, len(body), 70)]
    return head + "\n".join(lines) + "\n" + tail


def _placeholder_public_key(label: str) -> str:
    key = "ssh-ed25519 " + _filler(label, PLACEHOLDER_PUBLIC_KEY_CHARS)
    return key[:PLACEHOLDER_PUBLIC_KEY_CHARS]


def check_fits(
    job_id: str,
    team_id: str,
    instance_type: str,
    envs: Mapping[str, str],
    setup: str | None,
    run: str,
    max_runtime_seconds: int,
    *,
    shutdown_grace_seconds: int = 600,
    drain_timeout_seconds: int = 300,
    ssh_user: str = "ubuntu",
) -> None:
    """At submission (before any key exists): raise UserDataTooLarge unless render() will fit.

    Renders with placeholder keys longer than real ones and keeps FIT_MARGIN_BYTES of headroom when gzipped, so a
    job that passes here always renders (given keys no longer than the PLACEHOLDER_* lengths)."""
    config = WrapperConfig(
        job_id=job_id,
        team_id=team_id,
        instance_type=instance_type,
        envs=envs,
        setup=setup,
        run=run,
        max_runtime_seconds=max(1, max_runtime_seconds),
        shutdown_grace_seconds=shutdown_grace_seconds,
        drain_timeout_seconds=drain_timeout_seconds,
        ssh_user=ssh_user,
        ssh_authorized_key=_placeholder_public_key("authorized"),
        host_private_key=_placeholder_private_key(),
        host_public_key=_placeholder_public_key("host"),
    )
    script = render_script(config).encode("utf-8")
    if len(script) <= USER_DATA_LIMIT:
        return
    compressed = _compress(script)
    if len(compressed) > USER_DATA_LIMIT - FIT_MARGIN_BYTES:
        raise _too_large(config, len(compressed))


def check_spec_fits(job_id: str, team_id: str, instance_type: str, spec: TaskSpec) -> None:
    """check_fits for a task spec (what submission and the workflow's Validate step both check)."""
    check_fits(job_id, team_id, instance_type, dict(spec.envs), spec.setup, spec.run, spec.max_runtime_minutes * 60)
