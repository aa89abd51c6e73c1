"""A job's outputs and checkpoints: a listing of what its instance stored under the job's prefix, each file with a
short-lived presigned GET (docs/artifacts.md, "Outputs and checkpoints (API)"). Only the job's team sees them:
another team's job answers 404, exactly like a missing one."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from dataclasses import dataclass
from typing import Any, Final, Protocol

from controlplane.core import grants
from controlplane.core.errors import InvalidRequest, NotFound, UpstreamUnavailable
from controlplane.core.models import Job, utcnow

MAX_FILES_PER_PAGE: Final = 1000
URL_SECONDS: Final = 3600  # presigned GETs live at most an hour (adapters/artifacts.py MAX_PRESIGN_SECONDS)
MAX_CURSOR_PATH: Final = 1024  # S3 keys are at most 1,024 bytes
_BAD_CURSOR = "cursor is not valid: pass back the next_cursor value from the previous page"


class JobReader(Protocol):
    def get(self, job_id: str) -> Job | None: ...


class OutputLister(Protocol):
    """adapters/uploads.py's ArtifactPages."""

    def list_page(
        self, team_id: str, job_id: str, kind: str, start_after: str | None, limit: int
    ) -> tuple[list[tuple[str, int, dt.datetime]], bool]: ...

    def presign_get(self, key: str, expires_seconds: int) -> str: ...


@dataclass(frozen=True)
class OutputsSettings:
    url_seconds: int = URL_SECONDS


def encode_cursor(path: str) -> str:
    return base64.urlsafe_b64encode(path.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """The relative path the previous page ended at; InvalidRequest for anything we did not issue."""
    try:
        padded = (cursor + "=" * (-len(cursor) % 4)).encode()
        path = base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise InvalidRequest(_BAD_CURSOR) from None
    if not path or len(path.encode()) > MAX_CURSOR_PATH or encode_cursor(path) != cursor:
        raise InvalidRequest(_BAD_CURSOR)
    return path


class OutputsService:
    def __init__(self, jobs: JobReader, lister: OutputLister | None, settings: OutputsSettings | None = None) -> None:
        self.jobs = jobs
        self.lister = lister
        self.settings = settings or OutputsSettings()

    def list(
        self, team_id: str, job_id: str, kind: str, cursor: str | None = None, limit: int = MAX_FILES_PER_PAGE
    ) -> dict[str, Any]:
        """`{job_id, kind, files: [{path, size, last_modified, url}], expires_at, next_cursor}`: at most `limit`
        files in key order, each with a GET URL valid `url_seconds`; `next_cursor` when there are more."""
        job = self.jobs.get(job_id)
        if job is None or job.team_id != team_id:
            raise NotFound("job", job_id)
        if kind not in grants.JOB_AREAS:
            raise InvalidRequest(f"kind must be one of {', '.join(grants.JOB_AREAS)}")
        start_after = decode_cursor(cursor) if cursor else None
        if self.lister is None:
            raise UpstreamUnavailable("outputs are not configured on this control plane (no ARTIFACT_BUCKET)")
        limit = max(1, min(limit, MAX_FILES_PER_PAGE))
        found, more = self.lister.list_page(team_id, job_id, kind, start_after, limit)
        prefix = grants.job_area_prefix(team_id, job_id, kind)
        now = utcnow()
        files = [
            {
                "path": path,
                "size": size,
                "last_modified": modified.astimezone(dt.UTC).isoformat(),
                "url": self.lister.presign_get(prefix + path, self.settings.url_seconds),
            }
            for path, size, modified in found
        ]
        return {
            "job_id": job_id,
            "kind": kind,
            "files": files,
            "expires_at": (now + dt.timedelta(seconds=self.settings.url_seconds)).isoformat(),
            "next_cursor": encode_cursor(found[-1][0]) if more and found else None,
        }
