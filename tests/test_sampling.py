"""The ID sample of `steadylm analyze`: what it selects, and that it removes the repeated-token artefact."""

from __future__ import annotations

import numpy as np
import pytest

from steadylm.analysis import geometry
from steadylm.analysis.sampling import select
from steadylm.errors import SteadyLMError

VOCAB, D, SEQ_LEN = 8000, 64, 62


def zipf_sequences(n_seq: int, seed: int = 0) -> list[list[int]]:
    """Token ids drawn from a Zipf law (exponent 1.1) over VOCAB, n_seq sequences of SEQ_LEN."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, VOCAB + 1) ** 1.1
    return [rng.choice(VOCAB, SEQ_LEN, p=p / p.sum()).tolist() for _ in range(n_seq)]


def two_layers(pool, rows, context: float, seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The simulation of the artefact: layer 0 = token + position embedding, both N(0, 0.02²), as
    in a GPT-2 at init; layer 1 = layer 0 plus a random context term of `context` x its norm (what
    one block adds, different for every occurrence). Returns (layer 0, layer 1, token ids)."""
    rng = np.random.default_rng(seed)
    wte, wpe = rng.normal(0, 0.02, (VOCAB, D)), rng.normal(0, 0.02, (SEQ_LEN, D))
    h0 = np.stack([wte[pool[s][t]] + wpe[t] for s, t in rows])  # (n, D)
    u = rng.normal(size=h0.shape)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    h1 = h0 + context * np.linalg.norm(h0, axis=1, keepdims=True) * u
    return h0, h1, np.array([pool[s][t] for s, t in rows])


@pytest.fixture(scope="module")
def pool() -> list[list[int]]:
    return zipf_sequences(600)


def id_after_context(pool, id_sample: str, n_seq: int, n: int) -> dict:
    sel = select(iter(pool[:n_seq]), n, id_sample, min_chunks=n_seq, seed=0)
    out = {}
    for context in (0.01, 0.05):
        h0, h1, ids = two_layers(pool, sel.id_rows, context)
        out[0.0] = geometry.intrinsic_dimensions(h0, ids)
        out[context] = geometry.intrinsic_dimensions(h1, ids)
    return out


def test_reference_protocol_collapses_when_a_small_context_term_is_added(pool):
    # The committed protocol: every position of 66 sequences of 62 tokens, frequent tokens many
    # times. Identical (token, position) rows merge at layer 0; after the context term they are
    # near-duplicates, and TwoNN collapses (and MLE with it).
    r = id_after_context(pool, "all", 66, 4000)
    assert r[0.0]["twonn"] > 15
    for context in (0.01, 0.05):
        assert r[context]["twonn"] < 0.8 * r[0.0]["twonn"], context
        assert r[context]["mle"] < 0.8 * r[0.0]["mle"], context
        assert r[context]["nn_same_token"] > 0.4  # the diagnostic flags it


@pytest.mark.parametrize("id_sample", ["token", "token-position"])
def test_new_protocols_keep_the_layer_0_dimension(pool, id_sample):
    r = id_after_context(pool, id_sample, 66 if id_sample == "token-position" else 600, 1500)
    assert r[0.0]["unique"] == 1500
    for context in (0.01, 0.05):
        assert r[context]["twonn"] == pytest.approx(r[0.0]["twonn"], rel=0.2), context
        assert r[context]["mle"] == pytest.approx(r[0.0]["mle"], rel=0.2), context
    if id_sample == "token":
        assert r[0.05]["nn_same_token"] == 0.0


def test_token_sample_has_each_id_once_and_grows_the_pool(pool):
    sel = select(iter(pool), 1500, "token", drop_first=2, min_chunks=10, seed=3)
    ids = [pool[s][t] for s, t in sel.id_rows]
    assert len(ids) == len(set(ids)) == 1500
    assert all(t >= 2 for _, t in sel.id_rows + sel.position_rows)
    assert sel.chunks > 10  # 10 sequences hold far fewer than 1500 distinct ids
    used = {s for s, _ in sel.id_rows}
    assert len(used) > 100  # spread over many sequences, not the first few
    assert select(iter(pool), 1500, "token", drop_first=2, min_chunks=10, seed=3) == sel  # seeded


def test_token_position_sample_and_position_sample():
    seqs = [[1, 2, 3, 4], [1, 2, 5, 4], [7, 2, 3, 4]]
    sel = select(iter(seqs), 8, "token-position", min_chunks=1, causal=True, seed=0)
    keys = [(seqs[s][t], t) for s, t in sel.id_rows]
    assert len(keys) == len(set(keys))
    # Causal: [1] and [1, 2] open two sequences, so 12 positions hold 10 distinct contexts.
    contexts = {tuple(seqs[s][: t + 1]) for s, t in sel.position_rows}
    assert len(contexts) == len(sel.position_rows) == 8
    with pytest.raises(SteadyLMError, match="only 10 distinct token positions"):
        select(iter(seqs), 11, "token", min_chunks=1, causal=True)
    # Bidirectional: the whole sequence is the context, so all 12 positions are distinct.
    assert len(select(iter(seqs), 12, "all", min_chunks=1, causal=False).position_rows) == 12


def test_small_vocabulary_gives_a_smaller_id_sample_and_all_is_the_position_sample():
    seqs = [[i % 5 for i in range(k, k + 20)] for k in range(10)]
    sel = select(iter(seqs), 50, "token", min_chunks=1, causal=False)
    assert len(sel.id_rows) == 5 and sel.chunks == 10  # the whole text was pooled looking for more
    sel = select(iter(seqs), 50, "all", min_chunks=1, causal=False)
    assert sel.id_rows == sel.position_rows and sel.chunks == 3
    with pytest.raises(SteadyLMError, match="unknown ID sample 'types'"):
        select(iter(seqs), 5, "types")
