"""Activation statistics: what norm layouts, QK-norm and z-loss act on.

`measure(idx)` runs one extra forward pass of the model on a small probe batch (one or two
sequences of the current batch are plenty), in eval mode (no dropout, so the RNG stream and
the training trajectory are untouched) and without gradients, and returns 0-d fp32 tensors:

- `rms/h.N`: RMS of the residual stream after block N (forward hooks on the blocks);
- `attn_logit_max/h.N` and `attn_logit_max`: the largest pre-softmax attention logit
  q.k * scale among the positions the mask allows, per block and overall;
- `logz_mean`, `logz_max`: log Z = logsumexp of the output logits per position (models that
  return logits).

Attention logits are recomputed from the q and k that the model actually hands to
`torch.nn.functional.scaled_dot_product_attention` (seen through a TorchFunctionMode), so they
include QK-norm, RoPE, low-rank projections or anything else applied before attention, for
steadylm's model and Hugging Face models using the "sdpa" attention implementation. Models that
compute attention another way report no attention logits. The recomputation costs one
q.k^T per layer for the probe batch only, done in chunks of query rows to bound memory.

A separate probe forward, rather than hooks on the training forward, keeps this independent of
torch.compile, DDP and activation checkpointing; every `act_every` steps its cost is about
(probe sequences / batch sequences) / 3 of a training step.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from steadylm import metric_names as M
from steadylm.monitor.layout import block_name, model_layout


def max_attention_logit(
    q: torch.Tensor,
    k: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    chunk: int = 256,
) -> torch.Tensor:
    """Largest q.k^T * scale over allowed positions, with `scaled_dot_product_attention`'s conventions.

    q: (..., H, L, E), k: (..., H_kv, S, E) with H a multiple of H_kv (grouped-query attention);
    a boolean mask marks allowed positions, a float mask is added; `is_causal` allows key j <= query i.
    """
    q, k = q.float(), k.float()
    if k.size(-3) != q.size(-3):
        k = k.repeat_interleave(q.size(-3) // k.size(-3), dim=-3)
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
    L, S = q.size(-2), k.size(-2)
    kt = k.transpose(-2, -1)
    best = torch.full((), -math.inf, device=q.device)
    for start in range(0, L, chunk):
        s = (q[..., start : start + chunk, :] @ kt) * scale  # (..., H, c, S)
        rows = s.size(-2)
        if is_causal:
            i = torch.arange(start, start + rows, device=q.device)[:, None]
            s = s.masked_fill(torch.arange(S, device=q.device)[None, :] > i, -math.inf)
        if attn_mask is not None:
            m = attn_mask if attn_mask.size(-2) == 1 else attn_mask[..., start : start + rows, :]
            s = s.masked_fill(~m, -math.inf) if m.dtype == torch.bool else s + m.float()
        best = torch.maximum(best, s.amax())
    return best


class _AttentionLogits(TorchFunctionMode):
    """Records the max attention logit of every sdpa call, under the block that made it."""

    def __init__(self, chunk: int):
        super().__init__()
        self.chunk = chunk
        self.block: int | None = None
        self.per_block: dict[int, torch.Tensor] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and self.block is not None:
            names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale")
            a = dict(zip(names, args, strict=False)) | kwargs  # positional args: a prefix of names
            m = max_attention_logit(
                a["query"],
                a["key"],
                a.get("attn_mask"),
                bool(a.get("is_causal", False)),
                a.get("scale"),
                self.chunk,
            )
            prev = self.per_block.get(self.block)
            self.per_block[self.block] = m if prev is None else torch.maximum(prev, m)
        return func(*args, **kwargs)


def _hidden(output) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


def _logits(output) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    return getattr(output, "logits", None)


class ActivationMonitor:
    """Residual-stream RMS per block, max attention logit, output log Z; see the module doc.

    `model` is called as `model(idx, **forward_kwargs)`; it may be wrapped (DDP: call `measure` on
    every rank, since the forward runs collectives only under FSDP).
    """

    def __init__(self, model: nn.Module, blocks: nn.ModuleList | None = None, chunk: int = 256):
        self.model = model
        self.blocks = model_layout(model, blocks).blocks
        self.chunk = chunk

    @torch.no_grad()
    def measure(self, idx: torch.Tensor, **forward_kwargs) -> dict[str, torch.Tensor]:
        """Run the probe forward on `idx` (B, T) and return the statistics (0-d fp32 tensors)."""
        rms: dict[int, torch.Tensor] = {}
        mode = _AttentionLogits(self.chunk)
        handles = []
        for i, block in enumerate(self.blocks):
            handles.append(
                block.register_forward_pre_hook(lambda m, a, i=i: setattr(mode, "block", i))
            )
            handles.append(
                block.register_forward_hook(lambda m, a, out, i=i: self._rms(rms, i, out, mode))
            )
        was_training = self.model.training
        self.model.eval()
        try:
            with mode:
                output = self.model(idx, **forward_kwargs)
        finally:
            self.model.train(was_training)
            for h in handles:
                h.remove()
        out = {M.per_layer(M.RMS, block_name(i)): v for i, v in sorted(rms.items())}
        if mode.per_block:
            for i, v in sorted(mode.per_block.items()):
                out[M.per_layer(M.ATTN_LOGIT_MAX, block_name(i))] = v
            out[M.ATTN_LOGIT_MAX] = torch.stack(list(mode.per_block.values())).max()
        logits = _logits(output)
        if logits is not None:
            logz = torch.logsumexp(logits.float(), dim=-1)
            out["logz_mean"], out["logz_max"] = logz.mean(), logz.max()
        return out

    @staticmethod
    def _rms(store: dict[int, torch.Tensor], i: int, output, mode: _AttentionLogits) -> None:
        mode.block = (
            None  # sdpa calls outside any block (none in the usual models) are not attributed
        )
        h = _hidden(output)
        if h is not None:
            store[i] = h.float().square().mean().sqrt()
