"""S3 as AWS authorises a role session (local/iam_conditions.py in front of the emulator): a job's instance
credentials — InstanceTransferRole narrowed by core.grants.session_policy at AssumeRole — can touch only the job's
keys and its read prefixes; the role's own policy alone applies without a session policy; the control plane's own
requests are untouched. Run against an emulator without and with moto's IAM enforcement."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from controlplane.core import grants
from local import emulator
from local.iam_conditions import S3_UNMAPPED_ACTION, Principal, s3_call, s3_questions
from stacks.artifacts import TEAMS_PREFIX, TRANSFER_BUCKET_ACTIONS, TRANSFER_OBJECT_ACTIONS

REGION = "us-east-1"
ACCOUNT = "123456789012"
PATH_STYLE = Config(s3={"addressing_style": "path"}, signature_version="s3v4")
JOB = "teams/team-a/jobs/job-1/"
UPLOAD = "teams/team-a/uploads/up-1/archive.tar.gz"
OTHER_UPLOAD = "teams/team-a/uploads/up-2/archive.tar.gz"


@dataclass(frozen=True)
class World:
    endpoint: str
    admin: dict[str, str]  # the control plane's own keys (the emulator's administrator)
    bucket: str
    role_arn: str
    enforce_iam: bool


@pytest.fixture(scope="module", params=[False, True], ids=["moto-auth-off", "moto-enforce-iam"])
def world(request: pytest.FixtureRequest) -> Iterator[World]:
    process = emulator.start(enforce_iam=request.param)
    try:
        info = process.info
        admin = {"aws_access_key_id": info.access_key_id, "aws_secret_access_key": info.secret_access_key}
        bucket = f"artifacts-{uuid.uuid4().hex[:12]}"
        s3 = s3_client(info.endpoint, admin)
        s3.create_bucket(Bucket=bucket)
        for key in (UPLOAD, OTHER_UPLOAD):
            s3.put_object(Bucket=bucket, Key=key, Body=f"bytes of {key}".encode())
        yield World(info.endpoint, admin, bucket, transfer_role(info.endpoint, admin, bucket), info.enforce_iam)
    finally:
        process.stop()


def s3_client(endpoint: str, keys: dict[str, str]) -> Any:
    return boto3.client("s3", region_name=REGION, endpoint_url=endpoint, config=PATH_STYLE, **keys)


def transfer_role(endpoint: str, admin: dict[str, str], bucket: str, extra: Sequence[Mapping[str, Any]] = ()) -> str:
    """A role with InstanceTransferRole's own policy (stacks/artifacts.py's TeamObjects), plus `extra` statements;
    trusted by the control plane's identity in the emulator (moto checks the trust policy when enforcing IAM)."""
    iam = boto3.client("iam", region_name=REGION, endpoint_url=endpoint, **admin)
    name = f"InstanceTransferRole-{uuid.uuid4().hex[:8]}"
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:user/{emulator.ADMIN_USER}"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
    iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": list(TRANSFER_OBJECT_ACTIONS),
                "Resource": f"arn:aws:s3:::{bucket}/{TEAMS_PREFIX}*",
            },
            {
                "Effect": "Allow",
                "Action": list(TRANSFER_BUCKET_ACTIONS),
                "Resource": f"arn:aws:s3:::{bucket}",
                "Condition": {"StringLike": {"s3:prefix": [f"{TEAMS_PREFIX}*"]}},
            },
            *extra,
        ],
    }
    iam.put_role_policy(RoleName=name, PolicyName="TeamObjects", PolicyDocument=json.dumps(policy))
    return f"arn:aws:iam::{ACCOUNT}:role/{name}"


def session_keys(world: World, role_arn: str | None = None, policy: dict[str, Any] | None = None) -> dict[str, str]:
    """AssumeRole as the control plane does it (adapters/artifacts.py scoped_credentials), with the admin's keys."""
    sts = boto3.client("sts", region_name=REGION, endpoint_url=world.endpoint, **world.admin)
    extra = {"Policy": grants.policy_text(policy)} if policy is not None else {}
    credentials = sts.assume_role(
        RoleArn=role_arn or world.role_arn, RoleSessionName=f"job-{uuid.uuid4().hex[:8]}", **extra
    )["Credentials"]
    return {
        "aws_access_key_id": credentials["AccessKeyId"],
        "aws_secret_access_key": credentials["SecretAccessKey"],
        "aws_session_token": credentials["SessionToken"],
    }


