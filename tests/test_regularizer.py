"""The linearity regulariser: its value, its gradient (float64 checks), and its wiring in the trainer."""

from __future__ import annotations

import math

import pytest
import torch
from tests.helpers import tiny_config, write_corpus

from steadylm.config import ModelConfig
from steadylm.model.gpt import GPT
from steadylm.model.taps import BlockTaps
from steadylm.train.metrics import read_metrics
from steadylm.train.regularizers import penalty_sum
from steadylm.train.trainer import Trainer


def test_penalty_values_by_hand():
    h0 = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # (B=1, T=2, C=2)
    h1 = torch.tensor([[[0.0, 1.0], [0.0, 3.0]]])  # token 0 turns 90°, token 1 keeps its direction
    h2 = torch.tensor([[[0.0, 1.0], [0.0, -3.0]]])  # token 1 flips
    cos = penalty_sum([h0, h1, h2], "cosine")
    assert cos.item() == pytest.approx(((1 + 0) + (0 + 2)) / 2)  # mean over the 2 blocks, sum over tokens
    mse = penalty_sum([h0, h1, h2], "mse")
    assert mse.item() == pytest.approx(((2 + 1) + (0 + 36)) / 2)
    with pytest.raises(ValueError, match="cosine, mse"):
        penalty_sum([h0, h1], "l1")


@pytest.mark.parametrize("kind", ["cosine", "mse"])
def test_penalty_gradcheck(kind):
    gen = torch.Generator().manual_seed(0)
    states = [torch.randn(2, 3, 4, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    assert torch.autograd.gradcheck(lambda *s: penalty_sum(list(s), kind), states)


@pytest.mark.parametrize("kind", ["cosine", "mse"])
def test_gradient_through_a_tiny_model_matches_finite_differences(kind):
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_embd=8, n_head=2, vocab_size=11, block_size=6)).double()
    idx = torch.randint(0, 11, (2, 6))
    taps = BlockTaps(model.transformer.h, detach=False)

    def penalty() -> torch.Tensor:
        with taps:
            model.hidden_states(idx)
        return penalty_sum(taps.states, kind)

    penalty().backward()
    params = [p for p in model.parameters() if p.grad is not None]
    assert len(params) > 10  # reaches the embeddings and every block
    direction = [torch.randn_like(p) for p in params]
    analytic = sum((p.grad * v).sum() for p, v in zip(params, direction)).item()
    eps = 1e-6
    with torch.no_grad():
        for p, v in zip(params, direction):
            p.add_(eps * v)
        plus = penalty().item()
        for p, v in zip(params, direction):
            p.sub_(2 * eps * v)
        minus = penalty().item()
    assert analytic == pytest.approx((plus - minus) / (2 * eps), rel=1e-6)


def test_taps_leave_the_forward_unchanged():
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=3, n_embd=16, n_head=2, vocab_size=20, block_size=8)).eval()
    idx = torch.randint(0, 20, (2, 8))
    plain = model(idx)
    with BlockTaps(model.transformer.h) as taps:
        tapped = model(idx)
    assert torch.equal(plain, tapped)
    assert len(taps.states) == 4 and torch.equal(taps.states[0], model.embed(idx))
    assert torch.equal(model.transformer.ln_f(taps.states[-1]), model.hidden_states(idx))


def test_trainer_logs_the_term_and_lambda_zero_changes_nothing(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", n_docs=6, words_per_doc=200)
    common = dict(**{"train.max_steps": 3, "train.eval_every": 0, "train.checkpoint_every": 0, "train.log_every": 1})
    base = Trainer(tiny_config(corpus, **common), tmp_path / "base", progress=False).fit()
    zero = Trainer(tiny_config(corpus, **common, **{"train.linearity_reg": 0.0}), tmp_path / "zero",
                   progress=False).fit()
    reg = Trainer(tiny_config(corpus, **common, **{"train.linearity_reg": 0.5}), tmp_path / "reg", progress=False).fit()
    rows = {name: [r for r in read_metrics(res.run_dir / "metrics.jsonl") if "event" not in r]
            for name, res in (("base", base), ("zero", zero), ("reg", reg))}
    assert [r["loss"] for r in rows["base"]] == [r["loss"] for r in rows["zero"]]
    assert all("linearity_reg" not in r for r in rows["base"])
    assert all(0 < r["linearity_reg"] < 0.5 * 2 and math.isfinite(r["linearity_reg"]) for r in rows["reg"])
    assert rows["reg"][0]["loss"] == pytest.approx(rows["base"][0]["loss"], rel=1e-6)  # the logged loss is CE only
    assert rows["reg"][-1]["loss"] != rows["base"][-1]["loss"]  # but the term does change training


@pytest.mark.parametrize("override, message", [
    ("train.linearity_reg=-0.5", "train.linearity_reg: must be >= 0, got -0.5"),
    ("train.linearity_reg_kind='l2'", "train.linearity_reg_kind: 'l2' is not one of cosine, mse"),
    ("train.checkpoint_schedule='linear'", "train.checkpoint_schedule: 'linear' is not one of every, log"),
])
def test_config_rejects_bad_values_in_one_line(override, message):
    from steadylm.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="^" + message.replace(".", r"\.")):
        load_config(None, [override])
