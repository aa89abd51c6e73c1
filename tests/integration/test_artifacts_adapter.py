"""The artifact store (adapters/artifacts.py) on the emulator's S3 and STS, with the CLI's transfer code
(ec2jobs/transfer.py) doing the real HTTP PUTs and GETs through presigned URLs; and transfer.py's retries and
refusals against a small loopback HTTP server."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest

from controlplane.adapters.artifacts import (
    DEFAULT_PART_SIZE,
    MAX_PARTS,
    MIB,
    S3_CONFIG,
    ArtifactStore,
    choose_part_size,
    session_name,
)
from controlplane.core import grants
from controlplane.core.errors import InvalidRequest
from controlplane.core.models import Job
from controlplane.core.spec import TaskSpec
from controlplane.service.job_io import ArtifactSettings, InstanceGrants
from ec2jobs import transfer
from ec2jobs.packing import pack_directory
from ec2jobs.transfer import TransferError
from local import guard

TEAM = "t-artifacts"


@pytest.fixture(scope="module")
def s3(aws: Callable[[str], Any]) -> Any:
    """The fake-key client's endpoint, with the SigV4 configuration the store requires."""
    return boto3.client(
        "s3",
        endpoint_url=aws("s3").meta.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id=guard.FAKE_ACCESS_KEY_ID,
        aws_secret_access_key=guard.FAKE_SECRET_ACCESS_KEY,
        config=S3_CONFIG,
    )


@pytest.fixture
def store(s3: Any) -> ArtifactStore:
    bucket = f"ec2jobs-artifacts-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    return ArtifactStore(s3, bucket)


def random_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with path.open("wb") as out:
        left = size
        while left:
            chunk = os.urandom(min(left, MIB))
            out.write(chunk)
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def expires_of(url: str) -> int:
    return int(urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["X-Amz-Expires"][0])


def no_sleep(_: float) -> None:
    return None


# -- uploads through presigned URLs -----------------------------------------------------------------------------------


def test_multipart_upload_through_presigned_urls_then_download_is_byte_identical(
    store: ArtifactStore, tmp_path: Path
) -> None:
    part_size = 5 * MIB  # S3's smallest part: three parts for 12 MiB + 123 bytes
    size = 12 * MIB + 123
    source = tmp_path / "archive.tar.gz"
    sha = random_file(source, size)

    s3_upload_id, parts = store.create_upload(TEAM, "up-multi", size, part_size)
    assert s3_upload_id is not None
    assert [part["part_number"] for part in parts] == [1, 2, 3]
    assert all(urllib.parse.urlsplit(part["url"]).hostname == "127.0.0.1" for part in parts)
    assert all(expires_of(part["url"]) <= 3600 for part in parts)

    etags = transfer.upload(parts, source, part_size)  # real HTTP PUTs, 3 parts on up to 4 threads
    assert [part["part_number"] for part in etags] == [1, 2, 3]
    assert all(part["etag"] for part in etags)

    stored = store.complete_upload(TEAM, "up-multi", s3_upload_id, etags, expected_size=size)
    assert stored.key == "teams/t-artifacts/uploads/up-multi/archive.tar.gz"
    assert stored.size == size
    again = store.complete_upload(TEAM, "up-multi", s3_upload_id, etags, expected_size=size)  # a retried completion
    assert again.size == size

    url = store.presign_get(stored.key, 300)
    assert expires_of(url) == 300
    dest = tmp_path / "out" / "copy.tar.gz"
    got = transfer.download(url, dest, size, sha256=sha)
    assert got == sha
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == sha
    assert [p.name for p in dest.parent.iterdir()] == ["copy.tar.gz"]  # no temporary file left behind


def test_a_client_presigning_with_sigv2_is_refused(aws: Callable[[str], Any]) -> None:
    default = aws("s3")  # botocore's default: SigV2 presigned URLs for S3
    store = ArtifactStore(default, "ec2jobs-artifacts-any")
    with pytest.raises(ValueError, match="SigV4"):
        store.presign_get("teams/t-1/uploads/u/archive.tar.gz", 60)
    with pytest.raises(ValueError, match="SigV4"):
        store.create_upload(TEAM, "up-1", 10, DEFAULT_PART_SIZE)


