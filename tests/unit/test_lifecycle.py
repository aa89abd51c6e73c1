"""The lifecycle table the store enforces."""

from __future__ import annotations

import itertools

import pytest

from controlplane.core.lifecycle import ALLOWED, TERMINAL, JobStatus, can_transition, predecessors


def test_terminal_states_never_change() -> None:
    for state in TERMINAL:
        assert ALLOWED[state] == frozenset()
        assert all(not can_transition(state, target) for target in JobStatus)


@pytest.mark.parametrize("state", sorted(set(JobStatus) - TERMINAL))
def test_every_active_state_can_fail_or_be_cancelled(state: JobStatus) -> None:
    assert can_transition(state, JobStatus.FAILED)
    assert can_transition(state, JobStatus.CANCELLED)


def test_the_happy_path_is_the_documented_order() -> None:
    path = [JobStatus.PENDING, JobStatus.LAUNCHING, JobStatus.PROVISIONING, JobStatus.RUNNING, JobStatus.SUCCEEDED]
    assert all(can_transition(a, b) for a, b in itertools.pairwise(path))


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (JobStatus.PENDING, JobStatus.SUCCEEDED),  # nothing ran: success is impossible
        (JobStatus.LAUNCHING, JobStatus.SUCCEEDED),
        (JobStatus.RUNNING, JobStatus.PENDING),  # no going back
        (JobStatus.RUNNING, JobStatus.LAUNCHING),
        (JobStatus.PROVISIONING, JobStatus.LAUNCHING),
    ],
)
def test_illegal_moves_are_refused(current: JobStatus, target: JobStatus) -> None:
    assert not can_transition(current, target)


def test_predecessors_are_the_inverse_of_the_table() -> None:
    for target in JobStatus:
        assert predecessors(target) == {s for s, nexts in ALLOWED.items() if target in nexts}
    assert predecessors(JobStatus.QUEUED) == frozenset()  # a job starts QUEUED or PENDING, never enters QUEUED
    assert predecessors(JobStatus.PENDING) == {JobStatus.QUEUED}  # admitted from its team's queue
