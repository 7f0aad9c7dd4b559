"""`metrics.jsonl`: one JSON object per optimizer step, events on lines of their own.

Values are kept as device tensors until `flush`, which moves them to the host in one transfer,
so a step costs no host sync. Readers (`steadylm.rundir.read_metrics`) ignore a torn last line;
resume truncates the file to the checkpoint's step.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from steadylm.fsutil import atomic_write
from steadylm.rundir import read_metrics
from steadylm.train import faults

__all__ = [
    "MetricsLog",
    "read_metrics",
    "truncate_metrics",
]  # read_metrics lives with the run folder


def _plain(v: float) -> float | None | str:
    # JSON has no NaN/Inf; keep them visible as strings rather than dropping the step.
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class MetricsLog:
    def __init__(self, path: Path, enabled: bool = True):
        self.path = path
        self.enabled = enabled
        self._pending: list[dict[str, Any]] = []

    def record(self, row: dict[str, Any]) -> None:
        """Queue one row; tensor values stay on their device until flush."""
        self._pending.append(row)

    @property
    def pending(self) -> list[dict[str, Any]]:
        """Rows recorded since the last flush (values may still be device tensors)."""
        return self._pending

    def flush(self) -> list[dict[str, Any]]:
        """Write queued rows; returns them with plain Python values."""
        rows, self._pending = self._pending, []
        if not rows:
            return []
        slots = [
            (i, k) for i, r in enumerate(rows) for k, v in r.items() if isinstance(v, torch.Tensor)
        ]
        if slots:
            values = torch.stack(
                [rows[i][k].detach().float().reshape(()) for i, k in slots]
            ).tolist()
            for (i, k), v in zip(slots, values):
                rows[i][k] = v
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as f:
                for r in rows:
                    line = json.dumps({k: _plain(v) for k, v in r.items()}) + "\n"
                    if faults.armed("metrics-flush", r.get("step", -1)):
                        f.write(line[: len(line) // 2])
                        f.flush()
                        faults.crash_if_armed("metrics-flush", r["step"])
                    f.write(line)
                f.flush()
                os.fsync(f.fileno())
        return rows


def truncate_metrics(path: Path, last_step: int, keep_events: bool = False) -> None:
    """Keep lines up to and including `last_step` (and, with `keep_events`, every event line, as a
    rollback does so the spike that caused it stays on record); drop a torn tail."""
    if not path.is_file():
        return
    kept = [
        r
        for r in read_metrics(path)
        if r.get("step", -1) <= last_step or (keep_events and "event" in r)
    ]
    with atomic_write(path) as f:
        f.write("".join(json.dumps(r) + "\n" for r in kept).encode("utf-8"))