def test_small_archive_is_one_presigned_put_and_a_packed_workdir_round_trips(
    store: ArtifactStore, tmp_path: Path
) -> None:
    workdir = tmp_path / "workdir"
    (workdir / "pkg").mkdir(parents=True)
    (workdir / "train.py").write_text("print('train')\n")
    (workdir / "pkg" / "model.py").write_text("W = 1\n")
    (workdir / ".gitignore").write_text("*.ckpt\n")
    (workdir / "old.ckpt").write_bytes(b"\0" * 1000)
    with pack_directory(workdir) as archive:
        part_size = choose_part_size(archive.size)
        s3_upload_id, parts = store.create_upload(TEAM, "up-small", archive.size, part_size)
        assert s3_upload_id is None
        assert len(parts) == 1
        etags = transfer.upload(parts, archive.path, part_size)
        stored = store.complete_upload(TEAM, "up-small", None, etags, expected_size=archive.size)
        assert stored.size == archive.size
        head = store.head(grants.upload_key(TEAM, "up-small"))
        assert head is not None
        assert head.size == archive.size
        dest = tmp_path / "back.tar.gz"
        transfer.download(store.presign_get(stored.key, 60), dest, archive.size, sha256=archive.sha256)
        assert dest.read_bytes() == archive.path.read_bytes()


def test_completion_checks_parts_and_size(store: ArtifactStore, tmp_path: Path) -> None:
    size = 6 * MIB
    source = tmp_path / "f"
    random_file(source, size)
    s3_upload_id, parts = store.create_upload(TEAM, "up-check", size, 5 * MIB)
    assert s3_upload_id is not None
    etags = transfer.upload(parts, source, 5 * MIB)
    with pytest.raises(InvalidRequest, match="every part"):
        store.complete_upload(TEAM, "up-check", s3_upload_id, etags[1:])
    wrong = [dict(etags[0]), {"part_number": 2, "etag": '"00000000000000000000000000000000"'}]
    with pytest.raises(InvalidRequest, match="InvalidPart"):
        store.complete_upload(TEAM, "up-check", s3_upload_id, wrong)
    with pytest.raises(InvalidRequest, match=r"holds 6291456 bytes, expected 1$"):
        store.complete_upload(TEAM, "up-check", s3_upload_id, etags, expected_size=1)


def test_single_put_never_received_is_refused(store: ArtifactStore) -> None:
    store.create_upload(TEAM, "up-never", 10, DEFAULT_PART_SIZE)
    with pytest.raises(InvalidRequest, match="was not received"):
        store.complete_upload(TEAM, "up-never", None, [])
    assert store.head(grants.upload_key(TEAM, "up-never")) is None


def test_abort_removes_the_multipart_upload(store: ArtifactStore, s3: Any) -> None:
    s3_upload_id, _ = store.create_upload(TEAM, "up-abort", 11 * MIB, 5 * MIB)
    assert s3_upload_id is not None
    store.abort_upload(TEAM, "up-abort", s3_upload_id)
    store.abort_upload(TEAM, "up-abort", s3_upload_id)  # already gone: fine
    uploads = s3.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])
    assert s3_upload_id not in [upload["UploadId"] for upload in uploads]


def test_fresh_part_urls_for_an_upload_in_progress(store: ArtifactStore, tmp_path: Path) -> None:
    size = 11 * MIB
    source = tmp_path / "f"
    sha = random_file(source, size)
    s3_upload_id, _ = store.create_upload(TEAM, "up-renew", size, 5 * MIB, expires_seconds=60)
    assert s3_upload_id is not None
    parts = store.presign_parts(TEAM, "up-renew", s3_upload_id, [1, 2, 3])
    etags = transfer.upload(parts, source, 5 * MIB)
    stored = store.complete_upload(TEAM, "up-renew", s3_upload_id, etags, expected_size=size)
    dest = tmp_path / "d"
    assert transfer.download(store.presign_get(stored.key, 60), dest, size) == sha


