"""TEV against a NumPy reference, and the TEVMonitor's seen-row, head and state behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from steadylm.config import load_config
from steadylm.model.gpt import GPT
from steadylm.monitor import TEVMonitor, tev_histogram, tev_per_row, tev_summary
from steadylm.monitor.tev import frequency_groups


def numpy_tev(w: np.ndarray) -> tuple[np.ndarray, float, float]:
    w = w.astype(np.float64)
    per_row = np.sqrt(((w - w.mean(axis=1, keepdims=True)) ** 2).mean(axis=1))
    return per_row, per_row.mean(), np.sqrt(((per_row - per_row.mean()) ** 2).mean())


def test_tev_matches_numpy_and_constant_rows_give_zero():
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.02, size=(97, 48)).astype(np.float32)
    w[3] = 0.5  # constant rows have no spread
    w[10] = -2.0
    w[20] = np.linspace(-1, 1, 48)
    per_row, mu, sigma = numpy_tev(w)
    got = tev_per_row(torch.from_numpy(w))
    assert got.dtype == torch.float32
    assert got[3] == 0 and got[10] == 0
    np.testing.assert_allclose(got.numpy(), per_row, rtol=1e-5, atol=1e-7)
    m, s = tev_summary(torch.from_numpy(w))
    assert m.shape == () and abs(m.item() - mu) < 1e-6 and abs(s.item() - sigma) < 1e-6


def test_tev_is_fp32_for_bf16_and_excludes_padding_rows():
    w = torch.randn(64, 32) * 0.02
    w[50:] = 7.0 * torch.randn(14, 32)  # padding rows that must not count
    _, mu, sigma = numpy_tev(w[:50].to(torch.bfloat16).float().numpy())
    m, s = tev_summary(w.to(torch.bfloat16), n_rows=50)
    assert m.dtype == torch.float32
    assert m.item() == pytest.approx(mu, rel=1e-5) and s.item() == pytest.approx(sigma, rel=1e-4)


def test_gpt2_init_reference_values():
    # GPT-2 init N(0, 0.02^2) gives mu ~ 0.02 and sigma ~ 0.02 / sqrt(2 d).
    d = 256
    m, s = tev_summary(torch.randn(20000, d, generator=torch.Generator().manual_seed(0)) * 0.02)
    assert m.item() == pytest.approx(0.02, rel=0.01)
    assert s.item() == pytest.approx(0.02 / np.sqrt(2 * d), rel=0.05)


def test_histogram_counts_every_row_on_equal_width_bins():
    tev = torch.tensor([0.0, 0.1, 0.2, 0.25, 0.4, 1.0])
    counts, edges = tev_histogram(tev, bins=4)
    assert counts.tolist() == [3, 2, 0, 1]  # [0, .25) [.25, .5) [.5, .75) [.75, 1]
    np.testing.assert_allclose(edges.numpy(), [0, 0.25, 0.5, 0.75, 1.0])
    counts, _ = tev_histogram(torch.full((5,), 0.3), bins=3)
    assert counts.tolist() == [5, 0, 0]


def test_monitor_seen_rows_match_reference():
    emb = nn.Embedding(40, 16)
    with torch.no_grad():
        emb.weight[:30] = torch.randn(30, 16) * torch.linspace(0.1, 3.0, 30)[:, None]
    mon = TEVMonitor(emb, vocab_size=30)
    first = mon.compute()
    assert torch.isnan(first["tev_seen_mean"])  # nothing observed yet
    mon.observe_tokens(torch.tensor([[1, 5, 5], [7, 29, 1]]))
    mon.observe_tokens(torch.tensor([12]))
    out = mon.compute()
    per_row, mu, sigma = numpy_tev(emb.weight.detach().numpy()[:30])
    seen = per_row[[1, 5, 7, 12, 29]]
    assert out["tev_mean"].item() == pytest.approx(mu, rel=1e-5)
    assert out["tev_std"].item() == pytest.approx(sigma, rel=1e-5)
    assert out["tev_seen_mean"].item() == pytest.approx(seen.mean(), rel=1e-5)
    assert out["tev_seen_std"].item() == pytest.approx(seen.std(), rel=1e-5)
    assert all(v.shape == () and v.dtype == torch.float32 for v in out.values())
    assert "tev_head_mean" not in out
    counts, edges = mon.histogram(bins=7)
    assert int(counts.sum()) == 30 and edges.shape == (8,)


def test_monitor_state_dict_round_trip():
    emb = nn.Embedding(20, 8)
    a = TEVMonitor(emb)
    a.observe_tokens(torch.tensor([3, 4, 19]))
    b = TEVMonitor(emb)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.compute()["tev_seen_mean"], b.compute()["tev_seen_mean"])
    assert b.seen.nonzero().flatten().tolist() == [3, 4, 19]
    with pytest.raises(ValueError, match="rows"):
        TEVMonitor(nn.Embedding(21, 8)).load_state_dict(a.state_dict())


def test_for_model_tied_gpt_and_untied_head():
    cfg = load_config(None, ["model.n_layer=1", "model.n_embd=16", "model.n_head=2", "model.block_size=8",
                             "model.vocab_size=33"])
    gpt = GPT(cfg.model)
    mon = TEVMonitor.for_model(gpt, vocab_size=30)
    assert "tev_head_mean" not in mon.compute()  # GPT ties lm_head to wte
    gpt.lm_head.weight = nn.Parameter(torch.randn(33, 16) * 2.0)
    out = TEVMonitor.for_model(gpt, vocab_size=30).compute()
    _, mu, _ = numpy_tev(gpt.lm_head.weight.detach().numpy()[:30])
    assert out["tev_head_mean"].item() == pytest.approx(mu, rel=1e-5)


def test_weight_getter_and_bad_input():
    w = torch.randn(10, 4)
    assert TEVMonitor(lambda: w).compute()["tev_mean"].item() == pytest.approx(numpy_tev(w.numpy())[1], rel=1e-5)
    with pytest.raises(ValueError, match="2-D"):
        TEVMonitor(torch.randn(10))
    with pytest.raises(ValueError, match="vocab_size"):
        TEVMonitor(w, vocab_size=11)


def _union_worker(rank: int, world: int, init: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    mon = TEVMonitor(nn.Embedding(12, 4))
    mon.observe_tokens(torch.tensor([rank, 5 + 3 * rank]))
    mon.all_reduce_seen()
    torch.save(mon.seen, f"{out}.{rank}")
    dist.destroy_process_group()


def test_all_reduce_seen_takes_the_union_over_ranks(tmp_path):
    import torch.multiprocessing as mp

    out = str(tmp_path / "seen")
    mp.spawn(_union_worker, args=(2, f"file://{tmp_path / 'store'}", out), nprocs=2)
    for rank in range(2):
        assert torch.load(f"{out}.{rank}").nonzero().flatten().tolist() == [0, 1, 5, 8]


def test_frequency_groups_split_ranked_rows_into_equal_thirds():
    counts = torch.tensor([5, 0, 9, 9, 1, 3, 7, 2])  # ranked: 2,3 (9, ties by id), 6, 0, 5, 7, 4, 1
    groups = frequency_groups(counts)
    assert list(groups) == ["freq_hi", "freq_mid", "freq_lo"]
    assert torch.nonzero(groups["freq_hi"]).flatten().tolist() == [2, 3, 6]
    assert torch.nonzero(groups["freq_mid"]).flatten().tolist() == [0, 5, 7]
    assert torch.nonzero(groups["freq_lo"]).flatten().tolist() == [1, 4]
    union = groups["freq_hi"] | groups["freq_mid"] | groups["freq_lo"]
    assert union.all() and sum(int(m.sum()) for m in groups.values()) == 8
    with pytest.raises(ValueError, match="at least 3 rows"):
        frequency_groups(torch.tensor([1, 2]))


def test_monitor_group_figures_match_numpy_over_each_group():
    torch.manual_seed(0)
    weight = torch.randn(12, 16) * torch.linspace(0.5, 2.0, 12)[:, None]
    counts = torch.arange(12).flip(0)  # row 0 most frequent
    mon = TEVMonitor(weight, vocab_size=12, row_groups=frequency_groups(counts))
    out = mon.compute()
    tev = weight.numpy().std(axis=1)
    for name, rows in (("freq_hi", slice(0, 4)), ("freq_mid", slice(4, 8)), ("freq_lo", slice(8, 12))):
        assert float(out[f"tev_mean/{name}"]) == pytest.approx(tev[rows].mean(), rel=1e-5)
        assert float(out[f"tev_std/{name}"]) == pytest.approx(tev[rows].std(), rel=1e-4)
    with pytest.raises(ValueError, match="non-empty boolean mask of 12 rows"):
        TEVMonitor(weight, vocab_size=12, row_groups={"bad": torch.ones(11, dtype=torch.bool)})

