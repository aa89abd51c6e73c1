"""The job's start bundle: what the relay hands the instance over SSH before the job starts.

User data carries only what boots the instance and lets the relay in (the deadline, the pinned host key, the relay's
login key); the job itself — its envs, setup and run, and (later) its secrets and short-lived grants — arrives as
this bundle, so it never sits in user data (which any process on the instance can read from IMDS, and which EC2
caps at 16 KB).

On the wire the bundle is a tar stream of regular files, unpacked by the relay's login user into a directory only
it (and root) can read, `relay/bundle.new`, then renamed to `relay/bundle` (a directory rename is atomic: the
wrapper, polling for `relay/bundle/run.sh`, sees all of it or none). The wrapper, as root, copies it into its own
state directory and hands the job user only the job's files. Files:
- `env.sh`: `export NAME='value'` lines: PYTHONUNBUFFERED=1 (the user's value wins), the user's envs in name order,
  the job's secrets (opened from the job record by the relay), then EC2JOBS_* (ours always win), among them
  EC2JOBS_ATTEMPT (1-based) and EC2JOBS_RESTARTS (the relaunches before this attempt);
- `setup.sh` (empty when there is no setup) and `run.sh`: the job's text, byte for byte;
- `inputs`: `name=value` lines telling the wrapper what to fetch before setup and how often to sync: `workdir_key`
  (an uploaded archive's S3 key) or `workdir_url`/`workdir_ref`/`workdir_token_secret` (a git repository),
  `mounts_key`, `resume_prefix` (the checkpoints restored before setup: a previous job's, or with `resume_own=1`
  the job's own from its previous attempt), `sync_seconds`;
- `ec2jobs_transfer.py`: the instance's S3 client (core/data/ec2jobs_transfer.py, standard library only), which
  uses the short-lived grants the relay writes next to the bundle (`relay/grants.json`);
- `meta`: `version=1` and `job_id=<id>` lines (the wrapper checks the job id: a bundle for another job is refused).

On the instance the job's directories are `/workspace/workdir` (its working directory when it has a workdir),
`/workspace/outputs` (EC2JOBS_OUTPUT_DIR) and `/workspace/checkpoints` (EC2JOBS_CHECKPOINT_DIR).
"""

from __future__ import annotations

import io
import re
import shlex
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from controlplane.core.errors import InvalidSpec
from controlplane.core.spec import TaskSpec

BUNDLE_VERSION = 1
SYNC_SECONDS = 120  # outputs and checkpoints are uploaded at least this often while the job runs
TRANSFER_TOOL = Path(__file__).parent / "data" / "ec2jobs_transfer.py"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INPUT_VALUE = re.compile(r"[^\n\r\0=]*")
# Our directories, under EC2JOBS_ROOT (set only in a local sandbox; empty on EC2).
OUR_DIRS = {
    "EC2JOBS_OUTPUT_DIR": "/workspace/outputs",
    "EC2JOBS_CHECKPOINT_DIR": "/workspace/checkpoints",
}


@lru_cache(maxsize=1)
def transfer_tool() -> bytes:
    return TRANSFER_TOOL.read_bytes()


@dataclass(frozen=True, kw_only=True, repr=False)
class StartBundle:
    """Everything the instance needs to start the job. repr shows only identifiers (never envs or commands)."""

    job_id: str
    team_id: str
    instance_type: str
    envs: Mapping[str, str] = field(default_factory=dict)
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    setup: str | None = None
    run: str
    inputs: Mapping[str, str] = field(default_factory=dict)  # see the module docstring (`inputs`)
    attempt: int = 1  # the job's current attempt (1-based): EC2JOBS_ATTEMPT
    restarts: int = 0  # relaunches before this attempt: EC2JOBS_RESTARTS

    def __repr__(self) -> str:
        return f"StartBundle(job_id={self.job_id!r}, team_id={self.team_id!r})"

    @classmethod
    def for_spec(
        cls,
        job_id: str,
        team_id: str,
        instance_type: str,
        spec: TaskSpec,
        *,
        secrets: Mapping[str, str] | None = None,
        inputs: Mapping[str, str] | None = None,
        attempt: int = 1,
        restarts: int = 0,
    ) -> StartBundle:
        return cls(
            job_id=job_id, team_id=team_id, instance_type=instance_type, envs=dict(spec.envs), setup=spec.setup,
            run=spec.run, secrets=dict(secrets or {}), inputs=dict(inputs or {}), attempt=attempt, restarts=restarts,
        )  # fmt: skip

    def files(self) -> dict[str, bytes]:
        """The bundle's files by name. Raises InvalidSpec for text a shell script or an environment cannot carry."""
        for what, text in (("setup", self.setup or ""), ("run", self.run)):
            check_text(what, text)
        meta = f"version={BUNDLE_VERSION}\njob_id={self.job_id}\n"
        envs = dict(self.envs)
        for name, value in self.secrets.items():
            check_text(f"the value of secret {name}", value)
            envs[name] = value
        return {
            "env.sh": env_file(
                envs, self.job_id, self.team_id, self.instance_type, attempt=self.attempt, restarts=self.restarts
            ).encode("utf-8"),
            "setup.sh": (self.setup or "").encode("utf-8"),
            "run.sh": self.run.encode("utf-8"),
            "inputs": inputs_file(self.inputs).encode("utf-8"),
            "ec2jobs_transfer.py": transfer_tool(),
            "meta": meta.encode("ascii"),
        }

    def tar(self) -> bytes:
        """The files as an uncompressed tar stream (what the relay sends; deterministic for the same bundle)."""
        return pack(self.files())


