"""Log chunks (pure): how relayed output is cut into DynamoDB items and put back together.

A chunk is the raw bytes of the job's output file from a byte offset; items are keyed by that offset, so a retried
write rewrites the same item. Chunks end on a UTF-8 character boundary (an incomplete multi-byte sequence at the
end of what was read waits for its remaining bytes), except where the stored layout splits a chunk at a span
boundary (see below: pages are decoded after assembly, never chunk by chunk); bytes that are not valid UTF-8 at
all are kept and shown as U+FFFD. Reading tolerates overlapping chunks (a relay that crashed after writing but
before committing re-writes from the committed offset with other boundaries): the bytes at any offset are the same
file bytes whichever chunk holds them.
"""

from __future__ import annotations

import codecs
import json
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

MAX_CHUNK_BYTES = 300 * 1024  # DynamoDB items are limited to 400 KB including attribute names
# A logs page's text, as it travels in the API Lambda's response, takes at most this many bytes. Lambda's synchronous
# response is at most 6 MB (6,291,456 bytes); the rest of the response (cursor, headers) is well under 2 MB. The text
# is escaped twice on the way: as a JSON string in the API's body (ASCII-only: U+FFFD becomes \ufffd, a control
# character \u0001), and the body again as a string in the proxy response. Worst case 7 bytes per byte of output,
# so a page of invalid UTF-8 carries about 599 KB (docs/limits.md).
MAX_PAGE_ENCODED_BYTES = 4 * 1024 * 1024


def incomplete_tail(data: bytes | bytearray) -> int:
    """How many trailing bytes are the start of a UTF-8 character whose remaining bytes have not arrived (0-3).
    Invalid bytes do not count: they are released (and shown as U+FFFD), never held forever."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:  # a continuation byte: keep looking for the lead byte
            continue
        if byte < 0x80:
            return 0
        needed = 2 if byte & 0xE0 == 0xC0 else 3 if byte & 0xF0 == 0xE0 else 4 if byte & 0xF8 == 0xF0 else 0
        return back if back < needed else 0
    return 0


def ready_bytes(pending: bytes | bytearray, final: bool) -> int:
    """How many bytes of `pending` may be flushed now (all of them at the end of the output)."""
    return len(pending) if final else len(pending) - incomplete_tail(pending)


def cut(offset: int, data: bytes, max_bytes: int = MAX_CHUNK_BYTES) -> list[tuple[int, bytes]]:
    """Split `data` (which starts at `offset`) into chunks of at most `max_bytes`, each ending on a character
    boundary where the data has one."""
    chunks: list[tuple[int, bytes]] = []
    start = 0
    while start < len(data):
        end = min(start + max_bytes, len(data))
        if end < len(data):
            back = incomplete_tail(data[start:end])
            if 0 < back < end - start:
                end -= back
        chunks.append((offset + start, data[start:end]))
        start = end
    return chunks


def assemble(chunks: Iterable[tuple[int, bytes]], start: int, limit: int) -> bytes:
    """The contiguous bytes from `start` (at most `limit`), from chunks in offset order; stops at a gap."""
    out = bytearray()
    position = start
    for offset, data in chunks:
        end = offset + len(data)
        if end <= position:
            continue  # wholly before (or an overlapping rewrite of) what we already have
        if offset > position:
            break  # a gap: not written yet
        piece = data[position - offset : position - offset + (limit - len(out))]
        out += piece
        position += len(piece)
        if len(out) >= limit:
            break
    return bytes(out)


@dataclass(frozen=True)
class DecodedPage:
    text: str
    consumed: int  # bytes turned into text; the next page starts this far after the page's start


def decode_page(data: bytes, final: bool) -> DecodedPage:
    """UTF-8 text of a page of output. Unless `final`, a character cut by the page end is left for the next page."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    text = decoder.decode(data, final=final)
    held = len(decoder.getstate()[0])
    return DecodedPage(text=text, consumed=len(data) - held)


