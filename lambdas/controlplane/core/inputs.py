"""What a job brings and keeps: its workdir, its file_mounts and the checkpoints it resumes from (task spec fields).

Over the API these name bytes already in the control plane's artifacts bucket (uploaded with POST /uploads, which
the CLI does for a local `workdir: .` or `file_mounts: {/remote: ./local}`), or a git repository to clone. Local
paths and S3 URIs are refused with what to do instead: the control plane cannot read your disk, and it has no
credentials for buckets in other accounts.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

UPLOAD_ID = re.compile(r"up-[0-9a-f]{20}")
_GIT_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,199}")
_SECRET_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
WORKDIR_PATH = "/workspace/workdir"  # on the instance: the working directory of setup and run when there is one

LOCAL_WORKDIR_HELP = (
    "a local directory is uploaded by the CLI (`ec2jobs submit task.yaml` packs and uploads it); over the API, "
    "upload it with POST /uploads (kind workdir) and pass {upload: <upload_id>}, or give {url: https://…, ref: …} "
    "to clone a git repository"
)
LOCAL_MOUNTS_HELP = (
    "local files are uploaded by the CLI (`ec2jobs submit task.yaml` packs every mount into one archive); over the "
    "API, upload that archive with POST /uploads (kind file_mounts) and pass {upload: <upload_id>}"
)
S3_MOUNT_HELP = (
    "S3 URIs are not supported: the control plane has no credentials for buckets in other accounts (and the "
    "instance gets none). Download the data in `setup` with credentials you pass as secrets, or copy it locally "
    "and mount the local path (the CLI uploads it)"
)


def _upload_id(raw: Any, field: str) -> str:
    if not isinstance(raw, str) or not UPLOAD_ID.fullmatch(raw):
        raise ValueError(f"{field}.upload must be an upload id from POST /uploads (up-<20 hex digits>)")
    return raw


class WorkdirSource(BaseModel):
    """`workdir:` — exactly one of an uploaded archive or a git repository."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    upload: str | None = Field(default=None, description="an archive uploaded with POST /uploads (kind workdir)")
    url: str | None = Field(default=None, description="an https git repository to clone instead")
    ref: str | None = Field(default=None, description="the branch, tag or commit to check out (default: HEAD)")
    token_secret: str | None = Field(
        default=None, description="the name of a secret holding a token for a private repository (HTTPS auth)"
    )

    @field_validator("upload", mode="before")
    @classmethod
    def _upload(cls, raw: Any) -> str | None:
        return None if raw is None else _upload_id(raw, "workdir")

    @field_validator("url", mode="before")
    @classmethod
    def _url(cls, raw: Any) -> str | None:
        if raw is None:
            return None
        parts = urlsplit(raw) if isinstance(raw, str) else None
        if parts is None or parts.scheme != "https" or not parts.hostname or len(raw) > 2048:
            raise ValueError("workdir.url must be an https:// git repository URL")
        if parts.username or parts.password:
            raise ValueError(
                "workdir.url must not carry credentials: put the token in secrets and name it in workdir.token_secret"
            )
        if parts.query or parts.fragment or any(c.isspace() for c in raw):
            raise ValueError("workdir.url must be a plain https:// repository URL (no query, fragment or spaces)")
        return str(raw)

    @field_validator("ref", mode="before")
    @classmethod
    def _ref(cls, raw: Any) -> str | None:
        if raw is None:
            return None
        if not isinstance(raw, str) or not _GIT_REF.fullmatch(raw) or ".." in raw:
            raise ValueError("workdir.ref must be a branch, tag or commit name (letters, digits, . _ / -)")
        return raw

    @field_validator("token_secret", mode="before")
    @classmethod
    def _token_secret(cls, raw: Any) -> str | None:
        if raw is None:
            return None
        if not isinstance(raw, str) or not _SECRET_NAME.fullmatch(raw):
            raise ValueError("workdir.token_secret must be the name of one of the job's secrets")
        return raw

    @model_validator(mode="after")
    def _one_source(self) -> WorkdirSource:
        if (self.upload is None) == (self.url is None):
            raise ValueError("workdir needs exactly one of upload (an uploaded archive) or url (a git repository)")
        if self.upload is not None and (self.ref or self.token_secret):
            raise ValueError("workdir.ref and workdir.token_secret go with workdir.url, not with an upload")
        return self


class MountsSource(BaseModel):
    """`file_mounts:` over the API — one archive of every mount, made and uploaded by the CLI."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    upload: str = Field(description="an archive of the mounts uploaded with POST /uploads (kind file_mounts)")

    @field_validator("upload", mode="before")
    @classmethod
    def _upload(cls, raw: Any) -> str:
        return _upload_id(raw, "file_mounts")


def parse_workdir(raw: Any) -> Any:
    """Before the model: a local path or a bare URL string says what to do instead."""
    if raw is None or isinstance(raw, dict | WorkdirSource):
        return raw
    if isinstance(raw, str) and raw.startswith(("https://", "http://", "git@")):
        raise ValueError("give a git repository as {url: https://…, ref: …}")
    raise ValueError(LOCAL_WORKDIR_HELP)


def parse_file_mounts(raw: Any) -> Any:
    """Before the model: a SkyPilot mapping of remote → local paths says what to do instead."""
    if raw is None or isinstance(raw, MountsSource):
        return raw
    if isinstance(raw, dict) and set(raw) == {"upload"}:
        return raw
    if isinstance(raw, dict) and any(
        isinstance(v, str) and v.startswith(("s3://", "gs://", "r2://", "cos://", "https://")) for v in raw.values()
    ):
        raise ValueError(S3_MOUNT_HELP)
    if isinstance(raw, dict):
        raise ValueError(LOCAL_MOUNTS_HELP)
    raise ValueError("file_mounts must be {upload: <upload_id>} (or, in a task file for the CLI, {/remote: ./local})")


def check_secret_names(names: list[str], envs: dict[str, str]) -> None:
    """Secret names are variable names, not ours, and not also envs."""
    for name in names:
        if not _SECRET_NAME.fullmatch(name):
            raise ValueError(f"secrets name {name!r} is not a valid variable name")
        if name.upper().startswith("EC2JOBS_"):
            raise ValueError(f"secrets name {name!r} is reserved: names starting EC2JOBS_ are ours")
        if name in envs:
            raise ValueError(f"{name} is both an env and a secret: give it once")
