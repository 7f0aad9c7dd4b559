"""Every variant trains (the loss falls) and resumes exactly, through the real trainer on CPU."""

import pytest
import torch
from safetensors.torch import load_file

from helpers import tiny_config, write_corpus
from steadylm.train.metrics import read_metrics
from steadylm.train.trainer import Trainer

VARIANTS = {
    "mlra": {"model.attention": "mlra"},
    "mlra_per_head_out_vp": {"model.attention": "mlra", "model.mlra_mode": "per_head", "model.mlra_out": True,
                             "model.mlra_init": "variance_preserving"},
    "qkv_init_scale": {"model.qkv_init_scale": 0.1},
    "sigma_reparam": {"model.reparam": "sigma"},
    "post_ln": {"model.norm_layout": "post_ln"},
    "sub_ln": {"model.norm_layout": "sub_ln"},
    "deepnorm": {"model.norm_layout": "deepnorm"},
    "embed_scaled": {"model.embed_norm": "scaled"},
    "embed_layernorm": {"model.embed_norm": "layernorm"},
    "qk_norm": {"model.qk_norm": True},
    "z_loss": {"train.z_loss": 1e-4},
}
STEPS = 12


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("variants") / "corpus")


def _losses(run):
    return [r["loss"] for r in read_metrics(run / "metrics.jsonl") if "event" not in r]


@pytest.mark.slow
@pytest.mark.parametrize("name", VARIANTS)
def test_variant_trains_and_resumes_exactly(tmp_path, corpus, name):
    over = {"train.max_steps": STEPS, "train.checkpoint_every": 6, "train.eval_every": 0, "model.dropout": 0.1,
            **VARIANTS[name]}
    whole = Trainer(tiny_config(corpus, **over), tmp_path / "whole", progress=False).fit()
    assert whole.status == "finished"
    Trainer(tiny_config(corpus, **over), tmp_path / "split", progress=False, stop_at=6).fit()
    Trainer(tiny_config(corpus, **over), tmp_path / "split", resume=True, progress=False).fit()
    a, b = _losses(tmp_path / "whole"), _losses(tmp_path / "split")
    assert len(a) == STEPS and a == b
    assert sum(a[-3:]) / 3 < a[0] - 0.3, a  # it learns
    final = load_file(str(whole.checkpoint / "model.safetensors"))  # variant weights and buffers included
    resumed = load_file(str(tmp_path / "split" / "checkpoints" / "step_000012" / "model.safetensors"))
    assert final.keys() == resumed.keys() and all(torch.equal(final[k], resumed[k]) for k in final)


@pytest.mark.slow
def test_sigma_reparam_power_iteration_runs_once_per_step_in_training(tmp_path, corpus):
    over = {"train.max_steps": 2, "train.eval_every": 0, **VARIANTS["sigma_reparam"]}
    trainer = Trainer(tiny_config(corpus, **over), tmp_path / "run", progress=False)
    calls = []
    step = trainer.model.after_optimizer_step
    trainer.model.after_optimizer_step = lambda: (calls.append(1), step())
    u0 = trainer.model.transformer.h[0].mlp.c_fc.sigma.u.clone()
    trainer.train_step(0)
    assert calls == [1]
    assert not torch.equal(trainer.model.transformer.h[0].mlp.c_fc.sigma.u, u0)
