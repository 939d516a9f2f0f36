"""Job states as the store keeps them and the producer API shows them."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["DEQUEUEABLE", "TERMINAL", "JobState"]


class JobState(StrEnum):
    """A job's state; the values are the wire and column strings."""

    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    ERRORED = "errored"  # failed, will be retried after a backoff
    FAILED = "failed"  # final
    CANCELED = "canceled"


TERMINAL = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELED})
DEQUEUEABLE = (JobState.QUEUED, JobState.ERRORED)
