"""Shared log pages: the pure codec (core/logpages.py) and a shard's page writer and one loop's tail
(service/relay_pages.py), against in-memory stores."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.core import logpages
from controlplane.core.logpages import Entry, PagePointer
from controlplane.service.relay_pages import PagedTail, PageWriter


def _cuts(data: bytes, points: list[int]) -> list[tuple[int, bytes]]:
    bounds = sorted({0, len(data), *(p % (len(data) + 1) for p in points)})
    return [(a, data[a:b]) for a, b in itertools.pairwise(bounds) if b > a]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000), st.lists(st.integers(min_value=0, max_value=3000), max_size=12), st.data())
def test_pages_round_trip_and_put_a_file_back_together_from_any_overlapping_entries(
    data: bytes, points: list[int], draw: st.DataObject
) -> None:
    """Entries of one writer, cut anywhere, some read twice with other boundaries (a loop that resumed), others of
    another job mixed in: decode(encode(...)) keeps every entry, and stitch from any offset gives the file's bytes."""
    entries = [Entry("job-a", "w1", offset, piece) for offset, piece in _cuts(data, points)]
    again = [Entry("job-a", "w1", offset, piece) for offset, piece in _cuts(data, [p + 7 for p in points])]
    noise = [Entry("job-b", "w1", e.offset, e.data[::-1]) for e in entries]
    mixed = draw.draw(st.permutations(entries + again + noise))
    assert logpages.decode(logpages.encode(mixed)) == mixed
    start = draw.draw(st.integers(min_value=0, max_value=len(data)))
    mine = [e for e in mixed if e.job_id == "job-a"]
    assert logpages.stitch(mine, start) == data[start:]


def test_stitch_stops_at_a_gap() -> None:
    entries = [Entry("j", "w", 0, b"abc"), Entry("j", "w", 5, b"fgh")]
    assert logpages.stitch(entries, 0) == b"abc"
    assert logpages.stitch(entries, 5) == b"fgh"


def test_merge_joins_contiguous_runs_of_one_writer_only_and_split_bounds_a_page() -> None:
    entries = [
        Entry("j", "w", 0, b"ab"),
        Entry("k", "w", 0, b"x"),
        Entry("j", "w", 2, b"cd"),
        Entry("j", "v", 4, b"ef"),  # another writer: not joined
        Entry("j", "w", 9, b"zz"),  # not contiguous: not joined
    ]
    assert logpages.merge(entries) == [
        Entry("j", "w", 0, b"abcd"),
        Entry("k", "w", 0, b"x"),
        Entry("j", "v", 4, b"ef"),
        Entry("j", "w", 9, b"zz"),
    ]
    big = [Entry(f"job-{i}", "w", 0, b"x" * 40) for i in range(10)]
    pages = logpages.split(big, max_bytes=100)
    assert [len(page) for page in pages] == [2, 2, 2, 2, 2]
    assert [e for page in pages for e in page] == big


def test_a_page_of_log_text_is_compressed_and_an_unknown_version_is_refused() -> None:
    text = [Entry(f"job-{i:02d}", "writer", 1000 * i, b"step %d loss=0.25 lr=3e-4\n" % i) for i in range(25)]
    stored = logpages.encode(text)
    assert len(stored) < sum(len(e.data) for e in text) + 25 * len('["job-00","writer",1000,26],')
    with pytest.raises(ValueError, match="version"):
        logpages.decode(b"\x09" + stored[1:])


class MemoryPages:
    def __init__(self, fail: bool = False) -> None:
        self.pages: dict[tuple[str, int], list[Entry]] = {}
        self.fail = fail
        self.lock = threading.Lock()

    def write_page(self, stream: str, seq: int, entries: list[Entry]) -> None:
        if self.fail:
            raise OSError("throttled for too long")
        with self.lock:
            assert (stream, seq) not in self.pages  # a page is written once
            self.pages[(stream, seq)] = entries


def test_what_loops_hand_over_while_a_page_is_written_goes_out_as_one_page() -> None:
    """The first entry after a quiet spell is written at once; the 24 handed over while that write is in flight go
    out together as the next page (one write for all of them), and each loop learns when its page is stored."""

    class GatedPages(MemoryPages):
        def __init__(self) -> None:
            super().__init__()
            self.writing, self.release = threading.Event(), threading.Event()

        def write_page(self, stream: str, seq: int, entries: list[Entry]) -> None:
            self.writing.set()
            assert self.release.wait(5)
            super().write_page(stream, seq, entries)

    store = GatedPages()
    writer = PageWriter(store, "shard-0001-aa", tick=0.05)
    try:
        first = writer.append(Entry("job-0", "w", 0, b"line 0\n"))
        assert store.writing.wait(5)  # page 0 (job-0's line alone) is being written
        rest = [writer.append(Entry(f"job-{i}", "w", 0, b"line %d\n" % i)) for i in range(1, 25)]
        assert not first.done()
        store.release.set()
        for future in [first, *rest]:
            future.result(timeout=5)
        assert [len(store.pages[("shard-0001-aa", seq)]) for seq in (0, 1)] == [1, 24]
        assert writer.pointer("w") == PagePointer("shard-0001-aa", 2, "w")  # the next page's number
    finally:
        store.release.set()
        writer.close()
    with pytest.raises(RuntimeError, match="stopped"):
        writer.append(Entry("job-0", "w", 8, b"late\n"))


def test_a_failed_page_fails_every_loop_whose_bytes_it_held() -> None:
    writer = PageWriter(MemoryPages(fail=True), "s", tick=0.01)
    try:
        future = writer.append(Entry("job-1", "w", 0, b"x"))
        with pytest.raises(OSError, match="throttled"):
            future.result(timeout=5)
    finally:
        writer.close()


