"""Uploads: a team's workdir and file_mounts archives, sent by the client straight to the artifacts bucket with
presigned URLs (docs/artifacts.md, "Uploads (API)").

    POST /uploads                    create: a record (pending) and the part URLs (one presigned PUT, or multipart)
    POST /uploads/{id}/parts         fresh URLs for a pending upload (the first ones expired or were refused)
    POST /uploads/{id}/complete      finish it (CompleteMultipartUpload), check the stored size: complete

A job names a complete upload of its own team in `workdir: {upload}` / `file_mounts: {upload}`;
`check_spec_uploads` is the one check both ways in (POST /jobs and console/event intake) make.

An upload record lives as long as its archive: the archive expires ARTIFACT_EXPIRY_DAYS after it was written
(the bucket's lifecycle rule), so the record says when (`expires_at`) and carries the same moment as a TTL. An upload
left pending is *open* for OPEN_DAYS (the bucket aborts incomplete multipart uploads after 2 days); at most
MAX_OPEN_UPLOADS open ones per team.
"""

from __future__ import annotations

import datetime as dt
import math
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from controlplane.adapters.uploads import COMPLETE, Upload
from controlplane.core import grants
from controlplane.core.errors import Conflict, InvalidRequest, InvalidSpec, NotFound, UpstreamUnavailable
from controlplane.core.inputs import UPLOAD_ID
from controlplane.core.models import utcnow
from controlplane.core.spec import TaskSpec

UPLOAD_KINDS: Final[tuple[str, ...]] = ("workdir", "file_mounts")
GIB: Final = 1024**3
MAX_UPLOAD_BYTES: Final = 50 * GIB
MAX_OPEN_UPLOADS: Final = 20
OPEN_DAYS: Final = 2  # = the bucket's ABORT_INCOMPLETE_UPLOADS_DAYS (stacks/artifacts.py): then its parts are gone


class UploadStore(Protocol):
    def create(self, upload: Upload) -> None: ...
    def get(self, team_id: str, upload_id: str) -> Upload | None: ...
    def count_open(self, team_id: str, since: dt.datetime) -> int: ...
    def mark_complete(self, upload: Upload, completed_at: dt.datetime, expires_at: dt.datetime) -> Upload: ...


class UploadReader(Protocol):
    def get(self, team_id: str, upload_id: str) -> Upload | None: ...


class Bucket(Protocol):
    """What the service needs of adapters/artifacts.py's ArtifactStore."""

    def create_upload(
        self, team_id: str, upload_id: str, size: int, part_size: int, *, expires_seconds: int = ...
    ) -> tuple[str | None, list[dict[str, Any]]]: ...

    def presign_parts(
        self, team_id: str, upload_id: str, s3_upload_id: str, part_numbers: Any, *, expires_seconds: int = ...
    ) -> list[dict[str, Any]]: ...

    def complete_upload(
        self,
        team_id: str,
        upload_id: str,
        s3_upload_id: str | None,
        parts: Sequence[Mapping[str, Any]],
        *,
        expected_size: int | None = None,
    ) -> Any: ...


@dataclass(frozen=True)
class UploadSettings:
    expiry_days: int  # ARTIFACT_EXPIRY_DAYS
    url_seconds: int = 3600  # presigned URLs' lifetime (at most the adapter's one hour)


def new_upload_id() -> str:
    """`up-` + 20 random hex digits (80 bits): nobody can guess another team's id (and it would not be theirs)."""
    return "up-" + secrets.token_hex(10)


def _not_found(upload_id: str) -> NotFound:
    return NotFound("upload", upload_id)


