"""Gradient variance, per-layer norms, activation statistics, spike detection, non-finite guard."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from steadylm.config import load_config
from steadylm.model.gpt import GPT
from steadylm.monitor import (
    ActivationMonitor,
    GradVarianceMonitor,
    ParamStatsMonitor,
    SpikeDetector,
    first_nonfinite_grad,
)
from steadylm.monitor.activations import max_attention_logit

V, T, MB, K = 37, 8, 2, 3


def tiny_gpt(seed: int = 0, n_layer: int = 2) -> GPT:
    torch.manual_seed(seed)
    cfg = load_config(None, [f"model.n_layer={n_layer}", "model.n_embd=16", "model.n_head=4",
                             f"model.block_size={T}", f"model.vocab_size={V}"])
    return GPT(cfg.model)


def batches(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, V, (MB, T), generator=g), torch.randint(0, V, (MB, T), generator=g)) for _ in range(K)]


def groups(model: GPT) -> dict[str, list[nn.Parameter]]:
    out = {"grad_var_embed": [model.transformer.wte.weight]}
    for i, b in enumerate(model.transformer.h):
        out[f"grad_var/h.{i}"] = list(b.parameters())
    return out


def brute_force_grad_var(model: GPT, data) -> dict[str, float]:
    """K separate backward passes of each micro-batch's mean loss; torch.var(unbiased) across k."""
    per_k = []
    for x, y in data:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x).flatten(0, 1), y.flatten()).backward()
        per_k.append({k: torch.cat([p.grad.flatten().clone() for p in ps]) for k, ps in groups(model).items()})
    model.zero_grad(set_to_none=True)
    return {k: torch.stack([g[k] for g in per_k]).var(dim=0, correction=1).mean().item() for k in per_k[0]}


def test_grad_variance_equals_brute_force_under_trainer_accumulation():
    model = tiny_gpt()
    data = batches()
    expected = brute_force_grad_var(model, data)

    # The trainer's way: summed token loss scaled by 1/global_tokens, accumulated in .grad.
    gv = GradVarianceMonitor(model)
    gv.begin(grad_scale=K)  # = batch_size / (world_size * micro_batch_size)
    for x, y in data:
        (F.cross_entropy(model(x).flatten(0, 1), y.flatten(), reduction="sum") / (K * MB * T)).backward()
    accumulated = [p.grad.clone() for p in model.parameters()]
    got = gv.end()
    assert set(expected) <= set(got) and got["grad_var_k"] == K
    for key, want in expected.items():
        assert got[key].item() == pytest.approx(want, rel=1e-4), key
    assert isinstance(got["grad_var_seconds"], float) and got["grad_var_seconds"] > 0

    # The hooks observe only: the accumulated gradient is what it would be without them.
    model.zero_grad(set_to_none=True)
    for x, y in data:
        (F.cross_entropy(model(x).flatten(0, 1), y.flatten(), reduction="sum") / (K * MB * T)).backward()
    for a, p in zip(accumulated, model.parameters()):
        torch.testing.assert_close(a, p.grad)
    assert not gv.active and all(not p._backward_hooks for p in model.parameters())


def test_grad_variance_read_from_grad_equals_the_hooks():
    """hooks=False: the loop clears .grad before each micro-batch and calls record() after it."""
    model = tiny_gpt()
    data = batches()
    expected = brute_force_grad_var(model, data)
    gv = GradVarianceMonitor(model)
    gv.begin(grad_scale=K, hooks=False)
    assert gv.active and all(not p._backward_hooks for p in model.parameters())
    for x, y in data:
        model.zero_grad(set_to_none=True)
        (F.cross_entropy(model(x).flatten(0, 1), y.flatten(), reduction="sum") / (K * MB * T)).backward()
        gv.record()
    got = gv.end()
    assert got["grad_var_k"] == K and not gv.active
    for key, want in expected.items():
        assert got[key].item() == pytest.approx(want, rel=1e-4), key


