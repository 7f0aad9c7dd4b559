"""Optional TensorBoard sink: every numeric metric as a scalar, TEV_i as a histogram.

`metrics.jsonl` is always written; this adds TensorBoard's views on top (`monitor.tensorboard =
true`, needs the `tensorboard` package). Keys keep their names, so `grad_norm/h.3` lands in a
`grad_norm` section.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from steadylm.errors import SteadyLMError


class TensorBoardSink:
    def __init__(self, log_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise SteadyLMError(
                "monitor.tensorboard: the tensorboard package is not installed (pip install tensorboard)"
            ) from None
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def scalars(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            step = row["step"]
            for key, value in row.items():
                if (
                    key != "step"
                    and isinstance(value, (int, float))
                    and not isinstance(value, bool)
                    and math.isfinite(value)
                ):
                    self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        self.writer.add_histogram(tag, values.detach().float().cpu(), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
