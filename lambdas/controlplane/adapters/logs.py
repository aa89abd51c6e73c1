"""The logs table: one item per chunk of a job's output, keyed by the byte offset where it starts, plus one
progress item per job (offset -1 under the job id: the committed offset; `complete`, the log is final: nothing more
will be relayed; `drained`, the log is whole: the relay read everything the instance wrote; `pages_*`, where the
bytes after the committed offset are until they are compacted: a relay shard's pages).

A relay shard's pages (core/logpages.py) live under `pages#<stream>`, keyed by their sequence number: each holds
the newest bytes of several jobs, and expires after PAGE_RETENTION_SECONDS (by then every job's bytes in it were
compacted into chunks, or folded in by whoever finalised the log: `fold_pages`).

A job's chunks are spread over several partition keys (core/logchunks.py: span s of the file lives under key
s % PARTITIONS), because DynamoDB serves at most 1,000 write units per second per partition; chunks are stored
zlib-compressed when that is smaller (`enc` says so; readers get the raw bytes). Writes go out as BatchWriteItem;
throttled items (UnprocessedItems, or a whole batch refused with ProvisionedThroughputExceededException) are retried
with exponential backoff until written — a write returns only once every chunk is durably stored, so the offset
committed after it never covers a byte that is not. Only Query and key writes; no Scan.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from boto3.dynamodb.conditions import Key
from boto3.dynamodb.types import Binary
from botocore.exceptions import ClientError

from controlplane.core import logchunks, logpages
from controlplane.core.logpages import PagePointer
from controlplane.core.ports import LogProgress

PROGRESS_OFFSET = -1
BATCH_ITEMS = 25  # BatchWriteItem's limit (and 16 MB: 25 chunks of at most 300 KB stay far below it)
THROTTLE_CODES = frozenset({"ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded"})
BACKOFF_BASE_SECONDS = 0.05
BACKOFF_CAP_SECONDS = 2.0
STALL_SECONDS = 120.0  # no item written for this long: give up (the caller resumes from the committed offset)
PAGES_PREFIX = "pages#"  # a page stream's partition key: `pages#<stream>` (job ids start with `job-`)
PAGE_RETENTION_SECONDS = 24 * 3600  # pages matter for minutes (until compaction); kept a day
PAGES_FIRST_QUERY = 8  # a reader reads pages newest first, first this many (a follower's poll needs no more)...
PAGES_PER_QUERY = 32  # ... then this many at a time, until it reaches its offset


class LogWriteAbandoned(Exception):
    """Chunks could not all be written (throttled for too long, or the caller's deadline passed). Nothing was
    committed for them; a later writer resumes from the committed offset."""


def _bytes(value: Any) -> bytes:
    return bytes(value.value) if isinstance(value, Binary) else bytes(value)


def _chunk(item: dict[str, Any]) -> tuple[int, bytes]:
    size = item.get("size")
    data = logchunks.decode_chunk(_bytes(item["data"]), item.get("enc"), None if size is None else int(size))
    return int(item["offset"]), data


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


class DynamoLogStore:
    def __init__(self, table: Any, retention_days: int = 30, sleep: Callable[[float], None] = time.sleep) -> None:
        self.table = table
        self.retention_seconds = retention_days * 86400
        self.sleep = sleep

    def write(self, job_id: str, chunks: list[tuple[int, bytes]], *, give_up: Callable[[], bool] | None = None) -> None:
        """Put chunks (idempotent: a chunk at an offset always holds that part of the file). Returns once every
        one is stored; raises LogWriteAbandoned if `give_up()` turns true (or nothing is written for
        STALL_SECONDS) while throttled items wait to be retried."""
        if not chunks:
            return
        expires = int(time.time()) + self.retention_seconds
        requests: list[dict[str, Any]] = []
        for offset, data in logchunks.split_at_spans(chunks):
            stored, encoding = logchunks.encode_chunk(data)
            item: dict[str, Any] = {
                "job_id": logchunks.partition_key(job_id, offset),
                "offset": offset,
                "data": stored,
                "size": len(data),
                "expires_at": expires,
            }
            if encoding is not None:
                item["enc"] = encoding
            requests.append({"PutRequest": {"Item": item}})
        self._batch_write(requests, give_up)

    def _batch_write(self, requests: list[dict[str, Any]], give_up: Callable[[], bool] | None) -> None:
        """BatchWriteItem until every request is processed, retrying throttled ones with jittered exponential
        backoff (as AWS recommends for UnprocessedItems)."""
        client, name = self.table.meta.client, self.table.name
        pending = list(requests)
        refused = 0  # consecutive rounds in which nothing was written
        last_progress = time.monotonic()
        while pending:
            batch, pending = pending[:BATCH_ITEMS], pending[BATCH_ITEMS:]
            try:
                response = client.batch_write_item(RequestItems={name: batch})
                unprocessed = list(response.get("UnprocessedItems", {}).get(name, []))
            except ClientError as error:
                if _code(error) not in THROTTLE_CODES:
                    raise
                unprocessed = batch
            if not unprocessed:
                refused = 0
                last_progress = time.monotonic()
                continue
            if len(unprocessed) < len(batch):
                refused = 0
                last_progress = time.monotonic()
            else:
                refused += 1
            pending = unprocessed + pending  # keep offset order: the oldest bytes first
            if (give_up is not None and give_up()) or time.monotonic() - last_progress > STALL_SECONDS:
                raise LogWriteAbandoned(f"{len(pending)} log chunk writes still throttled; nothing committed for them")
            delay = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2**refused)
            self.sleep(delay * random.uniform(0.5, 1.0))  # jitter

    def commit(
        self,
        job_id: str,
        committed: int,
        *,
        complete: bool = False,
        drained: bool = False,
        new_attempt: bool = False,
        pages: PagePointer | None = None,
    ) -> None:
        """Advance the committed offset (never backwards: a stale writer's commit is ignored). `complete` (final:
        nothing more will be relayed), once set, stays set. `drained` (the log is whole: the relay read everything
        the instance wrote, confirmed by the wrapper's drain handshake) implies `complete` and, once set, stays set
        too: a later commit without it never clears it — except `new_attempt`: the output of a job's next attempt
        begins (core/recovery.py), whose own drain is still to come; the previous attempt's pages stop counting.
        `pages`: the bytes after `committed` are that writer's entries in those pages (core/logpages.py)."""
        complete = complete or drained
        sets = ["#c = :c", "expires_at = :exp", "#done = :done" if complete else "#done = if_not_exists(#done, :done)"]
        removes: list[str] = []
        names = {"#c": "committed", "#done": "complete"}
        values: dict[str, Any] = {
            ":c": committed,
            ":done": complete,
            ":exp": int(time.time()) + self.retention_seconds,
        }
        if drained or new_attempt:
            sets.append("#drained = :drained")
            names["#drained"] = "drained"
            values[":drained"] = drained
        if pages is not None:
            sets.append("pages_stream = :ps, pages_seq = :pq, pages_writer = :pw")
            values |= {":ps": pages.stream, ":pq": pages.seq, ":pw": pages.writer}
        elif new_attempt:
            removes.append("pages_stream, pages_seq, pages_writer")
        update = "SET " + ", ".join(sets) + (" REMOVE " + ", ".join(removes) if removes else "")
        try:
            self.table.update_item(
                Key={"job_id": job_id, "offset": PROGRESS_OFFSET},
                UpdateExpression=update,
                ConditionExpression="attribute_not_exists(#c) OR #c <= :c",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )
        except ClientError as error:
            if _code(error) != "ConditionalCheckFailedException":
                raise

    def discard_after(self, job_id: str, committed: int) -> int:
        """Delete chunks at or beyond the committed offset: leftovers of a relay that died between writing and
        committing. Resuming writes new chunks there with other boundaries; removing the old ones first keeps the
        committed region one clean, contiguous sequence. One key-only Query per partition. Returns how many were
        removed."""
        keys: list[dict[str, Any]] = []
        for shard in range(logchunks.PARTITIONS):
            pk = logchunks.shard_key(job_id, shard)
            kwargs: dict[str, Any] = {
                "KeyConditionExpression": Key("job_id").eq(pk) & Key("offset").gte(max(committed, 0)),
                "ProjectionExpression": "#o",
                "ExpressionAttributeNames": {"#o": "offset"},
                "ConsistentRead": True,
            }
            while True:
                page = self.table.query(**kwargs)
                keys += [{"job_id": pk, "offset": int(item["offset"])} for item in page["Items"]]
                if "LastEvaluatedKey" not in page:
                    break
                kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        self._batch_write([{"DeleteRequest": {"Key": key}} for key in keys], None)
        return len(keys)

    def progress(self, job_id: str) -> LogProgress:
        item = self.table.get_item(Key={"job_id": job_id, "offset": PROGRESS_OFFSET}, ConsistentRead=True).get("Item")
        if not item:
            return LogProgress(committed=0, complete=False, drained=False)
        pages = None
        if "pages_stream" in item:
            pages = PagePointer(str(item["pages_stream"]), int(item["pages_seq"]), str(item["pages_writer"]))
        return LogProgress(
            committed=int(item.get("committed", 0)),
            complete=bool(item.get("complete", False)),
            drained=bool(item.get("drained", False)),  # missing: written before drained existed, or not drained
            pages=pages,
        )

    def write_page(self, stream: str, seq: int, entries: list[logpages.Entry]) -> None:
        """Put one page of `stream` (retried while throttled, as chunks are; it returns once the page is stored)."""
        item = {
            "job_id": PAGES_PREFIX + stream,
            "offset": seq,
            "data": logpages.encode(entries),
            "expires_at": int(time.time()) + PAGE_RETENTION_SECONDS,
        }
        self._batch_write([{"PutRequest": {"Item": item}}], None)

    def paged(self, job_id: str, pointer: PagePointer, start: int) -> bytes:
        """The job's bytes from `start` on that its pointer's pages hold (contiguous; empty if none). Pages are read
        newest first and only back to the one that holds `start`: a client following the log reads the pages
        written since its last poll, not all since the job was last compacted."""
        mine: list[logpages.Entry] = []
        kwargs: dict[str, Any] = {
            "KeyConditionExpression": Key("job_id").eq(PAGES_PREFIX + pointer.stream) & Key("offset").gte(pointer.seq),
            "ScanIndexForward": False,
            "ConsistentRead": True,
            "Limit": PAGES_FIRST_QUERY,
        }
        while True:
            page = self.table.query(**kwargs)
            kwargs["Limit"] = PAGES_PER_QUERY
            for item in page["Items"]:
                for entry in logpages.decode(_bytes(item["data"])):
                    if entry.job_id == job_id and entry.writer == pointer.writer:
                        mine.append(entry)
            if any(entry.offset <= start for entry in mine) or "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return logpages.stitch(mine, start)

    def fold_pages(self, job_id: str) -> LogProgress:
        """Compact whatever a job's pages hold beyond its committed offset into chunks, commit it, and return the
        progress: what a log's finaliser calls before marking it complete (a relay that died leaves its newest
        bytes in its pages; readers saw them, so the final log keeps them)."""
        progress = self.progress(job_id)
        if progress.pages is None or progress.complete:
            return progress
        data = self.paged(job_id, progress.pages, progress.committed)
        if not data:
            return progress
        self.write(job_id, logchunks.cut(progress.committed, data))
        self.commit(job_id, progress.committed + len(data), pages=progress.pages)
        return self.progress(job_id)

    def chunks(self, job_id: str, after: int, max_bytes: int) -> list[tuple[int, bytes]]:
        """Chunks covering bytes from `after` on (about `max_bytes` of them), in offset order: the chunk holding
        byte `after` (it starts in the same span: no chunk crosses a span boundary), then the following ones, span
        by span, until `max_bytes` are covered or the stored bytes end. At most 2 + max_bytes / SPAN_BYTES queries
        (more only if a span's items exceed Query's 1 MB page)."""
        span_start = after - after % logchunks.SPAN_BYTES
        found = [
            _chunk(item)
            for item in self.table.query(
                KeyConditionExpression=Key("job_id").eq(logchunks.partition_key(job_id, after))
                & Key("offset").between(span_start, after),
                ScanIndexForward=False,
                Limit=1,
                ConsistentRead=True,
            )["Items"]
        ]
        reach = max((offset + len(data) for offset, data in found), default=after)  # covered up to here
        lower = after + 1
        while reach - after < max_bytes:
            upper = logchunks.span_end(lower) - 1
            kwargs: dict[str, Any] = {
                "KeyConditionExpression": Key("job_id").eq(logchunks.partition_key(job_id, lower))
                & Key("offset").between(lower, upper),
                "ConsistentRead": True,
            }
            while reach - after < max_bytes:
                page = self.table.query(**kwargs)
                for item in page["Items"]:
                    offset, data = _chunk(item)
                    found.append((offset, data))
                    reach = max(reach, offset + len(data))
                if "LastEvaluatedKey" not in page:
                    break
                kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
            if reach <= upper:
                break  # the stored bytes end inside this span (or a gap: not written yet)
            lower = upper + 1
        found.sort(key=lambda chunk: (chunk[0], -len(chunk[1])))
        return found
