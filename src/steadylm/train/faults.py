"""Deterministic fault injection, for testing crash safety at named points.

Set `STEADYLM_FAULT=POINT@STEP` and the process dies (os._exit, no clean-up, as a kill -9
would) when it reaches POINT at STEP. STEP is the 0-based optimizer step for mid-step and
metrics-flush, and the checkpoint's step (steps completed) for the checkpoint points. Points:

    mid-step                  after the backward pass, before the optimizer step
    checkpoint-before-rename  checkpoint files written and fsynced, folder not yet renamed
    checkpoint-after-rename   checkpoint renamed into place, status not yet updated
    metrics-flush             half of a metrics line written

One point raises an error instead of dying, on one rank only when `STEADYLM_FAULT_RANK` is set:

    checkpoint-write          a checkpoint file cannot be written (OSError EIO)
"""

from __future__ import annotations

import errno
import os

EXIT_CODE = 86


def armed(point: str, step: int) -> bool:
    return os.environ.get("STEADYLM_FAULT") == f"{point}@{step}"


def crash_if_armed(point: str, step: int) -> None:
    if armed(point, step):
        os._exit(EXIT_CODE)


def fail_if_armed(point: str, step: int, rank: int) -> None:
    """Raise an I/O error at POINT@STEP, on every rank or only on `STEADYLM_FAULT_RANK`."""
    only = os.environ.get("STEADYLM_FAULT_RANK")
    if armed(point, step) and (only is None or int(only) == rank):
        raise OSError(errno.EIO, f"injected write failure ({point}@{step})")
