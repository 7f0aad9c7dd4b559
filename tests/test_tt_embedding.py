"""The tensor-train embedding layer: gather vs full matrix, index convention, parameter counts and
the paper's compression ratios, initial variance, gradients, auto shape, TEV over row blocks."""

import math
import statistics

import numpy as np
import pytest
import torch

from steadylm.config import ConfigError, ModelConfig
from steadylm.model import tt_embedding
from steadylm.model.gpt import GPT
from steadylm.model.tt_embedding import (
    TTEmbedding,
    TTShape,
    auto_shape,
    core_init_std,
    densify_state_dict,
    resolve_shape,
    tt_full,
    tt_gather,
    tt_num_parameters,
)
from steadylm.monitor.tev import TEVMonitor, tev_per_row

SHAPES = [
    (TTShape((4, 5, 6), (2, 3, 4)), 4),
    (TTShape((3, 2, 2, 3, 2, 4), (2, 2, 1, 2, 2, 2)), 3),  # six cores, a width factor of 1
    (TTShape((9, 11), (4, 6)), 5),
]


def _entry(cores: list[np.ndarray], digits_i, digits_j) -> float:
    """E[i, j] as the paper writes it: the product of the cores' (R, R) slices at the digits."""
    m = np.ones((1, 1))
    for core, a, b in zip(cores, digits_i, digits_j):
        m = m @ core[a, :, b, :]  # (I_k, R, J_k, R') storage -> the (R, R') slice
    return float(m[0, 0])


@pytest.mark.parametrize("shape,rank", SHAPES)
def test_gather_equals_rows_of_the_full_matrix(shape, rank):
    torch.manual_seed(0)
    rows = shape.padded_rows - 3  # padding rows exist and are never produced
    emb = TTEmbedding(rows, shape, rank, init_std=0.1).double()
    full = emb.full()
    assert full.shape == (rows, shape.width)
    ids = torch.randint(0, rows, (7, 5))
    torch.testing.assert_close(emb(ids), full[ids], rtol=0, atol=1e-14)
    blocks = torch.cat(list(emb.row_blocks()))
    torch.testing.assert_close(blocks, full, rtol=0, atol=1e-14)


@pytest.mark.parametrize("shape,rank", SHAPES)
def test_row_major_index_convention_against_an_independent_reference(shape, rank):
    """Row i's digits are numpy's C-order unravel of i (first factor most significant), checked
    entry by entry against a product of slices; the other convention (first factor least
    significant, as in the paper's reference code) gives different rows, so a convention mix-up
    cannot pass."""
    torch.manual_seed(1)
    emb = TTEmbedding(shape.padded_rows, shape, rank, init_std=0.1).double()
    cores = [c.detach().numpy() for c in emb.cores]
    full = emb.full().detach().numpy()
    rng = np.random.default_rng(0)
    mismatched = 0
    for i, j in zip(rng.integers(0, shape.padded_rows, 40), rng.integers(0, shape.width, 40)):
        di, dj = np.unravel_index(i, shape.vocab), np.unravel_index(j, shape.dim)
        assert full[i, j] == pytest.approx(_entry(cores, di, dj), abs=1e-13)
        assert tuple(emb.digits(torch.tensor([int(i)]))[0].tolist()) == tuple(int(x) for x in di)
        fi, fj = (
            np.unravel_index(i, shape.vocab, order="F"),
            np.unravel_index(j, shape.dim, order="F"),
        )
        mismatched += abs(full[i, j] - _entry(cores, fi, fj)) > 1e-9
    assert mismatched > 20


def test_parameter_count_and_the_papers_compression_ratios():
    for shape, rank in SHAPES:
        emb = TTEmbedding(shape.padded_rows, shape, rank, init_std=0.1)
        assert (
            sum(p.numel() for p in emb.parameters())
            == tt_num_parameters(shape, rank)
            == emb.num_parameters()
        )
    # Hrinchuk et al., Table 1 (IMDB, 25000 x 256, rank 16): TT1 93x, TT2 232x, TT3 441x.
    dense = 25000 * 256
    for vocab, dim, params, ratio in [
        ((25, 30, 40), (4, 8, 8), 68_160, 93),
        ((10, 10, 15, 20), (4, 4, 4, 4), 27_520, 232),
        ((5, 5, 5, 5, 6, 8), (2, 2, 2, 2, 4, 4), 14_496, 441),
    ]:
        n = tt_num_parameters(TTShape(vocab, dim), 16)
        assert n == params
        assert math.floor(dense / n) == ratio


