"""The public train_step(): monitors never change the update, and the fp16 guard path."""

import math

import pytest
import torch

from helpers import tiny_config, write_corpus
from steadylm.train.trainer import Trainer

STEPS = 3


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    # One corpus, so the module's runs share one prepared dataset in the session cache.
    return write_corpus(tmp_path_factory.mktemp("train_step") / "corpus", n_docs=6, words_per_doc=200)


def _updates(corpus, tmp_path, name, **over):
    """The gradient the optimizer receives and the loss, at each of the first STEPS steps."""
    cfg = tiny_config(corpus, **{"model.dropout": 0.1, "monitor.act_every": 0, **over})
    trainer = Trainer(cfg, tmp_path / name, progress=False)
    grads = []
    trainer.optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: grads.append([p.grad.clone() for p in trainer.model.parameters()]))
    rows = [trainer.train_step(step).row for step in range(STEPS)]
    return grads, [r["loss"].item() for r in rows], rows


@pytest.mark.parametrize("micro", [8, 4], ids=["one-micro-batch", "two-micro-batches"])
def test_gradient_variance_does_not_change_the_update(tmp_path, corpus, micro):
    """With one micro-batch per step the reference used to split the batch in two, which changed
    the gradient's rounding and the dropout draws. Now the optimizer sees bit-identical gradients
    and losses with the reference on every step and off."""
    common = {"train.micro_batch_size": micro, "train.batch_size": 8}
    g_off, loss_off, _ = _updates(corpus, tmp_path, "off", **common, **{"monitor.gradvar_every": 0})
    g_on, loss_on, rows = _updates(corpus, tmp_path, "on", **common, **{"monitor.gradvar_every": 1})
    assert loss_on == loss_off
    assert len(g_on) == len(g_off) == STEPS
    for step, (a, b) in enumerate(zip(g_on, g_off)):
        assert all(torch.equal(x, y) for x, y in zip(a, b)), f"step {step}"
    for r in rows:  # and the reference was measured on every step
        assert r["grad_var_k"] == 2 and math.isfinite(float(r["grad_var_embed"])) and float(r["grad_var_embed"]) > 0


class _NaNGradAt(Trainer):
    def __init__(self, *a, bad_step, **kw):
        super().__init__(*a, **kw)
        self.bad_step, self.now = bad_step, -1
        self.model.transformer.h[0].mlp.c_fc.weight.register_hook(
            lambda g: g * float("inf") if self.now == self.bad_step else g)

    def train_step(self, step):
        self.now = step
        return super().train_step(step)


@pytest.mark.parametrize("scaled", [False, True], ids=["fp32", "grad-scaler"])
def test_with_a_grad_scaler_the_guards_judge_the_loss_alone(tmp_path, corpus, scaled):
    """Under fp16 an overflowing gradient is the grad scaler's business: it skips that update
    itself. The guards then must not count it as non-finite, and the spike detector gets no
    gradient norm (its loss-only path). fp16 needs CUDA; a CPU grad scaler drives the same code."""
    cfg = tiny_config(corpus, **{"monitor.gradvar_every": 0, "monitor.act_every": 0})
    trainer = _NaNGradAt(cfg, tmp_path / "run", progress=False, bad_step=1)
    if scaled:
        trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    trainer.train_step(0)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    out = trainer.train_step(1)
    assert not math.isfinite(float(out.row["grad_norm"]))
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))  # no update either way
    assert out.verdict.non_finite is (not scaled) and out.skipped is (not scaled)
    window = trainer.monitors.spikes.values  # (signal, window): loss and gradient-norm rows
    if scaled:
        assert trainer.scaler.get_scale() == 2.0**9  # the scaler saw the overflow and backed off
        assert torch.equal(window[1, :2], window[0, :2])  # the loss stands in: no gradient norm judged
    else:
        assert window[1, 0] != window[0, 0]
    assert trainer.train_step(2).verdict.non_finite is False
