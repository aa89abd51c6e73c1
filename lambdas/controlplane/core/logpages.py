"""Log pages (pure): the newest output of many jobs, written together (docs/logs.md, "Shared pages").

A relay shard follows up to 25 jobs. Writing each job's every flush as its own item costs a write unit per flush
per job (a line a second is 3,600 an hour, before the commit that follows each), so a shard gathers what its jobs
printed in the last moment into one *page*: one item, the entries of every job that had new bytes, written every
PAGE_TICK seconds. A job's bytes are later *compacted*: written as ordinary chunks (core/logchunks.py) and
committed, after which its pages no longer matter.

An entry is `(job_id, writer, offset, bytes)`: `writer` names the relay loop that read those bytes (a new loop, a
new attempt or another shard writes under another name), and the job's progress item says which writer's entries
continue its committed log, from which page on (`PagePointer`). Bytes at a log offset are the same whichever loop
read them, so entries may overlap; readers take the pointer's writer's entries and put them back together like
chunks.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

PAGE_TICK_SECONDS = 0.25  # a shard writes a page this often, when any of its jobs printed something
PAGE_MAX_BYTES = 96 * 1024  # a page's raw entries at most (an item is at most 400 KB: a busy tick writes several)
ENTRY_MAX_BYTES = 16 * 1024  # a flush larger than this is no page entry: the job's tail is compacted at once
COMPACT_BYTES = 32 * 1024  # a job's bytes held only in pages: compacted once they reach this much...
COMPACT_SECONDS = 30.0  # ... or this age (a reader reads at most this long's pages back: 120, about 8 queries)
# Each tail's age limit is drawn anew between (1 - COMPACT_SPREAD) x COMPACT_SECONDS and COMPACT_SECONDS: loops that
# started together (a shard's invocation starts all of them) would otherwise compact together every 30 s, a burst
# of two writes per job that held up the shard's pages for seconds (bench section 8, 200 jobs).
COMPACT_SPREAD = 0.4
MAX_PAGED_AHEAD = COMPACT_BYTES + ENTRY_MAX_BYTES  # a loop's tail (bytes only pages hold) is at most this long
_HEADER = struct.Struct(">BI")  # format version, length of the JSON index
_VERSION_RAW, _VERSION_ZLIB = 1, 2


@dataclass(frozen=True)
class Entry:
    job_id: str
    writer: str
    offset: int
    data: bytes

    @property
    def end(self) -> int:
        return self.offset + len(self.data)


@dataclass(frozen=True)
class PagePointer:
    """Where a job's newest, not yet compacted bytes are: `stream`'s pages from `seq` on, `writer`'s entries."""

    stream: str
    seq: int
    writer: str


def encode(entries: Iterable[Entry]) -> bytes:
    """One page's stored form: a JSON index `[[job_id, writer, offset, size], ...]` then the bytes, zlib-compressed
    when that is smaller."""
    listed = list(entries)
    index = json.dumps([[e.job_id, e.writer, e.offset, len(e.data)] for e in listed], separators=(",", ":")).encode()
    body = index + b"".join(e.data for e in listed)
    packed = zlib.compress(body, 1)
    if len(packed) < len(body):
        return _HEADER.pack(_VERSION_ZLIB, len(index)) + packed
    return _HEADER.pack(_VERSION_RAW, len(index)) + body


def decode(stored: bytes) -> list[Entry]:
    version, index_size = _HEADER.unpack_from(stored)
    body = stored[_HEADER.size :]
    if version == _VERSION_ZLIB:
        body = zlib.decompress(body)
    elif version != _VERSION_RAW:
        raise ValueError(f"unknown log page version {version}")
    index = json.loads(body[:index_size])
    entries: list[Entry] = []
    position = index_size
    for job_id, writer, offset, size in index:
        entries.append(Entry(str(job_id), str(writer), int(offset), bytes(body[position : position + size])))
        position += size
    return entries


def merge(entries: Iterable[Entry]) -> list[Entry]:
    """Entries with each run of contiguous bytes of one (job, writer) joined: a page lists a job once per run."""
    merged: list[Entry] = []
    last: dict[tuple[str, str], int] = {}
    for entry in entries:
        key = (entry.job_id, entry.writer)
        at = last.get(key)
        if at is not None and merged[at].end == entry.offset:
            previous = merged[at]
            merged[at] = Entry(previous.job_id, previous.writer, previous.offset, previous.data + entry.data)
            continue
        last[key] = len(merged)
        merged.append(entry)
    return merged


def split(entries: list[Entry], max_bytes: int = PAGE_MAX_BYTES) -> list[list[Entry]]:
    """Entries in pages of at most `max_bytes` of data each (an entry larger than that is a page of its own)."""
    pages: list[list[Entry]] = [[]]
    size = 0
    for entry in entries:
        if pages[-1] and size + len(entry.data) > max_bytes:
            pages.append([])
            size = 0
        pages[-1].append(entry)
        size += len(entry.data)
    return [page for page in pages if page]


def stitch(entries: Iterable[Entry], start: int) -> bytes:
    """The contiguous bytes from `start` that the entries hold (overlaps agree: they are the same file bytes); stops
    at the first gap."""
    out = bytearray()
    reach = start
    for entry in sorted(entries, key=lambda e: (e.offset, -len(e.data))):
        if entry.offset > reach:
            break
        if entry.end > reach:
            out += entry.data[reach - entry.offset :]
            reach = entry.end
    return bytes(out)
