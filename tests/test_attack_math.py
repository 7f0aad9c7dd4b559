"""The attack's building blocks against exact references: the generalised power method, the
matrix-free Jacobian products, HotFlip's first-order scores, the candidate filter, the beam search."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from attack_helpers import LABELS, texts_and_labels, tiny_bert, tiny_llama, tokenizer
from steadylm.attack.hotflip import (
    attack_objective,
    beam_search,
    hotflip_scores,
    objective_gradient,
    top_candidates,
)
from steadylm.attack.jacobian import LayerJacobian
from steadylm.attack.power import norm, pq_singular, psi
from steadylm.attack.victim import allowed_token, load_victim


def _matrix(rows: int, cols: int, singular: list[float], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(rows, rows, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(cols, cols, generator=g, dtype=torch.float64))
    s = torch.zeros(rows, cols, dtype=torch.float64)
    s[range(len(singular)), range(len(singular))] = torch.tensor(singular, dtype=torch.float64)
    return u @ s @ v.T


def _products(a: torch.Tensor):
    return (lambda v: a @ v), (lambda w: a.T @ w)


def test_power_method_22_is_the_top_singular_pair():
    a = _matrix(9, 6, [5.0, 3.0, 2.0, 1.0, 0.5, 0.1], seed=0)
    jvp, vjp = _products(a)
    v, s = pq_singular(
        jvp, vjp, (6,), 2.0, 2.0, 100, torch.Generator().manual_seed(1), dtype=torch.float64
    )
    v = v.to(torch.float64)
    _, sv, vh = torch.linalg.svd(a)
    assert s == pytest.approx(float(sv[0]), rel=1e-6)
    assert float(norm(v, 2)) == pytest.approx(1.0, rel=1e-6)
    assert abs(float(v @ vh[0])) == pytest.approx(1.0, abs=1e-6)


def test_power_method_inf_q_matches_brute_force_over_sign_vectors():
    # Seed 4: the maximiser for q = 5 is not the one for q = 2, so q must be used as given.
    g = torch.Generator().manual_seed(4)
    a = torch.randn(7, 6, generator=g, dtype=torch.float64)
    q = 5.0
    # ||A v||_q is convex in v, so its maximum over the cube ||v||_inf <= 1 is at a vertex.
    best = max(
        float(norm(a @ torch.tensor(s, dtype=torch.float64), q))
        for s in itertools.product((-1.0, 1.0), repeat=6)
    )
    jvp, vjp = _products(a)
    found = []
    for seed in range(8):
        v, s = pq_singular(
            jvp,
            vjp,
            (6,),
            math.inf,
            q,
            30,
            torch.Generator().manual_seed(seed),
            dtype=torch.float64,
        )
        assert torch.equal(v.abs(), torch.ones(6, dtype=v.dtype))  # a vertex of the cube
        assert s <= best * (1 + 1e-9)  # never above the true maximum
        assert torch.equal(v, torch.sign(a.T @ psi(a @ v, q)))  # a fixed point of Boyd's map
        found.append(s)
    assert max(found) == pytest.approx(best, rel=1e-9)


@pytest.fixture(scope="module")
def victim(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bert")
    tiny_bert(seed=0).save_pretrained(folder)
    tokenizer().save(str(folder / "tokenizer.json"))
    v = load_victim(folder, torch.device("cpu"), 64)
    v.model.double()
    return v


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A Llama classifier whose tokenizer puts a BOS ([CLS] here) before the text and no end."""
    from tokenizers import processors

    folder = tmp_path_factory.mktemp("llama")
    tiny_llama(seed=0).save_pretrained(folder)
    tok = tokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A", special_tokens=[("[CLS]", 2)]
    )
    tok.save(str(folder / "tokenizer.json"))
    v = load_victim(folder, torch.device("cpu"), 64)
    v.model.double()
    return v


def _batch(victim, n: int = 3):
    rows = victim.encode([t for t, _ in texts_and_labels(n, 5)], 2)
    trigger = victim.neutral_trigger(2)
    ids, mask = victim.batch(rows, trigger)
    labels = torch.tensor([y for _, y in texts_and_labels(n, 5)])
    return ids, mask, trigger, labels


@pytest.mark.parametrize("family,layer", [("bert", 1), ("bert", 2), ("llama", 2)])
def test_matrix_free_products_equal_the_explicit_jacobian(victim, llama, family, layer):
    victim = victim if family == "bert" else llama
    assert victim.start == 1  # after [CLS] / BOS
    ids, mask, trigger, _ = _batch(victim)
    assert mask.sum() < mask.numel()  # some padding, whose rows must be zeroed
    x0 = victim.token_embeddings(trigger) + 0.1  # (L, C), away from the table's rows
    jac = LayerJacobian(victim, ids, mask, x0, layer)
    full = torch.autograd.functional.jacobian(
        lambda x: victim.layer_output(ids, mask, x, layer), x0
    )  # (B, T, C, L, C)
    assert full.abs().sum() > 0
    g = torch.Generator().manual_seed(0)
    v = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    w = torch.randn(full.shape[:3], generator=g, dtype=torch.float64)
    torch.testing.assert_close(jac.jvp(v), torch.einsum("btcld,ld->btc", full, v))
    torch.testing.assert_close(jac.vjp(w), torch.einsum("btcld,btc->ld", full, w))
    assert jac.jvp(v)[mask == 0].abs().max() == 0


