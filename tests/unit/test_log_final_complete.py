"""A log that ends is `final` (stop polling); it is `complete` only when it is also whole: the relay read everything
the instance wrote (the wrapper's drain handshake, stored as `drained`), or the job never had an instance. A tail
lost to a cancel, a spot interruption or a lost instance is final, never complete (issue 14 §6)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from controlplane.adapters.logs import DynamoLogStore
from controlplane.adapters.schema import LOGS
from controlplane.core import logchunks
from controlplane.core.lifecycle import FailureReason, JobStatus
from controlplane.core.models import Job
from controlplane.core.ports import LogProgress
from controlplane.service.jobs import JobService, LogPage

OUTPUT = b"epoch 1 loss=0.5\nepoch 2 loss=0.3\n"


# -- the store: `drained` is stored beside `complete`, and once set it stays --------------------------------------


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> Iterator[DynamoLogStore]:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        boto3.client("dynamodb").create_table(**LOGS.create_table_kwargs("logs"))
        yield DynamoLogStore(boto3.resource("dynamodb").Table("logs"))


def test_a_new_log_is_neither_final_nor_drained(store: DynamoLogStore) -> None:
    assert store.progress("job-1") == LogProgress(committed=0, complete=False, drained=False)
    store.commit("job-1", 10)
    assert store.progress("job-1") == LogProgress(committed=10, complete=False, drained=False)


def test_a_lost_tail_is_complete_in_storage_but_not_drained(store: DynamoLogStore) -> None:
    store.commit("job-1", 10)
    store.commit("job-1", 10, complete=True)  # the instance is gone: nothing more will be relayed
    assert store.progress("job-1") == LogProgress(committed=10, complete=True, drained=False)


def test_drained_is_stored_implies_complete_and_is_never_cleared(store: DynamoLogStore) -> None:
    store.commit("job-1", 34, drained=True)
    assert store.progress("job-1") == LogProgress(committed=34, complete=True, drained=True)
    # Later commits without it (the instance-event or reconciler's "nothing more", a late relay commit) keep it.
    store.commit("job-1", 34, complete=True)
    store.commit("job-1", 34)
    assert store.progress("job-1") == LogProgress(committed=34, complete=True, drained=True)


def test_a_stale_drained_commit_is_ignored_like_any_stale_commit(store: DynamoLogStore) -> None:
    store.commit("job-1", 50)
    store.commit("job-1", 40, drained=True)  # behind the committed offset: a stale writer
    assert store.progress("job-1") == LogProgress(committed=50, complete=False, drained=False)


def test_a_progress_item_written_before_drained_existed_reads_as_not_drained(store: DynamoLogStore) -> None:
    store.table.put_item(Item={"job_id": "job-1", "offset": -1, "committed": 7, "complete": True})
    assert store.progress("job-1") == LogProgress(committed=7, complete=True, drained=False)


# -- the logs page: final vs complete -------------------------------------------------------------------------


class _Jobs:
    def __init__(self, job: Job) -> None:
        self.job = job

    def get(self, job_id: str) -> Job | None:
        return self.job if job_id == self.job.job_id else None


class _Logs:
    def __init__(self, data: bytes, progress: LogProgress) -> None:
        self.data = data
        self.state = progress

    def progress(self, job_id: str) -> LogProgress:
        return self.state

    def chunks(self, job_id: str, after: int, max_bytes: int) -> list[tuple[int, bytes]]:
        return logchunks.cut(after, self.data[after : after + max_bytes], 1024)


def _page(status: JobStatus, progress: LogProgress, data: bytes = OUTPUT, **fields: Any) -> LogPage:
    now = dt.datetime.now(dt.UTC)
    job = Job(
        job_id="job-1",
        team_id="t",
        provider_id="p",
        region="us-east-1",
        status=status,
        created_at=now,
        updated_at=now,
        **({"instance_id": "i-1"} | fields),
    )
    service = JobService(_Jobs(job), None, None, _Logs(data, progress))  # type: ignore[arg-type]
    return service.logs("t", "job-1", None, 1024 * 1024)


def test_a_drained_job_is_final_and_complete() -> None:
    page = _page(JobStatus.SUCCEEDED, LogProgress(committed=len(OUTPUT), complete=True, drained=True))
    assert (page.text, page.next_cursor) == (OUTPUT.decode(), str(len(OUTPUT)))
    assert (page.final, page.complete) == (True, True)


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (JobStatus.FAILED, FailureReason.INSTANCE_LOST),
        (JobStatus.FAILED, FailureReason.SPOT_INTERRUPTED),
        (JobStatus.CANCELLED, None),
    ],
)
def test_a_job_whose_instance_went_before_the_drain_is_final_but_not_complete(
    status: JobStatus, reason: FailureReason | None
) -> None:
    progress = LogProgress(committed=len(OUTPUT), complete=True, drained=False)
    page = _page(status, progress, failure_reason=reason)
    assert page.text == OUTPUT.decode()  # what was relayed is all there
    assert (page.final, page.complete) == (True, False)  # stop polling; the tail may be missing


def test_a_job_that_never_had_an_instance_is_final_and_complete_with_an_empty_log() -> None:
    page = _page(
        JobStatus.FAILED,
        LogProgress(committed=0, complete=False),  # nothing was ever committed for it
        b"",
        instance_id=None,
        failure_reason=FailureReason.LAUNCH_ERROR,
    )
    assert (page.text, page.next_cursor, page.final, page.complete) == ("", "0", True, True)


def test_a_running_job_is_neither_final_nor_complete() -> None:
    page = _page(JobStatus.RUNNING, LogProgress(committed=len(OUTPUT), complete=False))
    assert page.text == OUTPUT.decode()
    assert (page.final, page.complete) == (False, False)


def test_an_ended_job_whose_output_is_still_being_relayed_is_not_final_yet() -> None:
    # Spot-interrupted: the job ended but the instance writes on for its two minutes; the relay still reads.
    progress = LogProgress(committed=len(OUTPUT), complete=False)
    page = _page(JobStatus.FAILED, progress, failure_reason=FailureReason.SPOT_INTERRUPTED)
    assert (page.final, page.complete) == (False, False)


def test_a_drained_log_is_final_and_complete_only_on_the_page_that_reaches_its_end() -> None:
    data = b"x" * 5000
    progress = LogProgress(committed=len(data), complete=True, drained=True)
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
    service = JobService(_Jobs(job), None, None, _Logs(data, progress))  # type: ignore[arg-type]
    first = service.logs("t", "job-1", None, 1024)  # the smallest page: 1 KiB of 5,000 bytes
    assert (first.next_cursor, first.final, first.complete) == ("1024", False, False)
    last = service.logs("t", "job-1", "4096", 1024)
    assert (last.next_cursor, last.final, last.complete) == ("5000", True, True)


# -- the OpenAPI document says both -----------------------------------------------------------------------------


def test_the_documented_log_page_has_final_and_complete_with_their_meanings() -> None:
    from controlplane.handlers import api
    from controlplane.handlers.openapi_doc import document

    schema = document(api.app)["components"]["schemas"]["LogPage"]
    assert set(schema["properties"]) == {"job_id", "text", "next_cursor", "complete", "final"}
    assert {"complete", "final"} <= set(schema["required"])
    assert "stop polling" in schema["properties"]["final"]["description"]
    assert "whole" in schema["properties"]["complete"]["description"]
    assert "may be missing" in schema["properties"]["complete"]["description"]
