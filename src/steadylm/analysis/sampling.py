"""Which token positions `steadylm analyze` uses: two samples drawn from token ids alone.

From a pool of tokenised text chunks taken in order, the first `drop_first` positions of every
sequence left out:

- the **position sample**: `n_tokens` positions drawn uniformly from the first chunks (at least
  `min_chunks`, more if they hold fewer than `n_tokens` distinct contexts), each context once
  (positions whose states would be identical at every layer, such as the same prefix in two
  causal sequences, count once). Anisotropy, linearity, norm ratio and massive activations are
  computed on it: the states as the text produces them, frequent tokens as often as they occur.
- the **ID sample**: intrinsic dimension is computed on it. The pool grows beyond the position
  sample's chunks until it holds `n_tokens` distinct keys (or the text runs out), and the sample
  is drawn from all of it. With `id_sample="token"` it holds at most one occurrence (a random
  one) of each token id; with "token-position", at most one per
  (token id, position) pair; with "all" it is the position sample, the reference protocol, which
  suffers from the repeated-token artefact (docs/geometry.md). It has `n_tokens` rows, or fewer
  when the whole text holds fewer distinct keys (the vocabulary of a small model can be the limit).

The position sample does not depend on `id_sample`, so profiles that differ only in it differ only
in their intrinsic dimensions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from steadylm.errors import SteadyLMError

ID_SAMPLES = ("token", "token-position", "all")


@dataclass
class Selection:
    """Which positions of which pooled sequences form the two samples (module doc)."""

    position_rows: list[tuple[int, int]]  # (sequence, position), n of them
    id_rows: list[tuple[int, int]]  # (sequence, position), at most n
    chunks: int  # sequences pooled


def text_chunks(texts: list[str], chunk_chars: int = 512, seed: int = 0) -> list[str]:
    """Consecutive `chunk_chars`-character pieces of every text, in a seeded random order."""
    chunks = [t[i : i + chunk_chars] for t in texts for i in range(0, len(t), chunk_chars)]
    chunks = [c for c in chunks if c.strip()]
    order = np.random.default_rng(seed).permutation(len(chunks))
    return [chunks[i] for i in order]


def _context_key(tokens: list[int], t: int, causal: bool) -> bytes:
    """Equal for two positions exactly when the model gives them the same states at every layer:
    the prefix up to t for a causal model, the whole sequence and t for a bidirectional one."""
    seen = tokens[: t + 1] if causal else [*tokens, -1, t]
    return hashlib.blake2b(np.asarray(seen, dtype=np.int64).tobytes(), digest_size=16).digest()


def _id_key(tokens: list[int], t: int, id_sample: str) -> tuple[int, ...]:
    return (tokens[t],) if id_sample == "token" else (tokens[t], t)


def select(
    sequences: Iterable[list[int]],
    n_tokens: int,
    id_sample: str = "token",
    drop_first: int = 0,
    min_chunks: int = 128,
    causal: bool = True,
    seed: int = 0,
) -> Selection:
    """Draw the position and ID samples (module doc) from token-id sequences, taken in order.

    `sequences` is an iterable of token-id lists (already truncated to the model's context); it
    is read lazily, only as far as the pool needs.
    """
    if id_sample not in ID_SAMPLES:
        raise SteadyLMError(
            f"unknown ID sample {id_sample!r}; choose one of {', '.join(ID_SAMPLES)}"
        )
    pool: list[list[int]] = []
    contexts: dict[
        bytes, tuple[int, int]
    ] = {}  # distinct context -> its first (sequence, position)
    keys: set[tuple[int, ...]] = set()
    base = 0  # the position sample's pool: the first `base` sequences, whatever the ID sample needs
    for tokens in sequences:
        s = len(pool)
        pool.append(tokens)
        for t in range(drop_first, len(tokens)):
            contexts.setdefault(_context_key(tokens, t, causal), (s, t))
            keys.add(_id_key(tokens, t, id_sample))
        if not base and len(pool) >= min_chunks and len(contexts) >= n_tokens:
            base = len(pool)
        if base and (id_sample == "all" or len(keys) >= n_tokens):
            break
    if len(contexts) < n_tokens:
        raise SteadyLMError(
            f"the text gives only {len(contexts)} distinct token positions after --drop-first {drop_first}, "
            f"{n_tokens} needed; give more text or lower --tokens"
        )
    base = base or len(pool)  # the text ran out before min_chunks
    rng = np.random.default_rng(seed)
    candidates = list(contexts.values())  # (sequence, position), each context once, in text order
    first = [c for c in candidates if c[0] < base]
    position_rows = [first[i] for i in sorted(rng.choice(len(first), n_tokens, replace=False))]
    if id_sample == "all":
        return Selection(position_rows, position_rows, len(pool))
    id_rows: dict[tuple[int, ...], tuple[int, int]] = {}
    for i in rng.permutation(len(candidates)):  # a random occurrence of each key, random keys first
        s, t = candidates[i]
        id_rows.setdefault(_id_key(pool[s], t, id_sample), (s, t))
        if len(id_rows) == n_tokens:
            break
    return Selection(position_rows, sorted(id_rows.values()), len(pool))
