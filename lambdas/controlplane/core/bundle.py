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
  then EC2JOBS_* (ours always win);
- `setup.sh` (empty when there is no setup) and `run.sh`: the job's text, byte for byte;
- `meta`: `version=1` and `job_id=<id>` lines (the wrapper checks the job id: a bundle for another job is refused).
"""

from __future__ import annotations

import io
import re
import shlex
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, field

from controlplane.core.errors import InvalidSpec
from controlplane.core.spec import TaskSpec

BUNDLE_VERSION = 1
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True, kw_only=True, repr=False)
class StartBundle:
    """Everything the instance needs to start the job. repr shows only identifiers (never envs or commands)."""

    job_id: str
    team_id: str
    instance_type: str
    envs: Mapping[str, str] = field(default_factory=dict)
    setup: str | None = None
    run: str

    def __repr__(self) -> str:
        return f"StartBundle(job_id={self.job_id!r}, team_id={self.team_id!r})"

    @classmethod
    def for_spec(cls, job_id: str, team_id: str, instance_type: str, spec: TaskSpec) -> StartBundle:
        return cls(
            job_id=job_id, team_id=team_id, instance_type=instance_type, envs=dict(spec.envs), setup=spec.setup,
            run=spec.run,
        )  # fmt: skip

    def files(self) -> dict[str, bytes]:
        """The bundle's files by name. Raises InvalidSpec for text a shell script or an environment cannot carry."""
        for what, text in (("setup", self.setup or ""), ("run", self.run)):
            check_text(what, text)
        meta = f"version={BUNDLE_VERSION}\njob_id={self.job_id}\n"
        return {
            "env.sh": env_file(self.envs, self.job_id, self.team_id, self.instance_type).encode("utf-8"),
            "setup.sh": (self.setup or "").encode("utf-8"),
            "run.sh": self.run.encode("utf-8"),
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


def env_file(envs: Mapping[str, str], job_id: str, team_id: str, instance_type: str) -> str:
    """env.sh: PYTHONUNBUFFERED=1 (the user's value wins), the user's envs, then ours (ours always win)."""
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
    ]
    return "\n".join(lines) + "\n"


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