def job_keys(world: World) -> dict[str, str]:
    """What the control plane hands job-1's instance: the role narrowed by the job's session policy."""
    policy = grants.session_policy(world.bucket, "team-a", "job-1", read_prefixes=["teams/team-a/uploads/up-1/"])
    return session_keys(world, policy=policy)


def job_client(world: World) -> Any:
    return s3_client(world.endpoint, job_keys(world))


def denied(call: Any, *args: Any, **kwargs: Any) -> ClientError:
    with pytest.raises(ClientError) as caught:
        call(*args, **kwargs)
    error = caught.value.response
    assert error["Error"]["Code"] in {"AccessDenied", "403"}, error  # a HEAD's 403 has no body: code "403"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 403
    return caught.value


def exists(world: World, key: str) -> bool:
    listed = s3_client(world.endpoint, world.admin).list_objects_v2(Bucket=world.bucket, Prefix=key)
    return key in [o["Key"] for o in listed.get("Contents", [])]


def test_a_job_session_writes_only_under_its_job_prefix(world: World) -> None:
    s3 = job_client(world)
    s3.put_object(Bucket=world.bucket, Key=f"{JOB}outputs/model.bin", Body=b"weights")
    assert exists(world, f"{JOB}outputs/model.bin")
    for key in (
        "teams/team-a/jobs/job-2/outputs/model.bin",  # another job of the same team
        "teams/team-b/jobs/job-1/outputs/model.bin",  # another team (same job id)
        "root.txt",  # the bucket root
        "teams/team-a/uploads/up-1/planted.txt",  # a read prefix is not writable
        "teams/team-a/jobs/job-10/x",  # a job id that only starts like ours
    ):
        error = denied(s3.put_object, Bucket=world.bucket, Key=key, Body=b"x")
        message = error.response["Error"]["Message"]
        assert f"s3:PutObject on resource: arn:aws:s3:::{world.bucket}/{key}" in message
        assert not exists(world, key)
    # the role allows teams/*: what denies is the session policy, and the answer says so
    assert "because no session policy allows the s3:PutObject action" in message
    denied(s3.delete_object, Bucket=world.bucket, Key=f"{JOB}outputs/model.bin")  # no delete, even its own
    assert exists(world, f"{JOB}outputs/model.bin")


def test_a_job_session_reads_its_job_and_read_prefixes_only(world: World) -> None:
    s3 = job_client(world)
    assert s3.get_object(Bucket=world.bucket, Key=UPLOAD)["Body"].read() == f"bytes of {UPLOAD}".encode()
    s3.head_object(Bucket=world.bucket, Key=UPLOAD)
    denied(s3.get_object, Bucket=world.bucket, Key=OTHER_UPLOAD)
    denied(s3.head_object, Bucket=world.bucket, Key=OTHER_UPLOAD)
    s3.put_object(Bucket=world.bucket, Key=f"{JOB}checkpoints/step-1", Body=b"ckpt")
    assert s3.get_object(Bucket=world.bucket, Key=f"{JOB}checkpoints/step-1")["Body"].read() == b"ckpt"


def test_a_job_session_lists_only_under_its_prefixes(world: World) -> None:
    s3 = job_client(world)
    s3.put_object(Bucket=world.bucket, Key=f"{JOB}outputs/listed.txt", Body=b"x")
    listed = s3.list_objects_v2(Bucket=world.bucket, Prefix=JOB)
    assert f"{JOB}outputs/listed.txt" in [o["Key"] for o in listed["Contents"]]
    read = s3.list_objects_v2(Bucket=world.bucket, Prefix="teams/team-a/uploads/up-1/")
    assert [o["Key"] for o in read["Contents"]] == [UPLOAD]
    s3.list_objects(Bucket=world.bucket, Prefix=JOB)  # ListObjects (v1) is s3:ListBucket too
    for prefix in ("teams/", "teams/team-a/", "teams/team-a/uploads/", "teams/team-a/jobs/job-2/"):
        error = denied(s3.list_objects_v2, Bucket=world.bucket, Prefix=prefix)
        assert f"s3:ListBucket on resource: arn:aws:s3:::{world.bucket} " in error.response["Error"]["Message"]
    denied(s3.list_objects_v2, Bucket=world.bucket)  # no prefix: the whole bucket
    denied(s3.list_multipart_uploads, Bucket=world.bucket)  # not in the grant
    denied(s3.list_buckets)


