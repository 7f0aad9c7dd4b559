"""torch.compile trains the same model as eager: the same losses and gradient norms, to rounding."""

import pytest

from helpers import tiny_config, write_corpus
from steadylm.rundir import read_metrics
from steadylm.train.trainer import Trainer


@pytest.mark.slow  # compiling the tiny model's forward and backward takes 30-60 s on one core
def test_compiled_and_eager_give_the_same_losses(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    rows = {}
    for compiled in (False, True):
        cfg = tiny_config(corpus, **{"train.compile": compiled, "train.max_steps": 4, "train.eval_every": 0})
        trainer = Trainer(cfg, tmp_path / f"run-{compiled}", progress=False)
        assert trainer.compile is compiled
        trainer.fit()
        rows[compiled] = [r for r in read_metrics(tmp_path / f"run-{compiled}" / "metrics.jsonl") if "event" not in r]
    assert len(rows[True]) == len(rows[False]) == 4
    for eager, comp in zip(rows[False], rows[True]):
        for key in ("loss", "grad_norm", "tev_mean"):
            assert comp[key] == pytest.approx(eager[key], rel=1e-4), (eager["step"], key)
    # The steps did change the model: equal losses are not a model that never moved.
    assert rows[True][-1]["loss"] < rows[True][0]["loss"]
