#!/usr/bin/env python3
"""ec2jobs_transfer: a job instance's bytes in and out of the control plane's S3 bucket.

The job wrapper (root) runs it on the instance:

    python3 ec2jobs_transfer.py --grants FILE get KEY DEST
    python3 ec2jobs_transfer.py --grants FILE extract KEY DEST_DIR
    python3 ec2jobs_transfer.py --grants FILE mounts KEY ROOT
    python3 ec2jobs_transfer.py --grants FILE sync-up LOCAL_DIR PREFIX [--state FILE]
    python3 ec2jobs_transfer.py --grants FILE sync-down PREFIX LOCAL_DIR [--from-prefix FULL_PREFIX] [--state FILE]

One file, standard library only, Python 3.8 or newer: a plain Ubuntu AMI has python3 but no AWS SDK and no aws
CLI, so the script signs its own requests with AWS Signature Version 4 (hmac/hashlib). File bodies are sent as
UNSIGNED-PAYLOAD (streamed from disk, never held in memory); requests without a body, or with a small in-memory
one, sign the body's SHA-256.

The grants file (written by the relay over SSH, root's, rewritten before the credentials expire) is JSON:
    {"endpoint_url": "https://s3.us-east-1.amazonaws.com", "addressing": "virtual" | "path",
     "region": "us-east-1", "bucket": "...", "job_prefix": "teams/T/jobs/J/",
     "credentials": {"access_key_id": "...", "secret_access_key": "...", "session_token": "...",
                     "expiration": "2026-12-02T10:00:00Z"}}
It is read again before every request, so a refreshed file takes effect at the next request.

Large files move over several connections at once (CONCURRENCY): a file over MULTIPART_THRESHOLD is uploaded in
PART_SIZE parts, several in flight; a download's first GET asks for the first RANGE_THRESHOLD bytes (all of a
smaller object), and the rest of a larger one follows as ranges written at their offsets (S3.fetch). Requests reuse
kept-alive connections.

Every request is tried up to 6 times (5 retries, exponential backoff with jitter, a new connection each time) on
connection errors, timeouts, HTTP 429/500/502/503/504 and S3's SlowDown / InternalError / RequestTimeout. An
ExpiredToken, InvalidToken, TokenRefreshRequired, InvalidAccessKeyId or AccessDenied answer makes it read the
grants file once more: with new credentials in it the request is sent again, otherwise the command fails.

Exit status 0 on success; on failure 1 (2 for a usage error) and ONE line on stderr naming what failed and why.
Nothing printed ever holds a credential, a signature or a URL query string.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import http.client
import ipaddress
import json
import os
import random
import re
import signal
import socket
import ssl
import stat
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where they are used: a `get` or a `sync-up` never loads them (process start time)
    import tarfile
    import xml.etree.ElementTree as ElementTree

MiB = 1024 * 1024
PART_SIZE = 8 * MiB  # multipart part size (grown for files of more than 10,000 parts)
MULTIPART_THRESHOLD = 32 * MiB  # files larger than this are uploaded in parts (below: one PUT costs less)
CONCURRENCY = 8  # parts of one upload, or ranges of one download, in flight
RANGE_THRESHOLD = 16 * MiB  # the first GET of a download asks for this many bytes: all of a smaller object
RANGE_SIZE = 8 * MiB  # the other ranges: at least this long ...
MAX_RANGE_SIZE = 64 * MiB  # ... and at most this long (range_size)
MAX_PARTS = 10000  # S3's limit per upload
MAX_KEY_BYTES = 1024  # S3's limit for a key (UTF-8)
ATTEMPTS = 6  # the first try and 5 retries
BACKOFF_BASE = 1.0  # seconds before the first retry (then doubling), with jitter
BACKOFF_CAP = 20.0
TIMEOUT = 60.0  # seconds for connecting and for each read/write on the socket
CHUNK = MiB
USER_AGENT = "ec2jobs-transfer/1"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
SIGV4_TIME = "%Y%m%dT%H%M%SZ"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
RETRY_CODES = frozenset({"SlowDown", "InternalError", "RequestTimeout", "ServiceUnavailable", "Throttling"})
AUTH_CODES = frozenset({"ExpiredToken", "InvalidToken", "TokenRefreshRequired", "InvalidAccessKeyId", "AccessDenied"})
MANIFEST_NAME = "manifest.json"
MOUNTS_DIR = "mounts"
MANIFEST_FORMAT = 1
STATE_FORMAT = 1
STATE_SAVE_SECONDS = 30.0
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_sleep = time.sleep  # tests replace it


class TransferError(Exception):
    """A failure to report as the command's one stderr line (never holds a secret)."""


class _Retryable(Exception):
    """A transient failure: worth another attempt."""


class _AuthFailure(Exception):
    """S3 refused the credentials (expired, unknown or not allowed)."""


class _ServiceError(Exception):
    """S3 answered with an error that another attempt would not change (NoSuchKey, ...)."""


class _LocalError(Exception):
    """Reading or writing a local file failed in the middle of a request: not retried."""


class _Changed(Exception):
    """HTTP 412 to If-Match, or another size: the object was replaced while it was being downloaded."""


class _Unsatisfiable(Exception):
    """HTTP 416 to a ranged GET: the object has no byte 0 (it is empty)."""


class _Cancelled(Exception):
    """A worker thread's request not sent: another part of the same transfer failed."""


class Terminated(BaseException):
    """SIGTERM arrived: unwind (saving the sync state, aborting an open multipart upload) and exit."""


class FileChanged(Exception):
    """A file being uploaded got shorter than it was when the upload started."""


