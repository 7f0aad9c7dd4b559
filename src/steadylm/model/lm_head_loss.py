"""Output layer and loss in one pass, a chunk of tokens at a time, never holding all the logits.

With a 50257-token vocabulary the logits of a step are the largest tensor in training
(tokens x V fp32: 400 MB for 2048 tokens), and autograd's logsumexp backward walks them several
times. Here each chunk's logits are made, reduced to its loss, and turned straight into the
gradient (softmax minus one-hot, times 1 + 2·z·logZ for the z-loss) while they are hot; the
backward pass only scales the saved gradients. The sums are those of the plain definition
(log-softmax of the full logits, then cross-entropy and log²Z summed over tokens), to rounding.
"""

from __future__ import annotations

import torch

# Tokens per chunk: a chunk's fp32 logits stay near 64 MB whatever the vocabulary.
_CHUNK_ELEMENTS = 1 << 24


def _compute_dtype(h: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(h.device.type):
        return torch.get_autocast_dtype(h.device.type)
    return weight.dtype


class _LMHeadLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets, z_loss: float, compute_dtype: torch.dtype):
        # h (N, d), weight (V, d), targets (N,) -> (Σ CE + z·Σ log²Z, Σ log²Z)
        needs_h, needs_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        N, V = h.shape[0], weight.shape[0]
        chunk = max(1, _CHUNK_ELEMENTS // V)
        w = weight.to(compute_dtype)
        ce_sum = torch.zeros((), device=h.device, dtype=torch.float32)
        lz2_sum = torch.zeros((), device=h.device, dtype=torch.float32)
        grad_h = torch.empty_like(h) if needs_h else None
        grad_w = None  # (V, d) fp32, made by the first chunk's matmul rather than zero-filled
        with torch.autocast(h.device.type, enabled=False):
            for start in range(0, N, chunk):
                hc = h[start : start + chunk].to(compute_dtype)  # (c, d)
                tc = targets[start : start + chunk]  # (c,)
                logits = (hc @ w.t()).float()  # (c, V)
                target_logit = logits.gather(1, tc[:, None]).squeeze(1)  # (c,)
                # log Z by hand rather than logsumexp: the exponentials made in place here are
                # the unnormalised softmax the gradient needs, so they are computed only once.
                m = logits.amax(dim=1)  # (c,)
                p = logits.sub_(m[:, None]).exp_()  # (c, V), exp(logit − max)
                s = p.sum(dim=1)  # (c,)
                log_z = m + s.log()
                ce_sum += (log_z - target_logit).sum()
                lz2_sum += log_z.square().sum()
                if not (needs_h or needs_w):
                    continue
                # d/dlogits of (log Z − logit_t + z·log²Z) = softmax·(1 + 2z·log Z) − onehot(t)
                g = p.mul_(((1.0 + 2.0 * z_loss * log_z) / s)[:, None])
                g[torch.arange(len(tc), device=g.device), tc] -= 1.0
                g = g.to(compute_dtype)
                if needs_h:
                    assert grad_h is not None  # made above whenever needs_h
                    if grad_h.dtype == compute_dtype:
                        torch.mm(g, w, out=grad_h[start : start + chunk])  # (c, d)
                    else:
                        grad_h[start : start + chunk] = g @ w
                if needs_w:
                    if grad_w is None:
                        grad_w = (g.t() @ hc).float()  # (V, d)
                    elif g.dtype == torch.float32:
                        grad_w.addmm_(g.t(), hc)  # accumulated without a temporary
                    else:
                        grad_w += (g.t() @ hc).float()
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        ctx.mark_non_differentiable(lz2_sum)
        return ce_sum + z_loss * lz2_sum, lz2_sum

    @staticmethod
    def backward(ctx, grad_loss, _grad_lz2):
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * grad_loss if grad_h is not None else None
        gw = (grad_w * grad_loss).to(ctx.weight_dtype) if grad_w is not None else None
        return gh, gw, None, None, None


def lm_head_loss(
    h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, z_loss: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ CE + z_loss·Σ log²Z, Σ log²Z detached) of logits h @ weightᵀ against targets.

    h (..., d), weight (V, d), targets (...). Matmuls run in the autocast dtype when autocast is
    on (bf16 on CPU and CUDA), the softmax and the sums in fp32.
    """
    d = h.shape[-1]
    return _LMHeadLoss.apply(
        h.reshape(-1, d), weight, targets.reshape(-1), float(z_loss), _compute_dtype(h, weight)
    )