def test_part_size_choice_and_limits(store: ArtifactStore) -> None:
    assert choose_part_size(0) == DEFAULT_PART_SIZE
    assert choose_part_size(DEFAULT_PART_SIZE * MAX_PARTS) == DEFAULT_PART_SIZE
    bigger = choose_part_size(DEFAULT_PART_SIZE * MAX_PARTS + 1)
    assert bigger % MIB == 0
    assert bigger > DEFAULT_PART_SIZE
    for size in (1, 100 * MIB, 50 * 1024 * MIB, 4 * 1024**4):
        part = choose_part_size(size)
        assert 5 * MIB <= part <= 5 * 1024 * MIB
        assert -(-size // part) <= MAX_PARTS
    with pytest.raises(InvalidRequest, match="at most"):
        choose_part_size(MAX_PARTS * 5 * 1024 * MIB + 1)
    with pytest.raises(InvalidRequest, match="between 5 MiB and 5 GiB"):
        store.create_upload(TEAM, "up-x", 10 * MIB, 4 * MIB)
    with pytest.raises(InvalidRequest, match="at most 1000"):
        store.create_upload(TEAM, "up-x", 1001 * 5 * MIB, 5 * MIB)
    with pytest.raises(InvalidRequest, match=r"1\.\.3600"):
        store.create_upload(TEAM, "up-x", 10, DEFAULT_PART_SIZE, expires_seconds=7200)
    with pytest.raises(InvalidRequest, match=r"1\.\.3600"):
        store.presign_get("teams/t/x", 3601)
    with pytest.raises(InvalidRequest, match="not an artifact key"):
        store.presign_get("other/x", 60)
    with pytest.raises(grants.GrantRefused):
        store.create_upload(TEAM, "../up", 10, DEFAULT_PART_SIZE)


# -- listings ---------------------------------------------------------------------------------------------------------


def test_list_prefix_reads_every_page_of_one_job_area(store: ArtifactStore, s3: Any) -> None:
    outputs = grants.job_area_prefix(TEAM, "job-1", "outputs")
    count = 1003  # more than one ListObjectsV2 page (1,000 keys)

    def put(i: int) -> None:
        s3.put_object(Bucket=store.bucket, Key=f"{outputs}metrics/{i:04d}.json", Body=b"x" * (i % 7))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, range(count)))
    s3.put_object(Bucket=store.bucket, Key=f"{outputs}model/final.bin", Body=b"w" * 42)
    s3.put_object(Bucket=store.bucket, Key=f"{outputs}empty-folder/", Body=b"")
    s3.put_object(Bucket=store.bucket, Key=grants.job_area_prefix(TEAM, "job-1", "checkpoints") + "c.pt", Body=b"c")
    s3.put_object(Bucket=store.bucket, Key=grants.job_area_prefix(TEAM, "job-10", "outputs") + "other", Body=b"o")

    listed = store.list_prefix(TEAM, "job-1", "outputs")
    assert len(listed) == count + 1
    paths = [path for path, _, _ in listed]
    assert paths == sorted(paths)
    assert paths[0] == "metrics/0000.json"
    assert ("model/final.bin", 42) in [(path, size) for path, size, _ in listed]
    assert all(modified.tzinfo is not None for _, _, modified in listed)
    assert [(p, s) for p, s, _ in store.list_prefix(TEAM, "job-1", "checkpoints")] == [("c.pt", 1)]
    assert len(store.list_prefix(TEAM, "job-1", "outputs", limit=5)) == 5
    assert store.list_prefix(TEAM, "job-2", "outputs") == []
    with pytest.raises(grants.GrantRefused):
        store.list_prefix(TEAM, "job-1", "logs")


