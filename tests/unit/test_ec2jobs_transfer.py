"""The on-instance transfer script (lambdas/controlplane/core/data/ec2jobs_transfer.py): SigV4 signatures equal
botocore's, safe extraction, mounts placement, sync-up change detection, retries and credential refresh against a
loopback HTTP server, one-line errors without secrets, and Python 3.8 compatibility of the source."""

from __future__ import annotations

import ast
import calendar
import datetime
import hashlib
import io
import json
import os
import re
import stat
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import botocore.auth
import pytest
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.utils import percent_encode

from controlplane.core.data import ec2jobs_transfer as t
from ec2jobs.packing import pack_directory, pack_mounts

SCRIPT = Path(t.__file__)
FROZEN = datetime.datetime(2026, 3, 4, 5, 6, 7)  # naive UTC, as botocore's get_current_datetime returns
NOW = calendar.timegm(FROZEN.timetuple())
ACCESS_KEY = "ASIAEXAMPLETRANSFER1"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
TOKEN = "FwoGZXIvYXdzEXAMPLE//session+token/=="
BUCKET = "ec2jobs-artifacts-abc123"
JOB_PREFIX = "teams/t-1/jobs/job-1/"


def grants_document(
    endpoint: str = "https://s3.us-east-1.amazonaws.com",
    addressing: str = "virtual",
    access_key: str = ACCESS_KEY,
    token: str = TOKEN,
) -> dict[str, Any]:
    return {
        "endpoint_url": endpoint,
        "addressing": addressing,
        "region": "us-east-1",
        "bucket": BUCKET,
        "job_prefix": JOB_PREFIX,
        "credentials": {
            "access_key_id": access_key,
            "secret_access_key": SECRET_KEY,
            "session_token": token,
            "expiration": "2026-03-04T06:00:00Z",
        },
    }


# -- SigV4 against botocore -----------------------------------------------------------------------------------------


def botocore_headers(
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    url: str,
    *,
    params: dict[str, str] | None = None,
    body: bytes = b"",
    unsigned: bool = False,
) -> Any:
    """What botocore's S3SigV4Auth puts on the same request, signed at FROZEN."""
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *_, **__: FROZEN)
    request = AWSRequest(method=method, url=url, data=body, params=params or {})
    if unsigned:
        request.context["client_config"] = Config(s3={"payload_signing_enabled": False})
    botocore.auth.S3SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY, TOKEN), "s3", "us-east-1").add_auth(request)
    return request.headers


@dataclass(frozen=True)
class SigningCase:
    name: str
    method: str
    key: str | None
    params: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    unsigned: bool = False


SIGNING_CASES = [
    SigningCase("get", "GET", "teams/t-1/uploads/up-1/archive.tar.gz"),
    SigningCase("put-unsigned", "PUT", "teams/t-1/jobs/job-1/outputs/model.bin", unsigned=True),
    SigningCase("spaces-unicode", "GET", "teams/t-1/jobs/job-1/outputs/my run ü 名前 (1)+100%~a=b&c.txt"),
    SigningCase("double-slash-dot", "PUT", "teams/t-1/jobs/job-1/outputs//./x", unsigned=True),
    SigningCase(
        "list",
        "GET",
        None,
        {
            "list-type": "2",
            "prefix": "teams/t-1/jobs/job-1/check points/ü",
            "encoding-type": "url",
            "continuation-token": "1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=",
        },
    ),
    SigningCase("create-multipart", "POST", "teams/t-1/jobs/job-1/outputs/big", {"uploads": ""}),
    SigningCase(
        "complete-multipart",
        "POST",
        "teams/t-1/jobs/job-1/outputs/big",
        {"uploadId": "VXBsb2FkIElEIGZvciA2aWWpbmcncyBteS1tb3ZpZS5tMnRzIHVwbG9hZA"},
        body=b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber></Part></CompleteMultipartUpload>",
    ),
]


@pytest.mark.parametrize("addressing", ["virtual", "path"])
@pytest.mark.parametrize("case", SIGNING_CASES, ids=lambda c: c.name)
def test_authorization_equals_botocore(monkeypatch: pytest.MonkeyPatch, case: SigningCase, addressing: str) -> None:
    grants = t.Grants.parse(grants_document(addressing=addressing))
    payload = t.UNSIGNED_PAYLOAD if case.unsigned else hashlib.sha256(case.body or b"").hexdigest()
    target, headers = t.prepare_request(grants, case.method, case.key, list(case.params.items()), payload, NOW)

    # the URL botocore's serializer would build: the key percent-encoded once, '/' and '~' kept
    encoded = "" if case.key is None else "/" + percent_encode(case.key, safe="/~")
    if addressing == "virtual":
        base, path = f"https://{BUCKET}.s3.us-east-1.amazonaws.com", encoded or "/"
    else:
        base, path = "https://s3.us-east-1.amazonaws.com", f"/{BUCKET}{encoded}"
    assert target.split("?")[0] == path
    expected = botocore_headers(
        monkeypatch, case.method, base + path, params=case.params, body=case.body or b"", unsigned=case.unsigned
    )
    assert headers["Authorization"] == expected["Authorization"]
    assert headers["X-Amz-Content-SHA256"] == expected["X-Amz-Content-SHA256"]
    assert headers["X-Amz-Date"] == expected["X-Amz-Date"] == "20260304T050607Z"
    assert headers["X-Amz-Security-Token"] == expected["X-Amz-Security-Token"]
    assert headers["Host"] == base.split("//")[1]


def test_loopback_endpoint_with_port_signs_like_botocore(monkeypatch: pytest.MonkeyPatch) -> None:
    grants = t.Grants.parse(grants_document(endpoint="http://127.0.0.1:4566", addressing="path"))
    key = "teams/t-1/jobs/job-1/outputs/a b.txt"
    target, headers = t.prepare_request(grants, "GET", key, [], t.EMPTY_SHA256, NOW)
    url = f"http://127.0.0.1:4566/{BUCKET}/{percent_encode(key, safe='/~')}"
    assert target == url.split("4566")[1]
    assert headers["Host"] == "127.0.0.1:4566"
    assert headers["Authorization"] == botocore_headers(monkeypatch, "GET", url)["Authorization"]


