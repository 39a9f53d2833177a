"""The transition table."""

from __future__ import annotations

import pytest

from sous_core.states import TERMINAL_STATES, TRANSITIONS, JobState, can_transition, sources_of


def test_every_state_has_a_row() -> None:
    assert set(TRANSITIONS) == set(JobState)


@pytest.mark.parametrize("terminal", sorted(TERMINAL_STATES))
def test_terminal_states_lead_nowhere(terminal: JobState) -> None:
    assert terminal.is_terminal
    assert not any(can_transition(terminal, target) for target in JobState)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (JobState.PENDING, JobState.QUEUED),
        (JobState.QUEUED, JobState.RUNNING),
        (JobState.RUNNING, JobState.SUCCEEDED),
        (JobState.RUNNING, JobState.RETRYING),
        (JobState.RETRYING, JobState.RUNNING),
        (JobState.RUNNING, JobState.RUNNING),
        (JobState.PENDING, JobState.FAILED),
        (JobState.QUEUED, JobState.CANCELLED),
    ],
)
def test_the_lifecycle_moves_are_legal(current: JobState, target: JobState) -> None:
    assert can_transition(current, target)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (JobState.QUEUED, JobState.PENDING),
        (JobState.QUEUED, JobState.SUCCEEDED),
        (JobState.PENDING, JobState.SUCCEEDED),
        (JobState.RETRYING, JobState.SUCCEEDED),
        (JobState.QUEUED, JobState.RETRYING),
    ],
)
def test_skipping_ahead_is_illegal(current: JobState, target: JobState) -> None:
    assert not can_transition(current, target)


def test_sources_of_is_the_inverse_of_the_table() -> None:
    for target in JobState:
        assert sources_of(target) == {s for s in JobState if target in TRANSITIONS[s]}
    assert sources_of(JobState.PENDING) == frozenset()
