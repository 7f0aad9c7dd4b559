"""The status of a run, as written to RUN/status.json and DIR/index.jsonl.

Str-valued, so `json.dumps` writes the same text as a bare string and a status read back from a
file compares equal to its member (`RunStatus("finished") == "finished"`).
"""

from __future__ import annotations

from enum import Enum


class RunStatus(str, Enum):
    PENDING = "pending"  # in a sweep, not started yet
    SUBMITTED = "submitted"  # in a sweep, queued as a cluster job that has not written its status yet
    RUNNING = "running"
    FINISHED = "finished"  # reached train.max_steps
    DIVERGED = "diverged"  # stopped by a guard (non-finite values, too many rollbacks)
    STOPPED = "stopped"  # SIGINT/SIGTERM: checkpointed, resumable
    FAILED = "failed"  # an error; the message is recorded beside the status

    # f"{s}" and str(s) give the value, as a bare string did (Enum's default is "RunStatus.X").
    __str__ = str.__str__
    __format__ = str.__format__

    @property
    def is_result(self) -> bool:
        """Finished and diverged runs are results: a re-run of a sweep keeps them as they are."""
        return self in (RunStatus.FINISHED, RunStatus.DIVERGED)