def test_any_signed_headers_canonicalize_like_botocore(monkeypatch: pytest.MonkeyPatch) -> None:
    """Header names in any case, values with runs of spaces and padding (SigV4's Trimall), sorted by name."""
    url = f"https://{BUCKET}.s3.us-east-1.amazonaws.com/a%20b"
    extra = {"X-Amz-Meta-Note": "  two  spaces\tand tab ", "content-type": "text/plain", "Range": "bytes=0-9"}
    signed = botocore_headers_with(monkeypatch, "GET", url, extra)
    headers = {name: value for name, value in signed.items() if name != "Authorization"}
    headers["Host"] = f"{BUCKET}.s3.us-east-1.amazonaws.com"
    mine = t.authorization(
        "GET",
        "/a%20b",
        "",
        headers,
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
        region="us-east-1",
        amz_date=headers["X-Amz-Date"],
    )
    assert mine == signed["Authorization"]


def botocore_headers_with(monkeypatch: pytest.MonkeyPatch, method: str, url: str, extra: dict[str, str]) -> Any:
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *_, **__: FROZEN)
    request = AWSRequest(method=method, url=url, headers=extra)
    botocore.auth.S3SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY, TOKEN), "s3", "us-east-1").add_auth(request)
    return request.headers


def test_aws_documented_example_signature() -> None:
    """The GET Object example of https://docs.aws.amazon.com/AmazonS3/latest/API/sig-v4-header-based-auth.html."""
    headers = {
        "Host": "examplebucket.s3.amazonaws.com",
        "Range": "bytes=0-9",
        "x-amz-content-sha256": t.EMPTY_SHA256,
        "x-amz-date": "20130524T000000Z",
    }
    value = t.authorization(
        "GET",
        "/test.txt",
        "",
        headers,
        access_key_id="AKIAIOSFODNN7EXAMPLE",
        secret_access_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        region="us-east-1",
        amz_date="20130524T000000Z",
    )
    assert value.endswith("Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")
    assert "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date," in value


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"endpoint_url": "http://s3.us-east-1.amazonaws.com"}, "plain http is allowed only to a loopback"),
        ({"endpoint_url": "http://127.0.0.1:9000", "addressing": "virtual"}, "needs a DNS endpoint"),
        ({"endpoint_url": "https://s3.amazonaws.com/prefix"}, "must not have a path"),
        ({"addressing": "dual"}, "addressing must be"),
        ({"bucket": "Bad_Bucket"}, "not a valid bucket name"),
        ({"job_prefix": "teams/t-1/jobs/../x/"}, "job_prefix"),
        ({"job_prefix": "teams/t-1/jobs/job-1"}, "ending in '/'"),
        ({"credentials": {"access_key_id": ACCESS_KEY}}, "secret_access_key is missing"),
    ],
)
def test_grants_refused(change: dict[str, Any], message: str) -> None:
    document = grants_document() | change
    with pytest.raises(t.TransferError, match=message) as refused:
        t.Grants.parse(document)
    assert SECRET_KEY not in str(refused.value)


def test_grants_repr_hides_secrets() -> None:
    text = repr(t.Grants.parse(grants_document()))
    assert SECRET_KEY not in text
    assert TOKEN not in text


# -- safe extraction ------------------------------------------------------------------------------------------------


@dataclass
class Member:
    name: str
    kind: bytes = tarfile.REGTYPE
    data: bytes = b""
    linkname: str = ""
    mode: int = 0o644
    mtime: int = 1_700_000_000


def make_archive(path: Path, members: list[Member]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for member in members:
            info = tarfile.TarInfo(member.name)
            info.type = member.kind
            info.mode = member.mode
            info.mtime = member.mtime
            info.linkname = member.linkname
            info.size = len(member.data) if member.kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(member.data) if member.kind == tarfile.REGTYPE else None)
    return path


def tree(root: Path) -> dict[str, str]:
    """Every entry under root: file contents, 'dir', or '-> target'."""
    result = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            result[rel] = f"-> {os.readlink(path)}"
        elif path.is_dir():
            result[rel] = "dir"
        else:
            result[rel] = path.read_text()
    return result


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([Member("../x", data=b"evil")], "'..' in its path"),
        ([Member("a/../../x", data=b"evil")], "'..' in its path"),
        ([Member("/abs", data=b"evil")], "absolute path"),
        ([Member("ok", data=b"1"), Member("link", tarfile.SYMTYPE, linkname="../../etc")], "pointing outside"),
        ([Member("link", tarfile.SYMTYPE, linkname="/etc/passwd")], "symlink to an absolute path"),
        ([Member("hard", tarfile.LNKTYPE, linkname="../outside.txt")], "'..' in its path"),
        ([Member("dev", tarfile.CHRTYPE)], "device or FIFO"),
        ([Member("blk", tarfile.BLKTYPE)], "device or FIFO"),
        ([Member("fifo", tarfile.FIFOTYPE)], "device or FIFO"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink-up", "symlink-absolute", "hardlink-up", "chr", "blk", "fifo"],
)
def test_extract_refuses_before_writing(tmp_path: Path, members: list[Member], message: str) -> None:
    archive = make_archive(tmp_path / "a.tar.gz", members)
    dest = tmp_path / "box" / "dest"
    with pytest.raises(t.TransferError, match=message):
        t.extract_archive(str(archive), str(dest))
    assert not dest.exists()  # every member is checked before anything is written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar.gz"]


def test_extract_refuses_symlink_chain_escape(tmp_path: Path) -> None:
    """Each link looks inside on its own (sub/up -> .., esc -> sub/up/..) but together they leave dest."""
    (tmp_path / "secret").mkdir()
    archive = make_archive(
        tmp_path / "a.tar.gz",
        [
            Member("sub", tarfile.DIRTYPE, mode=0o755),
            Member("sub/up", tarfile.SYMTYPE, linkname=".."),
            Member("esc", tarfile.SYMTYPE, linkname="sub/up/.."),
            Member("esc/secret/planted", data=b"evil"),
        ],
    )
    dest = tmp_path / "dest"
    with pytest.raises(t.TransferError, match="symlink resolving outside"):
        t.extract_archive(str(archive), str(dest))
    assert not (dest / "esc").exists()
    assert list((tmp_path / "secret").iterdir()) == []


def test_extract_never_writes_through_an_existing_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "out").symlink_to(outside)
    archive = make_archive(tmp_path / "a.tar.gz", [Member("out/x", data=b"evil")])
    with pytest.raises(t.TransferError, match="leads outside"):
        t.extract_archive(str(archive), str(dest))
    assert list(outside.iterdir()) == []


def test_extract_replaces_a_symlink_at_a_file_path(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "f").symlink_to(outside)
    archive = make_archive(tmp_path / "a.tar.gz", [Member("f", data=b"new")])
    t.extract_archive(str(archive), str(dest))
    assert outside.read_text() == "keep"
    assert not (dest / "f").is_symlink()
    assert (dest / "f").read_text() == "new"