def test_has_checkpoints_sees_one_object_under_the_jobs_own_checkpoints_only(
    store: ArtifactStore, s3: Any, aws: Callable[[str], Any]
) -> None:
    """InstanceGrants.has_checkpoints (ArtifactStore.any_under: one ListObjectsV2, MaxKeys=1): False until an object
    exists under the job's own checkpoints/ (not its outputs, not another job's whose id extends it), then True."""
    issuer = InstanceGrants(store, aws("sts"), ArtifactSettings(bucket=store.bucket, role_arn="", region="us-east-1"))
    job = Job(
        job_id="job-1", team_id=TEAM, provider_id="p", region="us-east-1", spec=TaskSpec(run="x"), attempt=2,
        created_at=dt.datetime.now(dt.UTC), updated_at=dt.datetime.now(dt.UTC),
    )  # fmt: skip
    calls: list[dict[str, Any]] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        calls.append(dict(params))

    s3.meta.events.register("provide-client-params.s3.ListObjectsV2", record)
    try:
        assert not issuer.has_checkpoints(job)
        s3.put_object(Bucket=store.bucket, Key=grants.job_area_prefix(TEAM, "job-1", "outputs") + "m.bin", Body=b"m")
        s3.put_object(Bucket=store.bucket, Key=grants.job_area_prefix(TEAM, "job-10", "checkpoints") + "c", Body=b"c")
        assert not issuer.has_checkpoints(job)
        for step in range(3):
            key = f"{grants.job_area_prefix(TEAM, 'job-1', 'checkpoints')}step-{step}.pt"
            s3.put_object(Bucket=store.bucket, Key=key, Body=b"c")
        assert issuer.has_checkpoints(job)
    finally:
        s3.meta.events.unregister("provide-client-params.s3.ListObjectsV2", record)
    assert [(c["Prefix"], c["MaxKeys"]) for c in calls] == [(f"teams/{TEAM}/jobs/job-1/checkpoints/", 1)] * 3
    with pytest.raises(InvalidRequest):
        store.any_under(f"teams/{TEAM}/jobs/job-1/checkpoints")  # a partial name, not a folder
    with pytest.raises(InvalidRequest):
        store.any_under("elsewhere/")


# -- instance credentials ---------------------------------------------------------------------------------------------


def test_scoped_credentials_assume_the_role_with_the_job_session_policy(
    store: ArtifactStore, aws: Callable[[str], Any]
) -> None:
    role_arn = aws("iam").create_role(RoleName=f"grant-{uuid.uuid4().hex[:8]}", AssumeRolePolicyDocument="{}")["Role"][
        "Arn"
    ]
    sts = aws("sts")
    sent: list[dict[str, Any]] = []
    sts.meta.events.register("provide-client-params.sts.AssumeRole", lambda params, **_: sent.append(dict(params)))
    read = grants.upload_prefix(TEAM, "up-1")
    credentials = store.scoped_credentials(sts, role_arn, TEAM, "job-abc", [read])
    assert set(credentials) == {"access_key_id", "secret_access_key", "session_token", "expiration"}
    assert credentials["access_key_id"].startswith("ASIA")
    assert credentials["expiration"].endswith("+00:00")
    (request,) = sent
    assert request["RoleArn"] == role_arn
    assert request["RoleSessionName"] == "job-abc"
    assert request["DurationSeconds"] == 3600
    assert json.loads(request["Policy"]) == grants.session_policy(store.bucket, TEAM, "job-abc", read_prefixes=[read])
    assert len(request["Policy"]) <= grants.SESSION_POLICY_MAX_CHARS
    with pytest.raises(InvalidRequest, match=r"900\.\.3600"):
        store.scoped_credentials(sts, role_arn, TEAM, "job-abc", duration=7200)
    with pytest.raises(grants.GrantRefused):
        store.scoped_credentials(sts, role_arn, TEAM, "job-abc", ["teams/other-team/uploads/u/"])
    assert len(sent) == 1  # refused grants never reach STS


def test_session_name_follows_aws_rules() -> None:
    assert session_name("job-" + "a" * 80) == ("job-" + "a" * 80)[:64]
    assert session_name("j") == "j-"
    assert session_name("job/with space") == "job-with-space"


# -- transfer.py: retries, refusals (a loopback server that misbehaves on purpose) -----------------------------------


