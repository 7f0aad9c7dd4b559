"""Output layer and loss in one pass, a chunk of tokens at a time, never holding all the logits.

With a 50257-token vocabulary the logits of a step are the largest tensor in training
(tokens x V fp32: 400 MB for 2048 tokens), and autograd's logsumexp backward walks them several
times. Here each chunk's logits are made, reduced to its loss, and turned straight into the
gradient (softmax minus one-hot, times 1 + 2·z·logZ for the z-loss) while they are hot; the
backward pass only scales the saved gradients. The sums are those of the plain definition
(log-softmax of the full logits, then cross-entropy and log²Z summed over tokens), to rounding.

In eager mode on a CPU a chunk's logits are made a vocabulary tile at a time, and each tile is
exponentiated against its own maximum while it is still in cache (the tiles' maxima and sums are
combined afterwards, as in an online softmax). On an AVX2 EPYC one (333 x 50257) logits matmul ran
1.3-1.5 times slower than the same FLOPs in 1024-wide tiles, and the max, exp and sum passes then
run on cached tiles instead of the 64 MB chunk: the head's forward and backward together ran 1.13
times faster (median of 8 interleaved pairs, range 1.09-1.25, one thread, 2048 tokens). On CUDA
the whole vocabulary is one tile.

Compiled on a CPU, the head takes whichever form measured faster at the reference config of
`steadylm bench` (an AVX-512 EPYC, one thread): in fp32 it runs eagerly in tiles behind a graph
break (tracing would unroll the tile loop into the graph, and the traced one-tile head made the
compiled step slower than the eager one: 640 against 713 tokens/s, 742-770 with the break in
three measurements); in bf16 it is traced as one tile (1812 tokens/s, 1534 with the break; the
compiler likely fuses the traced head with its casts).
"""

from __future__ import annotations

import torch

# Tokens per chunk: a chunk's fp32 logits stay near 64 MB whatever the vocabulary.
_CHUNK_ELEMENTS = 1 << 24
# Vocabulary columns per tile on a CPU: 1024 was fastest of 256-8192 (chunks of 256-667 tokens).
_CPU_VOCAB_TILE = 1024


def _compute_dtype(h: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(h.device.type):
        return torch.get_autocast_dtype(h.device.type)
    return weight.dtype


def _vocab_tile(device: torch.device, vocab_size: int) -> int:
    if device.type != "cpu" or torch.compiler.is_compiling():  # traced: see the module's doc
        return vocab_size
    return _CPU_VOCAB_TILE


def _chunk_softmax(
    hc: torch.Tensor, w: torch.Tensor, tc: torch.Tensor, buffer: torch.Tensor | None, tile: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """exp(logit − the max of its tile) (c, V), in the buffer's first c rows when there are
    several tiles, and per token log Z (c,), the factor per tile that turns those exponentials
    into the softmax (c, tiles), and the target's logit (c,)."""
    c, V = hc.shape[0], w.shape[0]
    starts = range(0, V, tile)
    tile_max = torch.empty(c, len(starts), device=hc.device)  # (c, tiles)
    tile_sum = torch.empty_like(tile_max)  # (c, tiles)
    # NaN stays for a target outside the vocabulary, so such a batch cannot pass as a finite loss.
    target_logit = torch.full((c,), float("nan"), device=hc.device)  # (c,)
    exps = buffer[:c] if buffer is not None else None  # (c, V)
    for j, lo in enumerate(starts):
        hi = min(V, lo + tile)
        logits = (hc @ w[lo:hi].t()).float()  # (c, hi − lo)
        # Picked by a masked gather rather than indexing, which would sync a GPU with the host.
        hit = (tc >= lo) & (tc < hi)
        picked = logits.gather(1, (tc - lo).clamp(0, hi - lo - 1)[:, None]).squeeze(1)
        target_logit = torch.where(hit, picked, target_logit)
        tile_max[:, j] = logits.amax(dim=1)
        # The exponentials made in place are the unnormalised softmax the gradient needs.
        tile_sum[:, j] = logits.sub_(tile_max[:, j, None]).exp_().sum(dim=1)
        if exps is None:  # one tile: the matmul's output is the whole chunk
            exps = logits
        else:
            exps[:, lo:hi] = logits
    assert exps is not None  # the vocabulary has at least one tile
    m = tile_max.amax(dim=1)  # (c,)
    tile_weight = (tile_max - m[:, None]).exp_()  # (c, tiles), each ≤ 1
    s = (tile_sum * tile_weight).sum(dim=1)  # (c,) Σ exp(logit − m)
    return exps, m + s.log(), tile_weight / s[:, None], target_logit


class _LMHeadLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets, z_loss: float, compute_dtype: torch.dtype):
        # h (N, d), weight (V, d), targets (N,) -> (Σ CE + z·Σ log²Z, Σ log²Z)
        needs_h, needs_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        N, V = h.shape[0], weight.shape[0]
        chunk = max(1, _CHUNK_ELEMENTS // V)
        tile = _vocab_tile(h.device, V)
        w = weight.to(compute_dtype)
        ce_sum = torch.zeros((), device=h.device, dtype=torch.float32)
        lz2_sum = torch.zeros((), device=h.device, dtype=torch.float32)
        grad_h = torch.empty_like(h) if needs_h else None
        grad_w = None  # (V, d) fp32, made by the first chunk's matmul rather than zero-filled
        # (chunk, V) fp32, reused by every chunk, where the tiles' exponentials are gathered.
        buffer = torch.empty(min(chunk, N), V, device=h.device) if tile < V else None
        with torch.autocast(h.device.type, enabled=False):
            for start in range(0, N, chunk):
                hc = h[start : start + chunk].to(compute_dtype)  # (c, d)
                tc = targets[start : start + chunk]  # (c,)
                p, log_z, to_softmax, target_logit = _chunk_softmax(hc, w, tc, buffer, tile)
                ce_sum += (log_z - target_logit).sum()
                lz2_sum += log_z.square().sum()
                if not (needs_h or needs_w):
                    continue
                # d/dlogits of (log Z − logit_t + z·log²Z) = softmax·(1 + 2z·log Z) − onehot(t)
                scale = to_softmax * (1.0 + 2.0 * z_loss * log_z)[:, None]  # (c, tiles)
                for j, lo in enumerate(range(0, V, tile)):
                    p[:, lo : lo + tile].mul_(scale[:, j, None])
                p[torch.arange(len(tc), device=p.device), tc] -= 1.0
                g = p.to(compute_dtype)  # (c, V)
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
    dtype = _compute_dtype(h, weight)
    args = (h.reshape(-1, d), weight, targets.reshape(-1), float(z_loss), dtype)
    if torch.compiler.is_compiling() and h.device.type == "cpu" and dtype == torch.float32:
        return _eager_head(*args)  # in tiles, behind a graph break: see the module's doc
    return _LMHeadLoss.apply(*args)


@torch.compiler.disable
def _eager_head(*args) -> tuple[torch.Tensor, torch.Tensor]:
    return _LMHeadLoss.apply(*args)