def test_a_job_session_uploads_multipart_only_under_its_prefix(world: World) -> None:
    s3 = job_client(world)
    key = f"{JOB}outputs/large.bin"
    upload = s3.create_multipart_upload(Bucket=world.bucket, Key=key)["UploadId"]
    part = s3.upload_part(Bucket=world.bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"p" * 1024)
    assert [p["PartNumber"] for p in s3.list_parts(Bucket=world.bucket, Key=key, UploadId=upload)["Parts"]] == [1]
    s3.complete_multipart_upload(
        Bucket=world.bucket,
        Key=key,
        UploadId=upload,
        MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]},
    )
    assert exists(world, key)
    aborted = s3.create_multipart_upload(Bucket=world.bucket, Key=f"{JOB}outputs/abandoned.bin")["UploadId"]
    s3.abort_multipart_upload(Bucket=world.bucket, Key=f"{JOB}outputs/abandoned.bin", UploadId=aborted)

    outside = "teams/team-a/jobs/job-2/outputs/large.bin"
    error = denied(s3.create_multipart_upload, Bucket=world.bucket, Key=outside)
    assert "s3:PutObject" in error.response["Error"]["Message"]
    # an upload someone else started outside the prefix: no part, no listing, no completion, no abort
    admin = s3_client(world.endpoint, world.admin)
    theirs = admin.create_multipart_upload(Bucket=world.bucket, Key=outside)["UploadId"]
    denied(s3.upload_part, Bucket=world.bucket, Key=outside, UploadId=theirs, PartNumber=1, Body=b"p")
    denied(s3.list_parts, Bucket=world.bucket, Key=outside, UploadId=theirs)
    denied(
        s3.complete_multipart_upload,
        Bucket=world.bucket,
        Key=outside,
        UploadId=theirs,
        MultipartUpload={"Parts": [{"ETag": '"x"', "PartNumber": 1}]},
    )
    denied(s3.abort_multipart_upload, Bucket=world.bucket, Key=outside, UploadId=theirs)
    admin.abort_multipart_upload(Bucket=world.bucket, Key=outside, UploadId=theirs)  # still the admin's to abort


def test_a_copy_needs_read_on_the_source_and_write_on_the_destination(world: World) -> None:
    s3 = job_client(world)
    s3.copy_object(
        Bucket=world.bucket, Key=f"{JOB}inputs/archive.tar.gz", CopySource={"Bucket": world.bucket, "Key": UPLOAD}
    )
    assert exists(world, f"{JOB}inputs/archive.tar.gz")
    error = denied(
        s3.copy_object,
        Bucket=world.bucket,
        Key=f"{JOB}inputs/other.tar.gz",
        CopySource={"Bucket": world.bucket, "Key": OTHER_UPLOAD},
    )
    assert f"s3:GetObject on resource: arn:aws:s3:::{world.bucket}/{OTHER_UPLOAD}" in error.response["Error"]["Message"]
    assert not exists(world, f"{JOB}inputs/other.tar.gz")
    denied(
        s3.copy_object,
        Bucket=world.bucket,
        Key="teams/team-a/uploads/up-1/copy",
        CopySource={"Bucket": world.bucket, "Key": UPLOAD},
    )


