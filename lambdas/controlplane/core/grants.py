"""The artifact bucket's key layout and the session policy that narrows an instance's credentials to its job
(pure).

Keys (one bucket in the control plane's own account, per-team prefixes):
    teams/<team_id>/uploads/<upload_id>/archive.tar.gz     a workdir or file_mounts archive the CLI uploaded
    teams/<team_id>/jobs/<job_id>/outputs/<path>           what the job wrote to EC2JOBS_OUTPUT_DIR
    teams/<team_id>/jobs/<job_id>/checkpoints/<path>       EC2JOBS_CHECKPOINT_DIR, synced and restored

`session_policy(bucket, team_id, job_id, read_prefixes=[...])` is the inline session policy passed to
sts:AssumeRole for one job's instance: the session can do no more than the intersection of the role's own policy
and this document. It allows
- s3:PutObject, s3:GetObject, s3:AbortMultipartUpload, s3:ListMultipartUploadParts on `teams/<team>/jobs/<job>/*`
  (CreateMultipartUpload, UploadPart and CompleteMultipartUpload are authorised as s3:PutObject);
- s3:GetObject on each read prefix (e.g. the job's uploads, or another job's checkpoints for --resume-from), which
  must be a folder (end with `/`) under `teams/<the same team>/`;
- s3:ListBucket on the bucket, only with an `s3:prefix` under those prefixes (StringLike).

AWS limits the plaintext of the session policies passed to AssumeRole to 2,048 characters (and separately checks
a packed, compressed form, reported as PackedPolicySize): https://docs.aws.amazon.com/STS/latest/APIReference/API_AssumeRole.html
("Policy"). The document is built compact (`policy_text`), and a policy over 2,048 characters raises
GrantRefused here rather than failing in STS. With the longest ids (a 32-character team, 64-character job and
upload ids) and a 40-character bucket name, four read prefixes fit; with typical ids (`job-` + 20 hex), nine.

Ids (team, job, upload) are single path segments: letters, digits, `.`, `_`, `-` (first a letter or digit), at
most 64 characters, never `..`. So no id can add a path segment, and none can carry IAM wildcards (`*`, `?`) or
policy variables (`${...}`) into an ARN.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any, Final, Literal

from controlplane.core.errors import InvalidRequest

SESSION_POLICY_MAX_CHARS: Final = 2048
ARCHIVE_NAME: Final = "archive.tar.gz"
JobArea = Literal["outputs", "checkpoints"]
JOB_AREAS: Final[tuple[str, ...]] = ("outputs", "checkpoints")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# S3 bucket names: 3-63 characters, lowercase letters, digits, '.', '-', starting and ending with a letter or digit
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_PREFIX_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
_PARTITION = re.compile(r"aws(-[a-z]+)*")
JOB_ACTIONS: Final = ("s3:PutObject", "s3:GetObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts")


class GrantRefused(InvalidRequest):
    """A grant that would not be safe (an id that is not one path segment, a prefix of another team) or that does
    not fit AWS's session-policy limit."""


def check_id(kind: str, value: str) -> str:
    """`value` if it is one safe path segment (module doc); GrantRefused otherwise."""
    if not isinstance(value, str) or not _ID.fullmatch(value) or ".." in value:
        raise GrantRefused(
            f"{kind} {value!r} cannot name storage: use 1-64 letters, digits, '.', '_' or '-' "
            "(starting with a letter or digit, no '..')"
        )
    return value


def check_bucket(bucket: str) -> str:
    if not isinstance(bucket, str) or not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise GrantRefused(f"{bucket!r} is not a valid S3 bucket name")
    return bucket


def team_prefix(team_id: str) -> str:
    return f"teams/{check_id('team id', team_id)}/"


def upload_prefix(team_id: str, upload_id: str) -> str:
    return f"{team_prefix(team_id)}uploads/{check_id('upload id', upload_id)}/"


def upload_key(team_id: str, upload_id: str) -> str:
    """Where the CLI's archive for this upload lives."""
    return upload_prefix(team_id, upload_id) + ARCHIVE_NAME


