"""What a job's instance is given for its bytes: which inputs to fetch (the start bundle's `inputs`) and short-lived
credentials for its own part of the artifacts bucket (`relay/grants.json`), both handed over SSH by the relay.

The credentials come from sts:AssumeRole of the instance-transfer role with the job's session policy
(core/grants.py): write and read `teams/<team>/jobs/<job>/*`, read the job's uploads and the checkpoints it resumes
from; nothing else. They last one hour (role chaining's limit) and the relay replaces them every GRANT_REFRESH_SECONDS
while it follows the job, so an instance never holds standing credentials.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from controlplane.adapters.artifacts import ArtifactStore
from controlplane.core import bundle, grants
from controlplane.core.models import Job

GRANT_REFRESH_SECONDS = 20 * 60  # credentials last 60 min: replaced well before, even after a missed round


@dataclass(frozen=True)
class ArtifactSettings:
    bucket: str
    role_arn: str
    region: str
    endpoint_url: str = ""  # "" on AWS: the regional endpoint, virtual-hosted; locally the emulator, path-style

    @property
    def enabled(self) -> bool:
        return bool(self.bucket and self.role_arn)

    def instance_endpoint(self) -> tuple[str, str]:
        """(endpoint URL, addressing) for the instance's S3 client."""
        if self.endpoint_url:
            return self.endpoint_url.rstrip("/"), "path"
        return f"https://s3.{self.region}.amazonaws.com", "virtual"


def inputs(job: Job, own_checkpoints: bool = False) -> dict[str, str]:
    """The bundle's `inputs` for a job: what to fetch before setup, and how often to sync.

    The checkpoints restored before setup (`resume_prefix`): on attempt 2 on, when an earlier attempt synced some
    (`own_checkpoints`, from `InstanceGrants.has_checkpoints`), the job's own, with `resume_own=1` (the wrapper then
    records them as already uploaded); otherwise `resume_from`'s, if the spec names one."""
    spec = job.spec
    values = {"sync_seconds": str(bundle.SYNC_SECONDS)}
    if spec is None:
        return values
    if spec.workdir is not None and spec.workdir.upload is not None:
        values["workdir_key"] = grants.upload_key(job.team_id, spec.workdir.upload)
    elif spec.workdir is not None and spec.workdir.url is not None:
        values["workdir_url"] = spec.workdir.url
        if spec.workdir.ref:
            values["workdir_ref"] = spec.workdir.ref
        if spec.workdir.token_secret:
            values["workdir_token_secret"] = spec.workdir.token_secret
    if spec.file_mounts is not None:
        values["mounts_key"] = grants.upload_key(job.team_id, spec.file_mounts.upload)
    if job.attempt > 1 and own_checkpoints:
        values["resume_prefix"] = grants.job_area_prefix(job.team_id, job.job_id, "checkpoints")
        values["resume_own"] = "1"
    elif spec.resume_from:
        values["resume_prefix"] = grants.job_area_prefix(job.team_id, spec.resume_from, "checkpoints")
    return values


def read_prefixes(job: Job) -> list[str]:
    """What the job may read beyond its own prefix: its uploads and the checkpoints it resumes from. (An attempt
    that restores its own checkpoints needs nothing here: the job's own prefix is always readable.)"""
    spec = job.spec
    if spec is None:
        return []
    prefixes = []
    if spec.workdir is not None and spec.workdir.upload is not None:
        prefixes.append(grants.upload_prefix(job.team_id, spec.workdir.upload))
    if spec.file_mounts is not None:
        prefixes.append(grants.upload_prefix(job.team_id, spec.file_mounts.upload))
    if spec.resume_from:
        prefixes.append(grants.job_area_prefix(job.team_id, spec.resume_from, "checkpoints"))
    return prefixes


class InstanceGrants:
    """Issues a job's grants file (JSON, as core/data/ec2jobs_transfer.py reads it)."""

    def __init__(
        self, store: ArtifactStore, sts: Any, settings: ArtifactSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.store = store
        self.sts = sts
        self.settings = settings
        self.clock = clock

    def issue(self, job: Job) -> bytes:
        credentials = self.store.scoped_credentials(
            self.sts, self.settings.role_arn, job.team_id, job.job_id, read_prefixes=read_prefixes(job)
        )
        endpoint, addressing = self.settings.instance_endpoint()
        document = {
            "endpoint_url": endpoint,
            "addressing": addressing,
            "region": self.settings.region,
            "bucket": self.settings.bucket,
            "job_prefix": grants.job_prefix(job.team_id, job.job_id),
            "credentials": credentials,
        }
        return json.dumps(document).encode()

    def has_checkpoints(self, job: Job) -> bool:
        """Whether an earlier attempt synced any checkpoint (an object under the job's own checkpoints prefix),
        read with the control plane's own credentials: what `inputs(job, own_checkpoints=...)` needs."""
        return self.store.any_under(grants.job_area_prefix(job.team_id, job.job_id, "checkpoints"))
