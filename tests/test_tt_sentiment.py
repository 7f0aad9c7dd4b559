"""The TT-embedding sentiment study (experiments/tt_sentiment.py) on a tiny synthetic task: the
bi-LSTM learns a keyword rule with a dense and a TT embedding, the parameter counts are the
formula's, and the study writes its runs, table and plot and refuses bad input."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from steadylm.model.tt_embedding import TTEmbedding, auto_shape, tt_num_parameters

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


@pytest.fixture()
def study(monkeypatch):
    monkeypatch.syspath_prepend(str(EXPERIMENTS))
    import tt_sentiment

    return tt_sentiment


def keyword_task(study, vocab: int = 120, n: int = 400, seed: int = 0):
    """Label 1 iff token 7 occurs; texts of 3..12 random ids from 10..vocab-1 (never 7 or 0)."""
    rng = random.Random(seed)

    def split(count: int):
        rows = []
        for i in range(count):
            ids = [rng.randrange(10, vocab) for _ in range(rng.randint(3, 12))]
            if i % 2:
                ids[rng.randrange(len(ids))] = 7
            rows.append((ids, i % 2))
        return rows

    return study.Encoded(vocab, 2, split(n), split(200), split(200), pad_id=0)


def small_config(study, **kw):
    base = dict(dim=16, hidden=16, layers=2, rank=4, epochs=3, batch_size=32, lr=1e-2,
                dropout=0.1, device="cpu", variants=["dense", "tt3"], seeds=[1, 2])  # fmt: skip
    return study.StudyConfig(**{**base, **kw}).validate()


def test_parameter_counts_follow_the_formula(study):
    cfg = small_config(study)
    dense = study.build_embedding("dense", 120, cfg)
    assert sum(p.numel() for p in dense.parameters()) == 120 * 16
    assert dense.weight.std().item() == pytest.approx(1.0, rel=0.1)  # PyTorch's N(0, 1)
    glorot = study.build_embedding("dense-glorot", 120, cfg)
    assert glorot.weight.std().item() == pytest.approx((2 / (120 + 16)) ** 0.5, rel=0.1)
    for variant, cores in (("tt3", 3), ("tt4", 4)):
        emb = study.build_embedding(variant, 120, cfg)
        assert isinstance(emb, TTEmbedding) and len(emb.cores) == cores
        shape = auto_shape(120, 16, cores)
        assert emb.shape == shape
        assert sum(p.numel() for p in emb.parameters()) == tt_num_parameters(shape, 4)
    # The study's real setting: MiniLM's 30,522 ids at width 256, rank 16.
    real = study.StudyConfig()
    counts = {
        v: sum(p.numel() for p in study.build_embedding(v, 30_522, real).parameters())
        for v in ("tt3", "tt4", "tt6")
    }
    assert counts == {"tt3": 71_552, "tt4": 29_312, "tt6": 15_872}


def test_dense_and_tt_learn_a_keyword_task(study):
    cfg = small_config(study)
    data = keyword_task(study)
    for variant in ("dense", "tt3"):
        r = study.train_run(variant, 1, data, cfg, torch.device("cpu"), progress=False)
        assert r["test_acc"] > 0.9, (variant, r["epochs"])
        assert r["val_acc"] == max(e["val_acc"] for e in r["epochs"])  # the best epoch is kept
        emb_params = (
            120 * 16 if variant == "dense" else tt_num_parameters(auto_shape(120, 16, 3), 4)
        )
        assert r["embedding_params"] == emb_params
        assert r["compression"] == pytest.approx(120 * 16 / emb_params)


def test_study_writes_runs_summary_and_plot_and_resumes(study, tmp_path):
    cfg = small_config(study, epochs=1)
    data = keyword_task(study, n=200)
    study.run_study(cfg, tmp_path, progress=False, data=data)
    runs = sorted(p.name for p in (tmp_path / "runs").glob("*.json"))
    assert runs == ["dense-s1.json", "dense-s2.json", "tt3-s1.json", "tt3-s2.json"]
    rows = json.loads((tmp_path / "summary.json").read_text())
    assert [r["variant"] for r in rows] == ["dense", "tt3"]
    tt = rows[1]
    accs = [tt["test_acc"][s] for s in ("1", "2")]
    base = [rows[0]["test_acc"][s] for s in ("1", "2")]
    assert set(tt["diff_vs"]) == {"dense"}  # dense-glorot was not run
    diff = tt["diff_vs"]["dense"]
    assert diff["mean"] == pytest.approx(sum(a - b for a, b in zip(accs, base)) / 2)
    assert diff["df"] == 1 and diff["lo"] <= diff["mean"] <= diff["hi"]
    assert "| tt3 |" in (tmp_path / "summary.md").read_text()
    assert (tmp_path / "accuracy_vs_compression.png").stat().st_size > 1000
    # A second call trains nothing (no data given, none needed); other settings are refused.
    before = (tmp_path / "runs" / "tt3-s1.json").read_text()
    study.run_study(cfg, tmp_path, progress=False)
    assert (tmp_path / "runs" / "tt3-s1.json").read_text() == before
    with pytest.raises(study.SteadyLMError, match="epochs 1 vs 2"):
        study.run_study(small_config(study, epochs=2), tmp_path, progress=False, data=data)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--variants", "dense", "tt5"], "--variants: unknown tt5; choose from dense, tt3"),
        (["--seeds", "1", "1"], "--seeds: give distinct seeds"),
        (["--epochs", "0"], "--epochs: must be >= 1"),
        (["--threads", "0"], "--threads: must be >= 1"),
        (["--task", "nope"], "unknown task 'nope'; valid: rt, tweets"),
    ],
)
def test_bad_input_exits_2_with_one_line(study, tmp_path, capsys, args, message):
    out = tmp_path / "study"
    assert study.main(["--out", str(out), "--no-progress", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()
