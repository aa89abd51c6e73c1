"""The artifact bucket (S3, the control plane's own account): presigned uploads for the CLI's archives, listings and
short-lived download URLs for a job's outputs/checkpoints, and the scoped credentials an instance gets.

Key layout and the session policy are in core/grants.py. Nothing here logs: presigned URLs and credentials are
bearer secrets, and error messages name keys and AWS error codes only.

Uploads (`create_upload`, then the CLI PUTs with ec2jobs/transfer.py, then `complete_upload`):
- an archive of at most `part_size` bytes is ONE presigned PutObject (no s3_upload_id): one request instead of
  three, and nothing left behind to abort if the client gives up;
- a larger one is a multipart upload, one presigned UploadPart URL per part. S3 allows parts of 5 MiB to 5 GiB
  (the last may be smaller) and at most 10,000 parts
  (https://docs.aws.amazon.com/AmazonS3/latest/userguide/qfacts.html). `choose_part_size` starts at 8 MiB (the
  AWS CLI's default multipart_chunksize, https://docs.aws.amazon.com/cli/latest/topic/s3-config.html) and grows
  in whole MiB so that an upload needs at most 1,000 parts: every part's URL is returned in one API response,
  and 1,000 URLs of about 1-2 KB each (a Lambda role's session token is in every URL) stay well inside Lambda's
  6 MB response limit, where 10,000 would not. The largest upload is therefore 1,000 x 5 GiB.

Presigned URLs live at most one hour (`MAX_PRESIGN_SECONDS`): a presigned URL is a bearer credential nobody can
revoke, so a URL that leaks (shell history, a proxy's log) must stop working soon; and a URL signed with role
credentials (the Lambda's) stops working when that role session ends, whatever its X-Amz-Expires says
(https://docs.aws.amazon.com/AmazonS3/latest/userguide/using-presigned-url.html#PresignedUrl-Expiration), so a
longer promise could not be kept (and a URL signed late in a session's life may stop sooner than its expiry:
a PUT answered 403 means "ask for fresh URLs"). An upload that outlives its URLs gets new ones with
`presign_parts`. URLs are SigV4 (`S3_CONFIG`): botocore presigns S3 with the deprecated SigV2 unless told
otherwise, and every URL is checked before it is handed out.

Instance credentials (`scoped_credentials`): sts:AssumeRole of the instance-grant role with the job's session
policy, at most one hour because the Lambda's own role session assuming another role is role chaining, which AWS
caps at one hour (https://docs.aws.amazon.com/STS/latest/APIReference/API_AssumeRole.html, DurationSeconds);
RoleSessionName is the job id cut to AWS's 64 characters of `[\\w+=,.@-]` (same page).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from controlplane import config
from controlplane.adapters import aws
from controlplane.core import grants
from controlplane.core.errors import InvalidRequest, UpstreamUnavailable

MIB: Final = 1024 * 1024
S3_MIN_PART_SIZE: Final = 5 * MIB
S3_MAX_PART_SIZE: Final = 5 * 1024 * MIB
S3_MAX_PARTS: Final = 10_000
DEFAULT_PART_SIZE: Final = 8 * MIB
MAX_PARTS: Final = 1_000  # ours: every part's URL fits in one API response (module doc)
MAX_UPLOAD_SIZE: Final = MAX_PARTS * S3_MAX_PART_SIZE
MAX_PRESIGN_SECONDS: Final = 3600
MIN_CREDENTIAL_SECONDS: Final = 900  # AssumeRole's minimum DurationSeconds
MAX_CREDENTIAL_SECONDS: Final = 3600  # role chaining's maximum
# Presigned URLs must be SigV4: botocore presigns S3 with the deprecated SigV2 unless the client's Config names
# s3v4 (its generate_presigned_url docstring), and SigV2 silently leaves some parameters unsigned.
S3_CONFIG: Final = aws.CLIENT_CONFIG.merge(Config(signature_version="s3v4"))
_SIGV4_MARK = "X-Amz-Algorithm=AWS4-HMAC-SHA256"
_SESSION_NAME_CHARS = re.compile(r"[^\w+=,.@-]")
_SESSION_NAME_MAX = 64


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str
    last_modified: dt.datetime


def choose_part_size(size: int) -> int:
    """The part size for an upload of `size` bytes (module doc): 8 MiB, or more (whole MiB) so it needs at most
    1,000 parts. InvalidRequest for a negative size or one over 1,000 x 5 GiB."""
    if size < 0:
        raise InvalidRequest(f"an upload size cannot be negative ({size})")
    if size > MAX_UPLOAD_SIZE:
        raise InvalidRequest(f"an upload is at most {MAX_UPLOAD_SIZE // (1024 * MIB)} GiB; this one is {size} bytes")
    needed = math.ceil(math.ceil(size / MAX_PARTS) / MIB) * MIB
    return max(DEFAULT_PART_SIZE, needed)


def part_count(size: int, part_size: int) -> int:
    return max(1, math.ceil(size / part_size))


def check_part_size(size: int, part_size: int) -> None:
    """InvalidRequest unless `part_size` is within S3's limits and splits `size` into at most MAX_PARTS parts."""
    if size < 0:
        raise InvalidRequest(f"an upload size cannot be negative ({size})")
    if not S3_MIN_PART_SIZE <= part_size <= S3_MAX_PART_SIZE:
        raise InvalidRequest(f"part_size must be between 5 MiB and 5 GiB (S3's part limits), not {part_size}")
    if part_count(size, part_size) > MAX_PARTS:
        raise InvalidRequest(
            f"{size} bytes in {part_size}-byte parts is {part_count(size, part_size)} parts; at most {MAX_PARTS}"
        )