def test_a_presigned_url_made_with_the_session_keys_is_held_to_the_same_policy(world: World) -> None:
    s3 = job_client(world)
    outside = s3.generate_presigned_url("put_object", Params={"Bucket": world.bucket, "Key": "teams/team-b/x"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(outside, data=b"no", method="PUT"))  # noqa: S310
    assert refused.value.code == 403
    assert refused.value.headers["Content-Type"] == "application/xml"
    body = refused.value.read().decode()
    assert body.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code><Message>')
    assert re.search(r"</Message><RequestId>[0-9A-F]{16}</RequestId></Error>$", body)
    assert not exists(world, "teams/team-b/x")
    inside = s3.generate_presigned_url("put_object", Params={"Bucket": world.bucket, "Key": f"{JOB}outputs/presigned"})
    with urllib.request.urlopen(urllib.request.Request(inside, data=b"ok", method="PUT")) as answer:  # noqa: S310
        assert answer.status == 200
    assert exists(world, f"{JOB}outputs/presigned")


def test_virtual_host_style_requests_are_evaluated_too(world: World) -> None:
    """`Host: <bucket>.s3.amazonaws.com` sent to the emulator: moto takes the bucket from the host, so must we."""
    keys = job_keys(world)
    credentials = Credentials(keys["aws_access_key_id"], keys["aws_secret_access_key"], keys["aws_session_token"])

    def put(key: str) -> int:
        url = f"http://{world.bucket}.s3.amazonaws.com/{key}"
        signed = AWSRequest(method="PUT", url=url, data=b"v", headers={"x-amz-content-sha256": "UNSIGNED-PAYLOAD"})
        S3SigV4Auth(credentials, "s3", REGION).add_auth(signed)
        local = urllib.request.Request(f"{world.endpoint}/{key}", data=b"v", method="PUT")  # noqa: S310
        for name, value in signed.headers.items():
            local.add_header(name, value)
        local.add_header("Host", f"{world.bucket}.s3.amazonaws.com")
        try:
            with urllib.request.urlopen(local) as answer:  # noqa: S310 - the loopback emulator
                return int(answer.status)
        except urllib.error.HTTPError as error:
            return int(error.code)

    assert put(f"{JOB}outputs/virtual") == 200
    assert exists(world, f"{JOB}outputs/virtual")
    assert put("teams/team-b/virtual") == 403
    assert not exists(world, "teams/team-b/virtual")


def test_without_a_session_policy_only_the_role_policy_applies(world: World) -> None:
    exact = "teams/odd names/ü & 100%.txt"  # URL-encoded on the wire: the ARN is built from the decoded key
    role = transfer_role(
        world.endpoint,
        world.admin,
        world.bucket,
        [{"Effect": "Allow", "Action": "s3:DeleteObject", "Resource": f"arn:aws:s3:::{world.bucket}/{exact}"}],
    )
    s3 = s3_client(world.endpoint, session_keys(world, role))
    for key in ("teams/team-b/jobs/job-9/x", "teams/team-a/uploads/up-3/x", exact):  # anything under teams/
        s3.put_object(Bucket=world.bucket, Key=key, Body=b"x")
    s3.get_object(Bucket=world.bucket, Key=OTHER_UPLOAD)
    s3.list_objects_v2(Bucket=world.bucket, Prefix="teams/")
    s3.delete_object(Bucket=world.bucket, Key=exact)  # the one key the role may delete, matched exactly
    assert not exists(world, exact)
    error = denied(s3.delete_object, Bucket=world.bucket, Key="teams/team-b/jobs/job-9/x")
    assert "because no identity-based policy allows the s3:DeleteObject action" in error.response["Error"]["Message"]
    denied(s3.put_object, Bucket=world.bucket, Key="root.txt", Body=b"x")  # outside the role's teams/*
    denied(s3.list_objects_v2, Bucket=world.bucket, Prefix="")
    denied(s3.delete_objects, Bucket=world.bucket, Delete={"Objects": [{"Key": "teams/team-b/jobs/job-9/x"}]})
    assert exists(world, "teams/team-b/jobs/job-9/x")


def test_a_session_policy_cannot_grant_more_than_the_role(world: World) -> None:
    everything = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    s3 = s3_client(world.endpoint, session_keys(world, policy=everything))
    s3.put_object(Bucket=world.bucket, Key="teams/team-c/x", Body=b"x")
    error = denied(s3.put_object, Bucket=world.bucket, Key="root-from-session.txt", Body=b"x")
    assert "because no identity-based policy allows" in error.response["Error"]["Message"]
    denied(s3.delete_object, Bucket=world.bucket, Key="teams/team-c/x")
    deny = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
            {"Effect": "Deny", "Action": "s3:PutObject", "Resource": f"arn:aws:s3:::{world.bucket}/teams/team-c/*"},
        ],
    }
    s3 = s3_client(world.endpoint, session_keys(world, policy=deny))
    error = denied(s3.put_object, Bucket=world.bucket, Key="teams/team-c/y", Body=b"x")
    assert "with an explicit deny in a session policy" in error.response["Error"]["Message"]


