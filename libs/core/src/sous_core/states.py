"""Job states and the one table of legal transitions between them."""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})

#: Legal moves. ``pending → running`` covers a worker that starts before the API has
#: marked the job queued; ``running → running`` is a redelivery after a worker died (the
#: job runner takes it only once the job's heartbeat has stopped: ``jobs.start_job``).
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset(
        {JobState.QUEUED, JobState.RUNNING, JobState.FAILED, JobState.CANCELLED}
    ),
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.FAILED, JobState.CANCELLED}),
    JobState.RUNNING: frozenset(
        {
            JobState.RUNNING,
            JobState.RETRYING,
            JobState.QUEUED,
            JobState.SUCCEEDED,
            JobState.FAILED,
            JobState.CANCELLED,
        }
    ),
    JobState.RETRYING: frozenset(
        {JobState.RUNNING, JobState.QUEUED, JobState.FAILED, JobState.CANCELLED}
    ),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


#: The one way out of a final state, and on purpose not in ``TRANSITIONS``: an operator
#: replaying a dead letter (``sous dlq replay``) puts its failed job back to ``queued``.
#: No worker, sweep or API request can make this move (see ``jobs.requeue_failed``).
OPERATOR_REQUEUE_SOURCES = frozenset({JobState.FAILED})


def can_transition(current: JobState, target: JobState) -> bool:
    return target in TRANSITIONS[current]


def sources_of(target: JobState) -> frozenset[JobState]:
    """States from which ``target`` may be entered."""
    return frozenset(state for state, targets in TRANSITIONS.items() if target in targets)


class IllegalTransition(Exception):
    """A job was asked to move to a state its current state does not lead to."""

    def __init__(self, current: JobState, target: JobState) -> None:
        super().__init__(f"a {current.value} job cannot become {target.value}")
        self.current = current
        self.target = target