class Skippy(nn.Module):
    """Block 1 is used only from the second micro-batch on: its gradient is zero in the first."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 6)
        self.blocks = nn.ModuleList([nn.Linear(6, 6), nn.Linear(6, 6)])

    def get_input_embeddings(self):
        return self.emb

    def forward(self, x, use_second):
        h = self.blocks[0](self.emb(x))
        return self.blocks[1](h) if use_second else h


def test_grad_variance_counts_missing_gradients_as_zero():
    torch.manual_seed(0)
    model = Skippy()
    xs = [torch.randint(0, 11, (4,)) for _ in range(4)]
    grads = []
    for k, x in enumerate(xs):
        model.zero_grad(set_to_none=True)
        model(x, k > 0).pow(2).mean().backward()
        w = model.blocks[1].weight.grad
        grads.append(torch.cat([(torch.zeros(6, 6) if w is None else w).flatten(),
                                torch.zeros(6) if w is None else model.blocks[1].bias.grad]))
    model.zero_grad(set_to_none=True)
    want = torch.stack(grads).var(dim=0).mean().item()
    gv = GradVarianceMonitor(model)
    gv.begin(grad_scale=1.0)
    for k, x in enumerate(xs):
        model(x, k > 0).pow(2).mean().backward()
    assert gv.end()["grad_var/h.1"].item() == pytest.approx(want, rel=1e-5)


def test_grad_variance_misuse():
    model = tiny_gpt()
    gv = GradVarianceMonitor(model)
    with pytest.raises(RuntimeError, match="without begin"):
        gv.end()
    gv.begin()
    with pytest.raises(RuntimeError, match="before end"):
        gv.begin()
    with pytest.raises(RuntimeError, match="hooks=False"):
        gv.record()  # the hooks already read each backward
    x, y = batches()[0]
    F.cross_entropy(model(x).flatten(0, 1), y.flatten()).backward()
    with pytest.raises(RuntimeError, match="K >= 2"):
        gv.end()


def test_param_stats_per_block_norms_and_update_ratio():
    model = tiny_gpt()
    x, y = batches()[0]
    F.cross_entropy(model(x).flatten(0, 1), y.flatten()).backward()
    stats = ParamStatsMonitor(model)
    gn = stats.grad_norms()
    blocks = {"embed": [model.transformer.wte.weight],
              **{f"h.{i}": list(b.parameters()) for i, b in enumerate(model.transformer.h)}}
    for g, ps in blocks.items():
        assert gn[f"grad_norm/{g}"].item() == pytest.approx(torch.cat([p.grad.flatten() for p in ps]).norm().item(),
                                                            rel=1e-5)
    before = {g: torch.cat([p.detach().flatten().clone() for p in ps]) for g, ps in blocks.items()}
    stats.snapshot()
    torch.optim.SGD(model.parameters(), lr=0.5).step()
    out = stats.update_ratios()
    for g, ps in blocks.items():
        after = torch.cat([p.detach().flatten() for p in ps])
        assert out[f"param_norm/{g}"].item() == pytest.approx(after.norm().item(), rel=1e-5)
        assert out[f"update_ratio/{g}"].item() == pytest.approx(((after - before[g]).norm() / before[g].norm()).item(),
                                                                rel=1e-4)
    assert stats.param_norms()["param_norm/h.1"].item() == pytest.approx(out["param_norm/h.1"].item(), rel=1e-6)
    with pytest.raises(RuntimeError, match="snapshot"):
        stats.update_ratios()


def reference_activations(model: GPT, idx: torch.Tensor) -> dict[str, float]:
    """Recompute the statistics by hand, walking the blocks of steadylm's GPT."""
    tr = model.transformer
    x = tr.wte(idx) + tr.wpe(torch.arange(idx.shape[1]))
    out = {}
    logits_max = []
    for i, block in enumerate(tr.h):
        a = block.attn
        q, k, _ = a.c_attn(block.ln_1(x)).split(a.n_embd, dim=2)
        B, L, C = q.shape
        q = q.view(B, L, a.n_head, C // a.n_head).transpose(1, 2)
        k = k.view(B, L, a.n_head, C // a.n_head).transpose(1, 2)
        s = (q @ k.transpose(-2, -1)) / math.sqrt(C // a.n_head)
        s = s.masked_fill(torch.ones(L, L, dtype=torch.bool).triu(1), -math.inf)
        out[f"attn_logit_max/h.{i}"] = s.max().item()
        logits_max.append(s.max().item())
        x = block(x)
        out[f"rms/h.{i}"] = x.pow(2).mean().sqrt().item()
    logz = torch.logsumexp(model.lm_head(tr.ln_f(x)), dim=-1)
    out.update(attn_logit_max=max(logits_max), logz_mean=logz.mean().item(), logz_max=logz.max().item())
    return out


def test_activation_statistics_match_a_manual_forward():
    model = tiny_gpt(n_layer=3)
    with torch.no_grad():  # make the attention logits large enough to matter
        for b in model.transformer.h:
            b.attn.c_attn.weight.mul_(8)
    model.train()
    idx = batches()[0][0]
    got = ActivationMonitor(model, chunk=3).measure(idx)  # chunk < T exercises the chunked causal mask
    assert model.training  # restored
    with torch.no_grad():
        want = reference_activations(model.eval(), idx)
    assert set(got) == set(want)
    for key, v in want.items():
        assert got[key].item() == pytest.approx(v, rel=1e-4, abs=1e-5), key


def test_max_attention_logit_grouped_query_and_masks():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 4, 5, 8, generator=g), torch.randn(2, 2, 7, 8, generator=g)
    full = (q @ k.repeat_interleave(2, dim=1).transpose(-2, -1)) * 0.3
    assert max_attention_logit(q, k, scale=0.3, chunk=2).item() == pytest.approx(full.max().item(), rel=1e-6)
    allowed = torch.rand(2, 1, 5, 7, generator=g) > 0.5
    allowed[..., 0] = True
    want = full.masked_fill(~allowed, -math.inf).max().item()
    assert max_attention_logit(q, k, allowed, scale=0.3, chunk=2).item() == pytest.approx(want, rel=1e-6)
    additive = torch.zeros(2, 1, 1, 7).masked_fill(torch.arange(7) > 2, -math.inf)
    want = full[..., :3].max().item()
    assert max_attention_logit(q, k, additive, scale=0.3, chunk=2).item() == pytest.approx(want, rel=1e-6)


def test_activation_monitor_on_hf_gpt2():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=V, n_positions=T,
                                  bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg)
    got = ActivationMonitor(model).measure(batches()[0][0])
    assert {"rms/h.0", "rms/h.1", "attn_logit_max/h.0", "attn_logit_max/h.1", "logz_mean", "logz_max"} <= set(got)
    assert all(torch.isfinite(v) for v in got.values())


def loss_series(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    loss = 3.0 + 2.0 * np.exp(-t / 80) + rng.normal(0, 0.02, n)
    gnorm = 1.0 + 0.3 * np.exp(-t / 50) + np.abs(rng.normal(0, 0.05, n))
    return loss, gnorm


def run_detector(det: SpikeDetector, loss, gnorm, start: int = 0) -> list[int]:
    flagged = []
    for i, (a, b) in enumerate(zip(loss, gnorm)):
        s = det.update(torch.tensor(a), torch.tensor(b))
        assert s.dtype == torch.bool and s.shape == ()
        if s:
            flagged.append(start + i)
    return flagged


def test_spike_detector_flags_the_injected_step_only():
    loss, gnorm = loss_series(400)
    assert run_detector(SpikeDetector(window=64, sigma=6.0), loss, gnorm) == []
    spiked = loss.copy()
    spiked[250] += 1.0
    assert run_detector(SpikeDetector(window=64, sigma=6.0), spiked, gnorm) == [250]
    gspiked = gnorm.copy()
    gspiked[180] *= 5
    assert run_detector(SpikeDetector(window=64), loss, gspiked) == [180]


def test_spike_detector_nonfinite_warmup_and_resume():
    loss, gnorm = loss_series(200)
    bad = loss.copy()
    bad[5] = float("nan")  # inside warmup: still a spike
    bad[120] = float("inf")
    det = SpikeDetector(window=32, warmup=10)
    assert run_detector(det, bad, gnorm) == [5, 120]
    assert torch.isfinite(det.values).all()  # the non-finite values did not enter the window

    a = SpikeDetector(window=32)
    run_detector(a, loss[:100], gnorm[:100])
    b = SpikeDetector(window=32)
    b.load_state_dict(a.state_dict())
    spiked = loss[100:].copy()
    spiked[30] += 0.5
    assert run_detector(a, spiked, gnorm[100:], start=100) == run_detector(b, spiked, gnorm[100:], start=100) == [130]


def test_first_nonfinite_grad_names_the_injected_parameter():
    model = tiny_gpt()
    x, y = batches()[0]
    F.cross_entropy(model(x).flatten(0, 1), y.flatten()).backward()
    assert first_nonfinite_grad(model) is None
    model.zero_grad(set_to_none=True)
    target = model.transformer.h[1].mlp.c_fc.weight
    target.register_hook(lambda g: g.index_fill(0, torch.tensor([3]), float("nan")))
    F.cross_entropy(model(x).flatten(0, 1), y.flatten()).backward()
    assert first_nonfinite_grad(model) == "transformer.h.1.mlp.c_fc.weight"


def test_param_stats_with_mixed_dtypes():
    model = tiny_gpt()
    model.transformer.h.to(torch.bfloat16)  # blocks in bf16, embedding in fp32
    stats = ParamStatsMonitor(model)
    out = stats.param_norms()
    want = torch.cat([p.detach().float().flatten() for p in model.transformer.h[0].parameters()]).norm()
    assert out["param_norm/h.0"].dtype == torch.float32
    assert out["param_norm/h.0"].item() == pytest.approx(want.item(), rel=1e-5)
