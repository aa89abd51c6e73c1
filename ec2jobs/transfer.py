"""Moving archive bytes straight to and from S3 through presigned URLs (client side; standard library HTTP, like
client.py, with `rich` progress bars).

- `upload(parts, file, part_size, progress)` PUTs each part of `file` to its presigned URL, 4 at a time, each part
  tried up to 3 times (exponential backoff with jitter on connection errors, timeouts and HTTP 408/429/5xx; any
  other HTTP error fails at once: an expired or refused URL does not get better), and returns
  `[{"part_number", "etag"}]` for CompleteMultipartUpload (a single presigned PUT is the one-part case).
- `download(url, dest, expected_size, progress, sha256=...)` streams to a temporary file next to `dest`, checks
  the size and the sha256 when given, then renames it into place, so `dest` is never left half written.

A presigned URL is a bearer credential until it expires: URLs never appear in an exception, a progress line or a
log. Only https:// URLs are accepted, except http:// to a loopback host (the local emulator on 127.0.0.1).
Redirects are not followed.
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import math
import os
import random
import re
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Final

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

CONCURRENCY: Final = 4
ATTEMPTS: Final = 3
BACKOFF_SECONDS: Final = 1.0  # before the 2nd try; doubled before the 3rd (plus up to 25 % jitter)
TIMEOUT_SECONDS: Final = 60.0  # per socket operation, not per transfer
RETRIABLE_STATUS: Final = frozenset({408, 429, 500, 502, 503, 504})
_CHUNK = 1024 * 1024
_USER_AGENT: Final = "ec2jobs-cli/0.1"

ProgressOption = bool | Progress | None
Sleep = Callable[[float], None]


class TransferError(Exception):
    """An upload or download that did not succeed; the message never contains the URL."""


class _Retriable(TransferError):
    pass


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


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


def _opener(url: str) -> urllib.request.OpenerDirector:
    handlers: list[urllib.request.BaseHandler] = [_NoRedirect()]
    if is_loopback(urllib.parse.urlsplit(url).hostname or ""):
        handlers.append(urllib.request.ProxyHandler({}))  # a proxy must never see loopback traffic
    return urllib.request.build_opener(*handlers)


def _describe_http_error(error: urllib.error.HTTPError) -> str:
    """`HTTP 403 AccessDenied: Request has expired` from S3's XML error body (never the URL)."""
    try:
        body = error.read(4096).decode("utf-8", "replace")
    except (OSError, http.client.HTTPException):
        body = ""
    code = re.search(r"<Code>([^<]{1,100})</Code>", body)
    message = re.search(r"<Message>([^<]{1,300})</Message>", body)
    text = f"HTTP {error.code}"
    if code:
        text += f" {code.group(1)}"
    if message:
        text += f": {message.group(1)}"
    return text


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