class UploadService:
    def __init__(
        self,
        store: UploadStore,
        bucket: Bucket | None,
        settings: UploadSettings,
        choose_part_size: Callable[[int], int],
    ) -> None:
        """`bucket` None: no ARTIFACT_BUCKET here (every upload route answers 503); `choose_part_size(size)` is the
        adapter's (adapters/artifacts.py)."""
        self.store = store
        self.bucket = bucket
        self.settings = settings
        self.choose_part_size = choose_part_size

    def _bucket(self) -> Bucket:
        if self.bucket is None:
            raise UpstreamUnavailable("uploads are not configured on this control plane (no ARTIFACT_BUCKET)")
        return self.bucket

    def create(self, team_id: str, kind: str, size: int, sha256: str) -> dict[str, Any]:
        """A new pending upload and the URLs to send its bytes to. Conflict when the team already has
        MAX_OPEN_UPLOADS open."""
        bucket = self._bucket()
        now = utcnow()
        open_count = self.store.count_open(team_id, now - dt.timedelta(days=OPEN_DAYS))
        if open_count >= MAX_OPEN_UPLOADS:
            raise Conflict(
                f"your team has {open_count} uploads in progress (at most {MAX_OPEN_UPLOADS}): complete them, or "
                f"wait until they lapse ({OPEN_DAYS} days after they started), then try again"
            )
        upload_id = new_upload_id()
        part_size = self.choose_part_size(size)
        s3_upload_id, parts = bucket.create_upload(
            team_id, upload_id, size, part_size, expires_seconds=self.settings.url_seconds
        )
        upload = Upload(
            upload_id=upload_id,
            team_id=team_id,
            kind=kind,  # type: ignore[arg-type]  # the route's model allows only the two kinds
            size=size,
            sha256=sha256.lower(),
            key=grants.upload_key(team_id, upload_id),
            part_size=part_size,
            s3_upload_id=s3_upload_id,
            created_at=now,
            expires_at=now + dt.timedelta(days=self.settings.expiry_days),
        )
        self.store.create(upload)
        return self._urls(upload, parts, now)

    def parts(self, team_id: str, upload_id: str) -> dict[str, Any]:
        """Fresh URLs for every part of a pending upload."""
        bucket = self._bucket()
        upload = self._pending(team_id, upload_id)
        now = utcnow()
        if upload.s3_upload_id is None:
            _, parts = bucket.create_upload(
                team_id, upload_id, upload.size, upload.part_size, expires_seconds=self.settings.url_seconds
            )
        else:
            numbers = range(1, max(1, math.ceil(upload.size / upload.part_size)) + 1)
            parts = bucket.presign_parts(
                team_id, upload_id, upload.s3_upload_id, numbers, expires_seconds=self.settings.url_seconds
            )
        return self._urls(upload, parts, now)

    def complete(self, team_id: str, upload_id: str, parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Finish the upload and check its size; completing a complete upload again answers the same."""
        upload = self._get(team_id, upload_id)
        if upload.status != COMPLETE:
            upload = self._pending(team_id, upload_id)
            if upload.s3_upload_id is not None:
                # S3 completes a multipart upload from any subset of its parts; ours must have all of them, or the
                # object would be short and the upload spent for good.
                expected = list(range(1, max(1, math.ceil(upload.size / upload.part_size)) + 1))
                if sorted(int(part["part_number"]) for part in parts) != expected:
                    raise InvalidRequest(
                        f"upload {upload_id} has {len(expected)} parts: complete it with the part_number and ETag "
                        f"of each of parts 1..{len(expected)}"
                    )
            self._bucket().complete_upload(
                team_id, upload_id, upload.s3_upload_id, parts, expected_size=upload.size
            )  # InvalidRequest (400) when parts are missing or the stored size differs
            now = utcnow()
            upload = self.store.mark_complete(upload, now, now + dt.timedelta(days=self.settings.expiry_days))
        return {"upload_id": upload.upload_id, "kind": upload.kind, "size": upload.size, "status": COMPLETE}

    def _get(self, team_id: str, upload_id: str) -> Upload:
        upload = self.store.get(team_id, upload_id) if UPLOAD_ID.fullmatch(upload_id) else None
        if upload is None or upload.team_id != team_id or upload.expires_at <= utcnow():
            raise _not_found(upload_id)  # another team's upload is as unknown as a missing one
        return upload

    def _pending(self, team_id: str, upload_id: str) -> Upload:
        upload = self._get(team_id, upload_id)
        if upload.status == COMPLETE:
            raise Conflict(f"upload {upload_id} is already complete: it takes no more parts")
        if upload.created_at + dt.timedelta(days=OPEN_DAYS) <= utcnow():
            raise Conflict(
                f"upload {upload_id} was started more than {OPEN_DAYS} days ago and never completed, so its parts "
                "are gone: start a new upload"
            )
        return upload

    def _urls(self, upload: Upload, parts: list[dict[str, Any]], signed_at: dt.datetime) -> dict[str, Any]:
        return {
            "upload_id": upload.upload_id,
            "kind": upload.kind,
            "size": upload.size,
            "part_size": upload.part_size,
            "parts": parts,
            "expires_at": (signed_at + dt.timedelta(seconds=self.settings.url_seconds)).isoformat(),
        }


def referenced_uploads(spec: TaskSpec) -> list[tuple[str, str]]:
    """`[(field, upload_id)]` for the uploads a spec names (workdir, file_mounts)."""
    refs: list[tuple[str, str]] = []
    if spec.workdir is not None and spec.workdir.upload is not None:
        refs.append(("workdir", spec.workdir.upload))
    if spec.file_mounts is not None:
        refs.append(("file_mounts", spec.file_mounts.upload))
    return refs


def check_spec_uploads(uploads: UploadReader | None, team_id: str, spec: TaskSpec) -> None:
    """InvalidSpec unless every upload the spec names is a complete, unexpired upload of `team_id` of the kind its
    field needs (the one check of POST /jobs and of console/event intake)."""
    refs = referenced_uploads(spec)
    if not refs:
        return
    if uploads is None:
        raise UpstreamUnavailable("uploads are not configured on this control plane: a job cannot name one")
    now = utcnow()
    for field, upload_id in refs:
        upload = uploads.get(team_id, upload_id)
        if upload is None or upload.team_id != team_id or upload.status != COMPLETE or upload.kind != field:
            raise InvalidSpec(
                f"{field}: upload {upload_id} is not a completed {field} upload of your team (upload with POST "
                f"/uploads, kind {field}, then POST /uploads/{upload_id}/complete)"
            )
        if upload.expires_at <= now:
            raise InvalidSpec(
                f"{field}: upload {upload_id} expired on {upload.expires_at:%Y-%m-%d} (uploads are kept for the "
                "artifacts bucket's expiry): upload it again"
            )