# -- grants ---------------------------------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Grants:
    """A parsed grants file (module doc). repr never shows the secret key or the session token."""

    scheme: str
    host: str  # the endpoint's host name (no bucket)
    port: int | None
    addressing: str  # "virtual" | "path"
    region: str
    bucket: str
    job_prefix: str
    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str = field(repr=False)
    expiration: str

    @classmethod
    def load(cls, path: str) -> Grants:
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except OSError as error:
            raise TransferError(f"cannot read the grants file {path}: {error.strerror or error}") from None
        except ValueError:
            raise TransferError(f"the grants file {path} is not valid JSON") from None
        return cls.parse(data, path)

    @classmethod
    def parse(cls, data: Any, source: str = "grants") -> Grants:
        def text(container: Any, name: str, label: str, required: bool = True) -> str:
            value = container.get(name) if isinstance(container, dict) else None
            if value is None and not required:
                return ""
            if not isinstance(value, str) or (required and not value):
                raise TransferError(f"{source}: {label} is missing or not a string")
            return value

        if not isinstance(data, dict):
            raise TransferError(f"{source}: not a JSON object")
        credentials = data.get("credentials")
        if not isinstance(credentials, dict):
            raise TransferError(f"{source}: credentials is missing or not an object")
        endpoint = urllib.parse.urlsplit(text(data, "endpoint_url", "endpoint_url"))
        host = endpoint.hostname or ""
        if endpoint.scheme not in ("http", "https") or not host or endpoint.username or endpoint.password:
            raise TransferError(f"{source}: endpoint_url must be http(s)://host[:port]")
        if endpoint.path not in ("", "/") or endpoint.query or endpoint.fragment:
            raise TransferError(f"{source}: endpoint_url must not have a path or a query")
        if endpoint.scheme == "http" and not is_loopback(host):
            raise TransferError(f"{source}: plain http is allowed only to a loopback endpoint, not {host}")
        try:
            port = endpoint.port
        except ValueError:
            raise TransferError(f"{source}: endpoint_url has an invalid port") from None
        addressing = text(data, "addressing", "addressing")
        if addressing not in ("virtual", "path"):
            raise TransferError(f"{source}: addressing must be 'virtual' or 'path', not {addressing!r}")
        bucket = text(data, "bucket", "bucket")
        if not _BUCKET.fullmatch(bucket) or ".." in bucket:
            raise TransferError(f"{source}: {bucket!r} is not a valid bucket name")
        if addressing == "virtual":
            if is_loopback(host) or _is_ip(host):
                raise TransferError(f"{source}: virtual-hosted addressing needs a DNS endpoint; use 'path'")
            if "." in bucket and endpoint.scheme == "https":
                raise TransferError(f"{source}: bucket {bucket} has a '.', which TLS cannot verify virtual-hosted")
        job_prefix = text(data, "job_prefix", "job_prefix")
        check_prefix(job_prefix, f"{source}: job_prefix")
        region = text(data, "region", "region")
        if not re.fullmatch(r"[a-z0-9-]+", region):
            raise TransferError(f"{source}: {region!r} is not a region name")
        return cls(
            scheme=endpoint.scheme,
            host=host,
            port=port,
            addressing=addressing,
            region=region,
            bucket=bucket,
            job_prefix=job_prefix,
            access_key_id=text(credentials, "access_key_id", "credentials.access_key_id"),
            secret_access_key=text(credentials, "secret_access_key", "credentials.secret_access_key"),
            session_token=text(credentials, "session_token", "credentials.session_token", required=False),
            expiration=text(credentials, "expiration", "credentials.expiration", required=False),
        )

    @property
    def identity(self) -> tuple[str, str]:
        """What changes when the relay hands out new credentials."""
        return (self.access_key_id, self.session_token)

    def secrets(self) -> list[str]:
        return [s for s in (self.access_key_id, self.secret_access_key, self.session_token) if len(s) >= 4]

    def connect_host(self) -> str:
        return f"{self.bucket}.{self.host}" if self.addressing == "virtual" else self.host

    def host_header(self) -> str:
        host = self.connect_host()
        if ":" in host:
            host = f"[{host}]"
        default = 443 if self.scheme == "https" else 80
        return host if self.port in (None, default) else f"{host}:{self.port}"

    def path(self, key: str | None) -> str:
        """The URI-encoded request path for `key` (None: the bucket itself, for listing)."""
        encoded = "" if key is None else "/" + uri_encode(key)
        if self.addressing == "path":
            return f"/{self.bucket}{encoded}"
        return encoded or "/"

    def expiry_note(self) -> str:
        if not self.expiration:
            return ""
        try:
            import calendar

            expires = calendar.timegm(time.strptime(self.expiration, "%Y-%m-%dT%H:%M:%SZ"))
        except ValueError:
            return ""
        if expires <= time.time():
            return f" (the credentials in the grants file expired at {self.expiration}: the relay did not refresh it)"
        return ""


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def check_prefix(prefix: str, label: str) -> str:
    """A key prefix naming a folder: safe segments, ending with '/'."""
    segments = prefix[:-1].split("/") if prefix.endswith("/") else None
    if not segments or any(not _SEGMENT.fullmatch(s) or s in (".", "..") for s in segments):
        raise TransferError(
            f"{label} {prefix!r} must be folder segments of letters, digits, '.', '_', '-' ending in '/'"
        )
    return prefix


def check_area(area: str) -> str:
    """A job storage area such as `outputs` or `checkpoints` (a relative folder, no '..')."""
    check_prefix(area.strip("/") + "/", "PREFIX")
    return area.strip("/")


# -- Signature Version 4 --------------------------------------------------------------------------------------------


def uri_encode(key: str) -> str:
    """S3's canonical URI encoding of a key: every byte of its UTF-8 but A-Z a-z 0-9 - _ . ~ is percent-encoded,
    '/' is kept, and nothing is normalized or encoded twice."""
    return urllib.parse.quote(key, safe="/~")


def canonical_query(params: Sequence[tuple[str, str]]) -> str:
    pairs = sorted((urllib.parse.quote(k, safe="-_.~"), urllib.parse.quote(v, safe="-_.~")) for k, v in params)
    return "&".join(f"{k}={v}" for k, v in pairs)


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).digest()


def authorization(
    method: str,
    path: str,
    query: str,
    headers: dict[str, str],
    *,
    access_key_id: str,
    secret_access_key: str,
    region: str,
    amz_date: str,
    service: str = "s3",
) -> str:
    """The SigV4 Authorization header value. `path` is URI-encoded already, `query` canonical; every header in
    `headers` is signed (they must include host, x-amz-date and x-amz-content-sha256)."""
    canonical = {name.lower(): " ".join(value.split()) for name, value in headers.items()}
    signed = ";".join(sorted(canonical))
    payload = canonical["x-amz-content-sha256"]
    request = "\n".join(
        [
            method,
            path,
            query,
            "".join(f"{name}:{canonical[name]}\n" for name in sorted(canonical)),
            signed,
            payload,
        ]
    )
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    string_to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(request.encode("utf-8")).hexdigest()]
    )
    key = _hmac(("AWS4" + secret_access_key).encode("utf-8"), amz_date[:8])
    for part in (region, service, "aws4_request"):
        key = _hmac(key, part)
    signature = hmac.new(key, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
    return f"AWS4-HMAC-SHA256 Credential={access_key_id}/{scope}, SignedHeaders={signed}, Signature={signature}"


def prepare_request(
    grants: Grants,
    method: str,
    key: str | None,
    params: Sequence[tuple[str, str]],
    payload_hash: str,
    now: float,
    extra_headers: Sequence[tuple[str, str]] = (),
) -> tuple[str, dict[str, str]]:
    """(path?query, headers with Authorization) for one request signed at `now` (Unix seconds); `extra_headers`
    (Range, If-Match) are signed too."""
    path = grants.path(key)
    query = canonical_query(params)
    amz_date = time.strftime(SIGV4_TIME, time.gmtime(now))
    headers = {"Host": grants.host_header(), "X-Amz-Date": amz_date, "X-Amz-Content-SHA256": payload_hash}
    headers.update(extra_headers)
    if grants.session_token:
        headers["X-Amz-Security-Token"] = grants.session_token
    headers["Authorization"] = authorization(
        method,
        path,
        query,
        headers,
        access_key_id=grants.access_key_id,
        secret_access_key=grants.secret_access_key,
        region=grants.region,
        amz_date=amz_date,
    )
    return (f"{path}?{query}" if query else path), headers


# -- HTTP -----------------------------------------------------------------------------------------------------------


class FileSlice:
    """A request body: `length` bytes of the file at `path` from `offset`, opened afresh for every attempt.

    With `within` (a real directory path), what is opened must be a regular file inside it: sync-up reads as root
    a tree the job (another user) can change at any time, so a file swapped for a symlink to a root-only file, or
    for a FIFO, after it was scanned is refused (FileChanged) rather than read."""

    def __init__(self, path: str, offset: int, length: int, within: str | None = None) -> None:
        self.path = path
        self.offset = offset
        self.length = length
        self.within = within

    def open(self) -> _SliceReader:
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)  # a FIFO must not block
        try:
            descriptor = os.open(self.path, flags)
        except FileNotFoundError:
            raise FileChanged(f"{self.path} disappeared before it was uploaded") from None
        except OSError as error:
            raise _LocalError(f"cannot read {self.path}: {error.strerror or error}") from None
        handle = os.fdopen(descriptor, "rb")
        try:
            self._check(descriptor)
            handle.seek(self.offset)
        except OSError as error:
            handle.close()
            raise _LocalError(f"cannot read {self.path}: {error.strerror or error}") from None
        except BaseException:
            handle.close()
            raise
        return _SliceReader(handle, self.length, self.path)

    def _check(self, descriptor: int) -> None:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise FileChanged(f"{self.path} is no longer a regular file")
        if self.within is not None and not _within(_opened_path(descriptor, self.path), self.within):
            raise FileChanged(f"{self.path} now leads outside {self.within}")


