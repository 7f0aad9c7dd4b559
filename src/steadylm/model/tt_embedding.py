"""Tensor-train (TT) token embedding (Hrinchuk et al., *Tensorized Embedding Layers*, Findings of
EMNLP 2020): the |V| x d matrix E stored as N small cores instead of |V|·d numbers.

The padded vocabulary P = I_1···I_N >= |V| and the width d = J_1···J_N are factorised, and

    E[i, j] = G1[i_1, :, j_1, :] @ G2[i_2, :, j_2, :] @ ... @ GN[i_N, :, j_N, :]   (1 x 1)

where (i_1..i_N) and (j_1..j_N) are the mixed-radix digits of i and j, row-major: the first factor
is the most significant digit, i = ((i_1·I_2 + i_2)·I_3 + i_3)··· (the same order as
`torch.reshape`, so `full()` is a plain reshape of the contracted cores). Core k is stored as
(I_k, R_{k-1}, J_k, R_k), the paper's G^(k)[r, i, j, r'] at [i, r, j, r'], so the slices of a
batch of tokens are one gather along the first dimension. R_0 = R_N = 1, every other rank is
`rank`.

`forward(idx)` contracts only the slices of the tokens asked for, never the whole matrix;
`full()` contracts all cores (for a tied output layer and for tests); `row_blocks()` yields the
real rows a block at a time (for TEV, which must not hold the whole matrix). Rows |V|..P-1 are
padding of the factorisation: `full()` and `row_blocks()` never produce them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn

from steadylm.config import ConfigError, ModelConfig

# Rows reconstructed at a time by `row_blocks`: 1M fp32 entries (4 MB) per block whatever the width.
_BLOCK_ELEMENTS = 1 << 20


@dataclass(frozen=True)
class TTShape:
    """Factors of the padded vocabulary (`vocab`) and of the width (`dim`), paired core by core."""

    vocab: tuple[int, ...]
    dim: tuple[int, ...]

    @property
    def padded_rows(self) -> int:
        return math.prod(self.vocab)

    @property
    def width(self) -> int:
        return math.prod(self.dim)

    def __str__(self) -> str:
        return f"({','.join(map(str, self.vocab))})x({','.join(map(str, self.dim))})"


def tt_num_parameters(shape: TTShape, rank: int) -> int:
    """Σ_k R_{k-1}·I_k·J_k·R_k with R_0 = R_N = 1."""
    ranks = tt_ranks(len(shape.vocab), rank)
    return sum(
        ranks[k] * i * j * ranks[k + 1] for k, (i, j) in enumerate(zip(shape.vocab, shape.dim))
    )


def tt_ranks(n_cores: int, rank: int) -> list[int]:
    return [1] + [rank] * (n_cores - 1) + [1]


def core_init_std(target_std: float, rank: int, n_cores: int) -> float:
    """Core std s such that each entry of E has variance target_std² (the paper's Eq. 2).

    An entry is a sum over R^(N-1) rank paths of products of N independent N(0, s²) numbers, so
    Var E[i, j] = R^(N-1)·s^(2N); solving for s gives (σ² / R^(N-1))^(1/(2N))."""
    return (target_std**2 / rank ** (n_cores - 1)) ** (1.0 / (2 * n_cores))


def _factorisations(n_cores: int, high: int, target: int, exact: bool) -> list[tuple[int, ...]]:
    """Non-decreasing tuples of `n_cores` factors in [1, high] whose product equals `target`
    (`exact`) or, otherwise, is the smallest product >= `target` that such tuples reach."""
    limit = target if exact else high**n_cores  # (high, ..., high) bounds the smallest product
    found: list[tuple[int, ...]] = []

    def walk(prefix: tuple[int, ...], prod: int) -> None:
        lo = prefix[-1] if prefix else 1
        if len(prefix) == n_cores - 1:  # the last factor is forced: the smallest that suffices
            last = max(lo, -(-target // prod))
            if last <= high and (not exact or prod * last == target):
                found.append((*prefix, last))
            return
        for f in range(lo, high + 1):
            if prod * f ** (n_cores - len(prefix)) > limit:
                break  # every continuation has a larger product
            walk((*prefix, f), prod * f)

    walk((), 1)
    if not exact and found:
        smallest = min(math.prod(t) for t in found)
        found = [t for t in found if math.prod(t) == smallest]
    return found


def _most_balanced(cands: list[tuple[int, ...]]) -> tuple[int, ...]:
    # Smallest largest factor, then largest smallest factor, then lexicographic: deterministic.
    return min(cands, key=lambda t: (max(t), -min(t), t))


def auto_shape(vocab_size: int, dim: int, n_cores: int) -> TTShape:
    """Factors close to each other (the paper's rule: balanced factors give the best compression),
    in ascending order and paired smallest with smallest, as in the paper's shapes.

    Width: the most balanced exact factorisation of `dim` (128 -> 4·4·8, 768 -> 8·8·12).
    Vocabulary: c = ceil(|V|^(1/N)) bounds every factor (c^N >= |V| always works); among tuples
    under that bound, the smallest product >= |V| (least padding), then the most balanced
    (4096 -> 16·16·16, 25000 -> 28·30·30, 50257 -> 37·37·37)."""
    if n_cores < 2:
        raise ValueError(f"a TT embedding needs at least 2 cores, got {n_cores}")
    d_cands = _factorisations(n_cores, dim, dim, exact=True)
    c = math.ceil(vocab_size ** (1.0 / n_cores))
    while (c - 1) ** n_cores >= vocab_size:  # float roots can overshoot by one
        c -= 1
    while c**n_cores < vocab_size:
        c += 1
    v_cands = _factorisations(n_cores, c, vocab_size, exact=False)
    return TTShape(vocab=_most_balanced(v_cands), dim=_most_balanced(d_cands))


def check_shape(shape: TTShape, vocab_size: int, dim: int) -> str | None:
    """None if `shape` can hold a |V| x d matrix, else why not (one line)."""
    if len(shape.vocab) != len(shape.dim):
        return f"{len(shape.vocab)} vocabulary factors but {len(shape.dim)} width factors"
    if min(shape.vocab + shape.dim) < 1:
        return "every factor must be >= 1"
    if shape.width != dim:
        return f"width factors {shape.dim} multiply to {shape.width}, not n_embd={dim}"
    if shape.padded_rows < vocab_size:
        rows = shape.padded_rows
        return f"vocabulary factors {shape.vocab} multiply to {rows} < vocab_size={vocab_size}"
    return None


def mixed_radix_digits(idx: torch.Tensor, factors: tuple[int, ...]) -> torch.Tensor:
    """Row-major digits of `idx` (n,) in base `factors`, the first most significant: (n, len)."""
    places = [math.prod(factors[k + 1 :]) for k in range(len(factors))]
    return torch.stack(
        [torch.div(idx, p, rounding_mode="floor") % f for p, f in zip(places, factors)], dim=1
    )


def _contract_slices(cores: list[torch.Tensor], digits: torch.Tensor) -> torch.Tensor:
    """The product of the cores' slices at `digits` (n, m): (n, J_1···J_m, R_m)."""
    n = digits.shape[0]
    _, _, j, r = cores[0].shape  # R_0 = 1
    out = cores[0][digits[:, 0]].reshape(n, j, r)  # (n, J_1, R_1)
    for k in range(1, len(cores)):
        c = cores[k][digits[:, k]]  # (n, R_{k-1}, J_k, R_k)
        _, r, j, r2 = c.shape
        # (n, J_1..J_{k-1}, R) @ (n, R, J_k·R_k) -> (n, J_1..J_k, R_k): j digits stay row-major
        out = torch.bmm(out, c.reshape(n, r, j * r2)).reshape(n, out.shape[1] * j, r2)
    return out


def tt_gather(cores: list[torch.Tensor], digits: torch.Tensor) -> torch.Tensor:
    """Rows at row-major vocabulary digits (n, N) -> (n, J_1···J_N).

    Per row the cost is Σ_k R_{k-1}·J_1···J_k·R_k multiply-adds, and only the n rows' slices
    are gathered: the lookup of a batch's tokens."""
    return _contract_slices(cores, digits)[:, :, 0]  # R_N = 1


def tt_full(cores: list[torch.Tensor]) -> torch.Tensor:
    """All I_1···I_N rows, contracted core by core: (P, R_0·J_1···J_N).

    About P·d·R multiply-adds in a few large products; the intermediates are smaller than the
    result while R <= I_N·J_N. A leading rank R_0 > 1 (the tail of a longer train) becomes the
    most significant column digit."""
    m = cores[0].reshape(cores[0].shape[0], -1, cores[0].shape[-1])  # (I_1, R_0·J_1, R_1)
    for core in cores[1:]:
        # (A, B, R) x (I_k, R, J_k, R') -> (A, I_k, B, J_k, R'): rows and columns stay row-major
        m = torch.einsum("abr,irjs->aibjs", m, core)
        a, i, b, j, s = m.shape
        m = m.reshape(a * i, b * j, s)
    return m[:, :, 0]


class TTEmbedding(nn.Module):
    """An embedding (ids (...,) -> (..., d)) whose |V| x d matrix is a tensor train."""

    def __init__(self, num_embeddings: int, shape: TTShape, rank: int, init_std: float):
        super().__init__()
        problem = check_shape(shape, num_embeddings, shape.width)
        if problem:
            raise ValueError(f"TT shape {shape}: {problem}")
        if rank < 1:
            raise ValueError(f"TT rank must be >= 1, got {rank}")
        self.num_embeddings = num_embeddings  # |V|, the rows that exist
        self.embedding_dim = shape.width
        self.shape = shape
        self.rank = rank
        self.init_std = init_std
        ranks = tt_ranks(len(shape.vocab), rank)
        self.cores = nn.ParameterList(
            nn.Parameter(torch.empty(i, ranks[k], j, ranks[k + 1]))  # (I_k, R_{k-1}, J_k, R_k)
            for k, (i, j) in enumerate(zip(shape.vocab, shape.dim))
        )
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Cores N(0, s²) with s from `core_init_std`, so E's entries have variance init_std²."""
        std = core_init_std(self.init_std, self.rank, len(self.cores))
        for core in self.cores:
            core.normal_(0.0, std)

    def num_parameters(self) -> int:
        return tt_num_parameters(self.shape, self.rank)

    def digits(self, idx: torch.Tensor) -> torch.Tensor:
        """Row-major mixed-radix digits: (n,) -> (n, N)."""
        return mixed_radix_digits(idx, self.shape.vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Rows of the tokens in `idx` (any shape, ids < num_embeddings): (...,) -> (..., d),
        contracted from the cores' slices at their digits, never from the full matrix."""
        flat = idx.reshape(-1)
        # Digits wrap silently where nn.Embedding would fail: check, without a host sync on GPUs.
        torch._assert_async(
            ((flat >= 0) & (flat < self.num_embeddings)).all(), "token id out of range"
        )
        rows = tt_gather(list(self.cores), self.digits(flat))  # (n, d)
        return rows.reshape(*idx.shape, self.embedding_dim)

    def full(self) -> torch.Tensor:
        """The |V| x d matrix (differentiable; padding rows dropped): what a tied head reads."""
        return tt_full(list(self.cores))[: self.num_embeddings]

    def row_blocks(self, n_rows: int | None = None) -> Iterator[torch.Tensor]:
        """The first `n_rows` rows (all real rows by default) as consecutive (b, d) blocks.

        The train is split after its m leading cores, m the fewest for which the rows sharing
        their leading digits (t = I_{m+1}···I_N of them) fit in `_BLOCK_ELEMENTS` entries. The
        tail cores are contracted once, (t, R, J_tail); each block is then one product of the
        leading cores' slices (p, J_head, R) with it, for as many leading digits p as fit. At most
        one block (or t rows, if more) and the tail exist at once, never the whole matrix."""
        n_rows = self.num_embeddings if n_rows is None else n_rows
        if not 0 < n_rows <= self.num_embeddings:
            raise ValueError(f"n_rows={n_rows} must be in 1..{self.num_embeddings}")
        cores, vocab, d = list(self.cores), self.shape.vocab, self.embedding_dim
        m = 1
        while m < len(cores) - 1 and math.prod(vocab[m:]) * d > _BLOCK_ELEMENTS:
            m += 1
        t = math.prod(vocab[m:])
        tail = tt_full(cores[m:]).reshape(t, cores[m].shape[1], -1)  # (t, R_m, J_{m+1}···J_N)
        per_block = max(1, _BLOCK_ELEMENTS // (t * d))  # leading-digit groups per block
        groups = -(-n_rows // t)
        for g0 in range(0, groups, per_block):
            lead = torch.arange(g0, min(g0 + per_block, groups), device=tail.device)
            digits = mixed_radix_digits(lead, vocab[:m])
            head = _contract_slices(cores[:m], digits)  # (p, J_1···J_m, R_m)
            block = torch.einsum("par,trb->ptab", head, tail).reshape(-1, d)  # row g·t + i_tail
            yield block[: n_rows - g0 * t]

    def extra_repr(self) -> str:
        return (
            f"{self.num_embeddings}, {self.embedding_dim}, shape={self.shape}, rank={self.rank}, "
            f"params={self.num_parameters()}"
        )


def resolve_shape(cfg: ModelConfig) -> TTShape:
    """The TT shape of `model.tt_shape` ("auto": `auto_shape`) for the config's vocabulary and
    width."""
    spec = cfg.tt_shape
    if spec == "auto":
        return auto_shape(cfg.vocab_size, cfg.n_embd, cfg.tt_cores)
    if isinstance(spec, str):  # the config's validation rejects any other string
        raise ConfigError(f"model.tt_shape: {spec!r} is not valid")
    shape = TTShape(vocab=tuple(spec[0]), dim=tuple(spec[1]))
    problem = check_shape(shape, cfg.vocab_size, cfg.n_embd)
    if problem:
        raise ConfigError(f"model.tt_shape: {problem}")
    return shape


def describe(emb: TTEmbedding) -> str:
    """One line for the user: shape, padding, rank, parameters and compression against dense."""
    dense = emb.num_embeddings * emb.embedding_dim
    return (
        f"TT embedding {emb.shape} rank {emb.rank}: {emb.num_embeddings} rows padded to "
        f"{emb.shape.padded_rows}, {emb.num_parameters():,} parameters "
        f"({dense / emb.num_parameters():.1f}x "
        f"fewer than the dense {emb.num_embeddings} x {emb.embedding_dim})"
    )


CORE_PREFIX = "transformer.wte.cores."


@torch.no_grad()
def densify_state_dict(cfg: ModelConfig, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A TT model's state dict with its cores replaced by the reconstructed (V, d)
    `transformer.wte.weight`, as a dense GPT-2 stores it (for export and inspection)."""
    emb = TTEmbedding(cfg.vocab_size, resolve_shape(cfg), cfg.tt_rank, init_std=1.0)
    emb.load_state_dict(
        {k.removeprefix("transformer.wte."): v for k, v in sd.items() if k.startswith(CORE_PREFIX)}
    )
    out = {k: v for k, v in sd.items() if not k.startswith(CORE_PREFIX)}
    out["transformer.wte.weight"] = emb.full().float().contiguous()
    return out