class Compactions:
    def __init__(self) -> None:
        self.calls: list[tuple[int, bytes, PagePointer]] = []

    def __call__(self, offset: int, data: bytes, pointer: PagePointer) -> None:
        self.calls.append((offset, data, pointer))


def _tail(
    store: MemoryPages, clock: list[float], start: int = 100, jitter: Callable[[], float] = lambda: 0.0
) -> tuple[PagedTail, Compactions, PageWriter]:
    writer = PageWriter(store, "s", tick=0.01)
    compactions = Compactions()
    tail = PagedTail("job-1", writer, start, compactions, lambda: None, clock=lambda: clock[0], jitter=jitter)
    return tail, compactions, writer


def test_each_tail_s_age_limit_is_drawn_anew_within_the_spread() -> None:
    """Loops started together do not compact together: each tail's age limit falls between (1 - COMPACT_SPREAD) x
    COMPACT_SECONDS and COMPACT_SECONDS, drawn again after every compaction."""
    draws = iter([0.0, 0.999, 0.5])
    clock = [0.0]
    tail, _, writer = _tail(MemoryPages(), clock, start=0, jitter=lambda: next(draws))
    try:
        assert tail.age_limit == logpages.COMPACT_SECONDS
        tail.store(0, b"x\n")
        tail.compact()
        shortest = logpages.COMPACT_SECONDS * (1 - logpages.COMPACT_SPREAD)
        assert tail.age_limit == pytest.approx(shortest, abs=0.05)
        tail.store(2, b"y\n")
        clock[0] = tail.age_limit - 0.01
        assert not tail.due()
        clock[0] = tail.age_limit
        assert tail.due()
        tail.compact()
        assert shortest < tail.age_limit < logpages.COMPACT_SECONDS
    finally:
        writer.close()


def test_a_loop_s_small_flushes_are_paged_and_compacted_at_the_byte_bound_a_large_flush_or_its_end() -> None:
    store, clock = MemoryPages(), [0.0]
    tail, compactions, writer = _tail(store, clock)
    try:
        tail.store(100, b"a" * 1000)
        tail.store(1100, b"b" * 1000)
        assert compactions.calls == []
        paged = [e for entries in store.pages.values() for e in entries]
        assert logpages.stitch([e for e in paged if e.writer == tail.writer], 100) == b"a" * 1000 + b"b" * 1000
        tail.store(2100, b"c" * (logpages.ENTRY_MAX_BYTES + 1))  # a large flush: the tail and it, as chunks
        (offset, data, pointer), *_ = compactions.calls
        assert (offset, data) == (100, b"a" * 1000 + b"b" * 1000 + b"c" * (logpages.ENTRY_MAX_BYTES + 1))
        assert pointer == writer.pointer(tail.writer)  # readers look for what follows from the next page on
        end = 2100 + logpages.ENTRY_MAX_BYTES + 1
        for i in range(logpages.COMPACT_BYTES // 4096):  # the byte bound
            tail.store(end + 4096 * i, b"d" * 4096)
        assert len(compactions.calls) == 2
        assert compactions.calls[1][0] == end
        tail.store(end + logpages.COMPACT_BYTES, b"e")
        tail.store(end + logpages.COMPACT_BYTES + 1, b"f", final=True)  # the end: everything as chunks
        assert compactions.calls[2][:2] == (end + logpages.COMPACT_BYTES, b"ef")
    finally:
        writer.close()


def test_a_quiet_loop_s_tail_is_due_after_compact_seconds_and_out_of_order_bytes_are_refused() -> None:
    store, clock = MemoryPages(), [0.0]
    tail, compactions, writer = _tail(store, clock, start=0)
    try:
        assert not tail.due()
        tail.store(0, b"one line\n")
        clock[0] = logpages.COMPACT_SECONDS - 1
        assert not tail.due()
        clock[0] = logpages.COMPACT_SECONDS
        assert tail.due()
        tail.compact()
        assert compactions.calls[0][:2] == (0, b"one line\n")
        assert not tail.due()
        with pytest.raises(ValueError, match="out of order"):
            tail.store(5, b"x")
    finally:
        writer.close()


def test_nothing_is_handed_over_once_the_lease_has_ended() -> None:
    class Ended(Exception):
        pass

    def check() -> Any:
        raise Ended

    writer = PageWriter(MemoryPages(), "s", tick=0.01)
    try:
        tail = PagedTail("job-1", writer, 0, Compactions(), check)
        with pytest.raises(Ended):
            tail.store(0, b"x")
    finally:
        writer.close()


def test_a_quiet_loop_s_pointer_moves_up_while_the_shard_s_other_jobs_write_pages() -> None:
    """A job that printed nothing for COMPACT_SECONDS while other jobs' pages were written gets its pointer moved up
    (a commit of the same offset): a reader of it never reads back more than that long's pages."""
    store, clock = MemoryPages(), [0.0]
    tail, compactions, writer = _tail(store, clock, start=50)
    try:
        tail.compact(repoint=True)  # the loop's start: its pointer
        assert compactions.calls == [(50, b"", PagePointer("s", 0, tail.writer))]
        clock[0] = logpages.COMPACT_SECONDS + 1
        assert not tail.due()  # no page written since: nothing to skip
        writer.append(Entry("job-2", "w2", 0, b"busy neighbour\n")).result(timeout=5)
        assert tail.due()
        tail.compact()
        assert compactions.calls[-1] == (50, b"", PagePointer("s", 1, tail.writer))
        assert not tail.due()
    finally:
        writer.close()
