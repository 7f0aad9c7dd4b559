"""SparseGradLinear and its HOSVD basis: exact forward, gradients in the rotated basis, top-k."""

import pytest
import torch
from torch import nn

from steadylm.finetune.sparsegrad import (
    SparseGradLinear,
    hosvd_bases,
    topk_energy_share,
)


def _orthogonal(n: int, gen: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return q


@pytest.fixture
def layer_pair():
    gen = torch.Generator().manual_seed(0)
    lin = nn.Linear(12, 20).double()
    u_out, u_in = _orthogonal(20, gen), _orthogonal(12, gen)
    sg = SparseGradLinear(lin, u_out, u_in, k=20 * 12, layer_type="up")
    x = torch.randn(3, 5, 12, generator=gen, dtype=torch.float64)
    return lin, sg, u_out, u_in, x


def test_forward_equals_linear(layer_pair):
    lin, sg, _, _, x = layer_pair
    torch.testing.assert_close(sg(x), lin(x))
    torch.testing.assert_close(sg.to_linear()(x), lin(x))


def test_gradients_are_the_dense_ones_rotated_bias_unrotated(layer_pair):
    lin, sg, u_out, u_in, x = layer_pair
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    target = torch.randn(3, 5, 20, dtype=torch.float64)
    ((lin(x1) - target) ** 2).sum().backward()
    ((sg(x2) - target) ** 2).sum().backward()
    assert sg.weight.grad.is_sparse
    torch.testing.assert_close(sg.weight.grad.to_dense(), u_out.t() @ lin.weight.grad @ u_in)
    torch.testing.assert_close(sg.bias.grad, lin.bias.grad)  # the reference code rotates this one
    torch.testing.assert_close(x2.grad, x1.grad)


def test_top_k_keeps_the_largest_magnitudes(layer_pair):
    lin, _, u_out, u_in, x = layer_pair
    sg = SparseGradLinear(lin, u_out, u_in, k=7, layer_type="up")
    sg(x).pow(3).sum().backward()  # a gradient with entries of both signs
    full = SparseGradLinear(lin, u_out, u_in, k=240, layer_type="up")
    full(x).pow(3).sum().backward()
    dense = full.weight.grad.to_dense()
    kept = sg.weight.grad.coalesce()
    assert kept._nnz() == 7
    expected = dense.abs().flatten().topk(7).values.sort().values
    torch.testing.assert_close(kept.values().abs().sort().values, expected)
    torch.testing.assert_close(kept.to_dense()[kept.to_dense() != 0], dense[kept.to_dense() != 0])


def test_sparse_update_touches_only_the_kept_entries(layer_pair):
    lin, _, u_out, u_in, x = layer_pair
    sg = SparseGradLinear(lin.float(), u_out.float(), u_in.float(), k=10, layer_type="up")
    before = sg.weight.detach().clone()
    opt = torch.optim.SparseAdam([sg.weight], lr=1e-2)
    sg(x.float()).square().sum().backward()
    kept = sg.weight.grad.coalesce().indices()
    opt.step()
    changed = (sg.weight.detach() != before).nonzero().t()
    assert changed.shape[1] == 10
    assert torch.equal(changed, kept)


def test_hosvd_bases_are_the_singular_vectors_of_the_unfoldings():
    gen = torch.Generator().manual_seed(1)
    g = torch.randn(6, 10, 8, generator=gen, dtype=torch.float64)
    u_out, u_in = hosvd_bases(g)
    torch.testing.assert_close(u_out.t() @ u_out, torch.eye(10, dtype=torch.float64))
    torch.testing.assert_close(u_in.t() @ u_in, torch.eye(8, dtype=torch.float64))
    svd_out = torch.linalg.svd(g.permute(1, 0, 2).reshape(10, -1), full_matrices=False)[0]
    svd_in = torch.linalg.svd(g.permute(2, 0, 1).reshape(8, -1), full_matrices=False)[0]
    torch.testing.assert_close(
        (u_out.t() @ svd_out).abs(), torch.eye(10, dtype=torch.float64), atol=1e-8, rtol=0
    )
    torch.testing.assert_close(
        (u_in.t() @ svd_in).abs(), torch.eye(8, dtype=torch.float64), atol=1e-8, rtol=0
    )


def test_top_k_energy_is_concentrated_in_the_hosvd_core():
    """Low-rank-plus-noise gradients sharing one subspace: the top 1% of the core U_outᵀ G U_in
    holds most of the energy, the top 1% in the original basis little, and the transposed core of
    the reference code (U_outᵀ G U_inᵀ) sits in between."""
    gen = torch.Generator().manual_seed(2)
    out_f, in_f, rank, n = 256, 128, 4, 12
    p = torch.linalg.qr(torch.randn(out_f, rank, generator=gen, dtype=torch.float64))[0]
    q = torch.linalg.qr(torch.randn(in_f, rank, generator=gen, dtype=torch.float64))[0]

    def grad():
        s = torch.randn(rank, rank, generator=gen, dtype=torch.float64)
        return p @ s @ q.t() + 0.005 * torch.randn(out_f, in_f, generator=gen, dtype=torch.float64)

    u_out, u_in = hosvd_bases(torch.stack([grad() for _ in range(n)]))
    held_out = grad()  # scored on a gradient the basis has not seen
    k = round(0.01 * out_f * in_f)
    original = topk_energy_share(held_out, k)
    core = topk_energy_share(u_out.t() @ held_out @ u_in, k)
    transposed = topk_energy_share(u_out.t() @ held_out @ u_in.t(), k)
    print(
        f"top-1% energy: original {original:.3f}, core {core:.3f}, transposed core {transposed:.3f}"
    )
    assert core > 0.9
    assert original < 0.3
    assert original < transposed < core
