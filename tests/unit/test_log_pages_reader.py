"""GET /jobs/{id}/logs over chunks and a relay shard's pages (docs/logs.md, "Shared pages"): the committed chunks,
then the pointed-to writer's paged bytes; cursors into paged bytes are valid; a cursor no page can explain is not.
And the store's side against moto: pages written, read newest first back to the cursor, folded into chunks."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws

from controlplane.adapters.logs import DynamoLogStore
from controlplane.adapters.schema import LOGS
from controlplane.core import logchunks, logpages
from controlplane.core.errors import InvalidRequest
from controlplane.core.lifecycle import JobStatus
from controlplane.core.logpages import Entry, PagePointer
from controlplane.core.models import Job
from controlplane.core.ports import LogProgress
from controlplane.service.jobs import JobService, LogPage

POINTER = PagePointer("shard-0001-abc", 3, "w1")


class _Jobs:
    def __init__(self, job: Job) -> None:
        self.job = job

    def get(self, job_id: str) -> Job | None:
        return self.job if job_id == self.job.job_id else None


class _PagedLogs:
    """Chunks up to `committed`, then `tail` in the pointer's pages."""

    def __init__(self, chunked: bytes, tail: bytes, complete: bool = False) -> None:
        self.chunked, self.tail = chunked, tail
        self.state = LogProgress(len(chunked), complete, pages=None if complete else POINTER)
        self.paged_from: list[int] = []

    def progress(self, job_id: str) -> LogProgress:
        return self.state

    def chunks(self, job_id: str, after: int, max_bytes: int) -> list[tuple[int, bytes]]:
        return logchunks.cut(after, self.chunked[after : after + max_bytes], 7)

    def paged(self, job_id: str, pointer: PagePointer, start: int) -> bytes:
        assert pointer == POINTER
        self.paged_from.append(start)
        return self.tail[start - len(self.chunked) :]


def _page(logs: _PagedLogs, after: str | None, limit: int = 1024 * 1024) -> LogPage:
    now = dt.datetime.now(dt.UTC)
    job = Job(
        job_id="job-1", team_id="t", provider_id="p", region="us-east-1", status=JobStatus.RUNNING,
        created_at=now, updated_at=now, instance_id="i-1",
    )  # fmt: skip
    return JobService(_Jobs(job), None, None, logs).logs("t", "job-1", after, limit)  # type: ignore[arg-type]


def test_a_page_is_the_committed_chunks_then_the_paged_tail() -> None:
    logs = _PagedLogs(b"epoch 1 loss=0.5\n", b"epoch 2 loss=0.4\n")
    page = _page(logs, None)
    assert (page.text, page.next_cursor, page.final) == ("epoch 1 loss=0.5\nepoch 2 loss=0.4\n", "34", False)
    assert _page(logs, "20").text == "ch 2 loss=0.4\n"  # a cursor inside the paged bytes
    assert _page(logs, "34").text == ""  # nothing new yet
    assert logs.paged_from[-2:] == [20, 34]  # pages are read from the cursor on, not from the committed offset


def test_a_page_limit_spanning_chunks_and_pages_is_kept() -> None:
    logs = _PagedLogs(b"0123456789", b"abcdefghij")
    page = _page(logs, "5", limit=1024)
    assert page.text == "56789abcdefghij"
    logs2 = _PagedLogs(b"x" * 2000, b"y" * 100)
    assert _page(logs2, None, limit=1024).text == "x" * 1024  # the limit falls in the chunks: no page is read
    assert logs2.paged_from == []


def test_a_cursor_into_bytes_the_next_loop_has_not_re_read_yet_waits_and_one_beyond_any_tail_is_refused() -> None:
    logs = _PagedLogs(b"abc", b"")
    page = _page(logs, "10")  # a dead loop paged up to here; its successor resumed from 3 and is re-reading
    assert (page.text, page.next_cursor) == ("", "10")
    with pytest.raises(InvalidRequest):
        _page(logs, str(3 + logpages.MAX_PAGED_AHEAD + 1))
    finished = _PagedLogs(b"abc", b"", complete=True)
    with pytest.raises(InvalidRequest):
        _page(finished, "4")  # no pages: beyond the relayed output, as before


# -- the store, against moto ---------------------------------------------------------------------------------------


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> Iterator[DynamoLogStore]:
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        boto3.client("dynamodb").create_table(**LOGS.create_table_kwargs("logs"))
        yield DynamoLogStore(boto3.resource("dynamodb").Table("logs"))


def _line(n: int) -> bytes:
    return b"step %04d\n" % n


def test_pages_are_read_newest_first_only_back_to_the_cursor(store: DynamoLogStore) -> None:
    pointer = PagePointer("s1", 0, "w1")
    store.commit("job-1", 0, pages=pointer)
    for seq in range(100):  # job-1 prints a line every 10th page; a neighbour on every page
        entries = [Entry("job-2", "w9", seq * 10, _line(seq))]
        if seq % 10 == 3:
            entries.append(Entry("job-1", "w1", (seq // 10) * 10, _line(seq // 10)))
        entries.append(Entry("job-1", "old-loop", 0, b"another loop's bytes\n"))
        store.write_page("s1", seq, entries)
    whole = b"".join(_line(n) for n in range(10))
    assert store.paged("job-1", pointer, 0) == whole
    assert store.paged("job-1", pointer, 95) == whole[95:]
    queries: list[int] = []
    original = store.table.query

    def counted(**kwargs: object) -> object:
        queries.append(1)
        return original(**kwargs)

    store.table.query = counted  # type: ignore[method-assign]
    assert store.paged("job-1", pointer, 95) == whole[95:]
    assert len(queries) == 1  # the newest 8 pages hold the cursor's line: one query
    assert store.paged("job-1", PagePointer("s1", 0, "nobody"), 0) == b""


def test_fold_pages_compacts_a_dead_loop_s_tail_and_a_new_attempt_drops_the_pointer(store: DynamoLogStore) -> None:
    store.write("job-1", [(0, b"first\n")])
    store.commit("job-1", 6, pages=PagePointer("s1", 4, "w1"))
    store.write_page("s1", 4, [Entry("job-1", "w1", 6, b"second\n")])
    store.write_page("s1", 5, [Entry("job-1", "w1", 13, b"third\n")])
    progress = store.fold_pages("job-1")
    assert progress.committed == 19
    assert logchunks.assemble(store.chunks("job-1", 0, 100), 0, 100) == b"first\nsecond\nthird\n"
    assert store.fold_pages("job-1") == progress  # nothing more to fold
    store.commit("job-1", 19, complete=True)
    assert store.fold_pages("job-1").complete
