"""Instance simulators running at once on one machine (e2e modules in parallel) take disjoint loopback blocks, so two
sandboxes never start their sshd on the same address (local/simulator.py claim_loopback_block)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from local import simulator


@pytest.fixture
def blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(simulator, "_BLOCK_LOCKS", tmp_path)
    return tmp_path


def test_each_simulator_holds_its_own_block_until_it_lets_go(blocks: Path) -> None:
    first, first_lock = simulator.claim_loopback_block()
    second, second_lock = simulator.claim_loopback_block()
    assert (first, second) == (0, 1)  # the first keeps 127.0.0.x
    first_lock.close()
    again, again_lock = simulator.claim_loopback_block()
    assert again == 0
    second_lock.close()
    again_lock.close()


def test_a_block_held_by_another_process_is_skipped_and_freed_when_it_exits(blocks: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys; h = open(sys.argv[1], 'a'); fcntl.flock(h, fcntl.LOCK_EX); "
         "print('held', flush=True); sys.stdin.read()", str(blocks / "0.lock")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "held\n"
        block, lock = simulator.claim_loopback_block()
        assert block == 1
        lock.close()
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(10)
    block, lock = simulator.claim_loopback_block()
    assert block == 0  # the holder ended: its lock went with it
    lock.close()


def test_when_every_block_is_held_it_says_so(blocks: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(simulator, "LOOPBACK_BLOCKS", 1)
    _, lock = simulator.claim_loopback_block()
    with pytest.raises(RuntimeError, match="loopback blocks are held"):
        simulator.claim_loopback_block()
    lock.close()