def test_extract_keeps_modes_mtimes_and_links(tmp_path: Path) -> None:
    archive = make_archive(
        tmp_path / "a.tar.gz",
        [
            Member("bin", tarfile.DIRTYPE, mode=0o750),
            Member("bin/run.sh", data=b"#!/bin/sh\n", mode=0o755, mtime=1_600_000_000),
            Member("secret.txt", data=b"s", mode=0o600),
            Member("setuid", data=b"x", mode=0o4755),
            Member("ro", tarfile.DIRTYPE, mode=0o555),
            Member("ro/inside", data=b"i", mode=0o444),
            Member("latest", tarfile.SYMTYPE, linkname="bin/run.sh"),
            Member("copy.sh", tarfile.LNKTYPE, linkname="bin/run.sh"),
        ],
    )
    dest = tmp_path / "dest"
    assert t.extract_archive(str(archive), str(dest)) == 6
    assert stat.S_IMODE((dest / "bin").stat().st_mode) == 0o750
    assert stat.S_IMODE((dest / "bin/run.sh").stat().st_mode) == 0o755
    assert (dest / "bin/run.sh").stat().st_mtime == 1_600_000_000
    assert stat.S_IMODE((dest / "secret.txt").stat().st_mode) == 0o600
    assert stat.S_IMODE((dest / "setuid").stat().st_mode) == 0o755  # setuid dropped
    assert stat.S_IMODE((dest / "ro").stat().st_mode) == 0o555
    assert (dest / "ro/inside").read_text() == "i"
    assert os.readlink(dest / "latest") == "bin/run.sh"
    assert (dest / "copy.sh").stat().st_ino == (dest / "bin/run.sh").stat().st_ino
    os.chmod(dest / "ro", 0o700)  # let pytest clean up


def test_extract_a_packed_workdir_round_trips(tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "pkg").mkdir(parents=True)
    (source / "pkg" / "train.py").write_text("print('hi')\n")
    (source / "README").write_text("readme\n")
    (source / "current").symlink_to("pkg/train.py")
    os.chmod(source / "pkg" / "train.py", 0o700)
    with pack_directory(source) as packed:
        t.extract_archive(str(packed.path), str(tmp_path / "dest"))
    assert tree(tmp_path / "dest") == tree(source)
    assert stat.S_IMODE((tmp_path / "dest/pkg/train.py").stat().st_mode) == 0o700


# -- mounts ---------------------------------------------------------------------------------------------------------


def test_place_mounts_from_pack_mounts(tmp_path: Path) -> None:
    data = tmp_path / "local-data"
    (data / "sub").mkdir(parents=True)
    (data / "sub" / "a.csv").write_text("1,2\n")
    (data / "b.txt").write_text("b\n")
    (data / "link").symlink_to("sub/a.csv")
    config = tmp_path / "app.conf"
    config.write_text("k=v\n")
    os.chmod(config, 0o640)
    empty = tmp_path / "empty"
    empty.mkdir()
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "app.conf").write_text("old")
    with pack_mounts({"/data/x": data, "/etc/app.conf": config, "/scratch": empty}) as packed:
        lines = t.place_mounts(str(packed.path), str(root))
    assert lines == [
        f"placed {root}/data/x (dir, 3 files)",
        f"placed {root}/etc/app.conf (file)",
        f"placed {root}/scratch (dir, 0 files)",
    ]
    assert tree(root / "data" / "x") == tree(data)
    assert (root / "etc" / "app.conf").read_text() == "k=v\n"
    assert stat.S_IMODE((root / "etc" / "app.conf").stat().st_mode) == 0o640
    assert (root / "scratch").is_dir()
    assert sorted(p.name for p in (root / "etc").iterdir()) == ["app.conf"]  # no temporary left


def mounts_archive(path: Path, manifest: Any, members: list[Member]) -> Path:
    data = json.dumps(manifest).encode()
    return make_archive(path, [Member("manifest.json", data=data), *members])


@pytest.mark.parametrize(
    ("manifest", "members", "message"),
    [
        ({"format": 1, "mounts": {"0": {"remote_path": "/../etc", "type": "dir"}}}, [], "contains '..'"),
        ({"format": 1, "mounts": {"0": {"remote_path": "rel", "type": "dir"}}}, [], "not an absolute path"),
        ({"format": 2, "mounts": {}}, [], "format 1 manifest"),
        (
            {"format": 1, "mounts": {"0": {"remote_path": "/d", "type": "dir"}}},
            [Member("mounts/1/x", data=b"x")],
            "not under a mount",
        ),
        (
            {"format": 1, "mounts": {"0": {"remote_path": "/d", "type": "dir"}}},
            [Member("mounts/0", tarfile.DIRTYPE), Member("mounts/0/l", tarfile.SYMTYPE, linkname="../../x")],
            "pointing outside",
        ),
        ({"format": 1, "mounts": {"0": {"remote_path": "/f", "type": "file"}}}, [], "is missing"),
    ],
    ids=["dotdot", "relative", "format", "stray-member", "symlink-out", "missing-file"],
)
def test_place_mounts_refuses(tmp_path: Path, manifest: Any, members: list[Member], message: str) -> None:
    archive = mounts_archive(tmp_path / "m.tar.gz", manifest, members)
    with pytest.raises(t.TransferError, match=message):
        t.place_mounts(str(archive), str(tmp_path / "root"))


def test_place_mounts_needs_the_manifest_first(tmp_path: Path) -> None:
    archive = make_archive(tmp_path / "m.tar.gz", [Member("mounts/0", data=b"x"), Member("manifest.json")])
    with pytest.raises(t.TransferError, match="first member"):
        t.place_mounts(str(archive), str(tmp_path / "root"))


# -- sync-up change detection ---------------------------------------------------------------------------------------


class FakeS3(t.S3):
    """Records uploads instead of sending them; `during` runs while a file is "being uploaded"."""

    def __init__(self, grants_path: str, during: Callable[[str], None] | None = None) -> None:
        super().__init__(grants_path)
        self.objects: dict[str, bytes] = {}
        self.sent: list[str] = []
        self.during = during

    def upload_file(self, path: str, key: str, size: int, within: str | None = None) -> None:
        if self.during is not None:
            self.during(path)
        reader = t.FileSlice(path, 0, size, within).open()
        self.sent.append(key.removeprefix(JOB_PREFIX))
        try:
            self.objects[key] = b"".join(iter(lambda: reader.read(7), b""))
        finally:
            reader.close()


@pytest.fixture
def grants_file(tmp_path: Path) -> Path:
    path = tmp_path / "grants.json"
    path.write_text(json.dumps(grants_document()))
    return path


