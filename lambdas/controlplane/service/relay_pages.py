"""A relay shard's shared log pages (core/logpages.py, docs/logs.md "Shared pages").

`PageWriter`: one per shard invocation. The shard's job loops hand it their small flushes; every PAGE_TICK_SECONDS
it writes what it was handed as one page (more if a tick's bytes exceed PAGE_MAX_BYTES), then tells each loop its
bytes are stored. One write for every job that printed something in that moment, instead of one per job.

`PagedTail`: one job loop's side. A flush of at most ENTRY_MAX_BYTES becomes a page entry; the bytes only pages hold
(the tail) are compacted — written as the job's own chunks and committed, with the pointer to the pages that
continue it — once they reach COMPACT_BYTES or COMPACT_SECONDS, with a larger flush, and when the loop ends.
"""

from __future__ import annotations

import logging
import random
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Protocol

from controlplane.core import logpages
from controlplane.core.logpages import Entry, PagePointer

logger = logging.getLogger(__name__)


class PageStore(Protocol):
    def write_page(self, stream: str, seq: int, entries: list[Entry]) -> None: ...


class PageWriter:
    """Writes a stream of pages (`pages#<stream>`, seq 0, 1, ...) from what its job loops hand it."""

    def __init__(self, store: PageStore, stream: str | None = None, tick: float = logpages.PAGE_TICK_SECONDS) -> None:
        self.store = store
        self.stream = stream or secrets.token_hex(8)
        self.tick = tick
        self._lock = threading.Condition()
        self._pending: list[tuple[Entry, Future[None]]] = []
        self._seq = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="relay-pages", daemon=True)
        self._thread.start()

    def pointer(self, writer: str) -> PagePointer:
        """Where `writer`'s entries handed over from now on will be: this stream, from the next page on."""
        with self._lock:
            return PagePointer(self.stream, self._seq, writer)

    def append(self, entry: Entry) -> Future[None]:
        """Hand over bytes; the future completes once the page holding them is stored (or fails with its error)."""
        done: Future[None] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the relay shard's page writer has stopped")
            self._pending.append((entry, done))
            self._lock.notify()
        return done

    def close(self) -> None:
        """Write what is pending and stop."""
        with self._lock:
            self._closed = True
            self._lock.notify()
        self._thread.join()

    def _take(self) -> tuple[list[tuple[Entry, Future[None]]], int, list[list[Entry]]]:
        with self._lock:
            while not self._pending and not self._closed:
                self._lock.wait()
            taken, self._pending = self._pending, []
            pages = logpages.split(logpages.merge(entry for entry, _ in taken))
            first = self._seq
            self._seq += len(pages)  # reserved now: an entry handed over later goes to a later page
            return taken, first, pages

    def _run(self) -> None:
        while True:
            started = time.monotonic()
            taken, first, pages = self._take()
            if not taken:
                return  # closed, nothing left
            error: BaseException | None = None
            try:
                for number, page in enumerate(pages):
                    self.store.write_page(self.stream, first + number, page)
            except Exception as failure:  # noqa: BLE001 - every loop whose bytes were in it gets the error
                logger.warning("a log page could not be written", extra={"stream": self.stream})
                error = failure
            for _, done in taken:
                if error is None:
                    done.set_result(None)
                else:
                    done.set_exception(error)
            with self._lock:
                closing = self._closed
            if not closing:
                time.sleep(max(0.0, self.tick - (time.monotonic() - started)))


class PagedTail:
    """One relay loop's writes through its shard's pages (see the module's docstring). `compact_to` writes chunks
    and commits the offset after them with the pointer given (RelayService._store)."""

    def __init__(
        self,
        job_id: str,
        pages: PageWriter,
        start: int,
        compact_to: Callable[[int, bytes, PagePointer], None],
        check_lease: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.job_id = job_id
        self.jitter = jitter  # in [0, 1): where between its bounds each tail's age limit falls (COMPACT_SPREAD)
        self.age_limit = self._draw_age_limit()
        self.pages = pages
        self.writer = secrets.token_hex(6)  # this loop's name on its entries
        self.start = start  # the committed offset: the tail begins here
        self.tail = bytearray()
        self.since = 0.0  # when the tail's first byte was paged
        self.pointed = (clock(), -1)  # when the job's pointer was last written, and its page number
        self.compact_to = compact_to
        self.check_lease = check_lease  # raises once the loop's lease has ended: nothing more is handed over
        self.clock = clock

    def pointer(self) -> PagePointer:
        return self.pages.pointer(self.writer)

    def can_page(self, size: int, final: bool = False) -> bool:
        """Whether a flush of `size` bytes goes to the pages (else: compacted, with the tail, at once)."""
        return not final and size <= logpages.ENTRY_MAX_BYTES and len(self.tail) + size < logpages.COMPACT_BYTES

    def append(self, offset: int, data: bytes) -> Future[None]:
        """Hand a small flush to the shard's pages; the future completes once its page is stored. Flushes may be
        handed over without waiting for the previous one: pages keep their order."""
        self._in_order(offset)
        self.check_lease()
        stored = self.pages.append(Entry(self.job_id, self.writer, offset, data))
        if not self.tail:
            self.since = self.clock()
        self.tail += data
        return stored

    def store(self, offset: int, data: bytes, final: bool = False) -> None:
        """A flush, paged (waiting until its page is stored) or compacted with the tail."""
        if self.can_page(len(data), final):
            self.append(offset, data).result()
            return
        self._in_order(offset)
        self.compact(data)

    def _in_order(self, offset: int) -> None:
        if offset != self.start + len(self.tail):
            raise ValueError(f"out of order: {offset} after a tail ending at {self.start + len(self.tail)}")

    def _draw_age_limit(self) -> float:
        return logpages.COMPACT_SECONDS * (1.0 - logpages.COMPACT_SPREAD * self.jitter())

    def due(self) -> bool:
        """The tail is old enough to be compacted although the job printed little since; or the job printed nothing
        for that long while the shard's other jobs wrote pages: its pointer moves up to the newest page, so a reader
        never reads back more than COMPACT_SECONDS of pages to learn that nothing is new. "Long enough" is this
        tail's age limit, at most COMPACT_SECONDS (COMPACT_SPREAD)."""
        now = self.clock()
        if self.tail:
            return now - self.since >= self.age_limit
        at, seq = self.pointed
        return now - at >= self.age_limit and self.pages.pointer(self.writer).seq > seq

    def compact(self, more: bytes = b"", repoint: bool = False) -> None:
        """Write the tail (and `more` after it) as the job's chunks and commit them, with the pointer to the pages
        that follow; with nothing to write, only when `repoint` (or due) is asked for."""
        data = bytes(self.tail) + more
        if not data and not (repoint or self.due()):
            return
        pointer = self.pointer()
        self.compact_to(self.start, data, pointer)
        self.pointed = (self.clock(), pointer.seq)
        self.start += len(data)
        self.tail.clear()
        self.age_limit = self._draw_age_limit()
