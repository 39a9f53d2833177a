"""Job errors workers raise: transient ones are retried, permanent ones fail the job at once."""

from __future__ import annotations


class JobError(Exception):
    """An error with a stable machine-readable ``code`` and a message a user can read."""

    #: Whether the task may be retried after this error (with backoff, bounded).
    transient: bool = False

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


class PermanentJobError(JobError):
    """Retrying cannot help (blocked URL, HTTP 404, not a video): fail the job now."""

    transient = False


class TransientJobError(JobError):
    """Retrying may help (timeout, connection refused, HTTP 503): retry with backoff."""

    transient = True


class JobCancelled(Exception):
    """The job was cancelled while it ran; the worker stops and records ``cancelled``."""


class AttemptSuperseded(Exception):
    """Another attempt took the job over (this one fell silent, e.g. a frozen worker) or
    it finished meanwhile: this attempt stops without a side effect and records nothing."""