@pytest.mark.parametrize(
    "shape,rank",
    [
        (TTShape((16, 16, 16), (4, 4, 8)), 8),
        (TTShape((16, 16, 16), (4, 4, 8)), 16),
        (TTShape((16, 16, 16), (4, 4, 8)), 64),
        (TTShape((5, 5, 5, 5, 6, 8), (2, 2, 2, 2, 4, 4)), 16),
        (TTShape((64, 64), (8, 16)), 16),
        (TTShape((7, 7, 7), (2, 4, 4)), 4),
    ],
)
def test_initial_entry_variance_is_the_target(shape, rank):
    # One draw's variance scatters by up to ~20% at small ranks (all rows share the same cores),
    # so the measured figure is the mean over 8 draws.
    sigma = 0.02
    variances = []
    for seed in range(8):
        torch.manual_seed(seed)
        emb = TTEmbedding(shape.padded_rows, shape, rank, init_std=sigma)
        with torch.no_grad():
            variances.append(emb.full().square().mean().item())
    assert statistics.mean(variances) == pytest.approx(sigma**2, rel=0.10)
    n = len(shape.vocab)
    assert core_init_std(sigma, rank, n) ** (2 * n) * rank ** (n - 1) == pytest.approx(sigma**2)


def test_gradcheck_of_the_lookup_and_the_full_matrix():
    torch.manual_seed(2)
    emb = TTEmbedding(22, TTShape((3, 2, 4), (2, 3, 2)), 3, init_std=0.5).double()
    ids = torch.tensor([0, 5, 21, 5, 7, 7, 13, 0])  # repeated ids accumulate into one slice
    digits = emb.digits(ids)
    cores = tuple(c.detach().clone().requires_grad_(True) for c in emb.cores)
    assert torch.autograd.gradcheck(lambda *cs: tt_gather(list(cs), digits), cores)
    assert torch.autograd.gradcheck(lambda *cs: tt_full(list(cs)), cores)
    # and the module's own backward: the gradient of a lookup sums over the repeated ids
    emb(ids).sum().backward()
    expected = torch.autograd.grad(tt_gather(list(cores), digits).sum(), cores)
    for core, g in zip(emb.cores, expected):
        torch.testing.assert_close(core.grad, g)


def test_auto_shape_is_balanced_deterministic_and_covers_the_vocabulary():
    assert auto_shape(4096, 128, 3) == TTShape((16, 16, 16), (4, 4, 8))
    assert auto_shape(50257, 768, 3) == TTShape((37, 37, 37), (8, 8, 12))
    assert auto_shape(30522, 256, 3) == TTShape((30, 32, 32), (4, 8, 8))
    for vocab, dim, n in [
        (300, 32, 3),
        (4096, 128, 4),
        (25000, 256, 6),
        (50257, 256, 2),
        (97, 48, 3),
    ]:
        shape = auto_shape(vocab, dim, n)
        assert shape == auto_shape(vocab, dim, n)
        assert len(shape.vocab) == len(shape.dim) == n
        assert shape.width == dim and shape.padded_rows >= vocab
        assert list(shape.vocab) == sorted(shape.vocab) and list(shape.dim) == sorted(shape.dim)
        c = math.ceil(vocab ** (1 / n) - 1e-9)
        assert max(shape.vocab) <= c  # never less balanced than (c, ..., c)


def test_explicit_shape_is_checked_against_the_vocabulary():
    cfg = ModelConfig(
        n_embd=128, n_head=4, vocab_size=4000, embedding="tt", tt_shape=[[16, 16, 16], [4, 4, 8]]
    )
    assert resolve_shape(cfg) == TTShape((16, 16, 16), (4, 4, 8))
    cfg.vocab_size = 5000
    with pytest.raises(ConfigError, match="multiply to 4096 < vocab_size=5000"):
        resolve_shape(cfg)


