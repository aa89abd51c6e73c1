"""`ec2jobs submit` with a local workdir / file_mounts / --secret / --resume-from, and `ec2jobs download`, against
the fake API of test_cli.py extended with the upload and outputs routes, and a fake bucket: an HTTP server on
127.0.0.1 that stores what presigned PUTs send and serves presigned GETs."""

# ruff: noqa: F811 - the fixture run comes from test_cli.py and is a parameter here

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import tarfile
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from ec2jobs import transfer
from ec2jobs.cli.commands.download import safe_target
from tests.unit.test_cli import TOKEN, FakeApi, _handler_for, _task, run  # noqa: F401 - pytest fixture

SECRET = "hf_unit_secret_0123456789abcdef"


@dataclass
class FakeBucket:
    """Presigned URLs are http://127.0.0.1:<port>/<key>?sig=…; `refuse` answers that many PUTs/GETs with 403."""

    url: str = ""
    objects: dict[str, bytes] = field(default_factory=dict)
    refuse: int = 0
    puts: int = 0

    def sign(self, key: str) -> str:
        return f"{self.url}/{key}?X-Amz-Signature=s3cr3t-signature"


def _bucket_handler(bucket: FakeBucket) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _deny(self) -> bool:
            if bucket.refuse:
                bucket.refuse -= 1
                body = b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>"
                self.send_response(403)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return True
            return False

        def do_PUT(self) -> None:
            data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self._deny():
                return
            bucket.puts += 1
            bucket.objects[urllib.parse.urlsplit(self.path).path.lstrip("/")] = data
            self.send_response(200)
            self.send_header("ETag", f'"{hashlib.md5(data).hexdigest()}"')  # noqa: S324 - S3's ETag
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            if self._deny():
                return
            data = bucket.objects.get(urllib.parse.urlsplit(self.path).path.lstrip("/"))
            self.send_response(200 if data is not None else 404)
            self.send_header("Content-Length", str(len(data or b"")))
            self.end_headers()
            self.wfile.write(data or b"")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@dataclass