class FlakyServer:
    """PUT stores the body and answers an ETag; the first `failures[path]` requests to a path answer `status`."""

    def __init__(self) -> None:
        self.bodies: dict[str, bytes] = {}
        self.failures: dict[str, tuple[int, int]] = {}
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.delay = 0.0
        self.in_flight = 0
        self.most_in_flight = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                return None

            def _maybe_fail(self) -> bool:
                path = urllib.parse.urlsplit(self.path).path
                with server.lock:
                    server.requests.append((self.command, path))
                    left, status = server.failures.get(path, (0, 0))
                    if left:
                        server.failures[path] = (left - 1, status)
                if not left:
                    return False
                body = f"<Error><Code>Oops{status}</Code><Message>try later</Message></Error>".encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return True

            def do_PUT(self) -> None:
                length = int(self.headers["Content-Length"])
                data = self.rfile.read(length)
                with server.lock:
                    server.in_flight += 1
                    server.most_in_flight = max(server.most_in_flight, server.in_flight)
                time.sleep(server.delay)
                with server.lock:
                    server.in_flight -= 1
                if self._maybe_fail():
                    return
                path = urllib.parse.urlsplit(self.path).path
                with server.lock:
                    server.bodies[path] = data
                self.send_response(200)
                self.send_header("ETag", f'"{hashlib.md5(data).hexdigest()}"')  # noqa: S324 - S3's ETag
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:
                if self._maybe_fail():
                    return
                data = server.bodies.get(urllib.parse.urlsplit(self.path).path, b"")
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()


@pytest.fixture
def flaky() -> Iterator[FlakyServer]:
    server = FlakyServer()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


def test_upload_retries_transient_failures_and_reassembles(flaky: FlakyServer, tmp_path: Path) -> None:
    source = tmp_path / "f"
    data = os.urandom(10_000)
    source.write_bytes(data)
    part_size = 3_000
    parts = [{"part_number": n, "url": f"{flaky.url}/p{n}?X-Amz-Signature=secret"} for n in range(1, 5)]
    flaky.failures = {"/p2": (2, 503), "/p4": (1, 500)}
    sleeps: list[float] = []
    result = transfer.upload(parts, source, part_size, sleep=sleeps.append)
    assert [part["part_number"] for part in result] == [1, 2, 3, 4]
    assert b"".join(flaky.bodies[f"/p{n}"] for n in range(1, 5)) == data
    assert len(sleeps) == 3
    assert sorted(sleeps)[-1] >= 2.0  # the part that failed twice waited 1 s, then 2 s (plus jitter)
    assert sum(1 for method, path in flaky.requests if path == "/p2") == 3


def test_upload_runs_at_most_four_parts_at_once(flaky: FlakyServer, tmp_path: Path) -> None:
    source = tmp_path / "f"
    source.write_bytes(os.urandom(8_000))
    flaky.delay = 0.2
    parts = [{"part_number": n, "url": f"{flaky.url}/c{n}"} for n in range(1, 9)]
    transfer.upload(parts, source, 1_000)
    assert flaky.most_in_flight == 4
    assert len(flaky.bodies) == 8


def test_upload_gives_up_after_three_tries_without_showing_the_url(flaky: FlakyServer, tmp_path: Path) -> None:
    source = tmp_path / "f"
    source.write_bytes(b"x" * 10)
    flaky.failures = {"/p1": (5, 503)}
    with pytest.raises(TransferError) as raised:
        transfer.upload(
            [{"part_number": 1, "url": f"{flaky.url}/p1?X-Amz-Signature=secret"}], source, 10, sleep=no_sleep
        )
    assert "after 3 attempts" in str(raised.value)
    assert "Oops503" in str(raised.value)
    assert "secret" not in str(raised.value)
    assert flaky.requests.count(("PUT", "/p1")) == 3


def test_upload_does_not_retry_a_refused_url(flaky: FlakyServer, tmp_path: Path) -> None:
    source = tmp_path / "f"
    source.write_bytes(b"x" * 10)
    flaky.failures = {"/p1": (5, 403)}
    with pytest.raises(TransferError, match=r"part 1: HTTP 403 Oops403: try later \(after 1 attempt\)"):
        transfer.upload([{"part_number": 1, "url": f"{flaky.url}/p1"}], source, 10, sleep=no_sleep)
    assert flaky.requests.count(("PUT", "/p1")) == 1