def job_prefix(team_id: str, job_id: str) -> str:
    return f"{team_prefix(team_id)}jobs/{check_id('job id', job_id)}/"


def job_area_prefix(team_id: str, job_id: str, area: str) -> str:
    """`teams/<team>/jobs/<job>/outputs/` or `.../checkpoints/`."""
    if area not in JOB_AREAS:
        raise GrantRefused(f"unknown job storage area {area!r}: use one of {', '.join(JOB_AREAS)}")
    return f"{job_prefix(team_id, job_id)}{area}/"


def check_read_prefix(team_id: str, prefix: str) -> str:
    """A prefix a job may read: a folder (`.../`) under `teams/<team_id>/`, made of safe segments."""
    own = team_prefix(team_id)
    if not isinstance(prefix, str) or not prefix.startswith(own):
        raise GrantRefused(f"read prefix {prefix!r} is not under {own}: a job reads only its own team's storage")
    if not prefix.endswith("/"):
        raise GrantRefused(f"read prefix {prefix!r} must end with '/' (a folder, not a partial name)")
    segments = prefix[len(own) : -1].split("/") if prefix != own else []
    for segment in segments:
        if not _PREFIX_SEGMENT.fullmatch(segment) or segment in (".", ".."):
            raise GrantRefused(f"read prefix {prefix!r} has an unsafe segment {segment!r}")
    return prefix


def _object_arn(partition: str, bucket: str, key_pattern: str) -> str:
    return f"arn:{partition}:s3:::{bucket}/{key_pattern}"


def session_policy(
    bucket: str,
    team_id: str,
    job_id: str,
    *,
    read_prefixes: Iterable[str] = (),
    partition: str = "aws",
) -> dict[str, Any]:
    """The session policy for one job's instance credentials (module doc). GrantRefused for an unsafe id or
    prefix, or when the compact JSON exceeds AWS's 2,048-character limit."""
    check_bucket(bucket)
    if not _PARTITION.fullmatch(partition):
        raise GrantRefused(f"{partition!r} is not an AWS partition")
    own = job_prefix(team_id, job_id)
    reads = sorted({check_read_prefix(team_id, prefix) for prefix in read_prefixes})
    reads = [prefix for prefix in reads if not prefix.startswith(own)]  # the job's own prefix already allows reads
    # a prefix inside another read prefix adds nothing
    reads = [prefix for prefix in reads if not any(p != prefix and prefix.startswith(p) for p in reads)]
    statements: list[dict[str, Any]] = [
        {
            "Sid": "JobReadWrite",
            "Effect": "Allow",
            "Action": list(JOB_ACTIONS),
            "Resource": _object_arn(partition, bucket, own + "*"),
        }
    ]
    if reads:
        statements.append(
            {
                "Sid": "ReadInputs",
                "Effect": "Allow",
                "Action": "s3:GetObject",
                "Resource": [_object_arn(partition, bucket, prefix + "*") for prefix in reads],
            }
        )
    statements.append(
        {
            "Sid": "ListOwnPrefixes",
            "Effect": "Allow",
            "Action": "s3:ListBucket",
            "Resource": f"arn:{partition}:s3:::{bucket}",
            "Condition": {"StringLike": {"s3:prefix": [prefix + "*" for prefix in [own, *reads]]}},
        }
    )
    policy = {"Version": "2012-10-17", "Statement": statements}
    length = len(policy_text(policy))
    if length > SESSION_POLICY_MAX_CHARS:
        raise GrantRefused(
            f"the storage grant for job {job_id} would be {length} characters of policy, over AWS's "
            f"{SESSION_POLICY_MAX_CHARS}-character session-policy limit: read fewer prefixes "
            f"({len(reads)} asked) or a common parent folder"
        )
    return policy


def policy_text(policy: dict[str, Any]) -> str:
    """The compact JSON sent as AssumeRole's Policy (what the 2,048-character limit counts)."""
    return json.dumps(policy, separators=(",", ":"))
