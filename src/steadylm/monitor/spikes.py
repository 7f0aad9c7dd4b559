"""Loss and gradient-norm spikes, decided on the device.

A step is a spike when its loss, or its gradient norm, exceeds mean + sigma * std of the previous
`window` values of that signal (std unbiased), or is not finite. This is the rule of OLMo-core's
skip-step optimizer, with two differences: only upward excursions count (a sudden drop in loss is
not instability), and a non-finite value is a spike and is stored as the window's mean, so one NaN
does not poison the statistics for `window` steps. Finite spikes do enter the window, so a lasting
change of level stops being flagged once the window has absorbed it.

Nothing is flagged during the first `warmup` updates (default: half the window, at least 20,
at most the window), when the statistics are too few to mean anything.

Per step, with the loss and pre-clip gradient norm as device tensors::

    spike = detector.update(loss, grad_norm)  # 0-d bool tensor on the device, no host sync

The decision can gate the optimizer without a sync (e.g. scale the lr by `~spike`); read it on the
host at the next flush to log an event. State (the window) goes into checkpoints via `state_dict`.
"""

from __future__ import annotations

import torch

from steadylm import metric_names as M

SIGNALS = (M.LOSS, M.GRAD_NORM)


class SpikeDetector:
    """Rolling mean + `sigma` std test on loss and gradient norm over the last `window` steps."""

    def __init__(self, window: int = 128, sigma: float = 6.0, warmup: int | None = None):
        if window < 2:
            raise ValueError(f"window={window}: needs at least 2 values for a standard deviation")
        self.window = window
        self.sigma = float(sigma)
        self.warmup = (
            min(window, max(20, window // 2))
            if warmup is None
            else max(2, min(int(warmup), window))
        )
        self.count = 0  # updates so far; host-side, identical on every rank
        self.values: torch.Tensor | None = None  # (2, window): loss and grad-norm ring buffers

    def update(self, loss: torch.Tensor, grad_norm: torch.Tensor | None = None) -> torch.Tensor:
        """Decide whether this step is a spike, then add its values to the window."""
        loss = torch.as_tensor(loss).detach().float().reshape(())
        if self.values is None:
            self.values = torch.zeros(len(SIGNALS), self.window, device=loss.device)
        elif self.values.device != loss.device:  # restored from a checkpoint on the CPU
            self.values = self.values.to(loss.device)
        gn = (
            loss
            if grad_norm is None
            else torch.as_tensor(grad_norm).detach().float().reshape(()).to(loss.device)
        )
        x = torch.stack([loss, gn])  # (2,)
        finite = torch.isfinite(x)
        watched = slice(None) if grad_norm is not None else slice(0, 1)
        spike = ~finite[watched].all()
        n = min(self.count, self.window)
        past = self.values[:, :n]
        mean = past.mean(dim=1) if n else torch.zeros_like(x)
        if self.count >= self.warmup:  # warmup >= 2, so n >= 2 here
            spike = spike | (x > mean + self.sigma * past.std(dim=1))[watched].any()
        self.values[:, self.count % self.window] = torch.where(finite, x, mean)
        self.count += 1
        return spike

    def state_dict(self) -> dict:
        return {"count": self.count, "values": None if self.values is None else self.values.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.count = int(state["count"])
        v = state["values"]
        if v is not None and v.shape != (len(SIGNALS), self.window):
            raise ValueError(
                f"spike window of shape {tuple(v.shape)} does not match window={self.window}"
            )
        device = self.values.device if self.values is not None else "cpu"
        self.values = None if v is None else v.to(device, torch.float32).clone()