def encoded_size(text: str) -> int:
    """Bytes `text` takes in the API Lambda's response: a JSON string (ASCII-only, as the API's serializer writes it)
    inside the body, which the Lambda runtime writes as a JSON string again. Exact for the text's own part."""
    return len(json.dumps(json.dumps(text)))


def decode_bounded_page(data: bytes, final: bool, max_encoded: int = MAX_PAGE_ENCODED_BYTES) -> DecodedPage:
    """decode_page, shortened until its text's encoded_size is at most `max_encoded`. The cursor stays exact:
    `consumed` counts exactly the bytes the text stands for (a character cut by a shorter end waits for the next
    page, as with any page end), so pages concatenate to the same text, none lost or repeated."""
    page = decode_page(data, final)
    size = encoded_size(page.text)
    length = len(data)
    while size > max_encoded and length > 0:
        length = min(length - 1, length * max_encoded // size)  # proportional, and strictly shorter each time
        page = decode_page(data[:length], final=False)
        size = encoded_size(page.text)
    return page


# -- the stored layout: which partition key a chunk lives under, and how its bytes are encoded --------------------
#
# DynamoDB serves at most 1,000 write units (1 KB each) per second per partition, so one partition key caps a job's
# log near 1 MB/s. A job's output is therefore spread over PARTITIONS keys: the file is divided into spans of
# SPAN_BYTES, span s lives under key number s % PARTITIONS, and no stored chunk crosses a span boundary. Where a chunk
# lives is a pure function of (job id, offset), so any writer (a resumed relay, a relay following many jobs, a later
# attempt of the job continuing the same stream) and any reader agree without coordination. The sort key stays the
# chunk's starting byte offset. Changing SPAN_BYTES or PARTITIONS changes where stored logs are found: it is a
# storage format change.

SPAN_BYTES = 256 * 1024
PARTITIONS = 16
ZLIB = "zlib"  # the `enc` flag of a compressed chunk; chunks without it hold the raw bytes
ZLIB_LEVEL = 1  # fast: several times smaller on log text at well over 50 MB/s per core


def partition_of(offset: int) -> int:
    """The partition number (0 .. PARTITIONS-1) of the span holding byte `offset`."""
    return (offset // SPAN_BYTES) % PARTITIONS


def partition_key(job_id: str, offset: int) -> str:
    """The partition key value of the chunk starting at `offset`: partition 0 is the job id itself (where the job's
    progress item lives too), partition k is `<job id>#<k>` (job ids never contain '#')."""
    return shard_key(job_id, partition_of(offset))


def shard_key(job_id: str, shard: int) -> str:
    """The partition key value of the job's partition number `shard`."""
    return job_id if shard == 0 else f"{job_id}#{shard}"


def span_end(offset: int) -> int:
    """The first byte offset after the span holding `offset`."""
    return (offset // SPAN_BYTES + 1) * SPAN_BYTES


def split_at_spans(chunks: Iterable[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    """The same bytes, with every chunk that crosses a span boundary split there (a chunk may then end inside a
    UTF-8 character: pages are decoded after assembly, never chunk by chunk)."""
    out: list[tuple[int, bytes]] = []
    for offset, data in chunks:
        start = 0
        while start < len(data):
            end = min(len(data), span_end(offset + start) - offset)
            out.append((offset + start, data[start:end]))
            start = end
    return out


def encode_chunk(data: bytes) -> tuple[bytes, str | None]:
    """What to store for a chunk: zlib-compressed when that is smaller (flagged ZLIB), else the raw bytes (None)."""
    packed = zlib.compress(data, ZLIB_LEVEL)
    return (packed, ZLIB) if len(packed) < len(data) else (data, None)


def decode_chunk(stored: bytes, encoding: str | None, size: int | None = None) -> bytes:
    """The raw bytes of a stored chunk; raises ValueError for an unknown encoding or a size that does not match."""
    if encoding is None:
        data = stored
    elif encoding == ZLIB:
        data = zlib.decompress(stored)
    else:
        raise ValueError(f"unknown log chunk encoding {encoding!r}")
    if size is not None and len(data) != size:
        raise ValueError(f"log chunk holds {len(data)} bytes, its record says {size}")
    return data
