"""experiments/finetune_linearity.py: fine-tuned minus base linearity per task and method, with intervals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


@pytest.fixture()
def lin(monkeypatch):
    monkeypatch.syspath_prepend(str(EXPERIMENTS))
    import finetune_linearity

    return finetune_linearity


def _profile(no_residual: list[float], with_residual: list[float]) -> dict:
    layers = [{"layer": 0, "linearity_no_residual": None, "linearity": None}]
    layers += [
        {"layer": i + 1, "linearity_no_residual": a, "linearity": b}
        for i, (a, b) in enumerate(zip(no_residual, with_residual, strict=True))
    ]
    return {"layers": layers}


def test_differences_are_block_means_paired_with_the_base_and_intervals_cover_the_seeds(lin):
    base = _profile([0.5, 0.7], [0.9, 0.8])
    runs = {
        f"rt-full-s{s}": ({"task": "rt", "method": "full", "seed": s, "accuracy": 0.8},
                          _profile([0.5 + d, 0.7 + d], [0.9, 0.8]))
        for s, d in enumerate((0.1, 0.2, 0.3))
    }  # fmt: skip
    lora_eval = {"task": "rt", "method": "lora", "seed": 0, "accuracy": 0.7}
    runs["rt-lora-s0"] = (lora_eval, _profile([0.4, 0.7], [0.9, 0.7]))
    summary = lin.summarise(base, runs)
    full, lora = summary["cells"]
    assert (full["method"], full["seeds"], lora["method"]) == ("full", [0, 1, 2], "lora")
    nr = full["linearity_no_residual"]
    assert nr["base_mean"] == pytest.approx(0.6) and nr["tuned_mean"] == pytest.approx(0.8)
    assert nr["diff"] == pytest.approx(0.2) and nr["low"] < 0.1 and nr["high"] > 0.3  # t(2) = 4.30 × 0.1/√3
    assert nr["low"] == pytest.approx(0.2 - 4.3027 * 0.1 / 3**0.5, abs=1e-3)
    assert nr["per_block_diff"] == pytest.approx([0.2, 0.2])
    assert full["linearity"]["diff"] == pytest.approx(0.0)
    one = lora["linearity_no_residual"]  # one seed: a difference, no interval
    assert one["diff"] == pytest.approx(-0.05) and one["low"] is None
    table = lin.markdown(summary, "pypi:base")
    assert "base `pypi:base`, on the default corpus's validation split" in table
    assert "| rt | full | 0,1,2 | 0.800 | 0.600 → 0.800 | +0.200 [" in table
    assert "| rt | lora | 0 | 0.700 | 0.600 → 0.550 | -0.050 [—, —]" in table


def test_only_runs_with_an_exported_classifier_are_found(lin, tmp_path):
    for name, exported in (("a", True), ("b", False)):
        run = tmp_path / "runs" / name
        (run / "classifier").mkdir(parents=True)
        (run / "eval.json").write_text(json.dumps({"task": "rt"}))
        if exported:
            (run / "classifier" / "config.json").write_text("{}")
    (tmp_path / "runs" / "c").mkdir()  # unfinished: no eval.json
    assert [r.name for r in lin.finished_runs([tmp_path])] == ["a"]


def test_a_task_text_profiles_only_the_runs_tuned_on_it(lin, tmp_path):
    for name, task in (("r", "rt"), ("t", "tweets")):
        run = tmp_path / "runs" / name
        (run / "classifier").mkdir(parents=True)
        (run / "classifier" / "config.json").write_text("{}")
        (run / "eval.json").write_text(json.dumps({"task": task}))
    assert [r.name for r in lin.finished_runs([tmp_path], "tweets")] == ["t"]
    assert [r.name for r in lin.finished_runs([tmp_path])] == ["r", "t"]


def test_text_sources_are_exclusive_and_no_runs_is_an_error(lin, tmp_path):
    with pytest.raises(SystemExit) as bad:
        lin.main([str(tmp_path), "--out", str(tmp_path / "out"), "--task", "rt", "--text", "a.txt"])
    assert bad.value.code == 2  # argparse: not allowed together
    with pytest.raises(SystemExit, match="no finished fine-tuning runs"):
        lin.main([str(tmp_path), "--out", str(tmp_path / "out"), "--task", "rt"])