def _tt_model(head="tied_dense", vocab=97, **extra):
    cfg = ModelConfig(
        n_layer=1,
        n_embd=24,
        n_head=2,
        vocab_size=vocab,
        block_size=8,
        embedding="tt",
        tt_rank=4,
        tt_head=head,
        **extra,
    )
    return GPT(cfg)


def test_tied_head_reads_the_reconstructed_matrix_and_separate_head_is_its_own():
    torch.manual_seed(3)
    tied = _tt_model()
    assert tied.lm_head is None
    idx = torch.randint(0, 97, (2, 8))
    h = tied.hidden_states(idx)
    torch.testing.assert_close(tied(idx), h @ tied.transformer.wte.full().t())
    dense_params = GPT(
        ModelConfig(n_layer=1, n_embd=24, n_head=2, vocab_size=97, block_size=8)
    ).num_parameters()
    assert tied.num_parameters() == dense_params - 97 * 24 + tied.transformer.wte.num_parameters()
    sep = _tt_model("separate")
    assert sep.lm_head.weight.shape == (97, 24)
    assert sep.lm_head.weight.std().item() == pytest.approx(0.02, rel=0.1)
    torch.testing.assert_close(sep(idx), sep.hidden_states(idx) @ sep.lm_head.weight.t())
    loss, _ = tied(idx, targets=idx)
    loss.backward()
    assert all(c.grad is not None and c.grad.abs().sum() > 0 for c in tied.transformer.wte.cores)


@pytest.mark.parametrize("shape,rank", SHAPES)
@pytest.mark.parametrize("limit", [1, 40, 200, 1 << 20])
def test_row_blocks_are_the_real_rows_a_bounded_block_at_a_time(monkeypatch, shape, rank, limit):
    torch.manual_seed(6)
    rows = shape.padded_rows - 5
    emb = TTEmbedding(rows, shape, rank, init_std=0.1).double()
    monkeypatch.setattr(tt_embedding, "_BLOCK_ELEMENTS", limit)
    full = emb.full().detach()
    last_factor_rows = shape.vocab[-1] * shape.width  # the smallest group of rows a block can hold
    for n_rows in (rows, 17):
        with torch.no_grad():
            blocks = list(emb.row_blocks(n_rows))
        assert max(b.numel() for b in blocks) <= max(limit, last_factor_rows)
        torch.testing.assert_close(torch.cat(blocks), full[:n_rows], rtol=0, atol=1e-14)


def test_tev_monitor_reads_row_blocks_and_leaves_padding_out(monkeypatch):
    torch.manual_seed(4)
    model = _tt_model(vocab=97)  # auto shape (5,5,5): rows 97..124 are factorisation padding
    emb = model.transformer.wte
    assert emb.shape.padded_rows > 97
    monkeypatch.setattr(tt_embedding, "_BLOCK_ELEMENTS", 24 * 10)
    monkeypatch.setattr(
        TTEmbedding, "full", lambda self: pytest.fail("TEV must not materialise the matrix")
    )
    monitor = TEVMonitor.for_model(model, vocab_size=90)  # and rows 90..96 are tokenizer padding
    got = monitor.compute()
    monkeypatch.undo()
    expected = tev_per_row(emb.full(), 90)
    assert got["tev_mean"].item() == pytest.approx(expected.mean().item(), rel=1e-5)
    assert got["tev_std"].item() == pytest.approx(expected.std(correction=0).item(), rel=1e-4)
    torch.testing.assert_close(monitor.values(), expected)


def test_densify_state_dict_gives_the_matrix_of_the_cores():
    torch.manual_seed(5)
    model = _tt_model()
    sd = densify_state_dict(model.config, model.state_dict())
    assert not any(k.startswith("transformer.wte.cores") for k in sd)
    torch.testing.assert_close(sd["transformer.wte.weight"], model.transformer.wte.full().detach())


def test_ids_outside_the_vocabulary_fail_like_nn_embedding():
    emb = TTEmbedding(100, auto_shape(100, 8, 2), 2, init_std=0.02)  # padded to 100: (10, 10)
    assert emb(torch.zeros(0, 3, dtype=torch.long)).shape == (0, 3, 8)
    for bad in (100, -1, 250):  # digits would wrap to a real row without the check
        with pytest.raises(RuntimeError, match="token id out of range"):
            emb(torch.tensor([3, bad]))
