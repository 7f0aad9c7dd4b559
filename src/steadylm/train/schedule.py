"""When the trainer writes a checkpoint (`train.checkpoint_every`, `train.checkpoint_schedule`)."""

from __future__ import annotations

import math

from steadylm.config import TrainConfig


def is_log_step(step: int) -> bool:
    """True if `step` = round(2^(k/2)) for some k ≥ 0: 1, 2, 3, 4, 6, 8, 11, 16, 23, 32, 45, 64, ..."""
    if step < 1:
        return False
    k = round(2 * math.log2(step))
    return any(round(2 ** (j / 2)) == step for j in (k - 1, k, k + 1) if j >= 0)


def checkpoint_due(steps_done: int, cfg: TrainConfig) -> bool:
    """Whether to checkpoint after `steps_done` optimizer steps (the final step is the caller's)."""
    if cfg.checkpoint_every and steps_done % cfg.checkpoint_every == 0:
        return True
    return cfg.checkpoint_schedule == "log" and is_log_step(steps_done)
