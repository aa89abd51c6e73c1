"""Moving archive bytes straight to and from S3 through presigned URLs (client side; standard library HTTP, like
client.py, with `rich` progress bars).

- `upload(parts, file, part_size, progress)` PUTs each part of `file` to its presigned URL, 4 at a time, each part
  tried up to 3 times (exponential backoff with jitter on connection errors, timeouts and HTTP 408/429/5xx; any
  other HTTP error fails at once: an expired or refused URL does not get better), and returns
  `[{"part_number", "etag"}]` for CompleteMultipartUpload (a single presigned PUT is the one-part case).
- `download(url, dest, expected_size, progress, sha256=...)` writes to a temporary file next to `dest`, checks
  the size and the sha256 when given, then renames it into place, so `dest` is never left half written. An object
  of more than 16 MiB (its size known) is fetched as byte ranges of the same presigned URL (HTTP Range), 8 at a
  time, each written at its offset and tried up to 3 times on its own; every range must come from the same object
  (one ETag), else the download starts over. A smaller one, or one of unknown size, is one GET.

Connections are kept open and reused between the requests of one transfer (a new TLS handshake per part would
cost a round trip or two each), and file bytes are sent and written in 1 MiB blocks. A presigned URL is a bearer
credential until it expires: URLs never appear in an exception, a progress line or a log. Only https:// URLs are
accepted, except http:// to a loopback host (the local emulator on 127.0.0.1). Redirects are not followed. An
https proxy from the environment (`https_proxy`, `no_proxy`) is used as urllib would: a CONNECT tunnel.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import ipaddress
import math
import os
import random
import re
import ssl
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

MIB: Final = 1024 * 1024
CONCURRENCY: Final = 4  # parts of an upload in flight
DOWNLOAD_CONCURRENCY: Final = 8  # ranges of a download in flight
RANGED_THRESHOLD: Final = 16 * MIB  # a download of more bytes than this is fetched in ranges
RANGE_SIZE: Final = 8 * MIB  # the smallest range; a larger object gets larger ones (`range_size`)
MAX_RANGE_SIZE: Final = 64 * MIB
ATTEMPTS: Final = 3
BACKOFF_SECONDS: Final = 1.0  # before the 2nd try; doubled before the 3rd (plus up to 25 % jitter)
TIMEOUT_SECONDS: Final = 60.0  # per socket operation, not per transfer
RETRIABLE_STATUS: Final = frozenset({408, 429, 500, 502, 503, 504})
_CHUNK: Final = MIB
_USER_AGENT: Final = "ec2jobs-cli/0.1"
_STALE: Final = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)
_CONTENT_RANGE: Final = re.compile(r"bytes (\d+)-(\d+)/(\d+)")

ProgressOption = bool | Progress | None
Sleep = Callable[[float], None]


class TransferError(Exception):
    """An upload or download that did not succeed; the message never contains the URL."""


class _Retriable(TransferError):
    pass


class _NoRanges(Exception):
    """The server answered a ranged GET with the whole object: fetch it as one stream instead."""


class _Stopped(Exception):
    """Another range of the same download failed: this one stops early."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str) -> str:
    """`url` if it is https://, or http:// to a loopback host; TransferError otherwise (without the URL's query,
    which holds the signature)."""
    parsed = urllib.parse.urlsplit(url)
    host = parsed.hostname or ""
    if parsed.scheme == "https" and host:
        return url
    if parsed.scheme == "http" and is_loopback(host):
        return url
    raise TransferError(
        f"refusing a {parsed.scheme or 'schemeless'}:// URL to {host or 'no host'}: transfers must use https "
        "(plain http only to a loopback address)"
    )


def _backoff(attempt: int, base: float) -> float:
    return float(base * 2 ** (attempt - 1) * (1 + random.random() / 4))


def _safe_reason(error: BaseException, url: str) -> str:
    """`ConnectionRefusedError: [Errno 111] Connection refused`, with any part of the URL that the error's text
    repeats (its path and query hold the signature) replaced by <url>."""
    reason = getattr(error, "reason", None) or error
    text = f"{type(reason).__name__}: {reason}"
    parsed = urllib.parse.urlsplit(url)
    for piece in (url, parsed.path + ("?" + parsed.query if parsed.query else ""), parsed.query, parsed.path):
        if len(piece) > 1:
            text = text.replace(piece, "<url>")
    return text[:300]