def _opened_path(descriptor: int, path: str) -> str:
    """Where an open file really is: the kernel's answer (/proc/self/fd) when there is one."""
    try:
        return os.readlink(f"/proc/self/fd/{descriptor}")
    except OSError:
        return os.path.realpath(path)


class _SliceReader:
    """What http.client reads the body from: exactly `remaining` bytes, or FileChanged if the file is shorter."""

    def __init__(self, handle: IO[bytes], remaining: int, path: str) -> None:
        self._handle = handle
        self._remaining = remaining
        self._path = path

    def read(self, size: int = -1) -> bytes:
        if self._remaining <= 0:
            return b""
        wanted = self._remaining if size < 0 else min(size, self._remaining)
        try:
            data = self._handle.read(wanted)
        except OSError as error:
            raise _LocalError(f"cannot read {self._path}: {error.strerror or error}") from None
        if not data:
            raise FileChanged(f"{self._path} got shorter while it was being uploaded")
        self._remaining -= len(data)
        return data

    def close(self) -> None:
        self._handle.close()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    data: bytes
    value: Any = None  # what `consume` returned


def _local_name(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


class NotXml(Exception):
    """An answer that should have been XML and is not."""


def parse_xml(data: bytes) -> ElementTree.Element:
    """NotXml when `data` does not parse."""
    import xml.etree.ElementTree as ElementTree

    # only S3's own answers, over TLS (or from the loopback emulator); ElementTree never fetches external entities
    try:
        return ElementTree.fromstring(data)  # noqa: S314
    except ElementTree.ParseError:
        raise NotXml() from None


def _child_text(element: ElementTree.Element, name: str) -> str:
    for child in element:
        if _local_name(child.tag) == name:
            return child.text or ""
    return ""


def error_fields(data: bytes) -> tuple[str, str]:
    """(Code, Message) of an S3 error document; ("", "") when there is none."""
    try:
        root = parse_xml(data)
    except NotXml:
        return "", ""
    if _local_name(root.tag) != "Error":
        return "", ""
    return _child_text(root, "Code"), " ".join(_child_text(root, "Message").split())[:300]


def _backoff(attempt: int) -> float:
    """Seconds to wait before retry number `attempt` (1-based): half fixed, half random ("equal jitter")."""
    ceiling = min(BACKOFF_CAP, BACKOFF_BASE * float(2 ** (attempt - 1)))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def _describe(error: BaseException) -> str:
    if isinstance(error, _Retryable):
        return str(error)
    if isinstance(error, TimeoutError) or type(error).__name__ == "timeout":
        return "timed out"
    if isinstance(error, OSError):
        return f"{type(error).__name__}: {error.strerror or error}"
    return f"{type(error).__name__}: {error}"


class S3:
    """Signed S3 requests with the grants file's credentials, re-read before every request (module doc). Safe to
    use from several threads: each request takes a kept-alive connection of its own from a small pool."""

    def __init__(self, grants_path: str) -> None:
        self.grants_path = grants_path
        self._lock = threading.Lock()
        self._idle: dict[tuple[str, str, int | None], list[http.client.HTTPConnection]] = {}
        self._busy: set[http.client.HTTPConnection] = set()
        self._local = threading.local()  # .cancel: the Event that stops a worker thread's requests

    def grants(self) -> Grants:
        return Grants.load(self.grants_path)

    def close(self) -> None:
        """Close every idle connection (the end of the command)."""
        with self._lock:
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.close()

    def _take(self, grants: Grants, fresh: bool) -> tuple[http.client.HTTPConnection, tuple[str, str, int | None]]:
        """An idle connection to the grants' endpoint (unless `fresh`), or a new one; marked busy."""
        key = (grants.scheme, grants.connect_host(), grants.port)
        connection = None
        with self._lock:
            idle = self._idle.get(key)
            if idle and not fresh:
                connection = idle.pop()
        if connection is None:
            if grants.scheme == "https":
                context = ssl.create_default_context()
                context.minimum_version = ssl.TLSVersion.TLSv1_2
                connection = http.client.HTTPSConnection(
                    key[1], grants.port, timeout=TIMEOUT, context=context, blocksize=CHUNK
                )
            else:
                connection = http.client.HTTPConnection(key[1], grants.port, timeout=TIMEOUT, blocksize=CHUNK)
        with self._lock:
            self._busy.add(connection)
        return connection, key

    def _release(
        self, connection: http.client.HTTPConnection, key: tuple[str, str, int | None], reusable: bool
    ) -> None:
        with self._lock:
            self._busy.discard(connection)
            if reusable:
                self._idle.setdefault(key, []).append(connection)
        if not reusable:
            connection.close()

    def _interrupt(self) -> None:
        """Cut off every request in flight (their threads fail at once instead of waiting for the network)."""
        with self._lock:
            busy = list(self._busy)
        for connection in busy:
            sock = connection.sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def request(
        self,
        method: str,
        key: str | None,
        *,
        what: str,
        params: Sequence[tuple[str, str]] = (),
        headers: Sequence[tuple[str, str]] = (),
        body: bytes | FileSlice | None = None,
        consume: Callable[[http.client.HTTPResponse], Any] | None = None,
        error_in_body: bool = False,
        attempts: int = ATTEMPTS,
    ) -> Reply:
        """Send one request with retries (module doc). `headers` are sent and signed too (Range, If-Match).
        `consume` reads a 2xx response's body (it runs again on a retry, so it must start over); `error_in_body`
        checks a 2xx body for an S3 <Error> (CompleteMultipartUpload answers 200 and may still fail). TransferError
        when it cannot succeed; _Changed on HTTP 412 and _Unsatisfiable on HTTP 416, for the caller to handle."""
        attempt = 0
        reread = False
        cancel = getattr(self._local, "cancel", None)
        while True:
            if cancel is not None and cancel.is_set():
                raise _Cancelled()
            grants = self.grants()
            try:
                return self._attempt(grants, method, key, params, headers, body, consume, error_in_body, attempt > 0)
            except _AuthFailure as failure:
                if not reread:
                    reread = True
                    if self.grants().identity != grants.identity:
                        continue  # the relay refreshed the credentials: try them
                raise TransferError(f"{what}: {failure}{grants.expiry_note()}") from None
            except _ServiceError as error:
                raise TransferError(f"{what}: {error}") from None
            except ssl.SSLCertVerificationError as error:
                raise TransferError(f"{what}: TLS certificate check failed: {error.verify_message}") from None
            except (_Retryable, OSError, http.client.HTTPException) as error:
                attempt += 1  # the next attempt opens a new connection (and DNS lookup), as S3 advises
                if attempt >= attempts or (cancel is not None and cancel.is_set()):
                    raise TransferError(f"{what}: failed {attempt} times, last: {_describe(error)}") from None
                _sleep(_backoff(attempt))

    def _attempt(
        self,
        grants: Grants,
        method: str,
        key: str | None,
        params: Sequence[tuple[str, str]],
        extra_headers: Sequence[tuple[str, str]],
        body: bytes | FileSlice | None,
        consume: Callable[[http.client.HTTPResponse], Any] | None,
        error_in_body: bool,
        fresh: bool,
    ) -> Reply:
        if isinstance(body, FileSlice):
            payload_hash, length = UNSIGNED_PAYLOAD, body.length
        elif body is not None:
            payload_hash, length = hashlib.sha256(body).hexdigest(), len(body)
        else:
            payload_hash, length = EMPTY_SHA256, 0
        target, headers = prepare_request(grants, method, key, params, payload_hash, time.time(), extra_headers)
        headers["User-Agent"] = USER_AGENT
        if body is not None or method in ("PUT", "POST"):
            headers["Content-Length"] = str(length)
        connection, pool_key = self._take(grants, fresh)
        reusable = False
        try:
            response = self._send(connection, method, target, headers, body)
            answer = {name.lower(): value for name, value in response.getheaders()}
            if 200 <= response.status < 300 and consume is not None:
                value = consume(response)
                reusable = response.isclosed() and not response.will_close
                return Reply(response.status, answer, b"", value)
            data = response.read()
            reusable = not response.will_close
        finally:
            self._release(connection, pool_key, reusable)
        status = response.status
        code, message = error_fields(data) if (status >= 300 or error_in_body) else ("", "")
        if 200 <= status < 300 and not code:
            return Reply(status, answer, data)
        described = f"HTTP {status}" + (f" {code}" if code else "") + (f": {message}" if message else "")
        if status in RETRY_STATUSES or code in RETRY_CODES:
            raise _Retryable(described)
        if code in AUTH_CODES or (status == 403 and not code):
            raise _AuthFailure(described)
        if status == 412:
            raise _Changed(described)
        if status == 416:
            raise _Unsatisfiable(described)
        raise _ServiceError(described)

    def _send(
        self,
        connection: http.client.HTTPConnection,
        method: str,
        target: str,
        headers: dict[str, str],
        body: bytes | FileSlice | None,
    ) -> http.client.HTTPResponse:
        """Send the request and read the answer's head. A kept-alive connection the server closed meanwhile is
        replaced once by a new one, without counting as an attempt."""
        reused = connection.sock is not None
        while True:
            self._ready(connection)
            reader = body.open() if isinstance(body, FileSlice) else None
            content: _SliceReader | bytes | None = (
                reader if reader is not None else (body if isinstance(body, bytes) else None)
            )
            try:
                connection.request(method, target, body=content, headers=headers)
                return connection.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                if not reused:
                    raise
                connection.close()  # the same object connects afresh on the next request
                reused = False
            finally:
                if reader is not None:
                    reader.close()

    def _ready(self, connection: http.client.HTTPConnection) -> None:
        """Connect now rather than inside request(), then give up if this worker's transfer has been stopped: a
        connection made after _interrupt() looked at the busy ones would otherwise wait for the network."""
        if connection.sock is None:
            connection.connect()
        cancel = getattr(self._local, "cancel", None)
        if cancel is not None and cancel.is_set():
            raise _Cancelled()

    # -- threads ------------------------------------------------------------------------------------------------

    def start_workers(self, jobs: Sequence[Callable[[], Any]], workers: int) -> Workers:
        """Run `jobs` on up to `workers` threads (see Workers); `join()` for their results."""
        return Workers(self, jobs, workers)

    # -- operations ---------------------------------------------------------------------------------------------

    def download(self, key: str, dest: str) -> int:
        """GetObject `key` to `dest` (a temporary file beside it, then renamed); the size."""
        dest = os.path.abspath(dest)
        if os.path.isdir(dest):
            raise TransferError(f"download {key}: {dest} is a directory")
        parent = os.path.dirname(dest)
        try:
            os.makedirs(parent, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=parent, prefix=f".{os.path.basename(dest)}.", suffix=".part")
            os.close(handle)
        except OSError as error:
            raise TransferError(f"download {key}: cannot write in {parent}: {error.strerror or error}") from None
        try:
            size = self.fetch(key, temporary)
            os.chmod(temporary, 0o666 & ~_umask())
            os.replace(temporary, dest)
        except OSError as error:
            raise TransferError(f"download {key}: cannot write {dest}: {error.strerror or error}") from None
        finally:
            if os.path.lexists(temporary):
                os.unlink(temporary)
        return size

    def download_temporary(self, key: str) -> str:
        """GetObject `key` to a new temporary file (TMPDIR); the caller removes it."""
        handle, temporary = tempfile.mkstemp(prefix="ec2jobs-transfer-", suffix=".tar.gz")
        os.close(handle)
        try:
            self.fetch(key, temporary)
        except BaseException:
            os.unlink(temporary)
            raise
        return temporary

    def fetch(self, key: str, path: str) -> int:
        """GetObject `key` into the file `path` (truncated first); the size. The first GET asks for the first
        RANGE_THRESHOLD bytes: that is the whole of a smaller object. For a larger one, as soon as that answer's
        head tells the size, the rest follows as ranges of `range_size(size)`, CONCURRENCY at a time (the first
        included), each written at its offset and retried on its own, each sent with If-Match: the first answer's
        ETag. An object replaced meanwhile (HTTP 412) is fetched again from the start, up to 3 times."""
        for round_ in range(1, 4):
            try:
                return self._fetch_once(key, path)
            except _Changed:
                if round_ == 3:
                    raise TransferError(
                        f"download {key}: the object changed while it was being downloaded, 3 times"
                    ) from None
            except _LocalError as error:
                raise TransferError(f"download {key}: {error}") from None
        raise AssertionError("unreachable")

    def _fetch_once(self, key: str, path: str) -> int:
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o600)
        except OSError as error:
            raise _LocalError(f"cannot write {path}: {error.strerror or error}") from None
        fetch = _RangedFetch(self, key, descriptor)
        try:
            try:
                fetch.first()
            except _Unsatisfiable:  # no byte 0: an empty object (S3 answers 416 to any range of one)
                return int(self.request("GET", key, what=f"download {key}", consume=fetch.whole).value)
            return fetch.rest()
        finally:
            fetch.stop()
            os.close(descriptor)

    def upload_file(self, path: str, key: str, size: int, within: str | None = None) -> None:
        """PutObject, or a multipart upload for files over MULTIPART_THRESHOLD. FileChanged if the file shrank,
        vanished, or (with `within`) no longer is a regular file inside that directory (FileSlice)."""
        try:
            if size <= MULTIPART_THRESHOLD:
                self.request("PUT", key, what=f"upload {key}", body=FileSlice(path, 0, size, within))
            else:
                self._multipart(path, key, size, within)
        except _LocalError as error:
            raise TransferError(f"upload {key}: {error}") from None

    def _multipart(self, path: str, key: str, size: int, within: str | None) -> None:
        """Parts of multipart_part_size(size), CONCURRENCY at a time (each retried on its own), completed in part
        order; aborted on any failure (also SIGTERM)."""
        part_size = multipart_part_size(size)
        created = self.request("POST", key, what=f"start upload {key}", params=[("uploads", "")])
        try:
            upload_id = _child_text(parse_xml(created.data), "UploadId")
        except NotXml:
            upload_id = ""
        if not upload_id:
            raise TransferError(f"start upload {key}: no UploadId in the answer")

        def part(number: int, offset: int) -> Callable[[], str]:
            def send() -> str:
                what = f"upload {key} part {number}"
                reply = self.request(
                    "PUT",
                    key,
                    what=what,
                    params=[("partNumber", str(number)), ("uploadId", upload_id)],
                    body=FileSlice(path, offset, min(part_size, size - offset), within),
                )
                return _etag(reply, what)

            return send

        try:
            jobs = [part(number, offset) for number, offset in enumerate(range(0, size, part_size), start=1)]
            etags = self.start_workers(jobs, CONCURRENCY).join()
            document = "".join(
                f"<Part><PartNumber>{n}</PartNumber><ETag>{_xml_escape(etag)}</ETag></Part>"
                for n, etag in enumerate(etags, start=1)
            )
            body = f'<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/">{document}'
            body += "</CompleteMultipartUpload>"
            self.request(
                "POST",
                key,
                what=f"complete upload {key}",
                params=[("uploadId", upload_id)],
                body=body.encode("utf-8"),
                error_in_body=True,
            )
        except BaseException:
            with contextlib.suppress(TransferError):  # else the bucket's lifecycle rule aborts it after 2 days
                self.request("DELETE", key, what=f"abort upload {key}", params=[("uploadId", upload_id)], attempts=2)
            raise

    def list_objects(self, prefix: str) -> Iterator[tuple[str, int]]:
        """(key, size) of every object under `prefix` (ListObjectsV2, all pages)."""
        token = ""
        while True:
            params = [("list-type", "2"), ("prefix", prefix), ("encoding-type", "url")]
            if token:
                params.append(("continuation-token", token))
            reply = self.request("GET", None, what=f"list {prefix}", params=params)
            try:
                root = parse_xml(reply.data)
            except NotXml:
                raise TransferError(f"list {prefix}: the answer is not XML") from None
            for contents in root:
                if _local_name(contents.tag) == "Contents":
                    key = urllib.parse.unquote_plus(_child_text(contents, "Key"))
                    yield key, int(_child_text(contents, "Size") or 0)
            if _child_text(root, "IsTruncated") != "true":
                return
            token = _child_text(root, "NextContinuationToken")
            if not token:
                raise TransferError(f"list {prefix}: a truncated page without a continuation token")


