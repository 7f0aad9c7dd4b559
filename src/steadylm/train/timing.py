"""Optional per-section timing of a training step, for `steadylm bench`.

Off by default, when a section costs one attribute check. On: wall-clock per section summed over
the step, with a device synchronisation at each boundary on CUDA so queued kernels are charged
to the section that launched them.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict

import torch

SECTIONS = ("data", "forward", "backward", "optimizer", "monitors")


class StepTimer:
    def __init__(self, device: torch.device, enabled: bool = False):
        self.device = device
        self.enabled = enabled
        self.totals: dict[str, float] = defaultdict(float)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def section(self, name: str):
        if not self.enabled:
            yield
            return
        self._sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.totals[name] += time.perf_counter() - t0

    def take(self) -> dict[str, float]:
        """Seconds per section since the last call."""
        out, self.totals = dict(self.totals), defaultdict(float)
        return out
