"""The training loop: learning, the run-directory contract, accumulation equivalence, exact resume."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from helpers import tiny_config, tiny_overrides, write_corpus
from steadylm.cli import main
from steadylm.rundir import latest_checkpoint, list_checkpoints, verify_checkpoint
from steadylm.train.metrics import read_metrics
from steadylm.train.trainer import Trainer


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("STEADYLM_CACHE_DIR", str(tmp_path / "cache"))
    return write_corpus(tmp_path / "corpus")


def test_loss_falls_and_run_dir_follows_the_contract(tmp_path, corpus):
    cfg = tiny_config(corpus, **{"train.max_steps": 40, "train.eval_every": 20, "train.checkpoint_every": 20})
    result = Trainer(cfg, tmp_path / "run", progress=False).fit()
    assert result.status == "finished" and result.step == 40
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    steps = [r for r in rows if "event" not in r]
    assert [r["step"] for r in steps] == list(range(40))
    for key in ("step", "tokens", "loss", "lr", "grad_norm", "tev_mean", "tev_std", "tokens_per_s"):
        assert all(key in r for r in steps), key
    assert steps[-1]["tokens"] == 40 * 8 * 16
    assert sum(r["loss"] for r in steps[-5:]) / 5 < steps[0]["loss"] - 1.0
    evals = [r for r in steps if "val_loss" in r]
    assert [r["step"] for r in evals] == [19, 39]
    assert all(math.isclose(r["val_ppl"], math.exp(r["val_loss"]), rel_tol=1e-5) for r in evals)
    assert abs(steps[0]["tev_mean"] - 0.02) < 0.002  # GPT-2 init, after one step of lr <= 3e-3
    run = tmp_path / "run"
    assert json.loads((run / "status.json").read_text())["status"] == "finished"
    prov = json.loads((run / "provenance.json").read_text())
    for key in ("steadylm_version", "git_hash", "torch_version", "device", "threads", "world_size"):
        assert key in prov
    assert [p.name for p in list_checkpoints(run)] == ["step_000040", "step_000020"]
    ckpt = latest_checkpoint(run)
    assert ckpt.name == "step_000040" and verify_checkpoint(ckpt) is None
    for name in ("model.safetensors", "config.toml", "tokenizer.json", "manifest.json", "train_state/trainer.json"):
        assert (ckpt / name).is_file(), name


def test_corrupt_checkpoint_is_named_and_skipped(tmp_path, corpus, capsys):
    Trainer(tiny_config(corpus), tmp_path / "run", progress=False).fit()
    newest = tmp_path / "run" / "checkpoints" / "step_000008" / "model.safetensors"
    data = bytearray(newest.read_bytes())
    data[-1] ^= 0xFF
    newest.write_bytes(bytes(data))
    assert latest_checkpoint(tmp_path / "run").name == "step_000004"
    assert "step_000008" in capsys.readouterr().err


def _grads_after_one_step(corpus, tmp_path, micro):
    # gradvar off: it would add its own backward passes to the one-pass run (never to its gradient)
    cfg = tiny_config(corpus, **{"train.micro_batch_size": micro, "monitor.gradvar_every": 0})
    trainer = Trainer(cfg, tmp_path / f"run{micro}", progress=False)
    captured = {}

    def capture(optimizer, args, kwargs):
        captured.update({n: p.grad.clone() for n, p in trainer.model.named_parameters()})

    trainer.optimizer.register_step_pre_hook(capture)
    row = trainer.train_step(0).row
    return captured, float(row["loss"])


def test_gradient_accumulation_matches_one_pass(tmp_path, corpus):
    full, loss_full = _grads_after_one_step(corpus, tmp_path, micro=8)
    accum, loss_accum = _grads_after_one_step(corpus, tmp_path, micro=2)
    assert math.isclose(loss_full, loss_accum, rel_tol=1e-5)
    assert full.keys() == accum.keys()
    for name in full:
        torch.testing.assert_close(accum[name], full[name], atol=1e-6, rtol=1e-4, msg=name)


def _run_cli(args, env):
    return subprocess.run([sys.executable, "-m", "steadylm", *args], env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_exact_resume_in_new_process_across_epoch_boundary_with_dropout(tmp_path, monkeypatch):
    monkeypatch.setenv("STEADYLM_CACHE_DIR", str(tmp_path / "cache"))
    # A small corpus: ~40 training sequences of 16 tokens at 8 per step, so epochs end every ~5 steps.
    corpus = write_corpus(tmp_path / "corpus", n_docs=6, words_per_doc=40)
    over = tiny_overrides(corpus, **{"model.dropout": 0.1, "train.max_steps": 16, "train.checkpoint_every": 5})
    env = {**os.environ, "STEADYLM_CACHE_DIR": os.environ["STEADYLM_CACHE_DIR"], "OMP_NUM_THREADS": "1"}
    sets = [x for o in over for x in ("--set", o)]
    whole = _run_cli(["train", *sets, "--out", str(tmp_path / "whole"), "--no-progress"], env)
    assert whole.returncode == 0, whole.stderr
    first = _run_cli(["train", *sets, "--out", str(tmp_path / "split"), "--no-progress", "--stop-at", "7"], env)
    assert first.returncode == 0, first.stderr
    assert json.loads((tmp_path / "split" / "status.json").read_text())["status"] == "stopped"
    second = _run_cli(["train", "--out", str(tmp_path / "split"), "--resume", "--no-progress"], env)
    assert second.returncode == 0, second.stderr
    a = [r for r in read_metrics(tmp_path / "whole" / "metrics.jsonl") if "event" not in r]
    b = [r for r in read_metrics(tmp_path / "split" / "metrics.jsonl") if "event" not in r]
    assert [r["step"] for r in b] == list(range(16))
    epochs = json.loads(
        (tmp_path / "whole" / "checkpoints" / "step_000016" / "train_state" / "trainer.json").read_text())
    assert epochs["reader"]["epoch"] >= 2, "the run must cross an epoch boundary"
    for key in ("loss", "grad_norm", "tev_mean", "tev_std", "lr"):
        assert [r[key] for r in a] == [r[key] for r in b], key
    assert [r.get("val_loss") for r in a] == [r.get("val_loss") for r in b]


def test_cli_errors_exit_2_with_one_line(tmp_path, corpus, capsys):
    over = tiny_overrides(corpus)
    sets = [x for o in over for x in ("--set", o)]
    assert main(["train", *sets, "--out", str(tmp_path / "r"), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["train", *sets, "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "already holds a steadylm run" in err and err.count("\n") == 1
    assert main(["train", "--config", "tiny-cpu", "--set", "train.lr=-1", "--out", str(tmp_path / "x")]) == 2
    assert "train.lr: must be > 0" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # no half-written run
    assert main(["train", *sets, "--set", "model.n_head=3", "--out", str(tmp_path / "y"), "--resume"]) == 2
    assert main(["train", *sets, "--set", "train.seed=5", "--out", str(tmp_path / "r"), "--resume"]) == 2
    assert "train.seed differs" in capsys.readouterr().err


def test_frequency_group_tev_is_logged_and_pools_to_the_overall_mean(tmp_path, corpus):
    cfg = tiny_config(corpus, **{"monitor.tev_freq_groups": True, "train.max_steps": 2})
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    trainer.fit()
    steps = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "event" not in r]
    groups = ("freq_hi", "freq_mid", "freq_lo")
    assert all(f"tev_mean/{g}" in r and f"tev_std/{g}" in r for r in steps for g in groups)
    # Every real row is in exactly one group, so the size-weighted group means give the overall mean.
    sizes = [len(part) for part in torch.tensor_split(torch.arange(trainer.vocab_rows), 3)]
    last = steps[-1]
    pooled = sum(last[f"tev_mean/{g}"] * n for g, n in zip(groups, sizes)) / sum(sizes)
    assert pooled == pytest.approx(last["tev_mean"], rel=1e-5)