def test_the_control_plane_own_requests_are_untouched(world: World) -> None:
    admin = s3_client(world.endpoint, world.admin)
    admin.put_object(Bucket=world.bucket, Key="root-admin.txt", Body=b"x")
    admin.put_object(Bucket=world.bucket, Key="teams/team-z/jobs/j/x", Body=b"x")
    assert {o["Key"] for o in admin.list_objects_v2(Bucket=world.bucket)["Contents"]} >= {"root-admin.txt", UPLOAD}
    admin.copy_object(Bucket=world.bucket, Key="copy-admin.txt", CopySource={"Bucket": world.bucket, "Key": UPLOAD})
    admin.delete_objects(
        Bucket=world.bucket, Delete={"Objects": [{"Key": "root-admin.txt"}, {"Key": "copy-admin.txt"}]}
    )
    assert not exists(world, "root-admin.txt")
    assert world.bucket in [b["Name"] for b in admin.list_buckets()["Buckets"]]


# -- the mapping itself (pure; bucket and key parsed as moto's server parses them) ---------------------------------

ROLE = Principal("role", f"arn:aws:sts::{ACCOUNT}:assumed-role/R/s", ACCOUNT, [])
B = "arn:aws:s3:::bkt"


def asked(
    method: str, path: str, query: str = "", host: str = "127.0.0.1:5000", body: bytes | None = None, **headers: str
) -> list[tuple[str, str, dict[str, Any]]]:
    environ = {
        "REQUEST_METHOD": method,
        # what werkzeug puts in PATH_INFO: the percent-decoded path, as latin-1 text of its UTF-8 bytes (PEP 3333)
        "PATH_INFO": urllib.parse.unquote(path).encode().decode("latin-1"),
        "QUERY_STRING": query,
        "HTTP_HOST": host,
        **{f"HTTP_{name.upper()}": value for name, value in headers.items()},
    }
    return [(r.action, r.resource, dict(r.context)) for r in s3_questions(ROLE, s3_call(environ, body))]


@pytest.mark.parametrize(
    ("method", "path", "query", "expected"),
    [
        ("GET", "/bkt/a/b.txt", "", [("s3:GetObject", f"{B}/a/b.txt", {})]),
        ("HEAD", "/bkt/a/b.txt", "", [("s3:GetObject", f"{B}/a/b.txt", {})]),
        ("GET", "/bkt/a/b.txt", "partNumber=2&response-content-type=x", [("s3:GetObject", f"{B}/a/b.txt", {})]),
        ("GET", "/bkt/k", "versionId=v1", [("s3:GetObjectVersion", f"{B}/k", {})]),
        ("PUT", "/bkt/k", "x-id=PutObject", [("s3:PutObject", f"{B}/k", {})]),
        ("PUT", "/bkt/k", "partNumber=1&uploadId=u", [("s3:PutObject", f"{B}/k", {})]),
        ("POST", "/bkt/k", "uploads", [("s3:PutObject", f"{B}/k", {})]),
        ("POST", "/bkt/k", "uploadId=u", [("s3:PutObject", f"{B}/k", {})]),
        ("DELETE", "/bkt/k", "uploadId=u", [("s3:AbortMultipartUpload", f"{B}/k", {})]),
        ("GET", "/bkt/k", "uploadId=u&max-parts=5", [("s3:ListMultipartUploadParts", f"{B}/k", {})]),
        ("DELETE", "/bkt/k", "", [("s3:DeleteObject", f"{B}/k", {})]),
        ("DELETE", "/bkt/k", "versionId=v1", [("s3:DeleteObjectVersion", f"{B}/k", {})]),
        ("PUT", "/bkt/k", "tagging", [("s3:PutObjectTagging", f"{B}/k", {})]),
        ("GET", "/bkt", "list-type=2&prefix=teams%2Fa%2F", [("s3:ListBucket", B, {"s3:prefix": "teams/a/"})]),
        ("GET", "/bkt/", "list-type=2", [("s3:ListBucket", B, {"s3:prefix": ""})]),
        (
            "GET",
            "/bkt",
            "delimiter=%2F&max-keys=5",
            [("s3:ListBucket", B, {"s3:prefix": "", "s3:delimiter": "/", "s3:max-keys": "5"})],
        ),
        ("GET", "/bkt", "versions&prefix=p", [("s3:ListBucketVersions", B, {"s3:prefix": "p"})]),
        ("GET", "/bkt", "uploads", [("s3:ListBucketMultipartUploads", B, {})]),
        ("HEAD", "/bkt", "", [("s3:ListBucket", B, {})]),
        ("PUT", "/bkt", "", [("s3:CreateBucket", B, {})]),
        ("GET", "/", "", [("s3:ListAllMyBuckets", "*", {})]),
        # what is not mapped is asked as one action only s3:* / * allows
        ("GET", "/bkt", "website", [(S3_UNMAPPED_ACTION, B, {})]),
        ("PUT", "/bkt", "policy", [(S3_UNMAPPED_ACTION, B, {})]),
        ("POST", "/bkt/k", "restore", [(S3_UNMAPPED_ACTION, f"{B}/k", {})]),
        ("GET", "/bkt/k", "tagging&versionId=v1", [(S3_UNMAPPED_ACTION, f"{B}/k", {})]),
        ("PUT", "/bkt/k", "uploads", [(S3_UNMAPPED_ACTION, f"{B}/k", {})]),
    ],
)
def test_requests_map_to_the_actions_s3_authorises_them_as(
    method: str, path: str, query: str, expected: list[tuple[str, str, dict[str, str]]]
) -> None:
    assert asked(method, path, query) == expected


