"""A GPT with a tensor-train embedding in the whole tool: training with TEV every step, checkpoints
that `steadylm tev`, `load_model` and `analyze` read, exact resume, and clear errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import tiny_overrides, write_corpus
from steadylm.cli import main
from steadylm.model.hf import load_model
from steadylm.rundir import latest_checkpoint
from steadylm.train.metrics import read_metrics


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("tt")
    return write_corpus(root / "corpus", n_docs=8, words_per_doc=200)


def _sets(corpus, **extra):
    over = tiny_overrides(corpus, **{"model.embedding": "tt", "model.tt_rank": 4, **extra})
    return [x for o in over for x in ("--set", o)]


@pytest.mark.parametrize("head", ["tied_dense", "separate"])
def test_tt_run_logs_tev_and_its_checkpoint_is_inspectable(tmp_path, corpus, capsys, head):
    run = tmp_path / "run"
    args = ["train", *_sets(corpus, **{"model.tt_head": head}), "--out", str(run), "--no-progress"]
    assert main(args) == 0
    err = capsys.readouterr().err  # the auto shape is printed
    assert "TT embedding (7,7,7)x(2,4,4) rank 4: 300 rows padded to 343, 616 parameters" in err
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["embedding_parameters"] == 616
    rows = [r for r in read_metrics(run / "metrics.jsonl") if "event" not in r]
    assert [r["step"] for r in rows] == list(range(8))
    assert all(np.isfinite(r["tev_mean"]) and np.isfinite(r["loss"]) for r in rows)
    assert abs(rows[0]["tev_mean"] - 0.02) < 0.004  # the cores' init gives entries of std ~0.02

    ckpt = latest_checkpoint(run)
    names = json.loads((ckpt / "manifest.json").read_text())["files"]
    assert "model.safetensors" in names
    model = load_model(run)
    assert prov["parameters"] == model.num_parameters()
    emb = model.transformer.wte
    assert (model.lm_head is None) == (head == "tied_dense")
    w = emb.full().detach().numpy().astype(np.float64)

    assert main(["tev", str(run), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["tensor"] == "transformer.wte (TT cores, reconstructed)"
    assert (got["rows"], got["d_model"], got["vocab_size"]) == (
        300,
        32,
        300,
    )  # factorisation padding left out
    tev = w.std(axis=1)
    assert got["mu_tev"] == pytest.approx(tev.mean(), rel=1e-5)
    assert got["sigma_tev"] == pytest.approx(tev.std(), rel=1e-4)
    assert got["mu_tev"] == pytest.approx(
        rows[-1]["tev_mean"], rel=1e-4
    )  # what training logged last

    idx = torch.randint(0, 300, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), model.hidden_states(idx) @ model.head_weight().t())
    if head == "tied_dense":
        assert (
            main(
                [
                    "analyze",
                    str(run),
                    "--json",
                    "--tokens",
                    "256",
                    "--no-progress",
                    "--device",
                    "cpu",
                ]
            )
            == 0
        )
        assert json.loads(capsys.readouterr().out)


def test_tt_config_errors_exit_2_and_leave_no_run(tmp_path, corpus, capsys):
    bad = [
        (["--set", "model.tt_rank=8"], "model.tt_rank=8 only applies to model.embedding='tt'"),
        (
            _sets(corpus, **{"model.tt_cores": 2}) + ["--set", "model.tt_shape=[[4,4,4],[2,4,4]]"],
            "two lists of model.tt_cores=2 positive factors",
        ),
        (
            _sets(corpus) + ["--set", "model.tt_shape=[[4,4,4],[2,4,4]]"],
            "multiply to 64 < vocab_size=300",
        ),
        (
            _sets(corpus) + ["--set", "model.tt_shape=[[7,7,7],[2,4,8]]"],
            "multiply to 64, not n_embd=32",
        ),
        (
            _sets(corpus) + ["--set", 'model.tt_head="tied"'],
            "model.tt_head: 'tied' is not one of tied_dense, separate",
        ),
    ]
    for i, (args, message) in enumerate(bad):
        out = tmp_path / f"r{i}"
        assert main(["train", *args, "--out", str(out), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert not out.exists()


def _run_cli(args, env):
    return subprocess.run(
        [sys.executable, "-m", "steadylm", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_exact_resume_of_a_tt_model_in_a_new_process(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", n_docs=6, words_per_doc=40)
    sets = _sets(
        corpus, **{"model.dropout": 0.1, "train.max_steps": 12, "train.checkpoint_every": 5}
    )
    env = {**os.environ, "STEADYLM_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    whole = _run_cli(["train", *sets, "--out", str(tmp_path / "whole"), "--no-progress"], env)
    assert whole.returncode == 0, whole.stderr
    first = _run_cli(
        ["train", *sets, "--out", str(tmp_path / "split"), "--no-progress", "--stop-at", "7"], env
    )
    assert first.returncode == 0, first.stderr
    second = _run_cli(["train", "--out", str(tmp_path / "split"), "--resume", "--no-progress"], env)
    assert second.returncode == 0, second.stderr
    a = [r for r in read_metrics(tmp_path / "whole" / "metrics.jsonl") if "event" not in r]
    b = [r for r in read_metrics(tmp_path / "split" / "metrics.jsonl") if "event" not in r]
    assert [r["step"] for r in b] == list(range(12))
    for key in ("loss", "grad_norm", "tev_mean", "tev_std", "tev_seen_mean", "lr"):
        assert [r[key] for r in a] == [r[key] for r in b], key
    assert [r.get("val_loss") for r in a] == [r.get("val_loss") for r in b]