def touch(path: Path, text: str, mtime_ns: int) -> None:
    path.write_text(text)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_sync_up_sends_only_new_or_changed_files(tmp_path: Path, grants_file: Path) -> None:
    out = tmp_path / "job" / "outputs"
    (out / "logs").mkdir(parents=True)
    touch(out / "a.txt", "aaa", 10**18)
    touch(out / "logs" / "b.txt", "bb", 10**18)
    touch(out / "c.bin", "c", 10**18)
    state = t.default_state_path(str(out), "outputs")
    assert state == str(tmp_path / "job" / ".ec2jobs-sync-outputs.json")  # beside the directory, not in it

    s3 = FakeS3(str(grants_file))
    first = t.sync_up(s3, str(out), "outputs", state)
    assert first.summary() == "uploaded 3 files, 6 bytes; 0 unchanged"
    assert sorted(s3.sent) == ["outputs/a.txt", "outputs/c.bin", "outputs/logs/b.txt"]
    assert s3.objects[JOB_PREFIX + "outputs/logs/b.txt"] == b"bb"

    s3.sent.clear()
    assert t.sync_up(s3, str(out), "outputs", state).summary() == "uploaded 0 files, 0 bytes; 3 unchanged"
    assert s3.sent == []

    touch(out / "a.txt", "AAA", 10**18 + 1)  # same size, new mtime
    touch(out / "logs" / "b.txt", "bbbb", 10**18)  # same mtime, new size
    touch(out / "d.txt", "d", 10**18)  # new
    (out / "c.bin").unlink()  # gone: dropped from the state
    third = t.sync_up(s3, str(out), "outputs", state)
    assert sorted(s3.sent) == ["outputs/a.txt", "outputs/d.txt", "outputs/logs/b.txt"]
    assert third.summary() == "uploaded 3 files, 8 bytes; 0 unchanged"
    assert sorted(json.loads(Path(state).read_text())["files"]) == ["a.txt", "d.txt", "logs/b.txt"]


def test_a_file_changing_during_upload_is_sent_again(tmp_path: Path, grants_file: Path) -> None:
    out = tmp_path / "outputs"
    out.mkdir()
    touch(out / "ckpt.pt", "v1", 10**18)
    state = str(tmp_path / "state.json")

    def grow(path: str) -> None:
        with open(path, "a") as handle:
            handle.write("+more")

    s3 = FakeS3(str(grants_file), during=grow)
    result = t.sync_up(s3, str(out), "checkpoints", state)
    assert result.changed == ["ckpt.pt"]
    assert "1 changed while uploading" in result.summary()
    s3.during = None
    s3.sent.clear()
    t.sync_up(s3, str(out), "checkpoints", state)
    assert s3.sent == ["checkpoints/ckpt.pt"]
    assert s3.objects[JOB_PREFIX + "checkpoints/ckpt.pt"] == b"v1+more"


def test_a_file_shrinking_during_upload_is_not_recorded(tmp_path: Path, grants_file: Path) -> None:
    out = tmp_path / "outputs"
    out.mkdir()
    (out / "log.txt").write_text("x" * 100)

    def shrink(path: str) -> None:
        os.truncate(path, 10)

    s3 = FakeS3(str(grants_file), during=shrink)
    result = t.sync_up(s3, str(out), "outputs", str(tmp_path / "state.json"))
    assert result.changed == ["log.txt"]
    assert result.uploaded == 0
    assert json.loads((tmp_path / "state.json").read_text())["files"] == {}


@pytest.mark.parametrize("swap", ["symlink-out", "fifo", "vanish"])
def test_a_file_swapped_after_the_scan_is_not_read(tmp_path: Path, grants_file: Path, swap: str) -> None:
    """sync-up reads as root what the job can change: a file replaced by a link to a root-only file (or a FIFO,
    which would block) between the scan and the upload is refused, not sent."""
    out = tmp_path / "outputs"
    out.mkdir()
    (out / "ckpt.pt").write_text("weights")
    secret = tmp_path / "root-only"
    secret.write_text("secret")

    def replace(path: str) -> None:
        os.unlink(path)
        if swap == "symlink-out":
            os.symlink(secret, path)
        elif swap == "fifo":
            os.mkfifo(path)

    s3 = FakeS3(str(grants_file), during=replace)
    result = t.sync_up(s3, str(out), "outputs", str(tmp_path / "state.json"))
    assert result.changed == ["ckpt.pt"]
    assert s3.objects == {}


def test_sync_up_skips_links_leaving_the_directory_and_special_files(tmp_path: Path, grants_file: Path) -> None:
    out = tmp_path / "outputs"
    (out / "real").mkdir(parents=True)
    (out / "real" / "f.txt").write_text("f")
    (tmp_path / "secret.txt").write_text("secret")
    (out / "leak").symlink_to(tmp_path / "secret.txt")
    (out / "alias.txt").symlink_to("real/f.txt")
    (out / "dirlink").symlink_to("real")
    os.mkfifo(out / "pipe")
    s3 = FakeS3(str(grants_file))
    result = t.sync_up(s3, str(out), "outputs", str(tmp_path / "state.json"))
    assert sorted(s3.sent) == ["outputs/alias.txt", "outputs/real/f.txt"]
    assert sorted(result.skipped) == [
        "dirlink: symlink to a directory",
        f"leak: symlink pointing outside {out}",
        "pipe: not a regular file",
    ]


def test_state_of_another_prefix_is_ignored(tmp_path: Path, grants_file: Path) -> None:
    out = tmp_path / "outputs"
    out.mkdir()
    touch(out / "a", "a", 10**18)
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"format": 1, "prefix": "teams/t-1/jobs/OTHER/outputs/", "files": {"a": [1, 10**18]}}))
    s3 = FakeS3(str(grants_file))
    t.sync_up(s3, str(out), "outputs", str(state))
    assert s3.sent == ["outputs/a"]


def test_state_file_inside_the_directory_is_not_uploaded(tmp_path: Path, grants_file: Path) -> None:
    out = tmp_path / "outputs"
    out.mkdir()
    (out / "a").write_text("a")
    s3 = FakeS3(str(grants_file))
    t.sync_up(s3, str(out), "outputs", str(out / "state.json"))
    t.sync_up(s3, str(out), "outputs", str(out / "state.json"))
    assert s3.sent == ["outputs/a"]


def test_a_shorter_file_raises_file_changed(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"0123456789")
    reader = t.FileSlice(str(path), 4, 6).open()
    os.truncate(path, 6)
    assert reader.read(3) == b"45"
    with pytest.raises(t.FileChanged):
        reader.read(3)
    reader.close()
    whole = t.FileSlice(str(path), 0, 6).open()
    assert whole.read() == b"012345"
    assert whole.read() == b""  # never more than the slice, even when the file grew
    whole.close()


