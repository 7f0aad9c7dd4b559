"""The status of a run, as written to RUN/status.json and DIR/index.jsonl.

A `StrEnum`: `json.dumps` and f-strings write the same text as a bare string did, and a status read
back from a file compares equal to its member (`RunStatus("finished") == "finished"`).
"""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    PENDING = "pending"  # in a sweep, not started yet
    SUBMITTED = "submitted"  # in a sweep: a cluster job that has not started
    RUNNING = "running"
    FINISHED = "finished"  # reached train.max_steps
    DIVERGED = "diverged"  # stopped by a guard (non-finite values, too many rollbacks)
    STOPPED = "stopped"  # SIGINT/SIGTERM: checkpointed, resumable
    FAILED = "failed"  # an error; the message is recorded beside the status

    @property
    def is_result(self) -> bool:
        """Finished and diverged runs are results: a re-run of a sweep keeps them as they are."""
        return self in (RunStatus.FINISHED, RunStatus.DIVERGED)