class UploadApi(FakeApi):
    bucket: FakeBucket = field(default_factory=FakeBucket)
    uploads: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)  # job → kind → files
    part_size: int = 1024

    def route(
        self, method: str, parts: list[str], query: dict[str, str], headers: dict[str, str], body: Any
    ) -> tuple[int, Any]:
        match method, parts:
            case "POST", ["uploads"]:
                upload_id = f"up-{len(self.uploads) + 1:020x}"
                count = max(1, -(-body["size"] // self.part_size))
                self.uploads[upload_id] = {**body, "status": "pending", "parts": count}
                return 201, self._urls(upload_id)
            case "POST", ["uploads", upload_id, "parts"] if upload_id in self.uploads:
                return 200, self._urls(upload_id)
            case "POST", ["uploads", upload_id, "complete"] if upload_id in self.uploads:
                upload = self.uploads[upload_id]
                upload["completed_parts"] = body["parts"]
                upload["status"] = "complete"
                done = {"upload_id": upload_id, "kind": upload["kind"], "size": upload["size"], "status": "complete"}
                return 200, done
            case "GET", ["jobs", job_id, "outputs"] if job_id in self.outputs:
                files = self.outputs[job_id].get(query.get("kind", "outputs"), [])
                start = int(query.get("cursor") or 0)
                page = [f | {"url": self.bucket.sign(f["key"])} for f in files[start : start + 2]]  # pages of 2
                more = start + 2 < len(files)
                kind = query.get("kind", "outputs")
                cursor = str(start + 2) if more else None
                return 200, {"job_id": job_id, "kind": kind, "files": page, "next_cursor": cursor}
            case "GET", ["jobs", job_id, "outputs"]:
                return 404, {"code": "NOT_FOUND", "message": f"job '{job_id}' not found"}
        return super().route(method, parts, query, headers, body)

    def _urls(self, upload_id: str) -> dict[str, Any]:
        upload = self.uploads[upload_id]
        key = f"teams/t/uploads/{upload_id}/archive.tar.gz"
        urls = [{"part_number": n, "url": self.bucket.sign(f"{key}.{n}")} for n in range(1, upload["parts"] + 1)]
        head = {"upload_id": upload_id, "kind": upload["kind"], "size": upload["size"], "part_size": self.part_size}
        return head | {"parts": urls, "expires_at": "2026-11-24T04:00:00+00:00"}

    def archive(self, upload_id: str) -> bytes:
        """The uploaded bytes, parts put back together."""
        key = f"teams/t/uploads/{upload_id}/archive.tar.gz"
        count = self.uploads[upload_id]["parts"]
        return b"".join(self.bucket.objects[f"{key}.{n}"] for n in range(1, count + 1))

    def posted_jobs(self) -> list[Any]:
        return [body for method, path, _, body in self.requests if (method, path) == ("POST", "/jobs")]


def _serve(handler: type[BaseHTTPRequestHandler]) -> tuple[ThreadingHTTPServer, str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[UploadApi]:
    fake = UploadApi()
    servers = []
    bucket_server, fake.bucket.url = _serve(_bucket_handler(fake.bucket))
    api_server, fake.url = _serve(_handler_for(fake))
    servers = [bucket_server, api_server]
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("EC2JOBS_API_URL", fake.url)
    monkeypatch.setenv("EC2JOBS_TOKEN", TOKEN)
    try:
        yield fake
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def _members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def _temp_archives() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("ec2jobs-*.tar.gz"))


# -- workdir and file_mounts ----------------------------------------------------------------------------------


def test_a_local_workdir_is_packed_uploaded_and_sent_as_an_upload(api: UploadApi, run: Any) -> None:
    api.add_provider()
    work = Path.cwd()
    (work / "pkg").mkdir()
    (work / "train.py").write_text("print('train')\n" * 200)  # several 1 KiB parts
    (work / "pkg" / "model.py").write_text("W = 1\n")
    (work / ".gitignore").write_text("*.ckpt\n")
    (work / "big.ckpt").write_bytes(b"\0" * 5000)
    (work / ".ec2jobsignore").write_text("scratch/\n")
    (work / "scratch").mkdir()
    (work / "scratch" / "tmp.txt").write_text("x")
    task = _task(work, "name: train\nworkdir: .\nrun: python train.py\n")
    before = _temp_archives()
    result = run("submit", task)
    assert result.code == 0, result.err
    ((upload_id, upload),) = api.uploads.items()
    assert (upload["kind"], upload["status"]) == ("workdir", "complete")
    data = api.archive(upload_id)
    assert (len(data), hashlib.sha256(data).hexdigest()) == (upload["size"], upload["sha256"])
    assert [p["part_number"] for p in upload["completed_parts"]] == list(range(1, upload["parts"] + 1))
    assert all(p["etag"].startswith('"') for p in upload["completed_parts"])
    assert sorted(_members(data)) == [".ec2jobsignore", ".gitignore", "pkg/model.py", "task.yaml", "train.py"]
    (body,) = api.posted_jobs()
    assert body["workdir"] == {"upload": upload_id}
    assert f"uploaded workdir {work}: 5 files" in result.out
    assert "s3cr3t-signature" not in result.out + result.err  # presigned URLs are never shown
    assert _temp_archives() == before  # the archive was deleted


def test_a_git_workdir_and_an_upload_pass_through(api: UploadApi, run: Any) -> None:
    api.add_provider()
    work = Path.cwd()
    git = _task(work, "workdir: {url: 'https://github.com/org/repo', ref: main}\nrun: echo\n", "git.yaml")
    assert run("submit", git).code == 0
    done = _task(work, "workdir: {upload: up-00000000000000000001}\nrun: echo\n", "done.yaml")
    assert run("submit", done).code == 0
    bodies = api.posted_jobs()
    assert bodies[0]["workdir"] == {"url": "https://github.com/org/repo", "ref": "main"}
    assert bodies[1]["workdir"] == {"upload": "up-00000000000000000001"}
    assert api.uploads == {}


def test_a_refused_part_gets_fresh_urls_once(api: UploadApi, run: Any) -> None:
    api.add_provider()
    (Path.cwd() / "train.py").write_text("print(1)\n")
    api.bucket.refuse = 1  # the first PUT answers 403 (a URL that stopped working early)
    result = run("submit", _task(Path.cwd(), "workdir: .\nrun: python train.py\n"))
    assert result.code == 0, result.err
    (upload_id,) = api.uploads
    assert ("POST", f"/uploads/{upload_id}/parts") in [(m, p) for m, p, _, _ in api.requests]
    assert api.uploads[upload_id]["status"] == "complete"


def test_a_workdir_that_is_not_a_directory_is_refused_before_any_request(api: UploadApi, run: Any) -> None:
    result = run("submit", _task(Path.cwd(), "workdir: ./nope\nrun: echo\n"))
    assert result.code == 2
    assert "workdir './nope' is not a directory" in result.err
    assert api.requests == []


def test_file_mounts_become_one_upload(api: UploadApi, run: Any) -> None:
    api.add_provider()
    work = Path.cwd()
    (work / "data").mkdir()
    (work / "data" / "train.jsonl").write_text('{"a": 1}\n')
    (work / "labels.csv").write_text("x,y\n")
    task = _task(work, "file_mounts:\n  /data/train: ./data\n  /data/labels.csv: labels.csv\nrun: echo\n")
    result = run("submit", task)
    assert result.code == 0, result.err
    ((upload_id, upload),) = api.uploads.items()
    assert upload["kind"] == "file_mounts"
    members = _members(api.archive(upload_id))
    manifest = json.loads(members["manifest.json"])["mounts"]
    assert {entry["remote_path"] for entry in manifest.values()} == {"/data/train", "/data/labels.csv"}
    assert b"x,y\n" in members.values()
    assert api.posted_jobs()[0]["file_mounts"] == {"upload": upload_id}


@pytest.mark.parametrize(
    "mounts",
    [
        "{/data: s3://my-bucket/train}",
        "{/data: gs://other/train}",
        "{/data: {source: s3://my-bucket/train, mode: MOUNT}}",
        "{/data: 'https://example.com/x.tar'}",
    ],
)
def test_remote_file_mounts_are_refused_before_anything_is_sent(api: UploadApi, run: Any, mounts: str) -> None:
    api.add_provider()
    (Path.cwd() / "train.py").write_text("print(1)\n")
    result = run("submit", _task(Path.cwd(), f"workdir: .\nfile_mounts: {mounts}\nrun: echo\n"))
    assert result.code == 2
    assert "S3 URIs are not supported: the control plane has no credentials for buckets in other accounts" in result.err
    assert api.requests == []  # nothing uploaded, nothing submitted


# -- secrets and --resume-from ---------------------------------------------------------------------------------


SECRETS_TASK = "secrets: {HF_TOKEN: null, WANDB_KEY: null}\nrun: python train.py\n"


def test_declared_secrets_must_be_filled_before_anything_is_sent(
    api: UploadApi, run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", SECRET)
    task = _task(Path.cwd(), SECRETS_TASK)
    result = run("submit", task, "--secret", "HF_TOKEN")
    assert result.code == 2
    assert "no value for secret WANDB_KEY: pass --secret WANDB_KEY" in result.err
    assert SECRET not in result.err
    monkeypatch.delenv("WANDB_KEY", raising=False)
    unset = run("submit", task, "--secret", "WANDB_KEY")
    assert unset.code == 2
    assert "--secret WANDB_KEY: WANDB_KEY is not set in your environment" in unset.err
    assert api.requests == []


def test_secret_values_are_sent_but_never_shown(api: UploadApi, run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    api.add_provider()
    monkeypatch.setenv("HF_TOKEN", SECRET)
    task = _task(Path.cwd(), SECRETS_TASK)
    given = ["--secret", "HF_TOKEN", "--secret", "WANDB_KEY=wandb-value-42", "--secret", "EXTRA=e=1"]
    result = run("submit", task, *given)
    assert result.code == 0, result.err
    (body,) = api.posted_jobs()
    assert body["secrets"] == {"HF_TOKEN": SECRET, "WANDB_KEY": "wandb-value-42", "EXTRA": "e=1"}
    as_json = run("submit", task, "--secret", "HF_TOKEN", "--secret", "WANDB_KEY=wandb-value-42", "--json")
    assert as_json.code == 0
    for shown in (result, as_json):
        assert SECRET not in shown.out + shown.err
        assert "wandb-value-42" not in shown.out + shown.err


def test_an_error_that_echoes_a_secret_is_redacted(api: UploadApi, run: Any) -> None:
    api.add_provider()
    original = api.submit

    def echo(body: dict[str, Any], key: str | None) -> tuple[int, Any]:
        if body.get("secrets"):
            return 400, {"code": "INVALID_SPEC", "message": f"bad secret {body['secrets']['HF_TOKEN']}"}
        return original(body, key)

    api.submit = echo  # type: ignore[method-assign]
    result = run("submit", _task(Path.cwd(), SECRETS_TASK), "--secret", f"HF_TOKEN={SECRET}", "--secret", "WANDB_KEY=w")
    assert result.code == 1
    assert "bad secret <redacted>" in result.err
    assert SECRET not in result.err


def test_resume_from_is_sent(api: UploadApi, run: Any) -> None:
    api.add_provider()
    assert run("submit", _task(Path.cwd(), "run: echo\n"), "--resume-from", "job-0001").code == 0
    assert api.posted_jobs()[0]["resume_from"] == "job-0001"


# -- download --------------------------------------------------------------------------------------------------


def _stored(api: UploadApi, job_id: str, kind: str, files: dict[str, bytes]) -> None:
    listed = api.outputs.setdefault(job_id, {}).setdefault(kind, [])
    for path, data in files.items():
        key = f"teams/t/jobs/{job_id}/{kind}/{path}"
        api.bucket.objects[key] = data
        listed.append({"path": path, "size": len(data), "last_modified": "2026-11-24T03:00:00+00:00", "key": key})


def test_download_writes_every_listed_file(api: UploadApi, run: Any) -> None:
    files = {"model.bin": b"\x00\x01" * 3000, "logs/a.txt": b"a\n", "logs/b.txt": b"b\n"}
    _stored(api, "job-0001", "outputs", files)
    _stored(api, "job-0001", "checkpoints", {"step-1.pt": b"ckpt"})
    result = run("download", "job-0001")
    assert result.code == 0, result.err
    for path, data in files.items():
        assert (Path("job-0001") / "outputs" / path).read_bytes() == data
        assert f"wrote {Path('job-0001') / 'outputs' / path} ({len(data)} bytes)" in result.out
    assert "3 file(s)" in result.out
    assert "s3cr3t-signature" not in result.out + result.err
    checkpoints = run("download", "job-0001", "--checkpoints", "--to", "ckpts")
    assert checkpoints.code == 0, checkpoints.err
    assert Path("ckpts/step-1.pt").read_bytes() == b"ckpt"
    assert not Path("job-0001/checkpoints").exists()


def test_download_refuses_paths_that_leave_the_directory(api: UploadApi, run: Any) -> None:
    _stored(api, "job-0002", "outputs", {"ok.txt": b"ok", "../escape.txt": b"x", "/etc/evil": b"x", "a/../../b": b"x"})
    result = run("download", "job-0002", "--to", "out")
    assert result.code == 1
    assert Path("out/ok.txt").read_bytes() == b"ok"
    assert "refused 3 path(s) that would land outside out" in result.err
    assert not Path("escape.txt").exists()
    assert not (Path.cwd().parent / "escape.txt").exists()


def test_download_asks_for_fresh_urls_after_a_403(api: UploadApi, run: Any) -> None:
    _stored(api, "job-0003", "outputs", {"model.bin": b"weights"})
    api.bucket.refuse = 1
    result = run("download", "job-0003")
    assert result.code == 0, result.err
    assert Path("job-0003/outputs/model.bin").read_bytes() == b"weights"
    listings = [p for m, p, _, _ in api.requests if (m, p) == ("GET", "/jobs/job-0003/outputs")]
    assert len(listings) == 2


def test_download_of_another_teams_job_is_not_found(api: UploadApi, run: Any) -> None:
    result = run("download", "job-9999")
    assert result.code == 1
    assert "job 'job-9999' not found" in result.err
    assert not Path("job-9999").exists()


def test_download_with_nothing_stored(api: UploadApi, run: Any) -> None:
    api.outputs["job-0004"] = {}
    result = run("download", "job-0004")
    assert result.code == 0
    assert "job job-0004 has no outputs (yet)" in result.out


@pytest.mark.parametrize(
    ("path", "ok"),
    [
        ("a.txt", True),
        ("a/b/c.txt", True),
        ("../a", False),
        ("/a", False),
        ("a//b", False),
        ("a\\b", False),
        ("", False),
    ],
)
def test_safe_target(tmp_path: Path, path: str, ok: bool) -> None:
    assert (safe_target(tmp_path, path) is not None) == ok


# -- transfer.py: parallel ranges, parts in flight, kept-alive connections -------------------------------------


@dataclass
class RangeBucket:
    """One object served as S3 serves it (HTTP/1.1, kept alive): a Range answers 206 with Content-Range and the
    object's ETag; `fail[range]` holds statuses to answer first; `swap_after` replaces the object after that many
    answers; `ignore_ranges` answers 200 with everything; PUTs are stored (part 1 waits for `release`)."""

    data: bytes = b""
    url: str = ""
    fail: dict[str, list[int]] = field(default_factory=dict)
    swap_after: int | None = None
    swapped: bytes = b""
    ignore_ranges: bool = False
    requests: list[tuple[str, str]] = field(default_factory=list)  # (path, Range)
    connections: int = 0
    bodies: dict[str, bytes] = field(default_factory=dict)
    finished: list[str] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def etag(self) -> str:
        return f'"{hashlib.md5(self.data).hexdigest()}"'  # noqa: S324 - S3's ETag


def _range_handler(bucket: RangeBucket) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            with bucket.lock:
                bucket.connections += 1

        def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            wanted = self.headers.get("Range", "")
            with bucket.lock:
                bucket.requests.append((urllib.parse.urlsplit(self.path).path, wanted))
                failing = bucket.fail.get(wanted)
                status = failing.pop(0) if failing else 0
                if bucket.swap_after is not None and len(bucket.requests) > bucket.swap_after:
                    bucket.data, bucket.swap_after = bucket.swapped, None
                data, etag = bucket.data, bucket.etag()
            if status:
                self._answer(status, f"<Error><Code>E{status}</Code><Message>m</Message></Error>".encode())
            elif not wanted or bucket.ignore_ranges:
                self._answer(200, data, {"ETag": etag})
            else:
                first, last = (int(n) for n in wanted.removeprefix("bytes=").split("-"))
                last = min(last, len(data) - 1)
                content_range = {"Content-Range": f"bytes {first}-{last}/{len(data)}", "ETag": etag}
                self._answer(206, data[first : last + 1], content_range)

        def do_PUT(self) -> None:
            path = urllib.parse.urlsplit(self.path).path
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if path.endswith("/1"):
                bucket.release.wait(30)
            with bucket.lock:
                bucket.bodies[path] = body
                bucket.finished.append(path)
            self._answer(200, b"", {"ETag": f'"etag-{path.rsplit("/", 1)[1]}"'})

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def range_bucket() -> Iterator[RangeBucket]:
    bucket = RangeBucket()
    server, bucket.url = _serve(_range_handler(bucket))
    try:
        yield bucket
    finally:
        server.shutdown()
        server.server_close()


def _ranges(size: int, part: int) -> list[str]:
    return [f"bytes={start}-{min(start + part, size) - 1}" for start in range(0, size, part)]


@pytest.mark.parametrize("size", [1001, 1200, 2345])
def test_a_large_download_is_parallel_ranges_written_at_their_offsets(
    range_bucket: RangeBucket, tmp_path: Path, size: int
) -> None:
    range_bucket.data = os.urandom(size)
    dest = tmp_path / "out" / "model.bin"
    digest = transfer.download(f"{range_bucket.url}/o?X-Amz-Signature=s", dest, size, threshold=1000, part_size=300)
    assert dest.read_bytes() == range_bucket.data
    assert digest == hashlib.sha256(range_bucket.data).hexdigest()
    assert sorted(r for _, r in range_bucket.requests) == sorted(_ranges(size, 300))  # each range once
    assert range_bucket.connections <= transfer.DOWNLOAD_CONCURRENCY
    assert sorted(p.name for p in dest.parent.iterdir()) == ["model.bin"]


@pytest.mark.parametrize("size", [0, 999, 1000])
def test_a_small_or_empty_download_is_one_get(range_bucket: RangeBucket, tmp_path: Path, size: int) -> None:
    range_bucket.data = os.urandom(size)
    dest = tmp_path / "f"
    transfer.download(f"{range_bucket.url}/o", dest, size, threshold=1000, part_size=300)
    assert dest.read_bytes() == range_bucket.data
    assert range_bucket.requests == [("/o", "")]


def test_a_range_that_fails_once_is_retried_alone(range_bucket: RangeBucket, tmp_path: Path) -> None:
    range_bucket.data = os.urandom(2345)
    range_bucket.fail = {"bytes=600-899": [503], "bytes=2100-2344": [500]}
    sleeps: list[float] = []
    dest = tmp_path / "f"
    bar = transfer.new_progress(Console(file=io.StringIO(), force_terminal=False))
    with bar:
        transfer.download(f"{range_bucket.url}/o", dest, 2345, bar, threshold=1000, part_size=300, sleep=sleeps.append)
    assert dest.read_bytes() == range_bucket.data
    asked = [r for _, r in range_bucket.requests]
    assert (asked.count("bytes=600-899"), asked.count("bytes=2100-2344"), asked.count("bytes=0-299")) == (2, 2, 1)
    assert len(sleeps) == 2
    (task,) = bar.tasks
    assert task.completed == 2345  # every byte counted once


def test_a_refused_range_fails_with_http_403_and_leaves_nothing(range_bucket: RangeBucket, tmp_path: Path) -> None:
    range_bucket.data = os.urandom(3000)
    range_bucket.fail = {"bytes=1200-1499": [403]}
    dest = tmp_path / "f"
    dest.write_bytes(b"previous")
    with pytest.raises(transfer.TransferError, match=r"bytes 1200-1499\): HTTP 403 E403: m \(after 1 attempt\)"):
        transfer.download(f"{range_bucket.url}/o?X-Amz-Signature=s3cr3t", dest, 3000, threshold=1000, part_size=300)
    assert dest.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_an_object_replaced_mid_download_is_downloaded_again(range_bucket: RangeBucket, tmp_path: Path) -> None:
    range_bucket.data = os.urandom(2400)
    range_bucket.swapped = os.urandom(2400)
    range_bucket.swap_after = 3  # the 4th range comes from another version (another ETag)
    dest = tmp_path / "f"
    sha = hashlib.sha256(range_bucket.swapped).hexdigest()
    transfer.download(f"{range_bucket.url}/o", dest, 2400, threshold=1000, part_size=300, concurrency=1, sleep=no_wait)
    assert dest.read_bytes() == range_bucket.swapped
    assert transfer.download(f"{range_bucket.url}/o", dest, 2400, sha256=sha, threshold=1000, part_size=300) == sha
    assert len(range_bucket.requests) == 8 + 8 + 8


def test_a_server_ignoring_ranges_gets_one_plain_get(range_bucket: RangeBucket, tmp_path: Path) -> None:
    range_bucket.data = os.urandom(2000)
    range_bucket.ignore_ranges = True
    dest = tmp_path / "f"
    transfer.download(f"{range_bucket.url}/o", dest, 2000, threshold=1000, part_size=300, concurrency=1)
    assert dest.read_bytes() == range_bucket.data
    assert [r for _, r in range_bucket.requests] == ["bytes=0-299", ""]


def test_upload_parts_in_flight_together_return_in_order_over_few_connections(
    range_bucket: RangeBucket, tmp_path: Path
) -> None:
    source = tmp_path / "f"
    source.write_bytes(os.urandom(10 * 1000 + 7))
    parts = [{"part_number": n, "url": f"{range_bucket.url}/up/{n}?X-Amz-Signature=s"} for n in range(11, 0, -1)]
    done = threading.Event()
    result: list[dict[str, Any]] = []

    def run_upload() -> None:
        result.extend(transfer.upload(parts, source, 1000))
        done.set()

    threading.Thread(target=run_upload, daemon=True).start()
    while len(range_bucket.finished) < 10 and not done.is_set():  # parts 2..11 finish while part 1 is held
        time.sleep(0.01)
    range_bucket.release.set()
    assert done.wait(30)
    assert range_bucket.finished[-1] == "/up/1"
    assert [(p["part_number"], p["etag"]) for p in result] == [(n, f'"etag-{n}"') for n in range(1, 12)]
    assert b"".join(range_bucket.bodies[f"/up/{n}"] for n in range(1, 12)) == source.read_bytes()
    assert range_bucket.connections <= transfer.CONCURRENCY  # kept alive: 11 PUTs on at most 4 connections


def test_an_https_proxy_from_the_environment_is_a_connect_tunnel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("https_proxy", "http://user:p%40ss@proxy.corp:3128")
    monkeypatch.setenv("no_proxy", "internal.example")
    host, port, headers = transfer.proxy_for("https://bucket.s3.amazonaws.com/k?X-Amz-Signature=s") or ("", 0, {})
    assert (host, port) == ("proxy.corp", 3128)
    assert headers == {"Proxy-Authorization": "Basic " + base64.b64encode(b"user:p@ss").decode()}
    assert transfer.proxy_for("https://files.internal.example/k") is None
    assert transfer.proxy_for("http://127.0.0.1:4566/k") is None  # loopback never goes through a proxy
    monkeypatch.delenv("https_proxy")
    assert transfer.proxy_for("https://bucket.s3.amazonaws.com/k") is None


def no_wait(_seconds: float) -> None:
    return None