# -- requests against a loopback server -----------------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


Answer = tuple[int, dict[str, str], bytes]


class FakeServer:
    """A loopback HTTP server answering with `respond(seen)`; None closes the connection without an answer."""

    def __init__(self, respond: Callable[[Seen], Answer | None]) -> None:
        self.seen: list[Seen] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                seen = Seen(self.command, self.path, dict(self.headers.items()), self.rfile.read(length))
                server.seen.append(seen)
                answer = respond(seen)
                if answer is None:
                    self.close_connection = True
                    return
                status, headers, body = answer
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_DELETE = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def s3_error(status: int, code: str, message: str = "msg") -> Answer:
    body = f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>{message}</Message></Error>".encode()
    return status, {"Content-Type": "application/xml"}, body


@pytest.fixture
def serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., tuple[FakeServer, Path]]]:
    """serve(respond) -> (server, grants file pointing at it); retries do not sleep."""
    sleeps: list[float] = []
    monkeypatch.setattr(t, "_sleep", sleeps.append)
    servers: list[FakeServer] = []

    def start(respond: Callable[[Seen], Answer | None]) -> tuple[FakeServer, Path]:
        server = FakeServer(respond)
        servers.append(server)
        grants = tmp_path / "grants.json"
        grants.write_text(json.dumps(grants_document(endpoint=f"http://127.0.0.1:{server.port}", addressing="path")))
        return server, grants

    yield start
    for server in servers:
        server.close()


def scripted(*answers: Answer | None) -> Callable[[Seen], Answer | None]:
    queue = list(answers)
    return lambda _: queue.pop(0)


def test_retries_transient_failures_then_succeeds(serve: Any, tmp_path: Path) -> None:
    server, grants = serve(
        scripted(
            s3_error(503, "SlowDown"),
            None,  # connection closed without an answer
            s3_error(500, "InternalError"),
            (429, {}, b""),
            (200, {}, b"payload"),
        )
    )
    dest = tmp_path / "out" / "file.bin"
    assert t.S3(str(grants)).download("teams/t-1/jobs/job-1/outputs/file.bin", str(dest)) == 7
    assert dest.read_bytes() == b"payload"
    assert len(server.seen) == 5
    assert [p.name for p in dest.parent.iterdir()] == ["file.bin"]  # the temporary file was renamed
    assert server.seen[0].path == f"/{BUCKET}/teams/t-1/jobs/job-1/outputs/file.bin"
    assert server.seen[0].headers["X-Amz-Security-Token"] == TOKEN