def check_text(what: str, text: str) -> None:
    """Reject what cannot travel through a bash script or a process environment."""
    if "\0" in text:
        raise InvalidSpec(f"{what} contains a NUL character, which a shell script cannot carry")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidSpec(f"{what} is not valid Unicode text (it contains a lone surrogate)") from None


def env_file(
    envs: Mapping[str, str], job_id: str, team_id: str, instance_type: str, *, attempt: int = 1, restarts: int = 0
) -> str:
    """env.sh: PYTHONUNBUFFERED=1 (the user's value wins), the user's envs, then ours (ours always win)."""
    if attempt < 1 or restarts < 0:
        raise ValueError(f"attempt {attempt} / restarts {restarts}: attempts count from 1, restarts from 0")
    lines = ["export PYTHONUNBUFFERED=1"]
    for name in sorted(envs):  # sorted: the same envs in any order make the same bytes
        value = envs[name]
        if not _ENV_NAME.fullmatch(name):
            raise InvalidSpec(f"envs name {name!r} is not a valid variable name")
        check_text(f"envs value of {name}", value)
        lines.append(f"export {name}={shlex.quote(value)}")
    lines += [
        f"export EC2JOBS_JOB_ID={shlex.quote(job_id)}",
        f"export EC2JOBS_TEAM_ID={shlex.quote(team_id)}",
        f"export EC2JOBS_INSTANCE_TYPE={shlex.quote(instance_type)}",
        f"export EC2JOBS_ATTEMPT={shlex.quote(str(attempt))}",
        f"export EC2JOBS_RESTARTS={shlex.quote(str(restarts))}",
    ]
    lines += [f'export {name}="${{EC2JOBS_ROOT:-}}{path}"' for name, path in OUR_DIRS.items()]
    return "\n".join(lines) + "\n"


def inputs_file(inputs: Mapping[str, str]) -> str:
    """`name=value` lines (values are keys, URLs and names: no newline, NUL or '=' in a name)."""
    lines = []
    for name in sorted(inputs):
        value = inputs[name]
        if not _ENV_NAME.fullmatch(name) or not _INPUT_VALUE.fullmatch(value.replace("=", "")):
            raise ValueError(f"bundle input {name!r} cannot be carried as a line")
        lines.append(f"{name}={value}")
    return "".join(f"{line}\n" for line in lines)


def check_spec(spec: TaskSpec) -> None:
    """At submission: raise InvalidSpec unless the spec's envs, setup and run can be carried in a bundle."""
    StartBundle(job_id="job", team_id="team", instance_type="t", envs=dict(spec.envs), setup=spec.setup,
                run=spec.run).files()  # fmt: skip


def pack(files: Mapping[str, bytes]) -> bytes:
    """A tar stream of regular files (mode 600, owner 0, mtime 0), in name order."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name in sorted(files):
            if "/" in name or name.startswith("."):
                raise ValueError(f"bundle file name {name!r} must be a plain name")
            data = files[name]
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o600
            info.mtime = 0
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def unpack(data: bytes) -> dict[str, bytes]:
    """The inverse of pack() (tests and tools)."""
    out: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
        for member in archive.getmembers():
            extracted = archive.extractfile(member)
            if member.isfile() and extracted is not None:
                out[member.name] = extracted.read()
    return out


INLINE_SCRIPTS_BYTES = 64 * 1024  # setup + run larger than this are kept in the artifacts bucket, not the job item
SCRIPT_NAMES = ("setup", "run")


def script_key(team_id: str, job_id: str, name: str) -> str:
    """Where a job's large setup/run text is kept (under the job's own prefix)."""
    from controlplane.core import grants

    return f"{grants.job_prefix(team_id, job_id)}task/{name}.sh"


def stored_placeholder(name: str, text: str) -> str:
    """What the job record (and the API's view of the spec) shows instead of a script kept in the bucket."""
    import hashlib

    data = text.encode("utf-8")
    digest = hashlib.sha256(data).hexdigest()[:16]
    return f"# ec2jobs: this job's {name} ({len(data):,} bytes, sha256 {digest}…) is kept in the artifacts bucket\n"


def split_scripts(spec: TaskSpec) -> tuple[TaskSpec, dict[str, str]]:
    """(the spec to store, the scripts to keep in the bucket): both setup and run move out when together they are
    over INLINE_SCRIPTS_BYTES; a small job's spec is returned as it is."""
    texts = {"setup": spec.setup or "", "run": spec.run}
    if sum(len(t.encode("utf-8")) for t in texts.values()) <= INLINE_SCRIPTS_BYTES:
        return spec, {}
    moved = {name: text for name, text in texts.items() if text}
    stored = spec.model_copy(update={name: stored_placeholder(name, text) for name, text in moved.items()})
    return stored, moved