def test_connection_errors_are_retried_and_reported_without_the_url(tmp_path: Path) -> None:
    source = tmp_path / "f"
    source.write_bytes(b"x")
    url = "http://127.0.0.1:9/p1?X-Amz-Signature=secret"  # discard port: nothing listens
    with pytest.raises(TransferError) as raised:
        transfer.upload([{"part_number": 1, "url": url}], source, 10, sleep=no_sleep)
    assert "after 3 attempts" in str(raised.value)
    assert "secret" not in str(raised.value)


def test_an_empty_file_is_one_empty_part(flaky: FlakyServer, tmp_path: Path) -> None:
    source = tmp_path / "empty"
    source.write_bytes(b"")
    (part,) = transfer.upload([{"part_number": 1, "url": f"{flaky.url}/e"}], source, 5 * MIB)
    assert part["part_number"] == 1
    assert flaky.bodies["/e"] == b""


def test_parts_must_cover_the_file(tmp_path: Path) -> None:
    source = tmp_path / "f"
    source.write_bytes(b"x" * 25)
    parts = [{"part_number": n, "url": f"https://example.invalid/{n}"} for n in (1, 2)]
    with pytest.raises(TransferError, match=r"needs parts 1\.\.3"):
        transfer.upload(parts, source, 10)


@pytest.mark.parametrize(
    "url",
    ["http://example.com/x", "ftp://127.0.0.1/x", "file:///etc/passwd", "http://10.0.0.1/x", "https:///nohost"],
)
def test_plain_http_is_refused_except_to_loopback(url: str, tmp_path: Path) -> None:
    source = tmp_path / "f"
    source.write_bytes(b"x")
    with pytest.raises(TransferError, match="refusing"):
        transfer.upload([{"part_number": 1, "url": url}], source, 10)
    with pytest.raises(TransferError, match="refusing"):
        transfer.download(url, tmp_path / "d")
    assert transfer.check_url("https://bucket.s3.amazonaws.com/k?x=1")
    assert transfer.check_url("http://[::1]:8080/k")
    assert transfer.check_url("http://localhost:8080/k")


def test_download_retries_checks_and_never_leaves_a_partial_file(flaky: FlakyServer, tmp_path: Path) -> None:
    flaky.bodies["/obj"] = b"hello world"
    sha = hashlib.sha256(b"hello world").hexdigest()
    flaky.failures = {"/obj": (2, 502)}
    dest = tmp_path / "dl" / "obj"
    assert transfer.download(f"{flaky.url}/obj", dest, 11, sha256=sha, sleep=no_sleep) == sha
    assert dest.read_bytes() == b"hello world"
    dest.write_bytes(b"previous")
    with pytest.raises(TransferError, match="sha256 mismatch"):
        transfer.download(f"{flaky.url}/obj", dest, sha256="0" * 64)
    with pytest.raises(TransferError, match="expected 12 bytes, received 11"):
        transfer.download(f"{flaky.url}/obj", dest, 12)
    flaky.failures = {"/obj": (1, 404)}
    with pytest.raises(TransferError, match="HTTP 404"):
        transfer.download(f"{flaky.url}/obj", dest, sleep=no_sleep)
    assert dest.read_bytes() == b"previous"  # a failed download leaves the old file as it was
    assert sorted(p.name for p in dest.parent.iterdir()) == ["obj"]


def test_progress_bar_counts_every_byte_once_despite_retries(flaky: FlakyServer, tmp_path: Path) -> None:
    import io

    from rich.console import Console

    source = tmp_path / "f"
    source.write_bytes(os.urandom(9_000))
    parts = [{"part_number": n, "url": f"{flaky.url}/q{n}"} for n in range(1, 4)]
    flaky.failures = {"/q3": (1, 503)}
    bar = transfer.new_progress(Console(file=io.StringIO(), force_terminal=False))
    with bar:
        transfer.upload(parts, source, 3_000, bar, sleep=no_sleep)
    (task,) = bar.tasks
    assert task.total == 9_000
    assert task.completed == 9_000