def test_gives_up_after_five_retries(serve: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server, grants = serve(lambda _: s3_error(503, "SlowDown", "Please reduce your request rate."))
    waits: list[float] = []
    monkeypatch.setattr(t, "_sleep", waits.append)
    with pytest.raises(t.TransferError, match="failed 6 times, last: HTTP 503 SlowDown") as failure:
        t.S3(str(grants)).download("k", str(tmp_path / "f"))
    assert len(server.seen) == 6
    assert len(waits) == 5
    assert all(2 ** (n - 1) / 2 <= w <= 2 ** (n - 1) for n, w in enumerate(waits, start=1))  # doubling, jittered
    assert not (tmp_path / "f").exists()
    assert "download k" in str(failure.value)


def test_a_client_error_is_not_retried(serve: Any, tmp_path: Path) -> None:
    server, grants = serve(lambda _: s3_error(404, "NoSuchKey", "The specified key does not exist."))
    with pytest.raises(t.TransferError, match="download k: HTTP 404 NoSuchKey: The specified key does not exist"):
        t.S3(str(grants)).download("k", str(tmp_path / "f"))
    assert len(server.seen) == 1


def test_expired_credentials_are_reread_from_the_grants_file(serve: Any, tmp_path: Path) -> None:
    grants_path: list[Path] = []

    def respond(seen: Seen) -> Answer:
        if f"Credential={ACCESS_KEY}/" in seen.headers["Authorization"]:
            # the relay refreshes the grants file while the request is in flight
            refreshed = grants_document(endpoint=f"http://127.0.0.1:{server.port}", addressing="path")
            refreshed["credentials"] |= {"access_key_id": "ASIANEWKEY0000000000", "session_token": "new-token"}
            grants_path[0].write_text(json.dumps(refreshed))
            return s3_error(400, "ExpiredToken", "The provided token has expired.")
        return 200, {}, b"ok"

    server, grants = serve(respond)
    grants_path.append(grants)
    t.S3(str(grants)).download("k", str(tmp_path / "f"))
    assert len(server.seen) == 2
    assert server.seen[1].headers["X-Amz-Security-Token"] == "new-token"


@pytest.mark.parametrize(("status", "code"), [(400, "ExpiredToken"), (403, "AccessDenied"), (403, "InvalidToken")])
def test_refused_credentials_fail_after_one_reread(serve: Any, tmp_path: Path, status: int, code: str) -> None:
    server, grants = serve(lambda _: s3_error(status, code))
    with pytest.raises(t.TransferError, match=f"HTTP {status} {code}"):
        t.S3(str(grants)).download("k", str(tmp_path / "f"))
    assert len(server.seen) == 1


INITIATED: Answer = (200, {}, b"<InitiateMultipartUploadResult><UploadId>U1</UploadId></InitiateMultipartUploadResult>")


def query_of(seen: Seen) -> dict[str, str]:
    return dict(part.split("=", 1) for part in seen.path.split("?", 1)[1].split("&")) if "?" in seen.path else {}


class PartServer:
    """Answers a multipart upload: parts by number (ETag "e<N>"), `slow` parts after `release` is set, `fail`
    parts with their scripted answers first; records the parts in flight at once."""

    def __init__(self, fail: dict[str, list[Answer]] | None = None, slow: frozenset[str] = frozenset()) -> None:
        self.fail = fail or {}
        self.slow = slow
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.in_flight = 0
        self.most_in_flight = 0

    def __call__(self, seen: Seen) -> Answer:
        query = query_of(seen)
        if seen.method == "POST" and "uploads" in query:
            return INITIATED
        if seen.method == "PUT":
            number = query["partNumber"]
            with self.lock:
                self.in_flight += 1
                self.most_in_flight = max(self.most_in_flight, self.in_flight)
                scripted = self.fail.get(number)
                answer = scripted.pop(0) if scripted else None
            try:
                if number in self.slow:
                    assert self.release.wait(30)
                return answer or (200, {"ETag": f'"e{number}"'}, b"")
            finally:
                with self.lock:
                    self.in_flight -= 1
        if seen.method == "POST":
            return 200, {}, b"<CompleteMultipartUploadResult></CompleteMultipartUploadResult>"
        return 204, {}, b""


def small_parts(monkeypatch: pytest.MonkeyPatch, size: int = 1024) -> None:
    monkeypatch.setattr(t, "PART_SIZE", size)
    monkeypatch.setattr(t, "MULTIPART_THRESHOLD", size)


def test_multipart_parts_go_in_parallel_and_complete_in_order(
    serve: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    small_parts(monkeypatch)
    parts = PartServer(slow=frozenset({"1"}))  # part 1 is answered only once the others are all in
    server, grants = serve(parts)
    big = tmp_path / "big"
    big.write_bytes(os.urandom(5 * 1024 + 512))  # parts of 1,024 ×5 and 512
    uploaded = threading.Thread(
        target=t.S3(str(grants)).upload_file, args=(str(big), "teams/t-1/jobs/job-1/outputs/big", 5 * 1024 + 512)
    )
    uploaded.start()
    deadline = time.monotonic() + 30
    while len([s for s in server.seen if s.method == "PUT"]) < 6 and time.monotonic() < deadline:
        time.sleep(0.01)  # polling for the parts to arrive (no fixed wait)
    parts.release.set()
    uploaded.join(30)
    assert not uploaded.is_alive()
    put = [s for s in server.seen if s.method == "PUT"]
    assert sorted(int(query_of(s)["partNumber"]) for s in put) == [1, 2, 3, 4, 5, 6]
    assert parts.most_in_flight >= 2  # part 1 was still open while later ones were sent
    by_number = {int(query_of(s)["partNumber"]): s.body for s in put}
    assert b"".join(by_number[n] for n in range(1, 7)) == big.read_bytes()
    assert all(s.headers["X-Amz-Content-SHA256"] == "UNSIGNED-PAYLOAD" for s in put)
    complete = server.seen[-1]
    assert (complete.method, query_of(complete)) == ("POST", {"uploadId": "U1"})
    listed = re.findall(rb"<PartNumber>(\d+)</PartNumber><ETag>&quot;e(\d+)&quot;</ETag>", complete.body)
    assert listed == [(str(n).encode(), str(n).encode()) for n in range(1, 7)]  # in order, each its own ETag


def test_multipart_retries_a_part_that_failed_once(serve: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    small_parts(monkeypatch)
    parts = PartServer(fail={"2": [s3_error(503, "SlowDown")], "3": [s3_error(500, "InternalError")]})
    server, grants = serve(parts)
    big = tmp_path / "big"
    big.write_bytes(os.urandom(3 * 1024))
    t.S3(str(grants)).upload_file(str(big), "teams/t-1/jobs/job-1/outputs/big", 3 * 1024)
    numbers = [query_of(s)["partNumber"] for s in server.seen if s.method == "PUT"]
    assert sorted(numbers) == ["1", "2", "2", "3", "3"]
    bodies = {query_of(s)["partNumber"]: s.body for s in server.seen if s.method == "PUT"}
    assert b"".join(bodies[n] for n in ("1", "2", "3")) == big.read_bytes()
    assert server.seen[-1].method == "POST"
    assert b"<PartNumber>3</PartNumber><ETag>&quot;e3&quot;</ETag>" in server.seen[-1].body


def test_multipart_aborts_when_a_part_is_refused(serve: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    small_parts(monkeypatch)
    parts = PartServer(fail={"2": [s3_error(400, "InvalidArgument")]})
    parts.release.set()
    server, grants = serve(parts)
    big = tmp_path / "big"
    big.write_bytes(bytes(range(256)) * 40)  # 10 parts
    with pytest.raises(t.TransferError, match="part 2: HTTP 400 InvalidArgument"):
        t.S3(str(grants)).upload_file(str(big), "teams/t-1/jobs/job-1/outputs/big", 10 * 1024)
    assert (server.seen[-1].method, query_of(server.seen[-1])) == ("DELETE", {"uploadId": "U1"})
    assert not [s for s in server.seen if s.method == "POST" and "uploads" not in query_of(s)]  # never completed


def test_complete_answering_an_error_with_200_is_retried(
    serve: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    small_parts(monkeypatch)
    parts = PartServer()
    parts.release.set()
    answers = [(200, {}, b"<Error><Code>InternalError</Code><Message>retry me</Message></Error>")]

    def respond(seen: Seen) -> Answer:
        if seen.method == "POST" and "uploadId" in query_of(seen) and answers:
            return answers.pop(0)
        return parts(seen)

    server, grants = serve(respond)
    big = tmp_path / "big"
    big.write_bytes(b"x" * 2048)
    t.S3(str(grants)).upload_file(str(big), "teams/t-1/jobs/job-1/outputs/big", 2048)
    completes = [s for s in server.seen if s.method == "POST" and "uploadId" in query_of(s)]
    assert len(completes) == 2


def test_part_size_fits_s3_limits() -> None:
    assert t.multipart_part_size(70 * t.MiB) == 8 * t.MiB
    assert t.multipart_part_size(8 * t.MiB * 10000) == 8 * t.MiB
    for size in (8 * t.MiB * 10000 + 1, 5 * 1024**4):  # up to S3's 5 TiB
        part = t.multipart_part_size(size)
        assert part % t.MiB == 0
        assert -(-size // part) <= 10000
        assert part <= 5 * 1024**3  # S3's largest part
    assert t.range_size(24 * t.MiB) == 8 * t.MiB
    assert t.range_size(400 * t.MiB) == 25 * t.MiB  # about two ranges per connection
    assert t.range_size(50 * 1024**3) == 64 * t.MiB


# -- ranged downloads -----------------------------------------------------------------------------------------------


class ObjectServer:
    """Serves objects by path as S3 does: Range → 206 with Content-Range (416 for an empty object), If-Match → 412
    when the ETag differs; `fail` holds scripted answers for the next requests of a range ("bytes=a-b")."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects
        self.fail: dict[str, list[Answer | None]] = {}
        self.lock = threading.Lock()
        self.after_first: Callable[[], None] | None = None  # runs once, after the first answer is made

    def __call__(self, seen: Seen) -> Answer | None:
        data = self.objects[seen.path.split("?")[0]]
        etag = '"' + hashlib.md5(data).hexdigest() + '"'  # noqa: S324 - S3's ETag
        wanted = seen.headers.get("Range", "")
        with self.lock:
            scripted = self.fail.get(wanted)
            if scripted:
                return scripted.pop(0)
        if seen.headers.get("If-Match", etag) != etag:
            return s3_error(412, "PreconditionFailed")
        if not wanted:
            return 200, {"ETag": etag}, data
        first, last = (int(n) for n in wanted.removeprefix("bytes=").split("-"))
        if first >= len(data):
            return s3_error(416, "InvalidRange")
        last = min(last, len(data) - 1)
        answer = (206, {"ETag": etag, "Content-Range": f"bytes {first}-{last}/{len(data)}"}, data[first : last + 1])
        hook, self.after_first = self.after_first, None
        if hook is not None:
            hook()
        return answer


@pytest.fixture
def small_ranges(monkeypatch: pytest.MonkeyPatch) -> None:
    """First GET: 1,000 bytes; then ranges of 300."""
    monkeypatch.setattr(t, "RANGE_THRESHOLD", 1000)
    monkeypatch.setattr(t, "RANGE_SIZE", 300)
    monkeypatch.setattr(t, "MAX_RANGE_SIZE", 300)


def ranges_asked(server: FakeServer) -> list[str]:
    return sorted((s.headers.get("Range", "none") for s in server.seen), key=lambda r: (len(r), r))


@pytest.mark.usefixtures("small_ranges")
@pytest.mark.parametrize("size", [0, 1, 999, 1000, 1001, 1900, 2000, 2345])
def test_a_ranged_download_reassembles_byte_exact(serve: Any, tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    key = "teams/t-1/jobs/job-1/outputs/f.bin"
    server, grants = serve(ObjectServer({f"/{BUCKET}/{key}": data}))
    dest = tmp_path / "out" / "f.bin"
    assert t.S3(str(grants)).download(key, str(dest)) == size
    assert dest.read_bytes() == data
    assert sorted(p.name for p in dest.parent.iterdir()) == ["f.bin"]
    tail = [f"bytes={start}-{min(start + 300, size) - 1}" for start in range(1000, size, 300)]
    expected = ["bytes=0-999"] + tail + (["none"] if size == 0 else [])  # an empty object: 416, then one GET
    assert ranges_asked(server) == sorted(expected, key=lambda r: (len(r), r))
    later = [s for s in server.seen if s.headers.get("Range", "bytes=0-999") != "bytes=0-999"]
    etag = '"' + hashlib.md5(data).hexdigest() + '"'  # noqa: S324
    assert all(s.headers["If-Match"] == etag for s in later if s.headers.get("Range"))


@pytest.mark.usefixtures("small_ranges")
def test_a_range_that_fails_once_is_retried(serve: Any, tmp_path: Path) -> None:
    data = os.urandom(2345)
    objects = ObjectServer({f"/{BUCKET}/k": data})
    objects.fail = {"bytes=1300-1599": [s3_error(503, "SlowDown")], "bytes=2200-2344": [None]}  # None: cut off
    server, grants = serve(objects)
    assert t.S3(str(grants)).download("k", str(tmp_path / "f")) == 2345
    assert (tmp_path / "f").read_bytes() == data
    asked = [s.headers.get("Range") for s in server.seen]
    assert asked.count("bytes=1300-1599") == 2
    assert asked.count("bytes=2200-2344") == 2
    assert asked.count("bytes=1000-1299") == 1


@pytest.mark.usefixtures("small_ranges")
def test_a_range_refused_fails_the_download_and_leaves_nothing(serve: Any, tmp_path: Path) -> None:
    objects = ObjectServer({f"/{BUCKET}/k": os.urandom(5000)})
    objects.fail = {"bytes=1600-1899": [s3_error(404, "NoSuchKey", "gone")]}
    _, grants = serve(objects)
    (tmp_path / "f").write_bytes(b"previous")
    with pytest.raises(t.TransferError, match="download k bytes 1600-1899: HTTP 404 NoSuchKey: gone"):
        t.S3(str(grants)).download("k", str(tmp_path / "f"))
    assert (tmp_path / "f").read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "grants.json"]


@pytest.mark.usefixtures("small_ranges")
def test_an_object_replaced_during_a_download_is_fetched_again(serve: Any, tmp_path: Path) -> None:
    old, new = os.urandom(2500), os.urandom(2600)
    path = f"/{BUCKET}/k"
    objects = ObjectServer({path: old})
    objects.after_first = lambda: objects.objects.update({path: new})  # replaced right after the first answer
    server, grants = serve(objects)
    assert t.S3(str(grants)).download("k", str(tmp_path / "f")) == 2600
    assert (tmp_path / "f").read_bytes() == new
    assert [s.headers.get("Range") for s in server.seen].count("bytes=0-999") == 2
    assert any(s.headers.get("If-Match") for s in server.seen)


@pytest.mark.usefixtures("small_ranges")
def test_a_server_ignoring_range_sends_the_whole_object(serve: Any, tmp_path: Path) -> None:
    data = os.urandom(5000)
    server, grants = serve(lambda _: (200, {}, data))
    assert t.S3(str(grants)).download("k", str(tmp_path / "f")) == len(data)
    assert (tmp_path / "f").read_bytes() == data
    assert len(server.seen) == 1


def test_list_objects_pages_and_decodes_keys(serve: Any) -> None:
    page1 = (
        "<ListBucketResult xmlns='http://s3.amazonaws.com/doc/2006-03-01/'><IsTruncated>true</IsTruncated>"
        "<Contents><Key>p/a+b%C3%BC</Key><Size>3</Size></Contents>"
        "<NextContinuationToken>tok/1=</NextContinuationToken></ListBucketResult>"
    )
    page2 = (
        "<ListBucketResult><IsTruncated>false</IsTruncated>"
        "<Contents><Key>p/c%2Bd</Key><Size>5</Size></Contents></ListBucketResult>"
    )
    server, grants = serve(scripted((200, {}, page1.encode()), (200, {}, page2.encode())))
    assert list(t.S3(str(grants)).list_objects("p/")) == [("p/a bü", 3), ("p/c+d", 5)]
    assert "continuation-token=tok%2F1%3D" in server.seen[1].path


def test_sync_down_refuses_keys_that_climb(serve: Any, tmp_path: Path) -> None:
    listing = (
        "<ListBucketResult><IsTruncated>false</IsTruncated>"
        f"<Contents><Key>{JOB_PREFIX}checkpoints/../../escape</Key><Size>1</Size></Contents></ListBucketResult>"
    )
    _, grants = serve(scripted((200, {}, listing.encode())))
    with pytest.raises(t.TransferError, match="refusing to download"):
        t.sync_down(t.S3(str(grants)), "checkpoints", str(tmp_path / "ck"), None, str(tmp_path / "s.json"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "grants.json"]


def test_main_reports_one_line_without_secrets(serve: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    message = f"denied for {ACCESS_KEY} with {TOKEN}"  # a server echoing credentials must not leak them
    _, grants = serve(lambda _: s3_error(403, "AccessDenied", message))
    code = t.main(["--grants", str(grants), "get", "teams/t-1/jobs/job-1/x", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1
    assert err.startswith("ec2jobs_transfer: get failed: download teams/t-1/jobs/job-1/x: HTTP 403 AccessDenied")
    for secret in (ACCESS_KEY, SECRET_KEY, TOKEN, "Signature=", "X-Amz-", "?"):
        assert secret not in err


def test_sigterm_saves_the_sync_state(serve: Any, tmp_path: Path) -> None:
    """The wrapper stops a sync with SIGTERM: what was uploaded stays recorded, and the error is one line."""
    stalled = threading.Event()
    release = threading.Event()

    def respond(seen: Seen) -> Answer:
        if seen.path.endswith("/b.txt"):
            stalled.set()
            release.wait(30)
        return 200, {"ETag": '"x"'}, b""

    _, grants = serve(respond)
    out = tmp_path / "outputs"
    out.mkdir()
    (out / "a.txt").write_text("a")
    (out / "b.txt").write_text("b")
    state = tmp_path / "state.json"
    command = [
        sys.executable,
        str(SCRIPT),
        "--grants",
        str(grants),
        "sync-up",
        str(out),
        "outputs",
        "--state",
        str(state),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert stalled.wait(30)
        process.terminate()
        _, err = process.communicate(timeout=30)
    finally:
        release.set()
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1
    assert err == "ec2jobs_transfer: sync-up failed: interrupted\n"
    assert list(json.loads(state.read_text())["files"]) == ["a.txt"]


def test_sigterm_during_a_parallel_upload_cuts_the_parts_off_and_aborts(serve: Any, tmp_path: Path) -> None:
    """Parts in flight on worker threads do not hold SIGTERM up: they are cut off, the upload is aborted."""
    stalled = threading.Event()
    release = threading.Event()
    parts = PartServer()

    def respond(seen: Seen) -> Answer:
        if seen.method == "PUT":
            stalled.set()
            release.wait(30)
        return parts(seen)

    server, grants = serve(respond)
    out = tmp_path / "outputs"
    out.mkdir()
    with (out / "model.pt").open("wb") as handle:
        handle.truncate(t.MULTIPART_THRESHOLD + 1)  # sparse: multipart, three parts in flight
    command = [sys.executable, str(SCRIPT), "--grants", str(grants), "sync-up", str(out), "outputs"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert stalled.wait(30)
        process.terminate()
        _, err = process.communicate(timeout=20)  # well before the stalled answers would come (30 s)
    finally:
        release.set()
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1
    assert err == "ec2jobs_transfer: sync-up failed: interrupted\n"
    assert [query_of(s) for s in server.seen if s.method == "DELETE"] == [{"uploadId": "U1"}]
    assert not [s for s in server.seen if s.method == "POST" and "uploads" not in query_of(s)]  # not completed


def test_main_usage_error_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        t.main(["--grants", "g.json", "teleport"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_main_names_a_missing_grants_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert t.main(["--grants", str(tmp_path / "none.json"), "get", "k", str(tmp_path / "f")]) == 1
    assert "cannot read the grants file" in capsys.readouterr().err


# -- Python 3.8 -----------------------------------------------------------------------------------------------------

NEWER_MODULES = {"zoneinfo", "graphlib", "tomllib"}  # added in 3.9, 3.9 and 3.11
NEWER_ATTRIBUTES = {"removeprefix", "removesuffix", "cache", "is_relative_to", "randbytes", "file_digest", "UTC"}
GENERIC_BUILTINS = {"list", "dict", "tuple", "set", "frozenset", "type"}


def _annotation_nodes(tree: ast.AST) -> set[int]:
    """ids of every node inside an annotation (not evaluated at run time under `from __future__ import annotations`)."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        annotations: list[ast.expr | None] = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            arguments = node.args
            every = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]
            every += [a for a in (arguments.vararg, arguments.kwarg) if a is not None]
            annotations = [a.annotation for a in every] + [node.returns]
        elif isinstance(node, ast.AnnAssign):
            annotations = [node.annotation]
        for annotation in annotations:
            if annotation is not None:
                inside.update(id(n) for n in ast.walk(annotation))
    return inside


def test_source_is_python_3_8_and_stdlib_only() -> None:
    source = SCRIPT.read_text()
    tree = ast.parse(source, feature_version=(3, 8))  # grammar: no match, no parenthesized with, ...
    assert any(
        isinstance(node, ast.ImportFrom) and node.module == "__future__" and node.names[0].name == "annotations"
        for node in tree.body
    ), "annotations must not be evaluated at run time (PEP 604/585 forms in them are 3.10/3.9)"
    annotated = _annotation_nodes(tree)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                top = name.split(".")[0]
                assert top == "__future__" or top in sys.stdlib_module_names, f"{name} is not in the standard library"
                assert top not in NEWER_MODULES, f"{name} is newer than Python 3.8"
        if isinstance(node, ast.Attribute):
            assert node.attr not in NEWER_ATTRIBUTES, f"line {node.lineno}: .{node.attr} is newer than Python 3.8"
        if id(node) in annotated:
            continue
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
            assert node.value.id not in GENERIC_BUILTINS, f"line {node.lineno}: {node.value.id}[...] needs 3.9"
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            for side in (node.left, node.right):
                assert not (isinstance(side, ast.Constant) and side.value is None), f"line {node.lineno}: X | None"
                assert not isinstance(side, ast.Dict), f"line {node.lineno}: dict | dict needs 3.9"
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") in {"dataclass", "zip"}:
            newer = {k.arg for k in node.keywords} & {"kw_only", "slots", "match_args", "strict"}
            assert not newer, f"line {node.lineno}: {newer} needs 3.10"
    compile(source, str(SCRIPT), "exec")


def test_home_relative_mounts_go_to_the_given_home(tmp_path: Path) -> None:
    secret = tmp_path / "kaggle.json"
    secret.write_text("{}")
    root, home = tmp_path / "root", tmp_path / "home" / "ubuntu"
    with pack_mounts({"~/.kaggle/kaggle.json": secret, "/data/x": secret}) as packed:
        lines = t.place_mounts(str(packed.path), str(root), str(home))
        with pytest.raises(t.TransferError, match="no home directory"):
            t.place_mounts(str(packed.path), str(root))
    assert lines == [f"placed {root}/data/x (file)", f"placed {home}/.kaggle/kaggle.json (file)"]
    assert (home / ".kaggle" / "kaggle.json").read_text() == "{}"
