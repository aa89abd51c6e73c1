"""Chunking and reassembly of relayed output: byte-exact, never splitting a character, tolerant of rewrites."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from controlplane.core.logchunks import assemble, cut, decode_page, incomplete_tail, ready_bytes

EURO = "€".encode()  # 3 bytes
EMOJI = "🙂".encode()  # 4 bytes


def test_incomplete_tail_holds_only_a_valid_character_start() -> None:
    assert incomplete_tail(b"abc") == 0
    assert incomplete_tail(b"ab" + EURO[:1]) == 1
    assert incomplete_tail(b"ab" + EURO[:2]) == 2
    assert incomplete_tail(b"ab" + EURO) == 0
    assert incomplete_tail(EMOJI[:3]) == 3
    assert incomplete_tail(b"\xff") == 0  # invalid: released, shown as U+FFFD
    assert incomplete_tail(b"\x80\x80\x80\x80") == 0


def test_ready_bytes_keeps_a_split_character_until_the_end() -> None:
    pending = b"line\n" + EURO[:2]
    assert ready_bytes(pending, final=False) == 5
    assert ready_bytes(pending, final=True) == 7


@given(st.text(min_size=0, max_size=300), st.integers(min_value=4, max_value=40))
def test_cut_chunks_concatenate_to_the_input_and_each_decodes_alone(text: str, size: int) -> None:
    data = text.encode()
    chunks = cut(100, data, size)
    assert b"".join(c for _, c in chunks) == data
    assert all(len(c) <= size for _, c in chunks)
    assert [o for o, _ in chunks] == [100 + sum(len(c) for _, c in chunks[:i]) for i in range(len(chunks))]
    assert "".join(c.decode() for _, c in chunks) == text


@given(st.binary(max_size=400), st.lists(st.integers(min_value=1, max_value=60), min_size=1, max_size=20))
def test_assemble_tolerates_overlapping_rewrites(data: bytes, cuts: list[int]) -> None:
    """Two relays cut the same file differently (a crash between writing and committing): reading the union of
    their chunks in offset order still gives the file exactly once."""
    first = cut(0, data, cuts[0])
    second = cut(0, data, cuts[-1])
    merged = sorted(first + second, key=lambda chunk: (chunk[0], -len(chunk[1])))
    assert assemble(merged, 0, len(data) + 1) == data
    if len(data) > 10:
        assert assemble(merged, 7, 3) == data[7:10]


def test_assemble_stops_at_a_gap() -> None:
    assert assemble([(0, b"abc"), (5, b"fgh")], 0, 100) == b"abc"
    assert assemble([(0, b"abc"), (3, b"de")], 1, 100) == b"bcde"


def test_decode_page_leaves_a_cut_character_for_the_next_page() -> None:
    page = decode_page(b"ok " + EMOJI[:2], final=False)
    assert (page.text, page.consumed) == ("ok ", 3)
    assert decode_page(b"ok \xff\r\n", final=False).text == "ok \ufffd\r\n"
    assert decode_page(b"x" + EMOJI[:2], final=True).text == "x\ufffd"