def session_name(job_id: str) -> str:
    """AssumeRole's RoleSessionName for a job: its characters outside `[\\w+=,.@-]` replaced by '-', cut to 64
    characters, at least 2."""
    name = _SESSION_NAME_CHARS.sub("-", job_id)[:_SESSION_NAME_MAX]
    return name if len(name) >= 2 else (name + "--")[:2]


def _sigv4_client(session: boto3.session.Session, service: str) -> Any:
    return session.client(service, region_name=config.get().region, config=S3_CONFIG)


def s3_client() -> Any:
    """A new client for the artifact bucket (its own account): SigV4, the shared retry policy, made from the one
    boto3 Session of the control plane's own clients (adapters/aws.py), whose endpoint data is read already: a
    Session of its own costs about 9 ms of a cold start. Not cached here: handlers/container.py keeps one per
    container, and aws.client.cache_clear() (a new environment) gives the next one a new Session."""
    client = aws._PerService(_sigv4_client)  # made for this call, so it caches nothing
    return client("s3")


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", "") or "unknown")


def _unavailable(what: str, error: Exception) -> UpstreamUnavailable:
    detail = _error_code(error) if isinstance(error, ClientError) else type(error).__name__
    return UpstreamUnavailable(f"artifact storage: {what} failed ({detail}); retry")


