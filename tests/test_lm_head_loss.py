"""The fused, chunked and tiled output layer + loss equals logits-then-lm_loss, in value and
gradient."""

import pytest
import torch

from lm_loss_reference import lm_loss
from steadylm.model import lm_head_loss as fused


def _reference(h, w, t, z):
    return lm_loss(h @ w.t(), t, z_loss=z)


@pytest.mark.parametrize("z_loss", [0.0, 1e-2])
@pytest.mark.parametrize("chunk_elements", [1 << 24, 97 * 7])  # one chunk; several uneven chunks
@pytest.mark.parametrize("vocab_tile", [1024, 10])  # one tile; ten tiles, the last of 7 columns
def test_matches_reference_in_fp32(monkeypatch, z_loss, chunk_elements, vocab_tile):
    monkeypatch.setattr(fused, "_CHUNK_ELEMENTS", chunk_elements)
    monkeypatch.setattr(fused, "_CPU_VOCAB_TILE", vocab_tile)
    g = torch.Generator().manual_seed(0)
    h = torch.randn(3, 11, 16, generator=g, requires_grad=True)
    w = torch.randn(97, 16, generator=g, requires_grad=True)
    t = torch.randint(0, 97, (3, 11), generator=g)
    loss, lz2 = fused.lm_head_loss(h, w, t, z_loss)
    (loss * 0.37).backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    ref_loss, ref_lz2 = _reference(h, w, t, z_loss)
    (ref_loss * 0.37).backward()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(lz2, ref_lz2, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(gh, h.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gw, w.grad, rtol=1e-4, atol=1e-6)
    assert not lz2.requires_grad


@pytest.mark.parametrize("vocab_tile", [1024, 64])
def test_bf16_autocast_is_close_and_grads_keep_the_weight_dtype(monkeypatch, vocab_tile):
    monkeypatch.setattr(fused, "_CPU_VOCAB_TILE", vocab_tile)
    g = torch.Generator().manual_seed(1)
    h = torch.randn(64, 32, generator=g, requires_grad=True)
    w = (torch.randn(301, 32, generator=g) * 0.1).requires_grad_()
    t = torch.randint(0, 301, (64,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = fused.lm_head_loss(h, w, t)
    loss.backward()
    ref, _ = _reference(h.detach(), w.detach(), t, 0.0)
    assert w.grad.dtype == torch.float32 and h.grad.dtype == torch.float32
    torch.testing.assert_close(loss, ref, rtol=1e-2, atol=0)


def test_without_grad_only_the_sums():
    h, w, t = torch.randn(5, 8), torch.randn(13, 8), torch.randint(0, 13, (5,))
    with torch.no_grad():
        loss, lz2 = fused.lm_head_loss(h, w, t)
    torch.testing.assert_close(loss, _reference(h, w, t, 0.0)[0])


def test_tiles_far_apart_in_scale_combine_without_overflow(monkeypatch):
    # One tile's logits 500 above the others': each tile's own max keeps exp finite, and the
    # combination must still give the plain log-softmax.
    monkeypatch.setattr(fused, "_CPU_VOCAB_TILE", 8)
    h = torch.ones(4, 1)
    w = torch.zeros(40, 1)
    w[17] = 500.0
    t = torch.tensor([17, 3, 39, 0])
    loss, _ = fused.lm_head_loss(h, w.requires_grad_(), t)
    loss.backward()
    torch.testing.assert_close(loss, torch.tensor(3 * 500.0), rtol=1e-6, atol=1e-3)
    assert torch.isfinite(w.grad).all()


def test_a_target_outside_the_vocabulary_is_not_a_finite_loss():
    h, w = torch.randn(3, 8), torch.randn(13, 8)
    with torch.no_grad():
        loss, _ = fused.lm_head_loss(h, w, torch.tensor([0, 13, 2]))
    assert torch.isnan(loss)
    with pytest.raises(IndexError):
        fused.lm_head_loss(h, w.requires_grad_(), torch.tensor([0, 13, 2]))


@pytest.mark.parametrize("bf16", [False, True])
def test_compiled_head_is_tiled_eagerly_in_fp32_and_traced_whole_in_bf16(monkeypatch, bf16):
    """Under torch.compile on a CPU the fp32 head runs in tiles behind a graph break and the bf16
    head is traced as one tile (the faster form of each, measured by `steadylm bench`); both
    give the eager loss and gradients."""
    torch._dynamo.reset()
    monkeypatch.setattr(fused, "_CPU_VOCAB_TILE", 10)
    tiles = []
    real = fused._chunk_softmax
    monkeypatch.setattr(fused, "_chunk_softmax", lambda *a: tiles.append(a[-1]) or real(*a))
    g = torch.Generator().manual_seed(0)
    h = torch.randn(2, 5, 16, generator=g, requires_grad=True)
    w = torch.randn(97, 16, generator=g, requires_grad=True)
    t = torch.randint(0, 97, (2, 5), generator=g)

    def loss_and_grads(fn):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = fn(h, w, t)[0]
        gh, gw = torch.autograd.grad(loss, (h, w))
        return loss.detach(), gh, gw

    eager = loss_and_grads(fused.lm_head_loss)
    tiles.clear()
    compiled = loss_and_grads(torch.compile(fused.lm_head_loss, backend="eager"))
    assert tiles == [97 if bf16 else 10]
    for a, b in zip(compiled, eager, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-2 if bf16 else 1e-5, atol=1e-3 if bf16 else 1e-5)