class Workers:
    """`jobs` run on up to `workers` threads, started at once; `join()` waits and returns their results in order.
    The first failure stops the rest (a job not started is skipped, a worker's next request or retry is not sent)
    and is what `join()` raises. An exception in the joining thread itself (SIGTERM, Ctrl-C) cuts off the requests
    in flight, waits for the threads and is raised."""

    def __init__(self, s3: S3, jobs: Sequence[Callable[[], Any]], workers: int) -> None:
        self._s3 = s3
        self._jobs = list(jobs)
        self._results: list[Any] = [None] * len(self._jobs)
        self._failures: list[BaseException] = []
        self._next = 0
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        count = max(0, min(workers, len(self._jobs)))
        self._threads = [
            threading.Thread(target=self._work, name=f"ec2jobs-transfer-{n}", daemon=True) for n in range(count)
        ]
        for thread in self._threads:
            thread.start()

    def _work(self) -> None:
        self._s3._local.cancel = self._cancel
        while not self._cancel.is_set():
            with self._lock:
                index = self._next
                if index >= len(self._jobs):
                    return
                self._next += 1
            try:
                self._results[index] = self._jobs[index]()
            except BaseException as error:  # noqa: BLE001 - handed to join()
                with self._lock:
                    self._failures.append(error)
                self._cancel.set()
                return

    def stop(self) -> None:
        """No further job or request; requests in flight cut off; returns when every thread has ended."""
        if any(thread.is_alive() for thread in self._threads):
            self._cancel.set()
            self._s3._interrupt()
        for thread in self._threads:
            thread.join()

    def join(self) -> list[Any]:
        try:
            for thread in self._threads:
                thread.join()
        except BaseException:
            self.stop()
            raise
        with self._lock:
            failures = list(self._failures)
        if failures:  # the first failure, not one that only followed from it
            raise next((f for f in failures if not isinstance(f, _Cancelled)), failures[0])
        return self._results


