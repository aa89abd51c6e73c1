"""Log chunks (pure): how relayed output is cut into DynamoDB items and put back together.

A chunk is the raw bytes of the job's output file from a byte offset; items are keyed by that offset, so a retried
write rewrites the same item. Chunks end on a UTF-8 character boundary (an incomplete multi-byte sequence at the
end of what was read waits for its remaining bytes), so each chunk decodes on its own; bytes that are not valid
UTF-8 at all are kept and shown as U+FFFD. Reading tolerates overlapping chunks (a relay that crashed after writing
but before committing re-writes from the committed offset with other boundaries): the bytes at any offset are the
same file bytes whichever chunk holds them.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable
from dataclasses import dataclass

MAX_CHUNK_BYTES = 300 * 1024  # DynamoDB items are limited to 400 KB including attribute names


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