def _backoff(attempt: int, base: float) -> float:
    return float(base * 2 ** (attempt - 1) * (1 + random.random() / 4))


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
    """Reads `length` bytes of `path` from `offset`, reporting each chunk read (what http.client sends)."""

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
    number: int,
    url: str,
    path: Path,
    offset: int,
    length: int,
    advance: Callable[[int], None],
    *,
    attempts: int,
    backoff: float,
    timeout: float,
    sleep: Sleep,
) -> dict[str, Any]:
    opener = _opener(url)
    for attempt in range(1, attempts + 1):
        sent = 0

        def on_read(count: int) -> None:
            nonlocal sent
            sent += count
            advance(count)

        reader = _PartReader(path, offset, length, on_read)
        try:
            request = urllib.request.Request(url, data=reader, method="PUT")  # type: ignore[arg-type]  # noqa: S310 - check_url
            request.add_header("Content-Length", str(length))
            request.add_header("Content-Type", "application/octet-stream")
            request.add_header("User-Agent", _USER_AGENT)
            with opener.open(request, timeout=timeout) as response:
                etag = response.headers.get("ETag")
                if not etag:
                    raise TransferError(f"part {number}: the storage service returned no ETag")
                return {"part_number": number, "etag": etag}
        except urllib.error.HTTPError as error:
            failure: TransferError = (_Retriable if error.code in RETRIABLE_STATUS else TransferError)(
                f"part {number}: {_describe_http_error(error)}"
            )
        except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
            failure = _Retriable(f"part {number}: {_safe_reason(error, url)}")
        finally:
            reader.close()
        advance(-sent)  # this attempt's bytes will be sent again (or never)
        if not isinstance(failure, _Retriable) or attempt == attempts:
            raise TransferError(f"{failure} (after {attempt} attempt{'s' if attempt > 1 else ''})") from None
        sleep(_backoff(attempt, backoff))
    raise AssertionError("unreachable")


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
    results: list[dict[str, Any]] = []
    with (
        _progress_task(progress, f"uploading {path.name}", size) as advance,
        ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(numbered))), thread_name_prefix="upload") as pool,
    ):
        futures = [
            pool.submit(
                _put_part,
                number,
                url,
                path,
                (number - 1) * part_size,
                max(0, min(part_size, size - (number - 1) * part_size)),
                advance,
                attempts=attempts,
                backoff=backoff,
                timeout=timeout,
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
) -> str:
    """GET `url` into `dest` (through a temporary file in the same directory, renamed when complete and checked);
    returns the sha256 (hex) of what was written. A transient failure restarts the download (up to `attempts`)."""
    check_url(url)
    target = Path(dest)
    target.parent.mkdir(parents=True, exist_ok=True)
    opener = _opener(url)
    with _progress_task(progress, f"downloading {target.name}", expected_size) as advance:
        for attempt in range(1, attempts + 1):
            try:
                return _download_once(opener, url, target, expected_size, sha256, advance, timeout)
            except _Retriable as failure:
                if attempt == attempts:
                    raise TransferError(f"{failure} (after {attempt} attempts)") from None
                sleep(_backoff(attempt, backoff))
    raise AssertionError("unreachable")


def _download_once(
    opener: urllib.request.OpenerDirector,
    url: str,
    target: Path,
    expected_size: int | None,
    sha256: str | None,
    advance: Callable[[int], None],
    timeout: float,
) -> str:
    handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    temporary = Path(name)
    counted = [0]

    def counting(delta: int) -> None:
        counted[0] += delta
        advance(delta)

    try:
        with os.fdopen(handle, "wb") as out:
            received, actual = _receive(opener, url, out, counting, timeout)
        _verify(received, actual, expected_size, sha256)
        os.replace(temporary, target)
        return actual
    except BaseException:
        temporary.unlink(missing_ok=True)
        advance(-counted[0])  # the bar goes back: this attempt's bytes are received again (or never)
        raise


def _receive(
    opener: urllib.request.OpenerDirector, url: str, out: BinaryIO, advance: Callable[[int], None], timeout: float
) -> tuple[int, str]:
    """Stream the GET into `out`; (bytes received, their sha256)."""
    request = urllib.request.Request(url, method="GET")  # noqa: S310 - check_url
    request.add_header("User-Agent", _USER_AGENT)
    received = 0
    digest = hashlib.sha256()
    try:
        with opener.open(request, timeout=timeout) as response:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                advance(len(chunk))
    except urllib.error.HTTPError as error:
        kind = _Retriable if error.code in RETRIABLE_STATUS else TransferError
        raise kind(f"download: {_describe_http_error(error)}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        raise _Retriable(f"download: {_safe_reason(error, url)}") from None
    return received, digest.hexdigest()


def _verify(received: int, actual: str, expected_size: int | None, sha256: str | None) -> None:
    if expected_size is not None and received != expected_size:
        raise TransferError(f"download: expected {expected_size} bytes, received {received}")
    if sha256 is not None and actual != sha256.lower():
        raise TransferError(f"download: sha256 mismatch (expected {sha256.lower()}, got {actual})")