class _RangedFetch:
    """One object into an open file (S3.fetch): the first range, then the rest on worker threads."""

    def __init__(self, s3: S3, key: str, descriptor: int) -> None:
        self.s3 = s3
        self.key = key
        self.descriptor = descriptor
        self.size: int | None = None
        self.etag = ""
        self.workers: Workers | None = None

    def first(self) -> None:
        """GET bytes 0..RANGE_THRESHOLD-1 (all of a smaller object); the other ranges start from its answer's head."""
        self.s3.request(
            "GET",
            self.key,
            what=f"download {self.key}",
            headers=[("Range", f"bytes=0-{RANGE_THRESHOLD - 1}")],
            consume=self._first_answer,
        )

    def rest(self) -> int:
        """Wait for the other ranges; the object's size."""
        if self.workers is not None:
            self.workers.join()
        assert self.size is not None
        return self.size

    def stop(self) -> None:
        if self.workers is not None:
            self.workers.stop()

    def whole(self, response: http.client.HTTPResponse) -> int:
        """A 2xx answer holding the whole object, written from byte 0; its size."""
        received = _write_body(response, self.descriptor, 0)
        try:
            os.ftruncate(self.descriptor, received)
        except OSError as error:
            raise _LocalError(f"cannot write the download of {self.key}: {error.strerror or error}") from None
        self.size = received
        return received

    def _first_answer(self, response: http.client.HTTPResponse) -> int:
        if response.status != 206:  # a server that ignores Range sends the whole object
            if self.workers is not None:
                raise _Changed(f"HTTP {response.status} instead of a range")
            return self.whole(response)
        first, last, total = _content_range(response, f"download {self.key}")
        if first != 0 or last != min(total, RANGE_THRESHOLD) - 1:
            raise TransferError(f"download {self.key}: asked for bytes 0-{RANGE_THRESHOLD - 1}, got {first}-{last}")
        etag = response.getheader("ETag") or ""
        if self.size is None:
            self.size, self.etag = total, etag
            try:
                os.ftruncate(self.descriptor, total)
            except OSError as error:
                raise _LocalError(f"cannot write the download of {self.key}: {error.strerror or error}") from None
            step = range_size(total)
            jobs = [self._range_job(start, min(start + step, total)) for start in range(last + 1, total, step)]
            if jobs:
                self.workers = self.s3.start_workers(jobs, CONCURRENCY - 1)  # this thread streams the first range
        elif (total, etag) != (self.size, self.etag):
            raise _Changed("another version of the object answered")
        return _write_body(response, self.descriptor, 0, last + 1)

    def _range_job(self, start: int, end: int) -> Callable[[], int]:
        headers = [("Range", f"bytes={start}-{end - 1}")] + ([("If-Match", self.etag)] if self.etag else [])

        def answer(response: http.client.HTTPResponse) -> int:
            if response.status != 206:
                raise TransferError(f"download {self.key}: HTTP {response.status} to a ranged GET")
            first, last, total = _content_range(response, f"download {self.key}")
            if total != self.size:
                raise _Changed("the object's size changed")
            if (first, last) != (start, end - 1):
                raise TransferError(f"download {self.key}: asked for bytes {start}-{end - 1}, got {first}-{last}")
            return _write_body(response, self.descriptor, start, end - start)

        def job() -> int:
            what = f"download {self.key} bytes {start}-{end - 1}"
            return int(self.s3.request("GET", self.key, what=what, headers=headers, consume=answer).value)

        return job