def test_keys_are_url_decoded_and_virtual_host_buckets_come_from_the_host() -> None:
    assert asked("PUT", "/bkt/teams/a%20b/%C3%BC%2B%25.txt") == [("s3:PutObject", f"{B}/teams/a b/ü+%.txt", {})]
    assert asked("GET", "/teams/k", host="bkt.s3.amazonaws.com") == [("s3:GetObject", f"{B}/teams/k", {})]
    assert asked("GET", "/teams/k", host="bkt.s3.us-east-1.amazonaws.com") == [("s3:GetObject", f"{B}/teams/k", {})]
    assert asked("GET", "/teams/k", host="bkt.localhost:5000") == [("s3:GetObject", f"{B}/teams/k", {})]
    assert asked("GET", "/", "list-type=2", host="bkt.s3.amazonaws.com")[0][:2] == ("s3:ListBucket", B)
    assert asked("GET", "/bkt/k", host="s3.amazonaws.com") == [("s3:GetObject", f"{B}/k", {})]  # path-style
    assert asked("GET", "/k", host="ap-123456789012.s3-accesspoint.us-east-1.amazonaws.com")[0][0] == S3_UNMAPPED_ACTION


def test_a_copy_and_a_multi_object_delete_ask_for_every_object_they_touch() -> None:
    assert asked("PUT", "/bkt/dst", x_amz_copy_source="/src/a%20b.txt") == [
        ("s3:PutObject", f"{B}/dst", {}),
        ("s3:GetObject", "arn:aws:s3:::src/a b.txt", {}),
    ]
    assert asked("PUT", "/bkt/dst", "partNumber=1&uploadId=u", x_amz_copy_source="src/k?versionId=v9") == [
        ("s3:PutObject", f"{B}/dst", {}),
        ("s3:GetObjectVersion", "arn:aws:s3:::src/k", {}),
    ]
    body = (
        b'<?xml version="1.0" encoding="UTF-8"?><Delete xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        b"<Object><Key>a/1</Key></Object><Object><Key>b &amp; 2</Key></Object><Quiet>true</Quiet></Delete>"
    )
    assert asked("POST", "/bkt", "delete", body=body) == [
        ("s3:DeleteObject", f"{B}/a/1", {}),
        ("s3:DeleteObject", f"{B}/b & 2", {}),
    ]
    assert asked("POST", "/bkt", "delete", body=b"not xml") == [(S3_UNMAPPED_ACTION, B, {})]
