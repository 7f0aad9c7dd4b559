"""Name the parameter whose gradient went non-finite.

The cheap check stays on the device: `torch.isfinite(total_grad_norm)` (any inf or NaN entry makes
the norm non-finite). Only when that fails does the trainer call `first_nonfinite_grad`, which
checks every gradient and reads the answer on the host (one sync).
"""

from __future__ import annotations

import torch
import torch.nn as nn


@torch.no_grad()
def first_nonfinite_grad(model: nn.Module) -> str | None:
    """Name (as in `named_parameters()`) of the first parameter with an inf/NaN gradient, else None."""
    named = [(name, p.grad) for name, p in model.named_parameters() if p.grad is not None]
    if not named:
        return None
    # isfinite(...).all() per tensor rather than its norm: a finite bf16/fp16 gradient can overflow a norm.
    finite = torch.stack([torch.isfinite(g).all().to(named[0][1].device) for _, g in named])
    bad = (~finite).nonzero()
    return named[int(bad[0])][0] if bad.numel() else None