@pytest.mark.parametrize("target", [None, 0])
def test_hotflip_scores_are_the_first_order_objective_change(victim, target):
    ids, mask, trigger, labels = _batch(victim, 4)
    emb = victim.embedding_matrix()
    cur = victim.token_embeddings(trigger)
    grad = objective_gradient(victim, ids, mask, cur, labels, target)
    allowed = victim.candidate_mask(victim.embedding_matrix().shape[0])
    scores = hotflip_scores(emb, cur, -grad, allowed)  # gain = decrease of the objective

    def objective(x):
        with torch.no_grad():
            return float(attack_objective(victim.logits(ids, mask, x), labels, target).mean())

    eps = 1e-4
    for pos, w in [(0, 4), (1, 5), (0, 20), (1, 33)]:
        step = torch.zeros_like(cur)
        step[pos] = emb[w] - cur[pos]
        fd = (objective(cur + eps * step) - objective(cur - eps * step)) / (2 * eps)
        assert float(scores[pos, w]) == pytest.approx(-fd, rel=1e-5, abs=1e-9)
    best = top_candidates(scores, 3)
    assert best.shape == (2, 3)
    assert bool(allowed[best].all())
    assert torch.equal(scores.max(1).values, scores.gather(1, best[:, :1]).squeeze(1))


def test_candidate_filter():
    assert allowed_token("movie", None) and not allowed_token("##ing", None)
    assert not allowed_token("w12", None) and not allowed_token("3", None)
    assert allowed_token("Ġgood", "Ġ") and not allowed_token("good", "Ġ")
    assert allowed_token("▁bad", "▁") and not allowed_token("▁,", "▁")


def test_candidate_mask_excludes_special_tokens(victim):
    allowed = victim.candidate_mask(victim.embedding_matrix().shape[0])
    vocab = victim.encoder.tokenizer.get_vocab()
    for special in ("[PAD]", "[UNK]", "[CLS]", "[SEP]"):
        assert not bool(allowed[vocab[special]])
    assert bool(allowed[vocab["good"]]) and bool(allowed[vocab["the"]])
    assert victim.start == 1  # the trigger goes after [CLS]
    assert victim.labels == LABELS


def test_beam_search_beats_greedy_on_a_trap():
    # Position 0's locally best token (9) rules out the jointly best pair (5, 7).
    def objective(t):
        table = {(9, 0): -10.0, (5, 7): -20.0, (5, 0): -1.0, (9, 7): -11.0}
        return table.get(tuple(t), 0.0)

    candidates = torch.tensor([[9, 5], [7, 0]])
    greedy, g_val = beam_search([0, 0], candidates, objective, beam=1)
    wide, w_val = beam_search([0, 0], candidates, objective, beam=2)
    assert (greedy, g_val) == ([9, 7], -11.0)
    assert (wide, w_val) == ([5, 7], -20.0)


def _tt_gpt_victim():
    """Our GPT classifier with a tensor-train token embedding, as a Victim (no folder)."""
    from steadylm.attack.victim import Victim, leading_specials
    from steadylm.config import Config
    from steadylm.finetune.models import Classifier, GPTClassifier, TextEncoder
    from steadylm.model.gpt import GPT

    torch.manual_seed(0)
    cfg = Config()
    cfg.model.n_layer, cfg.model.n_embd, cfg.model.n_head = 2, 32, 4
    cfg.model.vocab_size, cfg.model.block_size = 64, 32
    cfg.model.embedding, cfg.model.tt_rank = "tt", 4
    body = GPTClassifier(GPT(cfg.validate().model), 2, "mean")
    tok = tokenizer()
    tok.post_processor = None
    encoder = TextEncoder(tok, 0)
    model = Classifier(body, "steadylm").eval()
    return Victim(model, encoder, LABELS, body.gpt.transformer.h, leading_specials(encoder), 32,
                  torch.device("cpu"), "tt-gpt")  # fmt: skip


@pytest.mark.parametrize("which", ["bert", "tt-gpt"])
def test_substituting_the_triggers_own_rows_changes_nothing(victim, which):
    v = victim if which == "bert" else _tt_gpt_victim()
    assert v.start == (1 if which == "bert" else 0)
    ids, mask, trigger, _ = _batch(v)
    emb = v.embedding_matrix()
    assert emb.shape[0] == (victim.embedding_matrix().shape[0] if which == "bert" else 64)
    torch.testing.assert_close(emb[trigger], v.token_embeddings(trigger))
    with torch.no_grad():
        plain = v.logits(ids, mask)
        same = v.logits(ids, mask, v.token_embeddings(trigger))
        # not a constant shift: the LayerNorms would remove it
        step = torch.randn(emb[trigger].shape, generator=torch.Generator().manual_seed(0))
        moved = v.logits(ids, mask, v.token_embeddings(trigger) + step.to(emb.dtype))
    torch.testing.assert_close(same, plain)
    assert not torch.allclose(moved, plain)