class ArtifactStore:
    """`ArtifactStore(s3_client, bucket)`: one bucket, keys from core/grants.py. The client must presign with
    SigV4 (`s3_client()`, or any client made with `S3_CONFIG`): a URL signed otherwise is never handed out
    (ValueError)."""

    def __init__(self, s3: Any, bucket: str) -> None:
        self.s3 = s3
        self.bucket = grants.check_bucket(bucket)

    # -- uploads ----------------------------------------------------------------------------------------------------

    def create_upload(
        self,
        team_id: str,
        upload_id: str,
        size: int,
        part_size: int,
        *,
        expires_seconds: int = MAX_PRESIGN_SECONDS,
    ) -> tuple[str | None, list[dict[str, Any]]]:
        """Start an upload of `size` bytes in `part_size` parts (see `choose_part_size`). Returns
        `(s3_upload_id, [{"part_number": n, "url": ...}])`: s3_upload_id is None when `size <= part_size` (one
        presigned PutObject, part 1), else the multipart upload's id with one presigned UploadPart URL per part."""
        check_part_size(size, part_size)
        key = grants.upload_key(team_id, upload_id)
        expires = self._check_expiry(expires_seconds)
        if size <= part_size:
            url = self._presign("put_object", {"Bucket": self.bucket, "Key": key}, expires)
            return None, [{"part_number": 1, "url": url}]
        try:
            s3_upload_id = str(self.s3.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"])
        except (ClientError, BotoCoreError) as error:
            raise _unavailable(f"starting the upload of {key}", error) from None
        parts = range(1, part_count(size, part_size) + 1)
        return s3_upload_id, self.presign_parts(team_id, upload_id, s3_upload_id, parts, expires_seconds=expires)

    def presign_parts(
        self,
        team_id: str,
        upload_id: str,
        s3_upload_id: str,
        part_numbers: Iterable[int],
        *,
        expires_seconds: int = MAX_PRESIGN_SECONDS,
    ) -> list[dict[str, Any]]:
        """Fresh UploadPart URLs for these parts of a multipart upload (e.g. when the first ones expired)."""
        key = grants.upload_key(team_id, upload_id)
        expires = self._check_expiry(expires_seconds)
        parts = []
        for number in part_numbers:
            if not 1 <= number <= S3_MAX_PARTS:
                raise InvalidRequest(f"part numbers run from 1 to {S3_MAX_PARTS}, not {number}")
            params = {"Bucket": self.bucket, "Key": key, "UploadId": s3_upload_id, "PartNumber": number}
            parts.append({"part_number": number, "url": self._presign("upload_part", params, expires)})
        return parts

    def complete_upload(
        self,
        team_id: str,
        upload_id: str,
        s3_upload_id: str | None,
        parts: Sequence[Mapping[str, Any]],
        *,
        expected_size: int | None = None,
    ) -> ObjectInfo:
        """Finish an upload (CompleteMultipartUpload with the parts' ETags; for a single PUT, nothing to do) and
        return the stored object. Retrying a completion that already succeeded returns the object again.
        InvalidRequest when parts are missing/wrong or the stored size is not `expected_size`."""
        key = grants.upload_key(team_id, upload_id)
        if s3_upload_id is not None:
            listed = sorted((int(part["part_number"]), str(part["etag"])) for part in parts)
            if not listed or [number for number, _ in listed] != list(range(1, len(listed) + 1)):
                raise InvalidRequest("an upload completes with every part, numbered 1..N, each with its ETag")
            try:
                self.s3.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=s3_upload_id,
                    MultipartUpload={"Parts": [{"PartNumber": number, "ETag": etag} for number, etag in listed]},
                )
            except ClientError as error:
                code = _error_code(error)
                if code != "NoSuchUpload":  # NoSuchUpload: completed already (a retry) or aborted: head decides
                    if code in {"InvalidPart", "InvalidPartOrder", "EntityTooSmall"}:
                        raise InvalidRequest(f"the upload's parts were not accepted by S3 ({code})") from None
                    raise _unavailable(f"completing the upload of {key}", error) from None
            except BotoCoreError as error:
                raise _unavailable(f"completing the upload of {key}", error) from None
        stored = self.head(key)
        if stored is None:
            raise InvalidRequest(f"upload {upload_id} was not received (nothing stored at its key)")
        if expected_size is not None and stored.size != expected_size:
            raise InvalidRequest(f"upload {upload_id} holds {stored.size} bytes, expected {expected_size}")
        return stored

    def abort_upload(self, team_id: str, upload_id: str, s3_upload_id: str) -> None:
        """Abort a multipart upload (its stored parts are deleted); an unknown one is already gone."""
        key = grants.upload_key(team_id, upload_id)
        try:
            self.s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=s3_upload_id)
        except ClientError as error:
            if _error_code(error) != "NoSuchUpload":
                raise _unavailable(f"aborting the upload of {key}", error) from None
        except BotoCoreError as error:
            raise _unavailable(f"aborting the upload of {key}", error) from None

    # -- reading ----------------------------------------------------------------------------------------------------

    def head(self, key: str) -> ObjectInfo | None:
        """The object's size, ETag and time, or None when there is none."""
        self._check_key(key)
        try:
            response = self.s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            if _error_code(error) in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise _unavailable(f"reading {key}", error) from None
        except BotoCoreError as error:
            raise _unavailable(f"reading {key}", error) from None
        return ObjectInfo(key, int(response["ContentLength"]), str(response.get("ETag", "")), response["LastModified"])

    def list_prefix(
        self, team_id: str, job_id: str, kind: str, *, limit: int | None = None
    ) -> list[tuple[str, int, dt.datetime]]:
        """A job's `outputs` or `checkpoints`: `[(path relative to that folder, size, last_modified)]` in key order,
        every page of ListObjectsV2 (at most `limit` entries when given)."""
        prefix = grants.job_area_prefix(team_id, job_id, kind)
        found: list[tuple[str, int, dt.datetime]] = []
        try:
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    relative = str(item["Key"])[len(prefix) :]
                    if not relative or relative.endswith("/"):  # folder markers some tools write
                        continue
                    found.append((relative, int(item["Size"]), item["LastModified"]))
                    if limit is not None and len(found) >= limit:
                        return found
        except (ClientError, BotoCoreError) as error:
            raise _unavailable(f"listing {prefix}", error) from None
        return found

    def any_under(self, prefix: str) -> bool:
        """Whether any object's key starts with `prefix` (a `teams/...` folder ending in '/'): one ListObjectsV2
        with MaxKeys=1."""
        self._check_key(prefix)
        if not prefix.endswith("/"):
            raise InvalidRequest(f"{prefix!r} is not a folder prefix (it must end with '/')")
        try:
            response = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=prefix, MaxKeys=1)
        except (ClientError, BotoCoreError) as error:
            raise _unavailable(f"listing {prefix}", error) from None
        return int(response.get("KeyCount", len(response.get("Contents", [])))) > 0

    def presign_get(self, key: str, expires_seconds: int) -> str:
        """A GET URL for `key`, valid `expires_seconds` (1..3600)."""
        self._check_key(key)
        return self._presign("get_object", {"Bucket": self.bucket, "Key": key}, self._check_expiry(expires_seconds))

    # -- instance credentials ---------------------------------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes) -> None:
        """Store a small object (a job's large setup/run script) from the control plane itself."""
        try:
            self.s3.put_object(Bucket=self.bucket, Key=key, Body=data)
        except (ClientError, BotoCoreError) as error:
            raise _unavailable(f"storing {key}", error) from None

    def get_bytes(self, key: str) -> bytes:
        try:
            return bytes(self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read())
        except (ClientError, BotoCoreError) as error:
            raise _unavailable(f"reading {key}", error) from None

    def scoped_credentials(
        self,
        sts: Any,
        role_arn: str,
        team_id: str,
        job_id: str,
        read_prefixes: Iterable[str] = (),
        duration: int = MAX_CREDENTIAL_SECONDS,
    ) -> dict[str, str]:
        """Temporary credentials for a job's instance: AssumeRole(role_arn) narrowed by the job's session policy.
        Returns {access_key_id, secret_access_key, session_token, expiration (ISO 8601, UTC)}."""
        if not MIN_CREDENTIAL_SECONDS <= duration <= MAX_CREDENTIAL_SECONDS:
            raise InvalidRequest(
                f"instance credentials last {MIN_CREDENTIAL_SECONDS}..{MAX_CREDENTIAL_SECONDS} seconds "
                f"(AssumeRole's minimum; role chaining's maximum), not {duration}"
            )
        partition = role_arn.split(":")[1] if role_arn.startswith("arn:") and role_arn.count(":") >= 5 else ""
        if not partition:
            raise InvalidRequest("the instance-grant role must be given as an IAM role ARN")
        policy = grants.session_policy(
            self.bucket, team_id, job_id, read_prefixes=list(read_prefixes), partition=partition
        )
        try:
            response = sts.assume_role(
                RoleArn=role_arn,
                RoleSessionName=session_name(job_id),
                Policy=grants.policy_text(policy),
                DurationSeconds=duration,
            )
        except (ClientError, BotoCoreError) as error:
            raise _unavailable(f"issuing storage credentials for job {job_id}", error) from None
        credentials = response["Credentials"]
        expiration = credentials["Expiration"]
        if isinstance(expiration, dt.datetime):
            expiration = expiration.astimezone(dt.UTC).isoformat()
        return {
            "access_key_id": str(credentials["AccessKeyId"]),
            "secret_access_key": str(credentials["SecretAccessKey"]),
            "session_token": str(credentials["SessionToken"]),
            "expiration": str(expiration),
        }

    # -- helpers ----------------------------------------------------------------------------------------------------

    def _presign(self, operation: str, params: dict[str, Any], expires: int) -> str:
        try:
            url = str(self.s3.generate_presigned_url(operation, Params=params, ExpiresIn=expires))
        except (ClientError, BotoCoreError) as error:
            raise _unavailable(f"signing a URL for {params.get('Key')}", error) from None
        if _SIGV4_MARK not in url:
            raise ValueError(
                "the artifact store's S3 client must presign with SigV4: "
                "make it with botocore.config.Config(signature_version='s3v4') (artifacts.S3_CONFIG)"
            )
        return url

    @staticmethod
    def _check_expiry(seconds: int) -> int:
        if not 1 <= seconds <= MAX_PRESIGN_SECONDS:
            raise InvalidRequest(f"presigned URLs last 1..{MAX_PRESIGN_SECONDS} seconds, not {seconds}")
        return seconds

    @staticmethod
    def _check_key(key: str) -> None:
        if not isinstance(key, str) or not key.startswith("teams/") or ".." in key.split("/"):
            raise InvalidRequest(f"{key!r} is not an artifact key (teams/<team>/...)")
