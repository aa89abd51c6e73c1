"""S3 in the cost model: what a typical job's bytes cost in the artifacts bucket, requests and storage, priced with
bench/prices.py. Pure arithmetic; bench/cost.py counts the same requests on a real local run and checks them
against this model before pricing the typical job with it.

Who makes which request (docs/artifacts.md):
- the CLI's upload of a workdir (`POST /uploads` → PUT each part → `POST /uploads/{id}/complete`): an archive of at
  most one part (8 MiB and up, `choose_part_size`) is one presigned PutObject; a larger one is the API's
  CreateMultipartUpload, one UploadPart per part and the API's CompleteMultipartUpload. Completing also reads the
  object back (HeadObject) to check its size;
- the instance (ec2jobs_transfer.py, with STS credentials: AssumeRole is free): GetObjects for the workdir (one of
  the first RANGE_THRESHOLD bytes, then ranges of `range_size`); `sync-up` one PutObject per new or changed file of
  at most MULTIPART_THRESHOLD, or CreateMultipartUpload + one UploadPart per part + CompleteMultipartUpload for a
  larger one; it lists nothing (the changes come from its state file);
- `ec2jobs download`: the API's ListObjectsV2 (one per 1,000 files) and one GetObject per file, or ranged GETs of a
  file larger than the CLI's RANGED_THRESHOLD.

Price classes: PUT, COPY, POST and LIST at one price; GET and all other requests (HEAD) at another; DELETE free.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from bench.prices import Usage, gb_months
from controlplane.adapters import artifacts
from controlplane.core import bundle
from controlplane.core.data import ec2jobs_transfer as tool
from ec2jobs import transfer as cli_transfer

MB = 1_000_000
LIST_PAGE = 1000  # ListObjectsV2 answers at most 1,000 keys a page (the API's outputs listing too)
REPO = Path(__file__).resolve().parent.parent


def expiry_days() -> int:
    """The deployed default expiry of every object in the bucket (cdk.json's artifactExpiryDays)."""
    context = json.loads((REPO / "cdk.json").read_text())["context"]
    return int(context["artifactExpiryDays"])


@dataclass(frozen=True)
class Requests:
    """S3 requests by price class: `put` = PUT, COPY, POST, LIST; `get` = GET and all other requests."""

    put: int = 0
    get: int = 0

    def __add__(self, other: Requests) -> Requests:
        return Requests(self.put + other.put, self.get + other.get)

    def usage(self, times: float = 1.0) -> Usage:
        return Usage(s3_put_requests=self.put * times, s3_get_requests=self.get * times)


def request_class(method: str, url: str, bucket: str) -> str | None:
    """ "put", "get", or None (not a request to `bucket`, or free: DELETE) for one recorded HTTP request, path-style
    as the emulator receives them (`/<bucket>/<key>?...`)."""
    parts = urlsplit(url)
    path = parts.path.lstrip("/")
    name, _, key = path.partition("/")
    if name != bucket:
        return None
    query = parse_qs(parts.query, keep_blank_values=True)
    verb = method.upper()
    if verb == "DELETE" or (verb == "POST" and "delete" in query):  # DeleteObject(s): no charge
        return None
    if verb in {"PUT", "POST"}:
        return "put"  # PutObject, UploadPart, Create/CompleteMultipartUpload, CopyObject
    if verb == "GET" and (not key or "uploadId" in query):
        return "put"  # ListObjects(V2), ListMultipartUploads, ListParts: LIST requests
    return "get"  # GetObject, HeadObject and the rest


def count(requests: Iterable[tuple[str, str]], bucket: str) -> Requests:
    """The price classes of recorded (method, url) pairs."""
    put = get = 0
    for method, url in requests:
        kind = request_class(method, url, bucket)
        put += kind == "put"
        get += kind == "get"
    return Requests(put, get)


def cli_upload(size: int) -> Requests:
    """The CLI uploading an archive of `size` bytes through the API (module doc), the API's HeadObject included."""
    part_size = artifacts.choose_part_size(size)
    if size <= part_size:
        return Requests(put=1, get=1)
    return Requests(put=artifacts.part_count(size, part_size) + 2, get=1)


def tool_upload(size: int) -> Requests:
    """ec2jobs_transfer.py uploading one file of `size` bytes."""
    if size <= tool.MULTIPART_THRESHOLD:
        return Requests(put=1)
    return Requests(put=math.ceil(size / tool.multipart_part_size(size)) + 2)


def sync_up(sizes: Iterable[int]) -> Requests:
    """`sync-up` sending these new or changed files (unchanged ones cost nothing: it lists nothing)."""
    total = Requests()
    for size in sizes:
        total += tool_upload(size)
    return total


def tool_download(size: int) -> Requests:
    """ec2jobs_transfer.py downloading one object of `size` bytes: a first GET of up to RANGE_THRESHOLD bytes, the
    rest in ranges of `range_size(size)`."""
    if size <= tool.RANGE_THRESHOLD:
        return Requests(get=1)
    return Requests(get=1 + math.ceil((size - tool.RANGE_THRESHOLD) / tool.range_size(size)))


def cli_download(size: int) -> Requests:
    """The CLI downloading one object of `size` bytes from its presigned URL: one GET, or ranges when it is larger
    than RANGED_THRESHOLD."""
    if size <= cli_transfer.RANGED_THRESHOLD:
        return Requests(get=1)
    return Requests(get=math.ceil(size / cli_transfer.range_size(size)))


def download(sizes: Iterable[int]) -> Requests:
    """`ec2jobs download` of files of these sizes: the API's listing pages and the GETs of each file."""
    sizes = list(sizes)
    total = Requests(put=max(1, math.ceil(len(sizes) / LIST_PAGE)))
    for size in sizes:
        total += cli_download(size)
    return total


def split(total: int, files: int) -> list[int]:
    """`total` bytes as `files` files of (nearly) equal size."""
    return [total // files + (1 if index < total % files else 0) for index in range(files)]


@dataclass(frozen=True)
class TypicalJob:
    """The assumption behind the S3 lines of the cost figures (stated in their notes)."""

    workdir_bytes: int = 50 * MB  # uploaded once per launch, read once by the instance
    checkpoint_bytes: int = 4 * MB  # what one sync sends ...
    files_per_sync: int = 5  # ... in this many changed files, rewritten in place (same keys, no versioning)
    sync_seconds: float = float(bundle.SYNC_SECONDS)
    outputs_bytes: int = 1000 * MB  # written once, at the job's end
    outputs_files: int = 10
    keep_days: float = 30.0  # until the bucket's lifecycle rule expires them (artifactExpiryDays)

    @property
    def syncs_per_hour(self) -> float:
        return 3600 / self.sync_seconds

    def describe(self) -> str:
        return (
            f"a {self.workdir_bytes / MB:.0f} MB workdir per launch; checkpoints synced every "
            f"{self.sync_seconds:.0f} s, {self.files_per_sync} files ({self.checkpoint_bytes / MB:.0f} MB) changed "
            f"per sync, rewritten in place; everything kept {self.keep_days:.0f} days"
        )


def launch_requests(job: TypicalJob) -> Requests:
    """Per launch: the CLI's workdir upload, the instance's GET of it, and the last checkpoint sync at the end."""
    return (
        cli_upload(job.workdir_bytes)
        + tool_download(job.workdir_bytes)
        + sync_up(split(job.checkpoint_bytes, job.files_per_sync))
    )


def launch_usage(job: TypicalJob) -> Usage:
    """Per launch: its requests, and the workdir and the last checkpoints stored until they expire."""
    kept = job.keep_days * 24
    storage = gb_months(job.workdir_bytes, kept) + gb_months(job.checkpoint_bytes, kept)
    return launch_requests(job).usage() + Usage(s3_gb_months=storage)


def hour_requests(job: TypicalJob) -> Requests:
    """Per job-hour: the periodic checkpoint syncs (one requests bundle each)."""
    return sync_up(split(job.checkpoint_bytes, job.files_per_sync))


def hour_usage(job: TypicalJob) -> Usage:
    """Per job-hour: the syncs' requests, and the checkpoints held for the hour (rewritten in place: one copy)."""
    return hour_requests(job).usage(job.syncs_per_hour) + Usage(s3_gb_months=gb_months(job.checkpoint_bytes, 1.0))


def outputs_requests(job: TypicalJob) -> Requests:
    """A job's outputs: sent by the last sync, downloaded once by `ec2jobs download`."""
    files = split(job.outputs_bytes, job.outputs_files)
    return sync_up(files) + download(files)


def outputs_usage(job: TypicalJob) -> Usage:
    """A job's outputs: their requests and their storage until they expire."""
    return outputs_requests(job).usage() + Usage(s3_gb_months=gb_months(job.outputs_bytes, job.keep_days * 24))