def multipart_part_size(size: int) -> int:
    """PART_SIZE, or the smallest whole MiB that fits a larger file in MAX_PARTS parts."""
    if size <= PART_SIZE * MAX_PARTS:
        return PART_SIZE
    return -(-size // MAX_PARTS // MiB) * MiB


def range_size(size: int) -> int:
    """The length of the ranges an object of `size` bytes is downloaded in: about two per connection, in whole MiB,
    at least RANGE_SIZE and at most MAX_RANGE_SIZE."""
    wanted = -(-size // (2 * CONCURRENCY) // MiB) * MiB
    return max(RANGE_SIZE, min(MAX_RANGE_SIZE, wanted))


def _etag(reply: Reply, what: str) -> str:
    etag = reply.headers.get("etag", "")
    if not etag:
        raise TransferError(f"{what}: no ETag in the answer")
    return etag


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_body(response: http.client.HTTPResponse, descriptor: int, offset: int, expected: int | None = None) -> int:
    """Stream a response body into the open file at `offset`; the byte count. A body shorter than `expected` (or
    its Content-Length) raises IncompleteRead (retried)."""
    length = response.getheader("Content-Length")
    if expected is None and length is not None and length.isdigit():
        expected = int(length)
    received = 0
    while True:
        chunk = response.read(CHUNK)
        if not chunk:
            break
        view = memoryview(chunk)
        while view:
            try:
                written = os.pwrite(descriptor, view, offset + received)
            except OSError as error:
                raise _LocalError(f"cannot write the download: {error.strerror or error}") from None
            view = view[written:]
            received += written
    if expected is not None and received != expected:
        raise http.client.IncompleteRead(b"", expected - received)
    return received


def _content_range(response: http.client.HTTPResponse, what: str) -> tuple[int, int, int]:
    """(first byte, last byte, object size) from a 206 answer's Content-Range."""
    header = response.getheader("Content-Range") or ""
    found = _CONTENT_RANGE.fullmatch(header.strip())
    if found is None:
        raise TransferError(f"{what}: a ranged answer without a valid Content-Range")
    first, last, total = (int(value) for value in found.groups())
    return first, last, total


# -- safe extraction ------------------------------------------------------------------------------------------------


def member_path(name: str) -> str:
    """An archive member's name as a relative path ('' for the root); TransferError when it could leave the
    destination (absolute, '..', NUL)."""
    if "\x00" in name:
        raise TransferError(f"refusing archive member {name!r}: NUL in its name")
    if name.startswith("/"):
        raise TransferError(f"refusing archive member {name!r}: absolute path")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise TransferError(f"refusing archive member {name!r}: '..' in its path")
    return "/".join(parts)


def check_member(info: tarfile.TarInfo, rel: str) -> None:
    """Refuse what extraction never writes: devices, FIFOs, unknown types, links leaving the destination."""
    if info.isdev():
        raise TransferError(f"refusing archive member {info.name!r}: device or FIFO")
    if info.issym():
        target = info.linkname
        if not target or target.startswith("/"):
            raise TransferError(f"refusing archive member {info.name!r}: symlink to an absolute path")
        resolved = os.path.normpath(os.path.join(os.path.dirname(rel), target))
        if resolved == ".." or resolved.startswith("../"):
            raise TransferError(f"refusing archive member {info.name!r}: symlink pointing outside ({target!r})")
    elif info.islnk():
        member_path(info.linkname)
    elif not (info.isreg() or info.isdir()):
        raise TransferError(f"refusing archive member {info.name!r}: unsupported type {info.type!r}")


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


class Extractor:
    """Writes checked members under `root`: never through a symlink that leaves it, modes kept (permission bits
    only), files' mtimes kept, no chown."""

    def __init__(self, root: str) -> None:
        try:
            os.makedirs(root, exist_ok=True)
        except OSError as error:
            raise TransferError(f"cannot create {root}: {error.strerror or error}") from None
        self.root = os.path.abspath(root)
        self.real_root = os.path.realpath(root)
        self.files = 0
        self._dir_modes: dict[str, int] = {}

    def directory(self, rel: str) -> str:
        """The directory `rel` under root, created as needed, each step checked to stay inside."""
        path = self.root
        for part in [p for p in rel.split("/") if p]:
            path = os.path.join(path, part)
            if not os.path.lexists(path):
                os.mkdir(path, 0o700)
                self._dir_modes.setdefault(path, 0o755)
            if not _within(os.path.realpath(path), self.real_root):
                raise TransferError(f"refusing to write through {path}: it leads outside {self.root}")
            if not os.path.isdir(path):
                raise TransferError(f"cannot extract into {path}: it exists and is not a directory")
        return path

    def _free(self, path: str, name: str) -> None:
        """Make room for a new file or link at `path` (never a directory)."""
        if os.path.lexists(path):
            if os.path.isdir(path) and not os.path.islink(path):
                raise TransferError(f"cannot extract {name}: {path} is a directory")
            os.unlink(path)

    def add(self, tar: tarfile.TarFile, info: tarfile.TarInfo, rel: str) -> None:
        try:
            self._add(tar, info, rel)
        except OSError as error:
            raise TransferError(f"cannot extract {info.name}: {error.strerror or error}") from None

    def _add(self, tar: tarfile.TarFile, info: tarfile.TarInfo, rel: str) -> None:
        if info.isdir():
            path = self.directory(rel)
            if rel:
                self._dir_modes[path] = info.mode & 0o777
            return
        parent = self.directory(os.path.dirname(rel))
        path = os.path.join(parent, os.path.basename(rel))
        self._free(path, info.name)
        if info.issym():
            os.symlink(info.linkname, path)
            if not _within(os.path.realpath(path), self.real_root):
                os.unlink(path)
                raise TransferError(f"refusing archive member {info.name!r}: symlink resolving outside")
        elif info.islnk():
            source = os.path.realpath(os.path.join(self.root, member_path(info.linkname)))
            if not _within(source, self.real_root) or not os.path.isfile(source):
                raise TransferError(f"refusing archive member {info.name!r}: hard link to {info.linkname!r}")
            os.link(source, path)
        else:
            write_member(tar, info, path)
        self.files += 1

    def finish(self) -> None:
        """Directory modes last (a read-only directory must not stop its own extraction), deepest first."""
        for path in sorted(self._dir_modes, key=lambda p: p.count("/"), reverse=True):
            os.chmod(path, self._dir_modes[path])


def write_member(tar: tarfile.TarFile, info: tarfile.TarInfo, path: str) -> None:
    """A regular member's bytes to a new file at `path` (never through a symlink), with its mode and mtime."""
    source = tar.extractfile(info)
    if source is None:
        raise TransferError(f"cannot read archive member {info.name!r}")
    import shutil

    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    descriptor = os.open(path, flags, 0o600)
    with os.fdopen(descriptor, "wb") as out, source:
        shutil.copyfileobj(source, out, CHUNK)
        out.flush()
        os.fchmod(out.fileno(), info.mode & 0o777)
        os.utime(out.fileno(), (info.mtime, info.mtime))


def extract_archive(archive: str, dest: str) -> int:
    """Extract a .tar.gz into `dest` after checking every member; the number of files and links written."""
    with _open_archive(archive) as tar:
        members = [(info, member_path(info.name)) for info in tar.getmembers()]
        for info, rel in members:
            if not rel and not info.isdir():
                raise TransferError(f"refusing archive member {info.name!r}: it names the destination itself")
            check_member(info, rel)
        extractor = Extractor(dest)
        for info, rel in members:
            if rel or not info.isdir():
                extractor.add(tar, info, rel)
        extractor.finish()
        return extractor.files


def _open_archive(archive: str) -> tarfile.TarFile:
    import tarfile

    try:
        return tarfile.open(archive, "r:gz")
    except (tarfile.TarError, OSError, EOFError) as error:
        raise TransferError(f"not a readable .tar.gz: {error}") from None


def check_remote_path(remote: Any) -> str:
    """A mount destination from the manifest: absolute or under the job user's home (`~/`), no '..', not / or ~
    itself (as ec2jobs/packing.py makes them)."""
    if isinstance(remote, str) and remote.startswith("~/"):
        return "~" + check_remote_path(remote[1:])
    if not isinstance(remote, str) or not remote.startswith("/") or "\x00" in remote:
        raise TransferError(f"mounts manifest: {remote!r} is not an absolute path")
    if ".." in remote.split("/"):
        raise TransferError(f"mounts manifest: {remote!r} contains '..'")
    normalized = "/" + "/".join(part for part in remote.split("/") if part not in ("", "."))
    if normalized == "/":
        raise TransferError("mounts manifest: a mount at / itself")
    return normalized


def place_mounts(archive: str, root: str, home: str = "") -> list[str]:
    """Place each mount of a `pack_mounts` archive at root + remote_path (home + the rest for `~/...`); one line per
    mount placed."""
    with _open_archive(archive) as tar:
        members = tar.getmembers()
        if not members or members[0].name != MANIFEST_NAME or not members[0].isreg():
            raise TransferError(f"not a mounts archive: {MANIFEST_NAME} is not its first member")
        manifest = _read_manifest(tar, members[0])
        groups: dict[str, list[tuple[tarfile.TarInfo, str]]] = {index: [] for index in manifest}
        for info in members[1:]:
            rel = member_path(info.name)
            if rel == MOUNTS_DIR and info.isdir():
                continue
            parts = rel.split("/", 2)
            if parts[0] != MOUNTS_DIR or len(parts) < 2 or parts[1] not in manifest:
                raise TransferError(f"refusing archive member {info.name!r}: not under a mount in the manifest")
            inner = parts[2] if len(parts) == 3 else ""
            kind = manifest[parts[1]][1]
            if kind == "file" and (inner or not info.isreg()):
                raise TransferError(f"refusing archive member {info.name!r}: mount {parts[1]} is a file")
            if kind == "dir" and not inner and not info.isdir():
                raise TransferError(f"refusing archive member {info.name!r}: mount {parts[1]} is a directory")
            if kind == "dir":
                check_member(info, inner)
            groups[parts[1]].append((info, inner))
        lines = []
        for index in sorted(manifest, key=int):
            remote, kind = manifest[index]
            if remote.startswith("~/"):
                if not home:
                    raise TransferError(f"mount {remote}: no home directory given (--home)")
                dest = home.rstrip("/") + remote[1:]
            else:
                dest = root.rstrip("/") + remote if root else remote
            if kind == "file":
                if len(groups[index]) != 1:
                    raise TransferError(f"mounts archive: the file for {remote} is missing")
                _place_file(tar, groups[index][0][0], dest)
                lines.append(f"placed {dest} (file)")
            else:
                extractor = Extractor(dest)
                for info, inner in groups[index]:
                    if inner:
                        extractor.add(tar, info, inner)
                extractor.finish()
                lines.append(f"placed {dest} (dir, {extractor.files} files)")
        return lines


def _read_manifest(tar: tarfile.TarFile, info: tarfile.TarInfo) -> dict[str, tuple[str, str]]:
    source = tar.extractfile(info)
    try:
        document = json.loads(source.read(MiB).decode("utf-8")) if source is not None else None
    except ValueError:
        document = None
    if not isinstance(document, dict) or document.get("format") != MANIFEST_FORMAT:
        raise TransferError(f"mounts archive: {MANIFEST_NAME} is not a format {MANIFEST_FORMAT} manifest")
    mounts = document.get("mounts")
    if not isinstance(mounts, dict):
        raise TransferError(f"mounts archive: {MANIFEST_NAME} has no mounts object")
    result: dict[str, tuple[str, str]] = {}
    seen = set()
    for index, entry in mounts.items():
        if not index.isdigit() or not isinstance(entry, dict) or entry.get("type") not in ("file", "dir"):
            raise TransferError(f"mounts archive: mount {index!r} is malformed")
        remote = check_remote_path(entry.get("remote_path"))
        if remote in seen:
            raise TransferError(f"mounts archive: {remote} appears twice")
        seen.add(remote)
        result[index] = (remote, entry["type"])
    return result


def _place_file(tar: tarfile.TarFile, info: tarfile.TarInfo, dest: str) -> None:
    parent = os.path.dirname(dest)
    try:
        os.makedirs(parent, exist_ok=True)
        if os.path.isdir(dest) and not os.path.islink(dest):
            raise TransferError(f"cannot place a file at {dest}: it is a directory")
        handle, temporary = tempfile.mkstemp(dir=parent, prefix=f".{os.path.basename(dest)}.", suffix=".part")
        os.close(handle)
        try:
            os.unlink(temporary)
            write_member(tar, info, temporary)
            os.replace(temporary, dest)
        finally:
            if os.path.lexists(temporary):
                os.unlink(temporary)
    except OSError as error:
        raise TransferError(f"cannot place {dest}: {error.strerror or error}") from None


# -- sync -----------------------------------------------------------------------------------------------------------


def default_state_path(local_dir: str, area: str) -> str:
    """Beside LOCAL_DIR, never inside it: LOCAL_DIR/../.ec2jobs-sync-<area>.json."""
    parent = os.path.dirname(os.path.abspath(local_dir).rstrip("/")) or "/"
    return os.path.join(parent, f".ec2jobs-sync-{area.replace('/', '-')}.json")


def load_state(path: str, prefix: str) -> dict[str, list[int]]:
    """{relative path: [size, mtime_ns]} last synced to `prefix`; empty when missing, unreadable or for another
    prefix (everything is then sent again)."""
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except (OSError, ValueError):
        return {}
    if not isinstance(document, dict) or document.get("format") != STATE_FORMAT or document.get("prefix") != prefix:
        return {}
    files = document.get("files")
    if not isinstance(files, dict):
        return {}
    return {
        rel: [int(v[0]), int(v[1])]
        for rel, v in files.items()
        if isinstance(v, list) and len(v) == 2 and all(isinstance(n, int) for n in v)
    }


def save_state(path: str, prefix: str, files: dict[str, list[int]]) -> None:
    document = {"format": STATE_FORMAT, "prefix": prefix, "files": dict(sorted(files.items()))}
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=parent, prefix=".ec2jobs-sync-", suffix=".tmp")
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(document, out, separators=(",", ":"))
        os.replace(temporary, path)
    except OSError as error:
        raise TransferError(f"cannot write the sync state {path}: {error.strerror or error}") from None


@dataclass
class Candidate:
    rel: str
    path: str
    size: int
    mtime_ns: int


def scan(local_dir: str, exclude: Sequence[str] = ()) -> tuple[list[Candidate], list[str]]:
    """The regular files under `local_dir` (symlinks to files inside it are followed) and the skipped entries
    as "<rel>: <why>" (symlinks leaving it or to directories, special files, names S3 cannot hold)."""
    root = os.path.abspath(local_dir)
    real_root = os.path.realpath(root)
    excluded = {os.path.realpath(p) for p in exclude}
    files: list[Candidate] = []
    skipped: list[str] = []
    for directory, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in list(dirnames):
            if os.path.islink(os.path.join(directory, name)):  # os.walk does not descend into these
                skipped.append(f"{_relative(root, os.path.join(directory, name))}: symlink to a directory")
        for name in sorted(filenames):
            path = os.path.join(directory, name)
            rel = _relative(root, path)
            try:
                st = os.lstat(path)
                if stat.S_ISLNK(st.st_mode):
                    if not _within(os.path.realpath(path), real_root):
                        skipped.append(f"{rel}: symlink pointing outside {local_dir}")
                        continue
                    st = os.stat(path)
            except OSError:
                continue  # vanished (or a dangling link): nothing to send
            if not stat.S_ISREG(st.st_mode):
                skipped.append(f"{rel}: not a regular file")
                continue
            if os.path.realpath(path) in excluded:
                continue
            try:
                encoded = rel.encode("utf-8")
            except UnicodeEncodeError:
                skipped.append(f"{rel!r}: name is not valid UTF-8")
                continue
            if len(encoded) > MAX_KEY_BYTES - 200:
                skipped.append(f"{rel}: path too long for an S3 key")
                continue
            files.append(Candidate(rel, path, st.st_size, st.st_mtime_ns))
    return files, skipped


def _relative(root: str, path: str) -> str:
    return os.path.relpath(path, root).replace(os.sep, "/")


@dataclass
class SyncResult:
    uploaded: int = 0
    uploaded_bytes: int = 0
    unchanged: int = 0
    changed: list[str] = field(default_factory=list)  # changed while uploading: sent again next time
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        line = f"uploaded {self.uploaded} files, {self.uploaded_bytes} bytes; {self.unchanged} unchanged"
        if self.changed:
            line += f"; {len(self.changed)} changed while uploading (sent again next sync)"
        if self.skipped:
            line += f"; {len(self.skipped)} skipped"
        return line


def sync_up(s3: S3, local_dir: str, area: str, state_path: str) -> SyncResult:
    """Upload what is new or changed under `local_dir` (by size and mtime_ns since the last sync) to
    <job_prefix><area>/<relative path>. The state file is saved as it goes (every STATE_SAVE_SECONDS) and at
    the end, also on failure, so work done is not redone."""
    if not os.path.isdir(local_dir):
        raise TransferError(f"{local_dir} is not a directory")
    prefix = s3.grants().job_prefix + check_area(area) + "/"
    state = load_state(state_path, prefix)
    real_root = os.path.realpath(local_dir)
    candidates, skipped = scan(local_dir, exclude=[state_path])
    result = SyncResult(skipped=skipped)
    saved_at = time.monotonic()
    complete = False
    try:
        for item in candidates:
            signature = [item.size, item.mtime_ns]
            if state.get(item.rel) == signature:
                result.unchanged += 1
                continue
            state.pop(item.rel, None)
            try:
                s3.upload_file(item.path, prefix + item.rel, item.size, within=real_root)
            except FileChanged:
                result.changed.append(item.rel)
                continue
            try:
                after = os.stat(item.path)
                now = [after.st_size, after.st_mtime_ns]
            except OSError:
                now = []
            result.uploaded += 1
            result.uploaded_bytes += item.size
            if now == signature:
                state[item.rel] = signature
            else:
                result.changed.append(item.rel)
            if time.monotonic() - saved_at > STATE_SAVE_SECONDS:
                save_state(state_path, prefix, state)
                saved_at = time.monotonic()
        complete = True
    finally:
        if complete:  # forget files that are gone (a failed run keeps them: it did not look at them all)
            present = {item.rel for item in candidates}
            state = {rel: sig for rel, sig in state.items() if rel in present}
        save_state(state_path, prefix, state)
    return result


def check_key_path(rel: str, key: str) -> list[str]:
    """The segments of a listed key below the synced prefix; TransferError for '..', '.', empty segments or
    NUL (a key could otherwise write outside LOCAL_DIR)."""
    segments = rel.split("/")
    if any(segment in ("", ".", "..") or "\x00" in segment for segment in segments):
        raise TransferError(f"refusing to download {key!r}: its path below the prefix is not a plain relative path")
    return segments


def sync_down(s3: S3, area: str, local_dir: str, from_prefix: str | None, state_path: str) -> tuple[int, int]:
    """Download every object under <job_prefix><area>/ (or `from_prefix`) into `local_dir`; (files, bytes).
    Restoring the job's own area also records the files in the sync-up state, so they are not sent back."""
    own = s3.grants().job_prefix + check_area(area) + "/"
    source = check_prefix(from_prefix, "--from-prefix") if from_prefix else own
    extractor = Extractor(local_dir)  # only for its checked directory creation
    files = total = 0
    restored: dict[str, list[int]] = {}
    for key, size in s3.list_objects(source):
        rel = key[len(source) :]
        if not key.startswith(source) or not rel or rel.endswith("/"):
            continue  # folder markers
        segments = check_key_path(rel, key)
        try:
            parent = extractor.directory("/".join(segments[:-1]))
        except OSError as error:
            raise TransferError(f"cannot create a directory for {rel}: {error.strerror or error}") from None
        dest = os.path.join(parent, segments[-1])
        if os.path.islink(dest):
            os.unlink(dest)  # replace the link itself, never write through it
        s3.download(key, dest)
        st = os.stat(dest)
        restored["/".join(segments)] = [st.st_size, st.st_mtime_ns]
        files += 1
        total += size
    extractor.finish()
    if source == own and restored:
        state = load_state(state_path, own)
        state.update(restored)
        save_state(state_path, own, state)
    return files, total


# -- command line ---------------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, not argparse's usage block
        sys.stderr.write(f"ec2jobs_transfer: usage error: {message}\n")
        raise SystemExit(2)


def _parser() -> _Parser:
    parser = _Parser(prog="ec2jobs_transfer.py", description="Job data to and from the control plane's bucket.")
    parser.add_argument("--grants", required=True, help="the grants file the relay writes (JSON)")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    get = commands.add_parser("get", help="download one object")
    get.add_argument("key")
    get.add_argument("dest")
    extract = commands.add_parser("extract", help="download a .tar.gz and extract it safely")
    extract.add_argument("key")
    extract.add_argument("dest_dir")
    mounts = commands.add_parser("mounts", help="download a file_mounts archive and place each mount")
    mounts.add_argument("key")
    mounts.add_argument("root", help='prefix for every mount path ("" on EC2)')
    mounts.add_argument("--home", default="", help="the job user's home, where ~/ mounts go")
    up = commands.add_parser("sync-up", help="upload new or changed files")
    up.add_argument("local_dir")
    up.add_argument("prefix", help="outputs or checkpoints")
    up.add_argument("--state", help="the sync state file (default LOCAL_DIR/../.ec2jobs-sync-PREFIX.json)")
    down = commands.add_parser("sync-down", help="download every object under a prefix")
    down.add_argument("prefix", help="outputs or checkpoints")
    down.add_argument("local_dir")
    down.add_argument("--from-prefix", help="a full key prefix to read instead, e.g. teams/T/jobs/OLD/checkpoints/")
    down.add_argument("--state", help="the sync state file (default LOCAL_DIR/../.ec2jobs-sync-PREFIX.json)")
    return parser


def run(args: argparse.Namespace) -> None:
    s3 = S3(args.grants)
    try:
        if args.command == "get":
            size = s3.download(args.key, args.dest)
            print(f"downloaded {args.key} to {args.dest} ({size} bytes)")
        elif args.command == "extract":
            archive = s3.download_temporary(args.key)
            try:
                count = extract_archive(archive, args.dest_dir)
            finally:
                os.unlink(archive)
            print(f"extracted {count} files into {args.dest_dir}")
        elif args.command == "mounts":
            archive = s3.download_temporary(args.key)
            try:
                lines = place_mounts(archive, args.root, args.home)
            finally:
                os.unlink(archive)
            for line in lines:
                print(line)
        elif args.command == "sync-up":
            area = check_area(args.prefix)
            state = args.state or default_state_path(args.local_dir, area)
            result = sync_up(s3, args.local_dir, area, state)
            for note in result.skipped:
                print(f"skipped {note}")
            print(result.summary())
        elif args.command == "sync-down":
            area = check_area(args.prefix)
            state = args.state or default_state_path(args.local_dir, area)
            files, total = sync_down(s3, area, args.local_dir, args.from_prefix, state)
            print(f"downloaded {files} files, {total} bytes")
    finally:
        s3.close()


def _one_line(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return " ".join(text.split())[:1000]


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        run(args)
    except TransferError as error:
        message = str(error)
    except (KeyboardInterrupt, Terminated):
        message = "interrupted"
    except Exception as error:  # noqa: BLE001 - the contract is one line on stderr, not a traceback
        message = f"unexpected {type(error).__name__}: {error}"
    else:
        return 0
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    try:
        secrets = Grants.load(args.grants).secrets()
    except TransferError:
        secrets = []
    sys.stderr.write(f"ec2jobs_transfer: {args.command} failed: {_one_line(message, secrets)}\n")
    return 1


if __name__ == "__main__":
    sys.exit(main())
