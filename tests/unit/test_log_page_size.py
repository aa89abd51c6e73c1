"""A logs page fits Lambda's 6 MB synchronous response whatever the output's bytes, and the cursor still advances
exactly: reading page after page yields the same text as decoding the whole output at once, no byte lost or
repeated (core/logchunks.decode_bounded_page, service/jobs.JobService.logs)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from controlplane.core import logchunks
from controlplane.core.lifecycle import JobStatus
from controlplane.core.models import Job
from controlplane.core.ports import LogProgress
from controlplane.service.jobs import MAX_LOG_PAGE, JobService

LAMBDA_RESPONSE_LIMIT = 6 * 1024 * 1024  # bytes (docs.aws.amazon.com/lambda/latest/dg/gettingstarted-limits.html)
MIB = 1024 * 1024

OUTPUTS = {
    "invalid UTF-8": bytes([0xFF]) * MIB,
    "control characters": b"\x01\x1b[0m\x00" * (MIB // 7),
    "quotes and backslashes": b'"\\' * (MIB // 2),
    "emoji": ("\U0001f600" * (MIB // 4)).encode(),
    "mixed, characters cut everywhere": (b'ok \xe2\x9c\x93 \xff\xfe"\\\x01 \xf0\x9f\x98' * 40_000)[:MIB],
}


class _Jobs:
    def __init__(self, job: Job) -> None:
        self.job = job

    def get(self, job_id: str) -> Job | None:
        return self.job if job_id == self.job.job_id else None


class _Logs:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def progress(self, job_id: str) -> LogProgress:
        return LogProgress(committed=len(self.data), complete=True, drained=True)

    def chunks(self, job_id: str, after: int, max_bytes: int) -> list[tuple[int, bytes]]:
        return logchunks.cut(after, self.data[after : after + max_bytes], 300 * 1024)


def _service(data: bytes) -> JobService:
    now = dt.datetime.now(dt.UTC)
    job = Job(
        job_id="job-1",
        team_id="t",
        provider_id="p",
        region="us-east-1",
        status=JobStatus.SUCCEEDED,
        instance_id="i-1",
        created_at=now,
        updated_at=now,
    )
    return JobService(_Jobs(job), None, None, _Logs(data))  # type: ignore[arg-type]


def lambda_response_bytes(body: dict[str, Any]) -> int:
    """The API Lambda's response as the Python 3.12 runtime writes it: the proxy envelope, its body the API's JSON
    (powertools: compact, ASCII-only), and the envelope in UTF-8 with the runtime's default separators."""
    inner = json.dumps(body, separators=(",", ":"))
    envelope = {
        "statusCode": 200,
        "headers": {"Content-Type": "application/json"},
        "multiValueHeaders": {},
        "body": inner,
        "isBase64Encoded": False,
    }
    return len(json.dumps(envelope, ensure_ascii=False).encode())


@pytest.mark.parametrize("name", list(OUTPUTS))
def test_every_page_fits_the_lambda_response_and_pages_join_to_the_exact_output(name: str) -> None:
    data = OUTPUTS[name]
    service = _service(data)
    pages: list[str] = []
    cursor: str | None = None
    for _ in range(100):
        page = service.logs("t", "job-1", cursor, MAX_LOG_PAGE)
        body = {
            "job_id": "job-1",
            "text": page.text,
            "next_cursor": page.next_cursor,
            "complete": page.complete,
            "final": page.final,
        }
        assert lambda_response_bytes(body) < LAMBDA_RESPONSE_LIMIT - MIB  # well under, with room for headers
        pages.append(page.text)
        if page.final:
            assert page.complete  # drained: the log is whole
            break
        assert page.next_cursor != cursor, "no progress"
        cursor = page.next_cursor
    assert page.next_cursor == str(len(data))
    assert "".join(pages) == data.decode("utf-8", errors="replace")


def test_a_megabyte_of_invalid_utf8_would_overflow_without_the_bound_and_is_cut_near_599_kb() -> None:
    data = OUTPUTS["invalid UTF-8"]
    unbounded = logchunks.decode_page(data, final=False)
    assert lambda_response_bytes({"text": unbounded.text}) > LAMBDA_RESPONSE_LIMIT  # the issue: ~7 MB
    page = logchunks.decode_bounded_page(data, final=False)
    assert logchunks.encoded_size(page.text) <= logchunks.MAX_PAGE_ENCODED_BYTES
    assert page.consumed == (logchunks.MAX_PAGE_ENCODED_BYTES - 4) // 7  # 7 bytes per invalid byte, 4 for quotes
    assert page.text == "\ufffd" * page.consumed


def test_plain_text_pages_are_not_shortened() -> None:
    data = b"epoch 1: loss 0.25\n" * (MIB // 19)
    page = logchunks.decode_bounded_page(data, final=True)
    assert page.consumed == len(data)


def test_a_shortened_page_never_splits_a_character() -> None:
    data = "\x01\x01\x01\x01\u2713".encode() * (MIB // 7)  # 5 encoded bytes per byte: the page is shortened
    for cut in range(1, 7):  # wherever the proportional cut lands, the page ends on a character boundary
        shifted = b"a" * cut + data
        page = logchunks.decode_bounded_page(shifted, final=True)
        assert page.consumed < len(shifted)
        assert page.text == shifted[: page.consumed].decode()  # strict: no character was split


def test_the_encoded_size_is_what_the_response_carries() -> None:
    for text in ("", "plain", '"\\', "\x01\ufffd", "\U0001f600", "é"):
        assert logchunks.encoded_size(text) == len(json.dumps(json.dumps(text)))
        inner = json.dumps({"text": text}, separators=(",", ":"))
        assert len(json.dumps(inner)) - len(json.dumps(json.dumps({"text": ""}, separators=(",", ":")))) == len(
            json.dumps(json.dumps(text))
        ) - len(json.dumps(json.dumps("")))