def _describe_error(status: int, body: bytes) -> str:
    """`HTTP 403 AccessDenied: Request has expired` from S3's XML error body (never the URL)."""
    text = body.decode("utf-8", "replace")
    code = re.search(r"<Code>([^<]{1,100})</Code>", text)
    message = re.search(r"<Message>([^<]{1,300})</Message>", text)
    described = f"HTTP {status}"
    if code:
        described += f" {code.group(1)}"
    if message:
        described += f": {message.group(1)}"
    return described


def _http_failure(what: str, response: http.client.HTTPResponse) -> TransferError:
    """The error for a non-2xx answer (its body read, up to 64 KiB): retriable for 408/429/5xx."""
    try:
        body = response.read(64 * 1024)
    except (OSError, http.client.HTTPException):
        body = b""
    kind = _Retriable if response.status in RETRIABLE_STATUS else TransferError
    return kind(f"{what}: {_describe_error(response.status, body)}")


# -- connections ----------------------------------------------------------------------------------------------------


def proxy_for(url: str) -> tuple[str, int, dict[str, str]] | None:
    """(host, port, CONNECT headers) of the proxy the environment names for an https `url` (`https_proxy`, unless
    `no_proxy` exempts its host), as urllib would use it; None for none, and always for a loopback host."""
    parsed = urllib.parse.urlsplit(url)
    host = parsed.hostname or ""
    if parsed.scheme != "https" or is_loopback(host):
        return None
    proxy = urllib.request.getproxies().get("https")
    if not proxy or urllib.request.proxy_bypass(host):
        return None
    target = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    if not target.hostname:
        return None
    headers: dict[str, str] = {}
    if target.username is not None:
        user = urllib.parse.unquote(target.username)
        password = urllib.parse.unquote(target.password or "")
        headers["Proxy-Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return target.hostname, target.port or (443 if target.scheme == "https" else 80), headers


class _Connections:
    """Keep-alive HTTP(S) connections shared by one transfer's threads: a request takes an idle connection to its
    URL's host (or opens one) and gives it back once its answer has been read to the end."""

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._idle: dict[tuple[str, str, int | None], list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        self._context: ssl.SSLContext | None = None

    def _open(self, url: str) -> http.client.HTTPConnection:
        parsed = urllib.parse.urlsplit(url)
        host = parsed.hostname or ""
        if parsed.scheme == "http":
            return http.client.HTTPConnection(host, parsed.port, timeout=self._timeout, blocksize=_CHUNK)
        if self._context is None:
            self._context = ssl.create_default_context()
        proxy = proxy_for(url)
        if proxy is None:
            return http.client.HTTPSConnection(
                host, parsed.port, timeout=self._timeout, context=self._context, blocksize=_CHUNK
            )
        proxy_host, proxy_port, headers = proxy
        connection = http.client.HTTPSConnection(
            proxy_host, proxy_port, timeout=self._timeout, context=self._context, blocksize=_CHUNK
        )
        connection.set_tunnel(host, parsed.port, headers=headers)
        return connection

    @staticmethod
    def _key(url: str) -> tuple[str, str, int | None]:
        parsed = urllib.parse.urlsplit(url)
        return parsed.scheme, parsed.hostname or "", parsed.port

    def _take(self, url: str) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            idle = self._idle.get(self._key(url))
            if idle:
                return idle.pop(), True
        return self._open(url), False

    def _give_back(self, url: str, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            self._idle.setdefault(self._key(url), []).append(connection)

    @contextmanager
    def exchange(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: Callable[[], _PartReader] | None = None,
    ) -> Iterator[http.client.HTTPResponse]:
        """Send one request and yield its response; `body` makes a fresh reader for each sending. A reused
        connection that the server closed meanwhile is replaced once, at no cost to the caller's attempts."""
        parsed = urllib.parse.urlsplit(url)
        target = (parsed.path or "/") + (f"?{parsed.query}" if parsed.query else "")
        connection, reused = self._take(url)
        while True:
            reader = body() if body is not None else None
            try:
                connection.request(method, target, body=reader, headers=dict(headers))
                response = connection.getresponse()
                break
            except _STALE:
                connection.close()
                if not reused:
                    raise
                connection, reused = self._open(url), False
            except BaseException:
                connection.close()
                raise
            finally:
                if reader is not None:
                    reader.close()
        try:
            yield response
        except BaseException:
            connection.close()
            raise
        if response.isclosed() and not response.will_close:
            self._give_back(url, connection)
        else:
            connection.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.close()


@contextmanager
def _connections(timeout: float) -> Iterator[_Connections]:
    pool = _Connections(timeout)
    try:
        yield pool
    finally:
        pool.close()


# -- progress -------------------------------------------------------------------------------------------------------


def new_progress(console: Console | None = None) -> Progress:
    """The bar `upload`/`download` show when given `progress=True` (on stderr)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console or Console(stderr=True),
    )


@contextmanager
def _progress_task(progress: ProgressOption, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A thread-safe `advance(delta)` for one bar (a no-op when `progress` is falsy)."""
    if not progress:
        yield lambda _delta: None
        return
    owned = progress is True
    bar = new_progress() if isinstance(progress, bool) else progress
    if owned:
        bar.start()
    try:
        task: TaskID = bar.add_task(description, total=total)
        yield lambda delta: bar.advance(task, delta)
    finally:
        if owned:
            bar.stop()


# -- upload ---------------------------------------------------------------------------------------------------------


class _PartReader:
    """Reads `length` bytes of `path` from `offset`, reporting each block read (what http.client sends)."""

    def __init__(self, path: Path, offset: int, length: int, on_read: Callable[[int], None]) -> None:
        self._file = path.open("rb")
        self._file.seek(offset)
        self._left = length
        self._on_read = on_read

    def read(self, size: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        want = self._left if size is None or size < 0 else min(size, self._left)
        data = self._file.read(want)
        if not data:
            raise TransferError("the file became shorter while it was being uploaded")
        self._left -= len(data)
        self._on_read(len(data))
        return data

    def close(self) -> None:
        self._file.close()


def _check_parts(parts: Sequence[Mapping[str, Any]], size: int, part_size: int) -> list[tuple[int, str]]:
    if part_size <= 0:
        raise TransferError(f"part_size must be positive, not {part_size}")
    numbered = sorted((int(part["part_number"]), str(part["url"])) for part in parts)
    expected = max(1, math.ceil(size / part_size))
    if [number for number, _ in numbered] != list(range(1, expected + 1)):
        raise TransferError(
            f"a {size}-byte file in {part_size}-byte parts needs parts 1..{expected}, "
            f"got {[number for number, _ in numbered]}"
        )
    for _, url in numbered:
        check_url(url)
    return numbered


def _put_part(
    connections: _Connections,
    number: int,
    url: str,
    path: Path,
    offset: int,
    length: int,
    advance: Callable[[int], None],
    *,
    attempts: int,
    backoff: float,
    sleep: Sleep,
) -> dict[str, Any]:
    headers = {"Content-Length": str(length), "Content-Type": "application/octet-stream", "User-Agent": _USER_AGENT}
    sent = 0

    def on_read(count: int) -> None:
        nonlocal sent
        sent += count
        advance(count)

    def body() -> _PartReader:
        nonlocal sent
        advance(-sent)  # bytes of an earlier sending are sent again
        sent = 0
        return _PartReader(path, offset, length, on_read)

    for attempt in range(1, attempts + 1):
        try:
            return {"part_number": number, "etag": _send_part(connections, number, url, headers, body)}
        except TransferError as error:
            failure = error
        except (OSError, http.client.HTTPException) as error:
            failure = _Retriable(f"part {number}: {_safe_reason(error, url)}")
        advance(-sent)  # this attempt's bytes will be sent again (or never)
        sent = 0
        if not isinstance(failure, _Retriable) or attempt == attempts:
            raise TransferError(f"{failure} (after {attempt} attempt{'s' if attempt > 1 else ''})") from None
        sleep(_backoff(attempt, backoff))
    raise AssertionError("unreachable")


def _send_part(
    connections: _Connections, number: int, url: str, headers: Mapping[str, str], body: Callable[[], _PartReader]
) -> str:
    """One PUT of a part; its ETag."""
    with connections.exchange("PUT", url, headers, body) as response:
        if not 200 <= response.status < 300:
            raise _http_failure(f"part {number}", response)
        response.read()
        etag = response.getheader("ETag")
    if not etag:
        raise TransferError(f"part {number}: the storage service returned no ETag")
    return etag


def upload(
    parts: Sequence[Mapping[str, Any]],
    file: str | os.PathLike[str],
    part_size: int,
    progress: ProgressOption = False,
    *,
    concurrency: int = CONCURRENCY,
    attempts: int = ATTEMPTS,
    backoff: float = BACKOFF_SECONDS,
    timeout: float = TIMEOUT_SECONDS,
    sleep: Sleep = time.sleep,
) -> list[dict[str, Any]]:
    """PUT `file` in `part_size` pieces, part N to `parts[N]["url"]` (bytes (N-1)*part_size onwards); returns
    `[{"part_number": N, "etag": ...}]` sorted by part number. `progress`: True for a bar on stderr, a
    `rich.progress.Progress` to add a task to, or False/None for none."""
    path = Path(file)
    size = path.stat().st_size
    numbered = _check_parts(parts, size, part_size)
    with (
        _progress_task(progress, f"uploading {path.name}", size) as advance,
        _connections(timeout) as connections,
        ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(numbered))), thread_name_prefix="upload") as pool,
    ):
        futures = [
            pool.submit(
                _put_part,
                connections,
                number,
                url,
                path,
                (number - 1) * part_size,
                max(0, min(part_size, size - (number - 1) * part_size)),
                advance,
                attempts=attempts,
                backoff=backoff,
                sleep=sleep,
            )
            for number, url in numbered
        ]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for future in pending:
            future.cancel()
        for future in futures:
            if future in done and future.exception() is not None:
                raise future.exception()  # type: ignore[misc]
        results = [future.result() for future in futures]
    return sorted(results, key=lambda part: int(part["part_number"]))


# -- download -------------------------------------------------------------------------------------------------------


def range_size(size: int, concurrency: int = DOWNLOAD_CONCURRENCY) -> int:
    """The range length for downloading `size` bytes: about two ranges per connection, in whole MiB, at least
    RANGE_SIZE and at most MAX_RANGE_SIZE (S3's own advice is 8–16 MB ranges; fewer, larger ones cost fewer
    requests)."""
    wanted = math.ceil(size / max(1, 2 * concurrency) / MIB) * MIB
    return max(RANGE_SIZE, min(MAX_RANGE_SIZE, wanted))


def download(
    url: str,
    dest: str | os.PathLike[str],
    expected_size: int | None = None,
    progress: ProgressOption = False,
    *,
    sha256: str | None = None,
    attempts: int = ATTEMPTS,
    backoff: float = BACKOFF_SECONDS,
    timeout: float = TIMEOUT_SECONDS,
    sleep: Sleep = time.sleep,
    concurrency: int = DOWNLOAD_CONCURRENCY,
    threshold: int = RANGED_THRESHOLD,
    part_size: int | None = None,
) -> str:
    """GET `url` into `dest` (through a temporary file in the same directory, renamed when complete and checked);
    returns the sha256 (hex) of what was written. More than `threshold` bytes expected: ranges of `part_size`
    (default `range_size(expected_size)`), `concurrency` at a time, each retried on its own (up to `attempts`);
    otherwise one stream, restarted on a transient failure (up to `attempts`)."""
    check_url(url)
    target = Path(dest)
    target.parent.mkdir(parents=True, exist_ok=True)
    ranged = expected_size is not None and expected_size > threshold
    attempt = 0
    with (
        _progress_task(progress, f"downloading {target.name}", expected_size) as advance,
        _connections(timeout) as connections,
    ):
        while True:
            fetch: Callable[[int, Callable[[int], None]], str]
            if ranged and expected_size is not None:
                length = part_size or range_size(expected_size, concurrency)
                fetch = _Ranged(connections, url, expected_size, length, concurrency, attempts, backoff, sleep)
            else:
                fetch = _Stream(connections, url, expected_size)
            try:
                return _into_place(target, sha256, advance, fetch)
            except _NoRanges:
                ranged = False  # the server ignores Range: one stream, as for a small object
            except _Retriable as failure:
                attempt += 1
                if attempt >= attempts:
                    raise TransferError(f"{failure} (after {attempt} attempts)") from None
                sleep(_backoff(attempt, backoff))


def _into_place(
    target: Path, sha256: str | None, advance: Callable[[int], None], fetch: Callable[[int, Callable[[int], None]], str]
) -> str:
    """Run `fetch(fd, advance)` (which returns the sha256 of what it wrote) into a new temporary file beside
    `target`, check it, then rename it into place; the bar goes back on failure."""
    handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    temporary = Path(name)
    counted = [0]
    lock = threading.Lock()

    def counting(delta: int) -> None:
        with lock:
            counted[0] += delta
        advance(delta)

    try:
        try:
            actual = fetch(handle, counting)
        finally:
            os.close(handle)
        _check_sha256(actual, sha256)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        advance(-counted[0])  # the bar goes back: this attempt's bytes are received again (or never)
        raise
    return actual


def _check_sha256(actual: str, expected: str | None) -> None:
    if expected is not None and actual != expected.lower():
        raise TransferError(f"download: sha256 mismatch (expected {expected.lower()}, got {actual})")


class _Stream:
    """One GET, streamed to the file and hashed as it comes."""

    def __init__(self, connections: _Connections, url: str, expected_size: int | None) -> None:
        self.connections = connections
        self.url = url
        self.expected_size = expected_size

    def __call__(self, fd: int, advance: Callable[[int], None]) -> str:
        headers = {"User-Agent": _USER_AGENT}
        received = 0
        digest = hashlib.sha256()
        try:
            with self.connections.exchange("GET", self.url, headers) as response:
                if not 200 <= response.status < 300:
                    raise _http_failure("download", response)
                while chunk := response.read(_CHUNK):
                    _write_all(fd, chunk, received)
                    digest.update(chunk)
                    received += len(chunk)
                    advance(len(chunk))
        except (OSError, http.client.HTTPException) as error:
            raise _Retriable(f"download: {_safe_reason(error, self.url)}") from None
        if self.expected_size is not None and received != self.expected_size:
            raise TransferError(f"download: expected {self.expected_size} bytes, received {received}")
        return digest.hexdigest()


def _write_all(fd: int, data: bytes, offset: int) -> None:
    """Write `data` at `offset` of `fd` (pwrite may write less than asked)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _read_at(fd: int, start: int, end: int) -> Iterator[bytes]:
    """The bytes of `fd` from `start` to `end`, in blocks."""
    while start < end:
        block = os.pread(fd, min(_CHUNK, end - start), start)
        if not block:
            raise TransferError("download: the temporary file is shorter than what was written to it")
        start += len(block)
        yield block


class _Ranged:
    """Ranged GETs of one object of a known size, `concurrency` at a time, each written at its offset and retried
    on its own; the sha256 is computed in order as the ranges arrive. Every answer must be 206 with the expected
    Content-Range and the same ETag (an object replaced meanwhile: _Retriable, the download starts over)."""

    def __init__(
        self,
        connections: _Connections,
        url: str,
        size: int,
        part_size: int,
        concurrency: int,
        attempts: int,
        backoff: float,
        sleep: Sleep,
    ) -> None:
        if part_size <= 0:
            raise TransferError(f"part_size must be positive, not {part_size}")
        self.connections = connections
        self.url = url
        self.size = size
        self.part_size = part_size
        self.concurrency = concurrency
        self.attempts = attempts
        self.backoff = backoff
        self.sleep = sleep

    def __call__(self, fd: int, advance: Callable[[int], None]) -> str:
        os.ftruncate(fd, self.size)
        ranges = [(start, min(start + self.part_size, self.size)) for start in range(0, self.size, self.part_size)]
        stop = threading.Event()
        digest = hashlib.sha256()
        etags: set[str] = set()
        workers = max(1, min(self.concurrency, len(ranges)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="download") as pool:
            futures = [pool.submit(self._range, fd, start, end, advance, stop) for start, end in ranges]
            finished = False
            try:
                for (start, end), future in zip(ranges, futures, strict=True):
                    etags.add(future.result())
                    for block in _read_at(fd, start, end):
                        digest.update(block)
                finished = True
            finally:
                if not finished:  # stop the other ranges; report the range that failed first, not one it stopped
                    stop.set()
                    for future in futures:
                        future.cancel()
                    wait(futures)
                    failure = _first_failure(futures)
                    if failure is not None:
                        raise failure
        if len(etags) > 1:
            raise _Retriable("download: the object changed while it was being downloaded")
        return digest.hexdigest()

    def _range(self, fd: int, start: int, end: int, advance: Callable[[int], None], stop: threading.Event) -> str:
        """GET bytes start..end-1 into `fd` at `start`; the object's ETag. Not sent once `stop` is set; sets it when
        it fails (no further range is sent)."""
        if stop.is_set():
            raise _Stopped()
        try:
            return self._range_attempts(fd, start, end, advance, stop)
        except BaseException:
            stop.set()
            raise

    def _range_attempts(
        self, fd: int, start: int, end: int, advance: Callable[[int], None], stop: threading.Event
    ) -> str:
        what = f"download (bytes {start}-{end - 1})"
        headers = {"User-Agent": _USER_AGENT, "Range": f"bytes={start}-{end - 1}"}
        received = [0]
        for attempt in range(1, self.attempts + 1):
            received[0] = 0
            try:
                return self._range_once(fd, start, end, headers, what, advance, stop, received)
            except (_Stopped, _NoRanges):
                advance(-received[0])
                raise
            except TransferError as error:
                failure = error
            except (OSError, http.client.HTTPException) as error:
                failure = _Retriable(f"{what}: {_safe_reason(error, self.url)}")
            advance(-received[0])  # this range is received again (or never)
            if not isinstance(failure, _Retriable) or attempt == self.attempts:
                raise TransferError(f"{failure} (after {attempt} attempt{'s' if attempt > 1 else ''})") from None
            if stop.is_set():
                raise _Stopped()
            self.sleep(_backoff(attempt, self.backoff))
        raise AssertionError("unreachable")

    def _range_once(
        self,
        fd: int,
        start: int,
        end: int,
        headers: Mapping[str, str],
        what: str,
        advance: Callable[[int], None],
        stop: threading.Event,
        received: list[int],
    ) -> str:
        """One GET of the range (`received[0]` counts its bytes as they are written); the object's ETag."""
        with self.connections.exchange("GET", self.url, headers) as response:
            if response.status == 200:
                raise _NoRanges()
            if response.status != 206:
                raise _http_failure(what, response)
            self._check_range(response.getheader("Content-Range") or "", start, end)
            while chunk := response.read(_CHUNK):
                if stop.is_set():
                    raise _Stopped()
                _write_all(fd, chunk, start + received[0])
                received[0] += len(chunk)
                advance(len(chunk))
            etag = response.getheader("ETag") or ""
        if received[0] != end - start:
            raise _Retriable(f"{what}: received {received[0]} of {end - start} bytes")
        return etag

    def _check_range(self, header: str, start: int, end: int) -> None:
        found = _CONTENT_RANGE.fullmatch(header.strip())
        if found is None:
            raise TransferError(f"download: a ranged answer without a valid Content-Range ({header[:60]!r})")
        first, last, total = (int(value) for value in found.groups())
        if total != self.size:
            raise TransferError(f"download: expected {self.size} bytes, the stored object has {total}")
        if (first, last) != (start, end - 1):
            raise TransferError(f"download: asked for bytes {start}-{end - 1}, got {first}-{last}")


def _first_failure(futures: Sequence[Future[str]]) -> BaseException | None:
    """The first range's own failure (not one that stopped because another failed)."""
    for future in futures:
        if future.cancelled() or not future.done():
            continue
        error = future.exception()
        if error is not None and not isinstance(error, _Stopped):
            return error
    return None
